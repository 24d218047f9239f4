//! A streaming tar reader (ustar, PAX, GNU long names, GNU sparse) that bounds everything an
//! archive controls: PAX and long-name sizes, path lengths, numbers, and says which entry is
//! broken when one is.

use std::io::Read;

use super::header::{self, field, kind, BLOCK};

/// Limits the reader enforces (see [`crate::apply::Limits`] for the defaults).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest PAX extended header or GNU long name/link data, bytes.
    pub max_header_data: u64,
    /// Longest path or link target, bytes.
    pub max_path: usize,
    /// Longest single path component, bytes.
    pub max_name: usize,
    /// Most sparse map segments of one file.
    pub max_sparse_segments: usize,
}

/// The type of an entry, after PAX/GNU extensions are folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// Regular file (also contiguous files and GNU sparse files).
    File,
    /// Hard link to the entry named by `link`.
    HardLink,
    /// Symbolic link to `link`.
    Symlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Directory.
    Dir,
    /// FIFO.
    Fifo,
}

/// One entry's header, with its extensions applied.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path as stored (not yet cleaned).
    pub path: Vec<u8>,
    /// Link target (hard or symbolic links).
    pub link: Vec<u8>,
    /// The type.
    pub kind: EntryType,
    /// Mode bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds, nanoseconds.
    pub mtime: (i64, u32),
    /// Logical file size (the real size for sparse files).
    pub size: u64,
    /// Device numbers (devices only).
    pub dev: (u32, u32),
    /// Extended attributes (PAX `SCHILY.xattr.*`), in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Data segments `(logical offset, length)` for sparse files.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// Offset of this entry's first header in the tar stream.
    pub offset: u64,
    /// Bytes of data stored after the header (rounded up to a block when skipped).
    stored: u64,
}

/// A reader error: the entry name (lossy) if known, the offset, the reason.
#[derive(Debug)]
pub struct ReadError {
    /// Entry name, or `<header>`.
    pub entry: String,
    /// Offset of the header in the tar stream.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// The underlying I/O error, when there is one (decompression, a limit of the input).
    pub io: Option<std::io::Error>,
}

/// The streaming reader.
pub struct TarReader<R> {
    r: R,
    pos: u64,
    limits: ReadLimits,
    global_xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Data left of the current entry (stored bytes, then padding).
    pending: u64,
    finished: bool,
    /// The data buffer, reused across entries.
    buf: Vec<u8>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Extensions gathered from PAX and GNU headers for the next entry.
#[derive(Default)]
struct Ext {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_real_size: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_v1: bool,
    sparse_map_old: Option<Vec<u64>>,
}

impl<R: Read> TarReader<R> {
    /// Read a tar stream from `r`.
    pub fn new(r: R, limits: ReadLimits) -> Self {
        TarReader {
            r,
            pos: 0,
            limits,
            global_xattrs: Vec::new(),
            pending: 0,
            finished: false,
            buf: Vec::new(),
        }
    }

    /// Bytes of the tar stream consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.r
    }

    /// Give back the inner reader.
    pub fn into_inner(self) -> R {
        self.r
    }

    fn err(&self, entry: &[u8], offset: u64, reason: impl Into<String>) -> ReadError {
        ReadError {
            entry: if entry.is_empty() {
                "<header>".into()
            } else {
                lossy(entry)
            },
            offset,
            reason: reason.into(),
            io: None,
        }
    }

    fn io_err(&self, entry: &[u8], offset: u64, e: std::io::Error, what: &str) -> ReadError {
        let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("{what}: the archive is truncated")
        } else {
            format!("{what}: {}", crate::error::describe(&e))
        };
        ReadError {
            io: Some(e),
            ..self.err(entry, offset, reason)
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.r.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Read one block; `Ok(None)` at a clean end of input (no bytes at all).
    fn read_block(&mut self) -> std::io::Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += BLOCK as u64;
        Ok(Some(b))
    }

