//! `ovl save` and `ovl run --save`: an upper layer written as a squashfs or EROFS image with
//! the distributions' own tools (mksquashfs, mkfs.erofs), which keep the kernel's format
//! (whiteouts are character devices 0/0, opaque directories and redirects are xattrs).

use std::path::Path;
use std::process::Command;

use crate::cli::ImageFormatArg;
use crate::error::CliError;

/// Refuse an image path that exists (nothing the user has may be overwritten) or whose
/// directory does not.
pub fn check_new_image(image: &Path) -> Result<(), CliError> {
    if std::fs::symlink_metadata(image).is_ok() {
        return Err(CliError::path(
            image,
            "exists; give a new file name for the image",
        ));
    }
    let parent = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(CliError::path(
            parent,
            "does not exist (needed for the image)",
        ));
    }
    Ok(())
}

/// Write `upper` as an image at `image` (which must not exist); a failed attempt leaves no
/// file behind.
pub fn save(upper: &Path, image: &Path, format: ImageFormatArg) -> Result<(), CliError> {
    check_new_image(image)?;
    if !upper.is_dir() {
        return Err(CliError::path(upper, "is not a directory: nothing to save"));
    }
    let mut cmd = match format {
        ImageFormatArg::Squashfs => {
            let mut c = Command::new("mksquashfs");
            // -no-strip would keep the root's own name; xattrs are kept by default.
            c.arg(upper)
                .arg(image)
                .args(["-noappend", "-quiet", "-no-progress"]);
            c
        }
        ImageFormatArg::Erofs => {
            let mut c = Command::new("mkfs.erofs");
            c.arg("--quiet").arg(image).arg(upper);
            c
        }
    };
    let prog = match format {
        ImageFormatArg::Squashfs => "mksquashfs (package squashfs-tools)",
        ImageFormatArg::Erofs => "mkfs.erofs (package erofs-utils)",
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CliError::io(image, &format!("cannot run {prog}"), e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(image);
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(CliError::path(
            image,
            format!("{prog} failed ({}): {msg}", out.status),
        ));
    }
    tracing::info!("saved {} as {}", upper.display(), image.display());
    Ok(())
}
