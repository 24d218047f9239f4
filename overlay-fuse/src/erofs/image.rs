//! An EROFS image read in-process with the `erofs-rs` crate, addressed by the image's own
//! inode numbers (`nid`s): attributes, directory listings, lookups, file data, symlink
//! targets, extended attributes and the superblock's counts.
//!
//! `erofs-rs` checks every structure it reads (bounds, overflow, sortedness of directory
//! blocks, xattr names) and returns an error rather than panicking; on top of that this
//! module bounds what a hostile image can make us hold or do: the size, entries and name bytes of one
//! directory, listings kept in the cache, the length of a symbolic link target and of a
//! directory's path. Everything it keeps grows with what the image itself contains, never
//! with a number the image merely claims.
//!
//! A directory entry whose inode cannot be read is left out of the listing (logged); a
//! directory whose blocks cannot be read fails as a whole.
//!
//! `erofs-rs` 0.3 finds directories by path only (its by-inode directory reader is private),
//! so the image remembers, for each directory met so far, its parent and its name, and hands
//! the reader the path built from them.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use erofs_rs::backend::MmapImage;
use erofs_rs::types::Inode;
use erofs_rs::{EroFS, Xattrs};
use overlay_core::FileKind;
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Most entries one directory may have (beyond it: an error, not a partial listing).
pub const MAX_DIR_ENTRIES: usize = 1 << 21;
/// Largest directory (bytes of its entry blocks): the reader finds a name by reading the
/// blocks of each directory on the way, so this bounds the work of one lookup.
pub const MAX_DIR_BYTES: u64 = 256 << 20;
/// Most bytes of names one directory may have.
pub const MAX_DIR_NAME_BYTES: usize = 64 << 20;
/// Longest symbolic link target served (the kernel's own limit for a link is a page).
pub const MAX_SYMLINK_BYTES: u64 = 4096;
/// Longest path of a directory inside the image.
pub const MAX_PATH_BYTES: usize = 1 << 20;
/// Unreadable entries left out of one listing before the whole listing fails.
const MAX_BAD_ENTRIES: usize = 64;
/// Directory entries kept in the listing cache, all directories together (a larger single
/// directory is served but not kept).
const CACHED_ENTRIES: usize = 1 << 17;

/// The attributes of one inode of the image.
#[derive(Debug, Clone)]
pub struct NodeAttr {
    /// The image's inode number.
    pub nid: u64,
    /// Its kind (a whiteout of an overlay layer is a character device 0:0).
    pub kind: FileKind,
    /// Permission bits with set-user-ID, set-group-ID and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Owner, as stored in the image.
    pub uid: u32,
    /// Group, as stored in the image.
    pub gid: u32,
    /// Size in bytes (the target's length for a symbolic link).
    pub size: u64,
    /// Hard links.
    pub nlink: u32,
    /// Modification time (EROFS keeps one time; it stands for all three).
    pub mtime: SystemTime,
    /// Device number (major, minor) of a device node; (0, 0) otherwise.
    pub rdev: (u32, u32),
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The name (bytes: EROFS names need not be UTF-8).
    pub name: Vec<u8>,
    /// The inode it names.
    pub nid: u64,
    /// That inode's kind.
    pub kind: FileKind,
}

/// A sorted directory listing ("." and ".." left out).
pub type Listing = Arc<Vec<DirEntry>>;

/// Listings of recently used directories, evicted oldest first once they hold more than
/// [`CACHED_ENTRIES`] entries together.
#[derive(Default)]
struct ListingCache {
    map: HashMap<u64, Listing>,
    order: VecDeque<u64>,
    entries: usize,
}

impl ListingCache {
    fn get(&self, nid: u64) -> Option<Listing> {
        self.map.get(&nid).cloned()
    }

    fn insert(&mut self, nid: u64, l: Listing) {
        if l.len() > CACHED_ENTRIES || self.map.contains_key(&nid) {
            return;
        }
        while self.entries + l.len() > CACHED_ENTRIES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(o) = self.map.remove(&old) {
                self.entries -= o.len();
            }
        }
        self.entries += l.len();
        self.order.push_back(nid);
        self.map.insert(nid, l);
    }
}

/// A directory's parent (nid) and its name there.
type DirLink = (u64, Box<[u8]>);

/// An EROFS image opened for reading.
pub struct ErofsImage {
    fs: EroFS<MmapImage>,
    path: PathBuf,
    root: u64,
    /// Each directory met so far: its parent's nid and its name.
    dirs: Mutex<HashMap<u64, DirLink>>,
    listings: Mutex<ListingCache>,
}

impl std::fmt::Debug for ErofsImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErofsImage")
            .field("path", &self.path)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Size counts of the image, for `statfs`.
#[derive(Debug, Clone, Copy)]
pub struct ImageCounts {
    /// Blocks of the image.
    pub blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Inodes.
    pub inodes: u64,
}

