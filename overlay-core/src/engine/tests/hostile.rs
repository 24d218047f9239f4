//! Tests for layers written by someone else and mounts serving hostile users (issue 10):
//! the engine must neither crash, hang nor show what the layers' owner could not see.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use super::*;

/// A kernel overlay mounted by a test, unmounted on drop (also when the test panics).
struct KernelMountGuard {
    target: tempfile::TempDir,
    _work: tempfile::TempDir,
}

impl KernelMountGuard {
    /// Mount `lowers` (bottom first, as in [`Fixture`]) under `upper` with a fresh workdir
    /// next to the upper (same filesystem) and the extra options `opts`.
    fn mount(lowers: &[PathBuf], upper: &Path, opts: &str) -> KernelMountGuard {
        let work = tempfile::tempdir_in(upper.parent().unwrap()).unwrap();
        let target = tempfile::tempdir().unwrap();
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.to_str().unwrap().to_string())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={},{opts}",
            lowerdir.join(":"),
            upper.display(),
            work.path().display()
        );
        let data = CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            target.path(),
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap_or_else(|e| panic!("kernel overlay mount ({data:?}): {e}"));
        KernelMountGuard {
            target,
            _work: work,
        }
    }

    fn path(&self) -> &Path {
        self.target.path()
    }
}

