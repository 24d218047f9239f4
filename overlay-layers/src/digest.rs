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

/// The hashing thread shared by [`PipelinedHashWriter`] and [`PipelinedHashReader`]: bytes
/// are gathered into a 256 KiB block, and full blocks are sent (bounded, at most four in
/// flight, the buffers handed back for reuse) to an `ovl-sha256` thread.
struct HashPipe {
    buf: Vec<u8>,
    to_hash: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    recycled: std::sync::mpsc::Receiver<Vec<u8>>,
    hasher: Option<std::thread::JoinHandle<Sha256>>,
}

impl HashPipe {
    fn new() -> io::Result<Self> {
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
        Ok(HashPipe {
            buf: Vec::with_capacity(PIPE_BUF),
            to_hash: Some(to_hash),
            recycled,
            hasher: Some(t),
        })
    }

    /// Append what fits of `data` to the block: the bytes taken.
    fn take(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(PIPE_BUF - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    fn full(&self) -> bool {
        self.buf.len() == PIPE_BUF
    }

    /// Send the block (when not empty) to the hashing thread.
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut fresh = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIPE_BUF));
        fresh.clear();
        let block = std::mem::replace(&mut self.buf, fresh);
        match self.to_hash.as_ref().map(|t| t.send(block)) {
            Some(Ok(())) => Ok(()),
            _ => Err(io::Error::other("the sha256 thread ended early")),
        }
    }

    /// Send the last block, wait for the thread: `sha256:<hex>`.
    fn finish(&mut self) -> io::Result<String> {
        self.send()?;
        drop(self.to_hash.take());
        let h = self
            .hasher
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| io::Error::other("the sha256 thread panicked"))?;
        Ok(hex(h.finalize().as_slice()))
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        // On an error path: stop the thread (closing its channel) and wait for it.
        drop(self.to_hash.take());
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// A buffered writer that hashes and counts what goes through it on a second thread, so the
/// sha256 overlaps the reading and writing (`tar` computes no digest: this keeps the
/// digest off the critical path). Writes reach `inner` in 256 KiB blocks, in order, on the
/// calling thread; each block is then passed to the hashing thread.
pub struct PipelinedHashWriter<W: Write> {
    inner: W,
    pipe: HashPipe,
    count: u64,
}

impl<W: Write> PipelinedHashWriter<W> {
    /// Hash what goes into `inner`, on a thread of its own.
    pub fn new(inner: W) -> io::Result<Self> {
        Ok(PipelinedHashWriter {
            inner,
            pipe: HashPipe::new()?,
            count: 0,
        })
    }

    /// Write the buffered block to `inner` and send it to the hashing thread.
    fn flush_block(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.pipe.buf)?;
        self.pipe.send()
    }

    /// Flush, wait for the digest: `(sha256:<hex>, bytes, inner)`.
    pub fn finish(mut self) -> io::Result<(String, u64, W)> {
        self.flush_block()?;
        let digest = self.pipe.finish()?;
        Ok((digest, self.count, self.inner))
    }
}

impl<W: Write> Write for PipelinedHashWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.pipe.take(data);
        self.count += n as u64;
        if self.pipe.full() {
            self.flush_block()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // A flush pushes the partial block too (hashed as a block of its own, which the
        // sha256 stream does not mind).
        self.flush_block()?;
        self.inner.flush()
    }
}

/// A reader that hashes and counts what is read through it on a second thread (the twin of
/// [`PipelinedHashWriter`]). Reads go straight to `inner`, exactly as the caller asks (no
/// read-ahead: a limit error of `inner` surfaces at the same entry as without it); the bytes
/// read are copied into blocks passed to the hashing thread.
pub struct PipelinedHashReader<R: Read> {
    inner: R,
    pipe: HashPipe,
    count: u64,
}

impl<R: Read> PipelinedHashReader<R> {
    /// Hash what is read from `inner`, on a thread of its own.
    pub fn new(inner: R) -> io::Result<Self> {
        Ok(PipelinedHashReader {
            inner,
            pipe: HashPipe::new()?,
            count: 0,
        })
    }

    /// `(sha256:<hex>, bytes)` of what was read.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        Ok((self.pipe.finish()?, self.count))
    }
}

impl<R: Read> Read for PipelinedHashReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        let mut rest = &out[..n];
        while !rest.is_empty() {
            let k = self.pipe.take(rest);
            rest = &rest[k..];
            if self.pipe.full() {
                self.pipe.send()?;
            }
        }
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks, partial blocks and flushes in the middle: the same digest as one pass.
    #[test]
    fn pipelined_digests_equal_the_plain_one() {
        let data: Vec<u8> = (0..(3 * PIPE_BUF + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let want = sha256(&data);
        let mut w = PipelinedHashWriter::new(Vec::new()).unwrap();
        for (i, chunk) in data.chunks(100_003).enumerate() {
            w.write_all(chunk).unwrap();
            if i == 2 {
                w.flush().unwrap();
            }
        }
        let (got, n, out) = w.finish().unwrap();
        assert_eq!(
            (got.as_str(), n, out.as_slice()),
            (want.as_str(), data.len() as u64, &data[..])
        );
        let mut r = PipelinedHashReader::new(&data[..]).unwrap();
        let mut back = Vec::new();
        let mut buf = [0u8; 70_001];
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            back.extend_from_slice(&buf[..k]);
        }
        assert_eq!(back, data);
        assert_eq!(r.finish().unwrap(), (want, data.len() as u64));
    }
}
