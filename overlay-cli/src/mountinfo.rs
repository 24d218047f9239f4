//! `/proc/self/mountinfo` parsing.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount ID.
    pub id: u64,
    /// Mount point.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `overlay`, `fuse.ovl-fuse`, `tmpfs`.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Superblock options (for overlay: lowerdir=..., upperdir=..., workdir=...).
    pub super_options: String,
}

impl MountInfo {
    /// The value of a superblock option, e.g. `upperdir`.
    pub fn super_option(&self, key: &str) -> Option<String> {
        split_unescaped(&self.super_options, ',')
            .into_iter()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
    }
}

/// Split on `sep` where it is not preceded by a backslash (the kernel's overlay escaping).
pub fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Undo mountinfo's octal escapes (`\040` for space, ...).
fn unescape_octal(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Parse mountinfo text.
pub fn parse(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 4 || sep < 6 {
            continue;
        }
        let Ok(id) = fields[0].parse() else { continue };
        out.push(MountInfo {
            id,
            mount_point: PathBuf::from(unescape_octal(fields[4])),
            fstype: fields[sep + 1].to_string(),
            source: unescape_octal(fields[sep + 2])
                .to_string_lossy()
                .into_owned(),
            super_options: unescape_octal(fields[sep + 3])
                .to_string_lossy()
                .into_owned(),
        });
    }
    out
}

/// The mounts of this process's mount namespace.
pub fn read() -> std::io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_line() {
        let t = "36 35 98:0 / /mnt/my\\040dir rw,noatime master:1 - overlay overlay rw,lowerdir=/a\\:b:/c,upperdir=/u,workdir=/w\n\
                 37 35 0:5 / /dev rw - devtmpfs udev rw,size=10k\n";
        let m = parse(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(m[0].super_option("upperdir").as_deref(), Some("/u"));
        assert_eq!(m[0].super_option("lowerdir").as_deref(), Some("/a\\:b:/c"));
        assert_eq!(m[1].id, 37);
    }

    #[test]
    fn split_respects_escapes() {
        assert_eq!(split_unescaped("a\\,b,c", ','), ["a\\,b", "c"]);
        assert_eq!(split_unescaped("", ','), [""]);
    }
}
