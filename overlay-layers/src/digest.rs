//! sha256 digests of the streams going through a writer or reader (`sha256:<hex>`).

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Hashes and counts what is written through it.
pub struct HashWriter<W> {
    inner: W,
    hash: Option<Sha256>,
    count: u64,
}

impl<W> HashWriter<W> {
    /// Hash what goes into `inner`.
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hash: Some(Sha256::new()),
            count: 0,
        }
    }

    /// Count only (when the digest is known otherwise: an uncompressed layer's digest is
    /// its diff_id).
    pub fn counting(inner: W) -> Self {
        HashWriter {
            inner,
            hash: None,
            count: 0,
        }
    }

    /// `(sha256:<hex>, bytes, inner)`; the digest is empty for a counting-only writer.
    pub fn finish(self) -> (String, u64, W) {
        let d = self
            .hash
            .map(|h| hex(h.finalize().as_slice()))
            .unwrap_or_default();
        (d, self.count, self.inner)
    }

    /// Bytes so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
pub struct HashReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R> HashReader<R> {
    /// Hash what is read from `inner`.
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// `(sha256:<hex>, bytes)` of what was read.
    pub fn finish(self) -> (String, u64) {
        (hex(self.hash.finalize().as_slice()), self.count)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// `sha256:` and the lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The digest of a byte string.
pub fn sha256(data: &[u8]) -> String {
    hex(Sha256::digest(data).as_slice())
}

/// Size of the buffers [`PipelinedHashWriter`] hands to its hashing thread.
const PIPE_BUF: usize = 256 * 1024;
/// Buffers in flight between the writer and the hashing thread (bounds the memory).
const PIPE_DEPTH: usize = 4;

/// A buffered writer that hashes and counts what goes through it on a second thread, so the
/// sha256 overlaps the reading and writing (`tar` computes no digest: this keeps the
/// digest off the critical path). Writes reach `inner` in 256 KiB blocks, in order, on the
/// calling thread; each block is then passed (bounded, at most four in flight, the buffers
/// reused) to the hashing thread.
pub struct PipelinedHashWriter<W: Write> {
    inner: Option<W>,
    buf: Vec<u8>,
    to_hash: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
    hasher: Option<std::thread::JoinHandle<Sha256>>,
    count: u64,
}

impl<W: Write> PipelinedHashWriter<W> {
    /// Hash what goes into `inner`, on a thread of its own.
    pub fn new(inner: W) -> io::Result<Self> {
        let (to_hash, recycled, hasher) = spawn_hasher()?;
        Ok(PipelinedHashWriter {
            inner: Some(inner),
            buf: Vec::with_capacity(PIPE_BUF),
            to_hash: Some(to_hash),
            recycled,
            hasher: Some(hasher),
            count: 0,
        })
    }

    /// Write the buffered block to `inner` and send it to the hashing thread.
    fn flush_block(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner
            .as_mut()
            .expect("present until finish")
            .write_all(&self.buf)?;
        send_block(&mut self.buf, &self.to_hash, &self.recycled)
    }

    /// Flush, wait for the digest: `(sha256:<hex>, bytes, inner)`.
    pub fn finish(mut self) -> io::Result<(String, u64, W)> {
        self.flush_block()?;
        drop(self.to_hash.take());
        let h = self
            .hasher
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the sha256 thread panicked"))?;
        let inner = self.inner.take().expect("present until finish");
        Ok((hex(h.finalize().as_slice()), self.count, inner))
    }
}

impl<W: Write> Write for PipelinedHashWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PIPE_BUF - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.count += n as u64;
        if self.buf.len() == PIPE_BUF {
            self.flush_block()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Whole blocks only go to the hasher; a flush pushes the partial block too (it is
        // then hashed as its own block, which the sha256 stream does not mind).
        self.flush_block()?;
        self.inner.as_mut().expect("present until finish").flush()
    }
}

impl<W: Write> Drop for PipelinedHashWriter<W> {
    fn drop(&mut self) {
        // On an error path: stop the thread (closing its channel) and wait for it.
        drop(self.to_hash.take());
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// A reader that hashes and counts what is read through it on a second thread (the twin of
/// [`PipelinedHashWriter`]). Reads go straight to `inner`, exactly as the caller asks (no
/// read-ahead: a limit error of `inner` surfaces at the same entry as without it); the bytes
/// read are copied into 256 KiB blocks passed (bounded, buffers reused) to the hashing thread.
pub struct PipelinedHashReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    to_hash: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
    hasher: Option<std::thread::JoinHandle<Sha256>>,
    count: u64,
}

/// The hashing thread of the pipelined reader and writer: `(sender of blocks to hash,
/// receiver of hashed blocks to reuse, the thread)`.
type Hasher = (
    std::sync::mpsc::SyncSender<Vec<u8>>,
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::thread::JoinHandle<Sha256>,
);

fn spawn_hasher() -> io::Result<Hasher> {
    let (to_hash, from_user) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH);
    let (give_back, recycled) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH + 1);
    let t = std::thread::Builder::new()
        .name("ovl-sha256".into())
        .spawn(move || {
            let mut h = Sha256::new();
            for block in from_user {
                h.update(&block);
                // The user may be gone (error path) or have enough buffers: fine.
                let _ = give_back.try_send(block);
            }
            h
        })?;
    Ok((to_hash, recycled, t))
}

/// Send `buf` (when not empty) to the hashing thread, leaving a reused or new empty buffer.
fn send_block(
    buf: &mut Vec<u8>,
    to_hash: &Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    recycled: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut fresh = recycled
        .try_recv()
        .unwrap_or_else(|_| Vec::with_capacity(PIPE_BUF));
    fresh.clear();
    let block = std::mem::replace(buf, fresh);
    match to_hash.as_ref().map(|t| t.send(block)) {
        Some(Ok(())) => Ok(()),
        _ => Err(io::Error::other("the sha256 thread ended early")),
    }
}

impl<R: Read> PipelinedHashReader<R> {
    /// Hash what is read from `inner`, on a thread of its own.
    pub fn new(inner: R) -> io::Result<Self> {
        let (to_hash, recycled, t) = spawn_hasher()?;
        Ok(PipelinedHashReader {
            inner,
            buf: Vec::with_capacity(PIPE_BUF),
            to_hash: Some(to_hash),
            recycled,
            hasher: Some(t),
            count: 0,
        })
    }

    /// `(sha256:<hex>, bytes)` of what was read.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        send_block(&mut self.buf, &self.to_hash, &self.recycled)?;
        drop(self.to_hash.take());
        let h = self
            .hasher
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the sha256 thread panicked"))?;
        Ok((hex(h.finalize().as_slice()), self.count))
    }
}

impl<R: Read> Read for PipelinedHashReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        let mut rest = &out[..n];
        while !rest.is_empty() {
            let k = rest.len().min(PIPE_BUF - self.buf.len());
            self.buf.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if self.buf.len() == PIPE_BUF {
                send_block(&mut self.buf, &self.to_hash, &self.recycled)?;
            }
        }
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: Read> Drop for PipelinedHashReader<R> {
    fn drop(&mut self) {
        drop(self.to_hash.take());
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}
