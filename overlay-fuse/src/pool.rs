//! A small pool of threads for long operations (a whole-file copy-up, fsync), so the fixed
//! fuser workers stay free. Threads are created on demand up to a limit and exit after a
//! while without work; spawning one thread per operation cost tens of microseconds per
//! copy-up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// A job for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads alive.
    threads: usize,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    max: usize,
    name: &'static str,
}

/// The pool; cheap to share behind an `Arc`.
pub(crate) struct LongOpPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LongOpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.state.lock();
        f.debug_struct("LongOpPool")
            .field("queued", &s.queue.len())
            .field("idle", &s.idle)
            .field("threads", &s.threads)
            .finish()
    }
}

/// How long an idle thread waits for work before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(30);

impl LongOpPool {
    /// A pool of at most `max` threads named `name`.
    pub(crate) fn new(max: usize, name: &'static str) -> Self {
        LongOpPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
                max: max.max(1),
                name,
            }),
        }
    }

    /// Queue `job`. When no thread exists and none can be started, the job is handed back
    /// so the caller can run it itself.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let mut st = self.shared.state.lock();
        st.queue.push_back(job);
        if st.queue.len() > st.idle && st.threads < self.shared.max {
            st.threads += 1;
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(self.shared.name.into())
                .spawn(move || worker(shared));
            if spawned.is_err() {
                st.threads -= 1;
                if st.threads == 0 {
                    return Err(st.queue.pop_back().expect("just pushed"));
                }
            }
        }
        drop(st);
        self.shared.cv.notify_one();
        Ok(())
    }
}

fn worker(shared: Arc<Shared>) {
    loop {
        let job = {
            let mut st = shared.state.lock();
            loop {
                if let Some(j) = st.queue.pop_front() {
                    break Some(j);
                }
                st.idle += 1;
                let timed_out = shared.cv.wait_for(&mut st, IDLE_EXIT).timed_out();
                st.idle -= 1;
                if timed_out && st.queue.is_empty() {
                    st.threads -= 1;
                    break None;
                }
            }
        };
        match job {
            Some(j) => j(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_with_bounded_threads() {
        let pool = LongOpPool::new(3, "test-pool");
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..50 {
            let done = done.clone();
            let tx = tx.clone();
            let job: Job = Box::new(move || {
                std::thread::sleep(Duration::from_millis(1));
                done.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            });
            assert!(pool.submit(job).is_ok());
            assert!(pool.shared.state.lock().threads <= 3);
        }
        for _ in 0..50 {
            rx.recv_timeout(Duration::from_secs(10)).expect("job ran");
        }
        assert_eq!(done.load(Ordering::SeqCst), 50);
    }
}
