//! FUSE passthrough of lower files (read-only opens), side by side with the kernel overlay:
//! copy-ups while such opens are live (a write-open, O_TRUNC, truncate, chmod) never write
//! the lower layer, later opens see the upper copy, `st_ino` stays, through `/dev/fuse` and
//! through FUSE over io_uring.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use overlay_fuse::FsConfig;

const BIG: usize = 4 << 20;

fn big_content() -> Vec<u8> {
    (0..BIG).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// The lower layer every run starts from.
fn fill_lower(lower: &Path) {
    put(lower.join("f"), b"LOWER-DATA");
    put(lower.join("g"), b"LOWER-G");
    put(lower.join("h"), b"LOWER-H");
    put(lower.join("i"), b"LOWER-I");
    put(lower.join("big"), &big_content());
}

/// What a run saw. `stale` holds what descriptors opened read-only before a copy-up read
/// after it: the only thing that may differ between the backends (see the tests).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    reads: Vec<(String, Vec<u8>)>,
    stale: Vec<(String, Vec<u8>)>,
    ino_kept: Vec<(String, bool)>,
    modes: Vec<(String, u32)>,
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn read_fd(f: &File) -> Vec<u8> {
    let mut v = vec![0u8; 64];
    let n = f.read_at(&mut v, 0).unwrap();
    v.truncate(n);
    v
}

/// The same sequence on any mount of the layers of [`fill_lower`].
fn scenario(mnt: &Path) -> Seen {
    let mut seen = Seen {
        reads: Vec::new(),
        stale: Vec::new(),
        ino_kept: Vec::new(),
        modes: Vec::new(),
    };
    let ino = |n: &str| fs::metadata(mnt.join(n)).unwrap().ino();

    // A big lower file read whole through two read-only opens.
    let b1 = File::open(mnt.join("big")).unwrap();
    let mut b2 = File::open(mnt.join("big")).unwrap();
    let mut all = Vec::new();
    b2.read_to_end(&mut all).unwrap();
    assert!(all == big_content(), "big lower file read wrong");
    drop((b1, b2));

    // f: a write-open copies up while a read-only open of the lower file is live.
    let f_ino = ino("f");
    let ro = File::open(mnt.join("f")).unwrap();
    assert_eq!(read_fd(&ro), b"LOWER-DATA");
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("f"))
        .unwrap();
    rw.write_all_at(b"UPPER", 0).unwrap();
    assert_eq!(read_fd(&rw), b"UPPER-DATA");
    seen.reads.push(("f new open".into(), read(&mnt.join("f"))));
    seen.stale.push(("f".into(), read_fd(&ro)));
    seen.ino_kept.push(("f".into(), ino("f") == f_ino));
    seen.ino_kept
        .push(("f old fd".into(), ro.metadata().unwrap().ino() == f_ino));
    // A second read-only open after the copy-up, next to the old one.
    let ro2 = File::open(mnt.join("f")).unwrap();
    seen.reads.push(("f second ro".into(), read_fd(&ro2)));
    rw.write_all_at(b"AGAIN", 0).unwrap();
    seen.reads.push(("f second ro again".into(), read_fd(&ro2)));
    drop((ro, ro2, rw));
    seen.reads.push(("f closed".into(), read(&mnt.join("f"))));

    // g: O_TRUNC while a read-only open is live.
    let ro = File::open(mnt.join("g")).unwrap();
    assert_eq!(read_fd(&ro), b"LOWER-G");
    fs::write(mnt.join("g"), b"new-g").unwrap();
    seen.reads.push(("g".into(), read(&mnt.join("g"))));
    seen.stale.push(("g".into(), read_fd(&ro)));
    drop(ro);

    // h: truncate(2) by path (a copy-up without an open), then read and write opens.
    let ro = File::open(mnt.join("h")).unwrap();
    assert_eq!(read_fd(&ro), b"LOWER-H");
    let h_ino = ino("h");
    nix::unistd::truncate(&mnt.join("h"), 3).unwrap();
    seen.reads
        .push(("h truncated".into(), read(&mnt.join("h"))));
    let mut a = OpenOptions::new().append(true).open(mnt.join("h")).unwrap();
    std::io::Write::write_all(&mut a, b"+h").unwrap();
    drop(a);
    seen.reads.push(("h appended".into(), read(&mnt.join("h"))));
    seen.ino_kept.push(("h".into(), ino("h") == h_ino));
    seen.stale.push(("h".into(), read_fd(&ro)));
    drop(ro);

    // i: chmod (a metadata copy-up) while a read-only open is live, then a writer.
    let ro = File::open(mnt.join("i")).unwrap();
    assert_eq!(read_fd(&ro), b"LOWER-I");
    fs::set_permissions(mnt.join("i"), fs::Permissions::from_mode(0o600)).unwrap();
    let w = OpenOptions::new().write(true).open(mnt.join("i")).unwrap();
    w.write_all_at(b"upper", 0).unwrap();
    drop(w);
    seen.reads.push(("i".into(), read(&mnt.join("i"))));
    seen.modes.push((
        "i".into(),
        fs::metadata(mnt.join("i")).unwrap().mode() & 0o7777,
    ));
    seen.stale.push(("i".into(), read_fd(&ro)));
    drop(ro);
    seen
}

