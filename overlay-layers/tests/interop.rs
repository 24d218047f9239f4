//! Interoperability with GNU tar, digests and reproducibility.
//!
//! - a tree with long names, non-ASCII names, hard links, symlinks, FIFOs, devices, xattrs
//!   (`security.capability` included), set-ID bits and a sparse file is exported; GNU tar
//!   extracts it to the same tree, and the sparse file stays sparse;
//! - the same tree archived by GNU tar (`--format=posix` with PAX sparse 1.0, and
//!   `--format=gnu` with old-GNU sparse and long-name entries) applies to the same tree;
//! - `diff_id` is the sha256 of the uncompressed tar, `digest` and `size` those of the file;
//! - reproducible mode gives the same digests twice, and clamps times to
//!   `SOURCE_DATE_EPOCH`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::tree::{diff, snapshot_dir, XattrFilter, FIXTURE_MTIME};
use overlay_layers::apply::{apply, apply_file, ApplyOptions, Format};
use overlay_layers::compress::Compression;
use overlay_layers::export::{export, export_file, ExportOptions};

fn require_root_and_tar() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Command::new("tar").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but not root or no GNU tar");
        }
        eprintln!("SKIPPED: needs root and GNU tar");
    }
    ok
}

fn set_times(root: &Path) {
    let t = rustix::fs::Timespec {
        tv_sec: FIXTURE_MTIME.0,
        tv_nsec: 0,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        let p = all[i].clone();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                all.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    for p in all.iter().rev() {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &ts,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// A tree with everything a layer can hold.
fn make_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    let long_dir = root.join("d".repeat(120)).join("e".repeat(150));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(200)), b"long name").unwrap();
    fs::write(root.join("été-ünïcode"), b"not ascii").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("big"), vec![0xabu8; 300_000]).unwrap();
    fs::write(root.join("linked"), b"two names").unwrap();
    fs::hard_link(
        root.join("linked"),
        root.join("d".repeat(120)).join("other-name"),
    )
    .unwrap();
    std::os::unix::fs::symlink("linked", root.join("sym")).unwrap();
    std::os::unix::fs::symlink(
        "/nowhere/".to_string() + &"x".repeat(150),
        root.join("longsym"),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    fs::write(root.join("suid"), b"#!/bin/true\n").unwrap();
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let x = |p: &Path, k: &str, v: &[u8]| {
        rustix::fs::lsetxattr(p, k, v, rustix::fs::XattrFlags::empty()).unwrap()
    };
    x(&root.join("big"), "user.color", b"blue");
    x(&root.join("big"), "user.bin", &[0, 1, 2, 255, b'\n']);
    // A v2 file capability (cap_net_raw, permitted + effective).
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    x(&root.join("suid"), "security.capability", &cap);
    x(&root.join("private"), "trusted.note", b"kept");
    // A sparse file: 64 MiB with two small data islands.
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    rustix::io::pwrite(&f, b"head", 0).unwrap();
    rustix::io::pwrite(&f, &[7u8; 10000], 40 << 20).unwrap();
    drop(f);
    set_times(root);
}

fn assert_sparse(p: &Path) {
    let md = fs::metadata(p).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(
        md.blocks() * 512 < 4 << 20,
        "{} is not sparse: {} blocks",
        p.display(),
        md.blocks()
    );
}

fn same(a: &Path, b: &Path) {
    let (ta, tb) = (
        snapshot_dir(a, XattrFilter::All),
        snapshot_dir(b, XattrFilter::All),
    );
    if let Some(d) = diff("source", &ta, "copy", &tb) {
        panic!("trees differ:\n{d}");
    }
}

#[test]
fn gnu_tar_extracts_our_layers() {
    if !require_root_and_tar() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let file = tmp.path().join(format!("layer-{}.tar", c.as_str()));
        let layer = export_file(
            &[] as &[&Path],
            &src,
            &file,
            &ExportOptions {
                compression: c,
                ..Default::default()
            },
        )
        .unwrap();
        // Digests: of the file, and of the tar inside it.
        let bytes = fs::read(&file).unwrap();
        assert_eq!(layer.size, bytes.len() as u64);
        assert_eq!(layer.digest, overlay_layers::digest::sha256(&bytes));
        let tar = match c {
            Compression::None => bytes.clone(),
            Compression::Gzip => {
                Command::new("gzip")
                    .arg("-dc")
                    .arg(&file)
                    .output()
                    .unwrap()
                    .stdout
            }
            Compression::Zstd => {
                let mut v = Vec::new();
                std::io::copy(&mut zstd_decoder(&bytes), &mut v).unwrap();
                v
            }
        };
        assert_eq!(layer.diff_id, overlay_layers::digest::sha256(&tar));
        assert_eq!(layer.tar_size, tar.len() as u64);
        if c != Compression::None {
            continue;
        }
        let out = tmp.path().join("gnu");
        fs::create_dir(&out).unwrap();
        let st = Command::new("tar")
            .args(["-xpf"])
            .arg(&file)
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        set_root_times(&src, &out);
        same(&src, &out);
        assert_sparse(&out.join("sparse"));
    }
}

