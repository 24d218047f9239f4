//! `overlay`: stack read-only lower layers under a writable upper layer, mounted with the
//! kernel's overlayfs or with ovl's own FUSE union filesystem.
//!
//! This is the one entry point for embedders. [`mount`] mounts a stack with a [`Backend`]:
//! [`Backend::Auto`] tries the kernel overlay, then the kernel overlay inside a new user
//! namespace (when the request allows entering one), then FUSE, and records why it chose
//! what it chose ([`Mounted::reasons`], from the machine [`probe()`]). The mount lives as long
//! as the returned [`Mounted`] guard.
//!
//! ```no_run
//! use overlay::{mount, Backend, Request, Upper};
//! let req = Request::new(["/srv/base", "/srv/patch"])   // bottom-first
//!     .upper(Upper::Tmpfs { size: Some("256m".into()) })
//!     .backend(Backend::Auto);
//! let m = mount(&req, "/mnt/merged")?;
//! println!("mounted with {} because: {:?}", m.backend(), m.reasons());
//! std::fs::write("/mnt/merged/hello", "world").unwrap();
//! drop(m); // unmounted; the tmpfs upper is gone
//! # Ok::<(), overlay::Error>(())
//! ```
//!
//! Lowers may be image files: squashfs and EROFS images are loop-mounted by the kernel
//! backend as root; without root, for the FUSE backend, and for ISO 9660 images always, they
//! are served by `squashfuse`, `erofsfuse` (else ovl's own `ovl-erofs`) or `fuseiso` (module
//! `image`).
//! [`Request::squash_to_root`] gives an unprivileged caller a root-like view (FUSE), and
//! [`Request::data_lowers`] composefs-style data-only layers.
//!
//! The layer engine itself ([`core::Overlay`]) and the kernel backend's building blocks
//! ([`core::MountSpec`], [`core::KernelMount`]) are re-exported under [`core`].
#![warn(missing_docs)]

mod fuse;
mod image;
pub use image::image_programs;
pub mod namespace;
mod sys;

use std::fmt;
use std::path::{Path, PathBuf};

pub use overlay_core as core;
pub use overlay_core::mount::{probe, Probe, Support};
use overlay_core::{KernelMount, LayerStack, MountSpec, OverlayMountOptions, XattrNamespace};
pub use overlay_layers as layers;

pub use namespace::{enter_private_namespace, PrivateNamespace};

/// Errors of the facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the core crate (stack validation, kernel mount, I/O).
    #[error(transparent)]
    Core(#[from] overlay_core::Error),
    /// No backend could mount the stack; one reason per backend tried.
    #[error("no backend could mount {}: {}", target.display(), reasons.join("; "))]
    NoBackend {
        /// The mount point.
        target: PathBuf,
        /// Why each backend failed or was skipped.
        reasons: Vec<String>,
    },
    /// The FUSE backend failed.
    #[error("FUSE mount on {}: {reason}", target.display())]
    Fuse {
        /// The mount point.
        target: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A private namespace could not be entered.
    #[error("{0}")]
    Namespace(String),
}

impl Error {
    /// Name internal paths (see [`overlay_core::Error::rename_paths`]) by what the caller
    /// gave.
    fn rename_paths(self, renames: &[(PathBuf, PathBuf)]) -> Error {
        use overlay_core::error::rename_in_text;
        match self {
            Error::Core(e) => Error::Core(e.rename_paths(renames)),
            Error::NoBackend { target, reasons } => Error::NoBackend {
                target,
                reasons: reasons
                    .into_iter()
                    .map(|r| rename_in_text(r, renames))
                    .collect(),
            },
            Error::Fuse { target, reason } => Error::Fuse {
                target,
                reason: rename_in_text(reason, renames),
            },
            Error::Namespace(m) => Error::Namespace(rename_in_text(m, renames)),
        }
    }
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which backend to mount with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Kernel overlay, then kernel overlay in a user namespace (if the request allows
    /// entering one), then FUSE.
    #[default]
    Auto,
    /// The kernel overlay only (in a user namespace if the request allows and the caller is
    /// not privileged).
    Kernel,
    /// ovl's FUSE union filesystem only (the `ovl-fuse` program).
    Fuse,
}

/// The backend a mount ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// Kernel overlay in the caller's namespace (or a private mount namespace).
    Kernel,
    /// Kernel overlay with `userxattr`, inside a new user namespace.
    KernelUserNamespace,
    /// The `ovl-fuse` daemon.
    Fuse,
}

impl Chosen {
    /// `kernel`, `kernel-userns` or `fuse` (the names the probe uses).
    pub fn as_str(self) -> &'static str {
        match self {
            Chosen::Kernel => "kernel",
            Chosen::KernelUserNamespace => "kernel-userns",
            Chosen::Fuse => "fuse",
        }
    }
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The writable upper layer of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper {
    /// None: a read-only union.
    ReadOnly,
    /// A persistent directory (created if missing). `work` defaults to the managed workdir
    /// `.NAME.ovl-work` next to it (created if missing).
    Dir {
        /// The upper directory.
        upper: PathBuf,
        /// Its workdir (same filesystem, empty).
        work: Option<PathBuf>,
    },
    /// A fresh tmpfs holding upper and workdir, gone when the mount is released. `size` is
    /// tmpfs's `size=` (bytes with k/m/g suffix, or a percentage of RAM).
    Tmpfs {
        /// Size cap.
        size: Option<String>,
    },
}

/// When [`mount`] may move the calling process into new namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Namespace {
    /// Mount in the caller's mount namespace (visible system-wide; needs privileges).
    #[default]
    Current,
    /// First move the calling process into a private mount namespace (and, unprivileged, a
    /// new user namespace): the mount is seen by this process and its children only and
    /// disappears with them. The process must be single-threaded. `ovl run` uses this.
    Private,
}

