//! Image lowers served by FUSE programs: `squashfuse` (squashfs), `erofsfuse` or else our own
//! `ovl-erofs` (EROFS; Debian 12 has no erofsfuse) and `fuseiso` (ISO 9660). Used where the kernel cannot loop-mount the image for us: without
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

    /// The programs that can serve it, preferred first, and where to get them.
    fn programs(self) -> (&'static [&'static str], &'static str) {
        match self {
            ImageKind::Squashfs => (&["squashfuse"], "Debian/Ubuntu: apt-get install squashfuse"),
            ImageKind::Erofs => (
                &["erofsfuse", "ovl-erofs"],
                "ovl-erofs is built with ovl (cargo build --workspace) and belongs next to ovl or in PATH; erofsfuse comes with erofs-utils 1.7 or later (Debian 13: apt-get install erofsfuse)",
            ),
            ImageKind::Iso9660 => (&["fuseiso"], "Debian/Ubuntu: apt-get install fuseiso"),
        }
    }

    /// The program that serves it here, and where it is: the first of its programs found
    /// (ours, `ovl-erofs`, next to ovl or in `PATH`; the others in `PATH`).
    fn server(self) -> Option<(&'static str, PathBuf)> {
        self.programs().0.iter().find_map(|&p| {
            let at = if p == "ovl-erofs" {
                crate::fuse::find_companion(p)
            } else {
                find_in_path(p)
            };
            at.map(|a| (p, a))
        })
    }

    /// The program to name when none of its programs is found.
    fn missing_program(self) -> &'static str {
        self.programs().0.last().copied().unwrap_or("?")
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
    /// The program serving it (`squashfuse`, `ovl-erofs`, ...).
    pub(crate) program: &'static str,
    armed: bool,
}

/// The first file named `prog` in a directory of `$PATH`.
pub(crate) fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// For each image format: its name, the FUSE program that serves it where the kernel cannot
/// loop-mount it (without root, for the FUSE backend, ISO 9660 always), and where that
/// program is (`None`: not installed). For EROFS that is erofsfuse where installed, else
/// ovl's own `ovl-erofs`.
pub fn image_programs() -> Vec<(&'static str, &'static str, Option<PathBuf>)> {
    [ImageKind::Squashfs, ImageKind::Erofs, ImageKind::Iso9660]
        .into_iter()
        .map(|k| {
            let name = k.article().split_once(' ').map_or("", |(_, n)| n);
            match k.server() {
                Some((prog, at)) => (name, prog, Some(at)),
                None => (name, k.missing_program(), None),
            }
        })
        .collect()
}

impl FuseImage {
    /// Mount `image` (of `kind`) into a new private directory under `parent`.
    pub(crate) fn mount(image: &Path, kind: ImageKind, parent: &Path) -> Result<FuseImage> {
        let (_, hint) = kind.programs();
        let unsupported = |reason: String| {
            Error::Core(overlay_core::Error::Unsupported {
                op: "mount image lower",
                path: image.to_path_buf(),
                reason,
            })
        };
        let Some((prog, program)) = kind.server() else {
            let prog = kind.missing_program();
            return Err(unsupported(format!(
                "{} image is mounted with {prog} here (without root, for the FUSE backend, or an ISO), and {prog} is not installed ({hint})",
                kind.article()
            )));
        };
        let dir = overlay_core::mount::private_dir_in(parent, "ovl-image")
            .map_err(|e| unsupported(format!("cannot make a directory to mount it on: {e}")))?;
        let mut me = FuseImage {
            dir,
            image: image.to_path_buf(),
            program: prog,
            armed: false,
        };
        // The programs fork into the background once the mount is live.
        let mut cmd = Command::new(&program);
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
