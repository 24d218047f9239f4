//! Live-system persistence: a persistent upper bound to the base it was made on
//! (`--persist DIR`), its atomic reset (`ovl reset DIR`), and the read-only-persistent mode
//! (`--persist-ro`: the persistent upper joins as the top lower under a fresh tmpfs upper).
//!
//! A persistence directory holds:
//!
//! ```text
//! DIR/base.json     the identity of the lowers it was made over (bottom-first)
//! DIR/state/upper   the upper layer
//! DIR/state/work    its workdir
//! ```
//!
//! `ovl reset` swaps `state` with a fresh empty one in one `renameat2(RENAME_EXCHANGE)`, so a
//! crash leaves either the old state or the empty one, never half of it; the old one is
//! removed afterwards (or by the next reset or mount, if that was interrupted).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::PersistArgs;
use crate::error::CliError;

/// The name of the identity record.
const BASE: &str = "base.json";
/// The current state.
const STATE: &str = "state";
/// A state being swapped in or out by `ovl reset` (disposable whenever found).
const STATE_SWAP: &str = ".state.swap";

/// What `--persist` gives a mount: the upper and workdir to use, and for `--persist-ro` the
/// extra top lower.
#[derive(Debug)]
pub struct Persistent {
    /// `DIR/state/upper`.
    pub upper: PathBuf,
    /// `DIR/state/work`.
    pub work: PathBuf,
    /// The exclusive lock on the directory (see [`InUse`]).
    pub lock: InUse,
}

/// An exclusive `flock` on `DIR/.lock`, held while ovl uses the directory: for the whole
/// command of `ovl run`, while `ovl mount` sets the mount up (afterwards the mount itself
/// says the upper is in use), and by `ovl reset`. A second user is refused at once.
#[derive(Debug)]
pub struct InUse(#[allow(dead_code)] std::fs::File);

/// The lock file.
const LOCK: &str = ".lock";

fn lock(dir: &Path) -> Result<InUse, CliError> {
    let path = dir.join(LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CliError::io(&path, "cannot open the lock of", e))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(InUse(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(CliError::path(
            dir,
            "is in use by another ovl (an `ovl run --persist` still running, a mount being set up, or a reset); try again when it is done",
        )),
        Err(e) => Err(CliError::io(&path, "cannot lock", e.into())),
    }
}

/// The identity of one lower layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerId {
    /// The path as given (canonical).
    pub path: PathBuf,
    /// `dir` or `image`.
    pub kind: String,
    /// A directory: its inode number; an image: its size and the SHA-256 of its first and
    /// last MiB (the superblocks, with their UUIDs and build times).
    pub id: String,
}

/// `DIR/base.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BaseRecord {
    /// Lowers, bottom-first.
    lowers: Vec<LayerId>,
}

/// The size of the head and tail of an image that its identity hashes.
const IMAGE_SAMPLE: u64 = 1 << 20;

fn layer_id(path: &Path) -> Result<LayerId, CliError> {
    let canon = std::fs::canonicalize(path).map_err(|e| CliError::io(path, "cannot resolve", e))?;
    let md = std::fs::metadata(&canon).map_err(|e| CliError::io(&canon, "cannot stat", e))?;
    if md.is_dir() {
        return Ok(LayerId {
            path: canon,
            kind: "dir".into(),
            id: format!("ino:{}", md.ino()),
        });
    }
    let mut f = std::fs::File::open(&canon).map_err(|e| CliError::io(&canon, "cannot open", e))?;
    let read = |f: &mut std::fs::File, at: u64, h: &mut Sha256| -> std::io::Result<()> {
        f.seek(SeekFrom::Start(at))?;
        let mut buf = Vec::new();
        f.take(IMAGE_SAMPLE).read_to_end(&mut buf)?;
        h.update(&buf);
        Ok(())
    };
    let mut h = Sha256::new();
    read(&mut f, 0, &mut h)
        .and_then(|()| read(&mut f, md.len().saturating_sub(IMAGE_SAMPLE), &mut h))
        .map_err(|e| CliError::io(&canon, "cannot read", e))?;
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(LayerId {
        path: canon,
        kind: "image".into(),
        id: format!("size:{}:sha256:{digest}", md.len()),
    })
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| CliError::io(&tmp, "cannot write", e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| CliError::io(&tmp, "cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| CliError::io(path, "cannot write", e))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")));
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Make `DIR/state/{upper,work}` (if missing) under `dir`.
fn make_state(state: &Path) -> Result<(), CliError> {
    for sub in ["upper", "work"] {
        let d = state.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| CliError::io(&d, "cannot create", e))?;
    }
    Ok(())
}