/// What to mount: lowers (bottom-first), upper, options, backend.
#[derive(Debug, Clone)]
pub struct Request {
    lowers: Vec<PathBuf>,
    upper: Upper,
    options: OverlayMountOptions,
    backend: Backend,
    namespace: Namespace,
    scratch: Option<PathBuf>,
    fuse_log: Option<PathBuf>,
    squash_to_root: bool,
    tmpfs_inodes: Option<u64>,
    data_lowers: Vec<PathBuf>,
}

impl Request {
    /// A request for `lowers`, **bottom-first** (the last one is the top lower layer), with a
    /// read-only union by default.
    pub fn new<I, P>(lowers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        Request {
            lowers: lowers.into_iter().map(Into::into).collect(),
            upper: Upper::ReadOnly,
            options: OverlayMountOptions::default(),
            backend: Backend::Auto,
            namespace: Namespace::Current,
            scratch: None,
            fuse_log: None,
            squash_to_root: false,
            tmpfs_inodes: None,
            data_lowers: Vec::new(),
        }
    }

    /// Data-only lower layers below the lowers (composefs-style stacks: the lowers hold
    /// metacopy files whose redirects name objects in these), in lookup order, with
    /// `metacopy=on` in [`Request::options`]: the kernel backend (see
    /// [`core::MountSpec::new_with_data_lowers`]) and ovl-fuse (`datadir+=`; it does not check
    /// `verity=`, which it refuses).
    pub fn data_lowers<I, P>(mut self, dirs: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.data_lowers = dirs.into_iter().map(Into::into).collect();
        self
    }

    /// Cap the number of inodes of a tmpfs upper ([`Upper::Tmpfs`]; tmpfs's `nr_inodes=`),
    /// so a runaway program cannot fill memory with empty files either.
    pub fn tmpfs_inodes(mut self, inodes: Option<u64>) -> Self {
        self.tmpfs_inodes = inodes;
        self
    }

    /// Show every file as owned by root (uid and gid 0), whoever owns it in the layers; a
    /// chown through the mount succeeds and changes nothing, and copy-up leaves copies owned
    /// by the mounting user. With [`Namespace::Private`] and no privilege, that is a
    /// root-like view for an unprivileged user: root inside the user namespace over files
    /// that look like root's, so `/usr` can be changed on a throwaway upper (only what the
    /// user cannot read, such as a 0600 file of root, cannot be copied up). Only the FUSE
    /// backend can squash ownership: the kernel backends are skipped.
    pub fn squash_to_root(mut self, squash: bool) -> Self {
        self.squash_to_root = squash;
        self
    }

    /// Set the upper layer.
    pub fn upper(mut self, upper: Upper) -> Self {
        self.upper = upper;
        self
    }

    /// Set the kernel overlay options (also passed to FUSE where they apply).
    pub fn options(mut self, options: OverlayMountOptions) -> Self {
        self.options = options;
        self
    }

    /// Choose the backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Choose the namespace to mount in.
    pub fn namespace(mut self, ns: Namespace) -> Self {
        self.namespace = ns;
        self
    }

    /// Where to create the mount point of a tmpfs upper (default: the temp dir).
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch = Some(dir.into());
        self
    }

    /// Where the FUSE daemon writes its log. Default: a file in a private directory (0700)
    /// of the temp dir, read for the daemon's error message and removed once the mount is
    /// up or has failed.
    pub fn fuse_log(mut self, file: impl Into<PathBuf>) -> Self {
        self.fuse_log = Some(file.into());
        self
    }

    /// The lowers, bottom-first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }
}

/// The managed workdir of an upper directory: `.NAME.ovl-work` next to it.
pub fn managed_workdir(upper: &Path) -> Option<PathBuf> {
    let name = upper.file_name()?;
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(".ovl-work");
    Some(upper.with_file_name(n))
}

/// How errors and log lines name a tmpfs upper ([`Upper::Tmpfs`]): its mount point is ovl's
/// own temporary directory, not something the caller gave, so messages never show it.
pub const TMPFS_UPPER: &str = "the tmpfs upper";

/// How errors and log lines name the workdir inside a tmpfs upper.
pub const TMPFS_WORKDIR: &str = "the tmpfs upper's workdir";

/// A tmpfs mounted on a directory we created; unmounted and removed on drop. Its errors name
/// it [`TMPFS_UPPER`], never by its directory.
#[derive(Debug)]
struct Tmpfs {
    dir: PathBuf,
    armed: bool,
}

