//! The small registry of mounts `ovl mount` made, so `ovl status` can list them and
//! `ovl umount` can undo all of it.
//!
//! One JSON file per mount under `/run/ovl/mounts/` (root) or `$XDG_RUNTIME_DIR/ovl/mounts/`
//! (other users; `/tmp/ovl-<uid>/mounts/` without a runtime dir). Records are cross-checked
//! against `/proc/self/mountinfo`: a record whose mount is gone is dropped.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::mountinfo::MountInfo;

/// What `ovl mount` recorded about one mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    /// Mount point (absolute, canonical).
    pub target: PathBuf,
    /// `kernel` or `fuse`.
    pub backend: String,
    /// Why this backend was chosen.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Lower layers, bottom-first.
    pub lowers: Vec<PathBuf>,
    /// Upper layer, if any.
    pub upper: Option<PathBuf>,
    /// Workdir, if any.
    pub work: Option<PathBuf>,
    /// True when ovl created the workdir next to the upper.
    #[serde(default)]
    pub managed_work: bool,
    /// Mount point of the tmpfs holding upper and work (`--tmp`), unmounted and removed at
    /// `ovl umount`.
    pub tmpfs: Option<PathBuf>,
    /// Process id of the FUSE daemon.
    pub fuse_pid: Option<u32>,
    /// Mount ID from mountinfo at mount time.
    pub mount_id: u64,
    /// Filesystem type in mountinfo (`overlay`, `fuse.ovl-fuse`).
    pub fstype: String,
    /// Extra options given.
    #[serde(default)]
    pub options: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Mount points of image lowers (squashfs, EROFS) loop-mounted for the overlay; unmounted
    /// (which frees their loop devices) after the overlay.
    #[serde(default)]
    pub images: Vec<PathBuf>,
    /// True while `ovl mount` is still setting the mount up: written before anything is
    /// mounted, so that what an `ovl` that died half-way left behind can be found.
    #[serde(default)]
    pub pending: bool,
    /// Process id of the `ovl mount` that made it (image and tmpfs mount points carry it in
    /// their names: `ovl-image-PID-*`, `ovl-tmp-PID-*`).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Where that process created image mount points (its temp dir) and tmpfs uppers.
    #[serde(default)]
    pub scratch_dirs: Vec<PathBuf>,
}

impl MountRecord {
    /// A pending record whose `ovl mount` process is gone: it died before finishing.
    pub fn is_abandoned(&self) -> bool {
        self.pending && !self.pid.is_some_and(pid_alive)
    }

    /// Image and tmpfs mounts a dead `ovl mount` of this record left, found by the pid in
    /// their names; mount points of this namespace, innermost first.
    pub fn leftovers(&self, mounts: &[MountInfo]) -> Vec<PathBuf> {
        let Some(pid) = self.pid else {
            return Vec::new();
        };
        let prefixes = [format!("ovl-image-{pid}-"), format!("ovl-tmp-{pid}-")];
        let mut out: Vec<PathBuf> = mounts
            .iter()
            .rev()
            .filter(|m| {
                let p = &m.mount_point;
                p.parent()
                    .is_some_and(|d| self.scratch_dirs.iter().any(|s| s == d))
                    && p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        prefixes.iter().any(|pre| n.starts_with(pre.as_str()))
                    })
            })
            .map(|m| m.mount_point.clone())
            .collect();
        out.dedup();
        out
    }
}

/// True while process `pid` runs (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z") | Some("X") | None
        ),
        Err(_) => false,
    }
}

/// True while `pid` is the `ovl-fuse` daemon serving `target`: it runs, its program is
/// `ovl-fuse` (`/proc/PID/cmdline` or `/proc/PID/exe`), and its last argument is `target`.
/// Pids are reused, so a live pid alone proves nothing.
pub fn is_fuse_daemon_of(pid: u32, target: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd
        .strip_suffix(b"\0")
        .unwrap_or(&cmd)
        .split(|b| *b == 0)
        .collect();
    let named_ovl_fuse = |p: &[u8]| {
        let name = p.rsplit(|b| *b == b'/').next().unwrap_or(p);
        name == b"ovl-fuse" || name == b"ovl-fuse (deleted)"
    };
    let program = args.first().is_some_and(|a| named_ovl_fuse(a))
        || std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| named_ovl_fuse(e.as_os_str().as_encoded_bytes()));
    program && args.last() == Some(&target.as_os_str().as_encoded_bytes())
}

/// True when process `pid` is stopped (SIGSTOP, or held by a tracer): a FUSE daemon in
/// that state answers nothing, and anything that asks its mount waits.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // The state follows the command name, which is in parentheses and may hold any byte.
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

/// The registry directory for the current user.
pub fn registry_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OVL_STATE_DIR") {
        return PathBuf::from(d);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/run/ovl");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("ovl"),
        _ => PathBuf::from(format!("/tmp/ovl-{}", rustix::process::geteuid().as_raw())),
    }
}

/// The registry.
pub struct Registry {
    dir: PathBuf,
}

/// File name of a record: the target with `/` escaped, so one mount point has one record.
fn record_name(target: &Path) -> String {
    let mut s = String::new();
    for b in target.as_os_str().as_encoded_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => s.push(*b as char),
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s.push_str(".json");
    s
}

