//! Differential test: the kernel overlay against our FUSE mount (`overlay-fuse`, served in
//! this process). Same harness as `differential.rs`: identical fresh fixture stacks, the same
//! generated operation sequence through ordinary system calls on both mount points, and the
//! same outcome for every operation, the same merged tree and the same upper layer on disk.
//! `OVL_DIFF_CASES` sets the number of sequences.

mod common;

use common::features::Features;
use common::fixture::FixtureStack;
use common::kernel::{kernel_backend, kernel_backend_with, MountedBackend};
use common::ops::{Op, RenameMode};
use common::{assert_same, init, require_mounts};
use overlay_core::{LayerStack, Overlay, XattrNamespace};
use overlay_fuse::{spawn_mount, FsConfig, FuseMount, MountConfig};

const MAX_OPS: usize = 24;

/// A fresh fixture stack in its own temp dir, with an empty mountpoint `mnt` there.
fn fixture_with_mountpoint() -> (tempfile::TempDir, FixtureStack, std::path::PathBuf) {
    fixture_for(Features::DEFAULTS)
}

/// [`fixture_with_mountpoint`] for a case run with `features` (hard links in the lowers
/// with `index=on`).
fn fixture_for(features: Features) -> (tempfile::TempDir, FixtureStack, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = FixtureStack::create_for(tmp.path(), features);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    (tmp, s, mnt)
}

/// A fresh fixture with our FUSE mount on it (passthrough or writeback cache per `fs`).
fn fuse_backend(fs: FsConfig) -> MountedBackend<FuseMount> {
    fuse_backend_with(fs, Features::DEFAULTS)
}

/// The same with the engine options of `features`.
fn fuse_backend_with(fs: FsConfig, features: Features) -> MountedBackend<FuseMount> {
    let (tmp, s, mnt) = fixture_for(features);
    let m = mount_fuse_features(s.layer_stack(), &mnt, fs, features);
    MountedBackend::new("fuse", mnt, s.upper.clone(), m, tmp)
}

/// Our FUSE mount of `stack` at `mnt`, served in this process (2 worker threads).
fn mount_fuse(stack: LayerStack, mnt: &std::path::Path, fs: FsConfig) -> FuseMount {
    mount_fuse_with(stack, mnt, MountConfig::for_current_user(fs))
}

/// The same with a mount configuration of the caller's (its worker threads set to 2).
fn mount_fuse_with(stack: LayerStack, mnt: &std::path::Path, cfg: MountConfig) -> FuseMount {
    mount_fuse_cfg(stack, mnt, cfg, Features::DEFAULTS)
}

/// Our FUSE mount with the engine options of `features`.
fn mount_fuse_features(
    stack: LayerStack,
    mnt: &std::path::Path,
    fs: FsConfig,
    features: Features,
) -> FuseMount {
    mount_fuse_cfg(stack, mnt, MountConfig::for_current_user(fs), features)
}

fn mount_fuse_cfg(
    stack: LayerStack,
    mnt: &std::path::Path,
    mut cfg: MountConfig,
    features: Features,
) -> FuseMount {
    let ovl = Overlay::with_options(stack, features.engine_options())
        .unwrap_or_else(|e| panic!("Overlay::new: {e}"));
    cfg.threads = 2;
    spawn_mount(ovl, mnt, &cfg).unwrap_or_else(|e| panic!("FUSE mount: {e}"))
}

/// The stack of one lower `l` and an upper `u` with workdir `w`, `trusted.` xattrs.
fn one_lower_stack(l: &std::path::Path, u: &std::path::Path, w: &std::path::Path) -> LayerStack {
    LayerStack::builder()
        .lower(l)
        .upper(u, w)
        .xattr_namespace(XattrNamespace::Trusted)
        .build()
        .unwrap_or_else(|e| panic!("stack: {e}"))
}

fn run_property(default_cases: u32, fs: FsConfig) {
    common::run_property(default_cases, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend()),
            Box::new(fuse_backend(fs.clone())),
        )
    });
}

/// Generated sequences, FUSE with passthrough (root) against the kernel.
#[test]
fn fuse_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(60, FsConfig::default());
}

/// Generated sequences with `redirect_dir=on` on both sides: lower and merged directories
/// are renamed through the FUSE mount as through the kernel's.
#[test]
fn fuse_matches_kernel_with_redirect_dir() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::REDIRECT;
    common::run_property(60, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend_with(f)),
            Box::new(fuse_backend_with(FsConfig::default(), f)),
        )
    });
}

/// Generated sequences with `redirect_dir=on,metacopy=on` on both sides: metadata changes
/// of lower files copy up metadata only, reads keep coming from the lower data until a
/// write or truncation copies it.
#[test]
fn fuse_matches_kernel_with_metacopy() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::METACOPY;
    common::run_property(60, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend_with(f)),
            Box::new(fuse_backend_with(FsConfig::default(), f)),
        )
    });
}