impl Tmpfs {
    fn mount(parent: &Path, size: Option<&str>, inodes: Option<u64>) -> Result<Tmpfs> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| overlay_core::Error::io("create scratch directory", parent, e))?;
        let dir = overlay_core::mount::private_dir_in(parent, "ovl-tmp").map_err(|e| match e {
            overlay_core::Error::Io { source, .. } => {
                overlay_core::Error::io("create the mount point of", TMPFS_UPPER, source)
            }
            e => e,
        })?;
        let mut data = String::from("mode=0755");
        if let Some(s) = size {
            data.push_str(",size=");
            data.push_str(s);
        }
        if let Some(n) = inodes {
            data.push_str(&format!(",nr_inodes={n}"));
        }
        let data = std::ffi::CString::new(data).expect("no NUL in tmpfs options");
        if let Err(e) = rustix::mount::mount(
            "tmpfs",
            &dir,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            data.as_c_str(),
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(overlay_core::Error::Mount {
                path: TMPFS_UPPER.into(),
                detail: format!("mount tmpfs: {}", io_words(&std::io::Error::from(e))),
                errno: Some(e.raw_os_error()),
            }
            .into());
        }
        let t = Tmpfs { dir, armed: true };
        for (sub, name) in [("upper", TMPFS_UPPER), ("work", TMPFS_WORKDIR)] {
            std::fs::create_dir(t.dir.join(sub))
                .map_err(|e| overlay_core::Error::io("create", name, e))?;
        }
        Ok(t)
    }

    fn release(&mut self) -> Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        let flags = rustix::mount::UnmountFlags::NOFOLLOW;
        if let Err(e) = rustix::mount::unmount(&self.dir, flags) {
            tracing::debug!("unmount tmpfs {}: {e}; detaching", self.dir.display());
            rustix::mount::unmount(&self.dir, flags | rustix::mount::UnmountFlags::DETACH)
                .map_err(|e| {
                    overlay_core::Error::io("unmount", TMPFS_UPPER, std::io::Error::from(e))
                })?;
        }
        std::fs::remove_dir(&self.dir)
            .map_err(|e| overlay_core::Error::io("remove the mount point of", TMPFS_UPPER, e))?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("{e}");
        }
    }
}

/// A private bind mount of a lower layer that contains the upper (e.g. `/` under a tmpfs
/// upper in `/tmp`): the kernel accepts that when they are different filesystems, but the
/// stack validation compares paths, so the lower is reached through a bind mount elsewhere.
/// Only made inside a private mount namespace. Unmounted and removed on drop.
#[derive(Debug)]
struct LowerBind {
    dir: PathBuf,
    /// The lower it binds (errors name it instead of `dir`).
    lower: PathBuf,
}

impl LowerBind {
    fn new(lower: &Path, parent: &Path, n: usize) -> Result<LowerBind> {
        let dir =
            overlay_core::mount::private_dir_in(parent, &format!("ovl-lower{n}")).map_err(|e| {
                match e {
                    overlay_core::Error::Io { source, .. } => overlay_core::Error::io(
                        "create a mount point to bind lower layer",
                        lower,
                        source,
                    ),
                    e => e,
                }
            })?;
        // Recursive: in a user namespace a mount with locked submounts cannot be bound alone
        // (the overlay ignores submounts of a lower either way).
        if let Err(e) = rustix::mount::mount_bind_recursive(lower, &dir) {
            let _ = std::fs::remove_dir(&dir);
            return Err(overlay_core::Error::io(
                "bind-mount lower layer",
                lower,
                std::io::Error::from(e),
            )
            .into());
        }
        Ok(LowerBind {
            dir,
            lower: lower.to_path_buf(),
        })
    }
}

impl Drop for LowerBind {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A mounted stack. Dropping it unmounts the overlay, stops the FUSE daemon and releases a
/// tmpfs upper; [`Mounted::unmount`] does the same and reports errors; [`Mounted::keep`]
/// leaves everything mounted.
#[derive(Debug)]
pub struct Mounted {
    // Field order is drop order: the overlay goes before the tmpfs under it.
    kernel: Option<KernelMount>,
    fuse: Option<fuse::FuseMount>,
    /// Image lowers served by FUSE programs (squashfuse, fuseiso, ...), below the overlay.
    images: Vec<image::FuseImage>,
    binds: Vec<LowerBind>,
    tmpfs: Option<Tmpfs>,
    target: PathBuf,
    backend: Chosen,
    reasons: Vec<String>,
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    managed_work: bool,
}

/// What a kept mount consists of, to undo it later (see [`Mounted::keep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMount {
    /// The mount point.
    pub target: PathBuf,
    /// The backend.
    pub backend: Chosen,
    /// Why the backend was chosen.
    pub reasons: Vec<String>,
    /// Lowers, bottom-first.
    pub lowers: Vec<PathBuf>,
    /// Upper, if any.
    pub upper: Option<PathBuf>,
    /// Workdir, if any.
    pub work: Option<PathBuf>,
    /// The workdir was created by ovl next to the upper.
    pub managed_work: bool,
    /// Mount point of the tmpfs holding upper and work, if any.
    pub tmpfs: Option<PathBuf>,
    /// FUSE daemon process id (`None` for the kernel backends, or when `ovl-fuse` did not
    /// report it).
    pub fuse_pid: Option<u32>,
    /// Mount points of image lowers (squashfs, EROFS) loop-mounted for the overlay; release
    /// each with [`release_image`] after unmounting the overlay.
    pub images: Vec<PathBuf>,
}

