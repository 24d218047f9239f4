//! `ovl mount`, `ovl umount`, `ovl status`, `ovl probe` against real mounts.

mod common;

use common::*;
use std::path::PathBuf;

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// Unmounts whatever is still mounted on the target when the test ends (also on panic).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        while is_mounted(&self.0) {
            if rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
    }
}

fn root_or_skip() -> bool {
    common::root_or_skip("ovl mount in the caller's namespace needs root")
}

#[test]
fn mount_tmp_status_umount() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "base/etc/a", "base");
    write(r, "base/etc/b", "base");
    write(r, "patch/etc/a", "patch");
    mkdirs(r, &["m", "state"]);
    let m = r.join("m");
    let _c = Cleanup(m.clone());
    let state = r.join("state");
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("base").as_os_str(),
            "--lower",
            r.join("patch").as_os_str(),
            "--tmp=8m",
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(is_mounted(&m));
    // Bottom-first: patch is above base.
    assert_eq!(std::fs::read_to_string(m.join("etc/a")).unwrap(), "patch");
    assert_eq!(std::fs::read_to_string(m.join("etc/b")).unwrap(), "base");
    std::fs::write(m.join("etc/new"), "x").unwrap();
    assert!(!r.join("base/etc/new").exists() && !r.join("patch/etc/new").exists());

    let o = ovl_with_state(&state, args!["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let recs = v.as_array().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["target"], m.to_str().unwrap());
    assert_eq!(recs[0]["backend"], "kernel");
    assert_eq!(recs[0]["lowers"][1], r.join("patch").to_str().unwrap());
    let tmpfs = PathBuf::from(recs[0]["tmpfs"].as_str().unwrap());
    assert!(is_mounted(&tmpfs));
    let text = stdout(&ovl_with_state(&state, args!["status"]));
    assert!(text.contains("lowers (bottom-first)"), "{text}");

    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&m));
    assert!(
        !is_mounted(&tmpfs) && !tmpfs.exists(),
        "tmpfs upper released"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ovl_with_state(&state, args!["status", "--json"]).stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
    // Unmounting again is an error naming the path.
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with(&format!("ovl: {}: ", m.display())),
        "{}",
        stderr(&o)
    );
}

#[test]
fn mount_kernel_style_options_and_persistent_upper() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "bottom/f", "bottom");
    write(r, "top/f", "top");
    mkdirs(r, &["m", "u", "w", "state"]);
    let m = r.join("m");
    let _c = Cleanup(m.clone());
    let state = r.join("state");
    let opt = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        r.join("top").display(),
        r.join("bottom").display(),
        r.join("u").display(),
        r.join("w").display()
    );
    let o = ovl_with_state(&state, args!["mount", "-o", &opt, m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // lowerdir is top-first.
    assert_eq!(std::fs::read_to_string(m.join("f")).unwrap(), "top");
    std::fs::write(m.join("g"), "written").unwrap();
    // A second mount on the same target is refused.
    let o = ovl_with_state(&state, args!["mount", "-o", &opt, m.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already has an overlay mounted"),
        "{}",
        stderr(&o)
    );
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(r.join("u/g")).unwrap(), "written");

    // --upper with the managed workdir, remounted: the change is still there.
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("bottom").as_os_str(),
            "--upper",
            r.join("u2").as_os_str(),
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(m.join("f"), "changed").unwrap();
    assert!(ovl_with_state(&state, args!["umount", m.as_os_str()])
        .status
        .success());
    assert!(
        r.join(".u2.ovl-work").is_dir(),
        "managed workdir next to the upper"
    );
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("bottom").as_os_str(),
            "--upper",
            r.join("u2").as_os_str(),
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(m.join("f")).unwrap(), "changed");
    assert!(ovl_with_state(&state, args!["umount", m.as_os_str()])
        .status
        .success());
    assert_eq!(
        std::fs::read_to_string(r.join("bottom/f")).unwrap(),
        "bottom"
    );
}

#[test]
fn stale_records_disappear_from_status() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "f");
    mkdirs(r, &["m", "state"]);
    let m = r.join("m");
    let _c = Cleanup(m.clone());
    let state = r.join("state");
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--read-only",
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::write(m.join("x"), "x").is_err(), "read-only");
    // Unmounted behind ovl's back.
    rustix::mount::unmount(&m, rustix::mount::UnmountFlags::empty()).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&ovl_with_state(&state, args!["status", "--json"]).stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
    assert_eq!(std::fs::read_dir(state.join("mounts")).unwrap().count(), 0);
}

