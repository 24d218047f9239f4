//! Apply an OCI layer tar onto a directory: [`apply`].
//!
//! The compression (none, gzip, zstd) is detected. Two output formats ([`Format`]):
//! - [`Format::Overlay`]: the kernel's on-disk format, for a layer directory used as a lower
//!   or upper: `.wh.NAME` becomes a whiteout (character device 0/0; if the filesystem or the
//!   caller cannot make one, an xattr whiteout: an empty file with `overlay.whiteout` in a
//!   directory marked `overlay.opaque=x`), `.wh..wh..opq` becomes `overlay.opaque=y`.
//! - [`Format::Plain`]: a plain tree the layer is applied to, as `docker load` does: the
//!   whiteouts delete, an opaque marker empties the directory of what the archive did not put
//!   there.
//!
//! Safety: every path is resolved below the target through descriptors with openat2
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, or an `O_NOFOLLOW` walk):
//! a symlink, from the archive or already in the target, is never followed; a leading `/` is
//! dropped (as GNU tar and containerd do); a `..` component is refused; a hard link must name
//! an entry already inside the target. The first hostile or broken entry stops the apply with
//! one [`Error::Entry`] naming it; what was applied before it stays.
//!
//! What the caller may not do is adjusted and reported in [`ApplyReport::adjustments`]:
//! ownership (without CAP_CHOWN), set-ID bits (dropped when ownership is not kept), device
//! nodes (without CAP_MKNOD), `security.capability` and `trusted.*` xattrs, and overlay-private
//! xattrs from the archive (stored escaped in overlay format, left out in plain format).
//! Duplicate entries: the last one wins. Limits ([`Limits`]) bound sizes, names, depth and
//! decompression ratio.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use overlay_core::XattrNamespace;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::Serialize;

use crate::compress::{open_stream, BombLimits, Compression};
use crate::digest::PipelinedHashReader;
use crate::error::Error;
use crate::tar::reader::{Entry, EntryType, ReadError, ReadLimits, TarReader};
use crate::target::{self, join, Root, WalkError};

/// How the layer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The kernel overlay's on-disk format (whiteouts and opaque xattrs).
    #[default]
    Overlay,
    /// A plain tree: whiteouts delete, opaque markers empty directories.
    Plain,
}

/// Bounds on what an archive may make the apply do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of (uncompressed) tar stream. Default 1 TiB.
    pub max_bytes: u64,
    /// Most tar bytes per compressed byte once `ratio_after` bytes are out. Default 1024 (gzip cannot
    /// do better than ~1032:1; zstd can, only on data made to be a bomb).
    pub max_ratio: u64,
    /// Tar bytes out after which the ratio is checked. Default 256 MiB.
    pub ratio_after: u64,
    /// Most entries. Default 10 million.
    pub max_entries: u64,
    /// Longest path or link target, bytes. Default 4096 (PATH_MAX).
    pub max_path: usize,
    /// Longest path component, bytes. Default 255 (NAME_MAX).
    pub max_name: usize,
    /// Largest PAX header or GNU long name, bytes. Default 1 MiB.
    pub max_header_data: u64,
    /// Largest xattr value, bytes. Default 64 KiB (the kernel's limit).
    pub max_xattr_value: usize,
    /// Most xattrs per entry. Default 1024.
    pub max_xattrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 40,
            max_ratio: 1024,
            ratio_after: 256 << 20,
            max_entries: 10_000_000,
            max_path: 4096,
            max_name: 255,
            max_header_data: 1 << 20,
            max_xattr_value: 65536,
            max_xattrs: 1024,
        }
    }
}

/// Options of [`apply`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Output format.
    pub format: Format,
    /// Limits.
    pub limits: Limits,
    /// The overlay xattr namespace (overlay format): `None` picks `trusted.` for root and
    /// `user.` (userxattr stacks) otherwise.
    pub xattr_namespace: Option<XattrNamespace>,
    /// Keep owners from the archive: `None` means when running as root.
    pub same_owner: Option<bool>,
}

