//! Criterion micro-benchmarks of the userspace union engine (`overlay_core::Overlay`), without
//! FUSE or a mount in between: lookup through 1..N layers, a merged readdir of 20k entries over
//! two layers, copy-up of 1 MiB and 1 GiB, and whiteout creation.
//!
//! Run: `cargo bench --bench engine` (all), or filter, e.g. `cargo bench --bench engine -- lookup`.
//! The filter is a regular expression on the benchmark id. The 1 GiB copy-up writes about
//! 11 GiB in total (10 samples plus warm-up); leave it out with
//! `cargo bench --bench engine -- '^(lookup|readdir|whiteout|copy_up/1MiB)'`.
//!
//! Fixtures live in a temporary directory under `$OVERLAY_BENCH_DIR` (default: the system temp
//! dir) and are built lazily, only for the benchmarks the filter selects. "cold" benchmarks
//! time the first operation on a freshly opened `Overlay` (no engine caches; the OS page and
//! dentry caches are warm); "warm" ones repeat the operation on one `Overlay`.

#[path = "workloads/harness/random.rs"]
mod random;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use overlay::core::{LayerStack, NodeRef, Overlay};
use tempfile::TempDir;

/// Layer counts for the lookup benchmark.
const LOOKUP_DEPTHS: [usize; 6] = [1, 2, 4, 8, 16, 32];
/// Entries of the merged directory in the readdir benchmark.
const READDIR_ENTRIES: usize = 20_000;
/// Files available for whiteouts before a fresh upper is needed.
const WHITEOUT_FILES: usize = 5_000;

/// The root of all fixtures, removed when the process exits normally.
fn fixture_root() -> &'static Path {
    static ROOT: OnceLock<TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::var_os("OVERLAY_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).expect("create OVERLAY_BENCH_DIR");
        tempfile::Builder::new()
            .prefix("overlay-engine-bench.")
            .tempdir_in(base)
            .expect("create fixture dir")
    })
    .path()
}

/// A fresh, empty upper/work pair below the fixture root.
fn fresh_upper() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("upper.")
        .tempdir_in(fixture_root())
        .expect("create upper dir");
    fs::create_dir(dir.path().join("upper")).expect("mkdir upper");
    fs::create_dir(dir.path().join("work")).expect("mkdir work");
    dir
}

fn read_only_overlay(lowers: &[PathBuf]) -> Overlay {
    let stack = LayerStack::builder()
        .lowers(lowers.iter().cloned())
        .build()
        .expect("build read-only stack");
    Overlay::new(stack).expect("open overlay")
}

fn writable_overlay(lowers: &[PathBuf], upper: &Path) -> Overlay {
    let stack = LayerStack::builder()
        .lowers(lowers.iter().cloned())
        .upper(upper.join("upper"), upper.join("work"))
        .build()
        .expect("build writable stack");
    Overlay::new(stack).expect("open overlay")
}

fn lookup_path(ovl: &Overlay, path: &[&str]) -> NodeRef {
    let mut node = ovl.root();
    for name in path {
        node = ovl
            .lookup(&node, OsStr::new(name))
            .unwrap_or_else(|e| panic!("lookup {name}: {e}"));
    }
    node
}

/// Write `len` bytes of incompressible pseudo-random data (no sparse or dedup shortcuts).
fn write_random_file(path: &Path, len: u64) {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    random::write_stream(&mut file, len, 0x9E37_79B9_7F4A_7C15).unwrap();
    file.into_inner().unwrap().sync_all().unwrap();
}

/// `depth` lower layers that all hold directory `d` (with one file of their own), so that a
/// lookup in `d` must consult every layer; `d/target` exists only in the bottom layer.
fn lookup_fixture(depth: usize) -> Vec<PathBuf> {
    let root = fixture_root().join(format!("lookup-{depth}"));
    let lowers: Vec<PathBuf> = (0..depth).map(|i| root.join(format!("l{i}"))).collect();
    if !root.exists() {
        for (i, lower) in lowers.iter().enumerate() {
            fs::create_dir_all(lower.join("d")).unwrap();
            fs::write(lower.join("d").join(format!("own{i}")), b"x").unwrap();
        }
        fs::write(lowers[0].join("d/target"), b"target").unwrap();
    }
    lowers
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for depth in LOOKUP_DEPTHS {
        group.bench_with_input(BenchmarkId::new("cold", depth), &depth, |b, &depth| {
            let lowers = lookup_fixture(depth);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ovl = read_only_overlay(&lowers);
                    let start = Instant::now();
                    let node = lookup_path(&ovl, &["d", "target"]);
                    total += start.elapsed();
                    black_box(node);
                }
                total
            });
        });
        group.bench_with_input(BenchmarkId::new("warm", depth), &depth, |b, &depth| {
            let lowers = lookup_fixture(depth);
            let ovl = read_only_overlay(&lowers);
            let dir = lookup_path(&ovl, &["d"]);
            b.iter(|| black_box(ovl.lookup(&dir, OsStr::new("target")).unwrap()));
        });
        group.bench_with_input(BenchmarkId::new("miss", depth), &depth, |b, &depth| {
            let lowers = lookup_fixture(depth);
            let ovl = read_only_overlay(&lowers);
            let dir = lookup_path(&ovl, &["d"]);
            b.iter(|| {
                let missing = ovl.lookup(&dir, OsStr::new("missing"));
                assert!(missing.is_err(), "d/missing must not exist");
                black_box(missing.is_err())
            });
        });
    }
    group.finish();
}