#[test]
fn mount_with_the_fuse_backend() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "a/x", "a");
    write(r, "b/x", "b");
    mkdirs(r, &["m", "state"]);
    let m = r.join("m");
    let _c = Cleanup(m.clone());
    let state = r.join("state");
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--backend",
            "fuse",
            "--lower",
            r.join("a").as_os_str(),
            "--lower",
            r.join("b").as_os_str(),
            "--upper",
            r.join("u").as_os_str(),
            m.as_os_str()
        ],
    );
    if !o.status.success() {
        return skip_or_fail(&format!("FUSE mount failed: {}", stderr(&o)));
    }
    assert_eq!(std::fs::read_to_string(m.join("x")).unwrap(), "b");
    // nodev,nosuid like the kernel backend's mounts.
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let flags = mi
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| f.get(4).copied() == m.to_str())
        .map(|f| f[5].to_string())
        .unwrap();
    assert!(
        flags.contains("nodev") && flags.contains("nosuid"),
        "{flags}"
    );
    std::fs::write(m.join("y"), "y").unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&ovl_with_state(&state, args!["status", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["backend"], "fuse");
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&m));
    assert_eq!(std::fs::read_to_string(r.join("u/y")).unwrap(), "y");
}

#[test]
fn mount_usage_errors() {
    let t = open_tempdir();
    let r = t.path();
    mkdirs(r, &["l", "m"]);
    let state = r.join("state");
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            r.join("m").as_os_str()
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--upper DIR, --tmp[=SIZE] or --read-only"),
        "{}",
        stderr(&o)
    );
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            "x",
            "-o",
            "lowerdir=y",
            "--read-only",
            r.join("m").as_os_str()
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--tmp=lots",
            r.join("m").as_os_str()
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a size"), "{}", stderr(&o));
}

