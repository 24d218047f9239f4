//! Copy-up crash safety: a child process copying up a large lower file is killed with
//! SIGKILL mid-copy. The upper layer must never show a torn file under the final name, and
//! the next `Overlay::new` must clean the staging area.
//!
//! The child is this test binary itself, re-run with `OVL_CRASH_CHILD` set so that only
//! `crash_child_copy_up` does work.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use overlay_core::{FsyncMode, LayerStack, Overlay, OverlayOptions, XattrNamespace};

const SIZE: u64 = 512 << 20;
const CHUNK: usize = 1 << 20;

fn pattern(off: u64) -> u8 {
    ((off / 4096) % 251) as u8 + 1
}

fn stack(root: &Path) -> LayerStack {
    LayerStack::builder()
        .lower(root.join("lower"))
        .upper(root.join("upper"), root.join("work"))
        .xattr_namespace(if rustix::process::geteuid().is_root() {
            XattrNamespace::Trusted
        } else {
            XattrNamespace::User
        })
        .build()
        .unwrap()
}

/// The child's work: open the big lower file for writing, which copies it up.
#[test]
fn crash_child_copy_up() {
    let Ok(root) = std::env::var("OVL_CRASH_CHILD") else {
        return; // only meaningful as the child of `copy_up_killed_mid_copy_leaves_no_torn_file`
    };
    let ovl = Overlay::with_options(
        stack(Path::new(&root)),
        OverlayOptions {
            fsync: FsyncMode::Ordered,
            copy_chunk: CHUNK,
            ..OverlayOptions::default()
        },
    )
    .unwrap();
    let n = ovl.lookup(&ovl.root(), OsStr::new("big")).unwrap();
    let _f = ovl.open(&n, libc::O_WRONLY).unwrap();
    // Reaching here means the copy finished before the parent killed us.
    std::thread::sleep(Duration::from_secs(60));
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn staging_size(work: &Path) -> Option<u64> {
    let rd = std::fs::read_dir(work).ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .max()
}

#[test]
fn copy_up_killed_mid_copy_leaves_no_torn_file() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    // A fully written (not sparse) lower file.
    {
        let mut f = std::fs::File::create(root.join("lower/big")).unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < SIZE {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pattern(off + i as u64);
            }
            f.write_all(&buf).unwrap();
            off += CHUNK as u64;
        }
        f.sync_all().unwrap();
    }
    let work = root.join("work/work");
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_copy_up",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OVL_CRASH_CHILD", root)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    // Wait until the staged copy is partially written, then kill.
    let start = Instant::now();
    let mut seen_partial = None;
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(sz) = staging_size(&work) {
            if sz > 0 && sz < SIZE {
                seen_partial = Some(sz);
                break;
            }
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("child exited early: {st}");
        }
        std::thread::yield_now();
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.0.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success());
    let partial = seen_partial.expect("never saw a partially staged copy");
    eprintln!("killed with {partial} of {SIZE} bytes staged");

    // No torn file under the final name: absent, or (if the copy won the race) complete.
    let up = root.join("upper/big");
    if let Ok(md) = std::fs::metadata(&up) {
        assert_eq!(md.len(), SIZE, "torn file visible in upper");
    }
    // A staging leftover exists, and the next Overlay::new cleans it.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!leftovers.is_empty(), "expected a stale staging file");
    let ovl = Overlay::new(stack(root)).unwrap();
    assert!(
        std::fs::read_dir(&work).unwrap().next().is_none(),
        "staging area not cleaned"
    );
    // The copy-up then completes and the data is intact.
    let n = ovl.lookup(&ovl.root(), OsStr::new("big")).unwrap();
    let mut f = ovl.open(&n, libc::O_RDWR).unwrap();
    assert_eq!(std::fs::metadata(&up).unwrap().len(), SIZE);
    for off in [0, 4096 * 7 + 3, SIZE / 2 + 11, SIZE - 1] {
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut b).unwrap();
        assert_eq!(b[0], pattern(off), "byte at {off}");
    }
}