impl ErofsImage {
    /// Open and check the image at `path`: its superblock, that it needs no codec or
    /// extra device this reader lacks, and its root directory.
    ///
    /// The file is memory-mapped: it must not be truncated while it is served (as with
    /// a loop device or erofsfuse, an image is not changed under a mount).
    pub fn open(path: &Path) -> Result<ErofsImage> {
        let file = std::fs::File::open(path).map_err(|e| image_err(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| image_err(path, "stat", e))?
            .len();
        if len < 2048 {
            return Err(image_err(
                path,
                "read the superblock",
                format!("{len} bytes is too short for an EROFS image"),
            ));
        }
        let map = crate::sys::map_image(&file).map_err(|e| image_err(path, "map", e))?;
        let fs = EroFS::new(map).map_err(|e| image_err(path, "read the superblock", e))?;
        let sb = *fs.super_block();
        // With COMPR_CFGS the field is the set of algorithms in use; without it, only LZ4
        // exists. Bit 0 is LZ4; the rest (MicroLZMA, DEFLATE, Zstandard) is not built in.
        const COMPR_CFGS: u32 = 0x2;
        if sb.feature_incompat & COMPR_CFGS != 0 && sb.compr_algs & !1 != 0 {
            let names: Vec<&str> = [(1, "MicroLZMA"), (2, "DEFLATE"), (3, "Zstandard")]
                .iter()
                .filter(|(bit, _)| sb.compr_algs & (1 << bit) != 0)
                .map(|(_, n)| *n)
                .collect();
            return Err(image_err(
                path,
                "read the superblock",
                format!(
                    "compressed with {}; ovl-erofs reads uncompressed and LZ4 images (erofsfuse reads the others)",
                    if names.is_empty() { "an unknown algorithm".to_string() } else { names.join(", ") }
                ),
            ));
        }
        let root = sb.root_inode_id();
        let me = ErofsImage {
            fs,
            path: path.to_path_buf(),
            root,
            dirs: Mutex::new(HashMap::new()),
            listings: Mutex::new(ListingCache::default()),
        };
        let r = me.attr(root)?;
        if r.kind != FileKind::Directory {
            return Err(me.err("read the root directory", "it is not a directory"));
        }
        // The root's listing must be readable for the image to be worth mounting.
        me.listing(root)?;
        Ok(me)
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's nid.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Blocks, block size and inode count from the superblock.
    pub fn counts(&self) -> ImageCounts {
        let sb = self.fs.super_block();
        ImageCounts {
            blocks: sb.block_count(),
            block_size: 1u32.checked_shl(sb.blk_size_bits.into()).unwrap_or(4096),
            inodes: sb.inos,
        }
    }

    fn err(&self, op: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        image_err(&self.path, op, reason)
    }

    fn inode(&self, nid: u64) -> Result<Inode> {
        self.fs
            .get_inode(nid)
            .map_err(|e| self.err(format!("read inode {nid}"), e))
    }

    /// The attributes of inode `nid`.
    pub fn attr(&self, nid: u64) -> Result<NodeAttr> {
        let i = self.inode(nid)?;
        self.attr_of(&i)
    }

    fn attr_of(&self, i: &Inode) -> Result<NodeAttr> {
        use std::os::unix::fs::PermissionsExt;
        let t = i.file_type();
        let kind = if t.is_file() {
            FileKind::File
        } else if t.is_dir() {
            FileKind::Directory
        } else if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_socket() {
            FileKind::Socket
        } else {
            return Err(self.err(format!("read inode {}", i.id()), "unknown file type"));
        };
        Ok(NodeAttr {
            nid: i.id(),
            kind,
            perm: (i.permissions().mode() & 0o7777) as u16,
            uid: i.uid(),
            gid: i.gid(),
            size: i.data_size(),
            nlink: i.nlink(),
            mtime: i.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            rdev: i.device().unwrap_or((0, 0)),
        })
    }

    /// The parent of directory `nid`, as far as listings have shown (the root for the root
    /// and for a directory not reached through a listing).
    pub fn parent(&self, nid: u64) -> u64 {
        self.dirs.lock().get(&nid).map_or(self.root, |(p, _)| *p)
    }

    /// The path of directory `nid` inside the image, from what listings have shown so far.
    fn dir_path(&self, nid: u64) -> Result<Vec<u8>> {
        let dirs = self.dirs.lock();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut len = 0usize;
        let mut at = nid;
        while at != self.root {
            // A chain longer than the number of directories known is a cycle.
            if parts.len() > dirs.len() {
                return Err(self.err(format!("find directory {nid}"), "directory cycle"));
            }
            let Some((parent, name)) = dirs.get(&at) else {
                return Err(self.err(
                    format!("find directory {nid}"),
                    "not reached through a listing",
                ));
            };
            len += name.len() + 1;
            if len > MAX_PATH_BYTES {
                return Err(self.err(format!("find directory {nid}"), "path too long"));
            }
            parts.push(name);
            at = *parent;
        }
        let mut p = Vec::with_capacity(len + 1);
        p.push(b'/');
        for (i, part) in parts.iter().rev().enumerate() {
            if i > 0 {
                p.push(b'/');
            }
            p.extend_from_slice(part);
        }
        Ok(p)
    }

    /// The entries of directory `nid`, sorted by name. Directories among them become
    /// reachable for their own listings.
    pub fn listing(&self, nid: u64) -> Result<Listing> {
        if let Some(l) = self.listings.lock().get(nid) {
            return Ok(l);
        }
        let path = self.dir_path(nid)?;
        let op = || format!("list directory {}", String::from_utf8_lossy(&path));
        let size = self.attr(nid)?.size;
        if size > MAX_DIR_BYTES {
            return Err(self.err(op(), format!("{size} bytes of entries is too large")));
        }
        let rd = self.fs.read_dir(&path[..]).map_err(|e| self.err(op(), e))?;
        let mut entries = Vec::new();
        let mut name_bytes = 0usize;
        let mut bad = 0usize;
        for e in rd {
            // An entry whose inode cannot be read is left out (and logged): the rest of the
            // directory stays usable. The reader may also repeat an error that does not
            // advance it, hence the cap.
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    bad += 1;
                    if bad > MAX_BAD_ENTRIES {
                        return Err(self.err(op(), err));
                    }
                    tracing::warn!("{}", self.err(op(), format!("entry left out: {err}")));
                    continue;
                }
            };
            if entries.len() >= MAX_DIR_ENTRIES {
                return Err(self.err(op(), format!("more than {MAX_DIR_ENTRIES} entries")));
            }
            let name = e.dir_entry.file_name();
            name_bytes += name.len();
            if name_bytes > MAX_DIR_NAME_BYTES {
                return Err(self.err(op(), "names too long in total"));
            }
            // An inode of a kind no file has is left out too, not the whole directory.
            let kind = match self.attr_of(&e.inode) {
                Ok(a) => a.kind,
                Err(err) => {
                    bad += 1;
                    if bad > MAX_BAD_ENTRIES {
                        return Err(err);
                    }
                    tracing::warn!("{}", self.err(op(), format!("entry left out: {err}")));
                    continue;
                }
            };
            entries.push(DirEntry {
                name: name.to_vec(),
                nid: e.inode.id(),
                kind,
            });
        }
        // Sorted within each block by the format; across blocks only a sound image is.
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        {
            let mut dirs = self.dirs.lock();
            for e in entries.iter().filter(|e| e.kind == FileKind::Directory) {
                if e.nid != self.root && e.nid != nid {
                    dirs.entry(e.nid)
                        .or_insert_with(|| (nid, e.name.clone().into_boxed_slice()));
                }
            }
        }
        let l: Listing = Arc::new(entries);
        self.listings.lock().insert(nid, l.clone());
        Ok(l)
    }

