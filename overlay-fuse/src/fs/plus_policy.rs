//! Which READDIRPLUS chunks carry attributes ([`ReaddirPlus::Adaptive`]).
//!
//! The kernel's own choice (`READDIRPLUS_AUTO`) gives attributes with a directory's first
//! chunk only, unless a lookup in the directory came between two chunks. A walker that
//! reads a whole directory before it stats the entries (`find`, `ls -l`, `du`, fts) then
//! costs one LOOKUP round trip per entry past the first chunk; asking for attributes with
//! every chunk instead costs a reader that only lists names (`ls -f`) a lookup of every
//! entry in the daemon and a dentry in the kernel for each.
//!
//! With the adaptive policy the kernel asks READDIRPLUS for every chunk, and the daemon
//! decides per chunk: attributes for a directory's first chunk, and for every chunk asked
//! by a process that was seen to look up names of a chunk it got without them (a
//! stat-after-list walker); the other chunks list names only (a node id of 0 tells the
//! kernel that an entry comes without attributes, and takes no lookup reference).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How READDIRPLUS chunks get attributes (`readdirplus=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaddirPlus {
    /// The daemon decides per chunk (see the module docs): `readdirplus=auto`, the default.
    Adaptive,
    /// The kernel decides (`READDIRPLUS_AUTO`): `readdirplus=kernel`.
    Kernel,
    /// Attributes with every chunk: `readdirplus=always`.
    Always,
}

/// How long a remembered directory or process counts.
const WINDOW: Duration = Duration::from_secs(30);
/// Entries kept in each map before old ones are dropped.
const KEEP: usize = 4096;

/// The adaptive policy's memory: directories recently listed without attributes, and
/// processes that looked names up in such a directory.
#[derive(Debug, Default)]
pub(super) struct PlusPolicy {
    /// Directory node ids listed without attributes lately.
    attrless: Mutex<HashMap<u64, Instant>>,
    /// When a chunk last went out without attributes ([`since_start`]; 0: never): lookups
    /// skip the `attrless` lock unless that was within [`WINDOW`].
    last_attrless: AtomicU64,
    /// Processes (thread ids, as FUSE sends them) that stat after listing.
    walkers: Mutex<HashMap<u32, Instant>>,
}

/// Nanoseconds since the first call (at least 1), for times kept in an atomic.
fn since_start(now: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(start).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn remember<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Instant>, key: K, now: Instant) {
    if map.len() >= KEEP {
        map.retain(|_, t| now.duration_since(*t) < WINDOW);
        if map.len() >= KEEP {
            map.clear();
        }
    }
    map.insert(key, now);
}

impl PlusPolicy {
    /// Whether a READDIRPLUS chunk from `offset` for process `pid` carries attributes.
    pub(super) fn wants_attrs(&self, pid: u32, offset: u64) -> bool {
        if offset == 0 {
            return true;
        }
        let now = Instant::now();
        let mut walkers = self.walkers.lock();
        match walkers.get_mut(&pid) {
            Some(t) if now.duration_since(*t) < WINDOW => {
                *t = now;
                true
            }
            _ => false,
        }
    }

    /// A chunk of directory `dir` went out without attributes.
    pub(super) fn listed_without_attrs(&self, dir: u64) {
        let now = Instant::now();
        remember(&mut self.attrless.lock(), dir, now);
        self.last_attrless
            .store(since_start(now), Ordering::Relaxed);
    }

    /// Process `pid` looked a name up in directory `parent`.
    pub(super) fn looked_up(&self, pid: u32, parent: u64) {
        let last = self.last_attrless.load(Ordering::Relaxed);
        let now = Instant::now();
        if last == 0 || since_start(now).saturating_sub(last) >= WINDOW.as_nanos() as u64 {
            return;
        }
        let listed = self
            .attrless
            .lock()
            .get(&parent)
            .is_some_and(|t| now.duration_since(*t) < WINDOW);
        if listed {
            remember(&mut self.walkers.lock(), pid, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_stats_after_listing_gets_attributes() {
        let p = PlusPolicy::default();
        assert!(p.wants_attrs(7, 0), "first chunks always");
        assert!(!p.wants_attrs(7, 100));
        // A lookup in a directory never listed without attributes (a path walk) teaches
        // nothing.
        p.looked_up(7, 42);
        assert!(!p.wants_attrs(7, 100));
        p.listed_without_attrs(42);
        p.looked_up(8, 43);
        assert!(!p.wants_attrs(8, 100));
        p.looked_up(7, 42);
        assert!(p.wants_attrs(7, 100));
        assert!(!p.wants_attrs(8, 100), "another process");
    }
}
