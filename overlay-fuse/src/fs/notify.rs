//! Kernel cache invalidations, sent after the reply from their own thread, and the eviction
//! of cold inodes when the inode table is over its capacity.

use std::ffi::OsString;
use std::sync::{mpsc, Arc, OnceLock};

use fuser::{INodeNo, Notifier};
use tracing::debug;

use crate::table::InodeTable;

/// A kernel cache invalidation, sent after the reply from the notify thread (sending it from
/// a handler can deadlock on the kernel's inode lock).
#[derive(Debug)]
pub(super) enum Invalidation {
    /// Attributes of an inode (and, with `data`, its page cache).
    Inode { nodeid: u64, data: bool },
    /// The inode table is over its capacity: drop cold dentries.
    Evict,
    /// A name now refers to another inode: drop the kernel's dentry.
    Entry { parent: u64, name: OsString },
}

pub(super) fn notify_loop(
    rx: mpsc::Receiver<Invalidation>,
    notifier: Arc<OnceLock<Notifier>>,
    table: Arc<InodeTable>,
) {
    while let Ok(msg) = rx.recv() {
        let Some(n) = notifier.get() else {
            if matches!(msg, Invalidation::Evict) {
                table.cancel_eviction();
            }
            continue;
        };
        let res = match &msg {
            Invalidation::Inode { nodeid, data } => {
                n.inval_inode(INodeNo(*nodeid), if *data { 0 } else { -1 }, 0)
            }
            Invalidation::Evict => {
                evict_cold(n, &table);
                while table.end_eviction() {
                    evict_cold(n, &table);
                }
                Ok(())
            }
            Invalidation::Entry { parent, name } => n.inval_entry(INodeNo(*parent), name),
        };
        if let Err(e) = res {
            debug!("invalidation {msg:?}: {e}");
        }
    }
}

/// Ask the kernel to drop the dentries of cold inodes until the table is back at 3/4 of its
/// capacity; their FORGETs then free the entries and the engine nodes.
fn evict_cold(n: &Notifier, table: &InodeTable) {
    let want = table.excess_over(table.capacity() / 4 * 3);
    if want == 0 {
        return;
    }
    let cold = table.cold_entries(want);
    debug!("evicting {} of {} inodes", cold.len(), table.len());
    for (parent, node) in cold {
        let path = node.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        // ENOENT: the kernel no longer has that dentry (swallowed by fuser).
        if let Err(e) = n.inval_entry(INodeNo(parent), name) {
            debug!("evict {}: {e}", path.display());
            table.eviction_failed(table.nodeid_of(node.ino()));
        }
    }
}