/// metacopy=on: a chmod through a symlink copies up the target's metadata; an open for
/// write then copies its data, which changes its modification time (as the kernel's).
#[test]
fn fuse_metacopy_data_copy_up_on_open() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::METACOPY;
    let ops = [
        Op::Chmod {
            path: p("e"),
            mode: 0o644,
        },
        Op::Stat {
            path: p("b"),
            follow: false,
        },
        Op::Create {
            path: p("b"),
            mode: 0o666,
            excl: false,
        },
    ];
    assert_same(
        &ops,
        &mut kernel_backend_with(f),
        &mut fuse_backend_with(FsConfig::default(), f),
    );
}

/// Generated sequences with `index=on` on both sides, over lower layers with hard links
/// (see the fixture): a copy-up of one name of a hard-linked lower file keeps all its names
/// one inode (`workdir/index`), with the kernel's link counts.
#[test]
fn fuse_matches_kernel_with_index() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::INDEX;
    common::run_property(150, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend_with(f)),
            Box::new(fuse_backend_with(FsConfig::default(), f)),
        )
    });
}

/// Generated sequences with `redirect_dir=on,metacopy=on,index=on` on both sides (hard
/// links in the lowers): metadata-only copies of hard-linked files go to the index too.
#[test]
fn fuse_matches_kernel_with_index_redirect_metacopy() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::ALL;
    common::run_property(150, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend_with(f)),
            Box::new(fuse_backend_with(FsConfig::default(), f)),
        )
    });
}

/// [`fuse_matches_kernel_with_index`] with the writeback cache instead of passthrough: all
/// names of an indexed file are one FUSE inode, so one page cache.
#[test]
fn fuse_writeback_matches_kernel_with_index() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::INDEX;
    let fs = FsConfig {
        passthrough: false,
        ..FsConfig::default()
    };
    common::run_property(60, MAX_OPS, 2048, || {
        (
            Box::new(kernel_backend_with(f)),
            Box::new(fuse_backend_with(fs.clone(), f)),
        )
    });
}

/// The stat of `p`: (inode number, link count, content).
fn ino_nlink_data(p: &std::path::Path) -> (u64, u64, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.ino(), md.nlink(), data)
}

/// index=on: a lower file with three names (`m/a`, `d/a`, `d/c/a`), written through one of
/// them: all three show the new data, as one inode with three links, through the FUSE
/// mount as through the kernel's, with the same upper layer (one upper name, linked to the
/// index entry). Then one name goes: the other two stay, with two links.
#[test]
fn fuse_index_write_through_one_of_three_names() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::INDEX;
    let mut k = kernel_backend_with(f);
    let mut fu = fuse_backend_with(FsConfig::default(), f);
    let names = ["m/a", "d/a", "d/c/a"];
    for b in [k.root(), fu.root()] {
        // Looked up (and cached by the kernel) before the copy-up.
        let before: Vec<_> = names.iter().map(|n| ino_nlink_data(&b.join(n))).collect();
        assert!(before.iter().all(|x| x.0 == before[0].0 && x.1 == 3));
    }
    let write = [Op::Write {
        path: p("d/a"),
        offset: 0,
        data: b"hello\n".to_vec(),
    }];
    assert_same(&write, &mut k, &mut fu);
    for (what, b) in [("kernel", k.root()), ("fuse", fu.root())] {
        let after: Vec<_> = names.iter().map(|n| ino_nlink_data(&b.join(n))).collect();
        for (n, x) in names.iter().zip(&after) {
            assert_eq!(x.0, after[0].0, "{what}: {n} is another inode");
            assert_eq!(x.1, 3, "{what}: link count of {n}");
            assert_eq!(x.2, b"hello\n m/a\n", "{what}: data of {n}");
        }
    }
    let rest = [
        Op::Unlink { path: p("m/a") },
        Op::Stat {
            path: p("d/c/a"),
            follow: false,
        },
    ];
    assert_same(&rest, &mut k, &mut fu);
    for (what, b) in [("kernel", k.root()), ("fuse", fu.root())] {
        for n in ["d/a", "d/c/a"] {
            let x = ino_nlink_data(&b.join(n));
            assert_eq!(x.1, 2, "{what}: link count of {n} after an unlink");
        }
    }
}

/// metacopy=on,index=on: a renamed name of an indexed inode keeps the absolute redirect
/// the inode got through another name's hard link (one inode, one redirect, as the
/// kernel's), instead of writing one of its own (found by the generated sequences).
#[test]
fn fuse_index_metacopy_redirect_is_the_inodes() {
    init();
    if !require_mounts() {
        return;
    }
    let f = Features::ALL;
    let ops = [
        Op::Link {
            from: p("m/a"),
            to: p("c"),
        },
        Op::Rename {
            from: p("d/a"),
            to: p("d/d"),
            mode: RenameMode::Plain,
        },
    ];
    assert_same(
        &ops,
        &mut kernel_backend_with(f),
        &mut fuse_backend_with(FsConfig::default(), f),
    );
}

