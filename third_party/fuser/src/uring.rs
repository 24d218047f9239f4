//! FUSE over io_uring (Linux 6.14+), added to fuser 0.18 by the `overlay` project.
//!
//! With `/dev/fuse`, every request wakes a daemon thread that may sit on another CPU, and every
//! reply wakes the caller back across CPUs. On a VM whose idle vCPUs halt, those two cross-CPU
//! wake-ups dominate the cost of a small request. With io_uring, the kernel keeps one queue
//! per CPU and puts a request on the queue of the CPU the caller runs on; this module serves
//! each queue from a thread pinned to that CPU, so a request and its reply stay on one CPU.
//!
//! Protocol (the kernel's `fs/fuse/dev_uring.c`, uapi `fuse_uring_*`):
//! - after `FUSE_INIT` with `FUSE_OVER_IO_URING`, the daemon submits `IORING_OP_URING_CMD`
//!   SQEs (128-byte SQEs) on the `/dev/fuse` fd: `FUSE_IO_URING_CMD_REGISTER` hands the kernel
//!   one ring entry (a 288-byte header buffer and a payload buffer of at least the
//!   connection's maximum payload) for one queue;
//! - once every queue has an entry, the kernel routes requests to the rings (FORGET and
//!   INTERRUPT still come through `read(2)` of `/dev/fuse`). A request completes the entry's
//!   SQE: `fuse_in_header` in the header's `in_out`, the first argument (the per-op struct)
//!   in `op_in`, the other arguments in the payload, the payload's length in `ring_ent_in_out`;
//! - the reply goes back the same way (`fuse_out_header` in `in_out`, every reply argument in
//!   the payload) with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also re-arms the entry.
//!
//! Replies may come from other threads (the filesystem may hand a reply to a worker). A
//! reply is written in place into its entry (or staged, when it would overlap request bytes
//! that a running dispatch still borrows) and the entry queued as done; a sender on a thread
//! other than the ring's also signals the ring's eventfd, which the ring thread keeps a read
//! pending on. The ring thread commits done entries after each batch.
//!
//! All of the module's `unsafe` is here, each block with its reason.

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread::ThreadId;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::ChannelSender;

use crate::ll::Operation;
use crate::ll::fuse_abi as abi;
use crate::passthrough::BackingId;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// `FUSE_IO_URING_CMD_REGISTER` (uapi `enum fuse_uring_cmd`).
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `FUSE_URING_IN_OUT_HEADER_SZ`: room for `fuse_in_header` / `fuse_out_header`.
const IN_OUT_SZ: usize = 128;
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the per-op request struct.
const OP_IN_SZ: usize = 128;
/// Offset of `struct fuse_uring_ent_in_out` in `struct fuse_uring_req_header`.
const ENT_IN_OUT_OFF: usize = IN_OUT_SZ + OP_IN_SZ;
/// `sizeof(struct fuse_uring_req_header)`.
const HEADER_SZ: usize = ENT_IN_OUT_OFF + 32;
/// Bytes kept in front of each payload, so a request's header and first argument can be put
/// right before its payload and parsed in place (no copy of the payload).
const PREFIX: usize = 256;
/// `FUSE_MIN_READ_BUFFER`.
const MIN_PAYLOAD: usize = 8192;
/// `user_data` of the eventfd read.
const EVENTFD_TAG: u64 = u64::MAX;
/// Length of `struct fuse_in_header`.
const IN_HEADER_LEN: usize = size_of::<abi::fuse_in_header>();
/// Length of `struct fuse_out_header`.
const OUT_HEADER_LEN: usize = size_of::<abi::fuse_out_header>();

/// What a session tells its user about the io_uring transport.
#[derive(Debug, Clone)]
pub struct IoUringStatus {
    /// Queues (one per possible CPU) the rings serve.
    pub queues: usize,
    /// Ring entries per queue.
    pub depth: usize,
    /// Requests served through the rings so far.
    pub served: Arc<AtomicU64>,
}

/// The kernel's maximum payload for a connection: `max(FUSE_MIN_READ_BUFFER, max_write,
/// max_pages * PAGE_SIZE)`, with `max_pages` as the kernel clamps it.
pub(crate) fn payload_size(max_write: u32, max_pages: u16) -> usize {
    let page = page_size::get();
    let limit = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(256);
    let pages = usize::from(max_pages).clamp(1, limit.max(1));
    MIN_PAYLOAD.max(max_write as usize).max(pages * page)
}