/// Two lowers: the bottom one holds `big/` with 20k files, the top one shadows every other
/// name (10k), so the merge must de-duplicate half of the entries.
fn readdir_fixture() -> &'static [PathBuf] {
    static LOWERS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOWERS.get_or_init(|| {
        let root = fixture_root().join("readdir");
        let lowers = vec![root.join("bottom"), root.join("top")];
        for lower in &lowers {
            fs::create_dir_all(lower.join("big")).unwrap();
        }
        for i in 0..READDIR_ENTRIES {
            let name = format!("entry-{i:05}");
            fs::write(lowers[0].join("big").join(&name), b"").unwrap();
            if i % 2 == 0 {
                fs::write(lowers[1].join("big").join(&name), b"").unwrap();
            }
        }
        lowers
    })
}

fn bench_readdir(c: &mut Criterion) {
    let mut group = c.benchmark_group("readdir");
    group.sample_size(20);
    group.bench_function("merged_20k/cold", |b| {
        let lowers = readdir_fixture();
        {
            let ovl = read_only_overlay(lowers);
            let dir = lookup_path(&ovl, &["big"]);
            assert_eq!(ovl.readdir(&dir).unwrap().len(), READDIR_ENTRIES);
        }
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ovl = read_only_overlay(lowers);
                let start = Instant::now();
                let dir = lookup_path(&ovl, &["big"]);
                let entries = ovl.readdir(&dir).unwrap();
                total += start.elapsed();
                black_box(entries);
            }
            total
        });
    });
    group.bench_function("merged_20k/warm", |b| {
        let ovl = read_only_overlay(readdir_fixture());
        let dir = lookup_path(&ovl, &["big"]);
        b.iter(|| black_box(ovl.readdir(&dir).unwrap()));
    });
    group.finish();
}

/// A lower holding one file of `len` bytes, built on first use.
fn copy_up_fixture(len: u64) -> Vec<PathBuf> {
    let lower = fixture_root().join(format!("copyup-{len}"));
    if !lower.exists() {
        fs::create_dir_all(&lower).unwrap();
        write_random_file(&lower.join("data"), len);
    }
    vec![lower]
}

/// Time `open(O_WRONLY)` of a lower-only file on a fresh upper: the full data copy-up.
fn time_copy_up(lowers: &[PathBuf], len: u64, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let upper = fresh_upper();
        let ovl = writable_overlay(lowers, upper.path());
        let node = lookup_path(&ovl, &["data"]);
        let start = Instant::now();
        let file = ovl.open(&node, libc::O_WRONLY).expect("copy-up open");
        total += start.elapsed();
        assert_eq!(file.metadata().unwrap().len(), len, "copied-up size");
        // file, node, ovl and then upper are dropped here, in that order.
    }
    total
}

fn bench_copy_up(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy_up");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    const MIB: u64 = 1 << 20;
    group.bench_function("1MiB", |b| {
        let lowers = copy_up_fixture(MIB);
        b.iter_custom(|iters| time_copy_up(&lowers, MIB, iters));
    });
    // `cargo test --benches` runs every benchmark once without `--bench`: leave the 1 GiB
    // copy out of test runs (it writes a 1 GiB fixture and copies it).
    if !std::env::args().any(|a| a == "--bench") {
        group.finish();
        return;
    }
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_secs(30));
    const GIB: u64 = 1 << 30;
    group.bench_function("1GiB", |b| {
        let lowers = copy_up_fixture(GIB);
        b.iter_custom(|iters| time_copy_up(&lowers, GIB, iters));
    });
    group.finish();
}

/// A lower with `wh/` holding [`WHITEOUT_FILES`] files plus one used to copy up `wh/` itself.
fn whiteout_fixture() -> &'static [PathBuf] {
    static LOWERS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOWERS.get_or_init(|| {
        let lower = fixture_root().join("whiteout");
        fs::create_dir_all(lower.join("wh")).unwrap();
        fs::write(lower.join("wh/first"), b"").unwrap();
        for i in 0..WHITEOUT_FILES {
            fs::write(lower.join("wh").join(format!("f{i}")), b"").unwrap();
        }
        vec![lower]
    })
}

fn bench_whiteout(c: &mut Criterion) {
    c.bench_function("whiteout/unlink_lower_file", |b| {
        let lowers = whiteout_fixture();
        let names: Vec<OsString> = (0..WHITEOUT_FILES)
            .map(|i| OsString::from(format!("f{i}")))
            .collect();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                // A fresh upper; the parent directory is copied up (untimed) by a first unlink.
                let upper = fresh_upper();
                let ovl = writable_overlay(lowers, upper.path());
                let dir = lookup_path(&ovl, &["wh"]);
                ovl.unlink(&dir, OsStr::new("first")).unwrap();
                let batch = (iters - done).min(WHITEOUT_FILES as u64) as usize;
                let start = Instant::now();
                for name in &names[..batch] {
                    ovl.unlink(&dir, name).unwrap();
                }
                total += start.elapsed();
                done += batch as u64;
            }
            total
        });
    });
}

criterion_group!(
    benches,
    bench_lookup,
    bench_readdir,
    bench_copy_up,
    bench_whiteout
);
criterion_main!(benches);
