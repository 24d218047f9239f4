//! The `ovl-fuse` binary: daemonizing, unmount paths, mount(8) helper syntax, signals, error
//! reporting, a rootless mount as `nobody`, and the cross-mount interchange with the kernel
//! overlay in both directions.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn sample_lower(l: &Layers) {
    put(l.lower().join("a"), b"lower a");
    put(l.lower().join("dir/b"), b"lower b");
}

#[test]
fn daemonizes_and_exits_on_umount() {
    if !can_mount("daemonizes_and_exits_on_umount") {
        return;
    }
    let l = Layers::new(1);
    sample_lower(&l);
    let opts = l.options();
    let d = Daemon::daemonized(
        &[OsStr::new("-o"), OsStr::new(&opts), l.mnt.as_os_str()],
        &l.mnt,
    );
    // The mount is live as soon as the command returned.
    assert_eq!(fs::read(l.mnt.join("a")).unwrap(), b"lower a");
    // Its type names the program, as fuse-overlayfs's does (`fuse.fuse-overlayfs`).
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let fstype = mounts
        .lines()
        .map(|m| m.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(1).copied() == l.mnt.to_str())
        .map(|f| f[2].to_string());
    assert_eq!(fstype.as_deref(), Some("fuse.ovl-fuse"));
    fs::write(l.mnt.join("new"), b"n").unwrap();
    let mut d = d;
    d.unmount_cmd = Some({
        let mut c = Command::new("umount");
        c.arg(&l.mnt);
        c
    });
    d.unmount_and_wait();
    assert_eq!(fs::read(l.upper.join("new")).unwrap(), b"n");
    assert!(daemons_for(&l.mnt).is_empty());
}

#[test]
fn fusermount3_unmounts_and_the_daemon_exits() {
    if !can_mount("fusermount3_unmounts_and_the_daemon_exits") {
        return;
    }
    let l = Layers::new(1);
    sample_lower(&l);
    // mount(8) helper style: SOURCE MOUNTPOINT -o OPTIONS.
    let opts = format!("rw,nodev,noatime,{}", l.options());
    let mut d = Daemon::daemonized(
        &[
            OsStr::new("my-overlay"),
            l.mnt.as_os_str(),
            OsStr::new("-o"),
            OsStr::new(&opts),
        ],
        &l.mnt,
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|m| m.split(' ').nth(1) == Some(l.mnt.to_str().unwrap()))
        .unwrap();
    assert!(line.starts_with("my-overlay "), "{line}");
    assert!(line.contains("nodev"), "{line}");
    assert_eq!(fs::read(l.mnt.join("dir/b")).unwrap(), b"lower b");
    d.unmount_cmd = Some({
        let mut c = Command::new("fusermount3");
        c.arg("-u").arg(&l.mnt);
        c
    });
    d.unmount_and_wait();
}

#[test]
fn mount8_runs_it_as_a_fuse_helper() {
    if !can_mount("mount8_runs_it_as_a_fuse_helper") {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/usr/sbin/mount.fuse3").exists() {
        skip(
            "mount8_runs_it_as_a_fuse_helper",
            "mount.fuse3 (package fuse3) is missing",
        );
        return;
    }
    let l = Layers::new(1);
    sample_lower(&l);
    // `mount -t fuse PROG#SOURCE` is what `-t fuse.ovl-fuse` becomes once ovl-fuse is in
    // mount(8)'s helper PATH.
    let st = Command::new("mount")
        .arg("-t")
        .arg("fuse")
        .arg(format!("{BIN}#ovl-src"))
        .arg(&l.mnt)
        .arg("-o")
        .arg(l.options())
        .status()
        .unwrap();
    assert!(st.success());
    let mut d = Daemon::adopt(&l.mnt);
    assert_eq!(fs::read(l.mnt.join("a")).unwrap(), b"lower a");
    d.unmount_cmd = Some({
        let mut c = Command::new("umount");
        c.arg(&l.mnt);
        c
    });
    d.unmount_and_wait();
}

