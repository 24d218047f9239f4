//! Commit a kept upper layer into a real directory: [`commit`]. This is how "try a change on
//! an overlay, then keep it" ends (`ovl run --keep DIR`, then `ovl commit DIR --into /usr`).
//!
//! The upper is read in the kernel's format (either xattr namespace) and applied to the
//! directory it was made over:
//! - a whiteout deletes (recursively, never following a symlink);
//! - an opaque directory replaces: whatever the upper does not hold there is deleted;
//! - every file, symlink or special file is written under a temporary name in its directory
//!   and renamed over the old one, so a reader sees the old or the new file, never half of one;
//! - a metacopy file (metadata-only copy-up) changes the metadata of the file in place;
//! - a renamed directory (`overlay.redirect`) is moved from its old place first, then the
//!   upper's changes inside it are applied;
//! - directory metadata (mode, owner, xattrs, times) is applied after the directory's content.
//!
//! With [`CommitOptions::dry_run`] nothing is written and the report lists what would change.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use overlay_core::XattrNamespace;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::Serialize;

use crate::changes::redirect_from;
use crate::error::Error;
use crate::layer_dir::{Entry, EntryKind, LayerDir};
use crate::target::{self, Root};

/// Options of [`commit`].
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// List what would change; write nothing.
    pub dry_run: bool,
    /// The upper's overlay xattr namespace; `None` reads both.
    pub xattr_namespace: Option<XattrNamespace>,
}

/// What happens to one path of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Created.
    Add,
    /// Replaced (content or type).
    Replace,
    /// Metadata changed in place (mode, owner, xattrs, times).
    Update,
    /// Deleted (recursively for a directory).
    Delete,
    /// Moved here from another path (a renamed directory).
    Move,
}

/// One change of a commit.
#[derive(Debug, Clone, Serialize)]
pub struct CommitChange {
    /// The path inside the target, absolute (`/bin/sh`).
    #[serde(serialize_with = "crate::ser_path")]
    pub path: PathBuf,
    /// What happens to it.
    pub action: Action,
    /// For a move: where from.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt")]
    pub from: Option<PathBuf>,
}

fn ser_opt<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// The result of [`commit`].
#[derive(Debug, Clone, Serialize)]
pub struct CommitReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The changes, in the order they were (or would be) made.
    pub changes: Vec<CommitChange>,
}

