//! A tar writer producing POSIX ustar headers, with a PAX extended header in front of an
//! entry when it needs one (long names, xattrs, large numbers, sub-second times), and old-GNU
//! sparse entries for files with holes. Byte-for-byte deterministic for the same input.

use std::io::{self, Write};

use super::header::{self, field, kind, BLOCK};

/// What one entry is.
#[derive(Debug, Clone)]
pub enum Body {
    /// A regular file of `size` bytes; data follows with [`TarWriter::data`].
    File {
        /// Logical size.
        size: u64,
        /// Data segments `(offset, length)` when the file is written sparse.
        sparse: Option<Vec<(u64, u64)>>,
    },
    /// A hard link to an earlier entry's path.
    HardLink(Vec<u8>),
    /// A symbolic link.
    Symlink(Vec<u8>),
    /// A directory.
    Dir,
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A FIFO.
    Fifo,
}

/// An entry's metadata.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Path inside the archive (no leading `/`; directories without a trailing `/`).
    pub path: Vec<u8>,
    /// Permission bits with set-ID and sticky bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Owner name (empty: none).
    pub uname: Vec<u8>,
    /// Group name.
    pub gname: Vec<u8>,
    /// Modification time.
    pub mtime: (i64, u32),
    /// Extended attributes as `SCHILY.xattr.*` PAX records, in this order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The writer. Call [`TarWriter::finish`] at the end (the end-of-archive marker).
pub struct TarWriter<W: Write> {
    w: W,
    /// Data still owed by the current file entry.
    owed: u64,
    /// Padding after the current entry's data.
    pad: u64,
}

fn fits_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((b"", path));
    }
    // Split at a '/' so that prefix <= 155 and name <= 100.
    let mut best = None;
    for (i, &b) in path.iter().enumerate() {
        if b == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0 && path.len() - i - 1 > 1 {
            best = Some(i);
            break;
        }
    }
    best.map(|i| (&path[..i], &path[i + 1..]))
}