impl Drop for KernelMountGuard {
    fn drop(&mut self) {
        let t = self.target.path();
        if rustix::mount::unmount(t, rustix::mount::UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(t, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// 0 when `lstat` of `p` succeeds, else its errno.
fn lstat_errno(p: &Path) -> i32 {
    match std::fs::symlink_metadata(p) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap(),
    }
}

/// 0 when the engine's lookup of `name` in the root succeeds, else its errno.
fn lookup_errno(ovl: &Overlay, dir: &NodeRef, name: &OsStr) -> i32 {
    match ovl.lookup(dir, name) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error(),
    }
}

fn sorted_os_names(ovl: &Overlay, dir: &NodeRef) -> Vec<OsString> {
    let mut v: Vec<OsString> = ovl
        .readdir(dir)
        .unwrap_or_else(|e| panic!("readdir: {e}"))
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

/// The names in directory `p` of a kernel overlay, read with `getdents64` and read on past
/// failed calls: the kernel marks an entry it cannot look up (to compute its d_ino) stale, and
/// the call that meets it first fails with that lookup's errno; the next call goes on
/// without it (`std::fs::read_dir` stops at the first error).
fn sorted_dir_names(p: &Path) -> Vec<OsString> {
    use rustix::fs::{Mode, OFlags, RawDir};
    let fd = rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut buf = Vec::with_capacity(4096);
    let mut dir = RawDir::new(&fd, buf.spare_capacity_mut());
    let mut v = Vec::new();
    let mut failures = 0;
    while let Some(ent) = dir.next() {
        match ent {
            Ok(e) => {
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    v.push(OsStr::from_bytes(n).to_os_string());
                }
            }
            Err(e) => {
                failures += 1;
                assert!(failures < 100, "getdents64 {}: {e}", p.display());
            }
        }
    }
    v.sort();
    v
}

/// Redirect values a stranger may leave on upper directories, each with the kernel's answer
/// on Linux 6.18 with redirect_dir=on (lookup of the directory; a directory whose lookup fails
/// is left out of its parent's listing when the kernel computes d_ino, as in an impure parent).
const FORGED_REDIRECTS: &[(&str, &[u8])] = &[
    ("dotdot2", b"../../x"),  // EINVAL: a '/' in a relative redirect
    ("relslash", b"a/b"),     // EINVAL
    ("empty", b""),           // EINVAL: an empty value
    ("slash", b"/"),          // EINVAL: an empty component
    ("dblslash", b"/d//x"),   // EINVAL
    ("trailing", b"/d/"),     // EINVAL
    ("dot", b"."),            // EACCES: the lower lookup of "." is refused
    ("dotdot", b".."),        // EACCES
    ("absdotdot", b"/../d"),  // EACCES
    ("nonutf8", b"\xff\xfe"), // followed, nothing there: a plain upper directory
    ("long", &[b'/'; 1]),     // replaced below by a 300-byte absolute value
    ("nul", b"e\0junk"),      // a C string: followed as "e"
    ("good", b"d"),           // followed
];

fn forged_value(name: &str, v: &[u8]) -> Vec<u8> {
    if name == "long" {
        let mut l = b"/".to_vec();
        l.extend(std::iter::repeat_n(b'a', 300));
        l
    } else {
        v.to_vec()
    }
}

/// One bad `overlay.redirect` fails only its own directory: the parent's listing works and
/// leaves it out, and its lookup fails with the kernel's errno. Checked against a kernel
/// mount (redirect_dir=on) over the same layers.
#[test]
fn a_bad_redirect_fails_only_its_own_entry() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("d/f"), "lower");
    write(&f.lowers[0].join("e/g"), "lower");
    std::fs::create_dir(f.lowers[0].join("sub")).unwrap();
    write(&f.upper.join("plain/p"), "upper");
    // The same directories in a merged parent (the root) and in a pure upper one (`pu`).
    for parent in ["", "pu"] {
        for (name, v) in FORGED_REDIRECTS {
            let p = f.upper.join(parent).join(name);
            std::fs::create_dir_all(&p).unwrap();
            set_xattr(&p, "trusted.overlay.redirect", &forged_value(name, v));
        }
    }
    // As a kernel copy-up or rename leaves it: the kernel then computes d_ino in readdir.
    set_xattr(&f.upper, "trusted.overlay.impure", b"y");
    let engine = {
        let ovl = f.overlay();
        let root = ovl.root();
        let pu = walk(&ovl, "pu").unwrap();
        let errnos: Vec<(String, i32, i32)> = FORGED_REDIRECTS
            .iter()
            .map(|(n, _)| {
                (
                    n.to_string(),
                    lookup_errno(&ovl, &root, OsStr::new(n)),
                    lookup_errno(&ovl, &pu, OsStr::new(n)),
                )
            })
            .collect();
        let listing = (sorted_os_names(&ovl, &root), sorted_os_names(&ovl, &pu));
        let good = [
            names(&ovl, &walk(&ovl, "good").unwrap()),
            names(&ovl, &walk(&ovl, "nul").unwrap()),
        ];
        (errnos, listing, good)
    };
    let kernel = {
        let k = KernelMountGuard::mount(&f.lowers, &f.upper, "redirect_dir=on,index=off");
        let m = k.path();
        let errnos = kernel_lstat_errnos(m, FORGED_REDIRECTS.iter().map(|(n, _)| *n));
        let listing = (sorted_dir_names(m), sorted_dir_names(&m.join("pu")));
        let good = ["good", "nul"].map(|d| {
            sorted_dir_names(&m.join(d))
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        (errnos, listing, good)
    };
    assert_eq!(engine.0, kernel.0, "lookup errnos (name, in root, in pu)");
    assert_eq!(engine.1, kernel.1, "listings of the root and of pu");
    assert_eq!(engine.2, kernel.2, "the followed redirects");
    assert_eq!(engine.2, [["f"], ["g"]]);
}

/// With `user.overlay.*` (the kernel's userxattr) redirects are never followed: a user who
/// owns an upper directory can write `user.overlay.redirect` on it, and following it would
/// show a lower directory the user may not read. As the kernel (redirect_dir=nofollow): the
/// lookup fails with EPERM (EINVAL for a malformed value) where the parent has lower
/// directories, and the xattr is ignored where it has none. Checked against a kernel mount
/// with userxattr.
#[test]
fn userxattr_redirects_are_not_followed() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("private/secret"), "secret");
    std::fs::set_permissions(
        f.lowers[0].join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    write(&f.lowers[0].join("d/f"), "lower");
    let forged: &[(&str, &[u8])] = &[
        ("abs", b"/private"),
        ("rel", b"private"),
        ("missing", b"/nothing"),
        ("bad", b"../private"),
    ];
    for parent in ["", "pu"] {
        for (name, v) in forged {
            let p = f.upper.join(parent).join(name);
            std::fs::create_dir_all(&p).unwrap();
            set_xattr(&p, "user.overlay.redirect", v);
        }
    }
    let stack = LayerStack::builder()
        .lowers(f.lowers.iter())
        .upper(&f.upper, &f.work)
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let engine = {
        let ovl = Overlay::new(stack).unwrap();
        let root = ovl.root();
        let pu = walk(&ovl, "pu").unwrap();
        let errnos: Vec<(String, i32, i32)> = forged
            .iter()
            .map(|(n, _)| {
                (
                    n.to_string(),
                    lookup_errno(&ovl, &root, OsStr::new(n)),
                    lookup_errno(&ovl, &pu, OsStr::new(n)),
                )
            })
            .collect();
        // Nothing of the private directory shows through a redirected directory.
        for (n, _) in forged {
            if let Ok(d) = walk(&ovl, &format!("pu/{n}")) {
                assert!(names(&ovl, &d).is_empty(), "pu/{n} shows lower entries");
            }
        }
        let listing = sorted_os_names(&ovl, &pu);
        (errnos, listing)
    };
    assert_eq!(
        engine.0,
        [
            ("abs".to_string(), libc::EPERM, 0),
            ("rel".to_string(), libc::EPERM, 0),
            ("missing".to_string(), libc::EPERM, 0),
            ("bad".to_string(), libc::EINVAL, 0),
        ]
    );
    let kernel = {
        let k = KernelMountGuard::mount(&f.lowers, &f.upper, "userxattr");
        let m = k.path();
        let errnos = kernel_lstat_errnos(m, forged.iter().map(|(n, _)| *n));
        (errnos, sorted_dir_names(&m.join("pu")))
    };
    assert_eq!(engine.0, kernel.0, "lookup errnos (name, in root, in pu)");
    assert_eq!(engine.1, kernel.1, "listing of pu");
}

/// Stack size for the depth tests' thread: smaller than a FUSE worker thread's (fuser's
/// threads get Rust's default 2 MiB), so recursion over tree depth overflows it.
const SMALL_STACK: usize = 256 * 1024;

/// Run `f` on a thread with [`SMALL_STACK`]; a panic in it fails the caller (a stack
/// overflow aborts the whole test binary, which fails the run too).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Create a chain of `depth` directories named `d` as `top` (created), `top/d`, `top/d/d`, ...
/// with a file `leaf` holding `data` in the deepest one. Each level is made relative to an fd
/// of the previous one: the whole path is far longer than PATH_MAX.
fn deep_chain(top: &Path, depth: usize, data: &str) {
    use rustix::fs::{Mode, OFlags};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    std::fs::create_dir(top).unwrap();
    let mut fd = rustix::fs::open(top, dir_flags, Mode::empty()).unwrap();
    for _ in 1..depth {
        rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, "d", dir_flags, Mode::empty()).unwrap();
    }
    let leaf = rustix::fs::openat(
        &fd,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&leaf, data.as_bytes()).unwrap();
}