/// The CPUs the kernel may put a request on (`/sys/devices/system/cpu/possible`): one queue
/// each.
pub(crate) fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0usize;
    for part in text.trim().split(',') {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("cpu list {text:?}"));
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        n = n.max(b + 1);
        if b < a {
            return Err(bad());
        }
    }
    Ok(n)
}

/// A heap buffer of 8-byte aligned bytes, reached through a raw pointer: the kernel writes
/// into it and replies are written into it from other threads, so no Rust reference to the
/// whole buffer may live across those accesses.
struct RawBuf {
    ptr: *mut u8,
    words: usize,
}

impl RawBuf {
    fn new(bytes: usize) -> Self {
        let words = bytes.div_ceil(8);
        let boxed: Box<[u64]> = vec![0u64; words].into_boxed_slice();
        RawBuf {
            ptr: Box::into_raw(boxed).cast::<u8>(),
            words,
        }
    }

    fn len(&self) -> usize {
        self.words * 8
    }

    /// `len` bytes from `off`.
    ///
    /// # Safety
    /// The range must be inside the buffer, and nothing else may access it while the slice
    /// lives (the entry protocol: see [`RingShared`]).
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off + len <= self.len());
        // SAFETY: in bounds and exclusive, as the caller promises; u8 has no alignment or
        // validity requirements.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Box::into_raw` of a `[u64]` of `words` elements and is
        // freed only here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.cast::<u64>(),
                self.words,
            ))
        });
    }
}

/// One ring entry's buffers: the header and `PREFIX + payload` bytes, 8-byte aligned.
struct EntBuffers {
    header: RawBuf,
    body: RawBuf,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: plain heap memory and pointers into it, not tied to a thread; which thread may
// touch the buffers is the entry protocol's business (see `RingShared`).
unsafe impl Send for EntBuffers {}

impl EntBuffers {
    fn new(payload: usize) -> Self {
        let header = RawBuf::new(HEADER_SZ);
        let body = RawBuf::new(PREFIX + payload);
        let iov = Box::new([
            libc::iovec {
                iov_base: header.ptr.cast(),
                iov_len: HEADER_SZ,
            },
            libc::iovec {
                // SAFETY: PREFIX is within `body` (its length is at least PREFIX + payload).
                iov_base: unsafe { body.ptr.add(PREFIX) }.cast(),
                iov_len: payload,
            },
        ]);
        EntBuffers { header, body, iov }
    }

    /// Room for a reply's arguments.
    fn payload_room(&self) -> usize {
        self.iov[1].iov_len
    }
}

/// One entry of a ring, shared with the senders of its replies.
struct EntSlot {
    bufs: EntBuffers,
    /// Replies that cannot be written in place wait here until the ring thread copies them.
    staged: Mutex<Vec<u8>>,
    /// The current request has a payload (its bytes lie from `PREFIX` on).
    request_payload: AtomicBool,
    /// The ring thread is dispatching the current request (its bytes are borrowed).
    dispatching: AtomicBool,
}

/// State shared between a ring's thread and the senders of its replies.
///
/// The entry protocol, which makes the raw buffer accesses exclusive: an entry's buffers
/// belong to the kernel from REGISTER or COMMIT_AND_FETCH until its CQE; then to the ring
/// thread, which parses the request and dispatches it; then to the one sender of the reply
/// (the reply object is single-use), which writes the reply in place, unless that would
/// overlap request bytes still borrowed by the dispatch, and then queues the entry as done
/// (under the `done` lock, which orders the write before the commit); then to the ring
/// thread again, which commits it.
pub(crate) struct RingShared {
    ents: Vec<EntSlot>,
    /// Entries with a reply, in order, and whether the reply is staged (not in place).
    done: Mutex<Vec<(usize, bool)>>,
    /// Signalled by senders on other threads.
    eventfd: OwnedFd,
    owner: ThreadId,
}

// SAFETY: the raw buffers are accessed by one thread at a time, per the entry protocol above;
// the rest is `Sync` on its own.
unsafe impl Sync for RingShared {}
// SAFETY: as above; the buffers are plain heap memory, not tied to a thread.
unsafe impl Send for RingShared {}

impl std::fmt::Debug for RingShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingShared")
            .field("entries", &self.ents.len())
            .finish()
    }
}

