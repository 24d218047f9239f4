//! Format conversions not reached by the generated round trips: xattr whiteouts (an
//! unprivileged layer's form) exported as `.wh.` entries, the `user.` namespace on apply,
//! `changes` and `check` as library calls, and squash into an erofs image.

use std::fs;
use std::path::Path;

use overlay_core::XattrNamespace;
use overlay_layers::apply::{apply, ApplyOptions};
use overlay_layers::compress::Compression;
use overlay_layers::export::{export, ExportOptions};
use overlay_layers::squash::{squash, SquashFormat};
use overlay_layers::tar::reader::{ReadLimits, TarReader};
use overlay_layers::{changes, check, ChangeKind};

fn names(layer: &[u8]) -> Vec<String> {
    let mut r = TarReader::new(
        layer,
        ReadLimits {
            max_header_data: 1 << 20,
            max_path: 4096,
            max_name: 255,
            max_sparse_segments: 1024,
        },
    );
    let mut v = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        v.push(String::from_utf8_lossy(&e.path).into_owned());
    }
    v
}

fn set(p: &Path, k: &str, v: &[u8]) {
    rustix::fs::lsetxattr(p, k, v, rustix::fs::XattrFlags::empty()).unwrap();
}

fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but not root");
    }
    eprintln!("SKIPPED: not root");
    false
}

#[test]
fn xattr_whiteouts_and_opaque_dirs_export_as_oci_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path().join("upper");
    fs::create_dir_all(up.join("d")).unwrap();
    fs::create_dir_all(up.join("o")).unwrap();
    fs::write(up.join("d/gone"), b"").unwrap();
    set(&up.join("d/gone"), "user.overlay.whiteout", b"y");
    set(&up.join("d"), "user.overlay.opaque", b"x");
    set(&up.join("o"), "user.overlay.opaque", b"y");
    fs::write(up.join("o/new"), b"n").unwrap();
    let mut layer = Vec::new();
    export(
        &[] as &[&Path],
        &up,
        &mut layer,
        &ExportOptions {
            compression: Compression::None,
            ..Default::default()
        },
    )
    .unwrap();
    let n = names(&layer);
    assert_eq!(
        n,
        ["d", "d/.wh.gone", "o", "o/.wh..wh..opq", "o/new"],
        "{n:?}"
    );
    // And the private xattrs are not in the layer.
    assert!(
        !layer.windows(13).any(|w| w == b"overlay.opaqu"),
        "overlay xattrs leaked"
    );
}

/// A plain file or directory named `.wh.*` in an upper (the kernel overlay shows it as it
/// is) has no OCI form: exported, it would delete its namesake. The export is refused with
/// an error naming it.
#[test]
fn entries_named_like_whiteouts_are_refused_not_exported() {
    for dir in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path().join("upper");
        fs::create_dir_all(up.join("d")).unwrap();
        fs::write(up.join("d/keep"), b"k").unwrap();
        if dir {
            fs::create_dir(up.join("d/.wh.keep")).unwrap();
        } else {
            fs::write(up.join("d/.wh.keep"), b"mine").unwrap();
        }
        let mut layer = Vec::new();
        let e = export(&[] as &[&Path], &up, &mut layer, &ExportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d/.wh.keep") && e.contains("reserve"),
            "the error names the entry and why: {e}"
        );
    }
}

#[test]
fn apply_in_the_user_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path().join("upper");
    fs::create_dir_all(up.join("o")).unwrap();
    set(&up.join("o"), "user.overlay.opaque", b"y");
    fs::write(up.join("o/f"), b"f").unwrap();
    let mut layer = Vec::new();
    export(&[] as &[&Path], &up, &mut layer, &ExportOptions::default()).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    apply(
        &layer[..],
        &out,
        &ApplyOptions {
            xattr_namespace: Some(XattrNamespace::User),
            ..Default::default()
        },
    )
    .unwrap();
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(out.join("o"), "user.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
}

