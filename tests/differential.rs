//! Differential test: the kernel overlay against our userspace engine (`overlay_core::Overlay`).
//!
//! Each case builds two identical fresh stacks (see `common/fixture.rs`), mounts a kernel
//! overlay on one and opens the engine on the other, applies the same generated operation
//! sequence to both, and requires the same outcome (errno) for every operation, the same
//! merged tree and the same upper layer on disk. The number of sequences is 200 by default;
//! set `OVL_DIFF_CASES=5000` for a longer run. On failure proptest shrinks to a minimal
//! sequence and prints it.

mod common;

use common::engine::EngineBackend;
use common::features::Features;
use common::kernel::{kernel_backend, kernel_backend_with};
use common::ops::{Op, RenameMode, XattrMode};
use common::{assert_same, init, require_mounts, run_case, Backend};

/// Longest generated sequence.
const MAX_OPS: usize = 24;

/// Generated sequences through `run_property` with this file's shrink budget.
fn run_property(
    default_cases: u32,
    make: impl Fn() -> (Box<dyn common::Backend>, Box<dyn common::Backend>),
) {
    common::run_property(default_cases, MAX_OPS, 4096, make);
}

/// The harness itself: two kernel mounts of the same fixture must agree on everything. If
/// this fails the harness compares something nondeterministic.
#[test]
fn kernel_agrees_with_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(20, || {
        (Box::new(kernel_backend()), Box::new(kernel_backend()))
    });
}

/// The comparison is not blind: one extra unlink on one side shows in the merged view (the
/// name) and in the upper layer (the whiteout).
#[test]
fn harness_detects_a_difference() {
    init();
    if !require_mounts() {
        return;
    }
    let (mut a, mut b) = (kernel_backend(), kernel_backend());
    assert_eq!(a.apply(&Op::Unlink { path: p("m/a") }), Ok(String::new()));
    let d = run_case(&[], &mut a, &mut b).expect_err("an unlink on one side must show");
    assert!(
        d.contains("merged views differ") && d.contains("/m/a: only in kernel"),
        "{d}"
    );
    let (mut a, mut b) = (kernel_backend(), kernel_backend());
    let d = run_case(&[Op::Rmdir { path: p("d/c") }], &mut a, &mut b);
    assert_eq!(d, Ok(()));
    // An xattr written straight into one upper layer shows too.
    rustix::fs::lsetxattr(
        a.upper().join("d"),
        "user.x",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let d = run_case(&[], &mut a, &mut b).expect_err("an upper xattr must show");
    assert!(d.contains("user.x"), "{d}");
}

/// Generated sequences: kernel overlay vs engine.
#[test]
fn engine_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(200, || {
        (Box::new(kernel_backend()), Box::new(EngineBackend::new()))
    });
}

/// Generated sequences: kernel overlay vs engine with nodes kept across operations, as the
/// FUSE adapter gets them from the kernel's dentry cache.
#[test]
fn engine_with_node_cache_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(200, || {
        (
            Box::new(kernel_backend()),
            Box::new(EngineBackend::with_node_cache()),
        )
    });
}

/// Generated sequences with the options of `f` on both sides, the engine with and without
/// nodes kept across operations.
fn engine_matches_kernel_with(f: Features, default_cases: u32) {
    init();
    if !require_mounts() {
        return;
    }
    for node_cache in [false, true] {
        run_property(default_cases, || {
            (
                Box::new(kernel_backend_with(f)),
                Box::new(EngineBackend::with_features(f, node_cache)),
            )
        });
    }
}

/// Generated sequences with `redirect_dir=on`: lower and merged directories are renamed
/// (the upper copy gets `overlay.redirect`, the old name a whiteout), on both sides.
#[test]
fn engine_matches_kernel_with_redirect_dir() {
    engine_matches_kernel_with(Features::REDIRECT, 150);
}

/// Generated sequences with `redirect_dir=on,metacopy=on`: chmod, chown, times, xattr
/// changes, hard links and renames of lower files copy up their metadata only; writes and
/// truncations then copy the data.
#[test]
fn engine_matches_kernel_with_metacopy() {
    engine_matches_kernel_with(Features::METACOPY, 150);
}