/// Open (or create) the persistence directory `dir` for a stack over `lowers`
/// (bottom-first). A directory made over other lowers is refused unless `force`, which
/// records the new ones.
pub fn open(dir: &Path, lowers: &[PathBuf], force: bool) -> Result<Persistent, CliError> {
    let ids = lowers
        .iter()
        .map(|l| layer_id(l))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, "cannot create", e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| CliError::io(dir, "cannot resolve", e))?;
    let lock = lock(&dir)?;
    // An interrupted reset left this: either state is disposable.
    remove_tree(&dir.join(STATE_SWAP))?;
    let base_file = dir.join(BASE);
    let new = BaseRecord { lowers: ids };
    match std::fs::read(&base_file) {
        Ok(data) => {
            let old: BaseRecord = serde_json::from_slice(&data).map_err(|e| {
                CliError::path(&base_file, format!("is not a persistence record: {e}"))
            })?;
            if old != new && !force {
                return Err(CliError::path(
                    &dir,
                    format!(
                        "was made over other lowers ({}); this stack has {}: refused, since its upper would show stale or broken files over another base; `ovl reset {}` empties it, --force-base uses it anyway (and records the new lowers)",
                        describe(&old.lowers, &new.lowers, true),
                        describe(&old.lowers, &new.lowers, false),
                        dir.display()
                    ),
                ));
            }
            if old != new {
                write_atomically(&base_file, &serde_json::to_vec_pretty(&new).expect("json"))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = dir.join(STATE);
            if state.join("upper").exists()
                && std::fs::read_dir(state.join("upper")).is_ok_and(|mut d| d.next().is_some())
                && !force
            {
                return Err(CliError::path(
                    &base_file,
                    "is missing, but the upper is not empty: the lowers it was made over are unknown; --force-base records the current ones",
                ));
            }
            write_atomically(&base_file, &serde_json::to_vec_pretty(&new).expect("json"))?;
        }
        Err(e) => return Err(CliError::io(&base_file, "cannot read", e)),
    }
    let state = dir.join(STATE);
    make_state(&state)?;
    Ok(Persistent {
        upper: state.join("upper"),
        work: state.join("work"),
        lock,
    })
}

/// Name the first layer that differs, for the refusal.
fn describe(old: &[LayerId], new: &[LayerId], show_old: bool) -> String {
    let v = if show_old { old } else { new };
    if old.len() != new.len() {
        let paths: Vec<String> = v.iter().map(|l| l.path.display().to_string()).collect();
        return format!("{} lowers: {}", v.len(), paths.join(" "));
    }
    for (o, n) in old.iter().zip(new) {
        if o != n {
            let l = if show_old { o } else { n };
            return format!("{} ({} {})", l.path.display(), l.kind, l.id);
        }
    }
    String::new()
}

/// Remove a state tree. Directories in it may be read-only (an upper holds copies of
/// read-only directories; the overlay's `work/work` is mode 0): they are opened up to 0700
/// first, walking iteratively (the depth is the user's).
fn remove_tree(p: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CliError::io(p, "cannot stat", e)),
        Ok(_) => {}
    }
    let mut todo = vec![p.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(md) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        if md.mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            todo.extend(rd.flatten().map(|e| e.path()));
        }
    }
    std::fs::remove_dir_all(p).map_err(|e| CliError::io(p, "cannot remove", e))
}

/// `ovl reset DIR`: discard the persistent upper atomically. Refused while an overlay uses
/// it.
pub fn reset(dir: &Path) -> Result<(), CliError> {
    let dir = std::fs::canonicalize(dir).map_err(|e| CliError::io(dir, "cannot resolve", e))?;
    let base = dir.join(BASE);
    if !base.is_file() {
        return Err(CliError::path(
            &dir,
            format!("is not a persistence directory (no {BASE}): nothing to reset"),
        ));
    }
    let _lock = lock(&dir)?;
    let state = dir.join(STATE);
    let upper = state.join("upper");
    if let Some(m) = mounted_over(&upper)? {
        return Err(CliError::path(
            &dir,
            format!(
                "its upper is in use by the overlay on {}; unmount it first",
                m.display()
            ),
        ));
    }
    let swap = dir.join(STATE_SWAP);
    remove_tree(&swap)?;
    make_state(&swap)?;
    sync_dir(&swap);
    sync_dir(&dir);
    if state.exists() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &swap,
            rustix::fs::CWD,
            &state,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| CliError::io(&state, "cannot swap in an empty state", e.into()))?;
    } else {
        std::fs::rename(&swap, &state).map_err(|e| CliError::io(&state, "cannot create", e))?;
    }
    sync_dir(&dir);
    // The old state, now under the swap name.
    remove_tree(&swap)
}