#[test]
fn sigterm_unmounts_and_exits() {
    if !can_mount("sigterm_unmounts_and_exits") {
        return;
    }
    let l = Layers::new(1);
    sample_lower(&l);
    let mut d = Daemon::foreground(&l.options(), &l.mnt);
    let pid = d.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_mounted(&l.mnt, false, Duration::from_secs(10)));
    let st = d.child.take().unwrap().wait().unwrap();
    assert!(st.success(), "{st}");
    d.pid = None;
}

#[test]
fn errors_are_reported_and_nothing_is_left_behind() {
    if !can_mount("errors_are_reported_and_nothing_is_left_behind") {
        return;
    }
    let l = Layers::new(1);
    let missing = l.tmp.path().join("no-such-layer");
    let out = Command::new(BIN)
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            missing.display(),
            l.upper.display(),
            l.work.display()
        ))
        .arg(&l.mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-layer"), "{err}");
    assert!(!is_mounted(&l.mnt));
    assert!(daemons_for(&l.mnt).is_empty());
    // Unknown options are refused, unimplemented fuse-overlayfs ones warned about.
    let out = Command::new(BIN)
        .args(["-o", "lowerdir=/x,frobnicate"])
        .arg(&l.mnt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
    sample_lower(&l);
    let opts = format!("{},plugins=foo.so", l.options());
    let mut c = Command::new(BIN);
    c.stderr(Stdio::piped());
    let mut d = Daemon::foreground_with(c, &opts, &l.mnt);
    d.unmount();
    let out = d.child.take().unwrap().wait_with_output().unwrap();
    d.pid = None;
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugins=foo.so is not implemented"));
}

/// Makes /dev/fuse usable by everyone (its usual 0666) for the life of the guard, restoring
/// the original mode afterwards (this machine ships it 0600, which rules out any
/// unprivileged FUSE mount: fusermount3 opens it with the caller's rights).
struct DevFuseOpen {
    mode: u32,
}

impl DevFuseOpen {
    fn new() -> DevFuseOpen {
        let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(mode | 0o666)).unwrap();
        DevFuseOpen { mode }
    }
}

impl Drop for DevFuseOpen {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.mode));
    }
}