impl Mounted {
    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The backend that mounted the stack.
    pub fn backend(&self) -> Chosen {
        self.backend
    }

    /// Why this backend: one line per backend tried or skipped before it, and the choice.
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// The upper directory (inside the tmpfs for [`Upper::Tmpfs`]).
    pub fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// The workdir.
    pub fn work(&self) -> Option<&Path> {
        self.work.as_deref()
    }

    /// Lowers, bottom-first (canonical paths).
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// Unmount the overlay only, keeping a tmpfs upper mounted (to read or copy it); the
    /// tmpfs is released when the guard is dropped.
    pub fn unmount_overlay(&mut self) -> Result<()> {
        if let Some(k) = self.kernel.take() {
            k.unmount()?;
        }
        if let Some(mut f) = self.fuse.take() {
            f.release()?;
        }
        Ok(())
    }

    /// Unmount everything now, reporting errors.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_overlay()?;
        self.binds.clear();
        if let Some(mut t) = self.tmpfs.take() {
            t.release()?;
        }
        Ok(())
    }

    /// Leave the stack mounted after the guard is gone; returns what to undo later.
    pub fn keep(mut self) -> KeptMount {
        let mut images: Vec<PathBuf> = self
            .kernel
            .as_ref()
            .map(|k| {
                k.image_mounts()
                    .iter()
                    .map(|i| i.dir().to_path_buf())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(k) = self.kernel.take() {
            k.detach();
        }
        let fuse_pid = self.fuse.take().and_then(fuse::FuseMount::keep);
        images.extend(self.images.drain(..).map(image::FuseImage::keep));
        for b in self.binds.drain(..) {
            std::mem::forget(b);
        }
        let tmpfs = self.tmpfs.take().map(|mut t| {
            t.armed = false;
            std::mem::take(&mut t.dir)
        });
        KeptMount {
            target: self.target.clone(),
            backend: self.backend,
            reasons: std::mem::take(&mut self.reasons),
            lowers: std::mem::take(&mut self.lowers),
            upper: self.upper.take(),
            work: self.work.take(),
            managed_work: self.managed_work,
            tmpfs,
            fuse_pid,
            images,
        }
    }
}

fn support_line(name: &str, s: Option<&Support>) -> String {
    match s {
        Some(s) => format!("{name}: {s}"),
        None => format!("{name}: not probed"),
    }
}

impl Mounted {
    /// The guard over a started backend (`kernel` or `fuse`, and which one was chosen) and
    /// the layers it was mounted from.
    fn assemble(
        (kernel, fuse, backend): (Option<KernelMount>, Option<fuse::FuseMount>, Chosen),
        prepared: PreparedUpper,
        binds: Vec<LowerBind>,
        target: PathBuf,
        reasons: Vec<String>,
        lowers: Vec<PathBuf>,
    ) -> Mounted {
        let mut prepared = prepared;
        prepared.created.keep();
        let (upper, work) = prepared.upper.unzip();
        Mounted {
            kernel,
            fuse,
            images: Vec::new(),
            binds,
            target,
            backend,
            reasons,
            lowers,
            upper,
            work,
            managed_work: prepared.managed_work,
            tmpfs: prepared.tmpfs,
        }
    }
}

/// Upper and workdir as prepared for mounting.
struct PreparedUpper {
    tmpfs: Option<Tmpfs>,
    upper: Option<(PathBuf, PathBuf)>,
    managed_work: bool,
    /// Directories created for this mount, removed again if it fails.
    created: CreatedDirs,
}

/// Directories [`mount`] created (outermost first); removed again on drop unless the mount
/// succeeded ([`CreatedDirs::keep`]), so a refused or failed mount leaves nothing behind.
#[derive(Debug, Default)]
struct CreatedDirs {
    /// `(path, is a workdir)`: a workdir may hold `work/` made by a failed kernel mount.
    dirs: Vec<(PathBuf, bool)>,
}

impl CreatedDirs {
    /// Create `p` and its missing parents, remembering each directory created.
    fn ensure(&mut self, p: &Path, what: &'static str, workdir: bool) -> Result<()> {
        let missing: Vec<&Path> = p
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
            .collect();
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(d) {
                Ok(()) => self.dirs.push((d.to_path_buf(), workdir && d == p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(overlay_core::Error::io(what, d, e).into()),
            }
        }
        if !p.is_dir() {
            return Err(overlay_core::Error::InvalidStack {
                path: p.to_path_buf(),
                reason: format!("{what}: exists and is not a directory"),
            }
            .into());
        }
        Ok(())
    }

    /// The mount succeeded: keep the directories.
    fn keep(&mut self) {
        self.dirs.clear();
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        for (d, workdir) in self.dirs.drain(..).rev() {
            // A workdir we just created only holds what this mount attempt put there.
            let r = if workdir {
                std::fs::remove_dir_all(&d)
            } else {
                std::fs::remove_dir(&d)
            };
            if let Err(e) = r {
                tracing::warn!(
                    "cannot remove {} created for a failed mount: {e}",
                    d.display()
                );
            }
        }
    }
}

/// The absolute, symlink-free path `p` will have once created: its longest existing prefix
/// canonicalized, the rest appended (`..` resolved lexically).
fn planned_path(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| overlay_core::Error::io("resolve path", p, e))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_os_string());
        existing = parent;
    }
    let mut out = std::fs::canonicalize(existing)
        .map_err(|e| overlay_core::Error::io("resolve path", existing, e))?;
    for c in rest.iter().rev() {
        out.push(c);
    }
    // `absolute` keeps `..` in the part that does not exist yet.
    let mut norm = PathBuf::new();
    for c in out.components() {
        match c {
            std::path::Component::ParentDir => {
                norm.pop();
            }
            c => norm.push(c),
        }
    }
    Ok(norm)
}