#[test]
fn probe_says_what_works() {
    let o = ovl(["probe"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("kernel-userns") && s.contains("would use"),
        "{s}"
    );
    let o = ovl(["probe", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        v["auto_mount"].is_string() && v["auto_run"].is_string(),
        "{v}"
    );
    assert!(v["reasons"].as_array().is_some_and(|a| !a.is_empty()));
    if is_root() && std::env::var("CI").as_deref() == Ok("true") {
        assert_eq!(
            v["auto_mount"], "kernel",
            "root in CI can mount the kernel overlay"
        );
    }
}

/// Names of the entries of `dir`, sorted.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A refused mount creates nothing: an upper inside the lower, the lower as upper, the mount
/// point as upper, a dirty workdir (refused after the upper was created: it is removed
/// again), and --tmp=0.
#[test]
fn a_refused_mount_has_no_side_effects() {
    let t = open_tempdir();
    let r = t.path();
    write(r, "d/f", "lower");
    write(r, "dirty/leftover", "x");
    mkdirs(r, &["m", "l"]);
    let (d, m) = (r.join("d"), r.join("m"));
    let _c = Cleanup(m.clone());
    let state = r.join("state");
    let before = entries(r);
    let refused = |args: &[&std::ffi::OsStr], expect: &[&str]| {
        let o = ovl_with_state(&state, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?} was not refused: {err}");
        assert!(!is_mounted(&m), "{args:?} mounted");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        for e in expect {
            assert!(err.contains(e), "{args:?}: {err} lacks {e}");
        }
        assert_eq!(entries(&d), ["f"], "{args:?} wrote into the lower");
        let mut now = entries(r);
        now.retain(|e| e != "state");
        assert_eq!(now, before, "{args:?} left something behind");
    };
    let up = d.join("up");
    refused(
        args![
            "mount",
            "--lower",
            d.as_os_str(),
            "--upper",
            up.as_os_str(),
            m.as_os_str()
        ],
        &[up.to_str().unwrap(), "inside lower layer"],
    );
    refused(
        args![
            "mount",
            "--lower",
            d.as_os_str(),
            "--upper",
            d.as_os_str(),
            m.as_os_str()
        ],
        &[d.to_str().unwrap(), "also a lower layer"],
    );
    refused(
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--upper",
            m.as_os_str(),
            m.as_os_str()
        ],
        &[m.to_str().unwrap(), "mount point"],
    );
    refused(
        args![
            "mount",
            "--lower",
            d.as_os_str(),
            "--upper",
            r.join("new-upper").as_os_str(),
            "--work",
            r.join("dirty").as_os_str(),
            m.as_os_str()
        ],
        &["dirty"],
    );
    refused(
        args!["mount", "--lower", d.as_os_str(), "--tmp=0", m.as_os_str()],
        &["--tmp=0", "unlimited"],
    );
}

/// `-o redirect_dir=on,metacopy=on` means the same with either backend: renaming a lower
/// directory works and leaves the kernel's `overlay.redirect`, a chmod of a lower file copies
/// its metadata only (`overlay.metacopy`), and the data still reads through the mount.
#[test]
fn kernel_features_alike_on_both_backends() {
    if !root_or_skip() {
        return;
    }
    for backend in ["kernel", "fuse"] {
        let t = open_tempdir();
        let r = t.path();
        write(r, "l/dir/f", "data");
        mkdirs(r, &["m", "state"]);
        let m = r.join("m");
        let _c = Cleanup(m.clone());
        let state = r.join("state");
        let o = ovl_with_state(
            &state,
            args![
                "mount",
                "--backend",
                backend,
                "--lower",
                r.join("l").as_os_str(),
                "--upper",
                r.join("u").as_os_str(),
                "-o",
                "redirect_dir=on,metacopy=on",
                m.as_os_str()
            ],
        );
        if !o.status.success() {
            return skip_or_fail(&format!("{backend} mount failed: {}", stderr(&o)));
        }
        std::fs::rename(m.join("dir"), m.join("dir2")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(m.join("dir2/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(std::fs::read_to_string(m.join("dir2/f")).unwrap(), "data");
        let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let x = |p: &str, n: &str| {
            let mut b = vec![0u8; 256];
            rustix::fs::lgetxattr(r.join(p), n, &mut b[..])
                .map(|len| b[..len].to_vec())
                .map_err(|e| e.to_string())
        };
        let got = (
            x("u/dir2", "trusted.overlay.redirect"),
            x("u/dir2/f", "trusted.overlay.metacopy"),
            std::fs::metadata(r.join("u/dir2/f")).unwrap().len(),
        );
        assert_eq!(got, (Ok(b"dir".to_vec()), Ok(Vec::new()), 4), "{backend}");
    }
}

/// `-o index=on` means the same with either backend: a chmod of one name of a hard-linked
/// lower file copies it up to the workdir's index, and the other name shows the copy (one
/// inode, two links) through the mount; the upper root records its lower root's origin.
#[test]
fn index_alike_on_both_backends() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for backend in ["kernel", "fuse"] {
        let t = open_tempdir();
        let r = t.path();
        write(r, "l/dir/f", "data");
        std::fs::hard_link(r.join("l/dir/f"), r.join("l/g")).unwrap();
        mkdirs(r, &["m", "state"]);
        let m = r.join("m");
        let _c = Cleanup(m.clone());
        let state = r.join("state");
        let o = ovl_with_state(
            &state,
            args![
                "mount",
                "--backend",
                backend,
                "--lower",
                r.join("l").as_os_str(),
                "--upper",
                r.join("u").as_os_str(),
                "--work",
                r.join("w").as_os_str(),
                "-o",
                "index=on",
                m.as_os_str()
            ],
        );
        if !o.status.success() {
            return skip_or_fail(&format!("{backend} mount failed: {}", stderr(&o)));
        }
        std::fs::set_permissions(m.join("g"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let (f, g) = (
            std::fs::metadata(m.join("dir/f")).unwrap(),
            std::fs::metadata(m.join("g")).unwrap(),
        );
        let seen = (f.ino() == g.ino(), f.nlink(), f.mode() & 0o777);
        assert_eq!(seen, (true, 2, 0o600), "{backend}: through the mount");
        let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let index: Vec<_> = std::fs::read_dir(r.join("w/index"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(index.len(), 1, "{backend}: index entries {index:?}");
        let entry = std::fs::metadata(&index[0]).unwrap();
        assert_eq!(entry.ino(), std::fs::metadata(r.join("u/g")).unwrap().ino());
        let mut b = vec![0u8; 256];
        let origin = rustix::fs::lgetxattr(r.join("u"), "trusted.overlay.origin", &mut b[..]);
        assert!(origin.is_ok(), "{backend}: no origin on the upper root");
    }
}
