//! `ovl diff`: list the changes an upper layer makes, read from the on-disk format.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use overlay_core::format::Opacity;
use overlay_core::XattrNamespace;
use serde::Serialize;

use crate::error::CliError;
use crate::layer::{merged_path, Entry, EntryKind, LayerDir};

/// Kind of change, as `docker diff` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChangeKind {
    /// Added.
    A,
    /// Changed.
    C,
    /// Deleted.
    D,
}

/// One changed path of the merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// A, C or D.
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
fn is_opaque(dir: &LayerDir, name: Option<&OsStr>, opts: &DiffOptions) -> Result<bool, CliError> {
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
) -> Result<Option<Vec<u8>>, CliError> {
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
) -> Result<Seen, CliError> {
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
    pub fn open(lowers_bottom_first: &[PathBuf], opts: DiffOptions) -> Result<Self, CliError> {
        let mut roots = Vec::new();
        for l in lowers_bottom_first.iter().rev() {
            roots.push(LayerDir::open_root(l)?);
        }
        Ok(LowerStack { roots, opts })
    }

    fn root_dirs(&self) -> Result<Vec<LayerDir>, CliError> {
        self.roots
            .iter()
            .map(|r| LayerDir::open_root(r.path()))
            .collect()
    }

    /// Resolve `components` from the root.
    pub fn resolve(&self, components: &[OsString]) -> Result<LowerEntry, CliError> {
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
    pub fn lookup(&self, dirs: &[LayerDir], name: &OsStr) -> Result<LowerEntry, CliError> {
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
    pub fn list(&self, dirs: &[LayerDir]) -> Result<BTreeSet<OsString>, CliError> {
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

/// Compute the changes of `upper` relative to `lowers` (exact) or on the upper alone.
pub fn diff(
    upper: &Path,
    lowers: Option<&LowerStack>,
    opts: &DiffOptions,
) -> Result<Vec<Change>, CliError> {
    let root = LayerDir::open_root(upper)?;
    let mut out = Vec::new();
    let lower_root = match lowers {
        Some(l) => Some(l.root_dirs()?),
        None => None,
    };
    walk(
        &root,
        &mut Vec::new(),
        lowers,
        lower_root,
        Context::Normal,
        opts,
        &mut out,
    )?;
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
fn add_lower_subtree(
    ls: &LowerStack,
    dirs: &[LayerDir],
    rel: &mut Vec<OsString>,
    skip: &BTreeSet<OsString>,
    out: &mut Vec<Change>,
) -> Result<(), CliError> {
    for name in ls.list(dirs)? {
        if skip.contains(&name) {
            continue;
        }
        rel.push(name.clone());
        push(out, ChangeKind::A, merged_path(rel), None);
        if let LowerEntry::Dir(sub) = ls.lookup(dirs, &name)? {
            add_lower_subtree(ls, &sub, rel, &BTreeSet::new(), out)?;
        }
        rel.pop();
    }
    Ok(())
}

/// Walk one upper directory. `lower_here` is the merged lower directory at this path
/// (`None` with lowers given means the lowers have nothing here).
fn walk(
    dir: &LayerDir,
    rel: &mut Vec<OsString>,
    lowers: Option<&LowerStack>,
    lower_here: Option<Vec<LayerDir>>,
    ctx: Context,
    opts: &DiffOptions,
    out: &mut Vec<Change>,
) -> Result<(), CliError> {
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
    let mut work: Vec<(OsString, Option<&Entry>)> = entries
        .iter()
        .filter(|e| !(opts.aufs && overlay_core::format::is_aufs_metadata_name(&e.name)))
        .map(|e| (e.name.clone(), Some(e)))
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
                        push(out, ChangeKind::D, merged_path(rel), None);
                        rel.pop();
                    }
                }
            }
            Context::Normal => {}
        }
    }

    for (name, entry) in work {
        rel.push(name.clone());
        let path = merged_path(rel);
        let lower_entry = match (lowers, &lower_here) {
            (Some(ls), Some(dirs)) => Some(ls.lookup(dirs, &name)?),
            (Some(_), None) => Some(LowerEntry::Absent),
            (None, _) => None,
        };
        let seen = match entry {
            None => Seen::Whiteout,
            Some(e) => classify(dir, e, &aufs_hidden, opts)?,
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
                    push(out, ChangeKind::D, path, None);
                }
            }
            Seen::Other => {
                let kind = match (&lower_entry, ctx) {
                    (_, Context::Renamed) => ChangeKind::A,
                    (Some(LowerEntry::Absent), _) => ChangeKind::A,
                    (Some(_), _) => ChangeKind::C,
                    (None, _) => {
                        if overlay_xattr(dir, Some(&name), "origin")?.is_some()
                            || overlay_xattr(dir, Some(&name), "metacopy")?.is_some()
                        {
                            ChangeKind::C
                        } else {
                            ChangeKind::A
                        }
                    }
                };
                push(out, kind, path, None);
            }
            Seen::Dir { opaque } => {
                let redirect =
                    overlay_xattr(dir, Some(&name), "redirect")?.map(|v| redirect_target(rel, &v));
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
                    (ChangeKind::A, below, Context::Renamed)
                } else if ctx == Context::Renamed {
                    let below = match lower_entry {
                        Some(LowerEntry::Dir(d)) if !opaque => Some(d),
                        _ => None,
                    };
                    (ChangeKind::A, below, Context::Renamed)
                } else {
                    match lower_entry {
                        // Without lowers: see the documentation of `ovl diff`.
                        None => (ChangeKind::C, None, Context::Normal),
                        Some(LowerEntry::Absent) => (ChangeKind::A, None, Context::Normal),
                        Some(LowerEntry::Other) => (ChangeKind::C, None, Context::Normal),
                        Some(LowerEntry::Dir(d)) if opaque => {
                            (ChangeKind::C, Some(d), Context::Opaque)
                        }
                        Some(LowerEntry::Dir(d)) => (ChangeKind::C, Some(d), Context::Normal),
                    }
                };
                push(out, kind, path, redirect);
                let sub = dir.open_child(&name)?;
                walk(&sub, rel, lowers, below, sub_ctx, opts, out)?;
            }
        }
        rel.pop();
    }
    Ok(())
}

/// Where a redirected directory's content comes from: absolute redirects start with `/`,
/// relative ones name a sibling.
fn redirect_target(rel: &[OsString], value: &[u8]) -> PathBuf {
    let v = OsStr::from_bytes(value.strip_suffix(b"\0").unwrap_or(value));
    if v.as_bytes().starts_with(b"/") {
        PathBuf::from(v)
    } else {
        let mut parent = merged_path(&rel[..rel.len() - 1]);
        parent.push(v);
        parent
    }
}

/// Print changes as text (`K /path` per line) or JSON.
pub fn print(changes: &[Change], exact: bool, json: bool) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            exact: bool,
            changes: &'a [Change],
        }
        serde_json::to_writer_pretty(&mut w, &Out { exact, changes })?;
        writeln!(w)?;
    } else {
        for c in changes {
            let k = match c.kind {
                ChangeKind::A => b"A ",
                ChangeKind::C => b"C ",
                ChangeKind::D => b"D ",
            };
            w.write_all(k)?;
            w.write_all(c.path.as_os_str().as_bytes())?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()
}
