//! What an upper layer changes relative to its lowers, read from the on-disk format without
//! mounting: [`changes`] (what `ovl diff` prints).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use overlay_core::format::Opacity;
use overlay_core::XattrNamespace;
use serde::Serialize;

use crate::error::Error;
use crate::layer_dir::{merged_path, Entry, EntryKind, LayerDir};

/// Kind of change (`docker diff` prints them as A, C and D; so does the JSON form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChangeKind {
    /// Added: not in the lowers.
    #[serde(rename = "A")]
    Added,
    /// Modified: exists in the lowers (a directory holding changes counts as modified).
    #[serde(rename = "C")]
    Modified,
    /// Deleted: a whiteout, or a lower entry an opaque directory hides.
    #[serde(rename = "D")]
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`, as `docker diff` prints it.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path of the merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// Absolute path inside the merged view.
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
    /// For directories renamed through the overlay (`overlay.redirect`): where the content
    /// comes from in the lowers.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_path"
    )]
    pub renamed_from: Option<PathBuf>,
}

fn ser_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn ser_opt_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// Options of a diff.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Read `.wh.NAME`, `.wh..wh..opq` and `user.fuseoverlayfs.opaque` as whiteouts/opacity.
    pub aufs: bool,
}

/// Whether the directory `name` in `dir` (`dir` itself for `None`) is opaque:
/// `overlay.opaque=y` in either xattr namespace, and with `--aufs` also
/// `user.fuseoverlayfs.opaque=y` or a `.wh..wh..opq` marker inside it.
fn is_opaque(dir: &LayerDir, name: Option<&OsStr>, opts: &DiffOptions) -> Result<bool, Error> {
    for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
        if Opacity::from_xattr(dir.xattr(name, ns.opaque())?.as_deref()) == Opacity::Opaque {
            return Ok(true);
        }
    }
    if opts.aufs {
        if dir.xattr(name, "user.fuseoverlayfs.opaque")?.as_deref() == Some(b"y") {
            return Ok(true);
        }
        let sub = match name {
            None => None,
            Some(n) => Some(dir.open_child(n)?),
        };
        let d = sub.as_ref().unwrap_or(dir);
        if d.stat_child(OsStr::from_bytes(overlay_core::format::AUFS_OPAQUE_MARKER))?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn overlay_xattr(
    dir: &LayerDir,
    name: Option<&OsStr>,
    suffix: &str,
) -> Result<Option<Vec<u8>>, Error> {
    for ns in ["trusted.overlay.", "user.overlay."] {
        if let Some(v) = dir.xattr(name, &format!("{ns}{suffix}"))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// How an entry of one layer reads, after format interpretation.
enum Seen {
    Whiteout,
    Dir { opaque: bool },
    Other,
}

fn classify(
    dir: &LayerDir,
    e: &Entry,
    hidden_by_aufs: &BTreeSet<OsString>,
    opts: &DiffOptions,
) -> Result<Seen, Error> {
    if hidden_by_aufs.contains(&e.name) {
        return Ok(Seen::Whiteout);
    }
    Ok(match e.kind() {
        EntryKind::Whiteout => Seen::Whiteout,
        EntryKind::Dir => Seen::Dir {
            opaque: is_opaque(dir, Some(&e.name), opts)?,
        },
        EntryKind::Other => Seen::Other,
    })
}

/// The merged lower layers, resolved the way the kernel resolves them.
pub struct LowerStack {
    /// Layer roots, top-first.
    roots: Vec<LayerDir>,
    opts: DiffOptions,
}

/// What the lowers hold at a path.
pub enum LowerEntry {
    /// Nothing (absent or whited out).
    Absent,
    /// A non-directory.
    Other,
    /// A directory, merged from these layer directories (top-first).
    Dir(Vec<LayerDir>),
}

impl LowerStack {
    /// Open the lowers, given bottom-first.
    pub fn open(lowers_bottom_first: &[PathBuf], opts: DiffOptions) -> Result<Self, Error> {
        let mut roots = Vec::new();
        for l in lowers_bottom_first.iter().rev() {
            roots.push(LayerDir::open_root(l)?);
        }
        Ok(LowerStack { roots, opts })
    }

    /// The layer roots, top-first, opened anew.
    pub fn root_dirs(&self) -> Result<Vec<LayerDir>, Error> {
        self.roots
            .iter()
            .map(|r| LayerDir::open_root(r.path()))
            .collect()
    }

    /// Resolve `components` from the root.
    pub fn resolve(&self, components: &[OsString]) -> Result<LowerEntry, Error> {
        let mut cur = LowerEntry::Dir(self.root_dirs()?);
        for c in components {
            cur = match cur {
                LowerEntry::Dir(dirs) => self.lookup(&dirs, c)?,
                _ => return Ok(LowerEntry::Absent),
            };
        }
        Ok(cur)
    }

    /// Look up `name` in a merged directory (its layer dirs top-first).
    pub fn lookup(&self, dirs: &[LayerDir], name: &OsStr) -> Result<LowerEntry, Error> {
        let mut found: Vec<LayerDir> = Vec::new();
        for d in dirs {
            if self.opts.aufs {
                let wh = overlay_core::format::aufs_whiteout_name(name);
                if d.stat_child(&wh)?.is_some() {
                    break;
                }
            }
            let Some(e) = d.stat_child(name)? else {
                continue;
            };
            match classify(d, &e, &BTreeSet::new(), &self.opts)? {
                Seen::Whiteout => break,
                Seen::Other => {
                    if found.is_empty() {
                        return Ok(LowerEntry::Other);
                    }
                    break;
                }
                Seen::Dir { opaque } => {
                    found.push(d.open_child(name)?);
                    if opaque {
                        break;
                    }
                }
            }
        }
        Ok(if found.is_empty() {
            LowerEntry::Absent
        } else {
            LowerEntry::Dir(found)
        })
    }

    /// The visible names of a merged directory.
    pub fn list(&self, dirs: &[LayerDir]) -> Result<BTreeSet<OsString>, Error> {
        let mut decided: BTreeSet<OsString> = BTreeSet::new();
        let mut visible = BTreeSet::new();
        for d in dirs {
            let entries = d.entries()?;
            let mut aufs_hidden = BTreeSet::new();
            if self.opts.aufs {
                for e in &entries {
                    if let Some(t) = overlay_core::format::aufs_whiteout_target(&e.name) {
                        aufs_hidden.insert(t.to_os_string());
                    }
                }
            }
            for e in &entries {
                if self.opts.aufs && overlay_core::format::is_aufs_metadata_name(&e.name) {
                    continue;
                }
                if !decided.insert(e.name.clone()) {
                    continue;
                }
                if !matches!(classify(d, e, &aufs_hidden, &self.opts)?, Seen::Whiteout) {
                    visible.insert(e.name.clone());
                }
            }
            for t in aufs_hidden {
                decided.insert(t);
            }
        }
        Ok(visible)
    }
}

/// The changes `upper` makes over `lowers` (bottom-first), sorted by path.
///
/// With lowers, each path is resolved in the merged lowers the way the kernel resolves it
/// (whiteouts, opaque directories, redirects), so added and modified are exact, whiteouts that
/// hide nothing are skipped, and each lower entry an opaque directory hides is listed as
/// deleted. With no lowers only the upper is read: a non-directory is modified when it carries
/// an `overlay.origin` (or metacopy) record, a directory is modified, a whiteout deleted.
///
/// ```no_run
/// use overlay_layers::{changes, ChangeKind};
/// for c in changes(&["/srv/base"], "/srv/upper")? {
///     if c.kind == ChangeKind::Deleted {
///         println!("gone: {}", c.path.display());
///     }
/// }
/// # Ok::<(), overlay_layers::Error>(())
/// ```
pub fn changes<L: AsRef<Path>>(
    lowers: &[L],
    upper: impl AsRef<Path>,
) -> Result<std::vec::IntoIter<Change>, Error> {
    changes_with(lowers, upper, &DiffOptions::default())
}

