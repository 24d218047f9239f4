//! `ovl diff` against uppers written by the real kernel overlay.

mod common;

use common::*;
use std::path::Path;

/// base: bottom lower; patch: a lower above it that deletes base's `etc/old` and replaces
/// `opt` with an opaque directory.
fn make_lowers(root: &Path) {
    write(root, "base/etc/conf", "1");
    write(root, "base/etc/old", "old");
    write(root, "base/etc/keep", "keep");
    write(root, "base/usr/bin/tool", "tool");
    write(root, "base/usr/lib/a", "a");
    write(root, "base/usr/lib/b", "b");
    write(root, "base/opt/x/y", "y");
    write(root, "base/var/log/syslog", "s");
    write(root, "base/file-becomes-dir", "f");
    write(root, "patch/etc/patched", "p");
    mknod_whiteout(&root.join("patch/etc/old"));
    write(root, "patch/opt/z", "z");
    setxattr(&root.join("patch/opt"), "trusted.overlay.opaque", b"y");
}

/// Changes made through a real kernel overlay.
fn make_changes(m: &Path) {
    std::fs::write(m.join("etc/conf"), "2").unwrap(); // C (copy-up)
    std::fs::write(m.join("etc/new"), "n").unwrap(); // A
    std::fs::remove_file(m.join("etc/keep")).unwrap(); // D
    std::fs::write(m.join("etc/old"), "again").unwrap(); // A: patch deleted it
    std::fs::remove_dir_all(m.join("usr/lib")).unwrap(); // D (whiteout)
    std::fs::remove_dir_all(m.join("var/log")).unwrap();
    std::fs::create_dir(m.join("var/log")).unwrap(); // C, opaque; syslog hidden -> D
    std::fs::write(m.join("var/log/new.log"), "l").unwrap(); // A
    std::fs::create_dir_all(m.join("srv/www")).unwrap(); // A, A
    std::fs::write(m.join("srv/www/index.html"), "i").unwrap(); // A
    std::fs::write(m.join("opt/z"), "zz").unwrap(); // C
    std::fs::remove_file(m.join("file-becomes-dir")).unwrap();
    std::fs::create_dir(m.join("file-becomes-dir")).unwrap(); // C (type change)
    std::fs::rename(m.join("usr/bin/tool"), m.join("usr/bin/tool2")).unwrap(); // D + A
}

fn setup() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !is_root() {
        skip_or_fail("needs root to mount a kernel overlay and create trusted.* xattrs");
        return None;
    }
    let t = open_tempdir();
    let r = t.path().to_path_buf();
    make_lowers(&r);
    let mount = match KernelOverlay::mount_in(&r, &["base", "patch"], "redirect_dir=off,index=off")
    {
        Ok(m) => m,
        Err(e) => {
            skip_or_fail(&e);
            return None;
        }
    };
    make_changes(&r.join("merged"));
    drop(mount);
    Some((t, r))
}

#[test]
fn diff_with_lowers_is_exact() {
    let Some((_t, r)) = setup() else { return };
    let o = ovl([
        "diff".as_ref(),
        "--lower".as_ref(),
        r.join("base").as_os_str(),
        "--lower".as_ref(),
        r.join("patch").as_os_str(),
        r.join("upper").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        lines(&o),
        [
            "C /etc",
            "C /etc/conf",
            "D /etc/keep",
            "A /etc/new",
            "A /etc/old",
            "C /file-becomes-dir",
            "C /opt",
            "C /opt/z",
            "A /srv",
            "A /srv/www",
            "A /srv/www/index.html",
            "C /usr",
            "C /usr/bin",
            "D /usr/bin/tool",
            "A /usr/bin/tool2",
            "D /usr/lib",
            "C /var",
            "C /var/log",
            "A /var/log/new.log",
            "D /var/log/syslog",
        ]
    );
}

#[test]
fn diff_without_lowers_uses_the_upper_alone() {
    let Some((_t, r)) = setup() else { return };
    let o = ovl(["diff".as_ref(), r.join("upper").as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Documented limits: a re-created file (etc/old) is A; directories are C; a renamed file
    // keeps its overlay.origin and shows as C.
    assert_eq!(
        lines(&o),
        [
            "C /etc",
            "C /etc/conf",
            "D /etc/keep",
            "A /etc/new",
            "A /etc/old",
            "C /file-becomes-dir",
            "C /opt",
            "C /opt/z",
            "C /srv",
            "C /srv/www",
            "A /srv/www/index.html",
            "C /usr",
            "C /usr/bin",
            "D /usr/bin/tool",
            "C /usr/bin/tool2",
            "D /usr/lib",
            "C /var",
            "C /var/log",
            "A /var/log/new.log",
        ]
    );
}

#[test]
fn diff_json_and_renamed_directories() {
    if !is_root() {
        return skip_or_fail("needs root to mount a kernel overlay");
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "lower/d/f", "f");
    write(r, "lower/d/sub/g", "g");
    let m = match KernelOverlay::mount_in(r, &["lower"], "redirect_dir=on,index=off") {
        Ok(m) => m,
        Err(e) => return skip_or_fail(&e),
    };
    std::fs::rename(r.join("merged/d"), r.join("merged/e")).unwrap();
    std::fs::write(r.join("merged/e/f"), "changed").unwrap();
    drop(m);
    let o = ovl([
        "diff".as_ref(),
        "--json".as_ref(),
        "--lower".as_ref(),
        r.join("lower").as_os_str(),
        r.join("upper").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["exact"], true);
    let got: Vec<(String, String)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("D", "/d"),
        ("A", "/e"),
        ("A", "/e/f"),
        ("A", "/e/sub"),
        ("A", "/e/sub/g"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(v["changes"][1]["renamed_from"], "/d");
}

#[test]
fn diff_reads_aufs_whiteouts_when_asked() {
    // No mount needed: an upper in fuse-overlayfs / OCI layout, written by hand.
    let t = open_tempdir();
    let r = t.path();
    write(r, "lower/a", "a");
    write(r, "lower/dir/x", "x");
    write(r, "upper/.wh.a", "");
    write(r, "upper/dir/.wh..wh..opq", "");
    write(r, "upper/dir/y", "y");
    let args = |aufs: bool| {
        let mut v = vec!["diff".to_string()];
        if aufs {
            v.push("--aufs".into());
        }
        v.push("--lower".into());
        v.push(r.join("lower").display().to_string());
        v.push(r.join("upper").display().to_string());
        v
    };
    let o = ovl(args(true));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), ["D /a", "C /dir", "D /dir/x", "A /dir/y"]);
    // Kernel semantics: .wh.* are plain files.
    let o = ovl(args(false));
    assert_eq!(
        lines(&o),
        ["A /.wh.a", "C /dir", "A /dir/.wh..wh..opq", "A /dir/y"]
    );
}

#[test]
fn diff_error_is_one_line_naming_the_path() {
    let o = ovl(["diff", "/nonexistent/ovl-upper"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "ovl: /nonexistent/ovl-upper: cannot open directory: No such file or directory\n"
    );
}

#[test]
fn diff_does_not_follow_symlinks_out_of_the_upper() {
    let t = open_tempdir();
    let r = t.path();
    write(r, "outside/secret/file", "s");
    mkdirs(r, &["upper"]);
    std::os::unix::fs::symlink(r.join("outside/secret"), r.join("upper/link")).unwrap();
    let o = ovl(["diff".as_ref(), r.join("upper").as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), ["A /link"]);
}
