//! Layer stacks: ordered lower layers, an optional upper layer with its workdir, and their
//! validation.
//!
//! The Rust API orders lowers **bottom-first** (`lower(a).lower(b)` puts `b` above `a`);
//! [`LayerStack::lowers_top_first`] gives the kernel's `lowerdir=` order.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::XattrNamespace;

/// The kernel's limit on lower layers (`OVL_MAX_STACK`): the kernel mount backend refuses
/// larger stacks, the FUSE backend takes them (up to [`MAX_ENGINE_LOWER_LAYERS`]).
pub const MAX_LOWER_LAYERS: usize = 500;

/// The engine's limit on lower layers (a layer index is 16 bits).
pub const MAX_ENGINE_LOWER_LAYERS: usize = u16::MAX as usize;

/// statfs magic of overlayfs.
pub const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// A read-only lower layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerLayer {
    /// Absolute, canonical path of the layer directory (or of the image file, see `image`).
    pub path: PathBuf,
    /// `Some` when the layer is a filesystem image file rather than a directory. The kernel
    /// backend loop-mounts it read-only before mounting the overlay (root only); backends
    /// that cannot use images refuse such stacks.
    pub image: Option<ImageFormat>,
}

impl LowerLayer {
    /// True when this layer is an image file, not a directory.
    pub fn is_image(&self) -> bool {
        self.image.is_some()
    }
}

/// The format of a lower layer that is an image file (live systems, read-only media).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A squashfs image (magic `hsqs` at offset 0).
    Squashfs,
    /// An EROFS image (magic 0xE0F5E1E2 at offset 1024).
    Erofs,
}

impl ImageFormat {
    /// The kernel filesystem type name (`squashfs`, `erofs`).
    pub fn fstype(self) -> &'static str {
        match self {
            ImageFormat::Squashfs => "squashfs",
            ImageFormat::Erofs => "erofs",
        }
    }

    /// Recognise an image by its superblock magic; `head` is the start of the file (at least
    /// 1028 bytes are needed to recognise EROFS).
    pub fn detect(head: &[u8]) -> Option<ImageFormat> {
        if head.len() >= 4 && &head[..4] == b"hsqs" {
            return Some(ImageFormat::Squashfs);
        }
        if head.len() >= 1028 && head[1024..1028] == 0xE0F5_E1E2u32.to_le_bytes() {
            return Some(ImageFormat::Erofs);
        }
        None
    }
}

/// The writable upper layer and its workdir (same filesystem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperLayer {
    /// Absolute, canonical path of the upper directory.
    pub upper: PathBuf,
    /// Absolute, canonical path of the workdir. Copy-ups are staged in `work/work`.
    pub work: PathBuf,
}

/// An ordered, validated stack of layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStack {
    lowers: Vec<LowerLayer>,
    data_lowers: Vec<LowerLayer>,
    upper: Option<UpperLayer>,
    xattr_ns: XattrNamespace,
}

impl LayerStack {
    /// Start building a stack.
    pub fn builder() -> LayerStackBuilder {
        LayerStackBuilder::default()
    }

    /// Lower layers, bottom-first.
    pub fn lowers(&self) -> &[LowerLayer] {
        &self.lowers
    }

    /// Lower layers, top-first (the kernel's `lowerdir=` order).
    pub fn lowers_top_first(&self) -> impl Iterator<Item = &LowerLayer> {
        self.lowers.iter().rev()
    }

    /// Data-only lower layers (composefs-style), in search order (the kernel's
    /// `lowerdir=...::data1::data2` order). They sit below every lower layer, are never
    /// listed nor looked up by name: only the data of a metacopy file whose lowest metadata
    /// copy carries an absolute `overlay.redirect` is looked up there, by that path.
    pub fn data_lowers(&self) -> &[LowerLayer] {
        &self.data_lowers
    }

    /// The upper layer, if the stack is writable.
    pub fn upper(&self) -> Option<&UpperLayer> {
        self.upper.as_ref()
    }

    /// The xattr namespace of overlay-private attributes.
    pub fn xattr_namespace(&self) -> XattrNamespace {
        self.xattr_ns
    }

    /// True when the stack has no upper layer.
    pub fn is_read_only(&self) -> bool {
        self.upper.is_none()
    }

    /// True when at least one lower layer is an image file ([`LowerLayer::image`]).
    pub fn has_image_lowers(&self) -> bool {
        self.lowers.iter().any(LowerLayer::is_image)
    }
}

/// Builder for [`LayerStack`]; [`LayerStackBuilder::build`] validates.
#[derive(Debug, Default, Clone)]
pub struct LayerStackBuilder {
    lowers: Vec<PathBuf>,
    data_lowers: Vec<PathBuf>,
    upper: Option<(PathBuf, PathBuf)>,
    xattr_ns: Option<XattrNamespace>,
    probe_upper_features: bool,
}

