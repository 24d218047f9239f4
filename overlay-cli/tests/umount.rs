//! `ovl umount`, `ovl status` and `ovl diff` on mounts as they really are: image lowers and
//! their loop devices, an `ovl mount` that died half-way, a FUSE daemon that was killed,
//! overlays ovl did not make, busy mounts, and one error line per failure.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// Unmounts whatever is still mounted on the target, and the image and tmpfs mounts made
/// for this test's layers (found by [`scratch_mounts`]), also on panic.
struct Cleanup {
    target: PathBuf,
    root: PathBuf,
}

impl Cleanup {
    fn new(target: &Path) -> Cleanup {
        Cleanup {
            target: target.to_path_buf(),
            root: target.parent().unwrap().to_path_buf(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while is_mounted(&self.target) {
            if rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
        for m in scratch_mounts(&self.root) {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_dir(&m);
        }
    }
}

/// Image lower and tmpfs upper mount points (`ovl-image-*`, `ovl-tmp-*`) made for the test
/// under `root`: tmpfs uppers live in its state directory, image mounts come from loop
/// devices backed by its image files. Other tests' (and other people's) mounts are not
/// counted.
fn scratch_mounts(root: &Path) -> BTreeSet<PathBuf> {
    let ours = loops_backed_by(root);
    overlay_core::mount::mountinfo::read_mountinfo()
        .unwrap()
        .into_iter()
        .filter(|m| {
            let n = m
                .mount_point
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (n.starts_with("ovl-tmp-") && m.mount_point.starts_with(root))
                || (n.starts_with("ovl-image-")
                    && ours.iter().any(|l| m.source == format!("/dev/{l}")))
        })
        .map(|m| m.mount_point)
        .collect()
}

/// Loop devices whose backing file lies under `dir`, once the kernel had up to 5 s to clear
/// auto-clearing ones (it does that after the last user closes them, not synchronously with
/// the unmount).
fn loops_left(dir: &Path) -> Vec<String> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let v = loops_backed_by(dir);
        if v.is_empty() || std::time::Instant::now() > end {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Loop devices whose backing file lies under `dir`.
fn loops_backed_by(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(b.trim()).starts_with(dir) {
                out.push(name);
            }
        }
    }
    out
}

fn root_or_skip() -> bool {
    common::root_or_skip("ovl mount in the caller's namespace needs root")
}

/// Image files made from `src`: a squashfs and an EROFS image, or None (skipped) when the
/// tools are missing.
fn images(r: &Path) -> Option<(PathBuf, PathBuf)> {
    write(r, "src/etc/from-image", "image");
    let (sq, er) = (r.join("lower.sqfs"), r.join("lower.erofs"));
    let ok = Command::new("mksquashfs")
        .arg(r.join("src"))
        .arg(&sq)
        .args(["-quiet", "-noappend"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(&er)
            .arg(r.join("src"))
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        skip_or_fail("mksquashfs and mkfs.erofs (squashfs-tools, erofs-utils) are needed");
        return None;
    }
    Some((sq, er))
}

fn mount_images(state: &Path, sq: &Path, er: &Path, m: &Path, die: bool) -> std::process::Output {
    let mut c = Command::new(ovl_bin());
    c.args(args![
        "mount",
        "--lower",
        sq.as_os_str(),
        "--lower",
        er.as_os_str(),
        "--tmp=8m",
        m.as_os_str()
    ])
    .env("OVL_STATE_DIR", state)
    .env_remove("RUST_LOG");
    if die {
        c.env("OVL_TEST_DIE_AFTER_MOUNT", "1");
    }
    c.output().unwrap()
}

#[test]
fn image_lowers_and_their_loop_devices_go_at_umount() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    let Some((sq, er)) = images(r) else { return };
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = mount_images(&state, &sq, &er, &m, false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(m.join("etc/from-image")).unwrap(),
        "image"
    );
    assert_eq!(loops_backed_by(r).len(), 2, "one loop device per image");
    assert_eq!(scratch_mounts(r).len(), 3, "two images and the tmpfs upper");
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&m));
    assert_eq!(scratch_mounts(r), BTreeSet::new(), "left mounted");
    assert_eq!(loops_left(r), Vec::<String>::new(), "loop devices left");
}