/// [`changes`] with options (AUFS-style whiteouts).
pub fn changes_with<L: AsRef<Path>>(
    lowers: &[L],
    upper: impl AsRef<Path>,
    opts: &DiffOptions,
) -> Result<std::vec::IntoIter<Change>, Error> {
    let lowers: Vec<PathBuf> = lowers.iter().map(|l| l.as_ref().to_path_buf()).collect();
    let stack = if lowers.is_empty() {
        None
    } else {
        Some(LowerStack::open(&lowers, opts.clone())?)
    };
    Ok(diff(upper.as_ref(), stack.as_ref(), opts)?.into_iter())
}

/// Compute the changes of `upper` relative to `lowers` (exact) or on the upper alone.
pub fn diff(
    upper: &Path,
    lowers: Option<&LowerStack>,
    opts: &DiffOptions,
) -> Result<Vec<Change>, Error> {
    let root = LayerDir::open_root(upper)?;
    let mut out = Vec::new();
    let lower_root = match lowers {
        Some(l) => Some(l.root_dirs()?),
        None => None,
    };
    walk(&root, &mut Vec::new(), lowers, lower_root, opts, &mut out)?;
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(out)
}

/// Where in the tree a walk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Entries are compared with the lowers at the same path.
    Normal,
    /// Below an opaque directory: the lowers at this path are hidden, every subdirectory
    /// replaces its lower counterpart.
    Opaque,
    /// Below a renamed directory (`overlay.redirect`): everything is new at this path.
    Renamed,
}