impl LayerStackBuilder {
    /// Add a lower layer above those added so far (bottom-first order).
    ///
    /// The path is a directory, or a squashfs/EROFS image file (recognised by its magic),
    /// which the kernel backend loop-mounts read-only.
    pub fn lower(mut self, path: impl Into<PathBuf>) -> Self {
        self.lowers.push(path.into());
        self
    }

    /// Add several lower layers, bottom-first.
    pub fn lowers<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.lowers.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Add a data-only lower layer (a directory) after those added so far: searched after
    /// them (see [`LayerStack::data_lowers`]).
    pub fn data_lower(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_lowers.push(path.into());
        self
    }

    /// Set the upper layer and its workdir.
    pub fn upper(mut self, upper: impl Into<PathBuf>, work: impl Into<PathBuf>) -> Self {
        self.upper = Some((upper.into(), work.into()));
        self.probe_upper_features = true;
        self
    }

    /// Choose the xattr namespace. Default: `Trusted` when running as root, `User` otherwise.
    pub fn xattr_namespace(mut self, ns: XattrNamespace) -> Self {
        self.xattr_ns = Some(ns);
        self
    }

    /// Skip the d_type/xattr probe of the upper filesystem (it writes a probe file into the
    /// workdir); use when the kernel will probe anyway.
    pub fn skip_upper_feature_probe(mut self) -> Self {
        self.probe_upper_features = false;
        self
    }

    /// Validate and build the stack.
    ///
    /// Fails with [`Error::InvalidStack`] naming the path when: a layer is missing or not a
    /// directory; there is no lower layer or more than [`MAX_ENGINE_LOWER_LAYERS`]; a layer appears
    /// twice; the upper is inside a lower or the reverse; the upper and workdir overlap; the
    /// workdir is on another filesystem than the upper or holds anything but the overlay's own
    /// `work`/`index` directories; the upper is itself an overlay; or the upper filesystem lacks
    /// d_type or xattr support.
    pub fn build(self) -> Result<LayerStack> {
        let xattr_ns = self.xattr_ns.unwrap_or_else(|| {
            // uid 0 inside a user namespace is not privileged: trusted.* needs CAP_SYS_ADMIN in
            // the initial namespace.
            if crate::mount::has_cap_sys_admin_in_initial_namespace() {
                XattrNamespace::Trusted
            } else {
                XattrNamespace::User
            }
        });
        if self.lowers.is_empty() {
            return Err(Error::InvalidStack {
                path: PathBuf::new(),
                reason: "at least one lower layer is required".into(),
            });
        }
        if self.lowers.len() > MAX_ENGINE_LOWER_LAYERS {
            return Err(Error::InvalidStack {
                path: self.lowers[MAX_ENGINE_LOWER_LAYERS].clone(),
                reason: format!(
                    "too many lower layers: {} given, the limit is {MAX_ENGINE_LOWER_LAYERS}",
                    self.lowers.len()
                ),
            });
        }
        if self.lowers.len() + self.data_lowers.len() > MAX_ENGINE_LOWER_LAYERS {
            return Err(Error::InvalidStack {
                path: self.data_lowers[MAX_ENGINE_LOWER_LAYERS.saturating_sub(self.lowers.len())]
                    .clone(),
                reason: format!(
                    "too many lower and data-only layers: {} given, the limit is \
                     {MAX_ENGINE_LOWER_LAYERS}",
                    self.lowers.len() + self.data_lowers.len()
                ),
            });
        }
        let mut seen = HashSet::new();
        let mut lowers = Vec::with_capacity(self.lowers.len());
        let mut data_lowers = Vec::with_capacity(self.data_lowers.len());
        for (i, p) in self.lowers.iter().chain(&self.data_lowers).enumerate() {
            let (path, id, image) = existing_lower(p)?;
            if !seen.insert(id) {
                return Err(Error::InvalidStack {
                    path,
                    reason: "layer appears more than once in the stack".into(),
                });
            }
            if i < self.lowers.len() {
                lowers.push(LowerLayer { path, image });
            } else {
                data_lowers.push(LowerLayer { path, image });
            }
        }
        let upper = match self.upper {
            None => None,
            Some((u, w)) => {
                let (upper, uid) = existing_dir(&u, "upper layer")?;
                let (work, wid) = existing_dir(&w, "workdir")?;
                if !seen.insert(uid) {
                    return Err(Error::InvalidStack {
                        path: upper,
                        reason: "upper layer is also a lower layer".into(),
                    });
                }
                if uid == wid || upper.starts_with(&work) || work.starts_with(&upper) {
                    return Err(Error::InvalidStack {
                        path: work,
                        reason: format!(
                            "workdir and upper dir {} must be separate subtrees",
                            upper.display()
                        ),
                    });
                }
                for l in lowers.iter().chain(&data_lowers) {
                    if nested_on_same_fs(&upper, &l.path) {
                        return Err(Error::InvalidStack {
                            path: upper.clone(),
                            reason: format!("upper dir is inside lower layer {}", l.path.display()),
                        });
                    }
                    if nested_on_same_fs(&l.path, &upper) {
                        return Err(Error::InvalidStack {
                            path: l.path.clone(),
                            reason: format!("lower layer is inside upper dir {}", upper.display()),
                        });
                    }
                    if nested_on_same_fs(&l.path, &work) || nested_on_same_fs(&work, &l.path) {
                        return Err(Error::InvalidStack {
                            path: work.clone(),
                            reason: format!("workdir overlaps lower layer {}", l.path.display()),
                        });
                    }
                }
                if uid.0 != wid.0 {
                    return Err(Error::InvalidStack {
                        path: work,
                        reason: format!(
                            "workdir is on another filesystem than upper dir {}",
                            upper.display()
                        ),
                    });
                }
                let sfs = rustix::fs::statfs(&upper).map_err(|e| {
                    Error::io("statfs upper layer", &upper, crate::error::from_rustix(e))
                })?;
                if sfs.f_type as i64 == OVERLAYFS_SUPER_MAGIC {
                    return Err(Error::InvalidStack {
                        path: upper,
                        reason:
                            "upper dir is on an overlay filesystem, which cannot be an upper layer"
                                .into(),
                    });
                }
                check_workdir_empty(&work)?;
                if self.probe_upper_features {
                    probe_upper_features(&work, xattr_ns)?;
                }
                Some(UpperLayer { upper, work })
            }
        };
        Ok(LayerStack {
            lowers,
            data_lowers,
            upper,
            xattr_ns,
        })
    }
}