/// The reply sender of a request that came through a ring.
#[derive(Debug, Clone)]
pub(crate) struct UringReply {
    ring: Arc<RingShared>,
    ent: usize,
    /// For passthrough backing ids (ioctls on `/dev/fuse`).
    ch: ChannelSender,
}

impl UringReply {
    pub(crate) fn channel(&self) -> ChannelSender {
        self.ch.clone()
    }

    pub(crate) fn send(&self, data: &[io::IoSlice<'_>]) -> io::Result<()> {
        let slot = &self.ring.ents[self.ent];
        let total: usize = data.iter().map(|d| d.len()).sum();
        let fits = total >= OUT_HEADER_LEN && total - OUT_HEADER_LEN <= slot.bufs.payload_room();
        // The reply's arguments go from PREFIX on: in place unless request bytes there are
        // still borrowed by the dispatch.
        let in_place = fits
            && !(slot.request_payload.load(Ordering::Acquire)
                && slot.dispatching.load(Ordering::Acquire));
        if in_place {
            // SAFETY: per the entry protocol, this sender owns the entry's buffers now, apart
            // from request bytes borrowed by a running dispatch, which lie before PREFIX
            // (the request has no payload) and in neither range written here.
            unsafe { write_in_place(&slot.bufs, data, total) };
        } else {
            let mut r = slot.staged.lock();
            r.clear();
            for d in data {
                r.extend_from_slice(d);
            }
        }
        self.ring.done.lock().push((self.ent, !in_place));
        if std::thread::current().id() != self.ring.owner {
            let one = 1u64.to_ne_bytes();
            // A failed wake-up (only possible once the ring is gone) loses nothing: the ring
            // thread drains the done list after every batch.
            let _ = nix::unistd::write(&self.ring.eventfd, &one);
        }
        Ok(())
    }

    pub(crate) fn open_backing(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<BackingId> {
        self.ch.open_backing(fd)
    }

    pub(crate) unsafe fn wrap_backing(&self, id: u32) -> BackingId {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.ch.wrap_backing(id) }
    }
}

/// Write a reply (`fuse_out_header`, then its arguments) into the entry: the header into
/// `in_out`, the arguments from PREFIX on, their length into `ring_ent_in_out`.
///
/// # Safety
/// The caller owns the header and the body from PREFIX on (the entry protocol), and the
/// arguments fit (`total - OUT_HEADER_LEN <= payload_room`).
unsafe fn write_in_place(bufs: &EntBuffers, data: &[io::IoSlice<'_>], total: usize) {
    // SAFETY: in bounds (HEADER_SZ, and PREFIX + payload_room) and owned, per the caller;
    // the three ranges are disjoint.
    let (out, args, args_len) = unsafe {
        (
            bufs.header.bytes(0, OUT_HEADER_LEN),
            bufs.body.bytes(PREFIX, total - OUT_HEADER_LEN),
            bufs.header.bytes(ENT_IN_OUT_OFF + 16, 4),
        )
    };
    let mut pos = 0usize;
    for d in data {
        let mut d: &[u8] = d;
        if pos < OUT_HEADER_LEN {
            let n = d.len().min(OUT_HEADER_LEN - pos);
            out[pos..pos + n].copy_from_slice(&d[..n]);
            pos += n;
            d = &d[n..];
        }
        if !d.is_empty() {
            let at = pos - OUT_HEADER_LEN;
            args[at..at + d.len()].copy_from_slice(d);
            pos += d.len();
        }
    }
    args_len.copy_from_slice(&((total - OUT_HEADER_LEN) as u32).to_ne_bytes());
}

/// A ring prepared before `FUSE_INIT` is answered (so a failure can still turn io_uring
/// off), served by [`serve`] once the connection is initialised.
pub(crate) struct PreparedRing {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    qid: u16,
    ents: Vec<EntBuffers>,
    eventfd: OwnedFd,
}

impl std::fmt::Debug for PreparedRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRing")
            .field("qid", &self.qid)
            .field("depth", &self.ents.len())
            .finish()
    }
}