    /// Look `name` up in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<NodeAttr>> {
        let l = self.listing(dir)?;
        match l.binary_search_by(|e| e.name.as_slice().cmp(name)) {
            Ok(i) => self.attr(l[i].nid).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Up to `size` bytes of file `nid` from `offset` (fewer only at the end of the file).
    pub fn read(&self, nid: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let i = self.inode(nid)?;
        let op = || format!("read file {nid} at {offset}");
        let file = self.fs.open_inode_file(i).map_err(|e| self.err(op(), e))?;
        let end = file.size().min(offset.saturating_add(size as u64));
        let want = usize::try_from(end.saturating_sub(offset)).unwrap_or(0);
        let mut buf = vec![0u8; want];
        let mut done = 0;
        while done < want {
            let n = file
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(|e| self.err(op(), e))?;
            if n == 0 {
                return Err(self.err(op(), "the data ends before the file's size"));
            }
            done += n;
        }
        Ok(buf)
    }

    /// The target of symbolic link `nid`.
    pub fn readlink(&self, nid: u64) -> Result<Vec<u8>> {
        let i = self.inode(nid)?;
        let op = format!("read symbolic link {nid}");
        if i.data_size() > MAX_SYMLINK_BYTES {
            return Err(self.err(op, "target longer than a page"));
        }
        let t = self.fs.read_link_inode(i).map_err(|e| self.err(op, e))?;
        Ok(t.as_bytes().to_vec())
    }

    /// The extended attributes of inode `nid` (full names, e.g. `trusted.overlay.opaque`).
    pub fn xattrs(&self, nid: u64) -> Result<Xattrs> {
        let i = self.inode(nid)?;
        match self.fs.xattrs_inode(i) {
            Ok(x) => Ok(x),
            // A body of the header alone (newer mkfs.erofs writes one for its name
            // filter): no attributes, as the kernel reads it.
            Err(erofs_rs::Error::NotSupported(s)) if s == "header-only xattr body" => {
                Ok(Xattrs::new())
            }
            Err(e) => Err(self.err(format!("read extended attributes of {nid}"), e)),
        }
    }
}

fn image_err(path: &Path, op: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        op: op.into(),
        reason: reason.to_string(),
    }
}