/// The layers after a run: the lower untouched, the upper holding every change.
fn check_layers(l: &Layers, what: &str) {
    let lower = l.lower();
    assert_eq!(
        read(&lower.join("f")),
        b"LOWER-DATA",
        "{what}: lower f written"
    );
    assert_eq!(
        read(&lower.join("g")),
        b"LOWER-G",
        "{what}: lower g written"
    );
    assert_eq!(
        read(&lower.join("h")),
        b"LOWER-H",
        "{what}: lower h written"
    );
    assert_eq!(
        read(&lower.join("i")),
        b"LOWER-I",
        "{what}: lower i written"
    );
    assert!(
        read(&lower.join("big")) == big_content(),
        "{what}: lower big"
    );
    assert_eq!(
        fs::metadata(lower.join("i")).unwrap().mode() & 0o7777,
        0o644,
        "{what}: lower i chmodded"
    );
    assert_eq!(read(&l.upper.join("f")), b"AGAIN-DATA", "{what}: upper f");
    assert_eq!(read(&l.upper.join("g")), b"new-g", "{what}: upper g");
    assert_eq!(read(&l.upper.join("h")), b"LOW+h", "{what}: upper h");
    assert_eq!(read(&l.upper.join("i")), b"upper-I", "{what}: upper i");
}

fn kernel_run() -> Seen {
    let l = Layers::new(1);
    fill_lower(l.lower());
    let k = KernelOverlay::mount(&l);
    let seen = scenario(&k.mnt);
    drop(k);
    check_layers(&l, "kernel overlay");
    seen
}

/// Run the scenario on ovl-fuse with `fs`; returns what it saw and the counters after it.
fn fuse_run(fs: FsConfig, io_uring: bool) -> (Seen, overlay_fuse::FsStats) {
    let l = Layers::new(1);
    fill_lower(l.lower());
    let m = InProcess::new(&l, fs);
    let before = m.stats();
    assert!(before.passthrough, "root: passthrough must be negotiated");
    assert_eq!(
        before.io_uring_queues > 0,
        io_uring,
        "io_uring transport expected: {io_uring} ({before:?})"
    );
    let seen = scenario(&m.mnt);
    let stats = m.stats();
    m.unmount();
    check_layers(&l, "ovl-fuse");
    (seen, stats)
}

fn lower_fds_pass_through(test: &str, io_uring: bool) {
    let kernel = kernel_run();
    // The kernel overlay: a read-only descriptor reads the upper copy after a copy-up.
    let upper_view: Vec<(String, Vec<u8>)> = vec![
        ("f".into(), b"UPPER-DATA".to_vec()),
        ("g".into(), b"new-g".to_vec()),
        ("h".into(), b"LOW+h".to_vec()),
        ("i".into(), b"upper-I".to_vec()),
    ];
    assert_eq!(
        kernel.stale, upper_view,
        "kernel overlay changed behaviour?"
    );

    let fs = FsConfig {
        io_uring,
        lower_passthrough: true,
        ..FsConfig::default()
    };
    let (seen, stats) = fuse_run(fs.clone(), io_uring);
    // Lower files were passed through: 2 opens of big and one of each small file, at least.
    assert!(
        stats.passthrough_opens >= 6,
        "{test}: lower files not passed through ({stats:?})"
    );
    assert_eq!(
        seen.reads, kernel.reads,
        "{test}: reads differ from the kernel's"
    );
    assert_eq!(seen.ino_kept, kernel.ino_kept, "{test}: st_ino");
    assert_eq!(seen.modes, kernel.modes, "{test}: modes");
    // The documented difference: descriptors opened read-only on the lower file before a
    // copy-up keep reading the lower file (their passthrough backing). Truncate by path
    // shortens the file the kernel shows, so that descriptor reads the lower's first bytes.
    let lower_view: Vec<(String, Vec<u8>)> = vec![
        ("f".into(), b"LOWER-DATA".to_vec()),
        ("g".into(), b"LOWER-G".to_vec()),
        ("h".into(), b"LOWER-H".to_vec()),
        ("i".into(), b"LOWER-I".to_vec()),
    ];
    assert_eq!(seen.stale, lower_view, "{test}: stale descriptors");

    // With lower_passthrough=0 (the default on a writable mount), exactly the kernel's
    // behaviour.
    assert!(!FsConfig::default().lower_passthrough);
    let (seen, _) = fuse_run(
        FsConfig {
            lower_passthrough: false,
            ..fs
        },
        io_uring,
    );
    assert_eq!(
        seen, kernel,
        "{test}: lower_passthrough=0 differs from the kernel"
    );
}

#[test]
fn lower_files_pass_through_and_copy_up_never_writes_them() {
    let test = "lower_files_pass_through_and_copy_up_never_writes_them";
    if !can_mount(test) {
        return;
    }
    lower_fds_pass_through(test, false);
}

#[test]
fn lower_passthrough_through_io_uring() {
    let test = "lower_passthrough_through_io_uring";
    if !can_mount(test) {
        return;
    }
    let Some(_switch) = require_fuse_uring(test) else {
        return;
    };
    lower_fds_pass_through(test, true);
}
