//! The 512-byte tar header block: field offsets, numbers (octal and base-256), checksums and
//! PAX records. Shared by the reader and the writer.

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Entry type flags.
pub mod kind {
    /// Regular file (`'0'`; `'\0'` and `'7'` read as regular files too).
    pub const FILE: u8 = b'0';
    /// Hard link to an earlier entry.
    pub const LINK: u8 = b'1';
    /// Symbolic link.
    pub const SYMLINK: u8 = b'2';
    /// Character device.
    pub const CHAR: u8 = b'3';
    /// Block device.
    pub const BLOCK: u8 = b'4';
    /// Directory.
    pub const DIR: u8 = b'5';
    /// FIFO.
    pub const FIFO: u8 = b'6';
    /// Contiguous file (read as a regular file).
    pub const CONTIGUOUS: u8 = b'7';
    /// PAX extended header for the next entry.
    pub const PAX: u8 = b'x';
    /// PAX global extended header.
    pub const PAX_GLOBAL: u8 = b'g';
    /// GNU long name for the next entry.
    pub const GNU_LONGNAME: u8 = b'L';
    /// GNU long link name for the next entry.
    pub const GNU_LONGLINK: u8 = b'K';
    /// GNU (old format) sparse file.
    pub const GNU_SPARSE: u8 = b'S';
}

/// Field offsets and lengths inside a header block: `(offset, length)`.
pub mod field {
    /// File name (ustar: the last part of the path).
    pub const NAME: (usize, usize) = (0, 100);
    /// Mode bits, octal.
    pub const MODE: (usize, usize) = (100, 8);
    /// Owner uid.
    pub const UID: (usize, usize) = (108, 8);
    /// Owner gid.
    pub const GID: (usize, usize) = (116, 8);
    /// Size of the stored data.
    pub const SIZE: (usize, usize) = (124, 12);
    /// Modification time, seconds.
    pub const MTIME: (usize, usize) = (136, 12);
    /// Header checksum.
    pub const CHKSUM: (usize, usize) = (148, 8);
    /// Entry type.
    pub const TYPEFLAG: usize = 156;
    /// Link target.
    pub const LINKNAME: (usize, usize) = (157, 100);
    /// `ustar\0` + `00` (POSIX) or `ustar  \0` (GNU).
    pub const MAGIC: (usize, usize) = (257, 8);
    /// Owner user name.
    pub const UNAME: (usize, usize) = (265, 32);
    /// Owner group name.
    pub const GNAME: (usize, usize) = (297, 32);
    /// Device major.
    pub const DEVMAJOR: (usize, usize) = (329, 8);
    /// Device minor.
    pub const DEVMINOR: (usize, usize) = (337, 8);
    /// ustar path prefix.
    pub const PREFIX: (usize, usize) = (345, 155);
    /// GNU sparse map in the main header: 4 (offset, numbytes) pairs of 12 bytes each.
    pub const GNU_SPARSE: usize = 386;
    /// GNU: more sparse map blocks follow.
    pub const GNU_ISEXTENDED: usize = 482;
    /// GNU: the real size of a sparse file.
    pub const GNU_REALSIZE: (usize, usize) = (483, 12);
}

/// POSIX ustar magic and version.
pub const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";
/// GNU magic and version.
pub const GNU_MAGIC: &[u8; 8] = b"ustar  \x00";

/// Parse a numeric field: octal text (spaces/NULs around it) or GNU base-256 (first byte has
/// the high bit set; 0xff marks a negative number). `None` when malformed.
pub fn parse_number(f: &[u8]) -> Option<i128> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            // Base-256, two's complement over the field.
            let negative = first == 0xff;
            let mut v: i128 = if negative { -1 } else { 0 };
            for (i, &b) in f.iter().enumerate() {
                let b = if i == 0 && !negative { b & 0x7f } else { b };
                v = v.checked_mul(256)?;
                v = if negative {
                    v | i128::from(b)
                } else {
                    v.checked_add(i128::from(b))?
                };
            }
            if f.len() > 15 {
                return None;
            }
            return Some(v);
        }
    }
    let text: &[u8] = {
        let start = f
            .iter()
            .position(|&b| b != b' ' && b != 0)
            .unwrap_or(f.len());
        let rest = &f[start..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(rest.len());
        if rest[end..].iter().any(|&b| b != b' ' && b != 0) {
            return None;
        }
        &rest[..end]
    };
    if text.is_empty() {
        return Some(0);
    }
    let mut v: i128 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(v)
}