/// Create one ring per queue, with its buffers and eventfd. Fails (and the caller then does
/// not ask for io_uring) where io_uring is unavailable, e.g. `kernel.io_uring_disabled` or
/// a seccomp filter. The rings are created disabled: a single-issuer ring belongs to the
/// thread that enables it, which is its serving thread.
pub(crate) fn prepare(
    queues: usize,
    depth: usize,
    payload: usize,
) -> io::Result<Vec<PreparedRing>> {
    let mut rings = Vec::with_capacity(queues);
    for qid in 0..queues {
        let entries = (2 * depth + 2).next_power_of_two() as u32;
        let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
        b.setup_r_disabled()
            .setup_single_issuer()
            .setup_defer_taskrun();
        let ring = match b.build(entries) {
            Ok(r) => r,
            // Kernels or filters without the task-run flags: a plain ring.
            Err(_) => IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .setup_r_disabled()
                .build(entries)?,
        };
        // SAFETY: eventfd(2) returns a new descriptor that nothing else owns.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        rings.push(PreparedRing {
            ring,
            qid: u16::try_from(qid).map_err(|_| io::Error::other("too many CPUs"))?,
            ents: (0..depth).map(|_| EntBuffers::new(payload)).collect(),
            // SAFETY: `efd` is a fresh, valid descriptor, owned from here on.
            eventfd: unsafe { OwnedFd::from_raw_fd(efd) },
        });
    }
    Ok(rings)
}

/// The SQE of a `FUSE_IO_URING_CMD_*` command for entry `ent`.
fn fuse_cmd(
    fd: RawFd,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<u64>,
) -> squeue::Entry128 {
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let mut op = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
    if let Some(addr) = iov {
        op = op.addr(Some(addr));
    }
    let sqe = op.build();
    if iov.is_none() {
        return sqe;
    }
    // REGISTER passes two iovecs: `sqe->len` must be 2, which the builder cannot set.
    // SAFETY: `Entry128` is `repr(C)` over the kernel's 128-byte `io_uring_sqe` (64 bytes)
    // plus 64 bytes of command area; every byte pattern is a valid SQE value. `len` is the
    // u32 at offset 24 of `struct io_uring_sqe` (uapi, fixed ABI).
    unsafe {
        let mut bytes: [u8; 128] = std::mem::transmute(sqe);
        bytes[24..28].copy_from_slice(&2u32.to_ne_bytes());
        std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes)
    }
}

fn push(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: &squeue::Entry128,
) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an SQE points to (entry buffers and iovecs, owned by the
        // `RingShared` that `serve` holds, and the eventfd word) outlives the ring: `serve`
        // drops the ring first.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            debug!("io_uring queue {cpu}: not pinned ({e})");
        }
    }
}

/// Make the kernel give up on io_uring for this connection and serve it through `/dev/fuse`
/// reads, for when a queue cannot be served (its thread or ring failed): told io_uring at
/// `FUSE_INIT`, the kernel would otherwise hold every request until each queue has an entry.
/// A `REGISTER` that the kernel refuses does that; one for a queue that cannot exist is
/// refused before anything is registered.
pub(crate) fn fall_back_to_dev_fuse(fd: RawFd) {
    let attempt = (|| -> io::Result<i32> {
        let mut ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let sqe = fuse_cmd(fd, CMD_REGISTER, u16::MAX, 0, Some(iov.as_mut_ptr() as u64));
        push(&mut ring, &sqe)?;
        ring.submit_and_wait(1)?;
        let res = ring.completion().next().map_or(0, |c| c.result());
        Ok(res)
    })();
    match attempt {
        Ok(res) if res < 0 => warn!("io_uring abandoned for this mount; serving through /dev/fuse"),
        Ok(_) => error!("io_uring: the kernel accepted a REGISTER meant to fail"),
        Err(e) => error!("io_uring: cannot tell the kernel to fall back to /dev/fuse: {e}"),
    }
}

