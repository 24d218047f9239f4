//! Layer compression: none, gzip or zstd, detected from the first bytes when reading, with
//! a guard against decompression bombs.

use std::io::{self, Read, Write};

use serde::Serialize;

/// How a layer tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip (`...tar+gzip`), the most widely accepted.
    #[default]
    Gzip,
    /// zstd (`...tar+zstd`).
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// `none`, `gzip` or `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Detect from the first bytes of a stream. `Err` names a compression that is recognised
    /// but not supported.
    pub fn detect(head: &[u8]) -> Result<Compression, &'static str> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if head.starts_with(b"BZh") {
            Err("bzip2")
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Err("xz")
        } else {
            Ok(Compression::None)
        }
    }
}

/// Counts the bytes read through it.
pub struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R> Counting<R> {
    /// Count reads of `inner` into `count`.
    pub fn new(inner: R, count: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Counting { inner, count }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Limits on what decompression may produce.
#[derive(Debug, Clone, Copy)]
pub struct BombLimits {
    /// Most bytes of tar stream.
    pub max_bytes: u64,
    /// Most tar bytes per compressed byte, checked once `ratio_after` bytes are out.
    pub max_ratio: u64,
    /// See `max_ratio`.
    pub ratio_after: u64,
}

/// The decompressed tar stream, bounded by [`BombLimits`].
pub struct Bounded<R> {
    inner: R,
    compressed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    out: u64,
    limits: BombLimits,
    check_ratio: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        if self.out > self.limits.max_bytes {
            return Err(io::Error::other(format!(
                "the tar stream is larger than the limit of {} bytes",
                self.limits.max_bytes
            )));
        }
        if self.check_ratio && self.out > self.limits.ratio_after {
            let c = self
                .compressed
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1);
            if self.out / c > self.limits.max_ratio {
                return Err(io::Error::other(format!(
                    "decompression bomb: {} bytes out of {c} compressed (over {}:1)",
                    self.out, self.limits.max_ratio
                )));
            }
        }
        Ok(n)
    }
}

/// Open a possibly compressed stream: detect the compression, decompress, bound the output.
pub fn open_stream<'a, R: Read + 'a>(
    mut r: R,
    limits: BombLimits,
) -> io::Result<(Compression, Bounded<Box<dyn Read + 'a>>)> {
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = head[..got].to_vec();
    let kind = Compression::detect(&head).map_err(|c| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{c}-compressed: not an OCI layer compression (gzip, zstd or none)"),
        )
    })?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let raw = Counting::new(io::Cursor::new(head).chain(r), count.clone());
    let inner: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(128 * 1024, raw),
        )),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
    };
    Ok((
        kind,
        Bounded {
            inner,
            compressed: count,
            out: 0,
            limits,
            check_ratio: kind != Compression::None,
        },
    ))
}

/// A compressing writer.
pub enum Encoder<W: Write> {
    /// No compression.
    None(W),
    /// gzip.
    Gzip(flate2::write::GzEncoder<W>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Compress into `w` (gzip at the default level 6, zstd at level 3).
    pub fn new(w: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(w),
            // The gzip header carries no name and mtime 0: the same tar gives the same bytes.
            Compression::Gzip => {
                Encoder::Gzip(flate2::GzBuilder::new().write(w, flate2::Compression::default()))
            }
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    /// Finish the compressed stream and return the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}