/// What was done differently from what the archive asked, for one entry.
#[derive(Debug, Clone, Serialize)]
pub struct Adjustment {
    /// The entry's path inside the target.
    #[serde(serialize_with = "crate::ser_path")]
    pub path: PathBuf,
    /// `skipped` (nothing written) or `changed` (written differently).
    pub action: &'static str,
    /// What and why.
    pub reason: String,
}

/// The result of [`apply`].
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// The compression detected.
    pub compression: Compression,
    /// `sha256:` of the uncompressed tar (the layer's OCI `diff_id`).
    pub diff_id: String,
    /// Bytes of uncompressed tar read.
    pub tar_size: u64,
    /// Entries applied (whiteouts included).
    pub entries: u64,
    /// Entries written differently or skipped, in archive order (ownership differences are
    /// counted in `owners_not_kept` instead, as they would concern every entry).
    pub adjustments: Vec<Adjustment>,
    /// Entries whose owner from the archive was not applied (the caller may not chown).
    pub owners_not_kept: u64,
}

/// Apply the layer file `archive` onto the directory `target` (which must exist).
///
/// ```no_run
/// use overlay_layers::apply::{apply_file, ApplyOptions, Format};
/// let opts = ApplyOptions { format: Format::Overlay, ..Default::default() };
/// let report = apply_file("layer.tar.gz", "/srv/layers/1", &opts)?;
/// println!("{} entries, diff_id {}", report.entries, report.diff_id);
/// # Ok::<(), overlay_layers::Error>(())
/// ```
pub fn apply_file(
    archive: impl AsRef<Path>,
    target: impl AsRef<Path>,
    opts: &ApplyOptions,
) -> Result<ApplyReport, Error> {
    let a = archive.as_ref();
    let f = std::fs::File::open(a).map_err(|e| Error::io(a, "cannot open the layer", e))?;
    apply_named(f, a, target.as_ref(), opts)
}

/// Apply a layer read from `archive` (any reader: a file, a pipe, a network stream).
pub fn apply(
    archive: impl Read,
    target: impl AsRef<Path>,
    opts: &ApplyOptions,
) -> Result<ApplyReport, Error> {
    apply_named(archive, Path::new("-"), target.as_ref(), opts)
}

fn apply_named(
    archive: impl Read,
    name: &Path,
    target: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, Error> {
    let l = opts.limits;
    let (compression, stream) = open_stream(
        archive,
        BombLimits {
            max_bytes: l.max_bytes,
            max_ratio: l.max_ratio,
            ratio_after: l.ratio_after,
        },
    )
    .map_err(|e| Error::Archive {
        archive: name.to_path_buf(),
        reason: crate::error::describe(&e),
    })?;
    // The diff_id is hashed on a second thread, overlapping the writing of the tree.
    let hashed =
        PipelinedHashReader::new(stream).map_err(|e| Error::io(name, "cannot start hashing", e))?;
    let reader = TarReader::new(
        hashed,
        ReadLimits {
            max_header_data: l.max_header_data,
            max_path: l.max_path,
            max_name: l.max_name,
            max_sparse_segments: 1 << 20,
        },
    );
    let root = Root::open(target)?;
    let fresh = target::list(root.fd())
        .map_err(|e| Error::errno(target, "cannot read the target directory", e))?
        .is_empty();
    let euid_root = rustix::process::geteuid().is_root();
    let mut a = Applier {
        root,
        opts: opts.clone(),
        ns: opts.xattr_namespace.unwrap_or(if euid_root {
            XattrNamespace::Trusted
        } else {
            XattrNamespace::User
        }),
        same_owner: opts.same_owner.unwrap_or(euid_root),
        written: HashSet::new(),
        fresh,
        present: HashSet::new(),
        opaque_dirs: HashSet::new(),
        dirs: Vec::new(),
        report: ApplyReport {
            compression,
            diff_id: String::new(),
            tar_size: 0,
            entries: 0,
            adjustments: Vec::new(),
            owners_not_kept: 0,
        },
        parent_cache: None,
    };
    let mut reader = reader;
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => return Err(entry_err(e)),
        };
        a.report.entries += 1;
        if a.report.entries > l.max_entries {
            return Err(Error::Entry {
                entry: String::from_utf8_lossy(&entry.path).into(),
                offset: entry.offset,
                reason: format!("more than {} entries", l.max_entries),
            });
        }
        a.entry(&mut reader, &entry)?;
    }
    a.finish_dirs()?;
    let (diff_id, size) =
        reader_finish(reader).map_err(|e| Error::io(name, "cannot hash the layer", e))?;
    a.report.diff_id = diff_id;
    a.report.tar_size = size;
    Ok(a.report)
}

