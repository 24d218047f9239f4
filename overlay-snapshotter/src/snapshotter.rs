//! The snapshotter's operations with containerd's semantics (those of its `storage`
//! metastore and `overlayfs` snapshotter), synchronous: [`crate::service`] runs them on
//! blocking threads for the gRPC server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backend::{BackendChoice, Backends};
use crate::error::{Error, Result};
use crate::filter::{Filter, SnapshotFields};
use crate::layout::{disk_usage, remove_tree, Layout};
use crate::mounts::{self, Mount, LABEL_MOUNT, LABEL_MOUNT_REASON};
use crate::store::{Kind, Record, Store, Usage};

/// A snapshot's name and record, as `Stat` and `Walk` report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key (active, view) or name (committed).
    pub name: String,
    /// The record.
    pub record: Record,
}

/// The snapshotter over one root directory.
#[derive(Debug)]
pub struct Snapshotter {
    layout: Layout,
    store: Store,
    backends: Backends,
}

impl Snapshotter {
    /// Open the snapshotter at `root` (created if missing), probing the backends for
    /// `choice` once.
    pub fn open(root: &Path, choice: BackendChoice) -> Result<Snapshotter> {
        let layout = Layout::create(root)?;
        let backends = Backends::detect(&layout, choice);
        Self::with_backends(layout, backends)
    }

    /// Open with backends decided by the caller (tests).
    pub fn with_backends(layout: Layout, backends: Backends) -> Result<Snapshotter> {
        let store = Store::open(&layout.root().join("metadata.redb"))?;
        Ok(Snapshotter {
            layout,
            store,
            backends,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// What the backend probe found.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// `Stat`: the info of any snapshot.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(Info {
            name: key.to_string(),
            record: self.store.get(key)?,
        })
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let layout = &self.layout;
        let b = &self.backends;
        let (rec, parents) = self.store.create(
            kind,
            key,
            parent,
            labels,
            |new| {
                let (mk, why) = mounts::plan(layout, b, new.kind, new.id, new.parents)?;
                layout.make_snapshot_dir(new.id, new.kind, new.parents.first().copied())?;
                tracing::info!(
                    key,
                    id = new.id,
                    layers = new.parents.len(),
                    mount = mk.as_str(),
                    "{} {key}: {why}",
                    if new.kind == Kind::View {
                        "view"
                    } else {
                        "prepare"
                    }
                );
                let labels = BTreeMap::from([
                    (LABEL_MOUNT.to_string(), mk.as_str().to_string()),
                    (LABEL_MOUNT_REASON.to_string(), why),
                ]);
                Ok((mk, labels))
            },
            |id| {
                if let Err(e) = layout.remove_snapshot_dir(id) {
                    tracing::warn!("{e}");
                }
            },
        )?;
        Ok(self.mounts_of(&rec, &parents))
    }

    fn mounts_of(&self, rec: &Record, parents: &[u64]) -> Vec<Mount> {
        let mk = rec.mount.unwrap_or(crate::store::MountKind::Kernel);
        mounts::mounts(&self.layout, &self.backends, rec.kind, rec.id, parents, mk)
    }

    /// `Prepare`: a new active snapshot over committed `parent` (empty for none).
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// `View`: a new read-only snapshot over committed `parent`.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    /// `Mounts`: the mounts of an active or view snapshot again.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (rec, parents) = self.store.get_with_parents(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key} is committed: only active and view snapshots have mounts"
            )));
        }
        Ok(self.mounts_of(&rec, &parents))
    }

    /// `Commit`: active `key` becomes committed `name` (its usage measured now).
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let layout = &self.layout;
        self.store
            .commit(name, key, labels, |id| disk_usage(&layout.fs(id)))?;
        tracing::info!(key, name, "commit");
        Ok(())
    }

    /// `Remove`: a snapshot without children, and its directory.
    pub fn remove(&self, key: &str) -> Result<()> {
        let rec = self.store.remove(key)?;
        tracing::info!(key, id = rec.id, "remove");
        // The record is gone: a failure here leaves an orphan for Cleanup, not an error
        // for the caller (the snapshot is removed).
        if let Err(e) = self.layout.remove_snapshot_dir(rec.id) {
            tracing::warn!("{e}; Cleanup will try again");
        }
        Ok(())
    }

    /// `Update`: labels (see [`Store::update`]).
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Info> {
        Ok(Info {
            name: key.to_string(),
            record: self.store.update(key, labels, fieldpaths)?,
        })
    }

    /// `Usage`: the snapshot's own layer; measured now for an active snapshot, at commit
    /// for a committed one.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.store.get(key)?;
        match rec.kind {
            Kind::Active => disk_usage(&self.layout.fs(rec.id)),
            _ => Ok(rec.usage.unwrap_or_default()),
        }
    }

    /// `Walk` (the `List` RPC): every snapshot one of `filters` matches.
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>> {
        let f = Filter::parse_all(filters).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(self
            .store
            .all()?
            .into_iter()
            .filter(|(name, r)| {
                f.matches(&SnapshotFields {
                    kind: r.kind.as_str(),
                    name,
                    parent: &r.parent,
                    labels: &r.labels,
                })
            })
            .map(|(name, record)| Info { name, record })
            .collect())
    }

    /// `Cleanup`: remove every directory under `ROOT/snapshots` no snapshot owns (half-made
    /// by a crash, or left by a removal that was interrupted). Returns what was removed.
    pub fn cleanup(&self) -> Result<Vec<PathBuf>> {
        let orphans = self
            .store
            .with_ids_locked(|ids| self.layout.orphans(ids))??;
        let mut removed = Vec::new();
        for o in orphans {
            match remove_tree(&o) {
                Ok(()) => {
                    tracing::info!("cleanup: removed {}", o.display());
                    removed.push(o);
                }
                Err(e) => tracing::warn!("cleanup: {e}"),
            }
        }
        Ok(removed)
    }
}
