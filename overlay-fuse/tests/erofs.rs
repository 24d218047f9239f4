//! `ovl-erofs` and its reader against trees made into images by mkfs.erofs (plain, LZ4,
//! LZ4HC, chunk-based): the tree read through the reader and the tree served by a mount
//! equal the source (names, kinds, modes, owners, sizes, link counts, content, symlink
//! targets, device numbers, extended attributes); damaged images (truncated, garbage
//! superblock, random bytes changed) give errors, never a panic; a damaged file inode in a
//! mounted image gives EIO for that file while the rest is served.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{force_unmount, is_mounted, skip, wait_mounted};
use overlay_core::FileKind;
use overlay_fuse::erofs::image::ErofsImage;

const EROFS_BIN: &str = env!("CARGO_BIN_EXE_ovl-erofs");

/// Everything compared of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    /// Regular files and symlinks (a directory's size is the filesystem's business).
    size: Option<u64>,
    content: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
    rdev: Option<(u32, u32)>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

type Tree = BTreeMap<Vec<u8>, Node>;

/// mkfs.erofs and root (device nodes, owners, trusted.* attributes), or skip.
fn tools(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        skip(
            test,
            "needs root to make the source tree (mknod, chown, trusted.*)",
        );
        return false;
    }
    let ok = Command::new("mkfs.erofs")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        skip(test, "mkfs.erofs is not installed (erofs-utils)");
    }
    ok
}

fn put(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// A tree with what an overlay layer holds: files small, large (compressible or not) and
/// empty, a hard link, set-id bits, other owners, symlinks short and long, a whiteout
/// (char 0:0), another device, a FIFO, an opaque directory, xattrs of several prefixes (one
/// shared by many files, one large), a directory of many entries (several blocks), deep
/// nesting.
fn source_tree(r: &Path) {
    put(&r.join("small"), b"hello\n");
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    put(&r.join("big"), &big);
    let text: String = (0..5000).map(|i| format!("line {i} of a text\n")).collect();
    put(&r.join("text"), text.as_bytes());
    put(&r.join("empty"), b"");
    std::fs::hard_link(r.join("small"), r.join("hard")).unwrap();
    rustix::fs::chmod(r.join("small"), rustix::fs::Mode::from_raw_mode(0o4755)).unwrap();
    rustix::fs::chown(
        r.join("big"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
    )
    .unwrap();
    std::os::unix::fs::symlink("small", r.join("link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(1000), r.join("longlink")).unwrap();
    for (name, ty, major, minor) in [
        ("whiteout", rustix::fs::FileType::CharacterDevice, 0, 0),
        ("null", rustix::fs::FileType::CharacterDevice, 1, 3),
        ("blk", rustix::fs::FileType::BlockDevice, 7, 300),
        ("fifo", rustix::fs::FileType::Fifo, 0, 0),
    ] {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join(name),
            ty,
            rustix::fs::Mode::from_raw_mode(0o640),
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
    }
    put(&r.join("opaque/inner"), b"inner\n");
    setxattr(&r.join("opaque"), "trusted.overlay.opaque", b"y");
    setxattr(&r.join("opaque"), "user.overlay.opaque", b"y");
    for f in ["small", "big", "text", "empty", "opaque/inner"] {
        setxattr(&r.join(f), "user.shared", b"the same value");
    }
    setxattr(&r.join("text"), "user.large", &[b'v'; 3000]);
    setxattr(&r.join("big"), "security.test", b"label");
    for i in 0..400 {
        put(
            &r.join(format!("many/entry-with-a-longer-name-{i:04}")),
            b"",
        );
    }
    let mut deep = r.to_path_buf();
    for i in 0..40 {
        deep.push(format!("d{i}"));
    }
    put(&deep.join("leaf"), b"deep\n");
}

fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap();
    let mut out = BTreeMap::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        let k = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut v).unwrap();
        out.insert(name.to_vec(), v[..k].to_vec());
    }
    out
}

/// The tree under `root` through the file system (a source tree, or a mount).
fn snapshot_fs(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut queue: VecDeque<(PathBuf, Vec<u8>)> = VecDeque::from([(root.to_path_buf(), vec![])]);
    while let Some((dir, rel)) = queue.pop_front() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let mut name = rel.clone();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(e.file_name().as_bytes());
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_file() {
                'f'
            } else if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                's'
            };
            let rdev = matches!(kind, 'c' | 'b')
                .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())));
            let node = Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink() as u32,
                size: matches!(kind, 'f' | 'l').then_some(md.len()),
                content: (kind == 'f').then(|| std::fs::read(&p).unwrap()),
                target: (kind == 'l').then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                rdev,
                xattrs: xattrs_of(&p),
            };
            if kind == 'd' {
                queue.push_back((p, name.clone()));
            }
            out.insert(name, node);
        }
    }
    out
}