/// index=on: the first copy-ups of six names of one lower file, at the same moment through
/// the FUSE mount, make one index entry; every name then shows one inode with six links and
/// every append (a racing link-up once read the entry before its link count: `st_nlink` 1).
#[test]
fn fuse_index_concurrent_first_copy_ups() {
    init();
    if !require_mounts() {
        return;
    }
    use std::io::Write;
    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
    for round in 0..50 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let [l, u, w, mnt] = ["l", "u", "w", "mnt"].map(|d| tmp.path().join(d));
        for d in [&l, &u, &w, &mnt] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(l.join("a"), b"base\n").unwrap();
        for n in &NAMES[1..] {
            std::fs::hard_link(l.join("a"), l.join(n)).unwrap();
        }
        // A worker thread per name: the copy-ups really run at the same time.
        let ovl = Overlay::with_options(
            one_lower_stack(&l, &u, &w),
            Features::INDEX.engine_options(),
        )
        .unwrap_or_else(|e| panic!("Overlay::new: {e}"));
        let mut cfg = MountConfig::for_current_user(FsConfig::default());
        cfg.threads = NAMES.len();
        let m = spawn_mount(ovl, &mnt, &cfg).unwrap_or_else(|e| panic!("FUSE mount: {e}"));
        std::thread::scope(|s| {
            for n in NAMES {
                let p = mnt.join(n);
                s.spawn(move || {
                    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                    f.write_all(format!("{n}\n").as_bytes()).unwrap();
                });
            }
        });
        let seen: Vec<_> = NAMES.iter().map(|n| ino_nlink_data(&mnt.join(n))).collect();
        for (n, x) in NAMES.iter().zip(&seen) {
            assert_eq!(
                (x.0, x.1, x.2.len()),
                (seen[0].0, 6, 5 + 2 * NAMES.len()),
                "round {round}: {n}"
            );
        }
        m.unmount().unwrap();
    }
}

/// Mount the layers a backend leaves (in `tmp`, see [`MountedBackend::unmount`]) with the
/// kernel or with FUSE, with the options of `features`.
fn remount(tmp: tempfile::TempDir, kernel: bool, features: Features) -> Box<dyn common::Backend> {
    let s = FixtureStack::at(tmp.path());
    let mnt = tmp.path().join("mnt");
    if kernel {
        let g = common::kernel::KernelOverlay::mount_with(&s, &mnt, features)
            .unwrap_or_else(|e| panic!("{e}"));
        Box::new(MountedBackend::new("kernel", mnt, s.upper.clone(), g, tmp))
    } else {
        let g = mount_fuse_features(s.layer_stack(), &mnt, FsConfig::default(), features);
        Box::new(MountedBackend::new("fuse", mnt, s.upper.clone(), g, tmp))
    }
}

/// Uppers interchange: the first half of a sequence runs on a kernel mount and on a FUSE
/// mount (each on its own fixture); then the kernel's layers are mounted with FUSE and the
/// FUSE mount's with the kernel, and the second half runs there. Every outcome, the merged
/// views and the upper layers must agree throughout: what one backend wrote, the other reads
/// and goes on changing as the writer would.
fn uppers_interchange(features: Features, default_cases: u32) {
    init();
    if !require_mounts() {
        return;
    }
    common::run_property_fn(default_cases, MAX_OPS, 1024, |ops| {
        let (first, second) = ops.split_at(ops.len() / 2);
        let mut k = kernel_backend_with(features);
        let mut f = fuse_backend_with(FsConfig::default(), features);
        common::run_case(first, &mut k, &mut f)
            .map_err(|d| format!("{}, before the swap: {d}", features.name()))?;
        let (tk, tf) = (k.unmount(), f.unmount());
        let mut f2 = remount(tk, false, features);
        let mut k2 = remount(tf, true, features);
        // Inode identity is checked in the first half only: each upper now has its own
        // history of freed inode numbers, which a new object may get on one side only.
        common::run_case_with(second, k2.as_mut(), f2.as_mut(), false).map_err(|d| {
            format!(
                "{}, after the swap (kernel on FUSE's upper, FUSE on the kernel's): {d}",
                features.name()
            )
        })
    });
}