#[test]
fn umount_cleans_up_after_an_ovl_that_died_while_mounting() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    let Some((sq, er)) = images(r) else { return };
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    // Killed (SIGKILL) right after mounting, before it recorded the mount.
    let o = mount_images(&state, &sq, &er, &m, true);
    assert_eq!(o.status.code(), None, "killed by a signal: {o:?}");
    assert!(is_mounted(&m));
    let s = stdout(&ovl_with_state(&state, args!["status"]));
    assert!(s.contains("died before finishing"), "{s}");
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&m));
    assert_eq!(scratch_mounts(r), BTreeSet::new(), "left mounted");
    assert_eq!(loops_left(r), Vec::<String>::new(), "loop devices left");
    let s = stdout(&ovl_with_state(&state, args!["status"]));
    assert!(s.contains("no overlays mounted"), "{s}");
}

/// Pids of ovl-fuse processes whose command line names `mnt`.
fn fuse_daemons_for(mnt: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"ovl-fuse"))
            && args.contains(&mnt.as_os_str().as_encoded_bytes())
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn status_reports_a_killed_fuse_daemon_and_umount_removes_the_mount() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--backend",
            "fuse",
            "--lower",
            r.join("l").as_os_str(),
            "--upper",
            r.join("u").as_os_str(),
            m.as_os_str()
        ],
    );
    if !o.status.success() {
        return skip_or_fail(&format!("FUSE mount failed: {}", stderr(&o)));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&ovl_with_state(&state, args!["status", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["health"], "ok", "{v}");
    let pids = fuse_daemons_for(&m);
    assert_eq!(pids.len(), 1);
    assert_eq!(
        v[0]["fuse_pid"], pids[0],
        "the daemon's pid is recorded: {v}"
    );
    let daemon = rustix::process::Pid::from_raw(pids[0]).unwrap();
    // A stopped daemon answers nothing: status says so, and does not wait for it.
    rustix::process::kill_process(daemon, rustix::process::Signal::STOP).unwrap();
    // SIGSTOP takes effect asynchronously: wait until the daemon is seen stopped.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !daemon_is_stopped(pids[0]) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = status_within(&state, std::time::Duration::from_secs(20));
    rustix::process::kill_process(daemon, rustix::process::Signal::CONT).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.expect("ovl status hung")).unwrap();
    assert_eq!(v[0]["health"], "daemon-stopped", "{v}");
    rustix::process::kill_process(daemon, rustix::process::Signal::KILL).unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !fuse_daemons_for(&m).is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&ovl_with_state(&state, args!["status", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["health"], "daemon-gone", "{v}");
    let s = stdout(&ovl_with_state(&state, args!["status"]));
    assert!(s.contains("BROKEN: daemon PID gone"), "{s}");
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&m));
}

#[test]
fn umount_refuses_an_overlay_ovl_did_not_make_unless_forced() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    let k = KernelOverlay::mount_in(r, &["l"], "").unwrap();
    let m = r.join("merged");
    let state = r.join("state");
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not mounted by ovl") && err.contains("--force"),
        "{err}"
    );
    assert!(is_mounted(&m), "refused, so still mounted");
    let o = ovl_with_state(&state, args!["umount", "--force", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_mounted(&m));
    drop(k);
}

#[test]
fn a_busy_mount_says_what_to_do() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--tmp",
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let held = std::fs::File::open(m.join("f")).unwrap();
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("busy") && err.contains("fuser -vm") && err.contains("--lazy"),
        "{err}"
    );
    assert!(is_mounted(&m), "not detached behind the user's back");
    drop(held);
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn diff_of_a_mount_point_diffs_its_upper() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/kept", "lower");
    write(r, "l/gone", "lower");
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--upper",
            r.join("u").as_os_str(),
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(m.join("new"), "n").unwrap();
    std::fs::remove_file(m.join("gone")).unwrap();
    let expected = ["A /new", "D /gone"];
    let o = ovl_with_state(&state, args!["diff", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut got = lines(&o);
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "ovl diff MOUNTPOINT");
    assert!(ovl_with_state(&state, args!["umount", m.as_os_str()])
        .status
        .success());
    // An overlay ovl did not make: the kernel's upperdir= (and lowers) from mountinfo.
    let k = KernelOverlay::mount_in(r, &["l"], "").unwrap();
    std::fs::write(r.join("merged/other"), "o").unwrap();
    let o = ovl_with_state(&state, args!["diff", r.join("merged").as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), ["A /other"]);
    drop(k);
}