/// The device of `p`, or of its nearest existing ancestor (where `p` will be created).
fn planned_dev(p: &Path) -> Option<u64> {
    p.ancestors()
        .find_map(|a| std::fs::metadata(a).ok())
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
}

/// `inner` lies inside (or is) `outer` without crossing a mount point, counting the parts of
/// `inner` that do not exist yet as on their parent's filesystem. Layers on different
/// filesystems may nest (a layer never includes its submounts); the kernel and the stack
/// validation refuse only this kind.
fn nested_same_fs(inner: &Path, outer: &Path) -> bool {
    if !inner.starts_with(outer) {
        return false;
    }
    let Some(outer_dev) = planned_dev(outer) else {
        return true;
    };
    let mut cur = Some(inner);
    while let Some(p) = cur {
        if p == outer {
            return true;
        }
        match std::fs::metadata(p) {
            Ok(m) if std::os::unix::fs::MetadataExt::dev(&m) != outer_dev => return false,
            _ => cur = p.parent(),
        }
    }
    true
}

/// Refuse an upper or workdir that overlaps a lower layer or the mount point, before anything
/// is created. The kernel itself accepts an upper that is the mount point (the mount then
/// hides its own upper) and, on some paths, an upper inside a lower; ovl refuses both.
fn check_planned_layout(
    upper: &Path,
    work: &Path,
    lowers: &[PathBuf],
    target: &Path,
) -> Result<()> {
    let refuse = |path: &Path, reason: String| -> Result<()> {
        Err(overlay_core::Error::InvalidStack {
            path: path.to_path_buf(),
            reason,
        }
        .into())
    };
    for (p, what) in [(upper, "upper directory"), (work, "workdir")] {
        if p == target {
            return refuse(
                p,
                format!("the {what} is the mount point: the overlay would hide its own {what}; put it outside the mount point"),
            );
        }
        if target.starts_with(p) {
            return refuse(
                p,
                format!(
                    "the mount point {} is inside the {what}; put the {what} elsewhere",
                    target.display()
                ),
            );
        }
        for l in lowers {
            if p == l {
                return refuse(p, format!("the {what} is also a lower layer"));
            }
            if nested_same_fs(p, l) {
                return refuse(
                    p,
                    format!(
                        "the {what} is inside lower layer {}; layers must not overlap",
                        l.display()
                    ),
                );
            }
            if nested_same_fs(l, p) {
                return refuse(
                    p,
                    format!(
                        "lower layer {} is inside the {what}; layers must not overlap",
                        l.display()
                    ),
                );
            }
        }
    }
    if upper.starts_with(work) || work.starts_with(upper) {
        return refuse(
            work,
            format!(
                "workdir and upper dir {} must be separate subtrees",
                upper.display()
            ),
        );
    }
    Ok(())
}

/// Resolve the lowers (all must exist), before anything is created for the mount.
fn resolve_lowers(lowers: &[PathBuf]) -> Result<Vec<PathBuf>> {
    lowers
        .iter()
        .map(|l| {
            std::fs::canonicalize(l).map_err(|e| {
                overlay_core::Error::InvalidStack {
                    path: l.clone(),
                    reason: format!("lower layer: {}", io_words(&e)),
                }
                .into()
            })
        })
        .collect()
}

