//! Flatten a stack (lowers and an optional upper) into one layer: a directory, or a squashfs
//! or erofs image made with the system's `mksquashfs` / `mkfs.erofs`: [`squash`].
//!
//! The layers are committed into the output one after the other, bottom-first (see
//! [`crate::commit`]): whiteouts delete, opaque directories replace, renamed directories move,
//! metacopy files take their metadata from above and their data from below. The result is
//! the merged view as a plain tree, with no overlay format left in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::commit::{commit, CommitOptions};
use crate::error::Error;

/// What [`squash`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SquashFormat {
    /// A directory (must not exist, or be empty).
    Dir,
    /// A squashfs image (`mksquashfs`, xattrs kept).
    Squashfs,
    /// An erofs image (`mkfs.erofs`).
    Erofs,
}

impl SquashFormat {
    /// The format an output path asks for by its extension: `.squashfs`/`.sqfs`, `.erofs`,
    /// anything else a directory.
    pub fn from_path(p: &Path) -> SquashFormat {
        match p.extension().and_then(|e| e.to_str()) {
            Some("squashfs") | Some("sqfs") => SquashFormat::Squashfs,
            Some("erofs") => SquashFormat::Erofs,
            _ => SquashFormat::Dir,
        }
    }
}

/// The result of [`squash`].
#[derive(Debug, Clone, Serialize)]
pub struct SquashReport {
    /// What was made.
    pub format: SquashFormat,
    /// Where.
    #[serde(serialize_with = "crate::ser_path")]
    pub output: PathBuf,
    /// Layers flattened (lowers, plus the upper if given).
    pub layers: usize,
}

/// Flatten `lowers` (bottom-first) and `upper` (if any) into `output`.
///
/// ```no_run
/// use overlay_layers::squash::{squash, SquashFormat};
/// squash(&["/srv/base", "/srv/app"], Some("/srv/upper"), "/srv/flat.squashfs", SquashFormat::Squashfs)?;
/// # Ok::<(), overlay_layers::Error>(())
/// ```
pub fn squash<L: AsRef<Path>>(
    lowers: &[L],
    upper: Option<impl AsRef<Path>>,
    output: impl AsRef<Path>,
    format: SquashFormat,
) -> Result<SquashReport, Error> {
    let output = output.as_ref();
    let mut layers: Vec<PathBuf> = lowers.iter().map(|l| l.as_ref().to_path_buf()).collect();
    if let Some(u) = upper {
        layers.push(u.as_ref().to_path_buf());
    }
    if layers.is_empty() {
        return Err(Error::path(output, "nothing to squash: no layers given"));
    }
    let n = layers.len();
    match format {
        SquashFormat::Dir => {
            make_empty_dir(output)?;
            flatten(&layers, output)?;
        }
        SquashFormat::Squashfs | SquashFormat::Erofs => {
            if output.exists() {
                return Err(Error::path(
                    output,
                    "exists already: refusing to overwrite it",
                ));
            }
            let parent = match output.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let tmp = tempfile::Builder::new()
                .prefix(".ovl-squash-")
                .tempdir_in(parent)
                .map_err(|e| Error::io(parent, "cannot create a temporary directory", e))?;
            let tree = tmp.path().join("tree");
            make_empty_dir(&tree)?;
            flatten(&layers, &tree)?;
            let image_tmp = tmp.path().join("image");
            let (program, mut cmd) = if format == SquashFormat::Squashfs {
                let mut c = Command::new("mksquashfs");
                c.arg(&tree)
                    .arg(&image_tmp)
                    .args(["-noappend", "-quiet", "-no-progress"]);
                ("mksquashfs", c)
            } else {
                let mut c = Command::new("mkfs.erofs");
                c.arg("--quiet").arg(&image_tmp).arg(&tree);
                ("mkfs.erofs", c)
            };
            let out = cmd.output().map_err(|e| Error::Tool {
                program: program.into(),
                reason: format!(
                    "cannot run it: {} (install squashfs-tools or erofs-utils)",
                    crate::error::describe(&e)
                ),
            })?;
            if !out.status.success() {
                return Err(Error::Tool {
                    program: program.into(),
                    reason: format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            std::fs::rename(&image_tmp, output)
                .map_err(|e| Error::io(output, "cannot move the image into place", e))?;
        }
    }
    Ok(SquashReport {
        format,
        output: output.to_path_buf(),
        layers: n,
    })
}

fn make_empty_dir(p: &Path) -> Result<(), Error> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut it = std::fs::read_dir(p).map_err(|e| Error::io(p, "cannot read", e))?;
            if it.next().is_some() {
                return Err(Error::path(
                    p,
                    "is not empty: squash writes into a new or empty directory",
                ));
            }
            Ok(())
        }
        Err(e) => Err(Error::io(p, "cannot create", e)),
    }
}

fn flatten(layers: &[PathBuf], into: &Path) -> Result<(), Error> {
    for l in layers {
        commit(l, into, &CommitOptions::default())?;
    }
    Ok(())
}
