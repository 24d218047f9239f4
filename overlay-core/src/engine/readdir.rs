//! Readdir: merge the layers' listings, hide whiteouts, de-duplicate.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::layers::LayerRef;
use super::{DirEntry, FileKind, NodeRef, Overlay};
use crate::error::Result;
use crate::format;

fn kind_of_ft(ft: FileType) -> Option<FileKind> {
    Some(match ft {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::Unknown => return None,
    })
}

struct RawEntry {
    name: OsString,
    ino: u64,
    ft: FileType,
}

/// The one entry an emptiness check returns: the first visible one (no inode number).
fn visible_entry(name: OsString, kind: FileKind) -> DirEntry {
    DirEntry { name, ino: 0, kind }
}

/// The entries of one layer's directory; `lower`: without touching its atime.
fn read_entries(
    dir: &std::os::fd::OwnedFd,
    lower: bool,
) -> std::result::Result<Vec<RawEntry>, Errno> {
    super::layers::map_dir_entries(dir, lower, |name, ent| RawEntry {
        name,
        ino: ent.ino(),
        ft: ent.file_type(),
    })
}

impl Overlay {
    /// The merged listing of directory `dir`: whiteouts hidden, names de-duplicated, in a stable
    /// order (upper entries first, then each lower top-down, each in the layer's own order).
    pub fn readdir(&self, dir: &NodeRef) -> Result<Vec<DirEntry>> {
        if dir.kind != FileKind::Directory {
            return Err(self.node_err("readdir", dir, Errno::NOTDIR));
        }
        let _g = dir.dir_lock().read();
        self.readdir_locked(dir)
    }

    /// Readdir with `dir.dir_lock` held.
    pub(crate) fn readdir_locked(&self, dir: &NodeRef) -> Result<Vec<DirEntry>> {
        self.list_locked(dir, None)
    }

    /// Is `dir` empty in the merged view (`dir.dir_lock` held)? When it is, the names of the
    /// whiteouts in its upper directory (which the caller removes without checking them again);
    /// None when it holds a visible entry. Stops at the first visible entry and computes no
    /// inode numbers.
    pub(crate) fn merged_empty_locked(&self, dir: &NodeRef) -> Result<Option<Vec<OsString>>> {
        let mut whiteouts = Vec::new();
        let out = self.list_locked(dir, Some(&mut whiteouts))?;
        Ok(out.is_empty().then_some(whiteouts))
    }