/// Mount the layers a backend leaves (in `tmp`) rotated: its upper becomes the top lower
/// layer, under a fresh upper, with the kernel or with FUSE.
fn remount_rotated(
    tmp: tempfile::TempDir,
    kernel: bool,
    features: Features,
) -> Box<dyn common::Backend> {
    let s = FixtureStack::at(tmp.path());
    let (u2, w2) = (tmp.path().join("upper2"), tmp.path().join("work2"));
    for d in [&u2, &w2] {
        std::fs::create_dir(d).unwrap();
    }
    let mnt = tmp.path().join("mnt");
    if kernel {
        let data = format!(
            "lowerdir={}:{}:{},upperdir={},workdir={},{}",
            s.upper.display(),
            s.lower1.display(),
            s.lower0.display(),
            u2.display(),
            w2.display(),
            features.kernel_options()
        );
        let g = common::kernel::KernelOverlay::mount_data(&data, &mnt)
            .unwrap_or_else(|e| panic!("{e}"));
        Box::new(MountedBackend::new("kernel", mnt, u2, g, tmp))
    } else {
        let stack = LayerStack::builder()
            .lower(&s.lower0)
            .lower(&s.lower1)
            .lower(&s.upper)
            .upper(&u2, &w2)
            .xattr_namespace(XattrNamespace::Trusted)
            .build()
            .unwrap_or_else(|e| panic!("stack: {e}"));
        let g = mount_fuse_features(stack, &mnt, FsConfig::default(), features);
        Box::new(MountedBackend::new("fuse", mnt, u2, g, tmp))
    }
}

/// Layer rotation: the first half of a sequence runs on a kernel mount and on a FUSE mount;
/// then each upper becomes the top lower layer under a fresh upper (the kernel's under FUSE,
/// FUSE's under the kernel), and the second half runs there: whiteouts, opaque directories,
/// redirects and metadata-only copies in a lower layer are read alike.
fn layers_rotate(features: Features, default_cases: u32) {
    init();
    if !require_mounts() {
        return;
    }
    common::run_property_fn(default_cases, MAX_OPS, 1024, |ops| {
        let (first, second) = ops.split_at(ops.len() / 2);
        // Without the index no hard links go into the rotated layer: a FUSE request on a
        // lower hard link names an inode, not which of its names the caller used, so a
        // copy-up through FUSE may pick another name than the kernel overlay (which breaks
        // the link either way). With it, FUSE looks such names up on every use.
        let first: Vec<Op> = first
            .iter()
            .filter(|o| features.index || !matches!(o, Op::Link { .. }))
            .cloned()
            .collect();
        let mut k = kernel_backend_with(features);
        let mut f = fuse_backend_with(FsConfig::default(), features);
        common::run_case(&first, &mut k, &mut f)
            .map_err(|d| format!("{}, before the rotation: {d}", features.name()))?;
        let (tk, tf) = (k.unmount(), f.unmount());
        let mut f2 = remount_rotated(tk, false, features);
        let mut k2 = remount_rotated(tf, true, features);
        common::run_case_with(second, k2.as_mut(), f2.as_mut(), false).map_err(|d| {
            format!(
                "{}, after the rotation (uppers now lower layers; kernel over FUSE's, FUSE \
                 over the kernel's): {d}",
                features.name()
            )
        })
    });
}

/// [`layers_rotate`] with the kernel's defaults.
#[test]
fn layers_rotate_with_defaults() {
    layers_rotate(Features::DEFAULTS, 20);
}

/// [`layers_rotate`] with `redirect_dir=on`: redirects in a lower layer are followed.
#[test]
fn layers_rotate_with_redirect_dir() {
    layers_rotate(Features::REDIRECT, 30);
}

/// [`layers_rotate`] with `redirect_dir=on,metacopy=on`: metadata-only copies in a lower
/// layer find their data below.
#[test]
fn layers_rotate_with_metacopy() {
    layers_rotate(Features::METACOPY, 30);
}

/// [`layers_rotate`] with `index=on` (hard links in the fixture's lowers): an upper with
/// names linked to index entries (and their `overlay.nlink`) read as a lower layer.
#[test]
fn layers_rotate_with_index() {
    layers_rotate(Features::INDEX, 40);
}

/// [`layers_rotate`] with `redirect_dir=on,metacopy=on,index=on`: hard-linked metadata-only
/// copies in a lower layer are indexed by their top lower object.
#[test]
fn layers_rotate_with_index_redirect_metacopy() {
    layers_rotate(Features::ALL, 40);
}

/// [`uppers_interchange`] with the kernel's defaults.
#[test]
fn uppers_interchange_with_defaults() {
    uppers_interchange(Features::DEFAULTS, 25);
}

/// [`uppers_interchange`] with `redirect_dir=on`: renamed directories written by either
/// backend are followed by the other.
#[test]
fn uppers_interchange_with_redirect_dir() {
    uppers_interchange(Features::REDIRECT, 40);
}

/// [`uppers_interchange`] with `redirect_dir=on,metacopy=on`: metadata-only copies (and
/// their redirects) written by either backend are read and completed by the other.
#[test]
fn uppers_interchange_with_metacopy() {
    uppers_interchange(Features::METACOPY, 40);
}

/// [`uppers_interchange`] with `index=on` (hard links in the lowers): index entries,
/// `overlay.nlink` and the roots' `overlay.origin`/`overlay.upper` written by either
/// backend are taken up by the other.
#[test]
fn uppers_interchange_with_index() {
    uppers_interchange(Features::INDEX, 60);
}

