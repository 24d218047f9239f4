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
//! Replies may come from other threads (the filesystem may hand a reply to a worker): a reply
//! is staged in its entry and the entry queued as done; a thread other than the ring's owner
//! also signals the ring's eventfd, which the ring thread keeps a read pending on.
//!
//! All of the module's `unsafe` is here, each block with its reason.

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::os::fd::RawFd;
use std::sync::Arc;
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

/// One ring entry's buffers: the header and `PREFIX + payload` bytes, 8-byte aligned.
struct EntBuffers {
    header: Box<[u64]>,
    body: Box<[u64]>,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the iovecs' raw pointers point into the entry's own heap buffers, which move
// with it and are only touched by the thread that owns the entry.
unsafe impl Send for EntBuffers {}

impl EntBuffers {
    fn new(payload: usize) -> Self {
        let mut header = vec![0u64; HEADER_SZ / 8].into_boxed_slice();
        let mut body = vec![0u64; (PREFIX + payload).div_ceil(8)].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: HEADER_SZ,
            },
            libc::iovec {
                // SAFETY: PREFIX is within `body` (its length is PREFIX + payload).
                iov_base: unsafe { body.as_mut_ptr().cast::<u8>().add(PREFIX) }.cast(),
                iov_len: payload,
            },
        ]);
        EntBuffers { header, body, iov }
    }

    fn header(&mut self) -> &mut [u8] {
        // SAFETY: a u64 slice viewed as bytes: same memory, u8 has no alignment or validity
        // requirements, and the borrow of `self` keeps it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.header.as_mut_ptr().cast::<u8>(), HEADER_SZ) }
    }

    fn body(&mut self) -> &mut [u8] {
        let len = self.body.len() * 8;
        // SAFETY: as in `header`.
        unsafe { std::slice::from_raw_parts_mut(self.body.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// State shared between a ring's thread and the senders of its replies.
#[derive(Debug)]
pub(crate) struct RingShared {
    /// Staged reply per entry (reused buffers).
    replies: Vec<Mutex<Vec<u8>>>,
    /// Entries whose reply is staged, in order.
    done: Mutex<Vec<usize>>,
    /// Signalled by senders on other threads.
    eventfd: OwnedFd,
    owner: ThreadId,
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
        {
            let mut r = self.ring.replies[self.ent].lock();
            r.clear();
            for d in data {
                r.extend_from_slice(d);
            }
        }
        self.ring.done.lock().push(self.ent);
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
        // SAFETY: every buffer an SQE points to (entry buffers, iovecs, the eventfd word)
        // lives in `serve`'s frame until the ring is dropped at its end.
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
        mut ring,
        qid,
        mut ents,
        eventfd,
    } = prepared;
    let depth = ents.len();
    pin_to_cpu(usize::from(qid));
    if let Err(e) = ring.submitter().register_enable_rings() {
        fall_back_to_dev_fuse(fd);
        return Err(e);
    }
    let shared = Arc::new(RingShared {
        replies: (0..depth).map(|_| Mutex::new(Vec::new())).collect(),
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

    let registered = (|| {
        for (i, ent) in ents.iter_mut().enumerate() {
            let iov = ent.iov.as_ptr() as u64;
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
    let mut commits: Vec<usize> = Vec::with_capacity(depth);
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
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle(&mut ents[i], &shared, i, se)
            }));
            if handled.is_err() {
                error!("io_uring queue {qid}: a request handler panicked");
            }
        }
        commits.clear();
        std::mem::swap(&mut commits, &mut *shared.done.lock());
        for &i in &commits {
            let commit_id = stage_reply(&mut ents[i], &shared.replies[i]);
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
fn handle<FS: Filesystem>(
    ent: &mut EntBuffers,
    shared: &Arc<RingShared>,
    i: usize,
    se: &SessionEventLoop<FS>,
) {
    let header = ent.header();
    let mut in_header = [0u8; IN_HEADER_LEN];
    in_header.copy_from_slice(&header[..IN_HEADER_LEN]);
    let op_in: [u8; OP_IN_SZ] = header[IN_OUT_SZ..IN_OUT_SZ + OP_IN_SZ]
        .try_into()
        .expect("fixed size");
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
    // The first argument's length is what the header's total leaves over.
    let arg0 = total.checked_sub(IN_HEADER_LEN + payload_sz);
    let body = ent.body();
    let Some(arg0) = arg0.filter(|&a| a <= OP_IN_SZ && PREFIX + payload_sz <= body.len()) else {
        error!("io_uring: malformed request {unique}: len {total}, payload {payload_sz}");
        reply_errno(&sender, unique, libc::EIO);
        return;
    };
    let start = PREFIX - IN_HEADER_LEN - arg0;
    body[start..start + IN_HEADER_LEN].copy_from_slice(&in_header);
    body[PREFIX - arg0..PREFIX].copy_from_slice(&op_in[..arg0]);
    let data: &[u8] = if start % 8 == 0 {
        &body[start..PREFIX + payload_sz]
    } else {
        // An argument of odd length would misalign the header: parse from an aligned copy.
        return handle_copied(&body[start..PREFIX + payload_sz], sender, se);
    };
    dispatch(data, sender, se);
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

/// Copy a staged reply into the entry's buffers; returns the request's unique id (the
/// commit id).
fn stage_reply(ent: &mut EntBuffers, staged: &Mutex<Vec<u8>>) -> u64 {
    let reply = staged.lock();
    let header = ent.header();
    let mut unique_bytes = [0u8; 8];
    unique_bytes.copy_from_slice(&header[8..16]); // the request's unique, still in `in_out`
    let mut out = [0u8; OUT_HEADER_LEN];
    let mut rest: &[u8] = &[];
    if reply.len() >= OUT_HEADER_LEN {
        out.copy_from_slice(&reply[..OUT_HEADER_LEN]);
        rest = &reply[OUT_HEADER_LEN..];
    } else {
        warn!("io_uring: short reply ({} bytes)", reply.len());
        out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
        out[8..16].copy_from_slice(&unique_bytes);
    }
    let body = ent.body();
    let room = body.len() - PREFIX;
    if rest.len() > room {
        error!(
            "io_uring: reply of {} bytes over the payload buffer",
            rest.len()
        );
        out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
        rest = &[];
    }
    body[PREFIX..PREFIX + rest.len()].copy_from_slice(rest);
    let payload_sz = rest.len() as u32;
    let header = ent.header();
    header[..OUT_HEADER_LEN].copy_from_slice(&out);
    header[ENT_IN_OUT_OFF + 16..ENT_IN_OUT_OFF + 20].copy_from_slice(&payload_sz.to_ne_bytes());
    u64::from_ne_bytes(unique_bytes)
}