impl<W: Write> TarWriter<W> {
    /// Write a tar stream into `w`.
    pub fn new(w: W) -> Self {
        TarWriter { w, owed: 0, pad: 0 }
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    /// Start an entry. For a file, its data must follow with [`TarWriter::data`] (exactly the
    /// stored bytes: the file's size, or the sum of the sparse segments).
    pub fn entry(&mut self, meta: &Meta, body: &Body) -> io::Result<()> {
        assert_eq!(self.owed, 0, "previous entry's data not written");
        let mut pax = Vec::new();
        let mut path = meta.path.clone();
        if matches!(body, Body::Dir) {
            path.push(b'/');
        }
        let split = fits_ustar(&path).map(|(p, n)| (p.to_vec(), n.to_vec()));
        let path_in_header = split.is_some();
        let (prefix, name) = split.unwrap_or_default();
        if !path_in_header {
            header::pax_record(&mut pax, b"path", &path);
        }
        let link: &[u8] = match body {
            Body::HardLink(l) | Body::Symlink(l) => l,
            _ => b"",
        };
        if link.len() > 100 {
            header::pax_record(&mut pax, b"linkpath", link);
        }
        let (stored, real) = match body {
            Body::File { size, sparse: None } => (*size, *size),
            Body::File {
                size,
                sparse: Some(s),
            } => (s.iter().map(|x| x.1).sum(), *size),
            _ => (0, 0),
        };
        let mut b = [0u8; BLOCK];
        let short_name: &[u8] = if path_in_header {
            &name
        } else {
            &path[path.len().saturating_sub(100)..]
        };
        header::get_mut(&mut b, field::NAME)[..short_name.len()].copy_from_slice(short_name);
        if path_in_header {
            header::get_mut(&mut b, field::PREFIX)[..prefix.len()].copy_from_slice(&prefix);
        }
        header::put_number(
            header::get_mut(&mut b, field::MODE),
            i128::from(meta.mode & 0o7777),
        );
        if !header::put_number(header::get_mut(&mut b, field::UID), i128::from(meta.uid)) {
            header::pax_record(&mut pax, b"uid", meta.uid.to_string().as_bytes());
        }
        if !header::put_number(header::get_mut(&mut b, field::GID), i128::from(meta.gid)) {
            header::pax_record(&mut pax, b"gid", meta.gid.to_string().as_bytes());
        }
        if stored >= 0o77777777777 {
            header::pax_record(&mut pax, b"size", stored.to_string().as_bytes());
        }
        header::put_number(header::get_mut(&mut b, field::SIZE), i128::from(stored));
        let (sec, nsec) = meta.mtime;
        if !(0..0o77777777777).contains(&sec) || nsec != 0 {
            let t = if nsec != 0 {
                if sec < 0 {
                    // -1.5 s is written as "-1.5": seconds toward zero, then the fraction.
                    let (s, n) = if nsec > 0 {
                        (sec + 1, 1_000_000_000 - nsec)
                    } else {
                        (sec, 0)
                    };
                    format!("-{}.{:09}", s.unsigned_abs(), n)
                } else {
                    format!("{sec}.{nsec:09}")
                }
            } else {
                sec.to_string()
            };
            let t = if t.contains('.') {
                t.trim_end_matches('0').to_string()
            } else {
                t
            };
            header::pax_record(&mut pax, b"mtime", t.as_bytes());
        }
        header::put_number(
            header::get_mut(&mut b, field::MTIME),
            i128::from(sec.max(0)),
        );
        let typeflag = match body {
            Body::File {
                sparse: Some(_), ..
            } => kind::GNU_SPARSE,
            Body::File { .. } => kind::FILE,
            Body::HardLink(_) => kind::LINK,
            Body::Symlink(_) => kind::SYMLINK,
            Body::Dir => kind::DIR,
            Body::Char(..) => kind::CHAR,
            Body::Block(..) => kind::BLOCK,
            Body::Fifo => kind::FIFO,
        };
        b[field::TYPEFLAG] = typeflag;
        let l = link.len().min(100);
        header::get_mut(&mut b, field::LINKNAME)[..l].copy_from_slice(&link[..l]);
        for (f, v) in [(field::UNAME, &meta.uname), (field::GNAME, &meta.gname)] {
            let n = v.len().min(31);
            header::get_mut(&mut b, f)[..n].copy_from_slice(&v[..n]);
        }
        if let Body::Char(ma, mi) | Body::Block(ma, mi) = body {
            header::put_number(header::get_mut(&mut b, field::DEVMAJOR), i128::from(*ma));
            header::put_number(header::get_mut(&mut b, field::DEVMINOR), i128::from(*mi));
        }
        let mut ext_blocks: Vec<[u8; BLOCK]> = Vec::new();
        if let Body::File {
            sparse: Some(segs), ..
        } = body
        {
            // Old GNU sparse: GNU magic, map in the header, the rest in extension blocks.
            header::get_mut(&mut b, field::MAGIC).copy_from_slice(header::GNU_MAGIC);
            // The prefix field is where GNU keeps atime/ctime/the sparse map: no prefix.
            if !prefix.is_empty() {
                header::get_mut(&mut b, field::PREFIX).fill(0);
                header::get_mut(&mut b, field::NAME).fill(0);
                let n = path.len().min(100);
                header::get_mut(&mut b, field::NAME)[..n].copy_from_slice(&path[path.len() - n..]);
                if !pax.windows(5).any(|w| w == b"path=") {
                    header::pax_record(&mut pax, b"path", &path);
                }
            }
            let put_pair = |blk: &mut [u8; BLOCK], at: usize, (o, l): (u64, u64)| {
                header::put_number(&mut blk[at..at + 12], i128::from(o));
                header::put_number(&mut blk[at + 12..at + 24], i128::from(l));
            };
            let mut segs = segs.clone();
            if segs.last().is_none_or(|&(o, l)| o + l < real) {
                // A file ending in a hole: an empty segment at its end carries the size
                // (as GNU tar writes it; readers extend the file to it).
                segs.push((real, 0));
            }
            for (i, s) in segs.iter().take(4).enumerate() {
                put_pair(&mut b, field::GNU_SPARSE + i * 24, *s);
            }
            header::put_number(
                header::get_mut(&mut b, field::GNU_REALSIZE),
                i128::from(real),
            );
            let rest = if segs.len() > 4 { &segs[4..] } else { &[][..] };
            for chunk in rest.chunks(21) {
                let mut e = [0u8; BLOCK];
                for (i, s) in chunk.iter().enumerate() {
                    put_pair(&mut e, i * 24, *s);
                }
                ext_blocks.push(e);
            }
            if !ext_blocks.is_empty() {
                b[field::GNU_ISEXTENDED] = 1;
                let n = ext_blocks.len();
                for e in ext_blocks.iter_mut().take(n - 1) {
                    e[504] = 1;
                }
            }
        } else {
            header::get_mut(&mut b, field::MAGIC).copy_from_slice(header::USTAR_MAGIC);
        }
        for (k, v) in &meta.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            header::pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            self.pax_header(&path, meta.mtime.0, &pax)?;
        }
        header::seal(&mut b);
        self.w.write_all(&b)?;
        for e in &ext_blocks {
            self.w.write_all(e)?;
        }
        self.owed = stored;
        self.pad = stored.div_ceil(BLOCK as u64) * BLOCK as u64 - stored;
        if self.owed == 0 {
            self.end_data()?;
        }
        Ok(())
    }