/// Apply the changes of the upper layer `upper` to the directory `into`.
///
/// ```no_run
/// use overlay_layers::commit::{commit, CommitOptions};
/// let plan = commit("./kept-upper", "/usr/local", &CommitOptions { dry_run: true, ..Default::default() })?;
/// for c in &plan.changes {
///     println!("{:?} {}", c.action, c.path.display());
/// }
/// commit("./kept-upper", "/usr/local", &CommitOptions::default())?;
/// # Ok::<(), overlay_layers::Error>(())
/// ```
pub fn commit(
    upper: impl AsRef<Path>,
    into: impl AsRef<Path>,
    opts: &CommitOptions,
) -> Result<CommitReport, Error> {
    let upper = upper.as_ref();
    let into = into.as_ref();
    let root = Root::open(into)?;
    let mut c = Committer {
        root,
        opts: opts.clone(),
        report: CommitReport {
            dry_run: opts.dry_run,
            changes: Vec::new(),
        },
        links: HashMap::new(),
        staged: Vec::new(),
        staging: None,
        dirs: Vec::new(),
        counter: 0,
        moved_away: Default::default(),
        created: Default::default(),
    };
    let up = LayerDir::open_root(upper)?;
    c.stage_renames(&up)?;
    // Iterative walk: (upper dir, its path components).
    let mut stack: Vec<(LayerDir, Vec<OsString>)> = vec![(up, Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut subs = c.dir(&dir, &rel)?;
        subs.reverse();
        stack.extend(subs);
    }
    c.finish_dirs()?;
    c.drop_staging()?;
    Ok(c.report)
}

struct Committer {
    root: Root,
    opts: CommitOptions,
    report: CommitReport,
    /// Upper inode → target path components of its first commit (hard links).
    links: HashMap<(u64, u64), Vec<OsString>>,
    /// Renamed directories and metacopy files: (new path, old path, staged name).
    staged: Vec<(Vec<OsString>, Vec<OsString>, Option<OsString>)>,
    /// The staging directory in the target's root (created on demand).
    staging: Option<(OsString, OwnedFd)>,
    /// Directories whose metadata is applied after their content.
    dirs: Vec<(Vec<OsString>, LayerDir, Entry)>,
    counter: u64,
    /// Dry run: old places of renamed entries the real run would move aside.
    moved_away: std::collections::HashSet<Vec<OsString>>,
    /// Directories this commit creates anew (their old content is not there).
    created: std::collections::HashSet<Vec<OsString>>,
}

fn bytes(c: &[OsString]) -> Vec<Vec<u8>> {
    c.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn shown(c: &[OsString]) -> PathBuf {
    crate::layer_dir::merged_path(c)
}

fn ns_xattr(
    dir: &LayerDir,
    name: Option<&OsStr>,
    suffix: &str,
    ns: Option<XattrNamespace>,
) -> Result<Option<Vec<u8>>, Error> {
    let spaces: &[XattrNamespace] = match ns {
        Some(XattrNamespace::Trusted) => &[XattrNamespace::Trusted],
        Some(XattrNamespace::User) => &[XattrNamespace::User],
        None => &[XattrNamespace::Trusted, XattrNamespace::User],
    };
    for s in spaces {
        if let Some(v) = dir.xattr(name, &s.name(suffix))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn ts(st: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

impl Committer {
    fn push(&mut self, rel: &[OsString], action: Action, from: Option<PathBuf>) {
        self.report.changes.push(CommitChange {
            path: shown(rel),
            action,
            from,
        });
    }

    fn terr(&self, rel: &[OsString], what: &str, e: Errno) -> Error {
        Error::errno(self.root.shown(&crate::target::join(&bytes(rel))), what, e)
    }

    /// The target directory at `rel`, if it exists as a directory.
    fn tdir(&mut self, rel: &[OsString]) -> Result<Option<OwnedFd>, Error> {
        // A dry run: a directory the real run creates anew is empty there, unless a
        // directory moved in below it brings content.
        if self.opts.dry_run {
            let created = (1..=rel.len())
                .rev()
                .find(|&i| self.created.contains(&rel[..i]));
            let moved = self
                .staged
                .iter()
                .filter(|(new, _, s)| s.is_some() && rel.starts_with(new))
                .map(|(new, _, _)| new.len())
                .max();
            if created.is_some_and(|c| moved.is_none_or(|m| c >= m)) {
                return Ok(None);
            }
        }
        let rel = &self.translate(rel)[..];
        match self.root.dir(&bytes(rel), false, &mut |_, _, _| {}) {
            Ok(fd) => Ok(Some(fd)),
            Err(target::WalkError::Missing(_)) if self.opts.dry_run => Ok(None),
            Err(target::WalkError::NotDir(_)) if self.opts.dry_run => Ok(None),
            Err(target::WalkError::Symlink(_)) if self.opts.dry_run => Ok(None),
            Err(w) => Err(Error::path(
                self.root.shown(&crate::target::join(&bytes(rel))),
                w.describe(),
            )),
        }
    }

    /// Dry run: where `rel` is in the target now, inside a directory the real run moves to
    /// `rel` (its old place). The path itself otherwise.
    fn translate(&self, rel: &[OsString]) -> Vec<OsString> {
        if !self.opts.dry_run {
            return rel.to_vec();
        }
        let best = self
            .staged
            .iter()
            .filter(|(new, _, s)| s.is_some() && rel.starts_with(new))
            .max_by_key(|(new, _, _)| new.len());
        match best {
            Some((new, old, _)) => {
                let mut r = old.clone();
                r.extend(rel[new.len()..].iter().cloned());
                r
            }
            None => rel.to_vec(),
        }
    }

    /// Move the old places of renamed directories (and renamed metacopy files) aside first,
    /// so that deleting their old names does not lose them.
    fn stage_renames(&mut self, up: &LayerDir) -> Result<(), Error> {
        let ns = self.opts.xattr_namespace;
        let mut found = Vec::new();
        // (upper directory, its path, its path in the lowers: where a relative redirect of
        // an entry in it points, as the kernel resolves it).
        let mut stack: Vec<(LayerDir, Vec<OsString>, Vec<OsString>)> =
            vec![(up.try_clone()?, Vec::new(), Vec::new())];
        while let Some((d, rel, lower_rel)) = stack.pop() {
            for e in d.entries()? {
                let mut r = rel.to_vec();
                r.push(e.name.clone());
                let is_dir = e.kind() == EntryKind::Dir;
                let redirect = ns_xattr(&d, Some(&e.name), "redirect", ns)?;
                let from: Vec<OsString> = match &redirect {
                    Some(v) => redirect_from(&lower_rel, v),
                    None => {
                        let mut l = lower_rel.clone();
                        l.push(e.name.clone());
                        l
                    }
                };
                if redirect.is_some()
                    && (is_dir || ns_xattr(&d, Some(&e.name), "metacopy", ns)?.is_some())
                {
                    found.push((r.clone(), from.clone()));
                }
                if is_dir {
                    stack.push((d.open_child(&e.name)?, r, from));
                }
            }
        }
        for (new, old) in found {
            // Hard links of one metacopy file share their old place: staged once.
            if let Some(s) = self
                .staged
                .iter()
                .find(|(_, o, s)| *o == old && s.is_some())
                .map(|(_, _, s)| s.clone())
            {
                self.staged.push((new, old, s));
                continue;
            }
            if self.opts.dry_run {
                // What the real run would move aside is gone from its old place.
                let (p, n) = self.locate(&old);
                let exists = match (p, n) {
                    (Some(p), Some(n)) => {
                        !self.moved_away.contains(&old)
                            && target::lstat(p.as_fd(), &n).ok().flatten().is_some()
                    }
                    _ => false,
                };
                let sname = exists.then(|| OsString::from("dry-run"));
                if exists {
                    self.moved_away.insert(old.clone());
                }
                self.staged.push((new, old, sname));
                continue;
            }
            // Where `old` is now: an earlier move may have taken a directory above it.
            let (cur_parent, cur_name) = self.locate(&old);
            let Some(name) = cur_name else { continue };
            let pfd = match cur_parent {
                Some(fd) => fd,
                None => continue,
            };
            if target::lstat(pfd.as_fd(), &name)
                .map_err(|e| self.terr(&old, "cannot stat", e))?
                .is_none()
            {
                self.staged.push((new, old, None));
                continue;
            }
            self.counter += 1;
            let sname = OsString::from(self.counter.to_string());
            let st = self.staging_dir()?;
            rustix::fs::renameat(&pfd, &name, st, &sname)
                .map_err(|e| self.terr(&old, "cannot move aside", e))?;
            self.staged.push((new, old, Some(sname)));
        }
        Ok(())
    }

    /// The current parent descriptor and name of the target path `old`, following earlier
    /// stagings of a directory above it.
    fn locate(&mut self, old: &[OsString]) -> (Option<OwnedFd>, Option<OsString>) {
        let Some((name, parent)) = old.split_last() else {
            return (None, None);
        };
        for (_, sold, sname) in self.staged.iter().rev() {
            if let Some(sname) = sname {
                if parent.starts_with(sold) {
                    let Some((_, sfd)) = &self.staging else { break };
                    let mut comps = vec![sname.clone()];
                    comps.extend(parent[sold.len()..].iter().cloned());
                    let mut cur = rustix::io::fcntl_dupfd_cloexec(sfd, 0).ok();
                    for c in comps {
                        cur = cur.and_then(|fd| {
                            rustix::fs::openat(
                                &fd,
                                &c,
                                OFlags::PATH
                                    | OFlags::DIRECTORY
                                    | OFlags::NOFOLLOW
                                    | OFlags::CLOEXEC,
                                Mode::empty(),
                            )
                            .ok()
                        });
                    }
                    return (cur, Some(name.clone()));
                }
            }
        }
        let fd = self.root.dir(&bytes(parent), false, &mut |_, _, _| {}).ok();
        (fd, Some(name.clone()))
    }

    fn staging_dir(&mut self) -> Result<BorrowedFd<'_>, Error> {
        if self.staging.is_none() {
            let name = OsString::from(format!(".ovl-commit-{}", std::process::id()));
            rustix::fs::mkdirat(self.root.fd(), &name, Mode::from_raw_mode(0o700)).map_err(
                |e| {
                    Error::errno(
                        self.root.shown(name.as_bytes()),
                        "cannot create a staging directory",
                        e,
                    )
                },
            )?;
            let fd = rustix::fs::openat(
                self.root.fd(),
                &name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::errno(self.root.shown(name.as_bytes()), "cannot open", e))?;
            self.staging = Some((name, fd));
        }
        Ok(self.staging.as_ref().expect("staging").1.as_fd())
    }

    fn drop_staging(&mut self) -> Result<(), Error> {
        if let Some((name, _)) = self.staging.take() {
            target::remove_tree(self.root.fd(), &name).map_err(|e| {
                Error::errno(
                    self.root.shown(name.as_bytes()),
                    "cannot remove the staging directory",
                    e,
                )
            })?;
        }
        Ok(())
    }

    fn staged_for(&self, rel: &[OsString]) -> Option<(Vec<OsString>, Option<OsString>)> {
        self.staged
            .iter()
            .find(|(new, _, _)| new.as_slice() == rel)
            .map(|(_, old, s)| (old.clone(), s.clone()))
    }

    fn dir(
        &mut self,
        dir: &LayerDir,
        rel: &[OsString],
    ) -> Result<Vec<(LayerDir, Vec<OsString>)>, Error> {
        let ns = self.opts.xattr_namespace;
        let tfd = self.tdir(rel)?;
        let parent_x = ns_xattr(dir, None, "opaque", ns)?.as_deref() == Some(b"x");
        let entries = dir.entries()?;
        // The root of an opaque upper (rare): empty the target first.
        if rel.is_empty() && ns_xattr(dir, None, "opaque", ns)?.as_deref() == Some(b"y") {
            if let Some(t) = &tfd {
                self.empty_except(t.as_fd(), rel, &entries)?;
            }
        }
        let mut subs = Vec::new();
        for e in entries {
            let mut r = rel.to_vec();
            r.push(e.name.clone());
            let existing = match &tfd {
                Some(t) => target::lstat(t.as_fd(), &e.name)
                    .map_err(|er| self.terr(&r, "cannot stat", er))?,
                None => None,
            };
            // A dry run sees the old places of renamed entries as the real run will: moved.
            // (The target path looked at is the parent's place now plus the name.)
            let probe = {
                let mut p = self.translate(rel);
                p.push(e.name.clone());
                p
            };
            let existing =
                existing.filter(|_| !(self.opts.dry_run && self.moved_away.contains(&probe)));
            let xwhiteout = parent_x
                && e.file_type() == FileType::RegularFile
                && e.stat.st_size == 0
                && ns_xattr(dir, Some(&e.name), "whiteout", ns)?.is_some();
            match e.kind() {
                EntryKind::Whiteout => self.delete(tfd.as_ref(), &r, existing.is_some())?,
                _ if xwhiteout => self.delete(tfd.as_ref(), &r, existing.is_some())?,
                EntryKind::Dir => {
                    let opaque =
                        ns_xattr(dir, Some(&e.name), "opaque", ns)?.as_deref() == Some(b"y");
                    let ex_dir = existing
                        .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
                    if let Some((old, sname)) = self.staged_for(&r) {
                        // A renamed directory: its old content moves here, then the upper's
                        // changes inside it apply.
                        if existing.is_some() {
                            self.remove(tfd.as_ref(), &r)?;
                        }
                        self.push(&r, Action::Move, Some(shown(&old)));
                        if sname.is_none() || opaque {
                            self.created.insert(r.clone());
                        }
                        if !self.opts.dry_run {
                            let t = tfd.as_ref().expect("parent exists when not a dry run");
                            match (sname, opaque) {
                                (Some(s), false) => {
                                    let st = self.staging_dir()?;
                                    rustix::fs::renameat(st, &s, t, &e.name).map_err(|er| {
                                        self.terr(&r, "cannot move into place", er)
                                    })?;
                                }
                                _ => {
                                    rustix::fs::mkdirat(t, &e.name, Mode::from_raw_mode(0o700))
                                        .map_err(|er| self.terr(&r, "cannot create", er))?;
                                }
                            }
                        }
                    } else if !ex_dir {
                        if existing.is_some() {
                            self.remove(tfd.as_ref(), &r)?;
                            self.push(&r, Action::Replace, None);
                        } else {
                            self.push(&r, Action::Add, None);
                        }
                        self.created.insert(r.clone());
                        if !self.opts.dry_run {
                            let t = tfd.as_ref().expect("parent exists when not a dry run");
                            rustix::fs::mkdirat(t, &e.name, Mode::from_raw_mode(0o700))
                                .map_err(|er| self.terr(&r, "cannot create", er))?;
                        }
                    } else if opaque {
                        let sub = dir.open_child(&e.name)?;
                        let inner = sub.entries()?;
                        if let Some(t) = self.tdir(&r)? {
                            self.empty_except(t.as_fd(), &r, &inner)?;
                        }
                    }
                    self.dirs.push((r.clone(), dir.try_clone()?, e.clone()));
                    subs.push((dir.open_child(&e.name)?, r));
                }
                EntryKind::Other => {
                    let metacopy = ns_xattr(dir, Some(&e.name), "metacopy", ns)?.is_some();
                    if metacopy {
                        self.metacopy(dir, &e, tfd.as_ref(), &r, existing)?;
                    } else {
                        self.replace(dir, &e, tfd.as_ref(), &r, existing.is_some())?;
                    }
                }
            }
        }
        Ok(subs)
    }

    /// Delete what the target has at `rel` (a whiteout).
    fn delete(
        &mut self,
        parent: Option<&OwnedFd>,
        rel: &[OsString],
        exists: bool,
    ) -> Result<(), Error> {
        if !exists || (self.opts.dry_run && self.moved_away.contains(rel)) {
            return Ok(());
        }
        self.push(rel, Action::Delete, None);
        self.remove(parent, rel)
    }

    fn remove(&mut self, parent: Option<&OwnedFd>, rel: &[OsString]) -> Result<(), Error> {
        if self.opts.dry_run {
            return Ok(());
        }
        let p = parent.expect("parent exists when not a dry run");
        let name = rel.last().expect("a name");
        target::remove_tree(p.as_fd(), name).map_err(|e| self.terr(rel, "cannot delete", e))
    }

    /// An opaque directory: delete what the upper does not hold.
    fn empty_except(
        &mut self,
        t: BorrowedFd<'_>,
        rel: &[OsString],
        keep: &[Entry],
    ) -> Result<(), Error> {
        let names = target::list(t).map_err(|e| self.terr(rel, "cannot list", e))?;
        for n in names {
            let n = OsString::from_vec_compat(n);
            if keep.iter().any(|e| e.name == n) {
                continue;
            }
            let mut r = rel.to_vec();
            r.push(n.clone());
            self.push(&r, Action::Delete, None);
            if !self.opts.dry_run {
                target::remove_tree(t, &n).map_err(|e| self.terr(&r, "cannot delete", e))?;
            }
        }
        Ok(())
    }

    /// Write a non-directory under a temporary name and rename it over the old one.
    fn replace(
        &mut self,
        dir: &LayerDir,
        e: &Entry,
        parent: Option<&OwnedFd>,
        rel: &[OsString],
        exists: bool,
    ) -> Result<(), Error> {
        self.push(
            rel,
            if exists { Action::Replace } else { Action::Add },
            None,
        );
        let key = (e.stat.st_dev, e.stat.st_ino);
        if self.opts.dry_run {
            if e.stat.st_nlink > 1 {
                self.links.entry(key).or_insert_with(|| rel.to_vec());
            }
            return Ok(());
        }
        let t = parent.expect("parent exists when not a dry run");
        self.counter += 1;
        let tmp = OsString::from(format!(
            ".{}.ovl-commit-{}-{}",
            e.name
                .to_string_lossy()
                .chars()
                .take(64)
                .collect::<String>(),
            std::process::id(),
            self.counter
        ));
        let st = e.stat;
        let ft = e.file_type();
        let key = (st.st_dev, st.st_ino);
        let linked = if st.st_nlink > 1 {
            self.links.get(&key).cloned()
        } else {
            None
        };
        if let Some(first) = linked {
            let (fp, fname) = first
                .split_last()
                .map(|(n, p)| (p.to_vec(), n.clone()))
                .expect("name");
            let ffd = self
                .root
                .dir(&bytes(&fp), false, &mut |_, _, _| {})
                .map_err(|w| Error::path(shown(&first), w.describe()))?;
            rustix::fs::linkat(&ffd, &fname, t, &tmp, AtFlags::empty())
                .map_err(|er| self.terr(rel, "cannot link", er))?;
        } else {
            match ft {
                FileType::RegularFile => {
                    let src = dir.open_file(&e.name)?;
                    let dst = rustix::fs::openat(
                        t,
                        &tmp,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|er| self.terr(rel, "cannot create", er))?;
                    copy_data(&src, &dst, st.st_size as u64)
                        .map_err(|er| self.terr(rel, "cannot copy", er))?;
                }
                FileType::Symlink => {
                    let l = dir.readlink(&e.name)?;
                    rustix::fs::symlinkat(OsStr::from_bytes(&l), t, &tmp)
                        .map_err(|er| self.terr(rel, "cannot create", er))?;
                }
                FileType::Fifo
                | FileType::CharacterDevice
                | FileType::BlockDevice
                | FileType::Socket => {
                    rustix::fs::mknodat(t, &tmp, ft, Mode::from_raw_mode(0o600), st.st_rdev)
                        .map_err(|er| self.terr(rel, "cannot create", er))?;
                }
                _ => return Err(Error::path(dir.path().join(&e.name), "unknown file type")),
            }
            self.metadata(dir, e, t.as_fd(), &tmp, rel, false)?;
            if st.st_nlink > 1 {
                self.links.insert(key, rel.to_vec());
            }
        }
        // A directory in the way cannot be renamed over: it goes first.
        if let Ok(Some(s)) = target::lstat(t.as_fd(), rel.last().expect("name")) {
            if FileType::from_raw_mode(s.st_mode) == FileType::Directory {
                target::remove_tree(t.as_fd(), rel.last().expect("name"))
                    .map_err(|er| self.terr(rel, "cannot delete", er))?;
            }
        }
        rustix::fs::renameat(t, &tmp, t, rel.last().expect("name"))
            .map_err(|er| self.terr(rel, "cannot rename into place", er))
    }

    /// A metadata-only copy-up: the data stays (or moves from the old name), the metadata
    /// changes.
    fn metacopy(
        &mut self,
        dir: &LayerDir,
        e: &Entry,
        parent: Option<&OwnedFd>,
        rel: &[OsString],
        existing: Option<rustix::fs::Stat>,
    ) -> Result<(), Error> {
        // Another name of an inode already committed: a hard link to it.
        let key = (e.stat.st_dev, e.stat.st_ino);
        if e.stat.st_nlink > 1 && self.links.contains_key(&key) {
            return self.replace(dir, e, parent, rel, existing.is_some());
        }
        if e.stat.st_nlink > 1 {
            self.links.insert(key, rel.to_vec());
        }
        if let Some((old, sname)) = self.staged_for(rel) {
            self.push(rel, Action::Move, Some(shown(&old)));
            if self.opts.dry_run {
                return Ok(());
            }
            let t = parent.expect("parent");
            let Some(s) = sname else {
                return Err(Error::path(
                    dir.path().join(&e.name),
                    format!(
                        "a metacopy file whose data ({}) is not in the target",
                        shown(&old).display()
                    ),
                ));
            };
            // A directory in the way cannot be renamed over: it goes first.
            if existing.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            {
                target::remove_tree(t.as_fd(), &e.name)
                    .map_err(|er| self.terr(rel, "cannot delete", er))?;
            }
            let st = self.staging_dir()?;
            rustix::fs::renameat(st, &s, t, &e.name)
                .map_err(|er| self.terr(rel, "cannot move into place", er))?;
        } else {
            // (A dry run cannot always see inside directories only the real run moves.)
            if existing.is_none() && !self.opts.dry_run {
                return Err(Error::path(dir.path().join(&e.name), "a metacopy file whose data is not in the target (was the upper made over another directory?)"));
            }
            self.push(rel, Action::Update, None);
            if self.opts.dry_run {
                return Ok(());
            }
        }
        let t = parent.expect("parent");
        self.metadata(dir, e, t.as_fd(), rel.last().expect("name"), rel, true)
    }

    /// Owner, mode, xattrs and times of the upper's `e` onto `name` in `t`. With `sync`, the
    /// target's xattrs that the upper does not have are removed.
    fn metadata(
        &mut self,
        dir: &LayerDir,
        e: &Entry,
        t: BorrowedFd<'_>,
        name: &OsStr,
        rel: &[OsString],
        sync: bool,
    ) -> Result<(), Error> {
        let st = e.stat;
        let ft = e.file_type();
        match rustix::fs::chownat(
            t,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(Errno::PERM) => {}
            Err(er) => return Err(self.terr(rel, "cannot chown", er)),
        }
        let want: Vec<(String, Vec<u8>)> = dir
            .xattrs(Some(&e.name))?
            .into_iter()
            .filter_map(|(k, v)| {
                let spaces = match self.opts.xattr_namespace {
                    Some(ns) => vec![ns],
                    None => vec![XattrNamespace::Trusted, XattrNamespace::User],
                };
                for s in spaces {
                    if k.starts_with(s.prefix()) {
                        return s
                            .visible_name(k.as_bytes())
                            .map(|n| (String::from_utf8_lossy(&n).into_owned(), v));
                    }
                }
                Some((k, v))
            })
            .collect();
        if sync {
            let p = target::proc_path(t, Some(name));
            let mut buf = vec![0u8; 65536];
            if let Ok(n) = rustix::fs::llistxattr(&p, &mut buf) {
                for k in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
                    let ks = String::from_utf8_lossy(k);
                    if !want.iter().any(|(w, _)| *w == ks) {
                        let _ = rustix::fs::lremovexattr(&p, OsStr::from_bytes(k));
                    }
                }
            }
        }
        for (k, v) in &want {
            if let Err(er) = target::set_xattr(t, Some(name), k.as_bytes(), v) {
                if !(ft == FileType::Symlink && er == Errno::PERM) {
                    return Err(self.terr(rel, &format!("cannot set xattr {k}"), er));
                }
            }
        }
        if ft != FileType::Symlink {
            rustix::fs::chmodat(
                t,
                name,
                Mode::from_raw_mode(st.st_mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|er| self.terr(rel, "cannot chmod", er))?;
        }
        rustix::fs::utimensat(t, name, &ts(&st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|er| self.terr(rel, "cannot set times", er))
    }

    fn finish_dirs(&mut self) -> Result<(), Error> {
        if self.opts.dry_run {
            return Ok(());
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        for (rel, parent, e) in dirs {
            let (name, p) = rel.split_last().expect("name");
            let pfd = self
                .root
                .dir(&bytes(p), false, &mut |_, _, _| {})
                .map_err(|w| Error::path(shown(p), w.describe()))?;
            self.metadata(&parent, &e, pfd.as_fd(), name, &rel, true)?;
        }
        Ok(())
    }
}

trait FromVecCompat {
    fn from_vec_compat(v: Vec<u8>) -> OsString;
}

impl FromVecCompat for OsString {
    fn from_vec_compat(v: Vec<u8>) -> OsString {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(v)
    }
}

/// Copy `len` bytes: `copy_file_range` (a reflink or an in-kernel copy where possible), then
/// read/write.
pub(crate) fn copy_data(src: &OwnedFd, dst: &OwnedFd, len: u64) -> Result<(), Errno> {
    let mut done = 0u64;
    while done < len {
        match rustix::fs::copy_file_range(src, None, dst, None, (len - done).min(1 << 30) as usize)
        {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = rustix::io::pread(src, &mut buf, done)?;
                    if n == 0 {
                        return Ok(());
                    }
                    let mut w = 0;
                    while w < n {
                        w += rustix::io::pwrite(dst, &buf[w..n], done + w as u64)?;
                    }
                    done += n as u64;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