/// Rootless: the daemon runs as `nobody` and mounts through the setuid fusermount3 (fuser's
/// fallback after mount(2) fails with EPERM), stores overlay metadata in `user.overlay.*`,
/// and `nobody` unmounts with `fusermount3 -u`.
#[test]
fn rootless_mount_as_nobody() {
    if !can_mount("rootless_mount_as_nobody") {
        return;
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        skip(
            "rootless_mount_as_nobody",
            "fusermount3 (package fuse3) is missing",
        );
        return;
    }
    const NOBODY: u32 = 65534;
    let l = Layers::new(1);
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    put(l.lower().join("a"), b"lower a");
    put(l.lower().join("gone"), b"g");
    put(l.lower().join("opq/old"), b"o");
    for p in [l.lower(), &l.lower().join("a"), &l.lower().join("gone")] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    for p in [l.lower().join("opq"), l.lower().join("opq/old")] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    for p in [&l.upper, &l.work, &l.mnt] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let as_nobody = |prog: &str| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
            prog,
        ]);
        c
    };
    let _dev_fuse = DevFuseOpen::new();
    let mut d = Daemon::foreground_with(as_nobody(BIN), &l.options(), &l.mnt);
    let line = fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|m| m.split(' ').nth(1) == Some(l.mnt.to_str().unwrap()))
        .map(str::to_string)
        .unwrap();
    assert!(line.contains("user_id=65534"), "not a user mount: {line}");
    assert_eq!(line.split(' ').nth(2), Some("fuse.ovl-fuse"), "{line}");
    let m = l.mnt.display();
    let script = format!(
        "set -e; test \"$(cat {m}/a)\" = 'lower a'; echo new > {m}/new; echo more >> {m}/a; \
         rm {m}/gone; rm {m}/opq/old; rmdir {m}/opq; mkdir {m}/opq; touch {m}/opq/fresh; \
         test \"$(ls {m}/opq)\" = fresh; test \"$(ls {m})\" = \"$(printf 'a\\nnew\\nopq')\"; \
         test \"$(stat -c %u {m}/new)\" = 65534"
    );
    let out = as_nobody("sh").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "operations as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On disk: kernel format with the user.overlay.* namespace.
    let gone = fs::symlink_metadata(l.upper.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    let mut v = [0u8; 8];
    let n = rustix::fs::lgetxattr(l.upper.join("opq"), "user.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
    assert_eq!(fs::metadata(l.upper.join("new")).unwrap().uid(), NOBODY);
    assert_eq!(fs::read(l.lower().join("a")).unwrap(), b"lower a");
    // nobody unmounts; the daemon exits by itself.
    d.unmount_cmd = Some({
        let mut c = as_nobody("fusermount3");
        c.arg("-u").arg(&l.mnt);
        c
    });
    d.unmount_and_wait();
}

/// Layers used by the interchange tests.
fn interchange_lowers(l: &Layers) {
    let (top, bottom) = (&l.lowers[0], &l.lowers[1]);
    put(bottom.join("a"), b"bottom a");
    put(top.join("a"), b"top a");
    put(top.join("top_only"), b"t");
    put(bottom.join("keep"), b"keep");
    put(bottom.join("gone"), b"gone");
    put(bottom.join("dir_gone/f"), b"f");
    put(bottom.join("dir_gone/sub/g"), b"g");
    put(bottom.join("opq/old1"), b"1");
    put(top.join("opq/old2"), b"2");
    put(bottom.join("ren_src"), b"renamed");
    put(bottom.join("chm"), b"chmod me");
    put(bottom.join("big"), &vec![7u8; 100_000]);
    put(bottom.join("d/x"), b"x");
}

/// The same changes, made through either mount.
fn mutate(m: &Path) {
    fs::write(m.join("new_file"), b"new").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("a"))
        .unwrap()
        .write_all(b" appended")
        .unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    fs::remove_dir_all(m.join("dir_gone")).unwrap();
    fs::remove_file(m.join("opq/old1")).unwrap();
    fs::remove_file(m.join("opq/old2")).unwrap();
    fs::remove_dir(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    fs::write(m.join("opq/fresh"), b"fresh").unwrap();
    fs::rename(m.join("ren_src"), m.join("ren_dst")).unwrap();
    std::os::unix::fs::symlink("a", m.join("sym")).unwrap();
    fs::hard_link(m.join("new_file"), m.join("new_link")).unwrap();
    fs::set_permissions(m.join("chm"), fs::Permissions::from_mode(0o600)).unwrap();
    rustix::fs::lsetxattr(
        m.join("new_file"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        m.join("d"),
        "user.dir",
        b"yes",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::create_dir_all(m.join("newdir/sub")).unwrap();
    fs::write(m.join("newdir/sub/f"), b"deep").unwrap();
    fs::rename(m.join("newdir"), m.join("newdir2")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("big"))
        .unwrap()
        .set_len(10)
        .unwrap();
}

fn check_expected(s: &std::collections::BTreeMap<std::path::PathBuf, Snap>) {
    let has = |p: &str| s.contains_key(Path::new(p));
    for p in [
        "gone", "dir_gone", "opq/old1", "opq/old2", "ren_src", "newdir",
    ] {
        assert!(!has(p), "{p} should be gone");
    }
    for p in [
        "a",
        "top_only",
        "keep",
        "opq/fresh",
        "ren_dst",
        "sym",
        "new_link",
        "newdir2/sub/f",
        "d/x",
    ] {
        assert!(has(p), "{p} should exist");
    }
    match s.get(Path::new("a")) {
        Some(Snap::File { content, .. }) => assert_eq!(content, b"top a appended"),
        other => panic!("a: {other:?}"),
    }
}

#[test]
fn interchange_fuse_upper_mounted_by_the_kernel() {
    if !can_mount("interchange_fuse_upper_mounted_by_the_kernel") {
        return;
    }
    let l = Layers::new(2);
    interchange_lowers(&l);
    let d = Daemon::foreground(&l.options(), &l.mnt);
    mutate(&l.mnt);
    let through_fuse = snapshot(&l.mnt);
    check_expected(&through_fuse);
    d.unmount_and_wait();
    let k = KernelOverlay::mount(&l);
    let through_kernel = snapshot(&l.mnt);
    drop(k);
    assert_same_tree(
        &through_fuse,
        &through_kernel,
        "FUSE-written upper, kernel view",
    );
}

#[test]
fn interchange_kernel_upper_mounted_by_fuse() {
    if !can_mount("interchange_kernel_upper_mounted_by_fuse") {
        return;
    }
    let l = Layers::new(2);
    interchange_lowers(&l);
    let k = KernelOverlay::mount(&l);
    mutate(&l.mnt);
    let through_kernel = snapshot(&l.mnt);
    check_expected(&through_kernel);
    drop(k);
    assert!(!is_mounted(&l.mnt));
    let d = Daemon::foreground(&l.options(), &l.mnt);
    let through_fuse = snapshot(&l.mnt);
    d.unmount_and_wait();
    assert_same_tree(
        &through_kernel,
        &through_fuse,
        "kernel-written upper, FUSE view",
    );
}

/// A pipe whose reading end is already closed (writing to it fails with EPIPE).
fn closed_pipe() -> Stdio {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    drop(r);
    Stdio::from(w)
}

/// `ovl-fuse --help | true` and a warning or error written to a closed stderr end with the
/// exit status they would have anyway, not with a panic (101).
#[test]
fn a_closed_pipe_is_not_a_panic() {
    for flag in ["--help", "--version"] {
        let out = Command::new(BIN)
            .arg(flag)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    // A warning (plugins= is not implemented), then an error (no such lower).
    let out = Command::new(BIN)
        .arg("-o")
        .arg(format!(
            "lowerdir={},plugins=x.so",
            tmp.path().join("missing").display()
        ))
        .arg(tmp.path())
        .stdin(Stdio::null())
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A usage error.
    let out = Command::new(BIN)
        .arg("--frobnicate")
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The per-mount options (mountinfo's sixth field) of the mount on `mnt`.
fn mount_flags_of(mnt: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| f.get(4).copied() == mnt.to_str())
        .map(|f| f[5].split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// Even for root, the mount is `nodev,nosuid` unless `-o dev`/`-o suid` ask otherwise (as
/// fuse-overlayfs's): a device node or a setuid binary in a layer does not take effect.
#[test]
fn nodev_nosuid_unless_asked() {
    if !can_mount("nodev_nosuid_unless_asked") {
        return;
    }
    let l = Layers::new(1);
    sample_lower(&l);
    let d = Daemon::foreground(&l.options(), &l.mnt);
    let flags = mount_flags_of(&l.mnt);
    assert!(
        flags.iter().any(|f| f == "nodev") && flags.iter().any(|f| f == "nosuid"),
        "default mount flags: {flags:?}"
    );
    d.unmount_and_wait();
    let d = Daemon::foreground(&format!("{},dev,suid", l.options()), &l.mnt);
    let flags = mount_flags_of(&l.mnt);
    assert!(
        !flags.iter().any(|f| f == "nodev" || f == "nosuid"),
        "-o dev,suid: {flags:?}"
    );
    d.unmount_and_wait();
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("nodev,nosuid unless -o dev"));
}

/// A warning and an error are each printed once (not again through the log, which is stderr
/// too).
#[test]
fn each_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = Command::new(BIN)
        .arg("-o")
        .arg(format!("lowerdir={},plugins=x.so", missing.display()))
        .arg(tmp.path())
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .env_remove("OVL_FUSE_LOG_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("plugins=x.so").count(), 1, "{err}");
    assert_eq!(err.matches("missing").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
}
