//! fsx (the `fsx` crate's binary, `cargo install fsx --version 0.3.2 --locked`) against the
//! FUSE mount: on a file that starts in a lower layer (block mode: the first open copies the
//! data up, then random reads, writes, mmap I/O and copy_file_range), and on a new file with
//! every operation fsx has, in passthrough mode and in writeback-cache mode, read from
//! `/dev/fuse` and through FUSE over io_uring.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const OPS: &str = "10000";

fn have_fsx(test: &str) -> Option<std::path::PathBuf> {
    match fsx_binary() {
        Some(p) => Some(p),
        None => {
            skip(
                test,
                "fsx is not installed (cargo install fsx --version 0.3.2 --locked)",
            );
            None
        }
    }
}

fn run_fsx(fsx: &Path, config: &str, dir: &Path, file: &Path, seed: &str) {
    let conf = dir.join("fsx.toml");
    fs::write(&conf, config).unwrap();
    let artifacts = dir.join("artifacts");
    fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new(fsx)
        .args(["-N", OPS, "-S", seed, "-f"])
        .arg(&conf)
        .arg("-P")
        .arg(&artifacts)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsx failed on {}:\n{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const FULL_CONFIG: &str = r#"
flen = 262144
[opsize]
max = 65536
[weights]
close_open = 2
read = 10
write = 10
mapread = 5
mapwrite = 5
truncate = 3
invalidate = 1
fsync = 1
fdatasync = 1
posix_fallocate = 2
punch_hole = 2
sendfile = 2
posix_fadvise = 1
copy_file_range = 3
"#;

/// Block mode keeps the size (fsx's rule); its first open is a read-write open of the lower
/// file, so the whole file is copied up before fsx overwrites it.
const LOWER_CONFIG: &str = r#"
flen = 262144
blockmode = true
nosizechecks = true
[opsize]
max = 65536
[weights]
close_open = 0
read = 10
write = 10
mapread = 5
mapwrite = 5
truncate = 0
invalidate = 1
fsync = 1
fdatasync = 1
posix_fallocate = 0
punch_hole = 0
sendfile = 2
copy_file_range = 3
"#;

#[test]
fn fsx_on_a_file_from_a_lower_layer() {
    if !can_mount("fsx_on_a_file_from_a_lower_layer") {
        return;
    }
    let Some(fsx) = have_fsx("fsx_on_a_file_from_a_lower_layer") else {
        return;
    };
    let l = Layers::new(1);
    let original: Vec<u8> = (0..262144u32).map(|i| (i * 7 % 251) as u8).collect();
    put(l.lower().join("data/file"), &original);
    let d = Daemon::foreground(&l.options(), &l.mnt);
    run_fsx(
        &fsx,
        LOWER_CONFIG,
        l.tmp.path(),
        &l.mnt.join("data/file"),
        "7",
    );
    d.unmount_and_wait();
    assert_eq!(fs::read(l.lower().join("data/file")).unwrap(), original);
    assert!(l.upper.join("data/file").exists());
}

#[test]
fn fsx_on_a_new_file_with_passthrough() {
    if !can_mount("fsx_on_a_new_file_with_passthrough") {
        return;
    }
    let Some(fsx) = have_fsx("fsx_on_a_new_file_with_passthrough") else {
        return;
    };
    let l = Layers::new(1);
    put(l.lower().join("dir/keep"), b"k");
    let d = Daemon::foreground(&l.options(), &l.mnt);
    run_fsx(
        &fsx,
        FULL_CONFIG,
        l.tmp.path(),
        &l.mnt.join("dir/new"),
        "11",
    );
    d.unmount_and_wait();
}

#[test]
fn fsx_on_a_new_file_with_writeback_cache() {
    if !can_mount("fsx_on_a_new_file_with_writeback_cache") {
        return;
    }
    let Some(fsx) = have_fsx("fsx_on_a_new_file_with_writeback_cache") else {
        return;
    };
    let l = Layers::new(1);
    let opts = format!("{},passthrough=0", l.options());
    let d = Daemon::foreground(&opts, &l.mnt);
    run_fsx(&fsx, FULL_CONFIG, l.tmp.path(), &l.mnt.join("new"), "13");
    d.unmount_and_wait();
}

/// The same data paths with requests served through FUSE over io_uring (the kernel's switch
/// turned on for the test): passthrough, and the writeback cache, whose WRITE and READ
/// payloads travel in the ring buffers.
#[test]
fn fsx_through_io_uring() {
    if !can_mount("fsx_through_io_uring") {
        return;
    }
    let Some(fsx) = have_fsx("fsx_through_io_uring") else {
        return;
    };
    let Some(_switch) = require_fuse_uring("fsx_through_io_uring") else {
        return;
    };
    for (extra, seed) in [("", "17"), (",passthrough=0", "19")] {
        let l = Layers::new(1);
        let d = Daemon::foreground(&format!("{}{extra}", l.options()), &l.mnt);
        let pid = d.pid.expect("daemon pid");
        assert!(
            io_uring_threads(pid) > 0,
            "ovl-fuse{extra} serves no io_uring queue"
        );
        run_fsx(&fsx, FULL_CONFIG, l.tmp.path(), &l.mnt.join("new"), seed);
        d.unmount_and_wait();
    }
}