/// Removes a deep tree on drop without recursion and with two fds at a time (going back up
/// through `..`; the tree is a test's own): `std::fs::remove_dir_all` holds an fd per level
/// and may recurse.
struct DeepTreeGuard(PathBuf);

impl Drop for DeepTreeGuard {
    fn drop(&mut self) {
        use rustix::fs::{AtFlags, Mode, OFlags};
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(mut fd) = rustix::fs::open(&self.0, dir_flags, Mode::empty()) else {
            return;
        };
        // Names of the directories entered below `self.0`.
        let mut names: Vec<OsString> = Vec::new();
        loop {
            let mut sub = None;
            for name in super::super::layers::list_dir_names(&fd).unwrap() {
                match rustix::fs::unlinkat(&fd, &name, AtFlags::empty()) {
                    Err(rustix::io::Errno::ISDIR) => {
                        sub = Some(name);
                        break;
                    }
                    r => r.unwrap(),
                }
            }
            if let Some(name) = sub {
                fd = rustix::fs::openat(&fd, &name, dir_flags, Mode::empty()).unwrap();
                names.push(name);
                continue;
            }
            let Some(name) = names.pop() else { break };
            fd = rustix::fs::openat(&fd, "..", dir_flags, Mode::empty()).unwrap();
            rustix::fs::unlinkat(&fd, &name, AtFlags::REMOVEDIR).unwrap();
        }
        drop(fd);
        std::fs::remove_dir(&self.0).unwrap();
    }
}

/// Look `path` (`/`-separated, `d*N` for N levels of `d`) up from the root.
fn walk_deep(ovl: &Overlay, top: &str, depth: usize, last: &str) -> NodeRef {
    let mut n = ovl.lookup(&ovl.root(), OsStr::new(top)).unwrap();
    for _ in 1..depth {
        n = ovl.lookup(&n, OsStr::new("d")).unwrap();
    }
    ovl.lookup(&n, OsStr::new(last)).unwrap()
}