/// The same failure, reported once: by the first backend that sees the layers are wrong.
#[test]
fn each_error_once_on_one_line() {
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    write(r, "dirty/leftover", "x");
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--upper",
            r.join("u").as_os_str(),
            "--work",
            r.join("dirty").as_os_str(),
            m.as_os_str()
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("not empty").count(), 1, "{err}");
    assert!(!err.contains("ovl-fuse exited"), "{err}");
}

/// No message names ovl's own temporary directories (a tmpfs upper's mount point, an image
/// lower's mount directory): what the user gave instead, `--tmp` or the image file.
fn assert_no_internal_paths(err: &str, state: &Path) {
    for bad in ["/run/ovl/", "ovl-image-", "ovl-tmp-"] {
        assert!(!err.contains(bad), "names an internal path ({bad}): {err}");
    }
    assert!(
        !err.contains(&*state.join("tmp").to_string_lossy()),
        "names the scratch directory: {err}"
    );
}

/// A stand-in for ovl-fuse that fails naming the layers it was given, as the real one does
/// when a layer is wrong.
fn failing_fuse(r: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = r.join("fake-ovl-fuse");
    std::fs::write(
        &p,
        "#!/bin/sh\necho \"ovl-fuse: cannot use these layers: $2\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn failed_mounts_name_tmp_and_image_lowers_as_given() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let fake = failing_fuse(r);
    // The FUSE backend's error quotes its options, upperdir= and workdir= inside the tmpfs.
    let o = Command::new(ovl_bin())
        .args(args![
            "mount",
            "--backend",
            "fuse",
            "--lower",
            r.join("l").as_os_str(),
            "--tmp",
            m.as_os_str()
        ])
        .env("OVL_STATE_DIR", &state)
        .env("OVL_FUSE", &fake)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = stderr(&o);
    assert_no_internal_paths(&err, &state);
    assert!(err.contains("upperdir=the tmpfs upper (--tmp)"), "{err}");
    assert!(!is_mounted(&m));
    assert_eq!(scratch_mounts(r), BTreeSet::new(), "left mounted");

    let Some((sq, _)) = images(r) else { return };
    let missing = r.join("missing");
    let cases: [&[&std::ffi::OsStr]; 3] = [
        // An image lower under a second layer that does not exist.
        args![
            "mount",
            "--lower",
            sq.as_os_str(),
            "--lower",
            missing.as_os_str(),
            "--tmp",
            m.as_os_str()
        ],
        // A mount point that does not exist.
        args![
            "mount",
            "--lower",
            sq.as_os_str(),
            "--tmp",
            missing.as_os_str()
        ],
        // Kernel refused (conflicting options), then FUSE, which cannot take images.
        args![
            "mount",
            "--lower",
            sq.as_os_str(),
            "--tmp",
            "-o",
            "userxattr",
            m.as_os_str()
        ],
    ];
    for a in cases {
        let o = Command::new(ovl_bin())
            .args(a)
            .env("OVL_STATE_DIR", &state)
            .env("OVL_FUSE", &fake)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{a:?}: {o:?}");
        assert_no_internal_paths(&stderr(&o), &state);
        assert!(!is_mounted(&m));
        assert_eq!(scratch_mounts(r), BTreeSet::new(), "{a:?}: left mounted");
    }
    assert_eq!(loops_left(r), Vec::<String>::new(), "loop devices left");
}

/// Releasing an image lower at `ovl umount` fails (here: something is mounted on its
/// directory): the message names the image file, not its mount directory.
#[test]
fn umount_names_an_image_lower_by_its_file() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    let Some((sq, er)) = images(r) else { return };
    mkdirs(r, &["m"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = mount_images(&state, &sq, &er, &m, false);
    assert!(o.status.success(), "{}", stderr(&o));
    let dirs: Vec<PathBuf> = scratch_mounts(r)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("ovl-image-"))
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    /// Unmounts everything on the image directories, also on panic.
    struct Under(Vec<PathBuf>);
    impl Drop for Under {
        fn drop(&mut self) {
            for d in &self.0 {
                while rustix::mount::unmount(d, rustix::mount::UnmountFlags::DETACH).is_ok() {}
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let _u = Under(dirs.clone());
    for d in &dirs {
        rustix::mount::mount(
            "tmpfs",
            d,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap();
    }
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_no_internal_paths(&err, &state);
    assert!(
        err.contains(&*sq.to_string_lossy()) || err.contains(&*er.to_string_lossy()),
        "names the image file: {err}"
    );
    assert!(!is_mounted(&m));
}

/// The daemon is in state T (stopped), as `/proc/PID/stat` says.
fn daemon_is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// The stdout of `ovl status --json`, or `None` if it did not finish within `limit` (it is
/// killed then): a hang guard, not a timing assertion.
fn status_within(state: &std::path::Path, limit: std::time::Duration) -> Option<Vec<u8>> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ovl"))
        .args(["status", "--json"])
        .env("OVL_STATE_DIR", state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    Some(out)
}

/// `ovl diff MOUNTPOINT` of a `--tmp` mount, run by a user who cannot read ovl's records
/// nor the upper (it is under root's 0700 scratch directory): the error names "the tmpfs
/// upper (--tmp)", found from the mount table, never ovl's own directory for it.
#[test]
fn diff_errors_name_the_tmpfs_upper_as_given() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    mkdirs(r, &["m", "state"]);
    let (m, state) = (r.join("m"), r.join("state"));
    let _c = Cleanup::new(&m);
    let o = ovl_with_state(
        &state,
        args![
            "mount",
            "--lower",
            r.join("l").as_os_str(),
            "--tmp",
            m.as_os_str()
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_ovl"))
        .args(["diff".as_ref(), m.as_os_str()])
        .env("OVL_STATE_DIR", &state)
        .output()
        .expect("run ovl diff as nobody (setpriv)");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the tmpfs upper (--tmp)"), "{err}");
    assert_no_internal_paths(&err, &state);
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The FUSE daemon's log, when the caller chose none, lives in a private directory of
/// ovl's (0700, a name nobody could plant a symlink at), never under a predictable name in
/// the shared temp dir, where a planted symlink would make root append to any file.
#[test]
fn the_fuse_daemons_log_is_in_a_private_directory() {
    if !root_or_skip() {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "lower");
    mkdirs(r, &["m", "tmp"]);
    let (m, state, tmp) = (r.join("m"), r.join("state"), r.join("tmp"));
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let _c = Cleanup::new(&m);
    let o = Command::new(env!("CARGO_BIN_EXE_ovl"))
        .args(["mount", "--backend", "fuse", "--read-only", "--lower"])
        .arg(r.join("l"))
        .arg(&m)
        .env("OVL_STATE_DIR", &state)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    if !o.status.success() {
        return skip_or_fail(&format!("FUSE mount failed: {}", stderr(&o)));
    }
    let pids = fuse_daemons_for(&m);
    assert_eq!(pids.len(), 1);
    // The daemon's open files in the temp dir: its log.
    let in_tmp: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", pids[0]))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|p| std::path::PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")))
        .filter(|p| p.starts_with(&tmp))
        .collect();
    assert_eq!(in_tmp.len(), 1, "the daemon's files in TMPDIR: {in_tmp:?}");
    let log = &in_tmp[0];
    let dir = log.parent().unwrap();
    assert_ne!(
        dir,
        tmp,
        "the log is right in the shared temp dir: {}",
        log.display()
    );
    assert!(dir.starts_with(&tmp), "{}", log.display());
    // Made by private_dir_in (0700, exclusive), and gone once the mount is up (the daemon
    // keeps its log open).
    let name = dir.file_name().unwrap().to_string_lossy();
    assert!(name.starts_with("ovl-fuse-"), "{}", log.display());
    assert!(!dir.exists(), "left behind: {}", dir.display());
    let o = ovl_with_state(&state, args!["umount", m.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
}
