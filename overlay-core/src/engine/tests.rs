//! Unit tests of the engine on real layer trees in temp dirs (char 0/0 whiteouts need root
//! or CAP_MKNOD; tests that need them say so and fail under CI=true when they cannot).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::format::XattrNamespace;

pub(crate) struct Fixture {
    _t: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Fixture {
    /// `n` lower layers (index 0 = bottom), an upper and a workdir.
    pub fn new(n: usize) -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = t.path().join(format!("l{i}"));
                std::fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        let upper = t.path().join("u");
        let work = t.path().join("w");
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        Fixture {
            _t: t,
            lowers,
            upper,
            work,
        }
    }

    pub fn stack(&self) -> LayerStack {
        LayerStack::builder()
            .lowers(self.lowers.iter())
            .upper(&self.upper, &self.work)
            .xattr_namespace(XattrNamespace::Trusted)
            .build()
            .unwrap()
    }

    pub fn overlay(&self) -> Overlay {
        Overlay::new(self.stack()).unwrap()
    }
}

pub(crate) fn can_mknod() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skip (or fail under CI=true) when whiteouts cannot be made.
macro_rules! need_root {
    () => {
        if !can_mknod() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "test needs root (char 0/0 whiteouts, trusted xattrs)"
            );
            eprintln!("skipping: needs root");
            return;
        }
    };
}

pub(crate) fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

fn write(p: &Path, data: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    rustix::fs::lsetxattr(p, name, v, rustix::fs::XattrFlags::empty()).unwrap();
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    super::layers::read_xattr(|b| rustix::fs::lgetxattr(p, name, b)).ok()
}

/// `workdir/work` holds nothing but the shared whiteout (the inode the whiteouts are hard
/// links to, as with the kernel): no staged copy, directory or whiteout was left behind.
fn assert_no_staging_left(work: &Path) {
    let all: Vec<_> = std::fs::read_dir(work.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let whiteouts = all.iter().filter(|p| is_whiteout_file(p)).count();
    assert!(
        whiteouts <= 1 && whiteouts == all.len(),
        "left in workdir/work: {all:?}"
    );
}

fn is_whiteout_file(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) => m.file_type().is_char_device() && m.rdev() == 0,
        Err(_) => false,
    }
}

fn names(ovl: &Overlay, dir: &NodeRef) -> Vec<String> {
    let mut v: Vec<String> = ovl
        .readdir(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn walk(ovl: &Overlay, path: &str) -> Result<NodeRef> {
    let mut n = ovl.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        n = ovl.lookup(&n, OsStr::new(c))?;
    }
    Ok(n)
}

fn read_all(ovl: &Overlay, path: &str) -> String {
    let n = walk(ovl, path).unwrap();
    let mut s = String::new();
    ovl.open(&n, libc::O_RDONLY)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn errno(r: Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("expected an error").raw_os_error()
}

/// A workdir locked by another overlay is waited for a moment (a FUSE daemon still exiting
/// after its unmount), then taken; one that stays locked is refused as in use.
#[test]
fn workdir_lock_waits_for_an_exiting_overlay() {
    let f = Fixture::new(1);
    let first = f.overlay();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(first);
    });
    let second = f.overlay();
    releaser.join().unwrap();
    let t = std::time::Instant::now();
    let e = Overlay::new(f.stack()).map(drop).unwrap_err();
    assert!(t.elapsed() >= crate::engine::layers::WORKDIR_LOCK_PATIENCE);
    assert!(e.to_string().contains("in use by another overlay"), "{e}");
    drop(second);
}

#[test]
fn lookup_and_readdir_merge_layers() {
    need_root!();
    let f = Fixture::new(2);
    let (l0, l1) = (&f.lowers[0], &f.lowers[1]);
    write(&l0.join("a/x"), "x0");
    write(&l0.join("a/y"), "y0");
    write(&l0.join("a/w"), "w0");
    write(&l0.join("f"), "f0");
    write(&l0.join("g"), "g0");
    std::fs::create_dir_all(l0.join("d/sub")).unwrap();
    write(&l1.join("a/z"), "z1");
    write(&l1.join("a/x"), "x1");
    whiteout(&l1.join("a/y"));
    write(&l1.join("a/.wh.w"), ""); // AUFS whiteout
    write(&l1.join("d"), "file hides dir");
    write(&f.upper.join("a/u"), "u");
    whiteout(&f.upper.join("g"));
    let ovl = f.overlay();
    let root = ovl.root();
    assert_eq!(names(&ovl, &root), vec!["a", "d", "f"]);
    let a = walk(&ovl, "a").unwrap();
    assert_eq!(names(&ovl, &a), vec!["u", "x", "z"]);
    assert_eq!(read_all(&ovl, "a/x"), "x1");
    assert_eq!(errno(walk(&ovl, "a/y")), libc::ENOENT);
    assert_eq!(errno(walk(&ovl, "a/w")), libc::ENOENT);
    assert_eq!(errno(walk(&ovl, "a/.wh.w")), libc::ENOENT);
    assert_eq!(errno(walk(&ovl, "g")), libc::ENOENT);
    let d = walk(&ovl, "d").unwrap();
    assert_eq!(d.kind(), FileKind::File);
    assert!(d.is_lower_only());
    assert_eq!(errno(walk(&ovl, "d/sub")), libc::ENOTDIR);
    // d_ino == st_ino, unique.
    for dir in [&root, &a] {
        let mut seen = std::collections::HashSet::new();
        for e in ovl.readdir(dir).unwrap() {
            let n = ovl.lookup(dir, &e.name).unwrap();
            let at = ovl.getattr(&n).unwrap();
            assert_eq!(e.ino, at.ino, "{:?}", e.name);
            assert_eq!(e.kind, at.kind);
            assert!(seen.insert(e.ino));
        }
    }
    // The same name twice gives the same node while alive; dropping frees it.
    let x1 = walk(&ovl, "a/x").unwrap();
    let x2 = walk(&ovl, "a/x").unwrap();
    assert!(Arc::ptr_eq(&x1, &x2));
    let weak = Arc::downgrade(&x1);
    drop((x1, x2));
    assert!(weak.upgrade().is_none());
    assert_eq!(a.child_count(), 0);
    // Merged dir nlink is 1 as the kernel reports.
    assert_eq!(ovl.getattr(&a).unwrap().nlink, 1);
}

#[test]
fn opaque_dirs_and_xwhiteouts() {
    need_root!();
    let f = Fixture::new(3);
    let (l0, l1, l2) = (&f.lowers[0], &f.lowers[1], &f.lowers[2]);
    write(&l0.join("o/below"), "");
    write(&l0.join("p/below"), "");
    write(&l0.join("q/below"), "");
    write(&l0.join("x/gone"), "");
    write(&l0.join("x/kept"), "");
    write(&l1.join("o/mid"), "");
    set_xattr(&l1.join("o"), "trusted.overlay.opaque", b"y");
    write(&l1.join("p/mid"), "");
    write(&l1.join("p/.wh..wh..opq"), "");
    std::fs::create_dir_all(f.upper.join("q")).unwrap();
    write(&f.upper.join("q/top"), "");
    set_xattr(&f.upper.join("q"), "trusted.overlay.opaque", b"y");
    // xwhiteout: zero-size file with overlay.whiteout in a dir marked opaque=x.
    std::fs::create_dir_all(l2.join("x")).unwrap();
    write(&l2.join("x/gone"), "");
    set_xattr(&l2.join("x/gone"), "trusted.overlay.whiteout", b"");
    set_xattr(&l2.join("x"), "trusted.overlay.opaque", b"x");
    write(&l2.join("x/new"), "");
    let ovl = f.overlay();
    assert_eq!(names(&ovl, &walk(&ovl, "o").unwrap()), vec!["mid"]);
    assert_eq!(names(&ovl, &walk(&ovl, "p").unwrap()), vec!["mid"]);
    assert_eq!(names(&ovl, &walk(&ovl, "q").unwrap()), vec!["top"]);
    assert_eq!(names(&ovl, &walk(&ovl, "x").unwrap()), vec!["kept", "new"]);
    assert_eq!(errno(walk(&ovl, "x/gone")), libc::ENOENT);
    assert_eq!(errno(walk(&ovl, "o/below")), libc::ENOENT);
    // Private xattrs are invisible; opaque marker does not show.
    let o = walk(&ovl, "o").unwrap();
    assert!(ovl.listxattr(&o).unwrap().is_empty());
    assert_eq!(
        errno(ovl.getxattr(&o, OsStr::new("trusted.overlay.opaque"))),
        libc::ENODATA
    );
}