/// Tree depth costs heap, not stack (issue 10): a 6,000-deep lower chain is looked up,
/// stat'ed, listed and read after its cached directory fds are gone (as a flood of other
/// directories evicts them), a 2,500-deep one copied up by an open for write, a relative
/// redirect at depth 2,500 resolved, and a 3,000-deep stale tree in the workdir cleaned, all
/// on a thread with a 256 KiB stack; then the long chains of nodes are dropped there too.
/// Each of these recursed once per level and overflowed the stack.
#[test]
fn depth_costs_heap_not_stack() {
    need_root!();
    let f = Fixture::new(2);
    let _trees = [
        DeepTreeGuard(f.lowers[0].join("deep")),
        DeepTreeGuard(f.lowers[1].join("cu")),
        DeepTreeGuard(f.upper.join("cu")),
        DeepTreeGuard(f.work.join("work")),
    ];
    deep_chain(&f.lowers[0].join("deep"), 6000, "deep leaf");
    deep_chain(&f.lowers[1].join("cu"), 2500, "copy me");
    // What a crash could leave in the staging area (cleaned by Overlay::new).
    std::fs::create_dir(f.work.join("work")).unwrap();
    deep_chain(&f.work.join("work/stale"), 3000, "stale");
    let (stack, restack, work) = (f.stack(), f.stack(), f.work.clone());
    on_small_stack(move || {
        let ovl = Overlay::new(stack).unwrap();
        // Lookup, stat, readdir and read at the bottom of the 6,000-deep chain, once with
        // the directory fds cached and once with the cache emptied.
        let leaf = walk_deep(&ovl, "deep", 6000, "leaf");
        for _ in 0..2 {
            assert_eq!(ovl.getattr(&leaf).unwrap().size, 9);
            let bottom = leaf.parent_name().unwrap().0;
            assert_eq!(names(&ovl, &bottom), ["leaf"]);
            let mut s = String::new();
            ovl.open(&leaf, libc::O_RDONLY)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            assert_eq!(s, "deep leaf");
            assert_eq!(leaf.path().components().count(), 6001);
            ovl.dir_fds.clear();
        }
        // Copy-up of 2,500 ancestors by an open for write.
        let cu = walk_deep(&ovl, "cu", 2500, "leaf");
        ovl.dir_fds.clear();
        let mut w = ovl.open(&cu, libc::O_WRONLY | libc::O_APPEND).unwrap();
        w.write_all(b", copied").unwrap();
        drop(w);
        assert!(!cu.is_lower_only());
        // A relative redirect at depth 2,500: its lower path is built from the ancestors.
        let bottom = cu.parent_name().unwrap().0;
        let r = ovl.mkdir(&bottom, OsStr::new("r"), 0o755, None).unwrap();
        let upper_bottom = ovl.dir_fd(&bottom, LayerRef::Upper).unwrap();
        rustix::fs::mkdirat(
            &*upper_bottom,
            "moved",
            rustix::fs::Mode::from_raw_mode(0o755),
        )
        .unwrap();
        let moved = rustix::fs::openat(
            &*upper_bottom,
            "moved",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        rustix::fs::fsetxattr(
            &moved,
            "trusted.overlay.redirect",
            b"r",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        drop((r, moved, upper_bottom));
        // Drop every node (the chains' last references) and look up afresh.
        drop((leaf, cu, bottom));
        drop(ovl);
        let ovl = Overlay::new(restack).unwrap();
        let moved = walk_deep(&ovl, "cu", 2500, "moved");
        assert!(names(&ovl, &moved).is_empty());
        let mut s = String::new();
        let leaf = walk_deep(&ovl, "cu", 2500, "leaf");
        ovl.dir_fds.clear();
        ovl.open(&leaf, libc::O_RDONLY)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "copy me, copied");
        drop((moved, leaf));
        // Removing the whole chain through the path API.
        ovl.path().remove_dir_all("cu").unwrap();
        assert!(ovl.lookup(&ovl.root(), OsStr::new("cu")).is_err());
        drop(ovl);
        // The stale tree is gone from the staging area.
        // (Only the shared whiteout the removals left.)
        assert_no_staging_left(&work);
    });
}

/// Run `f` on a thread and wait at most 10 s for it: a hang guard (not a timing assertion)
/// for opens that would block on a FIFO. On a hang the FIFO at `fifo` is opened for reading
/// and writing, which lets a blocked open go on, and the test fails.
fn without_hanging<T: Send + 'static>(
    what: &str,
    fifo: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(v) => {
            h.join().unwrap();
            v
        }
        Err(_) => {
            let _unblock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(fifo);
            panic!("{what}: still blocked after 10 s (opened a FIFO?)");
        }
    }
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
}

