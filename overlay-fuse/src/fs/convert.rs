//! Conversions between the engine's types, fuser's and the kernel's: errnos, times, device
//! numbers, file types, attributes and inode flags.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Request, TimeOrNow};
use overlay_core::{Attr, FileKind, TimeSet, Timestamp};
use tracing::{debug, warn};

use super::Inner;
use crate::caller::Caller;

pub(super) fn errno(op: &str, e: &overlay_core::Error) -> Errno {
    let code = e.raw_os_error();
    if let overlay_core::Error::Io {
        op: "copy-up",
        path,
        source,
    } = e
    {
        if code == libc::EACCES || code == libc::EPERM {
            // One line per refusal, in a fixed form callers may look for (`ovl run` names
            // the files afterwards): the daemon could not read or copy a lower object.
            warn!("{}/{}: {source}", crate::COPY_UP_REFUSED, path.display());
            return Errno::from_i32(code);
        }
    }
    if code == libc::EIO {
        warn!("{op}: {e}");
    } else {
        debug!("{op}: {e}");
    }
    Errno::from_i32(code)
}

pub(super) fn io_errno(op: &str, e: &io::Error) -> Errno {
    debug!("{op}: {e}");
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub(super) fn rustix_errno(op: &str, e: rustix::io::Errno) -> Errno {
    debug!("{op}: {e}");
    Errno::from_i32(e.raw_os_error())
}

/// The FUSE file type of an engine file kind (also for `ovl-erofs`).
pub(crate) fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp { sec, nsec }
        }
    }
}

pub(super) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timestamp(t)),
    }
}

/// The credentials of the process behind `req`.
pub(super) fn caller_of(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// `dev_t` (glibc encoding) to the kernel's 32-bit `new_encode_dev` used by FUSE.
fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// FUSE's 32-bit device number to `dev_t`.
pub(super) fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xf_ff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xf_ff00);
    libc::makedev(major, minor)
}

pub(super) fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// `fsx_xflags` for inode flags `FS_*_FL` (the kernel's `fileattr_fill_flags`).
pub(super) fn fs_xflags(flags: u32) -> u32 {
    XFLAG_MAP
        .iter()
        .filter(|(fl, _)| flags & fl != 0)
        .fold(0, |x, (_, xfl)| x | xfl)
}

/// Inode flags (`FS_*_FL`) and their `FS_XFLAG_*` bits.
const XFLAG_MAP: [(u32, u32); 7] = [
    (0x0000_0008, 0x0000_0020), // SYNC
    (0x0000_0010, 0x0000_0008), // IMMUTABLE
    (0x0000_0020, 0x0000_0010), // APPEND
    (0x0000_0040, 0x0000_0080), // NODUMP
    (0x0000_0080, 0x0000_0040), // NOATIME
    (0x0200_0000, 0x0000_8000), // DAX
    (0x2000_0000, 0x0000_0200), // PROJINHERIT
];

/// The inode flags (`FS_*_FL`) of `FS_XFLAG_*` bits, as the kernel's `fileattr_fill_xflags`.
pub(super) fn inode_flags_of(xflags: u32) -> u32 {
    XFLAG_MAP
        .iter()
        .filter(|(_, xfl)| xflags & xfl != 0)
        .fold(0, |f, (fl, _)| f | fl)
}

/// `struct fsxattr` as the ioctl carries it.
pub(super) fn fsxattr_bytes(x: &overlay_core::FsXattr) -> [u8; 28] {
    let mut out = [0u8; 28];
    for (i, v) in [x.xflags, x.extsize, x.nextents, x.projid, x.cowextsize]
        .into_iter()
        .enumerate()
    {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    out[20..].copy_from_slice(&x.pad);
    out
}

/// `struct fsxattr` from an ioctl's input (`None` when it is short).
pub(super) fn fsxattr_from(data: &[u8]) -> Option<overlay_core::FsXattr> {
    let data: &[u8; 28] = data.get(..28)?.try_into().ok()?;
    let word = |i: usize| u32::from_ne_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let mut pad = [0u8; 8];
    pad.copy_from_slice(&data[20..]);
    Some(overlay_core::FsXattr {
        xflags: word(0),
        extsize: word(4),
        nextents: word(8),
        projid: word(12),
        cowextsize: word(16),
        pad,
    })
}

/// Attributes of an open file whose name is gone, from `fstat` of the real file.
pub(super) fn attr_from_metadata(md: &std::fs::Metadata, ino: u64) -> Attr {
    let mode = md.mode();
    let kind = FileKind::from_mode(mode);
    let ts = |sec: i64, nsec: i64| Timestamp {
        sec,
        nsec: nsec as u32,
    };
    Attr {
        ino,
        kind,
        perm: mode & 0o7777,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        blocks: md.blocks(),
        blksize: md.blksize() as u32,
        atime: ts(md.atime(), md.atime_nsec()),
        mtime: ts(md.mtime(), md.mtime_nsec()),
        ctime: ts(md.ctime(), md.ctime_nsec()),
    }
}

impl Inner {
    /// The attributes the kernel gets for node id `nodeid` (its `st_ino` is
    /// [`crate::table::InodeTable::st_ino`]).
    pub(super) fn to_attr(&self, nodeid: u64, a: &Attr) -> FileAttr {
        let nlink = if self.cfg.static_nlink && a.kind == FileKind::Directory {
            1
        } else {
            a.nlink
        };
        FileAttr {
            ino: INodeNo(self.table.st_ino(nodeid, a.ino)),
            size: a.size,
            blocks: a.blocks,
            atime: system_time(a.atime),
            mtime: system_time(a.mtime),
            ctime: system_time(a.ctime),
            crtime: UNIX_EPOCH,
            kind: file_type(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink,
            uid: self.cfg.ids.view_uid(a.uid),
            gid: self.cfg.ids.view_gid(a.gid),
            rdev: encode_dev(a.rdev),
            blksize: a.blksize,
            flags: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_encoding_roundtrip() {
        for (maj, min) in [
            (0u32, 0u32),
            (1, 3),
            (8, 1),
            (259, 65536),
            (4095, 1_048_575),
        ] {
            let dev = libc::makedev(maj, min);
            assert_eq!(decode_dev(encode_dev(dev)), dev, "{maj}:{min}");
        }
        // The kernel's encoding of 1:3 (/dev/null) is 0x103.
        assert_eq!(encode_dev(libc::makedev(1, 3)), 0x103);
    }

    #[test]
    fn timestamps_roundtrip() {
        for t in [
            Timestamp { sec: 0, nsec: 0 },
            Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timestamp {
                sec: -5,
                nsec: 250_000_000,
            },
        ] {
            assert_eq!(timestamp(system_time(t)), t);
        }
    }
}