/// [`uppers_interchange`] with `redirect_dir=on,metacopy=on,index=on`.
#[test]
fn uppers_interchange_with_index_redirect_metacopy() {
    uppers_interchange(Features::ALL, 60);
}

/// Generated sequences, FUSE with the writeback cache instead of passthrough.
#[test]
fn fuse_writeback_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    run_property(
        30,
        FsConfig {
            passthrough: false,
            ..FsConfig::default()
        },
    );
}

/// The set-up of the io_uring tests: mounts possible and the kernel's io_uring switch on
/// (for as long as the guard lives). `None`: skip (which fails under CI=true).
fn mounts_with_fuse_uring() -> Option<common::fuse_uring::FuseUringSwitch> {
    init();
    if !require_mounts() {
        return None;
    }
    common::require_fuse_uring()
}

/// Generated sequences with requests served through FUSE over io_uring.
#[test]
fn fuse_io_uring_matches_kernel() {
    let Some(_uring) = mounts_with_fuse_uring() else {
        return;
    };
    // The transport is really in use (the property below cannot tell).
    let (_tmp, s, mnt) = fixture_with_mountpoint();
    let m = mount_fuse(s.layer_stack(), &mnt, FsConfig::default());
    std::fs::write(mnt.join("new"), b"through the ring").unwrap();
    assert_eq!(std::fs::read(mnt.join("new")).unwrap(), b"through the ring");
    assert!(std::fs::read_dir(&mnt).unwrap().count() > 0);
    let stats = m.inspector().stats();
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let last: usize = cpus
        .trim()
        .rsplit(['-', ','])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        stats.io_uring_queues,
        last + 1,
        "one queue per possible CPU"
    );
    assert!(
        stats.io_uring_requests > 0,
        "no request came through a ring"
    );
    m.unmount().unwrap();
    run_property(40, FsConfig::default());
}

/// When the io_uring queues cannot be served after the kernel was told io_uring, the mount
/// falls back to `/dev/fuse` reads instead of holding every request forever.
#[test]
fn fuse_io_uring_failure_falls_back_to_dev_fuse() {
    let Some(_uring) = mounts_with_fuse_uring() else {
        return;
    };
    let (_tmp, s, mnt) = fixture_with_mountpoint();
    let mut cfg = MountConfig::for_current_user(FsConfig::default());
    cfg.io_uring_fail_for_test = true;
    let m = mount_fuse_with(s.layer_stack(), &mnt, cfg);
    // Without the fall-back this blocks forever: run it where a hang becomes a failure.
    let probe = mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        std::fs::write(probe.join("new"), b"through /dev/fuse").unwrap();
        let _ = tx.send(std::fs::read(probe.join("new")).unwrap());
    });
    let Ok(read) = rx.recv_timeout(std::time::Duration::from_secs(20)) else {
        // Unmounting would wait on the stuck request too: detach the mount and leave the
        // session to the end of the process, which closes /dev/fuse and so aborts it.
        std::mem::forget(m);
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        panic!("the mount hangs: no fall-back from io_uring to /dev/fuse");
    };
    assert_eq!(read, b"through /dev/fuse");
    let stats = m.inspector().stats();
    assert_eq!(stats.io_uring_requests, 0, "no ring was serving");
    m.unmount().unwrap();
}

fn p(s: &str) -> String {
    s.to_string()
}

/// Whiteouts, an opaque directory replacing a whiteout, renames with flags, links, through
/// the FUSE mount, with caching on (a stale kernel cache would show here).
#[test]
fn fuse_regression_sequence() {
    init();
    if !require_mounts() {
        return;
    }
    let ops = [
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
        Op::Unlink { path: p("m/a") },
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
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
        Op::Rename {
            from: p("a"),
            to: p("b"),
            mode: RenameMode::Plain,
        },
        Op::Rename {
            from: p("d"),
            to: p("x"),
            mode: RenameMode::Plain,
        },
        Op::Link {
            from: p("b"),
            to: p("c"),
        },
        Op::Stat {
            path: p("c"),
            follow: false,
        },
        Op::Rename {
            from: p("e"),
            to: p("c"),
            mode: RenameMode::Exchange,
        },
        Op::Stat {
            path: p("e"),
            follow: false,
        },
        Op::Rename {
            from: p("o/b"),
            to: p("e"),
            mode: RenameMode::NoReplace,
        },
    ];
    assert_same(
        &ops,
        &mut kernel_backend(),
        &mut fuse_backend(FsConfig::default()),
    );
}

