//! Snapshots of a directory tree (a merged view or an upper layer on disk) and their diff.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Kind of an entry, with whiteouts told apart from other character devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device 0/0: an overlay whiteout.
    Whiteout,
    /// Any other character device (device number).
    CharDev(u64),
    /// Block device, FIFO or socket.
    Special,
}

/// What is compared for one entry. Times, owners (always root here), inode numbers and
/// directory sizes are not.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Kind.
    pub kind: EntryKind,
    /// `st_mode & 0o7777` (0 for whiteouts: the kernel shares one whiteout inode).
    pub perm: u32,
    /// Owner (0 for whiteouts).
    pub uid: u32,
    /// Link count of non-directories (not of whiteouts).
    pub nlink: Option<u64>,
    /// Link count of whiteouts: the kernel links all the whiteouts it makes for unlink and
    /// rmdir to one shared inode, so this is their number (plus the shared one in the
    /// workdir), while a rename's whiteout (RENAME_WHITEOUT) stands alone.
    pub whiteout_links: Option<u64>,
    /// Size of regular files and symlinks.
    pub size: Option<u64>,
    /// Content of regular files.
    pub content: Option<Vec<u8>>,
    /// Target of symlinks.
    pub target: Option<Vec<u8>>,
    /// Extended attributes (after the snapshot's filter).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Other paths in the tree that are the same inode (hard links), sorted.
    pub links: Vec<String>,
    /// True while the modification time is still the fixture's ([`FIXTURE_MTIME`]): copy-up
    /// must keep it, changing content or entries must not.
    pub mtime_kept: bool,
    /// For merged views compared by [`crate::common::run_case`]: the path that had the same
    /// inode number before the operations (inode numbers survive copy-up and rename).
    pub same_inode_as: Option<String>,
}

/// The modification time the fixture gives every object (2001-09-09), so that any change to
/// it is visible however coarse the clock.
pub const FIXTURE_MTIME: (i64, u32) = (1_000_000_000, 0);

fn lossy(b: &[u8]) -> String {
    if b.len() > 40 {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&b[..40]),
            b.len()
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(b))
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:04o}", self.kind, self.perm)?;
        if self.uid != 0 {
            write!(f, " uid={}", self.uid)?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        if let Some(n) = self.whiteout_links {
            write!(f, " whiteout_links={n}")?;
        }
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(c) = &self.content {
            write!(f, " content={}", lossy(c))?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {}", lossy(t))?;
        }
        for (k, v) in &self.xattrs {
            write!(f, " {k}={}", lossy(v))?;
        }
        if !self.links.is_empty() {
            write!(f, " links={:?}", self.links)?;
        }
        if !self.mtime_kept {
            write!(f, " mtime=changed")?;
        }
        if let Some(p) = &self.same_inode_as {
            write!(f, " ino=initial:/{p}")?;
        }
        Ok(())
    }
}

/// A snapshot: relative path (`""` for the root) to entry, plus each path's inode number
/// (meaningful only within one snapshot's backend, so not compared directly).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// The entries.
    pub entries: BTreeMap<String, Entry>,
    /// Inode number of every entry.
    pub inos: BTreeMap<String, u64>,
}

impl Tree {
    /// Fill in [`Entry::same_inode_as`] from the inode numbers of `initial` (a snapshot of
    /// the same backend before the operations).
    pub fn mark_identity(&mut self, initial: &Tree) {
        // Hard links in the initial tree (a case that starts from an upper written before,
        // see the interchange tests) are known by their first path.
        let mut by_ino: BTreeMap<u64, &String> = BTreeMap::new();
        for (p, ino) in &initial.inos {
            by_ino.entry(*ino).or_insert(p);
        }
        for (p, e) in self.entries.iter_mut() {
            e.same_inode_as = self
                .inos
                .get(p)
                .and_then(|i| by_ino.get(i))
                .map(|s| s.to_string());
        }
    }
}

/// Which extended attributes a snapshot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrFilter {
    /// Everything `listxattr` shows (a merged view: private attributes must already be hidden).
    All,
    /// An upper layer on disk: everything except the overlay's bookkeeping attributes whose
    /// values are implementation details (`origin`, `impure`, `nlink`, `uuid`). `opaque` and
    /// `redirect` are kept.
    UpperLayer,
}

impl XattrFilter {
    /// True when attribute `name` is recorded.
    pub fn keeps(self, name: &str) -> bool {
        match self {
            XattrFilter::All => true,
            XattrFilter::UpperLayer => !matches!(
                name,
                "trusted.overlay.origin"
                    | "trusted.overlay.impure"
                    | "trusted.overlay.nlink"
                    | "trusted.overlay.uuid"
            ),
        }
    }
}

