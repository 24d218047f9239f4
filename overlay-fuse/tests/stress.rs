//! Several workers creating, renaming, unlinking, linking, listing and removing in the same
//! directories of one ovl-fuse mount at once (by default for a minute; `OVL_STRESS_SECS`
//! sets it). Races give the errors the kernel overlay gives in the same races (a name
//! gone: ENOENT; a name taken: EEXIST; a directory not empty: ENOTEMPTY), and nothing
//! else: no EIO, ESTALE or ENXIO. Afterwards the merged view equals the kernel overlay's
//! view of the same upper.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_same_tree, can_mount, put, snapshot, Daemon, KernelOverlay, Layers};

const DIRS: usize = 4;
const NAMES: u64 = 40;
const WORKERS: usize = 8;

/// A small xorshift generator (each worker its own, seeded by its number).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Errors a race between these operations gives on the kernel overlay too.
fn expected_in_a_race(kind: ErrorKind, errno: Option<i32>) -> bool {
    matches!(kind, ErrorKind::NotFound | ErrorKind::AlreadyExists) || errno == Some(libc::ENOTEMPTY)
}

/// One worker: random operations on `dN/fM` files and `dN/sM` subdirectories until `stop`;
/// returns the unexpected errors it met (operation and error).
fn worker(root: &Path, seed: u64, stop: &AtomicBool) -> (u64, Vec<String>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut bad = Vec::new();
    let mut ops = 0u64;
    let pick = |rng: &mut Rng, prefix: &str| -> PathBuf {
        root.join(format!("d{}", rng.below(DIRS as u64)))
            .join(format!("{prefix}{}", rng.below(NAMES)))
    };
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        let op = rng.below(9);
        let (what, r): (&str, std::io::Result<()>) = match op {
            0 => ("create", std::fs::write(pick(&mut rng, "f"), b"new data")),
            1 => ("unlink", std::fs::remove_file(pick(&mut rng, "f"))),
            2 => {
                let (a, b) = (pick(&mut rng, "f"), pick(&mut rng, "f"));
                ("rename", std::fs::rename(a, b))
            }
            3 => {
                let (a, b) = (pick(&mut rng, "f"), pick(&mut rng, "f"));
                ("link", std::fs::hard_link(a, b))
            }
            4 => {
                let d = root.join(format!("d{}", rng.below(DIRS as u64)));
                let r = std::fs::read_dir(&d).and_then(|rd| {
                    for e in rd {
                        let p = e?.path();
                        match std::fs::symlink_metadata(&p) {
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            other => {
                                other?;
                            }
                        }
                    }
                    Ok(())
                });
                ("readdir", r)
            }
            5 => ("mkdir", std::fs::create_dir(pick(&mut rng, "s"))),
            6 => ("rmdir", std::fs::remove_dir(pick(&mut rng, "s"))),
            7 => ("read", std::fs::read(pick(&mut rng, "f")).map(|_| ())),
            _ => (
                "stat",
                std::fs::symlink_metadata(pick(&mut rng, "f")).map(|_| ()),
            ),
        };
        if let Err(e) = r {
            if !expected_in_a_race(e.kind(), e.raw_os_error()) {
                bad.push(format!("{what}: {e}"));
            }
        }
    }
    (ops, bad)
}

/// Lower content: each directory holds lower files under half the names, so the workers
/// copy up, white out and recreate over lower files as well as upper ones.
fn fill_lower(l: &Layers) {
    for d in 0..DIRS {
        for n in (0..NAMES).step_by(2) {
            put(l.lower().join(format!("d{d}/f{n}")), b"lower data");
        }
        std::fs::create_dir_all(l.lower().join(format!("d{d}/s1"))).unwrap();
    }
}

/// Run the workers on the merged tree `root` for `secs` seconds; the operation count and
/// the unexpected errors, counted by kind.
fn run_workers(root: &Path, secs: u64) -> (u64, BTreeMap<String, usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let handles: Vec<_> = (0..WORKERS)
        .map(|i| {
            let (root, stop, results) = (root.to_path_buf(), stop.clone(), results.clone());
            std::thread::spawn(move || {
                let r = worker(&root, i as u64 + 1, &stop);
                results.lock().unwrap().push(r);
            })
        })
        .collect();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker panicked");
    }
    let results = results.lock().unwrap();
    let mut bad = BTreeMap::new();
    for e in results.iter().flat_map(|r| &r.1) {
        *bad.entry(e.clone()).or_default() += 1;
    }
    (results.iter().map(|r| r.0).sum(), bad)
}

#[test]
fn concurrent_namespace_changes_give_only_the_kernels_errors() {
    if !can_mount("concurrent_namespace_changes_give_only_the_kernels_errors") {
        return;
    }
    let secs: u64 = std::env::var("OVL_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // The oracle first: the same workload on the kernel overlay gives none but the race
    // errors this test expects (a sixth of the time is enough to show it).
    let k = Layers::new(1);
    fill_lower(&k);
    let (kernel_ops, kernel_bad) = {
        let _m = KernelOverlay::mount(&k);
        run_workers(&k.mnt, secs.div_ceil(6))
    };
    assert!(
        kernel_bad.is_empty(),
        "the kernel overlay gave other errors in {kernel_ops} operations: {kernel_bad:#?}"
    );

    let l = Layers::new(1);
    fill_lower(&l);
    let d = Daemon::foreground(&l.options(), &l.mnt);
    let (ops, bad) = run_workers(&l.mnt, secs);
    let ours = snapshot(&l.mnt);
    d.unmount_and_wait();
    eprintln!(
        "{ops} operations by {WORKERS} workers in {secs} s ({kernel_ops} on the kernel overlay)"
    );
    assert!(
        bad.is_empty(),
        "errors the kernel overlay does not give in {ops} operations: {bad:#?}"
    );

    // The kernel's view of the upper we left.
    let kernel = {
        let _k = KernelOverlay::mount(&l);
        snapshot(&l.mnt)
    };
    assert_same_tree(
        &ours,
        &kernel,
        "ovl-fuse's view vs the kernel's of the same upper",
    );
}