/// Hard links share one FUSE inode: replacing one name by a rename must leave the other name
/// usable (found by the generated sequences: `m/a` gave ENOENT/EIO afterwards).
#[test]
fn fuse_rename_over_a_hard_link_keeps_the_other_name() {
    init();
    if !require_mounts() {
        return;
    }
    let ops = [
        Op::Link {
            from: p("m/a"),
            to: p("o/a"),
        },
        Op::Rename {
            from: p("a"),
            to: p("o/a"),
            mode: RenameMode::Plain,
        },
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
        Op::Append {
            path: p("m/a"),
            data: b"more".to_vec(),
        },
        Op::Unlink { path: p("o/a") },
        Op::Stat {
            path: p("m/a"),
            follow: false,
        },
    ];
    for fs in [
        FsConfig::default(),
        FsConfig {
            passthrough: false,
            ..FsConfig::default()
        },
    ] {
        assert_same(&ops, &mut kernel_backend(), &mut fuse_backend(fs));
    }
}

/// Every object of both lower layers of a backend's fixture (next to its mount point), with
/// its atime set to 2020 (older than its mtime, so relatime would update it).
fn age_lower_atimes<G>(b: &MountedBackend<G>) -> Vec<std::path::PathBuf> {
    let base = b.root().parent().unwrap();
    let mut all = Vec::new();
    for l in ["lower0", "lower1"] {
        let mut stack = vec![base.join(l)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
                all.push(e.path());
            }
            all.push(d);
        }
    }
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_577_836_800,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
    };
    for p in &all {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &ts,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    all
}

/// Read everything through the mount: list every directory, read every file and symlink,
/// then append to every regular file (copy-up). Lower atimes must not move, as with the
/// kernel overlay (which opens lower objects with O_NOATIME and never touches their atime).
fn read_everything_then_copy_up(root: &std::path::Path) {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_symlink() {
                let _ = std::fs::read_link(e.path()).unwrap();
            } else if t.is_file() {
                let _ = std::fs::read(e.path());
                files.push(e.path());
            }
        }
    }
    for f in files {
        use std::io::Write;
        if let Ok(mut w) = std::fs::OpenOptions::new().append(true).open(&f) {
            let _ = w.write_all(b"+");
        }
    }
}

#[test]
fn lower_atimes_never_change_through_the_mount() {
    init();
    if !require_mounts() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let check = |name: &str, root: &std::path::Path, lowers: &[std::path::PathBuf]| {
        read_everything_then_copy_up(root);
        for p in lowers {
            let md = std::fs::symlink_metadata(p).unwrap();
            assert_eq!(
                md.atime(),
                1_577_836_800,
                "{name}: lower {} got a new atime",
                p.display()
            );
        }
    };
    let k = kernel_backend();
    let lowers = age_lower_atimes(&k);
    check("kernel", k.root(), &lowers);
    for fs in [
        FsConfig::default(),
        FsConfig {
            passthrough: false,
            ..FsConfig::default()
        },
    ] {
        let f = fuse_backend(fs);
        let lowers = age_lower_atimes(&f);
        check("fuse", f.root(), &lowers);
    }
}

/// A default ACL (user::rwx user:65534:rwx group::r-x mask::rwx other::---) as the xattr.
fn default_acl_xattr() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 7, 65534),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Create objects in the merged directory `m`, whose top lower has a default ACL, directly
/// and over whiteouts, under umask 022; report each one's mode and ACL xattrs.
fn create_under_default_acl(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let d = root.join("m");
    let xattr = |p: &std::path::Path, n: &str| {
        let mut buf = vec![0u8; 256];
        rustix::fs::lgetxattr(p, n, &mut buf)
            .map(|len| buf[..len].to_vec())
            .ok()
    };
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    // Over whiteouts: remove the lower names first.
    // `m/a` (a file) and `m/b` (a symlink) are lower0's: removing them leaves whiteouts.
    std::fs::remove_file(d.join("a")).unwrap();
    std::fs::remove_file(d.join("b")).unwrap();
    // `m/m` is lower1's empty directory: an opaque one replaces its whiteout.
    std::fs::remove_dir(d.join("m")).unwrap();
    std::fs::create_dir(d.join("m")).unwrap();
    for name in ["new", "a"] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(d.join(name))
            .unwrap();
    }
    std::fs::create_dir(d.join("new-dir")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        d.join("b"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    rustix::process::umask(old);
    let mut out = Vec::new();
    for n in ["new", "new-dir", "a", "b", "m"] {
        let p = d.join(n);
        let md = std::fs::symlink_metadata(&p).unwrap();
        out.push(format!(
            "{n} {:o} access={:?} default={:?}",
            md.mode() & 0o7777,
            xattr(&p, "system.posix_acl_access"),
            xattr(&p, "system.posix_acl_default")
        ));
    }
    out
}

/// Objects created under a default ACL get the ACL and the mode the kernel overlay gives
/// them: the umask does not apply, the mode masks the ACL, directories inherit the default
/// ACL; also when they replace a whiteout (made in the workdir, where nothing is inherited).
#[test]
fn default_acl_inheritance_matches_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    let acl = default_acl_xattr();
    let prepare = |root: &std::path::Path| -> bool {
        let m = root.parent().unwrap().join("lower1/m");
        match rustix::fs::setxattr(
            &m,
            "system.posix_acl_default",
            &acl,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => true,
            Err(rustix::io::Errno::OPNOTSUPP) => false,
            Err(e) => panic!("set default ACL on {}: {e}", m.display()),
        }
    };
    // The ACL must be on the lower before mounting (lower layers do not change under a
    // mount): build both fixtures, unmounted, by creating the backends after the xattr.
    let k = kernel_backend();
    let f = fuse_backend(FsConfig::default());
    // Both lowers were just created and are not read yet; setting the xattr now is seen by
    // both (nothing cached the directory's xattrs).
    if !prepare(k.root()) || !prepare(f.root()) {
        eprintln!("skipped: no POSIX ACLs on the temp dir's filesystem");
        assert!(
            std::env::var("CI").is_err(),
            "CI needs ACLs on the temp dir"
        );
        return;
    }
    assert_eq!(
        create_under_default_acl(k.root()),
        create_under_default_acl(f.root())
    );
}

