//! Export an upper layer (over its lowers), or any layer directory, as an OCI image layer
//! tar: [`export`], [`export_file`].
//!
//! Conversions from the kernel's format to OCI's:
//! - a whiteout (character device 0/0, or an xattr whiteout) becomes an empty `.wh.NAME`;
//! - an opaque directory (`overlay.opaque=y`) gets a `.wh..wh..opq` entry;
//! - a renamed directory (`overlay.redirect`, kernel `redirect_dir=on`) is exported with its
//!   full content (from its old place in the lowers, merged with the upper) as an opaque
//!   directory, plus a whiteout of its old name, since OCI layers have no renames;
//! - a metacopy file (`overlay.metacopy`) is exported with its data, read from the lowers;
//! - hard links stay tar hard links; xattrs go in PAX `SCHILY.xattr.*` records, without the
//!   overlay-private ones (escaped ones are unescaped, as the merged view shows them);
//!   `security.capability` is kept;
//! - files with holes are written as GNU sparse entries;
//! - modification times are whole seconds.
//!
//! [`ExportOptions::reproducible`] also clamps times to `SOURCE_DATE_EPOCH` and writes no
//! owner names: the same tree gives the same digests. Entries are always in a fixed order
//! (sorted by name, each directory before its content).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use overlay_core::XattrNamespace;
use rustix::fs::{FileType, SeekFrom};
use serde::Serialize;

use crate::changes::{redirect_from, DiffOptions, LowerEntry, LowerStack};
use crate::compress::{Compression, Encoder};
use crate::digest::{HashWriter, PipelinedHashWriter};
use crate::error::Error;
use crate::layer_dir::{Entry, EntryKind, LayerDir};
use crate::tar::writer::{Body, Meta, TarWriter};

/// Options of [`export`].
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Compression of the layer.
    pub compression: Compression,
    /// Same tree, same digest: times clamped to [`ExportOptions::source_date_epoch`] (or the
    /// `SOURCE_DATE_EPOCH` environment variable), no owner names.
    pub reproducible: bool,
    /// The clamp for reproducible mode; `None` reads `SOURCE_DATE_EPOCH` (no clamp if unset).
    pub source_date_epoch: Option<i64>,
    /// The overlay xattr namespace of the layers; `None` treats both `trusted.overlay.*` and
    /// `user.overlay.*` as the overlay's own.
    pub xattr_namespace: Option<XattrNamespace>,
    /// Bytes of file data exported so far, for a progress display.
    pub progress: Option<Arc<AtomicU64>>,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedLayer {
    /// `sha256:` of the uncompressed tar: the layer's `diff_id` in an image config.
    pub diff_id: String,
    /// `sha256:` of the layer as written (compressed): its digest in a manifest.
    pub digest: String,
    /// Size of the layer as written, bytes.
    pub size: u64,
    /// Size of the uncompressed tar, bytes.
    pub tar_size: u64,
    /// The OCI media type.
    pub media_type: &'static str,
    /// Entries written (PAX headers not counted).
    pub entries: u64,
}

/// Export `upper` (over `lowers`, bottom-first; they are needed for renamed directories and
/// metacopy files only) as an OCI layer into `out`.
///
/// ```no_run
/// use overlay_layers::export::{export_file, ExportOptions};
/// use overlay_layers::compress::Compression;
/// let opts = ExportOptions { compression: Compression::Gzip, reproducible: true, ..Default::default() };
/// let layer = export_file(&["/srv/base"], "/srv/upper", "layer.tar.gz", &opts)?;
/// println!("diff_id {} digest {} size {}", layer.diff_id, layer.digest, layer.size);
/// # Ok::<(), overlay_layers::Error>(())
/// ```
pub fn export<L: AsRef<Path>>(
    lowers: &[L],
    upper: impl AsRef<Path>,
    out: impl Write,
    opts: &ExportOptions,
) -> Result<ExportedLayer, Error> {
    export_named(lowers, upper.as_ref(), out, Path::new("-"), opts)
}