/// True when `inner` lies inside `outer` on the same filesystem, i.e. `inner` is reachable
/// from `outer` without crossing a mount point. The kernel only refuses such overlaps: a
/// tmpfs upper mounted below a lower `/` is fine, because a layer never includes submounts.
fn nested_on_same_fs(inner: &Path, outer: &Path) -> bool {
    if !inner.starts_with(outer) {
        return false;
    }
    let Ok(outer_dev) = std::fs::metadata(outer).map(|m| m.dev()) else {
        return true;
    };
    let mut cur = Some(inner);
    while let Some(p) = cur {
        if p == outer {
            return true;
        }
        match std::fs::metadata(p) {
            Ok(m) if m.dev() == outer_dev => cur = p.parent(),
            _ => return false,
        }
    }
    true
}

/// Canonicalize `p`, check it is a directory, return it with its (dev, ino).
fn existing_dir(p: &Path, what: &str) -> Result<(PathBuf, (u64, u64))> {
    let canon = std::fs::canonicalize(p).map_err(|e| Error::InvalidStack {
        path: p.to_path_buf(),
        reason: format!("{what} cannot be resolved: {e}"),
    })?;
    let md = std::fs::metadata(&canon).map_err(|e| Error::InvalidStack {
        path: p.to_path_buf(),
        reason: format!("{what}: {e}"),
    })?;
    if !md.is_dir() {
        return Err(Error::InvalidStack {
            path: p.to_path_buf(),
            reason: format!("{what} is not a directory"),
        });
    }
    Ok((canon, (md.dev(), md.ino())))
}

/// A lower layer: a directory, or a regular file holding a squashfs/EROFS image.
fn existing_lower(p: &Path) -> Result<(PathBuf, (u64, u64), Option<ImageFormat>)> {
    let md = std::fs::metadata(p).map_err(|e| Error::InvalidStack {
        path: p.to_path_buf(),
        reason: format!("lower layer cannot be resolved: {e}"),
    })?;
    if !md.is_file() {
        let (path, id) = existing_dir(p, "lower layer")?;
        return Ok((path, id, None));
    }
    let canon = std::fs::canonicalize(p).map_err(|e| Error::InvalidStack {
        path: p.to_path_buf(),
        reason: format!("lower layer cannot be resolved: {e}"),
    })?;
    let mut head = Vec::with_capacity(1028);
    std::fs::File::open(&canon)
        .and_then(|f| std::io::Read::take(f, 1028).read_to_end(&mut head))
        .map_err(|e| Error::io("read lower image", &canon, e))?;
    match ImageFormat::detect(&head) {
        Some(fmt) => Ok((canon, (md.dev(), md.ino()), Some(fmt))),
        None => Err(Error::InvalidStack {
            path: p.to_path_buf(),
            reason: "lower layer is a file but not a squashfs or erofs image".into(),
        }),
    }
}