    fn pax_header(&mut self, path: &[u8], mtime: i64, data: &[u8]) -> io::Result<()> {
        let mut b = [0u8; BLOCK];
        // Like GNU tar: "PaxHeaders/" + the last part of the name, cut to fit.
        let base = path
            .trim_ascii_end()
            .rsplit(|&c| c == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"");
        let mut n = b"PaxHeaders/".to_vec();
        n.extend_from_slice(&base[..base.len().min(100 - n.len())]);
        header::get_mut(&mut b, field::NAME)[..n.len()].copy_from_slice(&n);
        header::put_number(header::get_mut(&mut b, field::MODE), 0o644);
        header::put_number(header::get_mut(&mut b, field::UID), 0);
        header::put_number(header::get_mut(&mut b, field::GID), 0);
        header::put_number(header::get_mut(&mut b, field::SIZE), data.len() as i128);
        header::put_number(
            header::get_mut(&mut b, field::MTIME),
            i128::from(mtime.max(0)),
        );
        b[field::TYPEFLAG] = kind::PAX;
        header::get_mut(&mut b, field::MAGIC).copy_from_slice(header::USTAR_MAGIC);
        header::seal(&mut b);
        self.w.write_all(&b)?;
        self.w.write_all(data)?;
        let pad = data.len().div_ceil(BLOCK) * BLOCK - data.len();
        self.w.write_all(&[0u8; BLOCK][..pad])
    }

    /// Write data of the current file entry.
    pub fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.len() as u64 > self.owed {
            return Err(io::Error::other("more data than the entry's size"));
        }
        self.w.write_all(buf)?;
        self.owed -= buf.len() as u64;
        if self.owed == 0 {
            self.end_data()?;
        }
        Ok(())
    }

    /// Bytes still owed by the current entry.
    pub fn owed(&self) -> u64 {
        self.owed
    }

    fn end_data(&mut self) -> io::Result<()> {
        let p = self.pad as usize;
        self.pad = 0;
        self.w.write_all(&[0u8; BLOCK][..p])
    }

    /// Write the end-of-archive marker (two zero blocks) and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.owed != 0 {
            return Err(io::Error::other("the last entry's data is incomplete"));
        }
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        self.w.flush()?;
        Ok(self.w)
    }
}