/// [`export`] into the file `path`, written next to it first and renamed into place.
pub fn export_file<L: AsRef<Path>>(
    lowers: &[L],
    upper: impl AsRef<Path>,
    path: impl AsRef<Path>,
    opts: &ExportOptions,
) -> Result<ExportedLayer, Error> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ovl-export-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, "cannot create a temporary file", e))?;
    let layer = export_named(lowers, upper.as_ref(), tmp.as_file(), path, opts)?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(path, "cannot sync", e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(path, "cannot rename into place", e.error))?;
    Ok(layer)
}

/// Where an exported entry's data and metadata come from.
struct Source<'a> {
    dir: &'a LayerDir,
    entry: &'a Entry,
}

/// An entry whose name starts with `.wh.` cannot be exported: in an OCI layer that prefix
/// marks whiteouts, so the entry would delete its namesake where the layer is applied
/// instead of appearing (the kernel overlay shows it as a plain entry). Refused with an
/// error naming it, never written.
fn refuse_reserved_name(src: &Source<'_>) -> Result<(), Error> {
    if src.entry.name.as_bytes().starts_with(b".wh.") {
        return Err(Error::Path {
            path: src.dir.path().join(&src.entry.name),
            reason: "the name starts with .wh., which OCI layers reserve for whiteouts: \
                     exported, it would delete its namesake where the layer is applied; \
                     rename it to export this tree"
                .into(),
        });
    }
    Ok(())
}

struct Exporter<W: Write> {
    tar: TarWriter<PipelinedHashWriter<Encoder<HashWriter<W>>>>,
    lowers: Option<LowerStack>,
    opts: ExportOptions,
    epoch: Option<i64>,
    /// First archive path of each multiply linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    out_name: PathBuf,
    buf: Vec<u8>,
    /// Old names of renamed directories, whited out at the end if nothing else did.
    renamed_from: Vec<Vec<OsString>>,
    emitted: BTreeSet<Vec<u8>>,
    /// The xattrs of the entry being exported: (directory, name, list).
    xcache: RefCell<Option<(PathBuf, OsString, Rc<XattrList>)>>,
    /// The regular file being exported, opened once for its xattrs and its data:
    /// (directory, name, descriptor).
    open_file: Option<(PathBuf, OsString, OwnedFd)>,
}

/// An entry's xattrs: (name, value).
type XattrList = Vec<(String, Vec<u8>)>;

/// Work items of the (iterative) walk.
enum Work {
    /// An upper directory, compared with the lowers (normal export).
    Upper {
        dir: LayerDir,
        rel: Vec<OsString>,
        low: Vec<OsString>,
    },
    /// A directory exported with its full merged content (under a renamed directory):
    /// an optional upper directory over lower directories (top-first).
    Full {
        upper: Option<LayerDir>,
        lowers: Vec<LayerDir>,
        rel: Vec<OsString>,
        low: Vec<OsString>,
    },
}

/// `low` + `name`.
fn child(low: &[OsString], name: &OsStr) -> Vec<OsString> {
    let mut v = low.to_vec();
    v.push(name.to_os_string());
    v
}

/// `/a/b` of components.
fn path_of(comps: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    for c in comps {
        p.push(c);
    }
    p
}

/// A directory being walked, and how far.
struct Frame {
    work: Work,
    upper_list: Option<(Vec<Entry>, bool)>,
    full_list: Option<(Vec<OsString>, Vec<Entry>, bool)>,
    next: usize,
}

impl Frame {
    fn new(work: Work) -> Frame {
        Frame {
            work,
            upper_list: None,
            full_list: None,
            next: 0,
        }
    }
}

fn arch_path(rel: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in rel.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    v
}