impl Registry {
    /// The registry of this user.
    pub fn open() -> Self {
        Registry {
            dir: registry_dir(),
        }
    }

    fn mounts_dir(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    /// Directory for ovl-owned scratch space (tmpfs uppers), created 0700.
    pub fn scratch_dir(&self) -> Result<PathBuf, CliError> {
        let d = self.dir.join("tmp");
        create_private_dir(&d)?;
        Ok(d)
    }

    /// Store a record (replacing one for the same target).
    pub fn save(&self, rec: &MountRecord) -> Result<(), CliError> {
        let dir = self.mounts_dir();
        create_private_dir(&dir)?;
        let path = dir.join(record_name(&rec.target));
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        let data = serde_json::to_vec_pretty(rec).expect("records serialize");
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| CliError::io(&tmp, "cannot write mount record", e))?;
        f.write_all(&data)
            .and_then(|()| f.sync_all())
            .map_err(|e| CliError::io(&tmp, "cannot write mount record", e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| CliError::io(&path, "cannot write mount record", e))
    }

    /// The record for `target`, if any.
    pub fn get(&self, target: &Path) -> Option<MountRecord> {
        let path = self.mounts_dir().join(record_name(target));
        let data = std::fs::read(path).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Drop the record for `target`.
    pub fn remove(&self, target: &Path) -> Result<(), CliError> {
        let path = self.mounts_dir().join(record_name(target));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CliError::io(&path, "cannot remove mount record", e))
            }
            _ => Ok(()),
        }
    }

    /// All records whose mount still exists, and those an `ovl mount` that died left mounted;
    /// stale ones are removed after releasing what they left (unreadable files are skipped
    /// with a log line). Records of mounts still being set up are not listed.
    pub fn live(&self, mounts: &[MountInfo]) -> Vec<MountRecord> {
        let Ok(rd) = std::fs::read_dir(self.mounts_dir()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let p = ent.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let rec: MountRecord = match std::fs::read(&p)
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok())
            {
                Some(r) => r,
                None => {
                    tracing::warn!("ignoring unreadable mount record {}", p.display());
                    continue;
                }
            };
            if rec.pending && !rec.is_abandoned() {
                continue;
            }
            if is_live(&rec, mounts) || (rec.is_abandoned() && overlay_at(&rec.target, mounts)) {
                out.push(rec);
            } else {
                tracing::info!(
                    "mount on {} is gone; dropping its record",
                    rec.target.display()
                );
                cleanup_stale(&rec, mounts);
                let _ = std::fs::remove_file(&p);
            }
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }
}

/// An overlay or FUSE mount is on top of `target`.
pub fn overlay_at(target: &Path, mounts: &[MountInfo]) -> bool {
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == target)
        .is_some_and(|m| m.fstype == "overlay" || m.fstype.starts_with("fuse"))
}

/// Is the mount a record describes still there (same mount ID at the same place)?
pub fn is_live(rec: &MountRecord, mounts: &[MountInfo]) -> bool {
    mounts
        .iter()
        .any(|m| m.mount_id == rec.mount_id && m.mount_point == rec.target)
}

/// What a record's mount leaves once the overlay itself is gone: image lowers (their loop
/// devices clear themselves once unmounted), the tmpfs upper, and for an `ovl mount` that
/// died half-way whatever it had mounted. Release it all; errors are returned, the first one
/// (every release is attempted).
pub fn release_leftovers(rec: &MountRecord, mounts: &[MountInfo]) -> Result<(), CliError> {
    let mut first = None;
    let mut release = |_dir: &Path, r: overlay::Result<()>| {
        if let Err(e) = r {
            // The facade names image files and the tmpfs upper, not our directories; say
            // which mount they belonged to.
            first.get_or_insert(CliError::path(
                &rec.target,
                format!("cleaning up: {}", CliError::from_overlay(e, &rec.target)),
            ));
        }
    };
    for im in rec.images.iter().rev() {
        release(im, overlay::release_image(im));
    }
    if let Some(t) = &rec.tmpfs {
        if mounts.iter().any(|m| &m.mount_point == t) || t.exists() {
            release(t, overlay::release_tmpfs(t));
        }
    }
    if rec.is_abandoned() {
        for d in rec.leftovers(mounts) {
            if rec.images.contains(&d) || rec.tmpfs.as_ref() == Some(&d) {
                continue;
            }
            release(&d, overlay::release_image(&d));
        }
    }
    first.map_or(Ok(()), Err)
}

/// A stale record may leave image lowers and a tmpfs upper mounted (the overlay was
/// unmounted by hand): release them.
fn cleanup_stale(rec: &MountRecord, mounts: &[MountInfo]) {
    if let Err(e) = release_leftovers(rec, mounts) {
        tracing::warn!("{e}");
    }
}

fn create_private_dir(d: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(CliError::io(d, "cannot create state directory", e)),
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_unique_per_target() {
        assert_eq!(record_name(Path::new("/mnt/a b")), "%2Fmnt%2Fa%20b.json");
        assert_ne!(
            record_name(Path::new("/mnt/a-b")),
            record_name(Path::new("/mnt/a/b"))
        );
    }
}