/// An I/O error in words, without std's " (os error N)".
fn io_words(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

fn prepare_upper(req: &Request, lowers: &[PathBuf], target: &Path) -> Result<PreparedUpper> {
    match &req.upper {
        Upper::ReadOnly => Ok(PreparedUpper {
            tmpfs: None,
            upper: None,
            managed_work: false,
            created: CreatedDirs::default(),
        }),
        Upper::Dir { upper, work } => {
            let upper_abs = planned_path(upper)?;
            let (work_abs, managed) = match work {
                Some(w) => (planned_path(w)?, false),
                None => (
                    managed_workdir(&upper_abs).ok_or_else(|| {
                        overlay_core::Error::InvalidStack {
                            path: upper.clone(),
                            reason: "the upper directory has no name to derive a workdir from"
                                .into(),
                        }
                    })?,
                    true,
                ),
            };
            check_planned_layout(&upper_abs, &work_abs, lowers, target)?;
            let mut created = CreatedDirs::default();
            created.ensure(&upper_abs, "create upper directory", false)?;
            created.ensure(&work_abs, "create workdir", true)?;
            let canon = |p: &Path| {
                std::fs::canonicalize(p)
                    .map_err(|e| Error::from(overlay_core::Error::io("resolve layer", p, e)))
            };
            Ok(PreparedUpper {
                tmpfs: None,
                upper: Some((canon(&upper_abs)?, canon(&work_abs)?)),
                managed_work: managed,
                created,
            })
        }
        Upper::Tmpfs { size } => {
            let parent = req.scratch.clone().unwrap_or_else(std::env::temp_dir);
            let t = Tmpfs::mount(&parent, size.as_deref(), req.tmpfs_inodes)?;
            let u = (t.dir.join("upper"), t.dir.join("work"));
            Ok(PreparedUpper {
                tmpfs: Some(t),
                upper: Some(u),
                managed_work: false,
                created: CreatedDirs::default(),
            })
        }
    }
}

fn build_stack(
    lowers: &[PathBuf],
    upper: &PreparedUpper,
    ns: XattrNamespace,
) -> Result<LayerStack> {
    let mut b = LayerStack::builder()
        .lowers(lowers.iter().cloned())
        .xattr_namespace(ns);
    if let Some((u, w)) = &upper.upper {
        b = b.upper(u, w);
    }
    Ok(b.build()?)
}

/// Mount `req` on `target`. See [`Backend`] for the order backends are tried in; every step
/// adds a line to [`Mounted::reasons`].
pub fn mount(req: &Request, target: impl AsRef<Path>) -> Result<Mounted> {
    let target = std::fs::canonicalize(target.as_ref())
        .map_err(|e| overlay_core::Error::io("resolve mount target", target.as_ref(), e))?;
    let probe = overlay_core::mount::probe();
    let mut reasons = Vec::new();
    let privileged = overlay_core::mount::has_cap_sys_admin_in_initial_namespace();
    let try_kernel = req.backend != Backend::Fuse;
    let try_fuse = req.backend != Backend::Kernel;
    let mut in_userns = false;

    // 1. Which namespace: the caller's, or a private one (user namespace when unprivileged).
    if req.namespace == Namespace::Private {
        let user = !privileged;
        match enter_private_namespace(user) {
            Ok(PrivateNamespace::UserAndMount) => {
                in_userns = true;
                reasons.push("not privileged: entered a new user and mount namespace".into());
            }
            Ok(PrivateNamespace::Mount) => {
                reasons.push("entered a private mount namespace".into());
            }
            Err(e) => return Err(e),
        }
    }

    let lowers_canon = resolve_lowers(&req.lowers)?;
    let prepared = prepare_upper(req, &lowers_canon, &target)?;
    // In a private namespace, reach lowers that contain the upper through bind mounts.
    let mut binds = Vec::new();
    let mut lowers_mount = req.lowers.clone();
    if req.namespace == Namespace::Private {
        if let Some((u, _)) = &prepared.upper {
            let dev = |p: &Path| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            };
            let udev = dev(u);
            for (i, l) in lowers_canon.iter().enumerate() {
                let ldev = dev(l);
                if u.starts_with(l) && udev.is_some() && ldev.is_some() && udev != ldev {
                    let parent = req.scratch.clone().unwrap_or_else(std::env::temp_dir);
                    let b = LowerBind::new(l, &parent, i)
                        .map_err(|e| e.rename_paths(&internal_names(&prepared, &binds)))?;
                    lowers_mount[i] = b.dir.clone();
                    binds.push(b);
                }
            }
        }
    }
    // Image lowers the kernel cannot loop-mount for us are served by FUSE programs.
    let mut images = Vec::new();
    for (i, l) in lowers_canon.iter().enumerate() {
        let Some(kind) = image::ImageKind::of(l) else {
            continue;
        };
        let through_fuse = kind == image::ImageKind::Iso9660
            || !privileged
            || req.backend == Backend::Fuse
            || req.squash_to_root;
        if through_fuse {
            let parent = req.scratch.clone().unwrap_or_else(std::env::temp_dir);
            let im = image::FuseImage::mount(l, kind, &parent)?;
            reasons.push(format!(
                "image lower {}: served by {}",
                l.display(),
                im.program
            ));
            lowers_mount[i] = im.dir.clone();
            images.push(im);
        }
    }
    // Errors name the tmpfs upper and bound lowers by what the caller gave, not by our
    // temporary directories.
    let mut renames = internal_names(&prepared, &binds);
    renames.extend(images.iter().map(|im| (im.dir.clone(), im.image.clone())));
    let mut last_err: Option<Error> = None;

    // 2. The kernel overlay.
    if try_kernel && req.squash_to_root {
        reasons.push(
            "kernel: not tried: only the FUSE backend shows every file as owned by root (squash_to_root)"
                .into(),
        );
        if req.backend == Backend::Kernel {
            return Err(Error::NoBackend { target, reasons });
        }
    } else if try_kernel {
        let kernel_ok = if in_userns {
            probe.backend("kernel-userns")
        } else {
            probe.backend("kernel")
        };
        let name = if in_userns { "kernel-userns" } else { "kernel" };
        let can = kernel_ok.is_some_and(Support::is_yes)
            || (req.namespace == Namespace::Private && !in_userns && privileged);
        let limit = overlay_core::stack::MAX_LOWER_LAYERS;
        if req.lowers.len() > limit && req.backend == Backend::Auto {
            reasons.push(format!(
                "{name}: not tried: {} lower layers, over the kernel overlay's limit of {limit}",
                req.lowers.len()
            ));
        } else if !can {
            reasons.push(support_line(name, kernel_ok));
            if !privileged && req.namespace == Namespace::Current {
                reasons.push(
                    "kernel-userns: not tried: a mount in a new user namespace is invisible to the caller's namespace (use a private namespace, e.g. `ovl run`)"
                        .into(),
                );
            }
        } else {
            let ns = if in_userns || !privileged {
                XattrNamespace::User
            } else {
                XattrNamespace::Trusted
            };
            let attempt = build_stack(&lowers_mount, &prepared, ns)
                .and_then(|stack| {
                    let spec = MountSpec::new_with_data_lowers(
                        &stack,
                        &req.data_lowers,
                        &req.options,
                        &target,
                    )?;
                    tracing::debug!("mounting: {spec}");
                    Ok(spec.mount()?)
                })
                .map_err(|e| e.rename_paths(&renames));
            match attempt {
                Ok(k) => {
                    let chosen = if in_userns {
                        Chosen::KernelUserNamespace
                    } else {
                        Chosen::Kernel
                    };
                    reasons.push(format!("{chosen}: mounted"));
                    let mut m = Mounted::assemble(
                        (Some(k), None, chosen),
                        prepared,
                        binds,
                        target,
                        reasons,
                        lowers_canon,
                    );
                    m.images = images;
                    return Ok(m);
                }
                // The layers themselves are wrong: every backend would say the same, once is
                // enough.
                Err(e @ Error::Core(overlay_core::Error::InvalidStack { .. })) => return Err(e),
                Err(e) => {
                    reasons.push(format!("{name}: failed: {e}"));
                    last_err = Some(e);
                }
            }
        }
    }

    // 3. FUSE.
    if try_fuse {
        let fuse_ok = if privileged || in_userns {
            probe.backend("fuse")
        } else {
            probe.backend("fuse-unprivileged")
        };
        // Image lowers left to the kernel (loop devices) are served by their FUSE programs
        // for this backend (e.g. a single image --read-only, which the kernel refuses).
        let mut late_images = Ok(());
        if fuse_ok.is_some_and(Support::is_yes) {
            for (i, l) in lowers_canon.iter().enumerate() {
                if lowers_mount[i] != req.lowers[i] {
                    continue; // bound or already served by FUSE
                }
                let Some(kind) = image::ImageKind::of(l) else {
                    continue;
                };
                let parent = req.scratch.clone().unwrap_or_else(std::env::temp_dir);
                match image::FuseImage::mount(l, kind, &parent) {
                    Ok(im) => {
                        reasons.push(format!(
                            "image lower {}: served by {}",
                            l.display(),
                            im.program
                        ));
                        lowers_mount[i] = im.dir.clone();
                        renames.push((im.dir.clone(), im.image.clone()));
                        images.push(im);
                    }
                    Err(e) => {
                        late_images = Err(e);
                        break;
                    }
                }
            }
        }
        if !fuse_ok.is_some_and(Support::is_yes) {
            reasons.push(support_line("fuse", fuse_ok));
        } else if let Err(e) = late_images {
            reasons.push(format!("fuse: failed: {e}"));
            last_err = Some(e);
        } else {
            match fuse::FuseMount::start(req, &lowers_mount, &prepared, &target)
                .map_err(|e| e.rename_paths(&renames))
            {
                Ok(f) => {
                    reasons.push("fuse: mounted".into());
                    let mut m = Mounted::assemble(
                        (None, Some(f), Chosen::Fuse),
                        prepared,
                        binds,
                        target,
                        reasons,
                        lowers_canon,
                    );
                    m.images = images;
                    return Ok(m);
                }
                Err(e) => {
                    reasons.push(format!("fuse: failed: {e}"));
                    last_err = Some(e);
                }
            }
        }
    }
    // With a single backend asked for, its own error is the clearest.
    match (req.backend, last_err) {
        (Backend::Kernel | Backend::Fuse, Some(e)) => Err(e),
        _ => Err(Error::NoBackend { target, reasons }),
    }
}