/// Write `v` into a numeric field: octal when it fits (with a terminating NUL), base-256
/// otherwise. Returns false when it fits in neither (the caller then needs a PAX record).
pub fn put_number(f: &mut [u8], v: i128) -> bool {
    let digits = f.len() - 1;
    if v >= 0 && v < 8i128.pow(digits as u32) {
        let s = format!("{v:0digits$o}");
        f[..digits].copy_from_slice(s.as_bytes());
        f[digits] = 0;
        return true;
    }
    // Base-256 (GNU), for large or negative values.
    let bytes = v.to_be_bytes();
    let n = f.len();
    if n > bytes.len() {
        return false;
    }
    let lead = &bytes[..bytes.len() - n];
    let fill = if v < 0 { 0xff } else { 0 };
    if lead.iter().any(|&b| b != fill) {
        return false;
    }
    f.copy_from_slice(&bytes[bytes.len() - n..]);
    if v >= 0 {
        if f[0] & 0x80 != 0 {
            return false;
        }
        f[0] |= 0x80;
    }
    true
}

/// The header checksum: the sum of all bytes with the checksum field read as spaces.
/// Returns (unsigned, signed) sums: old writers used signed chars.
pub fn checksums(block: &[u8; BLOCK]) -> (i64, i64) {
    let (mut u, mut s) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        u += i64::from(b);
        s += i64::from(b as i8);
    }
    (u, s)
}

/// Store the checksum of `block` in its checksum field.
pub fn seal(block: &mut [u8; BLOCK]) {
    let (sum, _) = checksums(block);
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

/// A byte string field: the bytes up to the first NUL.
pub fn text(f: &[u8]) -> &[u8] {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    &f[..end]
}

/// Slice of a field of `block`.
pub fn get(block: &[u8; BLOCK], (off, len): (usize, usize)) -> &[u8] {
    &block[off..off + len]
}

/// Mutable slice of a field of `block`.
pub fn get_mut(block: &mut [u8; BLOCK], (off, len): (usize, usize)) -> &mut [u8] {
    &mut block[off..off + len]
}

/// One PAX record `LEN KEY=VALUE\n`, with LEN counting itself.
pub fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // ' ' key '=' value '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One PAX record: (key, value).
pub type Record = (Vec<u8>, Vec<u8>);

/// Split PAX data into (key, value) records. `Err` says what is malformed.
pub fn parse_pax(mut data: &[u8]) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if len <= sp + 1 || len > data.len() {
            return Err(format!(
                "PAX record length {len} is beyond the header's data ({} bytes left)",
                data.len()
            ));
        }
        let rec = &data[sp + 1..len];
        let rec = rec
            .strip_suffix(b"\n")
            .ok_or("PAX record does not end with a newline")?;
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for v in [
            0i128,
            1,
            0o777,
            8_589_934_591,
            8_589_934_592,
            1 << 40,
            -1,
            -1_000_000,
        ] {
            let mut f = [0u8; 12];
            assert!(put_number(&mut f, v), "{v}");
            assert_eq!(parse_number(&f), Some(v), "{v} {f:?}");
        }
        let mut f = [0u8; 8];
        assert!(put_number(&mut f, 2_097_151));
        assert_eq!(parse_number(&f), Some(2_097_151));
        assert!(put_number(&mut f, 1 << 40));
        assert_eq!(parse_number(&f), Some(1 << 40));
        assert_eq!(parse_number(b"  0644 \0"), Some(0o644));
        assert_eq!(parse_number(b"0x12\0\0\0\0"), None);
        assert_eq!(parse_number(b"12 34\0\0\0"), None);
    }

    #[test]
    fn pax_records() {
        let mut d = Vec::new();
        pax_record(&mut d, b"path", b"a/b");
        pax_record(&mut d, b"SCHILY.xattr.user.x", &[0, 1, b'\n']);
        let long = vec![b'x'; 95];
        pax_record(&mut d, b"linkpath", &long);
        let r = parse_pax(&d).unwrap();
        assert_eq!(r[0], (b"path".to_vec(), b"a/b".to_vec()));
        assert_eq!(r[1].1, vec![0, 1, b'\n']);
        assert_eq!(r[2].1, long);
        assert!(parse_pax(b"99999 path=x\n").is_err());
        assert!(parse_pax(b"5 a=b").is_err());
    }
}
