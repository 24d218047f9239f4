//! The metadata store: every snapshot's record in an embedded transactional database
//! (redb), `ROOT/metadata.redb`.
//!
//! redb commits are atomic and durable (copy-on-write B-trees, checksummed, fsync on
//! commit), so a `kill -9` at any moment leaves either the old or the new state. Each
//! change that also touches the filesystem runs that work *inside* its write transaction
//! and commits only after it succeeded ([`Store::create`]): a crash before the commit leaves
//! a directory the database does not name, which [`crate::Snapshotter::cleanup`] removes.
//! Snapshot ids come from a counter in the same database and are never reused.
//!
//! Tables: `snapshots` (key or name → JSON [`Record`]), `children` ((parent id, child id)
//! → child name, so "has children" is one range lookup), `meta` (`next_id`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(u64, u64), &str> = TableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// containerd's limit for one label: key and value together (`labels.Validate`).
pub const MAX_LABEL_SIZE: usize = 4096;

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed parent (`View`).
    View,
    /// A writable snapshot being prepared (`Prepare`).
    Active,
    /// A committed, immutable snapshot (`Commit`).
    Committed,
}

impl Kind {
    /// containerd's name for it in filters (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time, with nanoseconds (containerd compares times exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Nanoseconds.
    pub nanos: u32,
}

impl Timestamp {
    /// Now.
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }

    /// As a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::new(self.secs, self.nanos)
    }
}

/// Disk usage of a snapshot's own layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated (`st_blocks * 512`, each inode once).
    pub size: i64,
    /// Inodes (each hard-linked inode once, the layer's root included).
    pub inodes: i64,
}

/// How the mounts of an active or view snapshot are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A bind mount of one directory (no parent, or a view of one layer).
    Bind,
    /// The kernel overlay.
    Kernel,
    /// `ovl-fuse` through `mount.fuse3`.
    Fuse,
}

impl MountKind {
    /// `bind`, `kernel` or `fuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Kernel => "kernel",
            MountKind::Fuse => "fuse",
        }
    }
}

/// The stored record of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its directory is `ROOT/snapshots/ID`.
    pub id: u64,
    /// Active, view or committed.
    pub kind: Kind,
    /// The parent's name, empty for none.
    pub parent: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Created.
    pub created: Timestamp,
    /// Last updated.
    pub updated: Timestamp,
    /// Usage measured at commit (committed snapshots only).
    pub usage: Option<Usage>,
    /// The mount chosen at Prepare/View (active and view snapshots only).
    pub mount: Option<MountKind>,
}

/// The metadata database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

/// What [`Store::create`] needs to know about the new snapshot to make its directory.
#[derive(Debug, Clone)]
pub struct NewSnapshot<'a> {
    /// The id it gets.
    pub id: u64,
    /// Active or view.
    pub kind: Kind,
    /// Parent ids, nearest first (empty for no parent).
    pub parents: &'a [u64],
}

fn decode(path: &Path, key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|e| Error::Db {
        path: path.to_path_buf(),
        detail: format!("record of {key:?} is unreadable: {e}"),
    })
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a record serializes")
}