/// The tree of an image through the reader.
fn snapshot_image(img: &ErofsImage) -> Tree {
    let mut out = Tree::new();
    let mut queue: VecDeque<(u64, Vec<u8>)> = VecDeque::from([(img.root(), vec![])]);
    while let Some((dir, rel)) = queue.pop_front() {
        for e in img.listing(dir).unwrap().iter() {
            let mut name = rel.clone();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(&e.name);
            let a = img.attr(e.nid).unwrap();
            assert_eq!(a.kind, e.kind);
            let kind = match a.kind {
                FileKind::File => 'f',
                FileKind::Directory => 'd',
                FileKind::Symlink => 'l',
                FileKind::CharDevice => 'c',
                FileKind::BlockDevice => 'b',
                FileKind::Fifo => 'p',
                FileKind::Socket => 's',
            };
            let node = Node {
                kind,
                mode: a.perm.into(),
                uid: a.uid,
                gid: a.gid,
                nlink: a.nlink,
                size: matches!(kind, 'f' | 'l').then_some(a.size),
                content: (kind == 'f').then(|| {
                    // In uneven pieces, as the kernel might ask.
                    let mut data = Vec::new();
                    while (data.len() as u64) < a.size {
                        let piece = img.read(e.nid, data.len() as u64, 70_001).unwrap();
                        assert!(!piece.is_empty());
                        data.extend_from_slice(&piece);
                    }
                    assert!(img.read(e.nid, a.size, 10).unwrap().is_empty());
                    data
                }),
                target: (kind == 'l').then(|| img.readlink(e.nid).unwrap()),
                rdev: matches!(kind, 'c' | 'b').then_some(a.rdev),
                xattrs: img.xattrs(e.nid).unwrap(),
            };
            if kind == 'd' {
                queue.push_back((e.nid, name.clone()));
            }
            out.insert(name, node);
        }
    }
    out
}