#[test]
fn create_write_unlink_leave_whiteouts() {
    need_root!();
    let f = Fixture::new(1);
    let l0 = &f.lowers[0];
    write(&l0.join("dir/lower"), "L");
    let ovl = f.overlay();
    let dir = walk(&ovl, "dir").unwrap();
    let (n, mut file) = ovl
        .create(
            &dir,
            OsStr::new("new"),
            0o640,
            libc::O_WRONLY | libc::O_EXCL,
            None,
        )
        .unwrap();
    file.write_all(b"hello").unwrap();
    drop(file);
    assert_eq!(std::fs::read(f.upper.join("dir/new")).unwrap(), b"hello");
    assert_eq!(
        std::fs::metadata(f.upper.join("dir/new")).unwrap().mode() & 0o7777,
        0o640
    );
    assert_eq!(ovl.getattr(&n).unwrap().size, 5);
    assert_eq!(
        errno(ovl.create(
            &dir,
            OsStr::new("lower"),
            0o644,
            libc::O_WRONLY | libc::O_EXCL,
            None
        )),
        libc::EEXIST
    );
    // unlink of an upper-only file leaves nothing behind.
    ovl.unlink(&dir, OsStr::new("new")).unwrap();
    assert!(!f.upper.join("dir/new").exists());
    let gone = ovl.getattr(&n).unwrap();
    assert_eq!((gone.nlink, gone.size), (0, 5));
    assert_eq!(errno(ovl.lookup(&dir, OsStr::new("new"))), libc::ENOENT);
    // unlink of a lower file leaves a whiteout; the node held reports the lower object's
    // attributes with the link count decremented.
    let low = ovl.lookup(&dir, OsStr::new("lower")).unwrap();
    let before = ovl.getattr(&low).unwrap();
    ovl.unlink(&dir, OsStr::new("lower")).unwrap();
    assert!(is_whiteout_file(&f.upper.join("dir/lower")));
    let after = ovl.getattr(&low).unwrap();
    assert_eq!(
        (after.nlink, after.size, after.ino),
        (before.nlink - 1, before.size, before.ino)
    );
    drop(low);
    assert_eq!(errno(ovl.lookup(&dir, OsStr::new("lower"))), libc::ENOENT);
    assert_eq!(errno(ovl.unlink(&dir, OsStr::new("lower"))), libc::ENOENT);
    assert!(names(&ovl, &dir).is_empty());
    // Re-create over the whiteout: a regular file replaces it.
    let (_, mut file) = ovl
        .create(
            &dir,
            OsStr::new("lower"),
            0o644,
            libc::O_RDWR | libc::O_EXCL,
            None,
        )
        .unwrap();
    file.write_all(b"again").unwrap();
    assert_eq!(read_all(&ovl, "dir/lower"), "again");
    assert_no_staging_left(&f.work);
    // unlink of a directory: EISDIR; rmdir of a file: ENOTDIR.
    let root = ovl.root();
    assert_eq!(errno(ovl.unlink(&root, OsStr::new("dir"))), libc::EISDIR);
    assert_eq!(errno(ovl.rmdir(&dir, OsStr::new("lower"))), libc::ENOTDIR);
    // `.` and `..`, as rmdir(2) and unlink(2) report them.
    assert_eq!(errno(ovl.rmdir(&dir, OsStr::new("."))), libc::EINVAL);
    assert_eq!(errno(ovl.rmdir(&dir, OsStr::new(".."))), libc::ENOTEMPTY);
    assert_eq!(errno(ovl.unlink(&dir, OsStr::new("."))), libc::EISDIR);
    assert_eq!(errno(ovl.unlink(&dir, OsStr::new(".."))), libc::EISDIR);
}