/// The workdir may hold only what an overlay itself leaves there: `work`, `index`, `incompat`.
fn check_workdir_empty(work: &Path) -> Result<()> {
    let rd = std::fs::read_dir(work).map_err(|e| Error::io("read workdir", work, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("read workdir", work, e))?;
        let name = ent.file_name();
        let ours = [OsStr::new("work"), OsStr::new("index")].contains(&name.as_os_str())
            && ent.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !ours {
            return Err(Error::InvalidStack {
                path: work.join(&name),
                reason:
                    "workdir is not empty (only an overlay's own work/ and index/ may be there)"
                        .into(),
            });
        }
    }
    Ok(())
}

/// Probe the upper filesystem (through the workdir) for d_type and overlay xattrs.
fn probe_upper_features(work: &Path, ns: XattrNamespace) -> Result<()> {
    let probe = work.join(format!(".ovl-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&probe);
    std::fs::create_dir(&probe).map_err(|e| Error::io("probe upper filesystem", &probe, e))?;
    let result = (|| {
        std::fs::write(probe.join("f"), b"").map_err(|e| Error::io("probe d_type", &probe, e))?;
        let dir = rustix::fs::open(
            &probe,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("probe d_type", &probe, crate::error::from_rustix(e)))?;
        let mut d = rustix::fs::Dir::read_from(&dir)
            .map_err(|e| Error::io("probe d_type", &probe, crate::error::from_rustix(e)))?;
        let mut has_dtype = false;
        while let Some(ent) = d.read() {
            let ent =
                ent.map_err(|e| Error::io("probe d_type", &probe, crate::error::from_rustix(e)))?;
            if ent.file_name().to_bytes() == b"f" {
                has_dtype = ent.file_type() != rustix::fs::FileType::Unknown;
            }
        }
        if !has_dtype {
            return Err(Error::InvalidStack {
                path: work.to_path_buf(),
                reason: "upper filesystem does not report d_type in readdir".into(),
            });
        }
        let name = ns.name("probe");
        match rustix::fs::fsetxattr(&dir, name.as_str(), b"y", rustix::fs::XattrFlags::empty()) {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::InvalidStack {
                path: work.to_path_buf(),
                reason: format!("upper filesystem does not accept {name} xattrs: {e}"),
            }),
        }
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let v = (0..n)
            .map(|i| {
                let p = t.path().join(format!("d{i}"));
                std::fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        (t, v)
    }

    fn reason(e: Error) -> String {
        match e {
            Error::InvalidStack { reason, .. } => reason,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn valid_stack_orders_layers() {
        let (_t, d) = dirs(4);
        let s = LayerStack::builder()
            .lower(&d[0])
            .lower(&d[1])
            .upper(&d[2], &d[3])
            .xattr_namespace(XattrNamespace::User)
            .build()
            .unwrap();
        let top: Vec<_> = s.lowers_top_first().map(|l| l.path.clone()).collect();
        assert_eq!(
            top,
            vec![d[1].canonicalize().unwrap(), d[0].canonicalize().unwrap()]
        );
        assert!(!s.is_read_only());
    }

    #[test]
    fn refuses_missing_duplicate_nested_and_dirty_work() {
        let (t, d) = dirs(4);
        let e = LayerStack::builder()
            .lower(t.path().join("nope"))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = LayerStack::builder()
            .lower(&d[0])
            .lower(&d[0])
            .build()
            .unwrap_err();
        assert!(reason(e).contains("more than once"));
        let inner = d[0].join("up");
        std::fs::create_dir(&inner).unwrap();
        let e = LayerStack::builder()
            .lower(&d[0])
            .upper(&inner, &d[3])
            .build()
            .unwrap_err();
        assert!(reason(e).contains("inside lower"));
        std::fs::write(d[3].join("junk"), b"x").unwrap();
        let e = LayerStack::builder()
            .lower(&d[0])
            .upper(&d[2], &d[3])
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("junk") && reason(e).contains("not empty"));
        assert!(LayerStack::builder().build().is_err());
    }

    #[test]
    fn refuses_more_lowers_than_the_engine_indexes() {
        let (_t, d) = dirs(1);
        let e = LayerStack::builder()
            .lowers(std::iter::repeat_n(
                d[0].clone(),
                MAX_ENGINE_LOWER_LAYERS + 1,
            ))
            .build()
            .unwrap_err();
        assert!(reason(e).contains("limit is 65535"));
    }
}
