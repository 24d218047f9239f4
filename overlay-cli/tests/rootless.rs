//! `ovl run` for a real non-root user (created by the test with useradd): a root-like
//! throwaway `/usr` and root file system (FUSE with ownership squashed to root inside the
//! user namespace), a 0600 file of root named when it cannot be copied up, and `--keep`
//! read back by `ovl diff`.
//!
//! The user needs a usable `/dev/fuse`, as on a fresh Debian machine (mode 0666). Where the
//! device is root-only (some containers), the test binds a 0666 node of the same device over
//! `/dev/fuse` in a private mount namespace of the user's command only.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The user the tests create (once) and run `ovl` as.
const USER: &str = "ovl-rootless-test";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Everything the tests need to run `ovl` as [`USER`]: the binaries copied where the user
/// can run them, and a 0666 FUSE device node (bound over /dev/fuse when that is root-only).
struct AsUser {
    dir: tempfile::TempDir,
    uid: u32,
}

impl AsUser {
    /// `None` (after skip_or_fail) when something is missing.
    fn new() -> Option<AsUser> {
        if !root_or_skip("these tests need root to create a user and switch to it") {
            return None;
        }
        for tool in ["setpriv", "useradd", "unshare"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |o| !o.status.success())
            {
                skip_or_fail(&format!("{tool} (util-linux/passwd) is not installed"));
                return None;
            }
        }
        let uid = match create_user() {
            Ok(u) => u,
            Err(why) => {
                skip_or_fail(&why);
                return None;
            }
        };
        let fuse = ovl_bin().parent().unwrap().join("ovl-fuse");
        if !fuse.is_file() {
            skip_or_fail(&format!(
                "{} is not built (cargo build --workspace)",
                fuse.display()
            ));
            return None;
        }
        let dir = open_tempdir();
        for (from, name) in [(ovl_bin(), "ovl"), (fuse, "ovl-fuse")] {
            let to = dir.path().join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fuse"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(10, 229),
        )
        .expect("mknod a FUSE device node");
        std::fs::set_permissions(
            dir.path().join("fuse"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        Some(AsUser { dir, uid })
    }

    /// Scratch space the user owns.
    fn home(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        rustix::fs::chown(
            &p,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.uid)),
        )
        .unwrap();
        p
    }

    /// Run `ovl ARGS` as the user (stdin closed), with its own state directory.
    fn ovl(&self, args: &[&str]) -> Output {
        let bin = self.dir.path().join("ovl");
        let state = self.home("state");
        let fuse_node = self.dir.path().join("fuse");
        // Bind the 0666 node over /dev/fuse only where the real one is root-only.
        let bind = if dev_fuse_is_world_usable() {
            String::new()
        } else {
            format!("mount --bind '{}' /dev/fuse && ", s(&fuse_node))
        };
        let script =
            format!("{bind}exec setpriv --reuid={USER} --regid={USER} --init-groups -- \"$@\"");
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(&bin)
            .args(args)
            .env("OVL_STATE_DIR", state)
            .env("HOME", format!("/home/{USER}"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ovl as the test user")
    }
}

/// [`USER`]'s uid, creating the user (once per test process: the tests run in parallel).
fn create_user() -> Result<u32, String> {
    static UID: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
    UID.get_or_init(|| {
        if let Some(u) = user_uid() {
            return Ok(u);
        }
        let o = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", USER])
            .output()
            .map_err(|e| format!("useradd: {e}"))?;
        if !o.status.success() {
            return Err(format!("useradd {USER}: {}", stderr(&o)));
        }
        user_uid().ok_or_else(|| format!("{USER} does not exist after useradd"))
    })
    .clone()
}

fn user_uid() -> Option<u32> {
    let o = Command::new("id").args(["-u", USER]).output().ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn dev_fuse_is_world_usable() -> bool {
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.mode() & 0o006 == 0o006)
}

/// stdout and stderr, for assertion messages.
fn both(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o))
}

/// The example, literally, on the real /usr: the command is root over files that
/// look like root's, and the host's /usr is untouched. The mode it ends with is the one real
/// root gets from the same commands on a kernel overlay.
#[test]
fn a_user_is_root_over_a_throwaway_usr() {
    let Some(u) = AsUser::new() else { return };
    let new = format!("/usr/bin/ovl-test-new-{}", std::process::id());
    let script = format!(
        "rm -rf /usr/share/doc && touch {new} && chmod 4755 {new} && chown 0:0 {new} \
         && id -u && id -g && stat -c '%u:%g %A' {new} && stat -c '%u:%g' /usr/bin/sh /usr/share \
         && test ! -e /usr/share/doc && echo gone"
    );
    let o = u.ovl(&[
        "run", "--tmp", "--target", "/usr", "--", "sh", "-c", &script,
    ]);
    assert!(o.status.success(), "{}", both(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0..2], ["0", "0"], "{}", both(&o));
    assert!(lines[2].starts_with("0:0 "), "{}", both(&o));
    assert_eq!(lines[3..], ["0:0", "0:0", "gone"], "{}", both(&o));
    // Real root on the kernel overlay: chown(2) clears the set-uid bit there too.
    let root = ovl([
        "run", "--tmp", "--target", "/usr", "--", "sh", "-c", &script,
    ]);
    assert!(root.status.success(), "{}", both(&root));
    assert_eq!(
        stdout(&root).lines().nth(2),
        Some(lines[2]),
        "{}",
        both(&root)
    );
    // The host is untouched.
    assert!(!Path::new(&new).exists());
    assert!(Path::new("/usr/share/doc").is_dir());
}