/// Replace whatever is at `p` by `with` ("fifo", "dir" or "file").
fn replace_with(p: &Path, with: &str) {
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        std::fs::remove_dir_all(p).unwrap();
    } else {
        std::fs::remove_file(p).unwrap();
    }
    match with {
        "fifo" => mkfifo(p),
        "dir" => std::fs::create_dir(p).unwrap(),
        _ => std::fs::write(p, "file").unwrap(),
    }
}

/// One engine call on a swapped object, run on its own thread.
type Attempt = Box<dyn FnOnce(&Overlay) -> Result<()> + Send>;

/// A user who can write to a layer replaces an object the overlay has looked up (a regular
/// file by a FIFO or a directory, a directory by a FIFO). Opening it through the engine
/// returns ESTALE at once (an `Error::Changed` naming both types) instead of blocking the
/// worker on the FIFO or serving the other object: read and write opens (the latter copy
/// up from the swapped lower object), truncation, readdir and fsync, in lower and upper.
#[test]
fn swapped_layer_objects_are_refused_not_opened() {
    let f = Fixture::new(1);
    let cases = [
        // (object, in which layer, replaced with)
        ("file", "lower", "fifo"),
        ("file", "upper", "fifo"),
        ("file", "lower", "dir"),
        ("file", "upper", "dir"),
        ("dir", "lower", "fifo"),
        ("dir", "upper", "fifo"),
        ("dir", "upper", "file"),
    ];
    let layer_dir = |layer: &str| {
        if layer == "lower" {
            f.lowers[0].clone()
        } else {
            f.upper.clone()
        }
    };
    for (i, (kind, layer, _)) in cases.iter().enumerate() {
        let p = layer_dir(layer).join(format!("{kind}{i}"));
        if *kind == "dir" {
            write(&p.join("inside"), "x");
        } else {
            write(&p, "data");
        }
    }
    let ovl = Arc::new(f.overlay());
    let root = ovl.root();
    let nodes: Vec<NodeRef> = cases
        .iter()
        .enumerate()
        .map(|(i, (kind, _, _))| {
            ovl.lookup(&root, OsStr::new(&format!("{kind}{i}")))
                .unwrap()
        })
        .collect();
    for (i, (kind, layer, with)) in cases.iter().enumerate() {
        let p = layer_dir(layer).join(format!("{kind}{i}"));
        replace_with(&p, with);
        let node = nodes[i].clone();
        let mut attempts: Vec<(&str, Attempt)> = vec![(
            "open O_RDONLY",
            Box::new(move |o: &Overlay| o.open(&node, libc::O_RDONLY).map(drop)),
        )];
        if *kind == "file" {
            let (n1, n2, n3) = (nodes[i].clone(), nodes[i].clone(), nodes[i].clone());
            attempts.push((
                "open O_WRONLY",
                Box::new(move |o: &Overlay| o.open(&n1, libc::O_WRONLY).map(drop)),
            ));
            attempts.push((
                "truncate",
                Box::new(move |o: &Overlay| {
                    let size = SetAttr {
                        size: Some(1),
                        ..SetAttr::default()
                    };
                    o.setattr(&n2, &size).map(drop)
                }),
            ));
            attempts.push(("fsync", Box::new(move |o: &Overlay| o.fsync(&n3, false))));
        } else {
            let n1 = nodes[i].clone();
            attempts.push((
                "readdir",
                Box::new(move |o: &Overlay| o.readdir(&n1).map(drop)),
            ));
        }
        for (what, attempt) in attempts {
            let what = format!("{what} of {kind}{i} ({layer}) replaced by a {with}");
            let o = ovl.clone();
            let r = without_hanging(&what, &p, move || attempt(&o));
            match r {
                Err(e @ Error::Changed { .. }) => {
                    assert_eq!(e.raw_os_error(), libc::ESTALE, "{what}");
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{kind}{i}")), "{what}: {msg}");
                }
                // fsync of a lower-only file has nothing to sync and opens nothing.
                Ok(()) if what.starts_with("fsync") && *layer == "lower" => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}

/// `(name, lstat errno of m/name, of m/pu/name)` for each name, through a kernel mount on
/// `m` (0 for success).
fn kernel_lstat_errnos<'a>(
    m: &Path,
    names: impl Iterator<Item = &'a str>,
) -> Vec<(String, i32, i32)> {
    names
        .map(|n| {
            (
                n.to_string(),
                lstat_errno(&m.join(n)),
                lstat_errno(&m.join("pu").join(n)),
            )
        })
        .collect()
}