fn push(out: &mut Vec<Change>, kind: ChangeKind, path: PathBuf, renamed_from: Option<PathBuf>) {
    out.push(Change {
        kind,
        path,
        renamed_from,
    });
}

/// Report every entry of a merged lower subtree as added (it appears under a new name).
/// Depth first, with the directories on the way on a heap stack (layers may be deep).
fn add_lower_subtree(
    ls: &LowerStack,
    dirs: &[LayerDir],
    rel: &mut Vec<OsString>,
    skip: &BTreeSet<OsString>,
    out: &mut Vec<Change>,
) -> Result<(), Error> {
    let depth = rel.len();
    let first: Vec<OsString> = ls
        .list(dirs)?
        .into_iter()
        .filter(|n| !skip.contains(n))
        .collect();
    // Each frame: the directory's layers (None: `dirs`) and the names left to report.
    let mut stack: Vec<(Option<Vec<LayerDir>>, std::vec::IntoIter<OsString>)> =
        vec![(None, first.into_iter())];
    while let Some((own, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            if rel.len() > depth {
                rel.pop();
            }
            continue;
        };
        let here = own.as_deref().unwrap_or(dirs);
        rel.push(name.clone());
        push(out, ChangeKind::Added, merged_path(rel), None);
        if let LowerEntry::Dir(sub) = ls.lookup(here, &name)? {
            let names: Vec<OsString> = ls.list(&sub)?.into_iter().collect();
            stack.push((Some(sub), names.into_iter()));
        } else {
            rel.pop();
        }
    }
    Ok(())
}

/// One upper directory being walked: its place, and the entries left to compare.
struct Frame {
    /// The upper directory (None: the root, which the caller holds).
    dir: Option<LayerDir>,
    /// Its own place in the lowers (see [`walk`]).
    low: Vec<OsString>,
    /// The merged lower directory at this path.
    lower_here: Option<Vec<LayerDir>>,
    ctx: Context,
    aufs_hidden: BTreeSet<OsString>,
    work: std::vec::IntoIter<(OsString, Option<Entry>)>,
}