#[test]
fn changes_and_check_are_library_calls() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (lower, up) = (tmp.path().join("lower"), tmp.path().join("upper"));
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::write(lower.join("etc/a"), b"a").unwrap();
    fs::write(lower.join("etc/b"), b"b").unwrap();
    fs::create_dir_all(up.join("etc")).unwrap();
    fs::write(up.join("etc/a"), b"A").unwrap();
    fs::write(up.join("etc/c"), b"c").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("etc/b"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
    let got: Vec<(char, String)> = changes(&[&lower], &up)
        .unwrap()
        .map(|c| (c.kind.letter(), c.path.display().to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ('C', "/etc".into()),
            ('C', "/etc/a".into()),
            ('D', "/etc/b".into()),
            ('A', "/etc/c".into())
        ]
    );
    assert!(changes(&[&lower], &up)
        .unwrap()
        .any(|c| c.kind == ChangeKind::Deleted));
    let r = check(&up, None::<&Path>).unwrap();
    assert_eq!((r.errors, r.warnings), (0, 0), "{:?}", r.findings);
    set(&up.join("etc/a"), "trusted.overlay.opaque", b"y");
    let r = check(&up, None::<&Path>).unwrap();
    assert!(
        r.findings.iter().any(|f| f.code == "opaque-not-dir"),
        "{:?}",
        r.findings
    );
}

#[test]
fn squash_into_an_erofs_image() {
    if !root() {
        return;
    }
    if std::process::Command::new("mkfs.erofs")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but mkfs.erofs is missing (erofs-utils)");
        }
        eprintln!("SKIPPED: no mkfs.erofs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (lower, up) = (tmp.path().join("lower"), tmp.path().join("upper"));
    fs::create_dir_all(lower.join("d")).unwrap();
    fs::write(lower.join("d/x"), b"x").unwrap();
    fs::write(lower.join("gone"), b"g").unwrap();
    fs::create_dir_all(&up).unwrap();
    fs::write(up.join("new"), b"n").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("gone"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
    let img = tmp.path().join("flat.erofs");
    let r = squash(&[&lower], Some(&up), &img, SquashFormat::from_path(&img)).unwrap();
    assert_eq!(r.format, SquashFormat::Erofs);
    let data = fs::read(&img).unwrap();
    // The erofs superblock magic at offset 1024.
    assert_eq!(&data[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    // Refuses to overwrite.
    assert!(squash(&[&lower], Some(&up), &img, SquashFormat::Erofs).is_err());
}

/// In overlay format a whiteout below a directory the same archive made opaque hides nothing,
/// and the kernel would list it: it is not written, in either order of marker and whiteout.
/// A whiteout outside the opaque directory is still written.
#[test]
fn whiteouts_below_an_opaque_directory_are_not_written() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["d/s", "e"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in ["d/.wh..wh..opq", "d/.wh.c", "d/s/.wh.y", "d/x", "e/.wh.z"] {
        fs::write(src.join(f), b"").unwrap();
    }
    // Marker first in `d`, the whiteout first in `d/s` (its marker is d's).
    let order = [
        "d",
        "d/.wh.c",
        "d/.wh..wh..opq",
        "d/x",
        "d/s",
        "d/s/.wh.y",
        "e",
        "e/.wh.z",
    ];
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args(["--no-recursion", "-cf", "-"])
        .args(order)
        .output()
        .expect("GNU tar runs");
    assert!(out.status.success(), "tar: {:?}", out);
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    apply(&out.stdout[..], &target, &ApplyOptions::default()).unwrap();
    let listed = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(target.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed("d"), ["s", "x"], "no whiteout inside the opaque d");
    assert!(listed("d/s").is_empty(), "no whiteout below the opaque d");
    assert_eq!(listed("e"), ["z"], "the whiteout outside it stays");
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(target.join("d"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
}
