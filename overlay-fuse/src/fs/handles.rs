//! The tables of open file and directory handles.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use overlay_core::{DirEntry, NodeRef};
use parking_lot::{Mutex, RwLock};

use crate::table::IoMode;

type Shard<T> = Mutex<HashMap<u64, Arc<T>>>;

/// A sharded table of open handles.
#[derive(Debug)]
pub(super) struct HandleMap<T> {
    shards: Box<[Shard<T>]>,
    next: AtomicU64,
}

impl<T> HandleMap<T> {
    const SHARDS: usize = 16;

    pub(super) fn new() -> Self {
        HandleMap {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            next: AtomicU64::new(1),
        }
    }

    fn shard(&self, fh: u64) -> &Shard<T> {
        &self.shards[fh as usize % Self::SHARDS]
    }

    pub(super) fn insert(&self, v: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(fh).lock().insert(fh, Arc::new(v));
        fh
    }

    pub(super) fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).lock().get(&fh).cloned()
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).lock().remove(&fh)
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// An open regular file.
#[derive(Debug)]
pub(super) struct OpenFile {
    pub(super) nodeid: u64,
    pub(super) node: NodeRef,
    /// The real file in its layer; replaced by the upper copy when a read-only open of a lower
    /// file sees that the file was copied up.
    pub(super) file: RwLock<Arc<File>>,
    /// The file is the lower one (read-only open of a lower-only file).
    pub(super) from_lower: AtomicBool,
    pub(super) mode: IoMode,
}

/// An open directory with its listing snapshot (taken at the first read from offset 0).
#[derive(Debug)]
pub(super) struct OpenDir {
    pub(super) nodeid: u64,
    pub(super) node: NodeRef,
    pub(super) entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}
