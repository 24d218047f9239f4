//! Engine-only versions of the benchmark workloads, for profilers (callgrind, perf) and for
//! the engine's memory per node.
//!
//! ```sh
//! cargo build --release -p overlay-core --example engine_workloads
//! B=target/release/examples/engine_workloads
//! $B setup /var/tmp/ew 40 250          # lower tree: 40 dirs x 250 files (built once)
//! valgrind --tool=callgrind $B stat-walk /var/tmp/ew
//! $B mem /var/tmp/ew                   # heap bytes per live node after a stat-walk
//! ```
//!
//! Workloads: `stat-walk` (readdir, lookup and getattr of every entry, nodes kept alive as a
//! FUSE adapter does), `read-small` (and read every file), `copyup-meta` (set the mtime of
//! every file: metadata copy-up), `create-untar` (mkdir and create+write of the same shape
//! in a fresh directory), `delete-tree` (remove everything: whiteouts), `mem`.
//! Each run uses a fresh upper and workdir below the base directory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicIsize, Ordering};

use overlay_core::{
    FileKind, FsyncMode, LayerStack, NodeRef, Overlay, OverlayOptions, SetAttr, TimeSet,
    XattrNamespace,
};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn setup(base: &Path, dirs: usize, files: usize) {
    let lower = base.join("lower");
    std::fs::create_dir_all(&lower).unwrap();
    for d in 0..dirs {
        let dp = lower.join(format!("pkg-{d:04}"));
        std::fs::create_dir_all(dp.join("sub")).unwrap();
        for f in 0..files {
            let p = if f % 5 == 0 {
                dp.join("sub").join(format!("file-{f:05}.txt"))
            } else {
                dp.join(format!("file-{f:05}.txt"))
            };
            std::fs::write(p, format!("content of {d} {f}\n").repeat(8)).unwrap();
        }
    }
}

fn overlay(base: &Path) -> (Overlay, PathBuf) {
    let run = base.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(run.join("u")).unwrap();
    std::fs::create_dir_all(run.join("w")).unwrap();
    let stack = LayerStack::builder()
        .lower(base.join("lower"))
        .upper(run.join("u"), run.join("w"))
        .xattr_namespace(XattrNamespace::Trusted)
        .build()
        .unwrap();
    // OVL_FSYNC=volatile|strict|ordered (default ordered, as the kernel).
    let fsync = match std::env::var("OVL_FSYNC").as_deref() {
        Ok("volatile") => FsyncMode::Volatile,
        Ok("strict") => FsyncMode::Strict,
        _ => FsyncMode::Ordered,
    };
    let opts = OverlayOptions {
        fsync,
        ..Default::default()
    };
    (Overlay::with_options(stack, opts).unwrap(), run)
}

/// Walk the tree: readdir, lookup and getattr of every entry; `f` sees every non-directory.
fn walk(ovl: &Overlay, dir: &NodeRef, keep: &mut Vec<NodeRef>, f: &mut dyn FnMut(&NodeRef)) {
    for e in ovl.readdir(dir).unwrap() {
        // As a FUSE lookup reply: the node and its attributes.
        let (n, a) = ovl.lookup_attr(dir, &e.name).unwrap();
        assert_eq!(a.ino, e.ino);
        if n.kind() == FileKind::Directory {
            walk(ovl, &n, keep, f);
        } else {
            f(&n);
        }
        keep.push(n);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let base = PathBuf::from(args.get(2).expect("base dir"));
    if mode == "setup" {
        let dirs = args.get(3).map_or(40, |s| s.parse().unwrap());
        let files = args.get(4).map_or(250, |s| s.parse().unwrap());
        setup(&base, dirs, files);
        return;
    }
    let (ovl, run) = overlay(&base);
    let root = ovl.root();
    let mut keep = Vec::new();
    let t = std::time::Instant::now();
    match mode {
        "stat-walk" => walk(&ovl, &root, &mut keep, &mut |_| {}),
        "mem" => {
            let before = LIVE.load(Ordering::Relaxed);
            walk(&ovl, &root, &mut keep, &mut |_| {});
            let vec_bytes = keep.capacity() * std::mem::size_of::<NodeRef>();
            let after = LIVE.load(Ordering::Relaxed) - vec_bytes as isize;
            println!(
                "size_of::<Node>() = {} bytes; {} live nodes; engine heap {} bytes per node",
                std::mem::size_of::<overlay_core::Node>(),
                keep.len(),
                (after - before) / keep.len() as isize
            );
        }
        "read-small" => {
            let mut buf = Vec::new();
            walk(&ovl, &root, &mut keep, &mut |n| {
                buf.clear();
                ovl.open(n, libc::O_RDONLY)
                    .unwrap()
                    .read_to_end(&mut buf)
                    .unwrap();
            })
        }
        "copyup-meta" => walk(&ovl, &root, &mut keep, &mut |n| {
            let s = SetAttr {
                atime: Some(TimeSet::Now),
                mtime: Some(TimeSet::Now),
                ..Default::default()
            };
            ovl.setattr(n, &s).unwrap();
        }),
        "create-untar" => {
            let top = ovl.mkdir(&root, OsStr::new("inc"), 0o755, None).unwrap();
            for d in ovl.readdir(&root).unwrap() {
                if d.name == "inc" {
                    continue;
                }
                let dn = ovl.mkdir(&top, &d.name, 0o755, None).unwrap();
                let src = ovl.lookup(&root, &d.name).unwrap();
                for e in ovl.readdir(&src).unwrap() {
                    if e.kind == FileKind::Directory {
                        continue;
                    }
                    let (n, mut f) = ovl
                        .create(&dn, &e.name, 0o644, libc::O_WRONLY | libc::O_EXCL, None)
                        .unwrap();
                    f.write_all(b"#define X 1\n").unwrap();
                    keep.push(n);
                }
                keep.push(dn);
            }
        }
        "delete-tree" => {
            fn rm(ovl: &Overlay, dir: &NodeRef) {
                for e in ovl.readdir(dir).unwrap() {
                    if e.kind == FileKind::Directory {
                        let n = ovl.lookup(dir, &e.name).unwrap();
                        rm(ovl, &n);
                        ovl.rmdir(dir, &e.name).unwrap();
                    } else {
                        // Held while unlinking, as the kernel holds the inode.
                        let _n = ovl.lookup(dir, &e.name).unwrap();
                        ovl.unlink(dir, &e.name).unwrap();
                    }
                }
            }
            rm(&ovl, &root);
        }
        m => panic!("unknown mode {m:?}"),
    }
    eprintln!("{mode}: {} entries, {:?}", keep.len(), t.elapsed());
    drop(keep);
    drop(root);
    drop(ovl);
    std::fs::remove_dir_all(run).unwrap();
}
