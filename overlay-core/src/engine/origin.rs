//! `overlay.origin` in the kernel's binary format (`struct ovl_fb`) and `overlay.impure`.
//!
//! Layout on disk: `version (0)`, `magic (0xfb)`, `len` (header + fid), `flags`, `fid type`,
//! 16-byte UUID of the lower filesystem, then the file handle (`name_to_handle_at`). With it a
//! kernel mount of our upper layer reports the same `st_ino` for copied-up objects as we do.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::XattrFlags;

use super::layers::{proc_path, read_xattr, LayerRef};
use super::real::RealObj;
use super::Overlay;

const OVL_FH_VERSION: u8 = 0;
const OVL_FH_MAGIC: u8 = 0xfb;
const OVL_FB_HEADER: usize = 21;
/// `OVL_FH_FLAG_BIG_ENDIAN`.
const OVL_FH_FLAG_BIG_ENDIAN: u8 = 1 << 0;
/// `OVL_FH_FLAG_ANY_ENDIAN`.
const OVL_FH_FLAG_ANY_ENDIAN: u8 = 1 << 1;
/// `OVL_FH_FLAG_PATH_UPPER`.
const OVL_FH_FLAG_PATH_UPPER: u8 = 1 << 2;

/// Encode an origin file handle.
pub(crate) fn encode(uuid: &[u8; 16], fh_type: i32, handle: &[u8]) -> Option<Vec<u8>> {
    let len = OVL_FB_HEADER + handle.len();
    if len > u8::MAX as usize || !(0..=255).contains(&fh_type) {
        return None;
    }
    let flags = if cfg!(target_endian = "big") {
        OVL_FH_FLAG_BIG_ENDIAN
    } else {
        0
    };
    let mut v = vec![
        OVL_FH_VERSION,
        OVL_FH_MAGIC,
        len as u8,
        flags,
        fh_type as u8,
    ];
    v.extend_from_slice(uuid);
    v.extend_from_slice(handle);
    Some(v)
}

/// Encode the file handle of an upper object (`OVL_FH_FLAG_PATH_UPPER`), as the kernel's
/// `overlay.upper` of the index directory.
pub(crate) fn encode_upper(uuid: &[u8; 16], fh_type: i32, handle: &[u8]) -> Option<Vec<u8>> {
    let mut v = encode(uuid, fh_type, handle)?;
    v[3] |= OVL_FH_FLAG_PATH_UPPER;
    Some(v)
}

/// A decoded origin: (uuid, fid type, handle).
pub(crate) type Origin<'a> = ([u8; 16], i32, &'a [u8]);

/// Decode an origin file handle (None when malformed, foreign-endian or an upper handle).
pub(crate) fn decode(b: &[u8]) -> Option<Origin<'_>> {
    if b.len() < OVL_FB_HEADER || b[0] != OVL_FH_VERSION || b[1] != OVL_FH_MAGIC {
        return None;
    }
    if b[2] as usize != b.len() || b[3] & OVL_FH_FLAG_PATH_UPPER != 0 {
        return None;
    }
    let be = b[3] & OVL_FH_FLAG_BIG_ENDIAN != 0;
    if b[3] & OVL_FH_FLAG_ANY_ENDIAN == 0 && be != cfg!(target_endian = "big") {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[5..21]);
    Some((uuid, b[4] as i32, &b[21..]))
}

impl Overlay {
    /// Write `overlay.origin` on the staged copy `dst` for lower object `src` (best effort,
    /// as the kernel when the lower filesystem cannot encode file handles).
    pub(crate) fn set_origin(&self, src: &RealObj, dst: &RealObj) {
        let Some(name) = &src.name else { return };
        let LayerRef::Lower(i) = src.layer else {
            return;
        };
        let Ok((ty, handle)) = crate::sys::name_to_handle(src.dir.as_fd(), name) else {
            return;
        };
        let uuid = self.layers.lowers[i as usize].uuid;
        if let Some(v) = encode(&uuid, ty, &handle) {
            let _ = dst.setxattr(OsStr::new(self.layers.ns.origin()), &v, XattrFlags::empty());
        }
    }