    fn skip(&mut self, mut n: u64, entry: &[u8], offset: u64) -> Result<(), ReadError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..k])
                .map_err(|e| self.io_err(entry, offset, e, "cannot read entry data"))?;
            n -= k as u64;
        }
        Ok(())
    }

    fn padded(n: u64) -> u64 {
        n.div_ceil(BLOCK as u64) * BLOCK as u64
    }

    /// Read the data of an extension header (PAX or GNU long name), bounded.
    fn header_data(&mut self, size: u64, offset: u64, what: &str) -> Result<Vec<u8>, ReadError> {
        if size > self.limits.max_header_data {
            return Err(self.err(
                b"",
                offset,
                format!(
                    "{what} of {size} bytes is over the limit of {} bytes",
                    self.limits.max_header_data
                ),
            ));
        }
        let mut v = vec![0u8; size as usize];
        self.read_exact(&mut v)
            .map_err(|e| self.io_err(b"", offset, e, &format!("cannot read {what}")))?;
        self.skip(Self::padded(size) - size, b"", offset)?;
        Ok(v)
    }

    /// The next entry, or `None` after the end-of-archive marker. The previous entry's data
    /// is skipped if it was not read.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ReadError> {
        if self.finished {
            return Ok(None);
        }
        let p = self.pending;
        self.skip(p, b"", self.pos)?;
        self.pending = 0;
        let mut ext = Ext::default();
        loop {
            let offset = self.pos;
            let block = match self.read_block() {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(self.err(
                        b"",
                        offset,
                        "the archive is truncated: it ends without the end-of-archive marker",
                    ))
                }
                Err(e) => return Err(self.io_err(b"", offset, e, "cannot read a header")),
            };
            if block.iter().all(|&b| b == 0) {
                // End of archive: a second zero block should follow; a lone one at the very
                // end of the input is accepted (some writers stop there).
                match self.read_block() {
                    Ok(_) => {}
                    Err(e) => {
                        return Err(self.io_err(b"", offset, e, "cannot read the end marker"))
                    }
                }
                if ext.path.is_some() || !ext.xattrs.is_empty() {
                    return Err(self.err(
                        b"",
                        offset,
                        "the archive ends after an extended header with no entry",
                    ));
                }
                self.finished = true;
                // Drain what follows (padding to the record size) so that a compressed
                // stream's trailer is checked too.
                let mut sink = [0u8; 8192];
                loop {
                    match self.r.read(&mut sink) {
                        Ok(0) => break,
                        Ok(n) => self.pos += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(self.io_err(
                                b"",
                                offset,
                                e,
                                "after the end-of-archive marker",
                            ))
                        }
                    }
                }
                return Ok(None);
            }
            let name_field = header::text(header::get(&block, field::NAME)).to_vec();
            let (sum_u, sum_s) = header::checksums(&block);
            let stored = header::parse_number(header::get(&block, field::CHKSUM));
            if stored != Some(i128::from(sum_u)) && stored != Some(i128::from(sum_s)) {
                return Err(self.err(
                    &name_field,
                    offset,
                    "bad header checksum: not a tar archive, or a corrupt one",
                ));
            }
            let num = |f: (usize, usize), what: &str| -> Result<i128, ReadError> {
                header::parse_number(header::get(&block, f))
                    .ok_or_else(|| self.err(&name_field, offset, format!("malformed {what} field")))
            };
            let size = num(field::SIZE, "size")?;
            if size < 0 || size > i128::from(u64::MAX / 2) {
                return Err(self.err(&name_field, offset, format!("impossible size {size}")));
            }
            let size = size as u64;
            let typeflag = block[field::TYPEFLAG];
            match typeflag {
                kind::PAX | kind::PAX_GLOBAL => {
                    let data = self.header_data(size, offset, "a PAX extended header")?;
                    let recs = header::parse_pax(&data).map_err(|r| {
                        self.err(&name_field, offset, format!("bad PAX header: {r}"))
                    })?;
                    if typeflag == kind::PAX_GLOBAL {
                        for (k, v) in recs {
                            if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                                self.global_xattrs.push((x.to_vec(), v));
                            }
                        }
                    } else {
                        self.pax(&mut ext, recs, &name_field, offset)?;
                    }
                    continue;
                }
                kind::GNU_LONGNAME | kind::GNU_LONGLINK => {
                    let mut data = self.header_data(size, offset, "a GNU long name")?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    data.truncate(end);
                    if typeflag == kind::GNU_LONGNAME {
                        ext.path.get_or_insert(data);
                    } else {
                        ext.link.get_or_insert(data);
                    }
                    continue;
                }
                _ => {}
            }
            // A real entry.
            let mut path = match ext.sparse_name.take().or(ext.path.take()) {
                Some(p) => p,
                None => {
                    let magic = header::get(&block, field::MAGIC);
                    let prefix =
                        if magic[..6] == header::USTAR_MAGIC[..6] && magic != header::GNU_MAGIC {
                            header::text(header::get(&block, field::PREFIX)).to_vec()
                        } else {
                            Vec::new()
                        };
                    if prefix.is_empty() {
                        name_field.clone()
                    } else {
                        let mut p = prefix;
                        p.push(b'/');
                        p.extend_from_slice(&name_field);
                        p
                    }
                }
            };
            if path.is_empty() {
                return Err(self.err(b"", offset, "an entry with an empty name"));
            }
            if path.contains(&0) {
                return Err(self.err(&path, offset, "a NUL byte in the name"));
            }
            let link = ext
                .link
                .take()
                .unwrap_or_else(|| header::text(header::get(&block, field::LINKNAME)).to_vec());
            if link.contains(&0) {
                return Err(self.err(&path, offset, "a NUL byte in the link target"));
            }
            for (what, p) in [("path", &path), ("link target", &link)] {
                if p.len() > self.limits.max_path {
                    return Err(self.err(
                        &path,
                        offset,
                        format!(
                            "{what} of {} bytes is over the limit of {} bytes",
                            p.len(),
                            self.limits.max_path
                        ),
                    ));
                }
                if let Some(c) = p
                    .split(|&b| b == b'/')
                    .find(|c| c.len() > self.limits.max_name)
                {
                    return Err(self.err(
                        &path,
                        offset,
                        format!(
                            "a {what} component of {} bytes is over the limit of {} bytes",
                            c.len(),
                            self.limits.max_name
                        ),
                    ));
                }
            }
            let entry_kind = match typeflag {
                kind::FILE | 0 | kind::CONTIGUOUS | kind::GNU_SPARSE => {
                    if path.ends_with(b"/") && typeflag == 0 {
                        EntryType::Dir
                    } else {
                        EntryType::File
                    }
                }
                kind::LINK => EntryType::HardLink,
                kind::SYMLINK => EntryType::Symlink,
                kind::CHAR => EntryType::Char,
                kind::BLOCK => EntryType::Block,
                kind::DIR => EntryType::Dir,
                kind::FIFO => EntryType::Fifo,
                other => {
                    return Err(self.err(
                        &path,
                        offset,
                        format!("unsupported entry type {:?}", other as char),
                    ))
                }
            };
            let mode = num(field::MODE, "mode")?;
            let uid = match ext.uid {
                Some(u) => u,
                None => u32::try_from(num(field::UID, "uid")?)
                    .map_err(|_| self.err(&path, offset, "uid out of range"))?,
            };
            let gid = match ext.gid {
                Some(g) => g,
                None => u32::try_from(num(field::GID, "gid")?)
                    .map_err(|_| self.err(&path, offset, "gid out of range"))?,
            };
            let mtime = match ext.mtime {
                Some(t) => t,
                None => {
                    let t = num(field::MTIME, "mtime")?;
                    (
                        i64::try_from(t)
                            .map_err(|_| self.err(&path, offset, "mtime out of range"))?,
                        0,
                    )
                }
            };
            let dev = if matches!(entry_kind, EntryType::Char | EntryType::Block) {
                let ma = u32::try_from(num(field::DEVMAJOR, "device major")?)
                    .map_err(|_| self.err(&path, offset, "device major out of range"))?;
                let mi = u32::try_from(num(field::DEVMINOR, "device minor")?)
                    .map_err(|_| self.err(&path, offset, "device minor out of range"))?;
                (ma, mi)
            } else {
                (0, 0)
            };
            // Links, devices, FIFOs and directories carry no data: a size there is data to
            // skip.
            let stored_size = ext.size.unwrap_or(size);
            let mut logical = stored_size;
            let mut sparse = None;
            let mut stored = stored_size;
            if typeflag == kind::GNU_SPARSE {
                let (segs, real) = self.gnu_sparse_map(&block, &path, offset)?;
                logical = real;
                sparse = Some(segs);
            } else if ext.sparse_v1 {
                // PAX sparse 1.0: the map is text at the start of the data.
                let (segs, used) = self.pax_sparse_map(&path, offset, stored_size)?;
                stored = stored_size - used;
                logical = ext.sparse_real_size.unwrap_or(stored);
                sparse = Some(segs);
            } else if let Some(m) = ext.sparse_map_old.take() {
                if m.len() % 2 != 0 {
                    return Err(self.err(&path, offset, "odd GNU.sparse.map"));
                }
                sparse = Some(m.chunks(2).map(|c| (c[0], c[1])).collect());
                logical = ext.sparse_real_size.unwrap_or(stored);
            }
            if let Some(segs) = &sparse {
                let mut total = 0u64;
                let mut end = 0u64;
                for &(o, l) in segs {
                    if o < end {
                        return Err(self.err(
                            &path,
                            offset,
                            "sparse map segments overlap or are out of order",
                        ));
                    }
                    end = o
                        .checked_add(l)
                        .ok_or_else(|| self.err(&path, offset, "sparse map overflows"))?;
                    total += l;
                }
                if end > logical || total != stored {
                    return Err(self.err(
                        &path,
                        offset,
                        format!("sparse map ({total} bytes of data, up to {end}) does not fit the entry ({stored} bytes stored, {logical} long)"),
                    ));
                }
            }
            if entry_kind == EntryType::Dir {
                while path.len() > 1 && path.ends_with(b"/") {
                    path.pop();
                }
            }
            let mut xattrs = self.global_xattrs.clone();
            xattrs.append(&mut ext.xattrs);
            self.pending = Self::padded(stored);
            return Ok(Some(Entry {
                path,
                link,
                kind: entry_kind,
                mode: (mode & 0o7777) as u32,
                uid,
                gid,
                mtime,
                size: if entry_kind == EntryType::File {
                    logical
                } else {
                    0
                },
                dev,
                xattrs,
                sparse,
                offset,
                stored,
            }));
        }
    }

    fn pax(
        &self,
        ext: &mut Ext,
        recs: Vec<(Vec<u8>, Vec<u8>)>,
        name: &[u8],
        offset: u64,
    ) -> Result<(), ReadError> {
        let bad = |k: &[u8]| self.err(name, offset, format!("bad PAX value for {}", lossy(k)));
        let int = |k: &[u8], v: &[u8]| -> Result<u64, ReadError> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| bad(k))
        };
        for (k, v) in recs {
            match k.as_slice() {
                b"path" => ext.path = Some(v),
                b"linkpath" => ext.link = Some(v),
                b"size" => ext.size = Some(int(&k, &v)?),
                b"uid" => ext.uid = Some(u32::try_from(int(&k, &v)?).map_err(|_| bad(&k))?),
                b"gid" => ext.gid = Some(u32::try_from(int(&k, &v)?).map_err(|_| bad(&k))?),
                b"mtime" => ext.mtime = Some(parse_pax_time(&v).ok_or_else(|| bad(&k))?),
                b"GNU.sparse.major" => ext.sparse_v1 = v == b"1",
                b"GNU.sparse.name" => ext.sparse_name = Some(v),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    ext.sparse_real_size = Some(int(&k, &v)?)
                }
                b"GNU.sparse.map" => {
                    let mut m = Vec::new();
                    for n in v.split(|&b| b == b',') {
                        m.push(int(&k, n)?);
                        if m.len() > 2 * self.limits.max_sparse_segments {
                            return Err(self.err(name, offset, "too many sparse segments"));
                        }
                    }
                    ext.sparse_map_old = Some(m);
                }
                _ => {
                    if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                        if x.is_empty() {
                            return Err(bad(&k));
                        }
                        ext.xattrs.push((x.to_vec(), v));
                    }
                    // Other keys (atime, ctime, uname, gname, comments, vendor keys) are
                    // ignored, as POSIX allows.
                }
            }
        }
        Ok(())
    }

    /// The sparse map of an old-GNU sparse header (and its extension blocks).
    fn gnu_sparse_map(
        &mut self,
        block: &[u8; BLOCK],
        path: &[u8],
        offset: u64,
    ) -> Result<(Vec<(u64, u64)>, u64), ReadError> {
        let mut segs = Vec::new();
        let pair = |b: &[u8], at: usize| -> Option<Option<(u64, u64)>> {
            let o = header::parse_number(&b[at..at + 12])?;
            let l = header::parse_number(&b[at + 12..at + 24])?;
            if b[at..at + 24].iter().all(|&x| x == 0) {
                return Some(None);
            }
            Some(Some((u64::try_from(o).ok()?, u64::try_from(l).ok()?)))
        };
        for i in 0..4 {
            match pair(block, field::GNU_SPARSE + i * 24) {
                None => return Err(self.err(path, offset, "malformed GNU sparse map")),
                Some(Some(s)) => segs.push(s),
                Some(None) => break,
            }
        }
        let real = header::parse_number(header::get(block, field::GNU_REALSIZE))
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| self.err(path, offset, "malformed GNU sparse real size"))?;
        let mut extended = block[field::GNU_ISEXTENDED] != 0;
        while extended {
            let b = match self.read_block() {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return Err(self.err(path, offset, "the archive is truncated in a sparse map"))
                }
                Err(e) => return Err(self.io_err(path, offset, e, "cannot read a sparse map")),
            };
            for i in 0..21 {
                match pair(&b, i * 24) {
                    None => return Err(self.err(path, offset, "malformed GNU sparse map")),
                    Some(Some(s)) => segs.push(s),
                    Some(None) => break,
                }
            }
            if segs.len() > self.limits.max_sparse_segments {
                return Err(self.err(path, offset, "too many sparse segments"));
            }
            extended = b[504] != 0;
        }
        Ok((segs, real))
    }

    /// The PAX 1.0 sparse map: decimal numbers, one per line, at the start of the data and
    /// padded to a block. Returns the map and the bytes it used.
    fn pax_sparse_map(
        &mut self,
        path: &[u8],
        offset: u64,
        stored: u64,
    ) -> Result<(Vec<(u64, u64)>, u64), ReadError> {
        let mut used = 0u64;
        let mut text: Vec<u8> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<u64> = None;
        loop {
            if want.is_some_and(|w| numbers.len() as u64 == 1 + 2 * w) {
                break;
            }
            if !text.contains(&b'\n') {
                if used + BLOCK as u64 > stored {
                    return Err(self.err(
                        path,
                        offset,
                        "PAX sparse map runs past the entry's data",
                    ));
                }
                let b = match self.read_block() {
                    Ok(Some(b)) => b,
                    _ => {
                        return Err(self.err(
                            path,
                            offset,
                            "the archive is truncated in a sparse map",
                        ))
                    }
                };
                used += BLOCK as u64;
                text.extend_from_slice(&b);
                continue;
            }
            let nl = text.iter().position(|&b| b == b'\n').unwrap();
            let n: u64 = std::str::from_utf8(&text[..nl])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.err(path, offset, "malformed PAX sparse map"))?;
            text.drain(..=nl);
            if want.is_none() {
                if n as usize > self.limits.max_sparse_segments {
                    return Err(self.err(path, offset, "too many sparse segments"));
                }
                want = Some(n);
            }
            numbers.push(n);
        }
        let segs = numbers[1..].chunks(2).map(|c| (c[0], c[1])).collect();
        Ok((segs, used))
    }

    /// Read the current entry's data: `sink(logical offset, bytes)` for each piece, in order.
    /// Sparse holes are not passed to the sink.
    pub fn read_data(
        &mut self,
        entry: &Entry,
        mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), ReadError> {
        let segs: Vec<(u64, u64)> = match &entry.sparse {
            Some(s) => s.clone(),
            None => vec![(0, entry.stored)],
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(128 * 1024, 0);
        let r = self.copy_segments(entry, &segs, &mut buf, &mut sink);
        self.buf = buf;
        r
    }

    fn copy_segments(
        &mut self,
        entry: &Entry,
        segs: &[(u64, u64)],
        buf: &mut [u8],
        sink: &mut impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), ReadError> {
        for &(mut off, mut len) in segs {
            while len > 0 {
                let k = len.min(buf.len() as u64) as usize;
                self.read_exact(&mut buf[..k]).map_err(|e| {
                    self.io_err(&entry.path, entry.offset, e, "cannot read entry data")
                })?;
                self.pending -= k as u64;
                sink(off, &buf[..k]).map_err(|e| ReadError {
                    reason: format!("cannot write its data: {}", crate::error::describe(&e)),
                    io: Some(e),
                    ..self.err(&entry.path, entry.offset, "")
                })?;
                off += k as u64;
                len -= k as u64;
            }
        }
        Ok(())
    }
}

/// A PAX time `SECONDS[.FRACTION]`, possibly negative.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = sec.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some((secs, ns))
}