fn export_named<L: AsRef<Path>>(
    lowers: &[L],
    upper: &Path,
    out: impl Write,
    out_name: &Path,
    opts: &ExportOptions,
) -> Result<ExportedLayer, Error> {
    let io = |e: std::io::Error| Error::io(out_name, "cannot write the layer", e);
    let lower_paths: Vec<PathBuf> = lowers.iter().map(|l| l.as_ref().to_path_buf()).collect();
    let stack = if lower_paths.is_empty() {
        None
    } else {
        Some(LowerStack::open(&lower_paths, DiffOptions::default())?)
    };
    let epoch = if opts.reproducible {
        match opts.source_date_epoch {
            Some(e) => Some(e),
            None => match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) => Some(v.trim().parse().map_err(|_| {
                    Error::path(
                        upper,
                        format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"),
                    )
                })?),
                Err(_) => None,
            },
        }
    } else {
        None
    };
    // Uncompressed, the layer is the tar: its digest is the diff_id, hashed once.
    let outer = match opts.compression {
        Compression::None => HashWriter::counting(out),
        _ => HashWriter::new(out),
    };
    let enc = Encoder::new(outer, opts.compression).map_err(io)?;
    // The diff_id is hashed on a second thread, overlapping the reading of the tree.
    let w = PipelinedHashWriter::new(enc).map_err(io)?;
    let mut x = Exporter {
        tar: TarWriter::new(w),
        lowers: stack,
        opts: opts.clone(),
        epoch,
        links: HashMap::new(),
        entries: 0,
        out_name: out_name.to_path_buf(),
        buf: vec![0u8; 256 * 1024],
        renamed_from: Vec::new(),
        emitted: BTreeSet::new(),
        xcache: RefCell::new(None),
        open_file: None,
    };
    let root = LayerDir::open_root(upper)?;
    let upper_root = root.try_clone()?;
    // Depth-first, in name order, each directory's content right after it (as GNU tar and
    // containerd write layers); the depth is a heap stack of frames.
    let mut frames: Vec<Frame> = vec![Frame::new(Work::Upper {
        dir: root,
        rel: Vec::new(),
        low: Vec::new(),
    })];
    while let Some(f) = frames.last_mut() {
        let child = match &f.work {
            Work::Upper { dir, rel, low } => {
                x.upper_dir(dir, rel, low, &mut f.upper_list, &mut f.next)?
            }
            Work::Full {
                upper,
                lowers,
                rel,
                low,
            } => x.full_dir(
                upper.as_ref(),
                lowers,
                rel,
                low,
                &mut f.full_list,
                &mut f.next,
            )?,
        };
        match child {
            Some(w) => frames.push(Frame::new(w)),
            None => {
                frames.pop();
            }
        }
    }
    x.old_names(&upper_root)?;
    let Exporter { tar, entries, .. } = x;
    let w = tar.finish().map_err(io)?;
    let (diff_id, tar_size, enc) = w.finish().map_err(io)?;
    let outer = enc.finish().map_err(io)?;
    let (digest, size, mut out) = outer.finish();
    let digest = if digest.is_empty() {
        diff_id.clone()
    } else {
        digest
    };
    out.flush().map_err(io)?;
    Ok(ExportedLayer {
        diff_id,
        digest,
        size,
        tar_size,
        media_type: opts.compression.media_type(),
        entries,
    })
}

fn is_private(ns: Option<XattrNamespace>, name: &str) -> Option<String> {
    // Returns the name to export, or None for a private attribute.
    let spaces: &[XattrNamespace] = match ns {
        Some(XattrNamespace::Trusted) => &[XattrNamespace::Trusted],
        Some(XattrNamespace::User) => &[XattrNamespace::User],
        None => &[XattrNamespace::Trusted, XattrNamespace::User],
    };
    for s in spaces {
        if name.starts_with(s.prefix()) {
            return s
                .visible_name(name.as_bytes())
                .map(|v| String::from_utf8_lossy(&v).into_owned());
        }
    }
    Some(name.to_string())
}