/// Walk an upper tree from `root`. `lower_root` is the merged lower directory at the root
/// (`None` with lowers given means the lowers have nothing there). Each directory's `low` is
/// its own place in the lowers (its merged path, unless a renamed directory above moved
/// it), against which a relative `overlay.redirect` of an entry is resolved. Depth first,
/// with the directories on the way on a heap stack, not in nested calls: an upper's depth
/// is its writer's choice.
fn walk(
    root: &LayerDir,
    rel: &mut Vec<OsString>,
    lowers: Option<&LowerStack>,
    lower_root: Option<Vec<LayerDir>>,
    opts: &DiffOptions,
    out: &mut Vec<Change>,
) -> Result<(), Error> {
    let mut stack = vec![enter(
        root,
        rel,
        Vec::new(),
        lowers,
        lower_root,
        Context::Normal,
        opts,
        out,
    )?];
    while let Some(top) = stack.last_mut() {
        let Some((name, entry)) = top.work.next() else {
            stack.pop();
            if !stack.is_empty() {
                rel.pop();
            }
            continue;
        };
        let dir = top.dir.as_ref().unwrap_or(root);
        let (low, lower_here, ctx, aufs_hidden) =
            (&top.low, top.lower_here.as_ref(), top.ctx, &top.aufs_hidden);
        let entry = entry.as_ref();
        rel.push(name.clone());
        let path = merged_path(rel);
        let lower_entry = match (lowers, &lower_here) {
            (Some(ls), Some(dirs)) => Some(ls.lookup(dirs, &name)?),
            (Some(_), None) => Some(LowerEntry::Absent),
            (None, _) => None,
        };
        let seen = match entry {
            None => Seen::Whiteout,
            Some(e) => classify(dir, e, aufs_hidden, opts)?,
        };
        match seen {
            Seen::Whiteout => {
                // A whiteout hides a lower entry: a deletion, unless the lowers are known and
                // have nothing here, or the entry is new at this path anyway.
                let hides = !matches!(
                    (&lower_entry, ctx),
                    (_, Context::Renamed) | (Some(LowerEntry::Absent), _)
                );
                if hides {
                    push(out, ChangeKind::Deleted, path, None);
                }
            }
            Seen::Other => {
                let kind = match (&lower_entry, ctx) {
                    (_, Context::Renamed) => ChangeKind::Added,
                    (Some(LowerEntry::Absent), _) => ChangeKind::Added,
                    (Some(_), _) => ChangeKind::Modified,
                    (None, _) => {
                        if overlay_xattr(dir, Some(&name), "origin")?.is_some()
                            || overlay_xattr(dir, Some(&name), "metacopy")?.is_some()
                        {
                            ChangeKind::Modified
                        } else {
                            ChangeKind::Added
                        }
                    }
                };
                push(out, kind, path, None);
            }
            Seen::Dir { opaque } => {
                // Resolved against this directory's place in the lowers, not its merged
                // path (they differ below a renamed directory), as export and commit do.
                let redirect_comps =
                    overlay_xattr(dir, Some(&name), "redirect")?.map(|v| redirect_from(low, &v));
                let redirect = redirect_comps.as_deref().map(merged_path);
                let child_low = match &redirect_comps {
                    Some(c) => c.clone(),
                    None => {
                        let mut c = low.to_vec();
                        c.push(name.clone());
                        c
                    }
                };
                let opaque = opaque || ctx == Context::Opaque;
                let (kind, below, sub_ctx) = if let Some(src) = &redirect {
                    // A renamed directory: new at this path, merged with its origin's content.
                    let below = match lowers {
                        Some(ls) if !opaque => {
                            let comps: Vec<OsString> = src
                                .components()
                                .skip(1)
                                .map(|c| c.as_os_str().to_os_string())
                                .collect();
                            match ls.resolve(&comps)? {
                                LowerEntry::Dir(d) => Some(d),
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    (ChangeKind::Added, below, Context::Renamed)
                } else if ctx == Context::Renamed {
                    let below = match lower_entry {
                        Some(LowerEntry::Dir(d)) if !opaque => Some(d),
                        _ => None,
                    };
                    (ChangeKind::Added, below, Context::Renamed)
                } else {
                    match lower_entry {
                        // Without lowers: see the documentation of `ovl diff`.
                        None => (ChangeKind::Modified, None, Context::Normal),
                        Some(LowerEntry::Absent) => (ChangeKind::Added, None, Context::Normal),
                        Some(LowerEntry::Other) => (ChangeKind::Modified, None, Context::Normal),
                        Some(LowerEntry::Dir(d)) if opaque => {
                            (ChangeKind::Modified, Some(d), Context::Opaque)
                        }
                        Some(LowerEntry::Dir(d)) => {
                            (ChangeKind::Modified, Some(d), Context::Normal)
                        }
                    }
                };
                push(out, kind, path, redirect);
                let sub = dir.open_child(&name)?;
                let mut frame = enter(&sub, rel, child_low, lowers, below, sub_ctx, opts, out)?;
                frame.dir = Some(sub);
                stack.push(frame);
                continue;
            }
        }
        rel.pop();
    }
    Ok(())
}

/// Start walking `dir`: list its entries, and report what its context makes of the lower
/// entries the upper does not name. The caller puts `dir` in the frame (the root stays
/// with the caller).
#[allow(clippy::too_many_arguments)]
fn enter(
    dir: &LayerDir,
    rel: &mut Vec<OsString>,
    low: Vec<OsString>,
    lowers: Option<&LowerStack>,
    lower_here: Option<Vec<LayerDir>>,
    ctx: Context,
    opts: &DiffOptions,
    out: &mut Vec<Change>,
) -> Result<Frame, Error> {
    let entries = dir.entries()?;
    let mut aufs_hidden = BTreeSet::new();
    if opts.aufs {
        for e in &entries {
            if let Some(t) = overlay_core::format::aufs_whiteout_target(&e.name) {
                aufs_hidden.insert(t.to_os_string());
            }
        }
    }
    let present: BTreeSet<OsString> = entries.iter().map(|e| e.name.clone()).collect();
    let mut work: Vec<(OsString, Option<Entry>)> = entries
        .iter()
        .filter(|e| !(opts.aufs && overlay_core::format::is_aufs_metadata_name(&e.name)))
        .map(|e| (e.name.clone(), Some(e.clone())))
        .collect();
    // AUFS whiteouts whose target is absent from the upper: deletions to report.
    for t in &aufs_hidden {
        if !present.contains(t) {
            work.push((t.clone(), None));
        }
    }
    work.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    // Lower entries that show through under a new name, or that an opaque directory hides.
    if let (Some(ls), Some(dirs)) = (lowers, &lower_here) {
        let mut shadowed = present.clone();
        shadowed.extend(aufs_hidden.iter().cloned());
        match ctx {
            Context::Renamed => add_lower_subtree(ls, dirs, rel, &shadowed, out)?,
            Context::Opaque => {
                for name in ls.list(dirs)? {
                    if !shadowed.contains(&name) {
                        rel.push(name);
                        push(out, ChangeKind::Deleted, merged_path(rel), None);
                        rel.pop();
                    }
                }
            }
            Context::Normal => {}
        }
    }

    Ok(Frame {
        dir: None,
        low,
        lower_here,
        ctx,
        aufs_hidden,
        work: work.into_iter(),
    })
}

/// Where an entry's redirect points, as lower path components: an absolute redirect names
/// the path; a relative one names a sibling in the lowers, that is inside `lower_parent`, the
/// parent's own place in the lowers (which a redirect of the parent moved).
pub(crate) fn redirect_from(lower_parent: &[OsString], value: &[u8]) -> Vec<OsString> {
    let v = value.strip_suffix(b"\0").unwrap_or(value);
    if v.starts_with(b"/") {
        v.split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(|c| OsStr::from_bytes(c).to_os_string())
            .collect()
    } else {
        let mut p = lower_parent.to_vec();
        p.push(OsStr::from_bytes(v).to_os_string());
        p
    }
}
