//! `ovl layer export|apply`, `ovl commit` and `ovl squash`: the README's user flow, end to
//! end with the real binary and a real kernel overlay.

mod common;

use common::*;
use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Unpack layers, mount them, change the upper, export it, apply it elsewhere, commit the
/// kept upper into a directory, squash the stack.
#[test]
fn user_flow() {
    if !is_root() {
        skip_or_fail("needs root to mount a kernel overlay");
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    // An "image" layer made by hand, exported with ovl, applied back as layer 0.
    write(r, "src/etc/os-release", "NAME=test\n");
    write(r, "src/usr/bin/tool", "v1");
    write(r, "src/usr/share/doc/readme", "doc");
    let o = ovl(["layer", "export", "--compress", "zstd", "--json"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            r.join("src").display().to_string(),
            "-o".into(),
            r.join("base.tar.zst").display().to_string(),
        ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(j["diff_id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        j["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let o = ovl([
        "layer".into(),
        "apply".into(),
        r.join("base.tar.zst").display().to_string(),
        r.join("layers/0").display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(j["diff_id"].as_str().unwrap()),
        "{}",
        stdout(&o)
    );
    // Mount it with an upper and change things.
    mkdirs(r, &["upper", "work", "merged"]);
    {
        let _m = KernelOverlay::mount(
            &[&r.join("layers/0")],
            &r.join("upper"),
            &r.join("work"),
            &r.join("merged"),
            "index=off",
        )
        .unwrap();
        let m = r.join("merged");
        std::fs::write(m.join("usr/bin/tool"), "v2").unwrap();
        std::fs::remove_dir_all(m.join("usr/share/doc")).unwrap();
        std::fs::write(m.join("etc/new"), "new").unwrap();
    }
    // Export the upper as a layer over its lower; the digests print.
    let o = ovl([
        "layer".into(),
        "export".into(),
        "--lower".into(),
        r.join("layers/0").display().to_string(),
        r.join("upper").display().to_string(),
        "-o".into(),
        r.join("change.tar.gz").display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("diff_id    sha256:") && stdout(&o).contains("digest     sha256:"),
        "{}",
        stdout(&o)
    );
    // Apply both layers as a plain tree: the merged view.
    let plain = r.join("plain");
    for l in ["base.tar.zst", "change.tar.gz"] {
        let o = ovl([
            "layer".into(),
            "apply".into(),
            "--format".into(),
            "plain".into(),
            r.join(l).display().to_string(),
            plain.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(read(&plain.join("usr/bin/tool")), "v2");
    assert_eq!(read(&plain.join("etc/new")), "new");
    assert!(!plain.join("usr/share/doc").exists());
    // Commit the kept upper into a copy of the tree it was made over: dry run first.
    let target = r.join("target");
    let o = ovl([
        "squash".into(),
        "--lower".into(),
        r.join("layers/0").display().to_string(),
        "-o".into(),
        target.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ovl([
        "commit".into(),
        r.join("upper").display().to_string(),
        "--into".into(),
        target.display().to_string(),
        "--dry-run".into(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = lines(&o);
    assert!(plan.contains(&"R /usr/bin/tool".to_string()), "{plan:?}");
    assert!(plan.contains(&"D /usr/share/doc".to_string()), "{plan:?}");
    assert!(plan.contains(&"A /etc/new".to_string()), "{plan:?}");
    assert_eq!(
        read(&target.join("usr/bin/tool")),
        "v1",
        "a dry run changes nothing"
    );
    let o = ovl([
        "commit".into(),
        r.join("upper").display().to_string(),
        "--into".into(),
        target.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&target.join("usr/bin/tool")), "v2");
    assert!(!target.join("usr/share/doc").exists());
    // Squash the stack into an image.
    let img = r.join("flat.squashfs");
    let o = ovl([
        "squash".into(),
        "--lower".into(),
        r.join("layers/0").display().to_string(),
        r.join("upper").display().to_string(),
        "-o".into(),
        img.display().to_string(),
    ]);
    if !o.status.success() && stderr(&o).contains("cannot run it") {
        skip_or_fail("mksquashfs is missing (squashfs-tools)");
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::metadata(&img).unwrap().len() > 0);
    let out = std::process::Command::new("unsquashfs")
        .arg("-l")
        .arg(&img)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("squashfs-root/etc/new") && !listing.contains("usr/share/doc"),
        "{listing}"
    );
}

/// A hostile layer: one line on stderr naming the file and the entry, exit status 1, and
/// nothing written outside the target.
#[test]
fn hostile_layer_one_clear_error() {
    let t = open_tempdir();
    let r = t.path();
    // A tar whose only entry climbs out with `..`.
    let mut h = [0u8; 512];
    let name = b"../escaped";
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(b"00000000000\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    std::fs::write(r.join("evil.tar"), &tar).unwrap();
    let o = ovl([
        "layer".into(),
        "apply".into(),
        r.join("evil.tar").display().to_string(),
        r.join("t").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("ovl: ")
            && e.contains("evil.tar")
            && e.contains("../escaped")
            && e.contains("`..`"),
        "{e}"
    );
    assert!(!r.join("escaped").exists());
}

/// Piped, no progress output: stderr stays empty on success.
#[test]
fn no_progress_when_piped() {
    let t = open_tempdir();
    let r = t.path();
    write(r, "l/f", "x");
    let o = ovl([
        "layer".into(),
        "export".into(),
        r.join("l").display().to_string(),
        "-o".into(),
        r.join("l.tar.gz").display().to_string(),
    ]);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "");
}
