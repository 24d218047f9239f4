//! Image lowers served by FUSE programs: `squashfuse` (squashfs), `erofsfuse` (EROFS) and
//! `fuseiso` (ISO 9660). Used where the kernel cannot loop-mount the image for us: without
//! root (in a user namespace, or through `fusermount3`), for the FUSE backend, and for ISO
//! images always (the kernel path takes squashfs and EROFS only).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// A filesystem image a FUSE program can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageKind {
    /// squashfs (magic `hsqs` at 0).
    Squashfs,
    /// EROFS (magic 0xE0F5E1E2 at 1024).
    Erofs,
    /// ISO 9660 (`CD001` at 32769).
    Iso9660,
}

impl ImageKind {
    /// Recognise an image file by its magic; `None` for directories and anything else.
    pub(crate) fn of(path: &Path) -> Option<ImageKind> {
        use std::io::Read;
        let md = std::fs::metadata(path).ok()?;
        if !md.is_file() {
            return None;
        }
        let mut head = vec![0u8; 32774];
        let mut f = std::fs::File::open(path).ok()?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        head.truncate(n);
        match overlay_core::ImageFormat::detect(&head) {
            Some(overlay_core::ImageFormat::Squashfs) => return Some(ImageKind::Squashfs),
            Some(overlay_core::ImageFormat::Erofs) => return Some(ImageKind::Erofs),
            _ => {}
        }
        (head.get(32769..32774) == Some(b"CD001")).then_some(ImageKind::Iso9660)
    }

    /// The program that serves it, and where to get it.
    fn program(self) -> (&'static str, &'static str) {
        match self {
            ImageKind::Squashfs => ("squashfuse", "Debian/Ubuntu: apt-get install squashfuse"),
            ImageKind::Erofs => (
                "erofsfuse",
                "from erofs-utils 1.7 or later (Debian 13: apt-get install erofsfuse; Debian 12 does not package it)",
            ),
            ImageKind::Iso9660 => ("fuseiso", "Debian/Ubuntu: apt-get install fuseiso"),
        }
    }

    /// The name of the program that serves it.
    pub(crate) fn program_name(self) -> &'static str {
        self.program().0
    }

    fn article(self) -> &'static str {
        match self {
            ImageKind::Squashfs => "a squashfs",
            ImageKind::Erofs => "an EROFS",
            ImageKind::Iso9660 => "an ISO 9660",
        }
    }
}

/// An image file mounted read-only by its FUSE program into a private directory of ours;
/// unmounted (the program exits) and the directory removed on drop.
#[derive(Debug)]
pub(crate) struct FuseImage {
    pub(crate) dir: PathBuf,
    pub(crate) image: PathBuf,
    armed: bool,
}

fn in_path(prog: &str) -> bool {
    find_in_path(prog).is_some()
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// For each image format: its name, the FUSE program that serves it where the kernel cannot
/// loop-mount it (without root, for the FUSE backend, ISO 9660 always), and where that
/// program is (`None`: not installed).
pub fn image_programs() -> Vec<(&'static str, &'static str, Option<PathBuf>)> {
    [ImageKind::Squashfs, ImageKind::Erofs, ImageKind::Iso9660]
        .into_iter()
        .map(|k| {
            let (prog, _) = k.program();
            let name = k.article().split_once(' ').map_or("", |(_, n)| n);
            (name, prog, find_in_path(prog))
        })
        .collect()
}

impl FuseImage {
    /// Mount `image` (of `kind`) into a new private directory under `parent`.
    pub(crate) fn mount(image: &Path, kind: ImageKind, parent: &Path) -> Result<FuseImage> {
        let (prog, hint) = kind.program();
        let unsupported = |reason: String| {
            Error::Core(overlay_core::Error::Unsupported {
                op: "mount image lower",
                path: image.to_path_buf(),
                reason,
            })
        };
        if !in_path(prog) {
            return Err(unsupported(format!(
                "{} image is mounted with {prog} here (without root, for the FUSE backend, or an ISO), and {prog} is not installed ({hint})",
                kind.article()
            )));
        }
        let dir = overlay_core::mount::private_dir_in(parent, "ovl-image")
            .map_err(|e| unsupported(format!("cannot make a directory to mount it on: {e}")))?;
        let mut me = FuseImage {
            dir,
            image: image.to_path_buf(),
            armed: false,
        };
        // The programs fork into the background once the mount is live.
        let mut cmd = Command::new(prog);
        if kind == ImageKind::Iso9660 {
            // No ~/.mtab.fuseiso: without it fuseiso's daemon dies where HOME is not
            // writable (a user namespace).
            cmd.arg("-n");
        }
        let out = cmd
            .arg(image)
            .arg(&me.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| unsupported(format!("cannot run {prog}: {e}")))?;
        let mounted = overlay_core::mount::mountinfo::is_mount_point(&me.dir).unwrap_or(false);
        if !out.status.success() || !mounted {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let _ = std::fs::remove_dir(&me.dir);
            return Err(unsupported(format!(
                "{prog} could not mount it ({}){}",
                out.status,
                if msg.is_empty() {
                    String::new()
                } else {
                    format!(": {msg}")
                }
            )));
        }
        me.armed = true;
        tracing::debug!(
            "{} mounted on {} by {prog}",
            image.display(),
            me.dir.display()
        );
        Ok(me)
    }

    /// Leave it mounted; returns its directory (release it with [`crate::release_image`]).
    pub(crate) fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.dir)
    }

    fn release(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        crate::fuse::unmount_fuse(&self.dir, false, true)?;
        std::fs::remove_dir(&self.dir).map_err(|e| {
            overlay_core::Error::io("remove the mount directory of image lower", &self.image, e)
        })?;
        Ok(())
    }
}

impl Drop for FuseImage {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_magic_is_recognised() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.iso");
        let mut data = vec![0u8; 40000];
        data[32769..32774].copy_from_slice(b"CD001");
        std::fs::write(&p, &data).unwrap();
        assert_eq!(ImageKind::of(&p), Some(ImageKind::Iso9660));
        std::fs::write(&p, b"hsqs and more").unwrap();
        assert_eq!(ImageKind::of(&p), Some(ImageKind::Squashfs));
        std::fs::write(&p, b"nothing").unwrap();
        assert_eq!(ImageKind::of(&p), None);
        assert_eq!(ImageKind::of(d.path()), None);
    }
}