/// Register `prepared`'s entries and serve its queue until the connection ends.
pub(crate) fn serve<FS: Filesystem>(
    prepared: PreparedRing,
    fd: RawFd,
    se: &SessionEventLoop<FS>,
    served: &AtomicU64,
) -> io::Result<()> {
    let PreparedRing {
        ring: prepared_ring,
        qid,
        ents,
        eventfd,
    } = prepared;
    let depth = ents.len();
    pin_to_cpu(usize::from(qid));
    let shared = Arc::new(RingShared {
        ents: ents
            .into_iter()
            .map(|bufs| EntSlot {
                bufs,
                staged: Mutex::new(Vec::new()),
                request_payload: AtomicBool::new(false),
                dispatching: AtomicBool::new(false),
            })
            .collect(),
        done: Mutex::new(Vec::new()),
        eventfd,
        owner: std::thread::current().id(),
    });
    let mut efd_buf = Box::new(0u64);
    let efd_read = |buf: &mut u64| {
        squeue::Entry128::from(
            opcode::Read::new(
                types::Fd(shared.eventfd.as_raw_fd()),
                std::ptr::from_mut(buf).cast(),
                8,
            )
            .build()
            .user_data(EVENTFD_TAG),
        )
    };
    // Declared after every buffer its commands point to, so it is dropped first (which
    // cancels them) on every way out of this function.
    let mut ring = prepared_ring;
    if let Err(e) = ring.submitter().register_enable_rings() {
        fall_back_to_dev_fuse(fd);
        return Err(e);
    }

    let registered = (|| {
        for (i, slot) in shared.ents.iter().enumerate() {
            let iov = slot.bufs.iov.as_ptr() as u64;
            push(
                &mut ring,
                &fuse_cmd(fd, CMD_REGISTER, qid, 0, Some(iov)).user_data(i as u64),
            )?;
        }
        push(&mut ring, &efd_read(&mut efd_buf))?;
        ring.submit()
    })();
    if let Err(e) = registered {
        fall_back_to_dev_fuse(fd);
        return Err(e);
    }

    let mut alive = depth;
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(depth + 1);
    let mut commits: Vec<(usize, bool)> = Vec::with_capacity(depth);
    while alive > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(tag, res) in &cqes {
            if tag == EVENTFD_TAG {
                if res >= 0 {
                    push(&mut ring, &efd_read(&mut efd_buf))?;
                }
                continue;
            }
            let i = tag as usize;
            if res < 0 {
                // ENOTCONN / ECONNABORTED: the connection ended (unmount or abort).
                let errno = -res;
                if errno != libc::ENOTCONN && errno != libc::ECONNABORTED && errno != libc::ENODEV {
                    error!(
                        "io_uring queue {qid}: entry {i} failed: {}",
                        io::Error::from_raw_os_error(errno)
                    );
                }
                alive -= 1;
                continue;
            }
            served.fetch_add(1, Ordering::Relaxed);
            // A panic must not end the queue's only thread: its CPU's callers would wait
            // forever. Unwinding drops the request's reply object, which answers EIO.
            let handled =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(&shared, i, se)));
            if handled.is_err() {
                error!("io_uring queue {qid}: a request handler panicked");
            }
        }
        commits.clear();
        std::mem::swap(&mut commits, &mut *shared.done.lock());
        for &(i, staged) in &commits {
            let slot = &shared.ents[i];
            if staged {
                // SAFETY: the entry is queued as done: its buffers are the ring thread's.
                unsafe { copy_staged_reply(slot) };
            }
            // SAFETY: as above. The reply's `unique` (the commit id) is where the request's was.
            let commit_id = u64::from_ne_bytes(
                unsafe { slot.bufs.header.bytes(8, 8) }
                    .try_into()
                    .expect("8 bytes"),
            );
            push(
                &mut ring,
                &fuse_cmd(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, None).user_data(i as u64),
            )?;
        }
    }
    debug!("io_uring queue {qid}: connection ended");
    Ok(())
}