/// `lsattr`/`chattr` through the mount (FS_IOC_GETFLAGS/SETFLAGS, which FUSE forwards as
/// ioctls), and the flags copy-up carries (`A`, `S`), reported for comparison.
fn inode_flags_through(root: &std::path::Path) -> Vec<String> {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let lower0 = root.parent().unwrap().join("lower0");
    let upper = root.parent().unwrap().join("upper");
    let flags_of = |p: &std::path::Path| -> String {
        match std::fs::File::open(p) {
            Ok(f) => match ioctl_getflags(&f) {
                Ok(fl) => format!("{:#x}", fl.bits() & !0x80000), // not EXTENTS_FL
                Err(e) => format!("getflags: {e}"),
            },
            Err(e) => format!("open: {e}"),
        }
    };
    let set = |p: &std::path::Path, add: IFlags, clear: IFlags| -> String {
        let f = std::fs::File::open(p).unwrap();
        match ioctl_getflags(&f).and_then(|fl| ioctl_setflags(&f, (fl | add).difference(clear))) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    };
    // A lower file with `A` (no atime updates): shown through the mount, kept by copy-up.
    let la = std::fs::File::open(lower0.join("a")).unwrap();
    let fl = ioctl_getflags(&la).unwrap();
    if ioctl_setflags(&la, fl | IFlags::NOATIME).is_err() {
        return vec!["no inode flags on this filesystem".into()];
    }
    let mut out = vec![format!(
        "a through the mount: {}",
        flags_of(&root.join("a"))
    )];
    std::fs::set_permissions(
        root.join("a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    out.push(format!(
        "a in upper after chmod: {}",
        flags_of(&upper.join("a"))
    ));
    // chattr +d on a lower file copies it up and sets the flag there.
    out.push(format!(
        "+d b: {}",
        set(&root.join("b"), IFlags::NODUMP, IFlags::empty())
    ));
    out.push(format!("b in upper: {}", flags_of(&upper.join("b"))));
    // chattr +i: the file cannot be written or removed until -i.
    out.push(format!(
        "+i d/a: {}",
        set(&root.join("d/a"), IFlags::IMMUTABLE, IFlags::empty())
    ));
    let w = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("d/a"));
    out.push(format!(
        "append d/a: {:?}",
        w.map(|_| ()).map_err(|e| e.kind())
    ));
    let rm = std::fs::remove_file(root.join("d/a"));
    out.push(format!("rm d/a: {:?}", rm.map_err(|e| e.kind())));
    out.push(format!(
        "-i d/a: {}",
        set(&root.join("d/a"), IFlags::empty(), IFlags::IMMUTABLE)
    ));
    out.push(format!(
        "rm d/a: {:?}",
        std::fs::remove_file(root.join("d/a")).map_err(|e| e.kind())
    ));
    out
}

#[test]
fn inode_flags_match_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    let k = kernel_backend();
    let f = fuse_backend(FsConfig::default());
    let want = inode_flags_through(k.root());
    assert!(want.len() > 1, "the kernel run did not get far: {want:?}");
    assert_eq!(want, inode_flags_through(f.root()));
}

/// A kernel overlay mounted with option string `data` (unmounted on drop).
fn kernel_mount(data: &str, target: &std::path::Path) -> common::kernel::KernelOverlay {
    common::kernel::KernelOverlay::mount_data(data, target).unwrap_or_else(|e| panic!("{e}"))
}

