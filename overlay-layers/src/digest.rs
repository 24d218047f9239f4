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