/// Our temporary directories behind a prepared mount, each with the name errors give it
/// instead: the tmpfs upper ([`TMPFS_UPPER`]) and the bind mounts of lowers (the lower).
/// More specific paths first.
fn internal_names(prepared: &PreparedUpper, binds: &[LowerBind]) -> Vec<(PathBuf, PathBuf)> {
    let mut v = Vec::new();
    if let Some(t) = &prepared.tmpfs {
        v.push((t.dir.join("upper"), PathBuf::from(TMPFS_UPPER)));
        v.push((t.dir.join("work"), PathBuf::from(TMPFS_WORKDIR)));
        v.push((t.dir.clone(), PathBuf::from(TMPFS_UPPER)));
    }
    for b in binds {
        v.push((b.dir.clone(), b.lower.clone()));
    }
    v
}

/// Which backend [`mount`] would pick here, and why, without mounting: each backend's line
/// from the [`probe()`].
pub fn explain(namespace: Namespace) -> (Option<Chosen>, Vec<String>) {
    let probe = overlay_core::mount::probe();
    let privileged = overlay_core::mount::has_cap_sys_admin_in_initial_namespace();
    let mut reasons = Vec::new();
    let mut choice = None;
    let k = probe.backend("kernel");
    reasons.push(support_line("kernel", k));
    if k.is_some_and(Support::is_yes) {
        choice = Some(Chosen::Kernel);
    }
    let ku = probe.backend("kernel-userns");
    reasons.push(support_line("kernel-userns", ku));
    if choice.is_none() && namespace == Namespace::Private && ku.is_some_and(Support::is_yes) {
        choice = Some(Chosen::KernelUserNamespace);
    }
    let f = if privileged {
        probe.backend("fuse")
    } else {
        probe.backend("fuse-unprivileged")
    };
    let fuse_prog = fuse::find_program();
    let fuse_line = match (&fuse_prog, f) {
        (Err(why), _) => format!("fuse: no: {why}"),
        (Ok(_), s) => support_line("fuse", s),
    };
    reasons.push(fuse_line);
    if choice.is_none() && fuse_prog.is_ok() && f.is_some_and(Support::is_yes) {
        choice = Some(Chosen::Fuse);
    }
    (choice, reasons)
}

