//! Directory-entry prefetch: a background thread that resolves the names of a plain
//! READDIR reply before the kernel asks for them one LOOKUP at a time.
//!
//! With READDIRPLUS_AUTO the kernel reads the first chunk of a directory with attributes
//! (readdirplus) and the rest without. A walker that reads a whole directory before it stats
//! the entries (`find`, `ls -l`, `du`, fts in general) then costs one LOOKUP round trip per
//! entry past the first chunk. The prefetcher runs those lookups (and a getattr, which warms
//! the layers' inode caches) at the lowest CPU priority as soon as the chunk has been sent,
//! and keeps the resulting engine nodes alive for a while: the engine then answers the
//! kernel's LOOKUPs from its live children instead of walking the layers. A reader that only
//! lists names (`ls -f`) loses nothing but idle CPU time.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use overlay_core::{DirEntry, NodeRef};
use parking_lot::Mutex;
use tracing::debug;

/// Names of one READDIR reply to resolve.
pub(crate) struct Job {
    /// The directory.
    pub dir: NodeRef,
    /// Its listing snapshot.
    pub entries: Arc<Vec<DirEntry>>,
    /// The indexes the reply carried.
    pub range: Range<usize>,
}

/// Nodes kept alive after prefetching (the oldest go first).
const HELD_MAX: usize = 8 * 1024;
/// Jobs waiting; further ones are dropped (prefetching is only a hint).
const QUEUE_MAX: usize = 64;
/// Without new jobs for this long, the held nodes are released.
const HOLD_TIME: Duration = Duration::from_secs(5);

/// The prefetch thread's handle; dropping the sender (see [`Prefetcher::stop`]) ends it.
#[derive(Debug, Default)]
pub(crate) struct Prefetcher {
    tx: Mutex<Option<SyncSender<Job>>>,
    resolved: Arc<AtomicU64>,
}

impl Prefetcher {
    /// Start the thread. `resolve` looks a name up (and warms its attributes); it returns
    /// `None` once the filesystem is gone.
    pub(crate) fn start(
        &self,
        resolve: impl Fn(&NodeRef, &OsStr) -> Option<Option<NodeRef>> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_MAX);
        let resolved = self.resolved.clone();
        let spawned = std::thread::Builder::new()
            .name("ovl-prefetch".into())
            .spawn(move || {
                // Only idle CPU time: never compete with the request handlers or the
                // application.
                let tid = rustix::thread::gettid();
                if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
                    debug!("prefetch thread: setpriority: {e}");
                }
                let mut held: VecDeque<NodeRef> = VecDeque::new();
                loop {
                    let job = match rx.recv_timeout(HOLD_TIME) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => {
                            held = VecDeque::new();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    for e in &job.entries[job.range.clone()] {
                        match resolve(&job.dir, &e.name) {
                            None => return,
                            Some(None) => {}
                            Some(Some(n)) => {
                                resolved.fetch_add(1, Ordering::Relaxed);
                                if held.len() >= HELD_MAX {
                                    held.pop_front();
                                }
                                held.push_back(n);
                            }
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => *self.tx.lock() = Some(tx),
            Err(e) => debug!("no prefetch thread: {e}"),
        }
    }

    /// Queue a job (dropped when the queue is full or the thread is gone).
    pub(crate) fn submit(&self, job: Job) {
        if job.range.is_empty() {
            return;
        }
        if let Some(tx) = self.tx.lock().as_ref() {
            match tx.try_send(job) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Entries resolved so far.
    pub(crate) fn resolved(&self) -> u64 {
        self.resolved.load(Ordering::Relaxed)
    }

    /// End the thread (after it finishes its current job).
    pub(crate) fn stop(&self) {
        self.tx.lock().take();
    }
}