/// The digest covers everything read, end marker and padding included.
fn reader_finish<R: Read>(r: TarReader<PipelinedHashReader<R>>) -> std::io::Result<(String, u64)> {
    r.into_inner().finish()
}

fn entry_err(e: ReadError) -> Error {
    Error::Entry {
        entry: e.entry,
        offset: e.offset,
        reason: e.reason,
    }
}

/// Split an archive path into clean components: a leading `/` and `.` components are
/// dropped; `..` is refused.
pub(crate) fn clean(path: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err("a `..` component (it could lead outside the target): refused".into())
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A directory's final mode and time: (components, mode, mtime).
type DirMeta = (Vec<Vec<u8>>, u32, (i64, u32));

struct Applier {
    root: Root,
    opts: ApplyOptions,
    ns: XattrNamespace,
    same_owner: bool,
    /// Paths this archive wrote (whiteouts and opaque markers never remove them).
    written: HashSet<Vec<u8>>,
    /// The target was empty at the start: only names in `present` can exist.
    fresh: bool,
    /// Every name this apply created (entries, implied directories, whiteouts).
    present: HashSet<Vec<u8>>,
    /// Directories this archive made opaque: a later whiteout below one hides nothing.
    opaque_dirs: HashSet<Vec<u8>>,
    /// Directories whose mode and mtime are set at the end: (components, mode, mtime).
    dirs: Vec<DirMeta>,
    report: ApplyReport,
    /// The last parent directory opened: (its components, descriptor).
    parent_cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
}

fn ts((s, ns): (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Applier {
    fn fail(&self, e: &Entry, reason: impl Into<String>) -> Error {
        Error::Entry {
            entry: String::from_utf8_lossy(&e.path).into(),
            offset: e.offset,
            reason: reason.into(),
        }
    }

    fn adjust(&mut self, comps: &[Vec<u8>], action: &'static str, reason: impl Into<String>) {
        let path = self.root.shown(&join(comps));
        self.report.adjustments.push(Adjustment {
            path,
            action,
            reason: reason.into(),
        });
    }

    /// The parent directory of an entry, created if missing.
    fn parent(&mut self, e: &Entry, comps: &[Vec<u8>]) -> Result<OwnedFd, Error> {
        if let Some((c, fd)) = &self.parent_cache {
            if c.as_slice() == comps {
                return rustix::io::fcntl_dupfd_cloexec(fd, 0)
                    .map_err(|er| self.fail(e, format!("dup: {er}")));
            }
        }
        let (written, present) = (&mut self.written, &mut self.present);
        let fd = self
            .root
            .dir(comps, true, &mut |parent, _, name| {
                let mut p = parent.to_vec();
                p.push(name.to_vec());
                present.insert(join(&p));
                written.insert(join(&p));
            })
            .map_err(|w| match w {
                WalkError::Symlink(_) | WalkError::NotDir(_) => {
                    self.fail(e, format!("its parent cannot be reached: {}", w.describe()))
                }
                _ => self.fail(e, format!("cannot open its parent: {}", w.describe())),
            })?;
        let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0)
            .map_err(|er| self.fail(e, format!("dup: {er}")))?;
        self.parent_cache = Some((comps.to_vec(), dup));
        Ok(fd)
    }

    fn entry<R: Read>(&mut self, reader: &mut TarReader<R>, e: &Entry) -> Result<(), Error> {
        let comps = clean(&e.path).map_err(|r| self.fail(e, r))?;
        if comps.is_empty() {
            // The root itself ("./"): only a directory makes sense; its mode and mtime apply.
            if e.kind != EntryType::Dir {
                return Err(self.fail(e, "a non-directory entry for the target's root"));
            }
            self.dirs.push((Vec::new(), e.mode, e.mtime));
            return Ok(());
        }
        let (name, parent_comps) = comps.split_last().expect("non-empty");
        if name.as_slice() == OPAQUE_MARKER {
            return self.opaque(e, parent_comps);
        }
        if let Some(t) = name.strip_prefix(b".wh.") {
            if t.starts_with(b".wh.") {
                // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
                self.adjust(&comps, "skipped", "AUFS metadata, not content");
                return Ok(());
            }
            if t.is_empty() || t == b"." || t == b".." {
                return Err(self.fail(e, "a whiteout of `.`, `..` or of nothing: refused"));
            }
            let mut tc = parent_comps.to_vec();
            tc.push(t.to_vec());
            return self.whiteout(e, parent_comps, t, &tc);
        }
        for (k, v) in &e.xattrs {
            if v.len() > self.opts.limits.max_xattr_value {
                return Err(self.fail(
                    e,
                    format!(
                        "xattr {} of {} bytes is over the limit",
                        String::from_utf8_lossy(k),
                        v.len()
                    ),
                ));
            }
        }
        if e.xattrs.len() > self.opts.limits.max_xattrs {
            return Err(self.fail(e, format!("{} xattrs: over the limit", e.xattrs.len())));
        }
        let parent = self.parent(e, parent_comps)?;
        let nm = OsStr::from_bytes(name);
        let key = join(&comps);
        // What is there now: kept if both are directories, otherwise replaced. In a target
        // that was empty, only what this archive made can be there (no lstat needed).
        let existing = if self.fresh && !self.present.contains(&key) {
            None
        } else {
            target::lstat(parent.as_fd(), nm)
                .map_err(|er| self.fail(e, format!("cannot stat it in the target: {er}")))?
        };
        if let Some(st) = existing {
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if !(is_dir && e.kind == EntryType::Dir) {
                if e.kind == EntryType::HardLink
                    && clean(&e.link).ok().as_deref() == Some(comps.as_slice())
                {
                    return Err(self.fail(e, "a hard link to itself"));
                }
                target::remove_tree(parent.as_fd(), nm)
                    .map_err(|er| self.fail(e, format!("cannot replace what is there: {er}")))?;
                if is_dir {
                    self.parent_cache = None;
                }
            }
        }
        match e.kind {
            EntryType::Dir => {
                match rustix::fs::mkdirat(&parent, nm, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(er) => {
                        return Err(self.fail(e, format!("cannot create the directory: {er}")))
                    }
                }
                self.owner_and_xattrs(e, &comps, parent.as_fd(), nm, false, None)?;
                self.dirs.push((comps.clone(), e.mode, e.mtime));
            }
            EntryType::File => self.file(reader, e, &comps, parent.as_fd(), nm)?,
            EntryType::Symlink => {
                rustix::fs::symlinkat(OsStr::from_bytes(&e.link), &parent, nm)
                    .map_err(|er| self.fail(e, format!("cannot create the symlink: {er}")))?;
                self.owner_and_xattrs(e, &comps, parent.as_fd(), nm, true, None)?;
                let _ = rustix::fs::utimensat(&parent, nm, &ts(e.mtime), AtFlags::SYMLINK_NOFOLLOW);
            }
            EntryType::HardLink => {
                let src =
                    clean(&e.link).map_err(|r| self.fail(e, format!("hard link target: {r}")))?;
                let Some((sname, sparent)) = src.split_last() else {
                    return Err(self.fail(e, "a hard link to the target's root"));
                };
                let sdir = self
                    .root
                    .dir(sparent, false, &mut |_, _, _| {})
                    .map_err(|w| {
                        let l = String::from_utf8_lossy(&e.link);
                        match w {
                            WalkError::Missing(_) => self.fail(
                                e,
                                format!("hard link to {l}, which is not in the target: refused"),
                            ),
                            w => self.fail(e, format!("hard link to {l}: {}", w.describe())),
                        }
                    })?;
                let snm = OsStr::from_bytes(sname);
                match target::lstat(sdir.as_fd(), snm) {
                    Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(self.fail(e, "a hard link to a directory: refused"))
                    }
                    Ok(Some(_)) => {}
                    _ => {
                        return Err(self.fail(
                            e,
                            format!(
                                "hard link to {}, which is not in the target: refused",
                                String::from_utf8_lossy(&e.link)
                            ),
                        ))
                    }
                }
                rustix::fs::linkat(&sdir, snm, &parent, nm, AtFlags::empty())
                    .map_err(|er| self.fail(e, format!("cannot create the hard link: {er}")))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.special(e, &comps, parent.as_fd(), nm)?;
            }
        }
        self.present.insert(key.clone());
        self.written.insert(key);
        Ok(())
    }

    fn special(
        &mut self,
        e: &Entry,
        comps: &[Vec<u8>],
        parent: BorrowedFd<'_>,
        nm: &OsStr,
    ) -> Result<(), Error> {
        let (ft, what) = match e.kind {
            EntryType::Char => (FileType::CharacterDevice, "character device"),
            EntryType::Block => (FileType::BlockDevice, "block device"),
            _ => (FileType::Fifo, "FIFO"),
        };
        if e.kind == EntryType::Char && e.dev == (0, 0) && self.opts.format == Format::Overlay {
            self.adjust(
                comps,
                "skipped",
                "a character device 0/0 reads as a whiteout in an overlay layer",
            );
            return Ok(());
        }
        let dev = rustix::fs::makedev(e.dev.0, e.dev.1);
        match rustix::fs::mknodat(parent, nm, ft, Mode::from_raw_mode(0o600), dev) {
            Ok(()) => {}
            Err(Errno::PERM) | Err(Errno::ACCESS) if ft != FileType::Fifo => {
                self.adjust(
                    comps,
                    "skipped",
                    format!(
                        "{what} {}:{}: not permitted here (no CAP_MKNOD)",
                        e.dev.0, e.dev.1
                    ),
                );
                return Ok(());
            }
            Err(er) => return Err(self.fail(e, format!("cannot create the {what}: {er}"))),
        }
        self.owner_and_xattrs(e, comps, parent, nm, false, None)?;
        let mode = self.mode_bits(e, comps);
        let _ = rustix::fs::chmodat(parent, nm, Mode::from_raw_mode(mode), AtFlags::empty());
        let _ = rustix::fs::utimensat(parent, nm, &ts(e.mtime), AtFlags::SYMLINK_NOFOLLOW);
        Ok(())
    }

    /// The mode to set: set-ID bits are dropped (and reported) when the owner was not kept.
    fn mode_bits(&mut self, e: &Entry, comps: &[Vec<u8>]) -> u32 {
        let mut mode = e.mode & 0o7777;
        if !self.same_owner && mode & 0o6000 != 0 && e.kind != EntryType::Dir {
            mode &= !0o6000;
            self.adjust(
                comps,
                "changed",
                "set-ID bits dropped: the archive's owner could not be kept",
            );
        }
        mode
    }

    fn file<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        e: &Entry,
        comps: &[Vec<u8>],
        parent: BorrowedFd<'_>,
        nm: &OsStr,
    ) -> Result<(), Error> {
        let fd = rustix::fs::openat(
            parent,
            nm,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|er| self.fail(e, format!("cannot create the file: {er}")))?;
        let mut end = 0u64;
        let r = reader.read_data(e, |off, data| {
            write_sparse(&fd, off, data)?;
            end = end.max(off + data.len() as u64);
            Ok(())
        });
        r.map_err(entry_err)?;
        if end < e.size {
            rustix::fs::ftruncate(&fd, e.size)
                .map_err(|er| self.fail(e, format!("cannot set its size: {er}")))?;
        }
        // Owner and xattrs through the open descriptor: no path lookup.
        self.owner_and_xattrs(e, comps, parent, nm, false, Some(fd.as_fd()))?;
        let mode = self.mode_bits(e, comps);
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|er| self.fail(e, format!("chmod: {er}")))?;
        rustix::fs::futimens(&fd, &ts(e.mtime))
            .map_err(|er| self.fail(e, format!("cannot set its time: {er}")))?;
        Ok(())
    }

    fn owner_and_xattrs(
        &mut self,
        e: &Entry,
        comps: &[Vec<u8>],
        parent: BorrowedFd<'_>,
        nm: &OsStr,
        symlink: bool,
        own: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        if self.same_owner {
            let (uid, gid) = (
                Some(rustix::fs::Uid::from_raw(e.uid)),
                Some(rustix::fs::Gid::from_raw(e.gid)),
            );
            let r = match own {
                Some(fd) => rustix::fs::fchown(fd, uid, gid),
                None => rustix::fs::chownat(parent, nm, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
            };
            match r {
                Ok(()) => {}
                Err(Errno::PERM) | Err(Errno::INVAL) => self.report.owners_not_kept += 1,
                Err(er) => return Err(self.fail(e, format!("chown: {er}"))),
            }
        } else {
            let me = (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            );
            if (e.uid, e.gid) != me {
                self.report.owners_not_kept += 1;
            }
        }
        for (k, v) in &e.xattrs {
            let shown = String::from_utf8_lossy(k).into_owned();
            let private = [XattrNamespace::Trusted, XattrNamespace::User]
                .iter()
                .any(|ns| k.starts_with(ns.prefix().as_bytes()));
            let key: Vec<u8> = if private {
                match self.opts.format {
                    // Stored escaped, as the kernel stores what a user sets through a mount:
                    // data, never format.
                    Format::Overlay if k.starts_with(self.ns.prefix().as_bytes()) => {
                        self.ns.stored_name(k)
                    }
                    Format::Overlay => k.clone(),
                    Format::Plain => {
                        self.adjust(comps, "changed", format!("xattr {shown} left out: overlay-private, it would be read as format if this tree became a layer"));
                        continue;
                    }
                }
            } else {
                k.clone()
            };
            let set = match own {
                Some(fd) => rustix::fs::fsetxattr(
                    fd,
                    OsStr::from_bytes(&key),
                    v,
                    rustix::fs::XattrFlags::empty(),
                ),
                None => target::set_xattr(parent, Some(nm), &key, v),
            };
            match set {
                Ok(()) => {}
                Err(Errno::PERM) | Err(Errno::ACCESS) | Err(Errno::NOTSUP) | Err(Errno::INVAL) => {
                    let why = if symlink && k.starts_with(b"user.") {
                        "user xattrs are not allowed on symlinks".to_string()
                    } else {
                        "not permitted or not supported here".to_string()
                    };
                    self.adjust(comps, "changed", format!("xattr {shown} not set: {why}"));
                }
                Err(er) => return Err(self.fail(e, format!("cannot set xattr {shown}: {er}"))),
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        e: &Entry,
        parent_comps: &[Vec<u8>],
        name: &[u8],
        tc: &[Vec<u8>],
    ) -> Result<(), Error> {
        let key = join(tc);
        if self.written.contains(&key) {
            // OCI: a whiteout hides lower layers only, never an entry of its own layer.
            return Ok(());
        }
        let parent = self.parent(e, parent_comps)?;
        let nm = OsStr::from_bytes(name);
        let existing = target::lstat(parent.as_fd(), nm).map_err(|er| {
            self.fail(
                e,
                format!("cannot stat {}: {er}", String::from_utf8_lossy(&key)),
            )
        })?;
        if existing.is_some() {
            target::remove_tree(parent.as_fd(), nm)
                .map_err(|er| self.fail(e, format!("cannot remove what it deletes: {er}")))?;
            self.parent_cache = None;
        }
        if self.opts.format == Format::Plain {
            return Ok(());
        }
        // Below a directory this archive made opaque the lowers are hidden already, and the
        // kernel lists a whiteout inside an opaque upper directory (that it cannot look up).
        if (0..=parent_comps.len()).any(|i| self.opaque_dirs.contains(&join(&parent_comps[..i]))) {
            return Ok(());
        }
        match rustix::fs::mknodat(
            &parent,
            nm,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        ) {
            Ok(()) => {}
            Err(Errno::PERM) | Err(Errno::ACCESS) | Err(Errno::NOTSUP) => {
                // An xattr whiteout, which the kernel honours in lower layers (Linux 6.7+).
                let fd = rustix::fs::openat(
                    &parent,
                    nm,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|er| self.fail(e, format!("cannot create an xattr whiteout: {er}")))?;
                drop(fd);
                target::set_xattr(
                    parent.as_fd(),
                    Some(nm),
                    self.ns.whiteout().as_bytes(),
                    b"y",
                )
                .and_then(|()| {
                    target::set_xattr(parent.as_fd(), None, self.ns.opaque().as_bytes(), b"x")
                })
                .map_err(|er| self.fail(e, format!("cannot mark an xattr whiteout: {er}")))?;
                self.adjust(tc, "changed", "whiteout written as an xattr whiteout (no 0/0 device allowed here); the kernel honours it in lower layers");
            }
            Err(er) => return Err(self.fail(e, format!("cannot create the whiteout: {er}"))),
        }
        self.present.insert(key);
        let _ = rustix::fs::utimensat(&parent, nm, &ts(e.mtime), AtFlags::SYMLINK_NOFOLLOW);
        Ok(())
    }

    fn opaque(&mut self, e: &Entry, dir_comps: &[Vec<u8>]) -> Result<(), Error> {
        let dir = self.parent(e, dir_comps)?;
        // Whatever this archive did not put there is hidden: removed.
        let names = target::list(dir.as_fd())
            .map_err(|er| self.fail(e, format!("cannot list its directory: {er}")))?;
        for n in names {
            let mut c = dir_comps.to_vec();
            c.push(n.clone());
            if !self.written.contains(&join(&c)) {
                target::remove_tree(dir.as_fd(), OsStr::from_bytes(&n)).map_err(|er| {
                    self.fail(e, format!("cannot empty the opaque directory: {er}"))
                })?;
            }
        }
        self.parent_cache = None;
        if self.opts.format == Format::Overlay {
            target::set_xattr(dir.as_fd(), None, self.ns.opaque().as_bytes(), b"y")
                .map_err(|er| self.fail(e, format!("cannot set {}: {er}", self.ns.opaque())))?;
        }
        self.opaque_dirs.insert(join(dir_comps));
        Ok(())
    }

    /// Directory modes and times, deepest first (creating children changed the times).
    fn finish_dirs(&mut self) -> Result<(), Error> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Last entry for a directory wins.
        let mut seen = HashSet::new();
        dirs.reverse();
        dirs.retain(|(c, _, _)| seen.insert(c.clone()));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        for (comps, mode, mtime) in dirs {
            let fd = match self.root.dir(&comps, false, &mut |_, _, _| {}) {
                Ok(fd) => fd,
                // Replaced or deleted by a later entry.
                Err(_) => continue,
            };
            let shown = self.root.shown(&join(&comps));
            let p = target::proc_path(fd.as_fd(), None);
            rustix::fs::chmod(&p, Mode::from_raw_mode(mode & 0o7777))
                .map_err(|e| Error::errno(&shown, "cannot set the directory's mode", e))?;
            rustix::fs::utimensat(rustix::fs::CWD, &p, &ts(mtime), AtFlags::empty())
                .map_err(|e| Error::errno(&shown, "cannot set the directory's time", e))?;
        }
        Ok(())
    }
}

/// Write `data` at `off`, leaving 4 KiB blocks of zeros as holes (the file stays sparse).
fn write_sparse(fd: &OwnedFd, off: u64, data: &[u8]) -> std::io::Result<()> {
    const B: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        let end = (i + B).min(data.len());
        let chunk = &data[i..end];
        if chunk.len() == B && (off + i as u64) % B as u64 == 0 && chunk.iter().all(|&b| b == 0) {
            i = end;
            continue;
        }
        // Write the run of non-hole blocks in one call.
        let mut j = end;
        while j < data.len() {
            let e2 = (j + B).min(data.len());
            let c = &data[j..e2];
            if c.len() == B && (off + j as u64) % B as u64 == 0 && c.iter().all(|&b| b == 0) {
                break;
            }
            j = e2;
        }
        let mut w = i;
        while w < j {
            let n = rustix::io::pwrite(fd, &data[w..j], off + w as u64)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            w += n;
        }
        i = j;
    }
    Ok(())
}
