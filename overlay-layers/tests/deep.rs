//! Depth that a layer's writer chooses costs heap, never stack: `changes()` and `check()`
//! walk a 6,000-deep upper (over a lower holding part of the chain) on a 256 KiB stack.

use std::path::{Path, PathBuf};

use overlay_layers::{changes, check, ChangeKind};

/// Smaller than the 2 MiB of Rust's spawned threads: recursion over 6,000 levels overflows it.
const SMALL_STACK: usize = 256 * 1024;
const DEPTH: usize = 6000;

/// Run `f` on a thread with [`SMALL_STACK`] (a stack overflow aborts the test binary).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// `top` (created), `top/d`, `top/d/d`, ... `depth` directories, made through fds (the
/// whole path is far longer than PATH_MAX), with a file `leaf` in the deepest.
fn deep_chain(top: &Path, depth: usize) {
    use rustix::fs::{Mode, OFlags};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    std::fs::create_dir(top).unwrap();
    let mut fd = rustix::fs::open(top, dir_flags, Mode::empty()).unwrap();
    for _ in 1..depth {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, "d", dir_flags, Mode::empty()).unwrap();
    }
    rustix::fs::openat(
        &fd,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
}

/// Removes the test's deep trees with `rm -rf` (iterative), which `std::fs::remove_dir_all`
/// of the temporary directory could not do on a small stack.
struct RemoveDeep(PathBuf);

impl Drop for RemoveDeep {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn changes_and_check_walk_a_deep_upper_on_a_small_stack() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("deep");
    std::fs::create_dir(&root).unwrap();
    let _guard = RemoveDeep(root.clone());
    let (lower, upper) = (root.join("lower"), root.join("upper"));
    // The lower holds the first 100 levels; the upper all of them and the leaf.
    deep_chain(&lower, 100);
    std::fs::remove_file(lower.join(["d"; 99].join("/")).join("leaf")).unwrap();
    deep_chain(&upper, DEPTH);

    let (l, u) = (lower.clone(), upper.clone());
    let all = on_small_stack(move || changes(&[&l], &u).unwrap().collect::<Vec<_>>());
    // Levels 2..=100 are in both (modified directories), 101..=6000 and the leaf are new.
    let modified = all
        .iter()
        .filter(|c| c.kind == ChangeKind::Modified)
        .count();
    let added = all.iter().filter(|c| c.kind == ChangeKind::Added).count();
    assert_eq!(modified, 99, "directories present in the lower");
    assert_eq!(added, DEPTH - 100 + 1, "new directories and the leaf");
    assert!(all
        .iter()
        .all(|c| c.kind != ChangeKind::Deleted && c.renamed_from.is_none()));

    let u = upper.clone();
    let report = on_small_stack(move || check(&u, None::<&Path>).unwrap());
    assert_eq!(report.errors, 0, "{:?}", report.findings);
}