/// An upper written by a kernel mount with metacopy=on holds a metadata-only copy (a chown
/// copies up no data). The kernel with metacopy=off refuses it (EPERM); so must we, rather
/// than show the file's empty data.
#[test]
fn metacopy_upper_is_refused_as_by_the_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = t.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (l, u, w, m) = (d("l"), d("u"), d("w"), d("m"));
    std::fs::write(l.join("f"), b"lower data").unwrap();
    std::fs::write(l.join("g"), b"g").unwrap();
    let opts = |extra: &str, w: &std::path::Path| {
        format!(
            "lowerdir={},upperdir={},workdir={},{extra}",
            l.display(),
            u.display(),
            w.display()
        )
    };
    {
        let _k = kernel_mount(&opts("metacopy=on,redirect_dir=on", &w), &m);
        std::os::unix::fs::chown(m.join("f"), Some(65534), None).unwrap();
    }
    let up = std::fs::metadata(u.join("f")).unwrap();
    assert_eq!((up.size(), up.uid()), (10, 65534));
    let outcome = |root: &std::path::Path| {
        (
            std::fs::metadata(root.join("f")).map_err(|e| e.raw_os_error()),
            std::fs::read(root.join("g")).map_err(|e| e.raw_os_error()),
        )
    };
    let want = {
        let _k = kernel_mount(&opts("metacopy=off", &d("w2")), &m);
        let o = outcome(&m);
        (o.0.map(|md| md.size()), o.1)
    };
    assert_eq!(want, (Err(Some(libc::EPERM)), Ok(b"g".to_vec())));
    let fm = mount_fuse(one_lower_stack(&l, &u, &d("w3")), &m, FsConfig::default());
    let got = {
        let o = outcome(&m);
        (o.0.map(|md| md.size()), o.1)
    };
    drop(fm);
    assert_eq!(got, want);
}

/// A stack whose upper holds directories a kernel mount with redirect_dir=on renamed: `d`
/// to `d2` (relative redirect) and `top/inner` to `x/moved` (absolute redirect).
fn redirected_stack(base: &std::path::Path) -> [std::path::PathBuf; 3] {
    let d = |n: &str| {
        let p = base.join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (l, u, m) = (d("l"), d("u"), d("m"));
    for (p, c) in [
        ("d/a", "a"),
        ("d/sub/s", "s"),
        ("top/inner/i", "i"),
        ("b", "b"),
    ] {
        std::fs::create_dir_all(l.join(p).parent().unwrap()).unwrap();
        std::fs::write(l.join(p), c).unwrap();
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=on",
        l.display(),
        u.display(),
        d("w").display()
    );
    {
        let _k = kernel_mount(&data, &m);
        std::fs::write(m.join("d/new"), b"n").unwrap();
        std::fs::rename(m.join("d"), m.join("d2")).unwrap();
        std::fs::create_dir(m.join("x")).unwrap();
        std::fs::rename(m.join("top/inner"), m.join("x/moved")).unwrap();
    }
    [l, u, m]
}

/// Read and change the tree through a mount; report what was seen, and the upper layer.
fn use_redirected(root: &std::path::Path, upper: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &std::path::Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let child = p.join(&n);
            let r = format!("{rel}/{}", n.to_string_lossy());
            let md = std::fs::symlink_metadata(&child).unwrap();
            out.push(format!(
                "{r} dir={} size={} nlink={}",
                md.is_dir(),
                md.len(),
                md.nlink()
            ));
            if md.is_dir() {
                walk(&child, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    for f in ["d2/a", "d2/sub/s", "x/moved/i"] {
        out.push(format!("{f}: {:?}", std::fs::read_to_string(root.join(f))));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("d2/a"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .unwrap();
    std::fs::remove_file(root.join("d2/sub/s")).unwrap();
    std::fs::remove_dir(root.join("d2/sub")).unwrap();
    std::fs::write(root.join("x/moved/j"), b"j").unwrap();
    out.push(format!(
        "rmdir x/moved: {:?}",
        std::fs::remove_dir(root.join("x/moved")).map_err(|e| e.kind())
    ));
    out.push("-- after".into());
    walk(root, "", &mut out);
    out.push("-- upper".into());
    walk(upper, "", &mut out);
    out
}

/// Directories renamed by a kernel mount with redirect_dir=on (the default here): we follow
/// their redirects as the kernel does by default, so the merged view, the changes made in
/// them and the resulting upper layer are the kernel's.
#[test]
fn redirected_directories_match_kernel() {
    init();
    if !require_mounts() {
        return;
    }
    let tk = tempfile::tempdir().unwrap();
    let [kl, ku, km] = redirected_stack(tk.path());
    let want = {
        let data = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=follow",
            kl.display(),
            ku.display(),
            tk.path().join("w2").display()
        );
        std::fs::create_dir(tk.path().join("w2")).unwrap();
        let _k = kernel_mount(&data, &km);
        use_redirected(&km, &ku)
    };
    let tf = tempfile::tempdir().unwrap();
    let [fl, fu, fm] = redirected_stack(tf.path());
    std::fs::create_dir(tf.path().join("w3")).unwrap();
    let mount = mount_fuse(
        one_lower_stack(&fl, &fu, &tf.path().join("w3")),
        &fm,
        FsConfig::default(),
    );
    let got = use_redirected(&fm, &fu);
    drop(mount);
    assert_eq!(got, want);
}