/// Unmount the overlay (kernel or FUSE) on `target`; `lazy` detaches a busy mount
/// (`MNT_DETACH`); without it a busy mount fails with EBUSY. A FUSE daemon exits once its mount is gone. Fails when `target` is not
/// an overlay or FUSE mount point.
pub fn unmount(target: impl AsRef<Path>, lazy: bool) -> Result<()> {
    let target = target.as_ref();
    let mounts = overlay_core::mount::mountinfo::read_mountinfo()?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == target) else {
        return Err(overlay_core::Error::Mount {
            path: target.to_path_buf(),
            detail: "not mounted".into(),
            errno: Some(libc_einval()),
        }
        .into());
    };
    if m.fstype.starts_with("fuse") {
        return fuse::unmount_fuse(target, lazy, false);
    }
    if m.fstype != "overlay" {
        return Err(overlay_core::Error::Mount {
            path: target.to_path_buf(),
            detail: format!("is a {} mount, not an overlay", m.fstype),
            errno: Some(libc_einval()),
        }
        .into());
    }
    let mut flags = rustix::mount::UnmountFlags::NOFOLLOW;
    if lazy {
        flags |= rustix::mount::UnmountFlags::DETACH;
    }
    rustix::mount::unmount(target, flags).map_err(|e| {
        overlay_core::Error::io("unmount overlay", target, std::io::Error::from(e)).into()
    })
}

fn libc_einval() -> i32 {
    rustix::io::Errno::INVAL.raw_os_error()
}

/// Release a tmpfs upper left mounted by [`Mounted::keep`]: unmount it and remove its mount
/// point.
pub fn release_tmpfs(dir: impl AsRef<Path>) -> Result<()> {
    Tmpfs {
        dir: dir.as_ref().to_path_buf(),
        armed: true,
    }
    .release()
}

/// Release an image lower left mounted by [`Mounted::keep`] (see [`KeptMount::images`]):
/// unmount it, which also frees its auto-clearing loop device, and remove its mount point.
/// Call it after the overlay that uses it is unmounted.
/// Errors name the image file (found through the loop device), never the mount directory.
pub fn release_image(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let image = image_file_of(dir);
    let image = image.as_deref().unwrap_or(Path::new("an image lower"));
    let flags = rustix::mount::UnmountFlags::NOFOLLOW;
    match rustix::mount::unmount(dir, flags) {
        Ok(()) => {}
        // A FUSE image lower of a user without privileges: fusermount3 unmounts it.
        Err(rustix::io::Errno::PERM) => fuse::unmount_fuse(dir, false, true)?,
        Err(rustix::io::Errno::BUSY) => {
            rustix::mount::unmount(dir, flags | rustix::mount::UnmountFlags::DETACH).map_err(
                |e| overlay_core::Error::io("unmount image lower", image, std::io::Error::from(e)),
            )?
        }
        // Already unmounted (by hand, or by an earlier attempt): only the directory is left.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            return Err(overlay_core::Error::io(
                "unmount image lower",
                image,
                std::io::Error::from(e),
            )
            .into())
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(
                overlay_core::Error::io("remove the mount directory of image lower", image, e)
                    .into(),
            )
        }
        _ => Ok(()),
    }
}

/// The image file mounted on `dir`: the backing file of the loop device of the topmost loop
/// mount there (something else may be mounted over it).
pub fn image_file_of(dir: &Path) -> Option<PathBuf> {
    let mounts = overlay_core::mount::mountinfo::read_mountinfo().ok()?;
    mounts
        .iter()
        .rev()
        .filter(|m| m.mount_point == dir)
        .find_map(|m| {
            let dev = m.source.strip_prefix("/dev/")?;
            if !dev.starts_with("loop") || dev.contains('/') {
                return None;
            }
            let b = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file")).ok()?;
            Some(PathBuf::from(b.trim_end_matches('\n')))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_workdir_is_a_hidden_sibling() {
        assert_eq!(
            managed_workdir(Path::new("/srv/changes")),
            Some(PathBuf::from("/srv/.changes.ovl-work"))
        );
        assert_eq!(managed_workdir(Path::new("/")), None);
    }

    #[test]
    fn chosen_names_match_the_probe() {
        for (c, n) in [
            (Chosen::Kernel, "kernel"),
            (Chosen::KernelUserNamespace, "kernel-userns"),
            (Chosen::Fuse, "fuse"),
        ] {
            assert_eq!(c.to_string(), n);
            assert!(overlay_core::mount::probe().backend(n).is_some());
        }
    }
}