/// `--root` as the user: a whole root file system in which the user is root; a 0600 file of
/// root cannot be copied up, and ovl names it once.
#[test]
fn a_user_is_root_over_a_throwaway_root_file_system() {
    let Some(u) = AsUser::new() else { return };
    let marker = format!("/etc/ovl-test-root-{}", std::process::id());
    let script = format!(
        "id -u && touch {marker} && chown 0:0 {marker} && stat -c '%u:%g' {marker} /etc/passwd && rm /etc/passwd && test ! -e /etc/passwd && echo removed"
    );
    let o = u.ovl(&["run", "--tmp", "--root", "--", "sh", "-c", &script]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "0\n0:0\n0:0\nremoved\n", "{}", both(&o));
    assert!(!Path::new(&marker).exists());
    assert!(Path::new("/etc/passwd").is_file());
}

/// Only what the user cannot read is refused: a 0644 file of root is changed, a 0600 one
/// gives EACCES to the command and one line from ovl naming it.
#[test]
fn an_unreadable_file_of_root_is_named_when_it_cannot_be_copied_up() {
    let Some(u) = AsUser::new() else { return };
    let t = open_tempdir();
    let tree = t.path().join("tree");
    write(&tree, "public", "p\n");
    write(&tree, "secret", "s\n");
    std::fs::set_permissions(tree.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let tree_s = s(&tree);
    let script = format!(
        "echo more >> {tree_s}/public && cat {tree_s}/public && echo x >> {tree_s}/secret; echo rc=$?; echo y >> {tree_s}/secret; true"
    );
    let o = u.ovl(&["run", "--target", &tree_s, "--", "sh", "-c", &script]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "p\nmore\nrc=2\n", "{}", both(&o));
    let err = stderr(&o);
    let named: Vec<&str> = err.lines().filter(|l| l.starts_with("ovl: ")).collect();
    assert_eq!(named.len(), 1, "one line from ovl: {}", both(&o));
    assert!(
        named[0].starts_with(&format!("ovl: {tree_s}/secret: cannot be copied up")),
        "{}",
        both(&o)
    );
    assert_eq!(std::fs::read_to_string(tree.join("public")).unwrap(), "p\n");
    assert_eq!(std::fs::read_to_string(tree.join("secret")).unwrap(), "s\n");
}

/// `--keep DIR` as the user in the root-like mode: the kept upper is the user's, in the
/// kernel's format, and `ovl diff` lists exactly what the command did.
#[test]
fn a_kept_root_like_session_is_read_by_ovl_diff() {
    let Some(u) = AsUser::new() else { return };
    let t = open_tempdir();
    let tree = t.path().join("tree");
    write(&tree, "bin/tool", "#!/bin/sh\n");
    write(&tree, "share/doc/a", "a");
    write(&tree, "share/doc/b", "b");
    let tree_s = s(&tree);
    let keep = u.home("out").join("kept");
    let script = format!(
        "rm -rf {tree_s}/share/doc && touch {tree_s}/bin/new && chmod 4755 {tree_s}/bin/new && echo x >> {tree_s}/bin/tool"
    );
    let o = u.ovl(&[
        "run",
        "--target",
        &tree_s,
        "--keep",
        &s(&keep),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "{}", both(&o));
    let meta = std::fs::symlink_metadata(keep.join("bin/new")).unwrap();
    assert_eq!(meta.uid(), u.uid, "stored as the user's");
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    let o = ovl(["diff", "--lower", &tree_s, &s(&keep)]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        lines(&o),
        [
            "C /bin",
            "A /bin/new",
            "C /bin/tool",
            "C /share",
            "D /share/doc"
        ],
        "{}",
        both(&o)
    );
    assert!(!tree.join("bin/new").exists());
}

/// `--owners real` keeps the kernel's view in the user namespace: root's files are nobody's
/// and cannot be changed.
#[test]
fn owners_real_shows_root_files_as_nobody() {
    let Some(u) = AsUser::new() else { return };
    let t = open_tempdir();
    let tree = t.path().join("tree");
    write(&tree, "f", "f");
    let tree_s = s(&tree);
    let script = format!("stat -c %u {tree_s}/f; echo x >> {tree_s}/f; echo rc=$?");
    let o = u.ovl(&[
        "run", "--owners", "real", "--target", &tree_s, "--", "sh", "-c", &script,
    ]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "65534\nrc=2\n", "{}", both(&o));
}