#[test]
fn mkdir_rmdir_opaque_and_merged() {
    need_root!();
    let f = Fixture::new(1);
    let l0 = &f.lowers[0];
    write(&l0.join("m/a"), "");
    write(&l0.join("m/b"), "");
    let ovl = f.overlay();
    let root = ovl.root();
    let m = walk(&ovl, "m").unwrap();
    assert_eq!(errno(ovl.rmdir(&root, OsStr::new("m"))), libc::ENOTEMPTY);
    ovl.unlink(&m, OsStr::new("a")).unwrap();
    ovl.unlink(&m, OsStr::new("b")).unwrap();
    assert!(is_whiteout_file(&f.upper.join("m/a")));
    ovl.rmdir(&root, OsStr::new("m")).unwrap();
    assert!(is_whiteout_file(&f.upper.join("m")));
    assert_no_staging_left(&f.work);
    // mkdir over the whiteout: opaque.
    let m2 = ovl.mkdir(&root, OsStr::new("m"), 0o750, None).unwrap();
    assert!(names(&ovl, &m2).is_empty());
    assert_eq!(
        get_xattr(&f.upper.join("m"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(ovl.getattr(&m2).unwrap().perm, 0o750);
    // A fresh dir with nothing below is not opaque.
    ovl.mkdir(&root, OsStr::new("fresh"), 0o755, None).unwrap();
    assert_eq!(
        get_xattr(&f.upper.join("fresh"), "trusted.overlay.opaque"),
        None
    );
    assert_eq!(
        errno(ovl.mkdir(&root, OsStr::new("fresh"), 0o755, None)),
        libc::EEXIST
    );
    // rmdir of a pure upper dir leaves no whiteout.
    ovl.rmdir(&root, OsStr::new("fresh")).unwrap();
    assert!(std::fs::symlink_metadata(f.upper.join("fresh")).is_err());
}

#[test]
fn rename_semantics() {
    need_root!();
    let f = Fixture::new(1);
    let l0 = &f.lowers[0];
    write(&l0.join("f1"), "one");
    write(&l0.join("f2"), "two");
    write(&l0.join("ld/x"), "");
    let ovl = f.overlay();
    let root = ovl.root();
    let f1 = walk(&ovl, "f1").unwrap();
    let ino = f1.ino();
    ovl.rename(
        &root,
        OsStr::new("f1"),
        &root,
        OsStr::new("g1"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert!(is_whiteout_file(&f.upper.join("f1")));
    assert_eq!(read_all(&ovl, "g1"), "one");
    assert_eq!(walk(&ovl, "g1").unwrap().ino(), ino);
    assert_eq!(errno(walk(&ovl, "f1")), libc::ENOENT);
    assert_eq!(
        errno(ovl.rename(
            &root,
            OsStr::new("g1"),
            &root,
            OsStr::new("f2"),
            RenameFlags::NOREPLACE
        )),
        libc::EEXIST
    );
    ovl.rename(
        &root,
        OsStr::new("g1"),
        &root,
        OsStr::new("f2"),
        RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(read_all(&ovl, "g1"), "two");
    assert_eq!(read_all(&ovl, "f2"), "one");
    assert_eq!(
        errno(ovl.rename(
            &root,
            OsStr::new("ld"),
            &root,
            OsStr::new("ld2"),
            RenameFlags::empty()
        )),
        libc::EXDEV
    );
    assert_eq!(
        errno(ovl.rename(
            &root,
            OsStr::new("nope"),
            &root,
            OsStr::new("x"),
            RenameFlags::empty()
        )),
        libc::ENOENT
    );
    // Upper-only directories rename; into a merged dir they become opaque.
    let ud = ovl.mkdir(&root, OsStr::new("ud"), 0o755, None).unwrap();
    ovl.create(&ud, OsStr::new("in"), 0o644, libc::O_WRONLY, None)
        .unwrap();
    ovl.rename(
        &root,
        OsStr::new("ud"),
        &root,
        OsStr::new("ud2"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert_eq!(names(&ovl, &walk(&ovl, "ud2").unwrap()), vec!["in"]);
    assert_eq!(ud.path(), PathBuf::from("ud2"));
    let ld = walk(&ovl, "ld").unwrap();
    ovl.rename(
        &root,
        OsStr::new("ud2"),
        &ld,
        OsStr::new("moved"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert_eq!(read_all(&ovl, "ld/moved/in"), "");
    assert_eq!(
        get_xattr(&f.upper.join("ld/moved"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // Directory into its own subtree: EINVAL; over a file: ENOTDIR; file over dir: EISDIR.
    let moved = walk(&ovl, "ld/moved").unwrap();
    assert_eq!(
        errno(ovl.rename(
            &ld,
            OsStr::new("moved"),
            &moved,
            OsStr::new("x"),
            RenameFlags::empty()
        )),
        libc::EINVAL
    );
    assert_eq!(
        errno(ovl.rename(
            &ld,
            OsStr::new("moved"),
            &root,
            OsStr::new("f2"),
            RenameFlags::empty()
        )),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(ovl.rename(
            &root,
            OsStr::new("f2"),
            &ld,
            OsStr::new("moved"),
            RenameFlags::empty()
        )),
        libc::EISDIR
    );
}

#[test]
fn copy_up_keeps_metadata_and_xattrs() {
    need_root!();
    let f = Fixture::new(1);
    let l0 = &f.lowers[0];
    write(&l0.join("d/file"), "data");
    std::fs::set_permissions(
        l0.join("d/file"),
        std::os::unix::fs::PermissionsExt::from_mode(0o604),
    )
    .unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        l0.join("d/file"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(4321)),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    set_xattr(&l0.join("d/file"), "user.keep", b"v");
    set_xattr(&l0.join("d/file"), "trusted.overlay.origin", b"junk");
    set_xattr(&l0.join("d/file"), "trusted.overlay.overlay.esc", b"e");
    set_xattr(&l0.join("d"), "user.dirattr", b"dv");
    let mtime = std::fs::metadata(l0.join("d/file")).unwrap().mtime();
    let ovl = f.overlay();
    let n = walk(&ovl, "d/file").unwrap();
    let mut visible = ovl.listxattr(&n).unwrap();
    visible.sort();
    assert_eq!(
        visible,
        vec![
            OsString::from("trusted.overlay.esc"),
            OsString::from("user.keep")
        ]
    );
    assert_eq!(
        ovl.getxattr(&n, OsStr::new("trusted.overlay.esc")).unwrap(),
        b"e"
    );
    // Reads never copy up.
    read_all(&ovl, "d/file");
    assert!(!f.upper.join("d").exists());
    ovl.setxattr(&n, OsStr::new("user.new"), b"n", 0).unwrap();
    let up = f.upper.join("d/file");
    assert_eq!(std::fs::read(&up).unwrap(), b"data");
    let md = std::fs::metadata(&up).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o604, 1234, 4321)
    );
    assert_eq!(md.mtime(), mtime);
    assert_eq!(get_xattr(&up, "user.keep").as_deref(), Some(&b"v"[..]));
    assert_eq!(get_xattr(&up, "user.new").as_deref(), Some(&b"n"[..]));
    // The lower's private origin is not copied; ours (kernel format) is written instead.
    assert_ne!(
        get_xattr(&up, "trusted.overlay.origin").as_deref(),
        Some(&b"junk"[..])
    );
    assert_eq!(
        get_xattr(&f.upper.join("d"), "user.dirattr").as_deref(),
        Some(&b"dv"[..])
    );
    // Setting a private-looking name stores it escaped.
    ovl.setxattr(&n, OsStr::new("trusted.overlay.opaque"), b"y", 0)
        .unwrap();
    assert_eq!(
        get_xattr(&up, "trusted.overlay.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    ovl.removexattr(&n, OsStr::new("user.keep")).unwrap();
    assert_eq!(
        errno(ovl.removexattr(&n, OsStr::new("user.keep"))),
        libc::ENODATA
    );
    // setattr: chmod, chown, truncate, utimes.
    let a = ovl
        .setattr(
            &n,
            &SetAttr {
                mode: Some(0o600),
                uid: Some(1),
                gid: Some(2),
                size: Some(2),
                atime: Some(TimeSet::At(Timestamp { sec: 100, nsec: 5 })),
                mtime: Some(TimeSet::At(Timestamp { sec: 200, nsec: 7 })),
            },
        )
        .unwrap();
    assert_eq!((a.perm, a.uid, a.gid, a.size), (0o600, 1, 2, 2));
    assert_eq!(a.mtime, Timestamp { sec: 200, nsec: 7 });
    assert_eq!(std::fs::read(&up).unwrap(), b"da");
}

#[test]
fn open_trunc_and_sparse_copy_up() {
    need_root!();
    let f = Fixture::new(1);
    let l0 = &f.lowers[0];
    write(&l0.join("t"), "to be truncated");
    let sparse = l0.join("sparse");
    {
        let mut fh = std::fs::File::create(&sparse).unwrap();
        fh.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
        fh.write_all(b"end").unwrap();
        fh.seek(std::io::SeekFrom::Start(0)).unwrap();
        fh.write_all(b"start").unwrap();
    }
    let ovl = f.overlay();
    let t = walk(&ovl, "t").unwrap();
    drop(ovl.open(&t, libc::O_WRONLY | libc::O_TRUNC).unwrap());
    assert_eq!(std::fs::read(f.upper.join("t")).unwrap(), b"");
    let s = walk(&ovl, "sparse").unwrap();
    let mut fh = ovl.open(&s, libc::O_RDWR).unwrap();
    let md = std::fs::metadata(f.upper.join("sparse")).unwrap();
    assert_eq!(md.len(), (64 << 20) + 3);
    assert!(md.blocks() < 1024, "holes kept: {} blocks", md.blocks());
    let mut head = [0u8; 5];
    fh.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"start");
    fh.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
    let mut tail = String::new();
    fh.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "end");
}

#[test]
fn link_symlink_mknod() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("src"), "S");
    let ovl = f.overlay();
    let root = ovl.root();
    let src = walk(&ovl, "src").unwrap();
    let l = ovl.link(&src, &root, OsStr::new("hard")).unwrap();
    assert_eq!(l.ino(), src.ino());
    let a = std::fs::metadata(f.upper.join("src")).unwrap();
    let b = std::fs::metadata(f.upper.join("hard")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(ovl.getattr(&l).unwrap().nlink, 2);
    assert_eq!(
        errno(ovl.link(&src, &root, OsStr::new("hard"))),
        libc::EEXIST
    );
    let s = ovl
        .symlink(
            &root,
            OsStr::new("sl"),
            OsStr::new("../../etc/passwd"),
            None,
        )
        .unwrap();
    assert_eq!(
        ovl.readlink(&s).unwrap(),
        OsString::from("../../etc/passwd")
    );
    assert_eq!(errno(ovl.open(&s, libc::O_RDONLY)), libc::ELOOP);
    // A hard link to a symlink is a symlink with the same inode number.
    let sl2 = ovl.link(&s, &root, OsStr::new("sl2")).unwrap();
    assert_eq!((sl2.kind, sl2.ino()), (FileKind::Symlink, s.ino()));
    assert_eq!(
        ovl.readlink(&sl2).unwrap(),
        OsString::from("../../etc/passwd")
    );
    assert_eq!(
        errno(ovl.mknod(&root, OsStr::new("wh"), libc::S_IFCHR | 0o644, 0, None)),
        libc::EPERM
    );
    let fifo = ovl
        .mknod(
            &root,
            OsStr::new("fifo"),
            libc::S_IFIFO | 0o644,
            0,
            Some(Owner { uid: 7, gid: 8 }),
        )
        .unwrap();
    let at = ovl.getattr(&fifo).unwrap();
    assert_eq!(
        (at.kind, at.uid, at.gid, at.perm),
        (FileKind::Fifo, 7, 8, 0o644)
    );
    let dev = ovl
        .mknod(
            &root,
            OsStr::new("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
            None,
        )
        .unwrap();
    assert_eq!(ovl.getattr(&dev).unwrap().rdev, libc::makedev(1, 3));
}

#[test]
fn ino_stable_across_copy_up_and_relookup() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("d/file"), "data");
    let lower_ino = std::fs::metadata(f.lowers[0].join("d/file")).unwrap().ino();
    {
        let ovl = f.overlay();
        let n = walk(&ovl, "d/file").unwrap();
        assert_eq!(n.ino(), lower_ino);
        drop(ovl.open(&n, libc::O_WRONLY | libc::O_APPEND).unwrap());
        assert_eq!(ovl.getattr(&n).unwrap().ino, lower_ino);
        // The origin is in the kernel's format and the parent is marked impure.
        let origin = get_xattr(&f.upper.join("d/file"), "trusted.overlay.origin").unwrap();
        assert_eq!(&origin[..2], &[0x00, 0xfb]);
        assert_eq!(
            get_xattr(&f.upper.join("d"), "trusted.overlay.impure").as_deref(),
            Some(&b"y"[..])
        );
    }
    let ovl = f.overlay();
    let d = walk(&ovl, "d").unwrap();
    let e = ovl.readdir(&d).unwrap();
    assert_eq!(e[0].ino, lower_ino);
    let n = walk(&ovl, "d/file").unwrap();
    assert_eq!(ovl.getattr(&n).unwrap().ino, lower_ino);
    // Private xattrs stay hidden.
    assert!(ovl.listxattr(&n).unwrap().is_empty());
}

#[test]
fn lower_hard_links_split_on_copy_up() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("a"), "hi");
    std::fs::hard_link(f.lowers[0].join("a"), f.lowers[0].join("b")).unwrap();
    let lower_ino = std::fs::metadata(f.lowers[0].join("a")).unwrap().ino();
    {
        let ovl = f.overlay();
        let a = walk(&ovl, "a").unwrap();
        let b = walk(&ovl, "b").unwrap();
        // Observed on 6.18: both names report the lower inode before copy-up...
        assert_eq!((a.ino(), b.ino()), (lower_ino, lower_ino));
        assert_eq!(ovl.getattr(&a).unwrap().nlink, 2);
        drop(ovl.open(&a, libc::O_WRONLY | libc::O_APPEND).unwrap());
        // ...and after it the copied-up name reports the upper inode (link count 1), the
        // other name still the lower one.
        let upper_ino = std::fs::metadata(f.upper.join("a")).unwrap().ino();
        assert_ne!(upper_ino, lower_ino);
        assert_eq!(a.ino(), upper_ino);
        let at = ovl.getattr(&a).unwrap();
        assert_eq!((at.ino, at.nlink), (upper_ino, 1));
        assert_eq!(walk(&ovl, "a").unwrap().ino(), upper_ino);
        assert_eq!(ovl.getattr(&b).unwrap().ino, lower_ino);
        let e = ovl.readdir(&ovl.root()).unwrap();
        let ino_of = |n: &str| e.iter().find(|x| x.name == n).unwrap().ino;
        assert_eq!((ino_of("a"), ino_of("b")), (upper_ino, lower_ino));
    }
    // The same after a remount (the origin has more than one link).
    let ovl = f.overlay();
    let upper_ino = std::fs::metadata(f.upper.join("a")).unwrap().ino();
    assert_eq!(walk(&ovl, "a").unwrap().ino(), upper_ino);
    assert_eq!(walk(&ovl, "b").unwrap().ino(), lower_ino);
    let e = ovl.readdir(&ovl.root()).unwrap();
    assert_eq!(e.iter().find(|x| x.name == "a").unwrap().ino, upper_ino);
}

#[test]
fn fsync_and_fsync_dir() {
    let f = Fixture::new(1);
    write(&f.lowers[0].join("d/f"), "x");
    let ovl = f.overlay();
    let d = walk(&ovl, "d").unwrap();
    let file = walk(&ovl, "d/f").unwrap();
    // Lower-only: nothing to do.
    ovl.fsync_dir(&d, false).unwrap();
    ovl.fsync(&file, true).unwrap();
    ovl.fsync_dir(&ovl.root(), false).unwrap();
    assert_eq!(errno(ovl.fsync_dir(&file, false)), libc::ENOTDIR);
    let (n, _) = ovl
        .create(&d, OsStr::new("new"), 0o644, libc::O_WRONLY, None)
        .unwrap();
    ovl.fsync_dir(&d, false).unwrap();
    ovl.fsync_dir(&d, true).unwrap();
    ovl.fsync(&n, false).unwrap();
    ovl.fsync(&n, true).unwrap();
    ovl.fsync(&d, false).unwrap();
    let s = ovl
        .symlink(&d, OsStr::new("s"), OsStr::new("f"), None)
        .unwrap();
    ovl.fsync(&s, false).unwrap();
}

#[test]
fn read_only_stack_gives_erofs() {
    let t = tempfile::tempdir().unwrap();
    write(&t.path().join("f"), "x");
    let stack = LayerStack::builder().lower(t.path()).build().unwrap();
    let ovl = Overlay::new(stack).unwrap();
    let root = ovl.root();
    let n = walk(&ovl, "f").unwrap();
    assert_eq!(read_all(&ovl, "f"), "x");
    assert_eq!(errno(ovl.open(&n, libc::O_WRONLY)), libc::EROFS);
    assert_eq!(errno(ovl.unlink(&root, OsStr::new("f"))), libc::EROFS);
    assert_eq!(
        errno(ovl.mkdir(&root, OsStr::new("d"), 0o755, None)),
        libc::EROFS
    );
    assert_eq!(
        errno(ovl.mkdir(&root, OsStr::new("f"), 0o755, None)),
        libc::EEXIST
    );
    assert_eq!(
        errno(ovl.setattr(
            &n,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            }
        )),
        libc::EROFS
    );
    assert!(ovl.statfs().unwrap().bsize > 0);
}

#[test]
fn stale_staging_cleaned_and_workdir_locked() {
    let f = Fixture::new(1);
    std::fs::create_dir_all(f.work.join("work/#ovl.1.1/deep")).unwrap();
    std::fs::write(f.work.join("work/#ovl.1.2"), b"partial").unwrap();
    let ovl = f.overlay();
    assert_no_staging_left(&f.work);
    assert_eq!(
        Overlay::new(f.stack()).unwrap_err().raw_os_error(),
        libc::EBUSY
    );
    drop(ovl);
    drop(f.overlay());
}

/// One entry of a generated layer directory.
#[derive(Debug, Clone)]
enum Ent {
    File(u8),
    Dir(Vec<(u8, u8)>),
    Whiteout,
    AufsWhiteout,
}

fn ent_strategy() -> impl Strategy<Value = Option<Ent>> {
    prop_oneof![
        3 => Just(None),
        2 => any::<u8>().prop_map(|c| Some(Ent::File(c))),
        2 => proptest::collection::vec((0u8..4, any::<u8>()), 0..4).prop_map(|v| Some(Ent::Dir(v))),
        1 => Just(Some(Ent::Whiteout)),
        1 => Just(Some(Ent::AufsWhiteout)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// Lookup and readdir agree with a simple top-down model of the layers.
    #[test]
    fn merge_matches_model(layers in proptest::collection::vec(proptest::collection::vec(ent_strategy(), 4), 1..4)) {
        if !can_mknod() { return Ok(()); }
        let f = Fixture::new(layers.len());
        let names = ["a", "b", "c", "d"];
        for (li, layer) in layers.iter().enumerate() {
            for (ni, ent) in layer.iter().enumerate() {
                let p = f.lowers[li].join(names[ni]);
                match ent {
                    None => {}
                    Some(Ent::File(c)) => write(&p, &format!("{li}:{c}")),
                    Some(Ent::Dir(kids)) => {
                        std::fs::create_dir(&p).unwrap();
                        for (k, c) in kids {
                            let _ = std::fs::write(p.join(format!("k{k}")), format!("{li}:{c}"));
                        }
                    }
                    Some(Ent::Whiteout) => whiteout(&p),
                    Some(Ent::AufsWhiteout) => write(&f.lowers[li].join(format!(".wh.{}", names[ni])), ""),
                }
            }
        }
        // Model: top-down (last layer is the top).
        let mut expect: BTreeMap<String, String> = BTreeMap::new();
        for (ni, n) in names.iter().enumerate() {
            let mut dir_kids: Option<BTreeMap<String, String>> = None;
            for li in (0..layers.len()).rev() {
                match &layers[li][ni] {
                    None => continue,
                    Some(Ent::Whiteout) | Some(Ent::AufsWhiteout) => break,
                    Some(Ent::File(c)) => {
                        if dir_kids.is_none() { expect.insert(n.to_string(), format!("{li}:{c}")); }
                        break;
                    }
                    Some(Ent::Dir(kids)) => {
                        let m = dir_kids.get_or_insert_with(BTreeMap::new);
                        let mut first = BTreeMap::new();
                        for (k, c) in kids { first.insert(format!("k{k}"), format!("{li}:{c}")); }
                        for (k, v) in first { m.entry(format!("{n}/{k}")).or_insert(v); }
                    }
                }
            }
            if let Some(m) = dir_kids {
                expect.insert(n.to_string(), "dir".into());
                expect.extend(m);
            }
        }
        let ovl = f.overlay();
        let mut got: BTreeMap<String, String> = BTreeMap::new();
        let root = ovl.root();
        for e in ovl.readdir(&root).unwrap() {
            let name = e.name.to_string_lossy().into_owned();
            let node = ovl.lookup(&root, &e.name).unwrap();
            prop_assert_eq!(ovl.getattr(&node).unwrap().ino, e.ino);
            if e.kind == FileKind::Directory {
                got.insert(name.clone(), "dir".into());
                for k in ovl.readdir(&node).unwrap() {
                    got.insert(format!("{name}/{}", k.name.to_string_lossy()), read_all(&ovl, &format!("{name}/{}", k.name.to_string_lossy())));
                }
            } else {
                got.insert(name.clone(), read_all(&ovl, &name));
            }
        }
        prop_assert_eq!(got, expect);
    }
}

#[test]
fn concurrent_copy_up_and_namespace_changes() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("shared/log"), "base\n");
    for i in 0..20 {
        write(&f.lowers[0].join(format!("a/f{i}")), &format!("{i}"));
    }
    std::fs::create_dir_all(f.lowers[0].join("b")).unwrap();
    let ovl = Arc::new(f.overlay());
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for t in 0..8u32 {
        let ovl = ovl.clone();
        let tx = tx.clone();
        handles.push(std::thread::spawn(move || {
            // Everyone appends to the same lower file: exactly one copy-up must happen.
            let log = walk(&ovl, "shared/log").unwrap();
            let mut fh = ovl.open(&log, libc::O_WRONLY | libc::O_APPEND).unwrap();
            fh.write_all(format!("t{t}\n").as_bytes()).unwrap();
            let root = ovl.root();
            let a = walk(&ovl, "a").unwrap();
            let b = walk(&ovl, "b").unwrap();
            for i in 0..20u32 {
                let name = format!("f{i}");
                let (from, to) = if (i + t) % 2 == 0 { (&a, &b) } else { (&b, &a) };
                // Races are expected: ENOENT when another thread moved it first.
                match ovl.rename(
                    from,
                    OsStr::new(&name),
                    to,
                    OsStr::new(&name),
                    RenameFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(e) => assert_eq!(e.raw_os_error(), libc::ENOENT, "{e}"),
                }
                let d = format!("t{t}d{i}");
                ovl.mkdir(&root, OsStr::new(&d), 0o755, None).unwrap();
                let dn = walk(&ovl, &d).unwrap();
                ovl.create(&dn, OsStr::new("x"), 0o644, libc::O_WRONLY, None)
                    .unwrap();
                let _ = ovl.readdir(&a).unwrap();
                ovl.unlink(&dn, OsStr::new("x")).unwrap();
                ovl.rmdir(&root, OsStr::new(&d)).unwrap();
            }
            tx.send(()).unwrap();
        }));
    }
    for _ in 0..8 {
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("deadlock or panic in a worker");
    }
    for h in handles {
        h.join().unwrap();
    }
    let log = std::fs::read_to_string(f.upper.join("shared/log")).unwrap();
    assert!(log.starts_with("base\n"));
    let mut lines: Vec<&str> = log.lines().skip(1).collect();
    lines.sort();
    assert_eq!(lines, (0..8).map(|t| format!("t{t}")).collect::<Vec<_>>());
    // All 20 files are in exactly one of a/ and b/, with their content.
    let a = walk(&ovl, "a").unwrap();
    let b = walk(&ovl, "b").unwrap();
    let mut all: Vec<String> = names(&ovl, &a);
    all.extend(names(&ovl, &b));
    all.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(all, want);
    assert_eq!(names(&ovl, &ovl.root()), vec!["a", "b", "shared"]);
    assert_no_staging_left(&f.work);
}

#[test]
fn xino_inode_numbers_across_filesystems() {
    need_root!();
    // Lower on the temp dir's filesystem, upper on another one (tmpfs at /dev/shm, or the
    // target dir's disk when the temp dir is itself on that tmpfs): xino numbering.
    let lower_dev = std::fs::metadata(std::env::temp_dir()).unwrap().dev();
    let target = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"));
    let Some(other) = [Path::new("/dev/shm"), target]
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_dir() && m.dev() != lower_dev))
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs /dev/shm or the target dir on another filesystem than TMPDIR"
        );
        eprintln!("skipping: no second filesystem (/dev/shm, target dir)");
        return;
    };
    let lt = tempfile::tempdir().unwrap();
    let ut = tempfile::tempdir_in(other).unwrap();
    write(&lt.path().join("d/f"), "x");
    std::fs::create_dir(ut.path().join("u")).unwrap();
    std::fs::create_dir(ut.path().join("w")).unwrap();
    let stack = LayerStack::builder()
        .lower(lt.path())
        .upper(ut.path().join("u"), ut.path().join("w"))
        .xattr_namespace(XattrNamespace::Trusted)
        .build()
        .unwrap();
    let ovl = Overlay::new(stack).unwrap();
    let real = std::fs::metadata(lt.path().join("d/f")).unwrap().ino();
    let n = walk(&ovl, "d/f").unwrap();
    // Same numbering as a kernel mount with xino=on (observed: ino | 1 << 63).
    assert_eq!(n.ino(), real | 1 << 63);
    let root = ovl.root();
    let new = ovl.mkdir(&root, OsStr::new("new"), 0o755, None).unwrap();
    assert_eq!(
        new.ino(),
        std::fs::metadata(ut.path().join("u/new")).unwrap().ino()
    );
    drop(ovl.open(&n, libc::O_WRONLY).unwrap());
    assert_eq!(ovl.getattr(&n).unwrap().ino, real | 1 << 63);
}

/// Unmounts on drop (also when the test panics).
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn mount_tmpfs(at: &Path) -> MountGuard {
    rustix::mount::mount(
        "tmpfs",
        at,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    )
    .unwrap();
    MountGuard(at.to_path_buf())
}

fn sorted_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn layers_do_not_include_submounts() {
    need_root!();
    let f = Fixture::new(1);
    write(&f.lowers[0].join("mnt/covered"), "lower");
    write(&f.upper.join("usub/ucovered"), "upper");
    let _lm = mount_tmpfs(&f.lowers[0].join("mnt"));
    let _um = mount_tmpfs(&f.upper.join("usub"));
    write(&f.lowers[0].join("mnt/inside"), "tmpfs");
    write(&f.upper.join("usub/uinside"), "tmpfs");
    let covered_ino = {
        let mut it = std::fs::read_dir(&f.lowers[0]).unwrap();
        it.find(|e| e.as_ref().unwrap().file_name() == "mnt")
            .unwrap()
            .unwrap()
            .ino()
    };

    // The kernel: layers are private clones without submounts, covered directories show.
    let kdir = tempfile::tempdir().unwrap();
    let (ku, kw, km) = (
        kdir.path().join("u"),
        kdir.path().join("w"),
        kdir.path().join("m"),
    );
    for d in [&ku, &kw, &km] {
        std::fs::create_dir(d).unwrap();
    }
    write(&ku.join("usub/ucovered"), "upper");
    let _kum = mount_tmpfs(&ku.join("usub"));
    write(&ku.join("usub/uinside"), "tmpfs");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        f.lowers[0].display(),
        ku.display(),
        kw.display()
    );
    rustix::mount::mount(
        "overlay",
        &km,
        "overlay",
        rustix::mount::MountFlags::empty(),
        std::ffi::CString::new(opts).unwrap().as_c_str(),
    )
    .unwrap();
    let kmount = MountGuard(km.clone());
    let kernel_mnt = sorted_names(&km.join("mnt"));
    let kernel_usub = sorted_names(&km.join("usub"));
    let kernel_mnt_ino = std::fs::metadata(km.join("mnt")).unwrap().ino();
    drop(kmount);
    assert_eq!(kernel_mnt, vec!["covered"]);
    assert_eq!(kernel_usub, vec!["ucovered"]);

    // The engine on detached mounts (root may open_tree): the same view.
    {
        let ovl = f.overlay();
        assert!(ovl.layers.lowers[0].detached && ovl.layers.root(LayerRef::Upper).detached);
        let mnt = walk(&ovl, "mnt").unwrap();
        assert_eq!(names(&ovl, &mnt), kernel_mnt);
        assert_eq!(mnt.ino(), kernel_mnt_ino);
        assert_eq!(read_all(&ovl, "mnt/covered"), "lower");
        assert_eq!(errno(walk(&ovl, "mnt/inside")), libc::ENOENT);
        let usub = walk(&ovl, "usub").unwrap();
        assert_eq!(names(&ovl, &usub), kernel_usub);
        // Writes go to the covered upper directory, not into the tmpfs.
        ovl.create(&usub, OsStr::new("new"), 0o644, libc::O_WRONLY, None)
            .unwrap();
        assert_eq!(sorted_names(&f.upper.join("usub")), vec!["uinside"]);
        // Copy-up below a lower mount point lands in the covered upper path too.
        let n = walk(&ovl, "mnt/covered").unwrap();
        drop(ovl.open(&n, libc::O_WRONLY | libc::O_APPEND).unwrap());
        assert_eq!(sorted_names(&f.lowers[0].join("mnt")), vec!["inside"]);
    }
    // Undo the writes in the covered upper dirs (visible again once unmounted).
    drop(_um);
    std::fs::remove_file(f.upper.join("usub/new")).unwrap();
    let _um = mount_tmpfs(&f.upper.join("usub"));
    std::fs::remove_dir_all(f.upper.join("mnt")).unwrap();

    // Without open_tree (unprivileged): mount points read as empty directories with the
    // covered directory's inode number; nothing of the mounted filesystem shows.
    let ovl = Overlay::open_with(f.stack(), OverlayOptions::default(), false).unwrap();
    assert!(!ovl.layers.lowers[0].detached);
    let mnt = walk(&ovl, "mnt").unwrap();
    assert_eq!(mnt.kind(), FileKind::Directory);
    assert_eq!(mnt.ino(), covered_ino);
    assert!(names(&ovl, &mnt).is_empty());
    assert_eq!(errno(walk(&ovl, "mnt/inside")), libc::ENOENT);
    let root_list = ovl.readdir(&ovl.root()).unwrap();
    let e = root_list.iter().find(|e| e.name == "mnt").unwrap();
    assert_eq!((e.ino, e.kind), (covered_ino, FileKind::Directory));
    let usub = walk(&ovl, "usub").unwrap();
    assert!(names(&ovl, &usub).is_empty());
    assert_eq!(errno(walk(&ovl, "usub/uinside")), libc::ENOENT);
}

#[test]
fn lookup_attr_matches_lookup_and_getattr() {
    let f = Fixture::new(2);
    write(&f.lowers[0].join("d/low"), "bottom");
    write(&f.lowers[1].join("d/top"), "top layer");
    write(&f.upper.join("d/up"), "upper file");
    std::os::unix::fs::symlink("low", f.lowers[1].join("d/link")).unwrap();
    let ovl = f.overlay();
    let root = ovl.root();
    let (d, da) = ovl.lookup_attr(&root, OsStr::new("d")).unwrap();
    assert_eq!(da, ovl.getattr(&d).unwrap());
    assert_eq!(da.nlink, 1, "merged directory");
    for name in ["low", "top", "up", "link"] {
        let (n, a) = ovl.lookup_attr(&d, OsStr::new(name)).unwrap();
        assert_eq!(a, ovl.getattr(&n).unwrap(), "{name}");
        // Live node: the same node and attributes again.
        let (n2, a2) = ovl.lookup_attr(&d, OsStr::new(name)).unwrap();
        assert!(Arc::ptr_eq(&n, &n2));
        assert_eq!(a, a2);
    }
    assert_eq!(errno(ovl.lookup_attr(&d, OsStr::new("none"))), libc::ENOENT);
    let (dot, _) = ovl.lookup_attr(&d, OsStr::new(".")).unwrap();
    assert!(Arc::ptr_eq(&dot, &d));
}

/// The kernel overlay never updates the atime of a lower object: not when a lower file is
/// read, a lower directory listed, a lower symlink read, or a lower file copied up.
#[test]
fn lower_atimes_never_change() {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    // With private detached layer mounts (root) and without (plain fds, O_NOATIME).
    for detach in [true, false] {
        let f = Fixture::new(1);
        let l = &f.lowers[0];
        write(&l.join("d/x"), "x");
        write(&l.join("f"), "data");
        write(&l.join("c"), "copy me");
        std::os::unix::fs::symlink("f", l.join("s")).unwrap();
        let old = Timespec {
            tv_sec: 1_577_836_800, // 2020-01-01: older than mtime, so relatime would update
            tv_nsec: 0,
        };
        let ts = Timestamps {
            last_access: old,
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
        };
        for n in ["d", "f", "c", "s"] {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                l.join(n),
                &ts,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
        let ovl = Overlay::open_with(f.stack(), OverlayOptions::default(), detach).unwrap();
        assert_eq!(names(&ovl, &walk(&ovl, "d").unwrap()), ["x"]);
        assert_eq!(read_all(&ovl, "f"), "data");
        let s = walk(&ovl, "s").unwrap();
        assert_eq!(ovl.readlink(&s).unwrap(), "f");
        let c = walk(&ovl, "c").unwrap();
        let mut w = ovl.open(&c, libc::O_WRONLY | libc::O_APPEND).unwrap();
        w.write_all(b"!").unwrap();
        drop(w);
        assert_eq!(
            std::fs::read(f.upper.join("c")).unwrap(),
            b"copy me!".to_vec()
        );
        let mut checked = vec!["d", "f", "c"];
        // readlink touches the atime whatever the open flags; only a noatime mount of
        // the layer (detached, root) keeps it.
        if detach && rustix::process::geteuid().is_root() {
            checked.push("s");
        }
        for n in checked {
            let md = std::fs::symlink_metadata(l.join(n)).unwrap();
            assert_eq!(
                md.atime(),
                old.tv_sec,
                "lower {n} got a new atime (detach={detach})"
            );
        }
    }
}

/// Give directory `dir` a default ACL of `entries` (see `acl::encode`). False (the test
/// then returns) where the temp dir's filesystem has no POSIX ACLs, which fails under CI.
fn set_default_acl_or_skip(dir: &Path, entries: &[(u16, u16, u32)]) -> bool {
    let value = super::acl::encode(entries);
    match rustix::fs::setxattr(
        dir,
        super::acl::DEFAULT_ACL,
        &value,
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => true,
        Err(rustix::io::Errno::OPNOTSUPP) => {
            eprintln!("skipped: no POSIX ACLs on the temp dir's filesystem");
            assert!(
                std::env::var("CI").is_err(),
                "CI needs ACLs on the temp dir"
            );
            false
        }
        Err(e) => panic!("set the default ACL of {}: {e}", dir.display()),
    }
}

/// A default ACL on the workdir must not reach copied-up files (the kernel strips the ACLs
/// of `workdir/work`): the upper copy has exactly the lower file's xattrs.
#[test]
fn workdir_acl_is_not_inherited_by_copy_up() {
    let f = Fixture::new(1);
    write(&f.lowers[0].join("f"), "data");
    // user::rwx user:65534:rwx group::r-x mask::rwx other::r-x
    let entries = [
        (0x01, 7, u32::MAX),
        (0x02, 7, 65534),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ];
    if !set_default_acl_or_skip(&f.work, &entries) {
        return;
    }
    let ovl = f.overlay();
    let node = walk(&ovl, "f").unwrap();
    let mut w = ovl.open(&node, libc::O_WRONLY | libc::O_APPEND).unwrap();
    w.write_all(b"!").unwrap();
    drop(w);
    let up = f.upper.join("f");
    assert_eq!(std::fs::read(&up).unwrap(), b"data!");
    assert_eq!(get_xattr(&up, "system.posix_acl_access"), None);
    assert_eq!(
        std::fs::metadata(&up).unwrap().mode() & 0o7777,
        std::fs::metadata(f.lowers[0].join("f")).unwrap().mode() & 0o7777
    );
    // workdir/work itself: no ACL left, and (as root) mode 0 as the kernel makes it.
    let work = f.work.join("work");
    assert_eq!(get_xattr(&work, "system.posix_acl_default"), None);
    if rustix::process::geteuid().is_root() {
        assert_eq!(std::fs::metadata(&work).unwrap().mode() & 0o7777, 0);
    }
}

/// Copy-up keeps `security.capability` (and set-ID bits): the owner is set before the
/// xattrs and the mode, since chown(2) drops both. A chmod through the overlay keeps the
/// capability, as with the kernel; a write drops it (the upper filesystem does).
#[test]
fn copy_up_keeps_file_capabilities() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: setting security.capability needs CAP_SETFCAP");
        assert!(std::env::var("CI").is_err(), "CI runs as root");
        return;
    }
    let f = Fixture::new(1);
    // VFS_CAP_REVISION_2, cap_net_raw permitted.
    let cap: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    for n in ["c", "s"] {
        write(&f.lowers[0].join(n), "data");
        std::os::unix::fs::chown(f.lowers[0].join(n), Some(65534), Some(65534)).unwrap();
    }
    set_xattr(&f.lowers[0].join("c"), "security.capability", &cap);
    std::fs::set_permissions(
        f.lowers[0].join("s"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let ovl = f.overlay();
    let c = walk(&ovl, "c").unwrap();
    let mode = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    ovl.setattr(&c, &mode).unwrap();
    let up = f.upper.join("c");
    assert_eq!(
        get_xattr(&up, "security.capability").as_deref(),
        Some(&cap[..])
    );
    assert_eq!(std::fs::metadata(&up).unwrap().uid(), 65534);
    // A metadata-only change of another file keeps its set-uid bit and owner.
    let s = walk(&ovl, "s").unwrap();
    let times = SetAttr {
        mtime: Some(TimeSet::Now),
        ..SetAttr::default()
    };
    ovl.setattr(&s, &times).unwrap();
    let md = std::fs::metadata(f.upper.join("s")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o4755, 65534));
    // Writing drops the capability (the upper filesystem's file_remove_privs).
    let mut w = ovl.open(&c, libc::O_WRONLY | libc::O_APPEND).unwrap();
    w.write_all(b"!").unwrap();
    drop(w);
    assert_eq!(get_xattr(&up, "security.capability"), None);
}

/// A metacopy file (data in a lower layer) is refused with EPERM, in the upper layer and in
/// a lower one, as the kernel refuses it with metacopy=off, instead of showing empty data.
#[test]
fn metacopy_files_are_refused_not_shown_empty() {
    let f = Fixture::new(2);
    write(&f.lowers[0].join("data"), "lower data");
    // A metacopy upper file: the size of its data, no data, the marker.
    let up = f.upper.join("data");
    std::fs::File::create(&up).unwrap().set_len(10).unwrap();
    set_xattr(&up, "trusted.overlay.metacopy", b"");
    // A metacopy file in the top lower layer, and an empty one (nothing to hide).
    let low = f.lowers[1].join("low");
    std::fs::File::create(&low).unwrap().set_len(4).unwrap();
    set_xattr(&low, "trusted.overlay.metacopy", b"");
    write(&f.lowers[0].join("low"), "real");
    let empty = f.lowers[1].join("empty");
    std::fs::File::create(&empty).unwrap();
    set_xattr(&empty, "trusted.overlay.metacopy", b"");
    let ovl = f.overlay();
    assert_eq!(errno(walk(&ovl, "data")), libc::EPERM);
    assert_eq!(errno(walk(&ovl, "low")), libc::EPERM);
    assert_eq!(read_all(&ovl, "empty"), "");
    let e = walk(&ovl, "data").unwrap_err().to_string();
    assert!(e.contains("metacopy") && e.contains("data"), "{e}");
    drop(ovl);
    // With metacopy=on they are followed to their data; one with no data below is EIO.
    let ovl = Overlay::with_options(f.stack(), metacopy_options()).unwrap();
    assert_eq!(read_all(&ovl, "data"), "lower data");
    assert_eq!(read_all(&ovl, "low"), "real");
    assert_eq!(read_all(&ovl, "empty"), "");
    std::fs::File::create(f.upper.join("nodata"))
        .unwrap()
        .set_len(3)
        .unwrap();
    set_xattr(&f.upper.join("nodata"), "trusted.overlay.metacopy", b"");
    assert_eq!(errno(walk(&ovl, "nodata")), libc::EIO);
}

/// An absolute redirect through a directory that was itself renamed in a lower layer (an
/// upper with redirects later used as a lower): the rename on the way is followed for the
/// layers below, as the kernel's `ovl_lookup_layer` does (observed on 6.18: `d/q` with
/// redirect `/x/m`, where `x` in the top lower carries redirect `m`, lists `m/m` of the
/// bottom layer).
#[test]
fn absolute_redirect_through_a_renamed_lower_directory() {
    need_root!();
    let f = Fixture::new(2);
    write(&f.lowers[0].join("m/m/f"), "deep");
    std::fs::create_dir(f.lowers[1].join("x")).unwrap();
    set_xattr(&f.lowers[1].join("x"), "trusted.overlay.redirect", b"m");
    whiteout(&f.lowers[1].join("m"));
    std::fs::create_dir_all(f.upper.join("d/q")).unwrap();
    set_xattr(&f.upper.join("d/q"), "trusted.overlay.redirect", b"/x/m");
    let ovl = f.overlay();
    assert_eq!(names(&ovl, &walk(&ovl, "d/q").unwrap()), ["f"]);
    assert_eq!(read_all(&ovl, "d/q/f"), "deep");
}

/// Two names of one metadata-only copy (a hard link): once a write through one copies the
/// data, the other name's node learns it from the upper file (no second copy over the
/// written data, and no lock taken twice: this used to deadlock).
#[test]
fn metacopy_hard_link_names_see_one_data_copy() {
    use std::os::unix::fs::FileExt;
    let f = Fixture::new(1);
    write(&f.lowers[0].join("h"), "data");
    let ovl = Overlay::with_options(f.stack(), metacopy_options()).unwrap();
    let h = walk(&ovl, "h").unwrap();
    let chmod = |n: &NodeRef, mode| {
        let changes = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        ovl.setattr(n, &changes).unwrap();
    };
    chmod(&h, 0o600);
    let h2 = ovl.link(&h, &ovl.root(), OsStr::new("h2")).unwrap();
    ovl.open(&h, libc::O_WRONLY)
        .unwrap()
        .write_all_at(b"DA", 0)
        .unwrap();
    chmod(&h2, 0o644);
    ovl.getattr(&h2).unwrap();
    ovl.open(&h2, libc::O_WRONLY).unwrap();
    assert_eq!(read_all(&ovl, "h2"), "DAta");
    assert_eq!(read_all(&ovl, "h"), "DAta");
}

/// As the kernel refuses `userxattr,redirect_dir=on`: with `user.overlay.*` xattrs any user
/// could forge redirects.
#[test]
fn redirect_dir_on_is_refused_with_user_xattrs() {
    let f = Fixture::new(1);
    let stack = LayerStack::builder()
        .lowers(f.lowers.iter())
        .upper(&f.upper, &f.work)
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let opts = crate::OverlayOptions {
        redirect_dir: crate::mount::RedirectDir::On,
        ..Default::default()
    };
    let e = Overlay::with_options(stack, opts).unwrap_err();
    assert!(matches!(e, Error::OptionConflict(_)), "{e}");
}

fn metacopy_options() -> crate::OverlayOptions {
    crate::OverlayOptions {
        redirect_dir: crate::mount::RedirectDir::On,
        metacopy: true,
        ..Default::default()
    }
}

/// With metacopy=on a chmod of a lower file copies its metadata only (a sparse upper file
/// of the right size marked `overlay.metacopy`), reads still see the lower data, a rename
/// records where it is (`overlay.redirect`), and the first write-open copies the data in
/// place and drops the marker. metacopy=on without redirect_dir=on is refused.
#[test]
fn metacopy_copies_metadata_first_and_data_on_write() {
    use std::os::unix::fs::FileExt;
    let f = Fixture::new(1);
    write(&f.lowers[0].join("dir/big"), "0123456789");
    let ovl = Overlay::with_options(f.stack(), metacopy_options()).unwrap();
    let big = walk(&ovl, "dir/big").unwrap();
    let changes = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    ovl.setattr(&big, &changes).unwrap();
    let up = f.upper.join("dir/big");
    let md = std::fs::metadata(&up).unwrap();
    assert_eq!((md.len(), md.mode() & 0o777), (10, 0o600));
    assert_eq!(std::fs::read(&up).unwrap(), [0u8; 10], "no data copied");
    assert!(get_xattr(&up, "trusted.overlay.metacopy").is_some());
    assert!(big.is_lower_only(), "the data is still below");
    // As the kernel: the blocks of the data.
    let lower_blocks = std::fs::metadata(f.lowers[0].join("dir/big"))
        .unwrap()
        .blocks();
    assert_eq!(ovl.getattr(&big).unwrap().blocks, lower_blocks);
    assert_eq!(read_all(&ovl, "dir/big"), "0123456789");
    let dir = walk(&ovl, "dir").unwrap();
    ovl.rename(
        &dir,
        OsStr::new("big"),
        &ovl.root(),
        OsStr::new("moved"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert_eq!(
        get_xattr(&f.upper.join("moved"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/dir/big"[..])
    );
    assert_eq!(read_all(&ovl, "moved"), "0123456789");
    drop(ovl);
    // A fresh mount finds the data through the redirect, and a write copies it.
    let ovl = Overlay::with_options(f.stack(), metacopy_options()).unwrap();
    assert_eq!(read_all(&ovl, "moved"), "0123456789");
    let moved = walk(&ovl, "moved").unwrap();
    ovl.open(&moved, libc::O_WRONLY)
        .unwrap()
        .write_all_at(b"AB", 0)
        .unwrap();
    assert_eq!(read_all(&ovl, "moved"), "AB23456789");
    assert!(get_xattr(&f.upper.join("moved"), "trusted.overlay.metacopy").is_none());
    assert_eq!(std::fs::read(f.upper.join("moved")).unwrap(), b"AB23456789");
    drop(ovl);
    let opts = crate::OverlayOptions {
        metacopy: true,
        ..Default::default()
    };
    assert!(Overlay::with_options(f.stack(), opts).is_err());
}

/// A directory carrying `overlay.redirect` (renamed by a kernel mount with redirect_dir=on)
/// is merged with the lower directory its redirect names, as the kernel follows it by
/// default: a relative redirect (a bare name) in the same parent, an absolute one from the
/// lower roots; a redirect inside a lower layer is followed by the layers below it.
#[test]
fn redirected_directories_are_followed() {
    let f = Fixture::new(1);
    write(&f.lowers[0].join("d/a"), "a");
    write(&f.lowers[0].join("deep/inner/i"), "i");
    write(&f.lowers[0].join("keep"), "k");
    // `mv d d2` and `mv deep/inner x/moved` as the kernel records them.
    write(&f.upper.join("d2/new"), "n");
    set_xattr(&f.upper.join("d2"), "trusted.overlay.redirect", b"d");
    whiteout(&f.upper.join("d"));
    std::fs::create_dir_all(f.upper.join("x/moved")).unwrap();
    set_xattr(
        &f.upper.join("x/moved"),
        "trusted.overlay.redirect",
        b"/deep/inner",
    );
    std::fs::create_dir_all(f.upper.join("deep")).unwrap();
    whiteout(&f.upper.join("deep/inner"));
    let ovl = f.overlay();
    assert_eq!(names(&ovl, &ovl.root()), ["d2", "deep", "keep", "x"]);
    assert_eq!(names(&ovl, &walk(&ovl, "d2").unwrap()), ["a", "new"]);
    assert_eq!(read_all(&ovl, "d2/a"), "a");
    assert_eq!(names(&ovl, &walk(&ovl, "x/moved").unwrap()), ["i"]);
    assert_eq!(read_all(&ovl, "x/moved/i"), "i");
    assert!(names(&ovl, &walk(&ovl, "deep").unwrap()).is_empty());
    // Removing a lower name inside the redirected directory leaves a whiteout there.
    let d2 = walk(&ovl, "d2").unwrap();
    ovl.unlink(&d2, OsStr::new("a")).unwrap();
    assert!(is_whiteout_file(&f.upper.join("d2/a")));
    assert_eq!(names(&ovl, &d2), ["new"]);
    // A malformed redirect is refused.
    std::fs::create_dir(f.upper.join("bad")).unwrap();
    set_xattr(&f.upper.join("bad"), "trusted.overlay.redirect", b"../d");
    drop(ovl);
    let ovl = f.overlay();
    assert_eq!(errno(walk(&ovl, "bad")), libc::EINVAL);
    // A redirect in a lower layer (observed on 6.18): not read in the bottom layer (nothing
    // is below it); in a higher one followed by the layers below, or refused (EPERM) with
    // redirect_dir=nofollow.
    let g = Fixture::new(2);
    write(&g.lowers[0].join("r/x"), "x");
    write(&g.lowers[0].join("elsewhere/e"), "e");
    write(&g.lowers[1].join("r/y"), "y");
    set_xattr(
        &g.lowers[0].join("r"),
        "trusted.overlay.redirect",
        b"/elsewhere",
    );
    let ovl = g.overlay();
    assert_eq!(names(&ovl, &walk(&ovl, "r").unwrap()), ["x", "y"]);
    drop(ovl);
    set_xattr(
        &g.lowers[1].join("r"),
        "trusted.overlay.redirect",
        b"/elsewhere",
    );
    let ovl = g.overlay();
    assert_eq!(names(&ovl, &walk(&ovl, "r").unwrap()), ["e", "y"]);
    assert_eq!(read_all(&ovl, "r/e"), "e");
    drop(ovl);
    let opts = crate::OverlayOptions {
        redirect_dir: crate::mount::RedirectDir::NoFollow,
        ..Default::default()
    };
    let ovl = Overlay::with_options(g.stack(), opts).unwrap();
    assert_eq!(errno(walk(&ovl, "r")), libc::EPERM);
}

/// Concurrent lookups of one name (FUSE sends them in parallel) get one node: two live nodes
/// for one name would each copy the object up, and the second would fail with EEXIST.
#[test]
fn concurrent_lookups_of_a_name_share_one_node() {
    let f = Fixture::new(1);
    for i in 0..200 {
        write(&f.lowers[0].join(format!("n{i}")), "x");
    }
    let ovl = Arc::new(f.overlay());
    let barrier = Arc::new(std::sync::Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (ovl, barrier) = (ovl.clone(), barrier.clone());
            std::thread::spawn(move || {
                let root = ovl.root();
                (0..200)
                    .map(|i| {
                        barrier.wait();
                        ovl.lookup(&root, OsStr::new(&format!("n{i}"))).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Vec<NodeRef>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for i in 0..200 {
        for t in 1..all.len() {
            assert!(
                Arc::ptr_eq(&all[0][i], &all[t][i]),
                "n{i}: two live nodes for one name"
            );
        }
    }
}

/// The creator's umask applies where the parent has no default ACL, and not where it has
/// one (the ACL and the mode decide), as POSIX and the kernel overlay do.
#[test]
fn umask_applies_only_without_a_default_acl() {
    let f = Fixture::new(1);
    std::fs::create_dir(f.lowers[0].join("plain")).unwrap();
    std::fs::create_dir(f.lowers[0].join("acl")).unwrap();
    // user::rwx group::rwx other::rwx: equivalent to the mode, no umask.
    let entries = [
        (0x01, 7, u32::MAX),
        (0x04, 7, u32::MAX),
        (0x20, 7, u32::MAX),
    ];
    if !set_default_acl_or_skip(&f.lowers[0].join("acl"), &entries) {
        return;
    }
    let ovl = f.overlay();
    let mode = NewMode {
        mode: 0o666,
        umask: 0o022,
    };
    for (dir, want) in [("plain", 0o644), ("acl", 0o666)] {
        let d = walk(&ovl, dir).unwrap();
        ovl.create(
            &d,
            OsStr::new("f"),
            mode,
            libc::O_WRONLY | libc::O_EXCL,
            None,
        )
        .unwrap();
        let md = std::fs::metadata(f.upper.join(dir).join("f")).unwrap();
        assert_eq!(md.mode() & 0o777, want, "{dir}");
    }
    // A bare mode is taken as given.
    let d = walk(&ovl, "plain").unwrap();
    ovl.mkdir(&d, OsStr::new("sub"), 0o777, None).unwrap();
    let md = std::fs::metadata(f.upper.join("plain/sub")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o777);
}

/// Layers from strangers, users of a shared mount: depth, forged redirects, swapped objects.
mod hostile;

/// A rename over an object of another kind (a symlink over a file): the replaced node
/// answers with the replaced file's attributes from removal time, not with what took its
/// name (before, the rename stashed the newcomer's attributes; with getattr waiting out
/// removals in flight, it deadlocked on its own lock).
#[test]
fn rename_over_another_kind_keeps_the_replaced_objects_attributes() {
    let f = Fixture::new(1);
    write(&f.upper.join("file"), "twelve bytes");
    std::os::unix::fs::symlink("file", f.upper.join("link")).unwrap();
    let ovl = Arc::new(f.overlay());
    let victim = walk(&ovl, "file").unwrap();
    let ino = victim.ino();
    let (tx, rx) = std::sync::mpsc::channel();
    // On a thread of its own, so that a hang fails the test instead of stopping it.
    let o = ovl.clone();
    std::thread::spawn(move || {
        let r = o.rename(
            &o.root(),
            OsStr::new("link"),
            &o.root(),
            OsStr::new("file"),
            RenameFlags::empty(),
        );
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("rename hung")
        .unwrap();
    let a = ovl.getattr(&victim).unwrap();
    assert_eq!(
        (a.kind, a.size, a.nlink, a.ino),
        (FileKind::File, 12, 0, ino)
    );
    assert_eq!(walk(&ovl, "file").unwrap().kind(), FileKind::Symlink);
}