    /// The merged listing; with `empty_check`, stop at the first visible entry (returned with
    /// a dummy inode number) and record the upper whiteouts' names there.
    fn list_locked(
        &self,
        dir: &NodeRef,
        mut empty_check: Option<&mut Vec<OsString>>,
    ) -> Result<Vec<DirEntry>> {
        if dir.is_unlinked() {
            return Err(self.node_err("readdir", dir, Errno::NOENT));
        }
        let st = dir.state.read().clone();
        let err = |e: Errno| self.node_err("readdir", dir, e);
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();

        // A directory of `dir` (or of an ancestor) that is no longer a directory was
        // replaced behind the overlay's back.
        let changed = || crate::error::Error::Changed {
            op: "readdir",
            path: super::layers::display_path(&dir.rel_path()),
            detail: "a directory was expected (on its path in a layer), something else is there"
                .into(),
        };
        let upper_fd = if st.upper {
            match self.dir_fd(dir, LayerRef::Upper) {
                Ok(fd) => Some(fd),
                // A mount point without a detached layer mount: empty.
                Err(Errno::XDEV) => None,
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Err(changed()),
                Err(e) => return Err(err(e)),
            }
        } else {
            None
        };
        if let Some(fd) = upper_fd {
            // Whether the upper directory is `overlay.impure`, read once when needed.
            let mut impure: Option<bool> = None;
            for e in read_entries(&fd, false).map_err(err)? {
                let mut kind = kind_of_ft(e.ft);
                if kind.is_none() || e.ft == FileType::CharacterDevice {
                    let s = match rustix::fs::statat(fd.as_fd(), &e.name, AtFlags::SYMLINK_NOFOLLOW)
                    {
                        Ok(s) => s,
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(err(e)),
                    };
                    if format::is_whiteout_stat(s.st_mode, s.st_rdev) {
                        if let Some(w) = empty_check.as_deref_mut() {
                            w.push(e.name.clone());
                        }
                        seen.insert(e.name);
                        continue;
                    }
                    kind = Some(FileKind::from_mode(s.st_mode));
                }
                let kind = kind.expect("kind");
                if empty_check.is_some() {
                    return Ok(vec![visible_entry(e.name, kind)]);
                }
                seen.insert(e.name.clone());
                let ino = if let Some(n) = dir.cached_child(&e.name) {
                    n.ino()
                } else if kind == FileKind::Directory
                    && st.lowers.is_empty()
                    && !*impure.get_or_insert_with(|| self.has_impure(fd.as_fd()))
                {
                    // No lower directories, and no directory with lower ones moved in
                    // (`overlay.impure`, as the kernel marks a parent a redirected directory
                    // moves into): the upper inode.
                    self.layers.map_ino(LayerRef::Upper, e.ino)
                } else if kind == FileKind::Directory {
                    // May be merged with lower directories: compute as lookup does.
                    match self.resolve(dir, &e.name) {
                        Ok(Some(r)) => r.ino,
                        Ok(None) => continue,
                        // A directory whose lookup fails (a bad or refused redirect, a
                        // swapped object) fails alone: it is left out of the listing, as the
                        // kernel leaves out an entry it cannot look up for its d_ino ("failed
                        // to look up (name) for ino"), and the listing goes on.
                        Err(e) => {
                            // Not a warning: a user who can write to a layer could flood the log.
                            tracing::debug!("readdir: left out: {e}");
                            continue;
                        }
                    }
                } else {
                    self.origin_ino_of(fd.as_fd(), &e.name)
                        .unwrap_or_else(|| self.layers.map_ino(LayerRef::Upper, e.ino))
                };
                out.push(DirEntry {
                    name: e.name,
                    ino,
                    kind,
                });
            }
        }

        for le in &st.lowers {
            let layer = LayerRef::Lower(le.layer);
            let fd = match self.dir_fd(dir, layer) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::XDEV) => continue,
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Err(changed()),
                Err(e) => return Err(err(e)),
            };
            let mut layer_whiteouts = Vec::new();
            for e in read_entries(&fd, true).map_err(err)? {
                if format::is_aufs_metadata_name(&e.name) {
                    if let Some(t) = format::aufs_whiteout_target(&e.name) {
                        layer_whiteouts.push(t.to_os_string());
                    }
                    continue;
                }
                if seen.contains(&e.name) {
                    continue;
                }
                let mut kind = kind_of_ft(e.ft);
                let needs_stat = kind.is_none()
                    || e.ft == FileType::CharacterDevice
                    || (le.xwhiteouts && e.ft == FileType::RegularFile);
                if needs_stat {
                    let s = match rustix::fs::statat(fd.as_fd(), &e.name, AtFlags::SYMLINK_NOFOLLOW)
                    {
                        Ok(s) => s,
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(err(e)),
                    };
                    if format::is_whiteout_stat(s.st_mode, s.st_rdev)
                        || (le.xwhiteouts && self.is_xwhiteout(fd.as_fd(), &e.name, &s))
                    {
                        seen.insert(e.name);
                        continue;
                    }
                    kind = Some(FileKind::from_mode(s.st_mode));
                }
                let kind = kind.expect("kind");
                if empty_check.is_some() {
                    return Ok(vec![visible_entry(e.name, kind)]);
                }
                seen.insert(e.name.clone());
                let ino = match dir.cached_child(&e.name) {
                    Some(n) => n.ino(),
                    None => self.layers.map_ino(layer, e.ino),
                };
                out.push(DirEntry {
                    name: e.name,
                    ino,
                    kind,
                });
            }
            seen.extend(layer_whiteouts);
        }
        Ok(out)
    }
}