/// Check labels as containerd does (`labels.Validate`).
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_SIZE {
            let short: String = k.chars().take(10).collect();
            return Err(Error::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {short}"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Open (or create) the database at `path`. A second process on the same file is
    /// refused (redb locks it).
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|e| Error::Db {
            path: path.to_path_buf(),
            detail: format!("cannot open: {e}"),
        })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        let txn = store.write()?;
        {
            txn.open_table(SNAPSHOTS).map_err(|e| store.err(e))?;
            txn.open_table(CHILDREN).map_err(|e| store.err(e))?;
            txn.open_table(META).map_err(|e| store.err(e))?;
        }
        txn.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Db {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn write(&self) -> Result<WriteTransaction> {
        self.db.begin_write().map_err(|e| self.err(e))
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let v = t.get(key).map_err(|e| self.err(e))?;
        match v {
            Some(v) => decode(&self.path, key, v.value()),
            None => Err(Error::NotFound(format!("snapshot {key}"))),
        }
    }

    /// The record of `key` and the ids of its parent chain, nearest first.
    pub fn get_with_parents(&self, key: &str) -> Result<(Record, Vec<u64>)> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let get = |k: &str| -> Result<Option<Record>> {
            match t.get(k).map_err(|e| self.err(e))? {
                Some(v) => decode(&self.path, k, v.value()).map(Some),
                None => Ok(None),
            }
        };
        let rec = get(key)?.ok_or_else(|| Error::NotFound(format!("snapshot {key}")))?;
        let mut ids = Vec::new();
        let mut parent = rec.parent.clone();
        while !parent.is_empty() {
            let p = get(&parent)?
                .ok_or_else(|| Error::NotFound(format!("parent {parent} of snapshot {key}")))?;
            ids.push(p.id);
            parent = p.parent;
        }
        Ok((rec, ids))
    }

    /// Create an active or view snapshot `key` over `parent` (empty for none). `make_dir`
    /// runs inside the write transaction with the new id and the parent chain, creates the
    /// snapshot's directory and returns how it will be mounted; the record is committed
    /// only if it succeeds (and if the commit fails, `undo` gets the id to remove the
    /// directory again).
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        make_dir: impl FnOnce(&NewSnapshot<'_>) -> Result<(MountKind, BTreeMap<String, String>)>,
        undo: impl FnOnce(u64),
    ) -> Result<(Record, Vec<u64>)> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key is empty".into()));
        }
        validate_labels(&labels)?;
        let txn = self.write()?;
        let (rec, parents) = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            let mut children = txn.open_table(CHILDREN).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let get = |t: &redb::Table<&str, &[u8]>, k: &str| -> Result<Option<Record>> {
                match t.get(k).map_err(|e| self.err(e))? {
                    Some(v) => decode(&self.path, k, v.value()).map(Some),
                    None => Ok(None),
                }
            };
            let mut parents = Vec::new();
            if !parent.is_empty() {
                let p = get(&snaps, parent)?
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent}")))?;
                if p.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent} is not a committed snapshot"
                    )));
                }
                parents.push(p.id);
                let mut next = p.parent;
                while !next.is_empty() {
                    let q = get(&snaps, &next)?.ok_or_else(|| {
                        Error::NotFound(format!("parent {next} in the chain of {parent}"))
                    })?;
                    parents.push(q.id);
                    next = q.parent;
                }
            }
            if get(&snaps, key)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key}")));
            }
            let id = meta
                .get(NEXT_ID)
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert(NEXT_ID, id + 1).map_err(|e| self.err(e))?;
            let (mount, extra_labels) = make_dir(&NewSnapshot {
                id,
                kind,
                parents: &parents,
            })?;
            let mut labels = labels;
            labels.extend(extra_labels);
            let now = Timestamp::now();
            let rec = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                usage: None,
                mount: Some(mount),
            };
            snaps
                .insert(key, encode(&rec).as_slice())
                .map_err(|e| self.err(e))?;
            if let Some(&pid) = parents.first() {
                children.insert((pid, id), key).map_err(|e| self.err(e))?;
            }
            (rec, parents)
        };
        if let Err(e) = txn.commit() {
            undo(rec.id);
            return Err(self.err(e));
        }
        Ok((rec, parents))
    }

    /// Commit active snapshot `key` as `name` with `labels`; `measure` runs inside the
    /// transaction with the snapshot's id and returns its usage.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        measure: impl FnOnce(u64) -> Result<Usage>,
    ) -> Result<Record> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("snapshot name is empty".into()));
        }
        validate_labels(&labels)?;
        let txn = self.write()?;
        let rec = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            let mut children = txn.open_table(CHILDREN).map_err(|e| self.err(e))?;
            if snaps.get(name).map_err(|e| self.err(e))?.is_some() {
                return Err(Error::AlreadyExists(format!("committed snapshot {name}")));
            }
            let active = match snaps.get(key).map_err(|e| self.err(e))? {
                Some(v) => decode(&self.path, key, v.value())?,
                None => return Err(Error::NotFound(format!("active snapshot {key}"))),
            };
            if active.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key} is not active (it is a {} snapshot)",
                    active.kind.as_str()
                )));
            }
            let usage = measure(active.id)?;
            let now = Timestamp::now();
            let rec = Record {
                id: active.id,
                kind: Kind::Committed,
                parent: active.parent.clone(),
                labels,
                created: now,
                updated: now,
                usage: Some(usage),
                mount: None,
            };
            snaps.remove(key).map_err(|e| self.err(e))?;
            snaps
                .insert(name, encode(&rec).as_slice())
                .map_err(|e| self.err(e))?;
            if !rec.parent.is_empty() {
                let p = match snaps.get(rec.parent.as_str()).map_err(|e| self.err(e))? {
                    Some(v) => decode(&self.path, &rec.parent, v.value())?,
                    None => {
                        return Err(Error::NotFound(format!(
                            "parent {} of snapshot {key}",
                            rec.parent
                        )))
                    }
                };
                children
                    .insert((p.id, rec.id), name)
                    .map_err(|e| self.err(e))?;
            }
            rec
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(rec)
    }

    /// Remove `key`'s record (refused while it has children); returns it so the caller can
    /// remove its directory after the commit.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let txn = self.write()?;
        let rec = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            let mut children = txn.open_table(CHILDREN).map_err(|e| self.err(e))?;
            let rec = match snaps.get(key).map_err(|e| self.err(e))? {
                Some(v) => decode(&self.path, key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key}"))),
            };
            let first_child = children
                .range((rec.id, 0)..=(rec.id, u64::MAX))
                .map_err(|e| self.err(e))?
                .next()
                .transpose()
                .map_err(|e| self.err(e))?
                .map(|(_, v)| v.value().to_string());
            if let Some(child) = first_child {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key} with child {child}"
                )));
            }
            if !rec.parent.is_empty() {
                if let Some(v) = snaps.get(rec.parent.as_str()).map_err(|e| self.err(e))? {
                    let p = decode(&self.path, &rec.parent, v.value())?;
                    drop(v);
                    children.remove((p.id, rec.id)).map_err(|e| self.err(e))?;
                }
            }
            snaps.remove(key).map_err(|e| self.err(e))?;
            rec
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(rec)
    }

    /// containerd's `UpdateInfo`: without field paths all labels are replaced; `labels`
    /// replaces them too; `labels.KEY` sets (or, absent from `labels`, removes) one label;
    /// any other path is immutable (`InvalidArgument`).
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record> {
        let txn = self.write()?;
        let rec = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            let mut rec = match snaps.get(key).map_err(|e| self.err(e))? {
                Some(v) => decode(&self.path, key, v.value())?,
                None => return Err(Error::NotFound(format!("snapshot {key}"))),
            };
            if fieldpaths.is_empty() {
                rec.labels = labels;
            } else {
                for path in fieldpaths {
                    if let Some(k) = path.strip_prefix("labels.") {
                        match labels.get(k) {
                            Some(v) => {
                                rec.labels.insert(k.to_string(), v.clone());
                            }
                            None => {
                                rec.labels.remove(k);
                            }
                        }
                    } else if path == "labels" {
                        rec.labels = labels.clone();
                    } else {
                        return Err(Error::InvalidArgument(format!(
                            "cannot update {path:?} field on snapshot {key:?}"
                        )));
                    }
                }
            }
            validate_labels(&rec.labels)?;
            rec.updated = Timestamp::now();
            snaps
                .insert(key, encode(&rec).as_slice())
                .map_err(|e| self.err(e))?;
            rec
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(rec)
    }

    /// Every snapshot, by key.
    pub fn all(&self) -> Result<Vec<(String, Record)>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
        let mut v = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, r) = item.map_err(|e| self.err(e))?;
            v.push((
                k.value().to_string(),
                decode(&self.path, k.value(), r.value())?,
            ));
        }
        Ok(v)
    }

    /// Run `f` with the ids of all snapshots while holding the write lock, so no snapshot is
    /// created or removed meanwhile (for listing orphan directories).
    pub fn with_ids_locked<T>(
        &self,
        f: impl FnOnce(&std::collections::HashSet<u64>) -> T,
    ) -> Result<T> {
        let txn = self.write()?;
        let ids = {
            let t = txn.open_table(SNAPSHOTS).map_err(|e| self.err(e))?;
            let mut ids = std::collections::HashSet::new();
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, r) = item.map_err(|e| self.err(e))?;
                ids.insert(decode(&self.path, k.value(), r.value())?.id);
            }
            ids
        };
        let out = f(&ids);
        txn.abort().map_err(|e| self.err(e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_dir(_: &NewSnapshot<'_>) -> Result<(MountKind, BTreeMap<String, String>)> {
        Ok((MountKind::Bind, BTreeMap::new()))
    }

    #[test]
    fn ids_survive_reopen_and_are_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.redb");
        let s = Store::open(&p).unwrap();
        let (a, _) = s
            .create(Kind::Active, "a", "", BTreeMap::new(), ok_dir, |_| {})
            .unwrap();
        s.remove("a").unwrap();
        drop(s);
        let s = Store::open(&p).unwrap();
        let (b, _) = s
            .create(Kind::Active, "b", "", BTreeMap::new(), ok_dir, |_| {})
            .unwrap();
        assert!(b.id > a.id);
    }

    #[test]
    fn failed_directory_work_leaves_no_record() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("m.redb")).unwrap();
        let r = s.create(
            Kind::Active,
            "a",
            "",
            BTreeMap::new(),
            |_| Err(Error::InvalidArgument("no".into())),
            |_| {},
        );
        assert!(r.is_err());
        assert!(matches!(s.get("a"), Err(Error::NotFound(_))));
    }

    #[test]
    fn parents_with_children_cannot_be_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("m.redb")).unwrap();
        s.create(Kind::Active, "a", "", BTreeMap::new(), ok_dir, |_| {})
            .unwrap();
        s.commit("c", "a", BTreeMap::new(), |_| Ok(Usage::default()))
            .unwrap();
        s.create(Kind::View, "v", "c", BTreeMap::new(), ok_dir, |_| {})
            .unwrap();
        assert!(matches!(s.remove("c"), Err(Error::FailedPrecondition(_))));
        assert!(matches!(
            s.commit("x", "v", BTreeMap::new(), |_| Ok(Usage::default())),
            Err(Error::FailedPrecondition(_))
        ));
        s.remove("v").unwrap();
        s.remove("c").unwrap();
    }
}