/// The mount point of an overlay whose upper is `upper`, if one is mounted.
fn mounted_over(upper: &Path) -> Result<Option<PathBuf>, CliError> {
    let mounts = crate::mountinfo::read()
        .map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let upper_c = std::fs::canonicalize(upper).unwrap_or_else(|_| upper.to_path_buf());
    if let Some(m) = mounts
        .iter()
        .find(|m| m.fstype == "overlay" && m.overlay_upper().as_deref() == Some(&upper_c))
    {
        return Ok(Some(m.mount_point.clone()));
    }
    // FUSE mounts ovl made: from its records.
    let reg = crate::state::Registry::open();
    Ok(reg
        .live(&mounts)
        .into_iter()
        .find(|r| r.upper.as_deref() == Some(&upper_c))
        .map(|r| r.target))
}

/// The upper `--persist` (with `--persist-ro`, `--force-base`) gives a stack over `lowers`
/// (bottom-first; `--persist-ro` adds the persistent upper on top), or `None` without
/// `--persist`. `tmp` is the `--tmp` size given, if any (the fresh upper of `--persist-ro`).
pub fn upper_for(
    args: &PersistArgs,
    upper_given: bool,
    tmp: Option<&str>,
    lowers: &mut Vec<PathBuf>,
) -> Result<Option<(overlay::Upper, InUse)>, CliError> {
    let Some(dir) = &args.persist else {
        if args.persist_ro || args.force_base {
            return Err(CliError::msg(
                "--persist-ro and --force-base go with --persist DIR",
            ));
        }
        return Ok(None);
    };
    if upper_given {
        return Err(CliError::msg(
            "--persist DIR is the upper: --upper cannot be given too",
        ));
    }
    if tmp.is_some() && !args.persist_ro {
        return Err(CliError::msg(
            "--tmp goes with --persist only in --persist-ro mode (the fresh upper over the persistent one)",
        ));
    }
    if lowers.is_empty() {
        return Err(CliError::msg(
            "--persist needs the lowers it persists changes to",
        ));
    }
    let p = open(dir, lowers, args.force_base)?;
    if args.persist_ro {
        lowers.push(p.upper);
        let upper = overlay::Upper::Tmpfs {
            size: crate::mountopts::check_tmpfs_size(tmp.unwrap_or(""))?,
        };
        return Ok(Some((upper, p.lock)));
    }
    let upper = overlay::Upper::Dir {
        upper: p.upper,
        work: Some(p.work),
    };
    Ok(Some((upper, p.lock)))
}

/// The upper directory of a persistence directory, if `dir` is one.
pub fn upper_of(dir: &Path) -> Option<PathBuf> {
    dir.join(BASE)
        .is_file()
        .then(|| dir.join(STATE).join("upper"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A persistence directory over one lower, its upper holding one file.
    fn with_one_change() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        std::fs::create_dir(&lower).unwrap();
        let dir = t.path().join("persist");
        let Persistent { upper, .. } = open(&dir, std::slice::from_ref(&lower), false).unwrap();
        std::fs::write(upper.join("f"), "x").unwrap();
        (t, lower, dir, upper)
    }

    #[test]
    fn a_directory_in_use_is_refused() {
        let (_t, lower, dir, _) = with_one_change();
        let held = open(&dir, std::slice::from_ref(&lower), false).unwrap();
        let e = reset(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by another ovl"), "{e}");
        let e = open(&dir, std::slice::from_ref(&lower), false).unwrap_err();
        assert!(e.to_string().contains("in use by another ovl"), "{e}");
        drop(held);
        reset(&dir).unwrap();
    }

    #[test]
    fn reset_swaps_in_an_empty_state_and_keeps_the_base() {
        let (t, lower, dir, upper) = with_one_change();
        reset(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&upper).unwrap().count(), 0);
        assert!(!dir.join(STATE_SWAP).exists());
        // Same base: accepted again; another base: refused, unless forced.
        open(&dir, std::slice::from_ref(&lower), false).unwrap();
        let other = t.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let e = open(&dir, std::slice::from_ref(&other), false).unwrap_err();
        assert!(e.to_string().contains("other lowers"), "{e}");
        open(&dir, std::slice::from_ref(&other), true).unwrap();
        open(&dir, std::slice::from_ref(&other), false).unwrap();
    }

    #[test]
    fn an_interrupted_reset_leaves_a_whole_state() {
        let (_t, lower, dir, _) = with_one_change();
        // A reset that died after the swap: the old state is under the swap name.
        let swap = dir.join(STATE_SWAP);
        make_state(&swap).unwrap();
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &swap,
            rustix::fs::CWD,
            dir.join(STATE),
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .unwrap();
        let p = open(&dir, std::slice::from_ref(&lower), false).unwrap();
        assert_eq!(std::fs::read_dir(&p.upper).unwrap().count(), 0);
        drop(p);
        assert!(!swap.exists());
    }
}