fn zstd_decoder(b: &[u8]) -> impl std::io::Read + '_ {
    // The crate's own detection path decompresses zstd: go through apply's opener.
    let (_, r) = overlay_layers::compress::open_stream(
        b,
        overlay_layers::compress::BombLimits {
            max_bytes: u64::MAX,
            max_ratio: u64::MAX,
            ratio_after: u64::MAX,
        },
    )
    .unwrap();
    r
}

fn set_root_times(from: &Path, to: &Path) {
    let st = rustix::fs::stat(from).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        to,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    fs::set_permissions(to, fs::metadata(from).unwrap().permissions()).unwrap();
}

#[test]
fn we_apply_gnu_tar_archives() {
    if !require_root_and_tar() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    for (fmt, z) in [("posix", ""), ("gnu", ""), ("posix", "z")] {
        let file = tmp.path().join(format!("gnu-{fmt}{z}.tar"));
        let st = Command::new("tar")
            .arg(format!("-c{z}Sf"))
            .arg(&file)
            .arg(format!("--format={fmt}"))
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let out = tmp.path().join(format!("ours-{fmt}{z}"));
        fs::create_dir(&out).unwrap();
        let r = apply_file(
            &file,
            &out,
            &ApplyOptions {
                format: Format::Plain,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.adjustments.is_empty(), "{fmt}: {:?}", r.adjustments);
        same(&src, &out);
        assert_sparse(&out.join("sparse"));
    }
}

#[test]
fn export_apply_round_trip_keeps_everything() {
    if !require_root_and_tar() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let mut layer = Vec::new();
    export(
        &[] as &[&Path],
        &src,
        &mut layer,
        &ExportOptions {
            compression: Compression::Zstd,
            ..Default::default()
        },
    )
    .unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let r = apply(
        &layer[..],
        &out,
        &ApplyOptions {
            format: Format::Plain,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.compression, Compression::Zstd);
    set_root_times(&src, &out);
    same(&src, &out);
    assert_sparse(&out.join("sparse"));
}

#[test]
fn reproducible_mode_gives_the_same_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/c"), b"content").unwrap();
    fs::write(src.join("z"), b"zz").unwrap();
    let opts = ExportOptions {
        compression: Compression::Gzip,
        reproducible: true,
        source_date_epoch: Some(1_000),
        ..Default::default()
    };
    let one = export(&[] as &[&Path], &src, Vec::new(), &opts).unwrap();
    // Touching the files (times after the epoch) changes nothing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(src.join("z"), b"zz").unwrap();
    let two = export(&[] as &[&Path], &src, Vec::new(), &opts).unwrap();
    assert_eq!(
        (one.diff_id.clone(), one.digest.clone()),
        (two.diff_id.clone(), two.digest)
    );
    // The times in it are the epoch.
    let mut buf = Vec::new();
    export(
        &[] as &[&Path],
        &src,
        &mut buf,
        &ExportOptions {
            compression: Compression::None,
            ..opts.clone()
        },
    )
    .unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    apply(&buf[..], &out, &ApplyOptions::default()).unwrap();
    assert_eq!(
        fs::symlink_metadata(out.join("a/b/c")).unwrap().mtime(),
        1_000
    );
    // Without the clamp, a touched file changes the digest.
    let plain = ExportOptions {
        compression: Compression::Gzip,
        ..Default::default()
    };
    let a = export(&[] as &[&Path], &src, Vec::new(), &plain).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: 5_000_000,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        src.join("z"),
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let b = export(&[] as &[&Path], &src, Vec::new(), &plain).unwrap();
    assert_ne!(a.diff_id, b.diff_id);
}