/// Builder used by snapshot functions: collects entries and inode numbers, then fills in
/// [`Entry::links`].
#[derive(Default)]
pub struct TreeBuilder {
    entries: BTreeMap<String, Entry>,
    inos: BTreeMap<String, u64>,
}

impl TreeBuilder {
    /// Record `entry` at `path` with its inode number.
    pub fn add(&mut self, path: String, entry: Entry, ino: u64) {
        self.inos.insert(path.clone(), ino);
        self.entries.insert(path, entry);
    }

    /// Finish: compute hard-link groups (among entries that have a link count, i.e. not
    /// directories and not whiteouts, which the kernel links to one shared inode).
    pub fn finish(mut self) -> Tree {
        let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (p, ino) in &self.inos {
            if self.entries[p].nlink.is_some() {
                by_ino.entry(*ino).or_default().push(p.clone());
            }
        }
        for group in by_ino.values().filter(|g| g.len() > 1) {
            for p in group {
                let others = group.iter().filter(|o| *o != p).cloned().collect();
                self.entries.get_mut(p).unwrap().links = others;
            }
        }
        Tree {
            entries: self.entries,
            inos: self.inos,
        }
    }
}

/// Join a relative path and a name.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// All xattrs of `path` (not following symlinks) that `filter` keeps.
pub fn path_xattrs(path: &Path, filter: XattrFilter) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(e) => panic!("listxattr {}: {e}", path.display()),
    };
    for name in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !filter.keeps(&name) {
            continue;
        }
        let mut val = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut val[..])
            .unwrap_or_else(|e| panic!("getxattr {name} {}: {e}", path.display()));
        val.truncate(len);
        out.insert(name, val);
    }
    out
}

/// Snapshot a real directory tree (a mount point or an upper layer) without following
/// symlinks.
pub fn snapshot_dir(root: &Path, filter: XattrFilter) -> Tree {
    let mut b = TreeBuilder::default();
    walk_dir(root, "", filter, &mut b);
    b.finish()
}

fn walk_dir(root: &Path, rel: &str, filter: XattrFilter, b: &mut TreeBuilder) {
    let full = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let md =
        fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_char_device() && md.rdev() == 0 {
        EntryKind::Whiteout
    } else if ft.is_char_device() {
        EntryKind::CharDev(md.rdev())
    } else {
        EntryKind::Special
    };
    let plain = !matches!(kind, EntryKind::Dir | EntryKind::Whiteout);
    let entry = Entry {
        kind,
        perm: if kind == EntryKind::Whiteout {
            0
        } else {
            md.mode() & 0o7777
        },
        uid: if kind == EntryKind::Whiteout {
            0
        } else {
            md.uid()
        },
        nlink: plain.then_some(md.nlink()),
        whiteout_links: (kind == EntryKind::Whiteout).then_some(md.nlink()),
        size: matches!(kind, EntryKind::File | EntryKind::Symlink).then_some(md.size()),
        content: (kind == EntryKind::File)
            .then(|| fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))),
        target: (kind == EntryKind::Symlink).then(|| {
            fs::read_link(&full)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", full.display()))
                .as_os_str()
                .as_bytes()
                .to_vec()
        }),
        xattrs: path_xattrs(&full, filter),
        links: Vec::new(),
        mtime_kept: (md.mtime(), md.mtime_nsec() as u32) == FIXTURE_MTIME,
        same_inode_as: None,
    };
    b.add(rel.to_string(), entry, md.ino());
    if kind == EntryKind::Dir {
        let mut names: Vec<_> = fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", full.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk_dir(root, &join(rel, &n.to_string_lossy()), filter, b);
        }
    }
}

/// Describe how `a` and `b` differ, or `None` when they are equal.
pub fn diff(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> Option<String> {
    let mut out = String::new();
    for (p, ea) in &a.entries {
        match b.entries.get(p) {
            None => out.push_str(&format!("  /{p}: only in {a_name}: {ea:?}\n")),
            Some(eb) if eb != ea => out.push_str(&format!(
                "  /{p}:\n      {a_name}: {ea:?}\n      {b_name}: {eb:?}\n"
            )),
            Some(_) => {}
        }
    }
    for (p, eb) in &b.entries {
        if !a.entries.contains_key(p) {
            out.push_str(&format!("  /{p}: only in {b_name}: {eb:?}\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}