fn overlay_xattr(
    dir: &LayerDir,
    name: Option<&OsStr>,
    suffix: &str,
) -> Result<Option<Vec<u8>>, Error> {
    for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
        if let Some(v) = dir.xattr(name, &ns.name(suffix))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

impl<W: Write> Exporter<W> {
    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.out_name, "cannot write the layer", e)
    }

    fn mtime(&self, st: &rustix::fs::Stat) -> (i64, u32) {
        let t = st.st_mtime;
        match self.epoch {
            Some(e) if t > e => (e, 0),
            _ => (t, 0),
        }
    }

    /// All xattrs of `name` in `dir`, read once per entry (the walk asks several times).
    fn xattrs_of(&self, dir: &LayerDir, name: &OsStr) -> Result<Rc<XattrList>, Error> {
        if let Some((p, n, l)) = &*self.xcache.borrow() {
            if p == dir.path() && n == name {
                return Ok(l.clone());
            }
        }
        let l = Rc::new(dir.xattrs(Some(name))?);
        *self.xcache.borrow_mut() =
            Some((dir.path().to_path_buf(), name.to_os_string(), l.clone()));
        Ok(l)
    }

    /// Open the regular file `e` of `dir` (without following a symlink) and read its xattrs
    /// through the descriptor: one `open` serves the xattrs and the data, and no path goes
    /// through `/proc`. When it cannot be opened, the xattrs are read by name later on.
    fn prime(&mut self, dir: &LayerDir, e: &Entry) -> Result<(), Error> {
        self.open_file = None;
        if e.file_type() != FileType::RegularFile {
            return Ok(());
        }
        let Ok(fd) = dir.open_file(&e.name) else {
            return Ok(());
        };
        // Replaced since it was listed: leave it to the by-name path (and its errors).
        match rustix::fs::fstat(&fd) {
            Ok(st) if st.st_ino == e.stat.st_ino && st.st_dev == e.stat.st_dev => {}
            _ => return Ok(()),
        }
        let shown = dir.path().join(&e.name);
        let l = Rc::new(LayerDir::xattrs_of_fd(
            std::os::fd::AsFd::as_fd(&fd),
            &shown,
        )?);
        *self.xcache.borrow_mut() = Some((dir.path().to_path_buf(), e.name.clone(), l));
        self.open_file = Some((dir.path().to_path_buf(), e.name.clone(), fd));
        Ok(())
    }

    /// `overlay.SUFFIX` of `name` in `dir` (either namespace), or of `dir` itself.
    fn ox(
        &self,
        dir: &LayerDir,
        name: Option<&OsStr>,
        suffix: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(name) = name else {
            return overlay_xattr(dir, None, suffix);
        };
        let l = self.xattrs_of(dir, name)?;
        for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
            let key = ns.name(suffix);
            if let Some((_, v)) = l.iter().find(|(k, _)| *k == key) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(None)
    }

    fn meta(&self, src: &Source<'_>, path: Vec<u8>) -> Result<Meta, Error> {
        let st = &src.entry.stat;
        let mut xattrs = Vec::new();
        for (k, v) in self.xattrs_of(src.dir, &src.entry.name)?.iter().cloned() {
            if let Some(name) = is_private(self.opts.xattr_namespace, &k) {
                xattrs.push((name.into_bytes(), v));
            }
        }
        xattrs.sort();
        Ok(Meta {
            path,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: self.mtime(st),
            xattrs,
        })
    }

    fn emit_whiteout(&mut self, path: &[u8], name: &OsStr, mtime: (i64, u32)) -> Result<(), Error> {
        let mut p = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => path[..=i].to_vec(),
            None => Vec::new(),
        };
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name.as_bytes());
        if !self.emitted.insert(p.clone()) {
            return Ok(());
        }
        self.emit_marker(p, mtime)
    }

    fn emit_opaque(&mut self, dir_path: &[u8], mtime: (i64, u32)) -> Result<(), Error> {
        let mut p = dir_path.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh..wh..opq");
        self.emitted.insert(p.clone());
        self.emit_marker(p, mtime)
    }

    /// An OCI marker entry (whiteout or opaque marker): an empty root-owned file.
    fn emit_marker(&mut self, path: Vec<u8>, mtime: (i64, u32)) -> Result<(), Error> {
        let meta = Meta {
            path,
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime,
            xattrs: Vec::new(),
        };
        self.entries += 1;
        let body = Body::File {
            size: 0,
            sparse: None,
        };
        self.tar.entry(&meta, &body).map_err(|e| self.io(e))
    }

    /// Export a non-directory. `data` is where a metacopy file's data is (else the source).
    fn emit_other(
        &mut self,
        src: &Source<'_>,
        path: Vec<u8>,
        data: Option<(&LayerDir, &OsStr)>,
    ) -> Result<(), Error> {
        refuse_reserved_name(src)?;
        let st = src.entry.stat;
        let meta = self.meta(src, path.clone())?;
        self.entries += 1;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                return self
                    .tar
                    .entry(&meta, &Body::HardLink(first))
                    .map_err(|e| self.io(e));
            }
            self.links.insert(key, path);
        }
        let body = match ft {
            FileType::RegularFile => {
                let (ddir, dname) = data.unwrap_or((src.dir, &src.entry.name));
                // The descriptor `prime` opened, if it is this very entry's.
                let primed = match self.open_file.take() {
                    Some((p, n, fd))
                        if data.is_none() && p == src.dir.path() && n == src.entry.name =>
                    {
                        Some(fd)
                    }
                    _ => None,
                };
                let fd = match primed {
                    Some(fd) => fd,
                    None => ddir.open_file(dname)?,
                };
                let size = st.st_size as u64;
                let sparse = if (st.st_blocks as u64) * 512 < size {
                    segments(&fd, size)
                } else {
                    None
                };
                let body = Body::File {
                    size,
                    sparse: sparse.clone(),
                };
                self.tar.entry(&meta, &body).map_err(|e| self.io(e))?;
                let segs = sparse.unwrap_or_else(|| vec![(0, size)]);
                let shown = ddir.path().join(dname);
                for (mut off, mut len) in segs {
                    while len > 0 {
                        let k = len.min(self.buf.len() as u64) as usize;
                        let n = rustix::io::pread(&fd, &mut self.buf[..k], off)
                            .map_err(|e| Error::errno(&shown, "cannot read", e))?;
                        if n == 0 {
                            return Err(Error::path(
                                &shown,
                                "the file shrank while it was exported",
                            ));
                        }
                        let (tar, buf) = (&mut self.tar, &self.buf);
                        tar.data(&buf[..n])
                            .map_err(|e| Error::io(&self.out_name, "cannot write the layer", e))?;
                        off += n as u64;
                        len -= n as u64;
                        if let Some(p) = &self.opts.progress {
                            p.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
                return Ok(());
            }
            FileType::Symlink => Body::Symlink(src.dir.readlink(&src.entry.name)?),
            FileType::CharacterDevice => {
                Body::Char(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
            }
            FileType::BlockDevice => {
                Body::Block(rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev))
            }
            FileType::Fifo => Body::Fifo,
            // Sockets have no place in a tar (GNU tar skips them too).
            _ => {
                self.entries -= 1;
                return Ok(());
            }
        };
        self.tar.entry(&meta, &body).map_err(|e| self.io(e))
    }

    fn emit_dir(&mut self, src: &Source<'_>, path: Vec<u8>) -> Result<(), Error> {
        refuse_reserved_name(src)?;
        let meta = self.meta(src, path)?;
        self.entries += 1;
        self.tar.entry(&meta, &Body::Dir).map_err(|e| self.io(e))
    }

    /// Where a metacopy file's data is in the lowers: its redirect, or its own path.
    fn metacopy_data(
        &self,
        dir: &LayerDir,
        e: &Entry,
        low: &[OsString],
    ) -> Result<Option<(LayerDir, OsString)>, Error> {
        if self.ox(dir, Some(&e.name), "metacopy")?.is_none() {
            return Ok(None);
        }
        let shown = dir.path().join(&e.name);
        let Some(stack) = &self.lowers else {
            return Err(Error::path(
                &shown,
                "a metacopy file (its data is in the lowers): give the lowers to export it",
            ));
        };
        let comps: Vec<OsString> = match self.ox(dir, Some(&e.name), "redirect")? {
            Some(v) => redirect_from(low, &v),
            None => child(low, &e.name),
        };
        let found = find_lower_file(stack, &comps)?;
        match found {
            Some(f) => Ok(Some(f)),
            None => Err(Error::path(
                &shown,
                "a metacopy file whose data is not in the lowers given",
            )),
        }
    }

    fn is_xwhiteout(&self, dir: &LayerDir, e: &Entry, parent_x: bool) -> Result<bool, Error> {
        Ok(parent_x
            && e.file_type() == FileType::RegularFile
            && e.stat.st_size == 0
            && self.ox(dir, Some(&e.name), "whiteout")?.is_some())
    }

    /// Export the entries of an upper directory from `*next` on, up to and including the next
    /// subdirectory, whose walk is returned (its content comes right after it in the tar).
    fn upper_dir(
        &mut self,
        dir: &LayerDir,
        rel: &[OsString],
        low: &[OsString],
        listed: &mut Option<(Vec<Entry>, bool)>,
        next: &mut usize,
    ) -> Result<Option<Work>, Error> {
        if listed.is_none() {
            if rel.is_empty() && overlay_xattr(dir, None, "opaque")?.as_deref() == Some(b"y") {
                let st = dir.stat()?;
                self.emit_opaque(b"", self.mtime(&st))?;
            }
            let parent_x = overlay_xattr(dir, None, "opaque")?.as_deref() == Some(b"x");
            *listed = Some((dir.entries()?, parent_x));
        }
        let (list, parent_x) = listed.as_ref().expect("listed");
        let parent_x = *parent_x;
        while *next < list.len() {
            let e = list[*next].clone();
            *next += 1;
            let mut r = rel.to_vec();
            r.push(e.name.clone());
            let path = arch_path(&r);
            match e.kind() {
                EntryKind::Whiteout => self.emit_whiteout(&path, &e.name, self.mtime(&e.stat))?,
                EntryKind::Dir => {
                    let src = Source { dir, entry: &e };
                    self.emit_dir(&src, path.clone())?;
                    let sub = dir.open_child(&e.name)?;
                    if let Some(v) = self.ox(dir, Some(&e.name), "redirect")? {
                        let from = path_of(&redirect_from(low, &v));
                        let comps: Vec<OsString> = from
                            .components()
                            .skip(1)
                            .map(|c| c.as_os_str().to_os_string())
                            .collect();
                        let opaque =
                            self.ox(dir, Some(&e.name), "opaque")?.as_deref() == Some(b"y");
                        let lowers = match (&self.lowers, opaque) {
                            (Some(s), false) => match s.resolve(&comps)? {
                                LowerEntry::Dir(d) => d,
                                _ => Vec::new(),
                            },
                            (None, false) => {
                                return Err(Error::path(
                                    dir.path().join(&e.name),
                                    format!("a renamed directory (from {}): give the lowers to export its content", from.display()),
                                ))
                            }
                            (_, true) => Vec::new(),
                        };
                        self.emit_opaque(&path, self.mtime(&e.stat))?;
                        self.renamed_from.push(comps);
                        return Ok(Some(Work::Full {
                            upper: Some(sub),
                            lowers,
                            rel: r,
                            low: redirect_from(low, &v),
                        }));
                    } else {
                        if self.ox(dir, Some(&e.name), "opaque")?.as_deref() == Some(b"y") {
                            self.emit_opaque(&path, self.mtime(&e.stat))?;
                        }
                        return Ok(Some(Work::Upper {
                            dir: sub,
                            rel: r,
                            low: child(low, &e.name),
                        }));
                    }
                }
                EntryKind::Other => {
                    self.prime(dir, &e)?;
                    if self.is_xwhiteout(dir, &e, parent_x)? {
                        self.emit_whiteout(&path, &e.name, self.mtime(&e.stat))?;
                        continue;
                    }
                    let data = self.metacopy_data(dir, &e, low)?;
                    let src = Source { dir, entry: &e };
                    self.emit_other(&src, path, data.as_ref().map(|(d, n)| (d, n.as_os_str())))?;
                }
            }
        }
        Ok(None)
    }

    /// [`Exporter::upper_dir`] for a directory exported with its full merged content.
    fn full_dir(
        &mut self,
        upper: Option<&LayerDir>,
        lowers: &[LayerDir],
        rel: &[OsString],
        low: &[OsString],
        listed: &mut Option<(Vec<OsString>, Vec<Entry>, bool)>,
        next: &mut usize,
    ) -> Result<Option<Work>, Error> {
        let stack = self.lowers.take();
        let result = (|| -> Result<Option<Work>, Error> {
            if listed.is_none() {
                let mut names: BTreeSet<OsString> = BTreeSet::new();
                let upper_entries: Vec<Entry> = match upper {
                    Some(u) => u.entries()?,
                    None => Vec::new(),
                };
                let parent_x = match upper {
                    Some(u) => overlay_xattr(u, None, "opaque")?.as_deref() == Some(b"x"),
                    None => false,
                };
                names.extend(upper_entries.iter().map(|e| e.name.clone()));
                if let Some(s) = &stack {
                    if !lowers.is_empty() {
                        names.extend(s.list(lowers)?);
                    }
                }
                *listed = Some((names.into_iter().collect(), upper_entries, parent_x));
            }
            let (names, upper_entries, parent_x) = listed.as_ref().expect("listed");
            let parent_x = *parent_x;
            while *next < names.len() {
                let name = names[*next].clone();
                *next += 1;
                let mut r = rel.to_vec();
                r.push(name.clone());
                let path = arch_path(&r);
                if let (Some(u), Some(e)) = (upper, upper_entries.iter().find(|e| e.name == name)) {
                    if e.kind() == EntryKind::Other {
                        self.prime(u, e)?;
                    }
                    match e.kind() {
                        EntryKind::Whiteout => continue,
                        EntryKind::Other if self.is_xwhiteout(u, e, parent_x)? => continue,
                        EntryKind::Dir => {
                            self.emit_dir(&Source { dir: u, entry: e }, path.clone())?;
                            let sub = u.open_child(&name)?;
                            let opaque =
                                self.ox(u, Some(&name), "opaque")?.as_deref() == Some(b"y");
                            let below = match (&stack, opaque, self.ox(u, Some(&name), "redirect")?)
                            {
                                (_, true, _) => Vec::new(),
                                (Some(s), false, Some(v)) => {
                                    let from = path_of(&redirect_from(low, &v));
                                    let comps: Vec<OsString> = from
                                        .components()
                                        .skip(1)
                                        .map(|c| c.as_os_str().to_os_string())
                                        .collect();
                                    self.renamed_from.push(comps.clone());
                                    match s.resolve(&comps)? {
                                        LowerEntry::Dir(d) => d,
                                        _ => Vec::new(),
                                    }
                                }
                                (Some(s), false, None) if !lowers.is_empty() => {
                                    match s.lookup(lowers, &name)? {
                                        LowerEntry::Dir(d) => d,
                                        _ => Vec::new(),
                                    }
                                }
                                _ => Vec::new(),
                            };
                            let child_low = match self.ox(u, Some(&name), "redirect")? {
                                Some(v) => redirect_from(low, &v),
                                None => child(low, &name),
                            };
                            return Ok(Some(Work::Full {
                                upper: Some(sub),
                                lowers: below,
                                rel: r,
                                low: child_low,
                            }));
                        }
                        EntryKind::Other => {
                            let data = match (&stack, self.ox(u, Some(&e.name), "metacopy")?) {
                                (Some(s), Some(_)) => {
                                    let comps: Vec<OsString> =
                                        match self.ox(u, Some(&e.name), "redirect")? {
                                            Some(v) => path_of(&redirect_from(low, &v))
                                                .components()
                                                .skip(1)
                                                .map(|c| c.as_os_str().to_os_string())
                                                .collect(),
                                            None => {
                                                // Its data is where the renamed directory's content comes from.
                                                match find_in_dirs(s, lowers, &name)? {
                                                    Some(f) => {
                                                        self.emit_other(
                                                            &Source { dir: u, entry: e },
                                                            path,
                                                            Some((&f.0, f.1.as_os_str())),
                                                        )?;
                                                        continue;
                                                    }
                                                    None => rel.to_vec(),
                                                }
                                            }
                                        };
                                    find_lower_file(s, &comps)?
                                }
                                _ => None,
                            };
                            self.emit_other(
                                &Source { dir: u, entry: e },
                                path,
                                data.as_ref().map(|(d, n)| (d, n.as_os_str())),
                            )?;
                        }
                    }
                    continue;
                }
                // Only in the lowers.
                let Some(s) = &stack else { continue };
                match s.lookup(lowers, &name)? {
                    LowerEntry::Absent => {}
                    LowerEntry::Dir(d) => {
                        let parent_of_top = lowers
                            .iter()
                            .find(|l| {
                                l.stat_child(&name)
                                    .ok()
                                    .flatten()
                                    .is_some_and(|e| e.kind() == EntryKind::Dir)
                            })
                            .expect("a lower holds the directory");
                        let e = parent_of_top.stat_child(&name)?.expect("exists");
                        self.emit_dir(
                            &Source {
                                dir: parent_of_top,
                                entry: &e,
                            },
                            path,
                        )?;
                        return Ok(Some(Work::Full {
                            upper: None,
                            lowers: d,
                            rel: r,
                            low: child(low, &name),
                        }));
                    }
                    LowerEntry::Other => {
                        if let Some((ld, n)) = find_in_dirs(s, lowers, &name)? {
                            let e = ld.stat_child(&n)?.expect("exists");
                            self.emit_other(
                                &Source {
                                    dir: &ld,
                                    entry: &e,
                                },
                                path,
                                None,
                            )?;
                        }
                    }
                }
            }
            Ok(None)
        })();
        self.lowers = stack;
        result
    }

    /// Whiteouts of renamed directories' old names, where the lowers still show something
    /// there and the layer itself does not already replace or hide it.
    fn old_names(&mut self, upper: &LayerDir) -> Result<(), Error> {
        let olds = std::mem::take(&mut self.renamed_from);
        for comps in olds {
            let Some((name, _)) = comps.split_last() else {
                continue;
            };
            let path = arch_path(&comps);
            if let Some(s) = &self.lowers {
                if matches!(s.resolve(&comps)?, LowerEntry::Absent) {
                    continue;
                }
            }
            if self.layer_covers(upper, &comps)? {
                continue;
            }
            self.emit_whiteout(&path, name, self.epoch.map_or((0, 0), |e| (e, 0)))?;
        }
        Ok(())
    }

    /// Whether the layer already decides what shows at `comps`, so a whiteout there would be
    /// redundant or wrong: an ancestor is opaque, whited out or not a directory in the layer,
    /// or the layer has an entry at the path itself. A whiteout next to an entry of the same
    /// name makes tools that apply in order (containerd) delete that entry, and one inside
    /// an opaque directory is listed by the kernel but cannot be looked up.
    fn layer_covers(&self, upper: &LayerDir, comps: &[OsString]) -> Result<bool, Error> {
        let marked = |prefix: &[OsString], marker: &[u8]| {
            let mut p = arch_path(prefix);
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(marker);
            self.emitted.contains(&p)
        };
        for i in 0..comps.len() {
            if marked(&comps[..i], b".wh..wh..opq") {
                return Ok(true);
            }
            if i > 0 {
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(comps[i - 1].as_bytes());
                if marked(&comps[..i - 1], &wh) {
                    return Ok(true);
                }
            }
        }
        let mut dir = upper.try_clone()?;
        for (i, c) in comps.iter().enumerate() {
            let Some(e) = dir.stat_child(c)? else {
                return Ok(false);
            };
            if i + 1 == comps.len() || e.kind() != EntryKind::Dir {
                return Ok(true);
            }
            dir = dir.open_child(c)?;
        }
        Ok(false)
    }
}

/// The lower directory holding the non-directory `name` among merged `dirs` (top-first).
fn find_in_dirs(
    stack: &LowerStack,
    dirs: &[LayerDir],
    name: &OsStr,
) -> Result<Option<(LayerDir, OsString)>, Error> {
    let _ = stack;
    for d in dirs {
        if let Some(e) = d.stat_child(name)? {
            return Ok(match e.kind() {
                EntryKind::Other => Some((d.try_clone()?, name.to_os_string())),
                _ => None,
            });
        }
    }
    Ok(None)
}

/// The lower directory and name holding the file at `comps` in the merged lowers.
fn find_lower_file(
    stack: &LowerStack,
    comps: &[OsString],
) -> Result<Option<(LayerDir, OsString)>, Error> {
    let Some((name, parent)) = comps.split_last() else {
        return Ok(None);
    };
    match stack.resolve(parent)? {
        LowerEntry::Dir(dirs) => find_in_dirs(stack, &dirs, name),
        _ => Ok(None),
    }
}

/// The data segments of a file with holes (SEEK_DATA / SEEK_HOLE); `None` when the
/// filesystem cannot tell.
fn segments(fd: &OwnedFd, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut segs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(fd, SeekFrom::Hole(data)).ok()?.min(size);
        segs.push((data, hole - data));
        pos = hole;
    }
    if segs.len() == 1 && segs[0] == (0, size) {
        return None;
    }
    Some(segs)
}
