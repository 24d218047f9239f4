//! [`OverlayFile`]: an open file that follows a later copy-up, as the kernel overlay's
//! stacked files do.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use parking_lot::Mutex;

use super::{NodeRef, Overlay};
use crate::error::{Error, Result};

/// An open file of the overlay. Unlike the [`File`] of [`Overlay::open`], which is the real file
/// in its layer, a read-only `OverlayFile` opened while the file lived only in a lower layer
/// switches to the upper copy once something copies it up, at the same offset: reads then see
/// what was written through other opens, as with the kernel overlay (stacked file operations,
/// Linux 4.19+).
#[derive(Debug)]
pub struct OverlayFile<'a> {
    ovl: &'a Overlay,
    node: NodeRef,
    flags: i32,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    file: File,
    /// The file is the lower layer's: check for a copy-up before each access.
    lower: bool,
}

fn to_io(e: Error) -> io::Error {
    let kind = io::Error::from_raw_os_error(e.raw_os_error()).kind();
    io::Error::new(kind, e)
}

impl Overlay {
    /// Open a non-directory like [`Overlay::open`] (same flags and copy-up rules), returning an
    /// [`OverlayFile`] that follows a later copy-up of the file.
    pub fn open_file(&self, node: &NodeRef, flags: i32) -> Result<OverlayFile<'_>> {
        let lower = node.is_lower_only();
        let file = self.open(node, flags)?;
        Ok(OverlayFile {
            ovl: self,
            node: node.clone(),
            flags: flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL),
            current: Mutex::new(Current {
                // A write-open copied the file up already.
                lower: lower && node.is_lower_only(),
                file,
            }),
        })
    }
}

impl OverlayFile<'_> {
    /// The node this file was opened from.
    pub fn node(&self) -> &NodeRef {
        &self.node
    }

    /// Run `f` on the current real file, switching to the upper copy first if the file was
    /// copied up since it was opened.
    fn with_current<R>(&self, f: impl FnOnce(&mut File) -> io::Result<R>) -> io::Result<R> {
        let mut cur = self.current.lock();
        if cur.lower && !self.node.is_lower_only() {
            let pos = cur.file.stream_position()?;
            let mut upper = self.ovl.open(&self.node, self.flags).map_err(to_io)?;
            upper.seek(SeekFrom::Start(pos))?;
            *cur = Current {
                file: upper,
                lower: false,
            };
        }
        f(&mut cur.file)
    }

    /// Read at `offset` without moving the file position.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with_current(|f| f.read_at(buf, offset))
    }

    /// Write at `offset` without moving the file position (needs a write-open).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.with_current(|f| f.write_at(buf, offset))
    }

    /// A new handle on the current real file (the upper copy once there is one).
    pub fn try_clone_real(&self) -> io::Result<File> {
        self.with_current(|f| f.try_clone())
    }
}

impl Read for OverlayFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with_current(|f| f.read(buf))
    }
}

impl Write for OverlayFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with_current(|f| f.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with_current(|f| f.flush())
    }
}

impl Seek for OverlayFile<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.with_current(|f| f.seek(pos))
    }
}