    /// Mark the upper directory of `dir` impure, unless known to be.
    pub(crate) fn set_impure_node(&self, dir: &super::NodeRef, fd: BorrowedFd<'_>) {
        if dir.state.read().impure {
            return;
        }
        self.set_impure(fd);
        dir.state.write().impure = true;
    }

    /// True when upper directory `dir` carries `overlay.impure`.
    pub(crate) fn has_impure(&self, dir: BorrowedFd<'_>) -> bool {
        rustix::fs::fgetxattr(dir, self.layers.ns.impure(), &mut [0u8; 4][..]).is_ok()
    }

    /// Mark an upper directory `impure` (it holds entries with an origin), once.
    pub(crate) fn set_impure(&self, dir: BorrowedFd<'_>) {
        let x = self.layers.ns.impure();
        if rustix::fs::fgetxattr(dir, x, &mut [0u8; 4][..]).is_err() {
            let _ = rustix::fs::fsetxattr(dir, x, b"y", XattrFlags::empty());
        }
    }

    /// Inode number from an upper object's `overlay.origin` (None without a usable one):
    /// the origin's when it is a directory or has a single link, as the kernel does, or
    /// with the index on when the upper object is its lower file's verified index entry.
    pub(crate) fn origin_ino_of(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<u64> {
        self.origin_of(dir, name).map(|(i, _)| i)
    }

    /// [`Overlay::origin_ino_of`], with the index entry when the upper object is its lower
    /// file's verified index entry (`index=on`, a lower file with several names): then the
    /// object reports the origin's inode number, as every other name of it (the kernel's
    /// `OVL_INDEX`).
    pub(crate) fn origin_of(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Option<(u64, Option<std::sync::Arc<super::index::IndexInfo>>)> {
        let p = proc_path(dir, name);
        let x = self.layers.ns.origin();
        let raw = read_xattr(|b| rustix::fs::lgetxattr(&p, x, b)).ok()?;
        let (i, st) = self.origin_lower(&raw)?;
        let ino = self.layers.map_ino(LayerRef::Lower(i), st.st_ino);
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir || st.st_nlink == 1 {
            return Some((ino, None));
        }
        let info = self.verified_index(dir, name, &raw, st.st_nlink as u32)?;
        Some((ino, Some(info)))
    }

    /// The lower layer and `fstat` of the object an origin file handle `raw` names (None
    /// when malformed, on no lower filesystem, or gone). Needs CAP_DAC_READ_SEARCH.
    pub(crate) fn origin_lower(&self, raw: &[u8]) -> Option<(u16, rustix::fs::Stat)> {
        let (uuid, ty, handle) = decode(raw)?;
        let mut tried = Vec::new();
        for (i, l) in self.layers.lowers.iter().enumerate() {
            if l.uuid != uuid || tried.contains(&l.dev) {
                continue;
            }
            tried.push(l.dev);
            let Ok(fd) = crate::sys::open_by_handle(l.fd.as_fd(), ty, handle) else {
                continue;
            };
            let Ok(st) = rustix::fs::fstat(&fd) else {
                continue;
            };
            if st.st_dev != l.dev {
                continue;
            }
            return Some((i as u16, st));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_roundtrip_and_kernel_bytes() {
        // Bytes a 6.18 kernel wrote for an ext4 lower with a null UUID (observed).
        let kernel = [
            0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xdd,
            0x40, 0x99, 0x00, 0xd7, 0x6d, 0xea, 0xef,
        ];
        let (uuid, ty, h) = decode(&kernel).unwrap();
        assert_eq!((uuid, ty), ([0; 16], 1));
        assert_eq!(encode(&uuid, ty, h).unwrap(), kernel);
        assert!(decode(&kernel[..20]).is_none());
        let mut bad = kernel;
        bad[1] = 0;
        assert!(decode(&bad).is_none());
    }
}
