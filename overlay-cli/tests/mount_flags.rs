//! `-o` mount flags of `ovl run` and `ovl mount`, on the kernel and the FUSE backend: the
//! defaults (rw,nosuid,nodev,exec,relatime) as the kernel shows them in mountinfo, and what
//! the flags do (a set-uid program runs as its owner only with `-o suid`; `-o noexec`, `-o
//! ro`).

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn root_or_skip() -> bool {
    common::root_or_skip("these tests mount overlays and run a set-uid program as uid 65534")
}

/// A shell snippet printing the per-mount options of the topmost mount on `target`.
fn print_flags(target: &str) -> String {
    format!("awk -v t='{target}' '$5 == t {{ f = $6 }} END {{ print f }}' /proc/self/mountinfo")
}

fn flags_of(line: &str) -> Vec<String> {
    let mut v: Vec<String> = line.trim().split(',').map(str::to_string).collect();
    v.sort();
    v
}

/// `ovl run` over a tree with a set-uid-root copy of `id`; prints the mount's flags, then
/// what `id -u` says when uid 65534 runs the copy (or its exit status when it cannot).
fn run_with(backend: &str, opts: &[&str]) -> (Output, Vec<String>, String) {
    let t = open_tempdir();
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = tree.join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tree_s = s(&tree);
    let script = format!(
        "{}; setpriv --reuid=65534 --regid=65534 --clear-groups {tree_s}/id -u 2>/dev/null || echo status=$?",
        print_flags(&tree_s)
    );
    let mut args = vec!["run", "--backend", backend, "--target", &tree_s];
    for o in opts {
        args.extend(["-o", o]);
    }
    args.extend(["--", "sh", "-c", &script]);
    let o = ovl_with_state(&t.path().join("state"), &args);
    let out = stdout(&o);
    let mut lines = out.lines();
    let flags = flags_of(lines.next().unwrap_or(""));
    let id = lines.next().unwrap_or("").to_string();
    assert!(!is_mounted(&tree));
    (o, flags, id)
}

fn has(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x == f)
}

#[test]
fn run_defaults_to_nosuid_nodev_and_o_suid_runs_set_uid_programs() {
    if !root_or_skip() {
        return;
    }
    for backend in ["kernel", "fuse"] {
        let (o, flags, id) = run_with(backend, &[]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        for f in ["rw", "nosuid", "nodev"] {
            assert!(has(&flags, f), "{backend}: {f} missing in {flags:?}");
        }
        assert!(!has(&flags, "noexec"), "{backend}: {flags:?}");
        assert_eq!(id, "65534", "{backend}: set-uid ignored under nosuid");

        let (o, flags, id) = run_with(backend, &["suid,dev"]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        assert!(
            !has(&flags, "nosuid") && !has(&flags, "nodev"),
            "{backend}: {flags:?}"
        );
        assert_eq!(id, "0", "{backend}: -o suid runs the program as its owner");

        let (o, flags, id) = run_with(backend, &["noexec", "ro"]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        assert!(
            has(&flags, "noexec") && has(&flags, "ro"),
            "{backend}: {flags:?}"
        );
        assert_eq!(id, "status=126", "{backend}: -o noexec");
    }
}

#[test]
fn run_atime_flags_reach_the_kernel_mount() {
    if !root_or_skip() {
        return;
    }
    let (o, flags, _) = run_with("kernel", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(has(&flags, "relatime"), "{flags:?}");
    let (o, flags, _) = run_with("kernel", &["noatime,nodiratime"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        has(&flags, "noatime") && has(&flags, "nodiratime"),
        "{flags:?}"
    );
    let (o, flags, _) = run_with("kernel", &["strictatime"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !has(&flags, "relatime") && !has(&flags, "noatime"),
        "{flags:?}"
    );
    // FUSE: noatime unless strictatime, which gives the kernel's relatime there (fuser can
    // only ask for atime or noatime).
    let (o, flags, _) = run_with("fuse", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(has(&flags, "noatime"), "{flags:?}");
    let (o, flags, _) = run_with("fuse", &["strictatime"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !has(&flags, "noatime") && has(&flags, "relatime"),
        "{flags:?}"
    );
}

#[test]
fn run_refuses_layers_and_unknown_flags_in_o() {
    let o = ovl(["run", "--target", "/tmp", "-o", "upperdir=/x", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("--lower and --upper"), "{}", stderr(&o));
    let o = ovl(["run", "--target", "/tmp", "-o", "bogus", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("-o bogus"), "{}", stderr(&o));
}

#[test]
fn mount_flags_on_both_backends() {
    if !root_or_skip() {
        return;
    }
    for backend in ["kernel", "fuse"] {
        let t = open_tempdir();
        let r = t.path();
        write(r, "lower/f", "f");
        mkdirs(r, &["m"]);
        let state = r.join("state");
        let m = std::fs::canonicalize(r.join("m")).unwrap();
        let flags = |extra: &[&str]| {
            let mut args = vec![
                "mount".to_string(),
                "--backend".into(),
                backend.into(),
                "--lower".into(),
                s(&r.join("lower")),
                "--tmp=4m".into(),
            ];
            for e in extra {
                args.push("-o".into());
                args.push(e.to_string());
            }
            args.push(s(&m));
            let o = ovl_with_state(&state, &args);
            assert!(o.status.success(), "{backend} {extra:?}: {}", stderr(&o));
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let line = info
                .lines()
                .rfind(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap()))
                .unwrap_or("")
                .to_string();
            let o = ovl_with_state(&state, ["umount", &s(&m)]);
            assert!(o.status.success(), "{backend}: {}", stderr(&o));
            flags_of(line.split(' ').nth(5).unwrap_or(""))
        };
        let d = flags(&[]);
        assert!(
            has(&d, "nosuid") && has(&d, "nodev") && has(&d, "rw"),
            "{backend}: {d:?}"
        );
        let f = flags(&["suid,dev,noexec"]);
        assert!(!has(&f, "nosuid") && !has(&f, "nodev"), "{backend}: {f:?}");
        assert!(has(&f, "noexec"), "{backend}: {f:?}");
        let f = flags(&["ro"]);
        assert!(has(&f, "ro"), "{backend}: {f:?}");
        assert!(!is_mounted(&m));
    }
}