fn mkfs(src: &Path, image: &Path, opts: &[&str]) {
    // mkfs.erofs 1.5 cannot write a chunk-based image onto tmpfs (EIO): that one is made
    // in cargo's target directory and copied.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let chunked = opts.iter().any(|o| o.starts_with("--chunksize"));
    let out = if chunked {
        scratch.path().join("image")
    } else {
        image.to_path_buf()
    };
    let o = Command::new("mkfs.erofs")
        .arg("--quiet")
        .args(opts)
        .arg(&out)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mkfs.erofs {opts:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if chunked {
        std::fs::copy(&out, image).unwrap();
    }
}

fn assert_same(want: &Tree, got: &Tree, what: &str) {
    let wk: Vec<_> = want.keys().map(|k| String::from_utf8_lossy(k)).collect();
    let gk: Vec<_> = got.keys().map(|k| String::from_utf8_lossy(k)).collect();
    assert_eq!(wk, gk, "{what}: names");
    for (k, w) in want {
        assert_eq!(
            Some(w),
            got.get(k),
            "{what}: {}",
            String::from_utf8_lossy(k)
        );
    }
}

const LAYOUTS: [&[&str]; 4] = [&[], &["-zlz4"], &["-zlz4hc"], &["--chunksize=4096"]];

#[test]
fn the_reader_sees_the_source_tree_in_every_layout() {
    if !tools("the_reader_sees_the_source_tree_in_every_layout") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source_tree(&src);
    let want = snapshot_fs(&src);
    assert!(want.len() > 440, "the source tree is complete");
    for (i, opts) in LAYOUTS.iter().enumerate() {
        let image = t.path().join(format!("{i}.erofs"));
        mkfs(&src, &image, opts);
        let img = ErofsImage::open(&image).unwrap();
        assert_same(
            &want,
            &snapshot_image(&img),
            &format!("mkfs.erofs {opts:?}"),
        );
        assert!(img.lookup(img.root(), b"absent").unwrap().is_none());
        let c = img.counts();
        assert_eq!(c.block_size, 4096);
        assert!(c.blocks * 4096 <= std::fs::metadata(&image).unwrap().len());
    }
}

/// A mount of `ovl-erofs IMAGE MNT` (daemonized); unmounted, and its server gone, on drop.
struct Served {
    mnt: PathBuf,
}

impl Served {
    fn start(image: &Path, mnt: &Path) -> Served {
        let o = Command::new(EROFS_BIN)
            .arg(image)
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ovl-erofs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(is_mounted(mnt), "mounted when ovl-erofs returned");
        Served {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
        assert!(wait_mounted(&self.mnt, false, Duration::from_secs(10)));
    }
}

#[test]
fn a_mount_serves_the_source_tree() {
    if !tools("a_mount_serves_the_source_tree")
        || !common::can_mount("a_mount_serves_the_source_tree")
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source_tree(&src);
    let want = snapshot_fs(&src);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for (i, opts) in [&[][..], &["-zlz4hc"]].iter().enumerate() {
        let image = t.path().join(format!("{i}.erofs"));
        mkfs(&src, &image, opts);
        let served = Served::start(&image, &mnt);
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.contains(&format!(" {} ", mnt.display())))
            .unwrap();
        assert!(line.contains(" - fuse.ovl-erofs "), "{line}");
        assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
        assert_same(&want, &snapshot_fs(&mnt), &format!("served {opts:?}"));
        // Read-only: nothing can be changed.
        let e = std::fs::write(mnt.join("small"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        // Hard links are one inode; d_ino is st_ino.
        let ino = |n: &str| std::fs::symlink_metadata(mnt.join(n)).unwrap().ino();
        assert_eq!(ino("small"), ino("hard"));
        for e in std::fs::read_dir(&mnt).unwrap() {
            let e = e.unwrap();
            assert_eq!(e.ino(), ino(e.file_name().to_str().unwrap()));
        }
        drop(served);
    }
}

/// An xorshift generator: the same damage on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Read everything readable of a (damaged) image; errors are expected, panics are not.
fn read_all(path: &Path) -> usize {
    let Ok(img) = ErofsImage::open(path) else {
        return 0;
    };
    let mut seen = 0;
    let mut queue = VecDeque::from([img.root()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(l) = img.listing(dir) else { continue };
        for e in l.iter() {
            seen += 1;
            if seen > 5000 {
                return seen;
            }
            let _ = img.xattrs(e.nid);
            match e.kind {
                FileKind::Directory => queue.push_back(e.nid),
                FileKind::File => {
                    let _ = img.read(e.nid, 0, 1 << 20);
                }
                FileKind::Symlink => {
                    let _ = img.readlink(e.nid);
                }
                _ => {}
            }
        }
    }
    seen
}

#[test]
fn damaged_images_give_errors_not_panics() {
    if !tools("damaged_images_give_errors_not_panics") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source_tree(&src);
    let bad = t.path().join("bad.erofs");
    for (i, opts) in LAYOUTS.iter().enumerate() {
        let image = t.path().join(format!("{i}.erofs"));
        mkfs(&src, &image, opts);
        let good = std::fs::read(&image).unwrap();
        assert!(read_all(&image) > 440);
        // Truncated: nothing, inside the superblock, after it, halfway, one block short.
        for len in [0, 1000, 1100, 2048, 4096, good.len() / 2, good.len() - 4096] {
            std::fs::write(&bad, &good[..len]).unwrap();
            read_all(&bad);
            // (With less than the superblock nothing opens; with more, the root may be
            // whole and the errors come later.)
            if len <= 1100 {
                assert!(ErofsImage::open(&bad).is_err(), "truncated to {len}");
            }
        }
        // A garbage superblock.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + i as u64);
        for _ in 0..20 {
            let mut d = good.clone();
            for b in &mut d[1024..1024 + 128] {
                *b = rng.next() as u8;
            }
            std::fs::write(&bad, &d).unwrap();
            assert!(ErofsImage::open(&bad).is_err());
        }
        // Random bytes changed, mostly in the metadata at the front.
        for round in 0..150 {
            let mut d = good.clone();
            let span = if round % 2 == 0 {
                16384.min(d.len())
            } else {
                d.len()
            };
            for _ in 0..1 + rng.next() % 8 {
                let at = (rng.next() as usize) % span;
                d[at] = rng.next() as u8;
            }
            std::fs::write(&bad, &d).unwrap();
            read_all(&bad);
        }
    }
    // The command says what is wrong and mounts nothing.
    std::fs::write(&bad, vec![0x5a; 8192]).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let o = Command::new(EROFS_BIN)
        .arg(&bad)
        .arg(&mnt)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "ovl-erofs: EROFS image {}: read the superblock: ",
            bad.display()
        )),
        "{err}"
    );
    assert!(!is_mounted(&mnt));
}

/// The on-disk offset of inode `nid`: the metadata block address (superblock + 40) times
/// the block size, plus 32 bytes per nid.
fn inode_offset(image: &[u8], nid: u64) -> usize {
    let meta = u32::from_le_bytes(image[1024 + 40..1024 + 44].try_into().unwrap()) as u64;
    (meta * 4096 + nid * 32) as usize
}

#[test]
fn a_damaged_file_gives_eio_while_the_rest_is_served() {
    if !tools("a_damaged_file_gives_eio_while_the_rest_is_served")
        || !common::can_mount("a_damaged_file_gives_eio_while_the_rest_is_served")
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source_tree(&src);
    let image = t.path().join("x.erofs");
    mkfs(&src, &image, &[]);
    let nid = {
        let img = ErofsImage::open(&image).unwrap();
        img.lookup(img.root(), b"big").unwrap().unwrap().nid
    };
    let mut d = std::fs::read(&image).unwrap();
    // Its data block address (at +16 in both inode versions) far beyond the image.
    let at = inode_offset(&d, nid) + 16;
    d[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    std::fs::write(&image, &d).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _served = Served::start(&image, &mnt);
    assert_eq!(std::fs::metadata(mnt.join("big")).unwrap().len(), 300_000);
    let e = std::fs::read(mnt.join("big")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(std::fs::read(mnt.join("small")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read_dir(mnt.join("many")).unwrap().count(), 400);
}

/// A hostile image whose directory holds a name with `/` in it: never listed (a kernel
/// refuses such a name in a READDIR reply, and it would name another path inside the
/// image). erofs-rs refuses the directory block: an error, not a panic.
#[test]
fn a_name_with_a_slash_is_never_listed() {
    if !tools("a_name_with_a_slash_is_never_listed") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    put(&src.join("slashQname"), b"x");
    put(&src.join("ok"), b"ok");
    let image = t.path().join("x.erofs");
    mkfs(&src, &image, &[]);
    let mut d = std::fs::read(&image).unwrap();
    let at = d
        .windows(10)
        .position(|w| w == b"slashQname")
        .expect("the name is stored in the image");
    d[at + 5] = b'/';
    std::fs::write(&image, &d).unwrap();
    // Refused as soon as the root is read (at open, erofs-rs 0.3), or left out later.
    let Ok(img) = ErofsImage::open(&image) else {
        return;
    };
    if let Ok(l) = img.listing(img.root()) {
        assert!(l.iter().all(|e| !e.name.contains(&b'/')), "listed: {l:?}");
    }
    assert!(!matches!(
        img.lookup(img.root(), b"slash/name"),
        Ok(Some(_))
    ));
}
