//! `ovl check` on uppers written by the real kernel overlay, and on damaged ones.

mod common;

use common::*;
use std::path::Path;

fn codes(o: &std::process::Output) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                f["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn kernel_written_upper_is_clean() {
    if !is_root() {
        return skip_or_fail("needs root to mount a kernel overlay");
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "lower/a/b", "b");
    write(r, "lower/c", "c");
    write(r, "lower/d/e", "e");
    let m = match KernelOverlay::mount_in(r, &["lower"], "redirect_dir=off,index=off") {
        Ok(m) => m,
        Err(e) => return skip_or_fail(&e),
    };
    let mp = r.join("merged");
    std::fs::write(mp.join("a/b"), "B").unwrap();
    std::fs::remove_file(mp.join("c")).unwrap();
    std::fs::remove_dir_all(mp.join("d")).unwrap();
    std::fs::create_dir(mp.join("d")).unwrap();
    // While mounted, check warns that the upper is in use.
    let o = ovl([
        "check".as_ref(),
        "--json".as_ref(),
        r.join("upper").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert_eq!(codes(&o), [("warning".into(), "upper-mounted".into())]);
    drop(m);
    let o = ovl([
        "check".as_ref(),
        r.join("upper").as_os_str(),
        "--work".as_ref(),
        r.join("work").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        format!("{}: clean\n", r.join("upper").display())
    );
    let o = ovl([
        "check".as_ref(),
        "--json".as_ref(),
        r.join("upper").as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["xattr_namespace"], "trusted");
}

fn damaged_upper(r: &Path) {
    mkdirs(
        r,
        &[
            "upper/opq/sub",
            "upper/fo",
            "work/work",
            "work/incompat/volatile",
        ],
    );
    // Both namespaces: trusted wins by count, the user one is an error.
    setxattr(&r.join("upper/opq"), "trusted.overlay.opaque", b"y");
    setxattr(&r.join("upper/opq/sub"), "trusted.overlay.opaque", b"y");
    write(r, "upper/user-opaque/x", "");
    setxattr(&r.join("upper/user-opaque"), "user.overlay.opaque", b"y");
    // A whiteout inside an opaque dir.
    mknod_whiteout(&r.join("upper/opq/gone"));
    // AUFS-style markers.
    write(r, "upper/.wh.foo", "");
    write(r, "upper/fo/.wh..wh..opq", "");
    setxattr(&r.join("upper/fo"), "user.fuseoverlayfs.opaque", b"y");
    // A char device named like a whiteout but not 0/0.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("upper/.wh.bar"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    // Opaque on a file, an odd opaque value.
    write(r, "upper/file", "f");
    setxattr(&r.join("upper/file"), "trusted.overlay.opaque", b"y");
    mkdirs(r, &["upper/odd"]);
    setxattr(&r.join("upper/odd"), "trusted.overlay.opaque", b"n");
    // An escaped user xattr is data, not format.
    setxattr(&r.join("upper/odd"), "trusted.overlay.overlay.opaque", b"y");
    // Workdir leftovers.
    write(r, "work/work/#123", "");
    write(r, "work/junk", "");
}

#[test]
fn damaged_upper_reports_each_problem() {
    if !is_root() {
        return skip_or_fail("needs root for trusted.* xattrs and mknod");
    }
    let t = open_tempdir();
    let r = t.path();
    damaged_upper(r);
    let o = ovl([
        "check".as_ref(),
        "--json".as_ref(),
        r.join("upper").as_os_str(),
        "--work".as_ref(),
        r.join("work").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let mut got = codes(&o);
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("error", "opaque-not-dir"),
        ("error", "whiteout-device"),
        ("error", "work-foreign"),
        ("error", "work-volatile"),
        ("error", "xattr-namespace"),
        ("warning", "aufs-opaque"),
        ("warning", "aufs-whiteout"),
        ("warning", "fuse-overlayfs-xattr"),
        ("warning", "opaque-value"),
        ("warning", "whiteout-in-opaque"),
        ("warning", "work-stray"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want);
    // Text output: one line per finding naming the path, then a summary.
    let o = ovl([
        "check".as_ref(),
        r.join("upper").as_os_str(),
        "--work".as_ref(),
        r.join("work").as_os_str(),
    ]);
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "error: {}: wrong overlay xattr namespace",
            r.join("upper/user-opaque").display()
        )) || out.contains(&format!(
            "error: {}: both overlay xattr namespaces",
            r.join("upper/user-opaque").display()
        )),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "{}: 5 errors, 6 warnings\n",
            r.join("upper").display()
        )),
        "{out}"
    );
    // Forcing the user namespace turns every trusted.overlay.* into an error instead.
    let o = ovl([
        "check".as_ref(),
        "--json".as_ref(),
        "--xattr".as_ref(),
        "user".as_ref(),
        r.join("upper").as_os_str(),
    ]);
    let n = codes(&o)
        .iter()
        .filter(|(_, c)| c == "xattr-namespace")
        .count();
    assert_eq!(n, 4, "{}", stdout(&o));
}

#[test]
fn warnings_only_exit_3_and_managed_workdir_is_found() {
    let t = open_tempdir();
    let r = t.path();
    write(r, "upper/.wh.x", "");
    // The managed workdir next to the upper, with a stray copy-up leftover.
    write(r, ".upper.ovl-work/work/#7", "");
    let o = ovl(["check".as_ref(), r.join("upper").as_os_str()]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("[aufs-whiteout]") && out.contains("[work-stray]"),
        "{out}"
    );
}

#[test]
fn check_of_missing_upper_fails_with_exit_1() {
    let o = ovl(["check", "/nonexistent/upper"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("ovl: /nonexistent/upper: "),
        "{}",
        stderr(&o)
    );
}
