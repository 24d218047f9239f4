//! `ovl run` for a real non-root user (created by the test with useradd): a root-like
//! throwaway `/usr` and root file system (FUSE with ownership squashed to root inside the
//! user namespace), a 0600 file of root named when it cannot be copied up, and `--keep`
//! read back by `ovl diff`.
//!
//! The user needs a usable `/dev/fuse`, as on a fresh Debian machine (mode 0666). Where the
//! device is root-only (some containers), the test binds a 0666 node of the same device over
//! `/dev/fuse` in a private mount namespace of the user's command only.

mod common;

use common::user::AsUser;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

fn s(p: &Path) -> String {
    p.display().to_string()
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

/// `--owners real` (and `--backend kernel`, which cannot squash) keeps the kernel's view in
/// the user namespace: root's files are nobody's and cannot be changed.
#[test]
fn owners_real_shows_root_files_as_nobody() {
    let Some(u) = AsUser::new() else { return };
    let t = open_tempdir();
    let tree = t.path().join("tree");
    write(&tree, "f", "f");
    let tree_s = s(&tree);
    let script = format!("stat -c %u {tree_s}/f; echo x >> {tree_s}/f; echo rc=$?");
    for choice in [["--owners", "real"], ["--backend", "kernel"]] {
        let mut args = vec!["run"];
        args.extend(choice);
        args.extend(["--target", &tree_s, "--", "sh", "-c", &script]);
        let o = u.ovl(&args);
        assert!(o.status.success(), "{choice:?}: {}", both(&o));
        assert_eq!(stdout(&o), "65534\nrc=2\n", "{choice:?}: {}", both(&o));
    }
}