/// Generated sequences with `index=on` over lowers with hard links (see the fixture), and
/// with everything on: copy-ups of hard-linked lower files keep one inode for all their
/// names, as the kernel's.
#[test]
fn engine_matches_kernel_with_index() {
    engine_matches_kernel_with(Features::INDEX, 100);
    engine_matches_kernel_with(Features::ALL, 100);
}

/// Directory renames with `redirect_dir=on`: a merged directory renamed within its parent
/// (relative redirect), into another directory (absolute redirect), renamed again (the
/// redirect kept), a lower-only directory moved into a renamed one, then changed inside;
/// an exchange of two merged directories; a rename back over the whiteout of its old name.
#[test]
fn regression_directory_renames_with_redirect_dir() {
    let ops = [
        Op::Rename {
            from: p("m"),
            to: p("x"),
            mode: RenameMode::Plain,
        },
        Op::Create {
            path: p("x/e"),
            mode: 0o644,
            excl: true,
        },
        Op::Unlink { path: p("x/a") },
        Op::Rename {
            from: p("d"),
            to: p("x/d"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("x/d/c"),
            to: p("x/m/c"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("x"),
            to: p("b"),
            mode: RenameMode::Plain,
        },
        Op::Mkdir {
            path: p("m"),
            mode: 0o755,
        },
        Op::Rename {
            from: p("b/m"),
            to: p("o"),
            mode: RenameMode::Exchange,
        },
        Op::Rename {
            from: p("o"),
            to: p("b/d/c"),
            mode: RenameMode::Plain,
        },
        Op::Rmdir { path: p("m") },
        Op::Rename {
            from: p("b"),
            to: p("m"),
            mode: RenameMode::Plain,
        },
        Op::Stat {
            path: p("m/d/a"),
            follow: false,
        },
    ];
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::REDIRECT;
    assert_same(
        &ops,
        &mut kernel_backend_with(f),
        &mut EngineBackend::with_features(f, false),
    );
    assert_same(
        &ops,
        &mut kernel_backend_with(f),
        &mut EngineBackend::with_features(f, true),
    );
}

/// A directory renamed over a non-empty pure upper directory: ENOTEMPTY, but, as the
/// kernel leaves that check to the upper filesystem, only after the source was copied up
/// and marked (opaque when it moves into a merged directory; its redirect with
/// `redirect_dir=on`), which stays.
#[test]
fn regression_rename_over_a_non_empty_upper_directory() {
    let ops = [
        Op::Mkdir {
            path: p("c"),
            mode: 0o755,
        },
        Op::Mkdir {
            path: p("e2"),
            mode: 0o755,
        },
        Op::Rename {
            from: p("a"),
            to: p("c/a"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("e2"),
            to: p("c"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("d"),
            to: p("c"),
            mode: RenameMode::Plain,
        },
    ];
    init();
    if !require_mounts() {
        return;
    }
    for f in [Features::DEFAULTS, Features::REDIRECT, Features::METACOPY] {
        assert_same(
            &ops,
            &mut kernel_backend_with(f),
            &mut EngineBackend::with_features(f, false),
        );
    }
}

fn p(s: &str) -> String {
    s.to_string()
}

fn against_kernel(ops: &[Op]) {
    init();
    if !require_mounts() {
        return;
    }
    assert_same(ops, &mut kernel_backend(), &mut EngineBackend::new());
}

/// Delete and recreate names that exist in lower layers: whiteouts, then an opaque directory
/// replacing a whiteout, then a file over a whiteout.
#[test]
fn regression_whiteouts_and_opaque_recreate() {
    against_kernel(&[
        Op::Unlink { path: p("m/a") },
        Op::Unlink { path: p("m/b") },
        Op::Unlink { path: p("m/c") },
        Op::Unlink { path: p("m/d") },
        Op::Rmdir { path: p("m/m") },
        Op::Rmdir { path: p("m") },
        Op::Mkdir {
            path: p("m"),
            mode: 0o755,
        },
        Op::Create {
            path: p("m/a"),
            mode: 0o644,
            excl: true,
        },
        Op::Unlink { path: p("a") },
        Op::Create {
            path: p("a"),
            mode: 0o600,
            excl: true,
        },
        Op::Rmdir { path: p("d") },
        Op::Stat {
            path: p("d"),
            follow: false,
        },
    ]);
}

/// Renames: files from lower (copy-up, whiteout left), merged/lower directories (EXDEV),
/// upper-only directories (work), onto existing targets, NOREPLACE and EXCHANGE.
#[test]
fn regression_renames() {
    against_kernel(&[
        Op::Rename {
            from: p("a"),
            to: p("b"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("m"),
            to: p("x"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("d"),
            to: p("o"),
            mode: RenameMode::Plain,
        },
        Op::Mkdir {
            path: p("c"),
            mode: 0o755,
        },
        Op::Create {
            path: p("c/a"),
            mode: 0o644,
            excl: true,
        },
        Op::Rename {
            from: p("c"),
            to: p("a"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("m/c"),
            to: p("b"),
            mode: RenameMode::NoReplace,
        },
        Op::Rename {
            from: p("m/c"),
            to: p("b"),
            mode: RenameMode::Exchange,
        },
        Op::Rename {
            from: p("e"),
            to: p("m/e"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("a"),
            to: p("a/a/x"),
            mode: RenameMode::Plain,
        },
    ]);
}

/// Copy-up by write, append, truncate, chmod and xattrs, and hard links to copied-up files.
#[test]
fn regression_copy_up_and_links() {
    against_kernel(&[
        Op::Write {
            path: p("b"),
            offset: 3,
            data: b"XY".to_vec(),
        },
        Op::Append {
            path: p("m/a"),
            data: b"more\n".to_vec(),
        },
        Op::Truncate {
            path: p("d/a"),
            size: 4097,
        },
        Op::Chmod {
            path: p("m"),
            mode: 0o700,
        },
        Op::Chmod {
            path: p("e"),
            mode: 0o600,
        },
        Op::SetXattr {
            path: p("a"),
            name: p("user.b"),
            value: b"1".to_vec(),
            mode: XattrMode::Create,
        },
        Op::SetXattr {
            path: p("a"),
            name: p("user.a"),
            value: b"red".to_vec(),
            mode: XattrMode::Create,
        },
        Op::SetXattr {
            path: p("o/b"),
            name: p("user.a"),
            value: b"".to_vec(),
            mode: XattrMode::Replace,
        },
        Op::RemoveXattr {
            path: p("m"),
            name: p("user.color"),
        },
        Op::Link {
            from: p("m/c"),
            to: p("o/x"),
        },
        Op::Link {
            from: p("m/b"),
            to: p("c"),
        },
        Op::Append {
            path: p("o/x"),
            data: b"linked\n".to_vec(),
        },
        Op::Create {
            path: p("m/d"),
            mode: 0o644,
            excl: false,
        },
    ]);
}

/// A file opened read-only before a copy-up reads the copied-up data afterwards: the kernel's
/// overlay file follows the copy-up (stacked file operations, since 4.19).
#[test]
fn read_fd_opened_before_copy_up_sees_later_writes() {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    init();
    if !require_mounts() {
        return;
    }
    let k = kernel_backend();
    // Read two bytes before the copy-up: the position must carry over to the upper copy.
    let mut before = std::fs::File::open(k.root().join("b")).unwrap();
    let mut head = [0u8; 2];
    before.read_exact(&mut head).unwrap();
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(k.root().join("b"))
        .unwrap();
    writer.write_all_at(b"NEW", 0).unwrap();
    let mut kernel_read = String::from_utf8(head.to_vec()).unwrap();
    before.read_to_string(&mut kernel_read).unwrap();

    let e = EngineBackend::new();
    let o = e.overlay();
    let b = o.lookup(&o.root(), std::ffi::OsStr::new("b")).unwrap();
    let mut before = o.open_file(&b, libc::O_RDONLY).unwrap();
    let mut head = [0u8; 2];
    before.read_exact(&mut head).unwrap();
    let writer = o.open(&b, libc::O_WRONLY).unwrap();
    writer.write_all_at(b"NEW", 0).unwrap();
    let mut engine_read = String::from_utf8(head.to_vec()).unwrap();
    before.read_to_string(&mut engine_read).unwrap();

    // The first two bytes come from before the write, the rest from the copied-up file.
    assert_eq!(kernel_read, "loWer1 b, shadowing lower0\n");
    assert_eq!(
        engine_read, kernel_read,
        "engine: read through an fd opened before copy-up"
    );
}