/// Parse the request in entry `i` and dispatch it with a reply sender for this ring.
fn handle<FS: Filesystem>(shared: &Arc<RingShared>, i: usize, se: &SessionEventLoop<FS>) {
    let slot = &shared.ents[i];
    let bufs = &slot.bufs;
    let mut header = [0u8; HEADER_SZ];
    // SAFETY: the entry's CQE came: its buffers are the ring thread's (entry protocol).
    header.copy_from_slice(unsafe { bufs.header.bytes(0, HEADER_SZ) });
    let in_header = &header[..IN_HEADER_LEN];
    let op_in = &header[IN_OUT_SZ..IN_OUT_SZ + OP_IN_SZ];
    let payload_sz = u32::from_ne_bytes(
        header[ENT_IN_OUT_OFF + 16..ENT_IN_OUT_OFF + 20]
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let total = u32::from_ne_bytes(in_header[0..4].try_into().expect("4 bytes")) as usize;
    let unique = u64::from_ne_bytes(in_header[8..16].try_into().expect("8 bytes"));
    let sender = UringReply {
        ring: shared.clone(),
        ent: i,
        ch: se.ch.sender(),
    };
    slot.request_payload
        .store(payload_sz > 0, Ordering::Release);
    // The first argument's length is what the header's total leaves over.
    let arg0 = total.checked_sub(IN_HEADER_LEN + payload_sz);
    let Some(arg0) = arg0.filter(|&a| a <= OP_IN_SZ && payload_sz <= bufs.payload_room()) else {
        error!("io_uring: malformed request {unique}: len {total}, payload {payload_sz}");
        reply_errno(&sender, unique, libc::EIO);
        return;
    };
    let start = PREFIX - IN_HEADER_LEN - arg0;
    // SAFETY: as above; the range ends at the payload's end, inside the buffer (checked).
    let data: &mut [u8] = unsafe { bufs.body.bytes(start, PREFIX + payload_sz - start) };
    data[..IN_HEADER_LEN].copy_from_slice(in_header);
    data[IN_HEADER_LEN..IN_HEADER_LEN + arg0].copy_from_slice(&op_in[..arg0]);
    let data: &[u8] = data;
    slot.dispatching.store(true, Ordering::Release);
    if start % 8 == 0 {
        dispatch(data, sender, se);
    } else {
        // An argument of odd length would misalign the header: parse from an aligned copy.
        handle_copied(data, sender, se);
    }
    slot.dispatching.store(false, Ordering::Release);
}

#[cold]
fn handle_copied<FS: Filesystem>(bytes: &[u8], sender: UringReply, se: &SessionEventLoop<FS>) {
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: as in `EntBuffers::header`.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), aligned.len() * 8)
    };
    buf[..bytes.len()].copy_from_slice(bytes);
    dispatch(&buf[..bytes.len()], sender, se);
}

fn dispatch<FS: Filesystem>(data: &[u8], sender: UringReply, se: &SessionEventLoop<FS>) {
    let unique = u64::from_ne_bytes(data[8..16].try_into().expect("8 bytes"));
    match RequestWithSender::with_uring(sender.clone(), data) {
        Some(req) => {
            if let Ok(Operation::Destroy(_)) = req.request.operation() {
                // Not expected through a ring; answer as the read loop does.
                req.reply::<crate::ReplyEmpty>().ok();
            } else if matches!(
                req.request.operation(),
                Ok(Operation::Forget(_) | Operation::BatchForget(_) | Operation::Interrupt(_))
            ) {
                // No reply exists for these; the entry still has to be handed back.
                req.dispatch(se);
                reply_errno(&sender, unique, libc::ENOSYS);
            } else {
                req.dispatch(se);
            }
        }
        None => reply_errno(&sender, unique, libc::EIO),
    }
}

fn reply_errno(sender: &UringReply, unique: u64, errno: i32) {
    let mut out = [0u8; OUT_HEADER_LEN];
    out[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    out[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    out[8..16].copy_from_slice(&unique.to_ne_bytes());
    let _ = sender.send(&[io::IoSlice::new(&out)]);
}

/// Copy a staged reply into the entry's buffers (as [`write_in_place`] does), or an EIO
/// reply if it does not fit.
///
/// # Safety
/// The entry is queued as done and not yet committed: its buffers are the ring thread's.
unsafe fn copy_staged_reply(slot: &EntSlot) {
    let reply = slot.staged.lock();
    // SAFETY: owned, per the caller; in bounds.
    let header = unsafe { slot.bufs.header.bytes(0, HEADER_SZ) };
    let mut unique = [0u8; 8];
    unique.copy_from_slice(&header[8..16]); // the request's, still in `in_out`
    let room = slot.bufs.payload_room();
    if reply.len() >= OUT_HEADER_LEN && reply.len() - OUT_HEADER_LEN <= room {
        let one = [io::IoSlice::new(&reply)];
        // SAFETY: owned, per the caller, and the arguments fit (checked).
        unsafe { write_in_place(&slot.bufs, &one, reply.len()) };
        return;
    }
    error!(
        "io_uring: reply of {} bytes does not fit the entry ({room} bytes of payload)",
        reply.len()
    );
    let mut out = [0u8; OUT_HEADER_LEN];
    out[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
    out[8..16].copy_from_slice(&unique);
    let one = [io::IoSlice::new(&out)];
    // SAFETY: as above; no arguments.
    unsafe { write_in_place(&slot.bufs, &one, OUT_HEADER_LEN) };
}
