//! Validate the on-disk format of an upper layer and its workdir without mounting: [`check`]
//! (what `ovl check` prints).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use overlay_core::XattrNamespace;
use rustix::fs::FileType;
use serde::Serialize;

use crate::error::Error;
use crate::layer_dir::{Entry, EntryKind, LayerDir};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; the kernel mounts and reads the layer as intended by its writer only
    /// with care.
    Warning,
    /// The kernel would misread or refuse the layers.
    Error,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Stable identifier (documented in `ovl check --help`).
    pub code: &'static str,
    /// The file concerned (a real path on disk).
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn ser_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The result of a check.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The upper checked.
    #[serde(serialize_with = "ser_path")]
    pub upper: PathBuf,
    /// The workdir checked, if any.
    #[serde(serialize_with = "ser_opt_path")]
    pub work: Option<PathBuf>,
    /// `trusted`, `user` or `null` when no overlay xattr tells.
    pub xattr_namespace: Option<&'static str>,
    /// All findings, in walk order.
    pub findings: Vec<Finding>,
    /// Number of errors.
    pub errors: usize,
    /// Number of warnings.
    pub warnings: usize,
}

fn ser_opt_path<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

impl Report {
    /// The exit status: 0 clean, 3 warnings only, 4 errors.
    pub fn exit_code(&self) -> i32 {
        if self.errors > 0 {
            4
        } else if self.warnings > 0 {
            3
        } else {
            0
        }
    }
}

/// Which overlay xattr namespace the upper is meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrChoice {
    /// Whichever namespace the layer uses; both at once is an error.
    #[default]
    Auto,
    /// `trusted.overlay.*` (privileged stacks).
    Trusted,
    /// `user.overlay.*` (unprivileged stacks, `userxattr`).
    User,
}

/// One private overlay xattr seen, for the namespace verdict at the end.
struct PrivateXattr {
    path: PathBuf,
    trusted: bool,
    name: String,
}

struct Checker {
    findings: Vec<Finding>,
    private: Vec<PrivateXattr>,
}

impl Checker {
    fn add(&mut self, severity: Severity, code: &'static str, path: &Path, message: String) {
        self.findings.push(Finding {
            severity,
            code,
            path: path.to_path_buf(),
            message,
        });
    }

    /// Look at the xattrs of one entry; returns true when it is marked opaque (`y`).
    fn xattrs(
        &mut self,
        dir: &LayerDir,
        name: Option<&std::ffi::OsStr>,
        path: &Path,
        is_dir: bool,
    ) -> Result<bool, Error> {
        let mut opaque = false;
        for (x, value) in dir.xattrs(name)? {
            let (trusted, suffix) = if let Some(s) =
                x.strip_prefix(XattrNamespace::Trusted.prefix())
            {
                (true, s)
            } else if let Some(s) = x.strip_prefix(XattrNamespace::User.prefix()) {
                (false, s)
            } else {
                if x.starts_with("user.fuseoverlayfs.") {
                    self.add(
                        Severity::Warning,
                        "fuse-overlayfs-xattr",
                        path,
                        format!("{x} is fuse-overlayfs's private xattr; the kernel overlay and ovl ignore it"),
                    );
                }
                continue;
            };
            if suffix.starts_with("overlay.") {
                // An escaped user xattr (nested overlays): data, not format.
                continue;
            }
            self.private.push(PrivateXattr {
                path: path.to_path_buf(),
                trusted,
                name: x.clone(),
            });
            match suffix {
                "opaque" => {
                    if !is_dir {
                        self.add(
                            Severity::Error,
                            "opaque-not-dir",
                            path,
                            format!("{x} on something that is not a directory"),
                        );
                    } else if value == b"y" {
                        opaque = true;
                    } else if value == b"x" {
                        self.add(
                            Severity::Warning,
                            "opaque-value",
                            path,
                            format!("{x}=x marks xwhiteouts, which the kernel honours in lower layers only"),
                        );
                    } else {
                        self.add(
                            Severity::Warning,
                            "opaque-value",
                            path,
                            format!(
                                "{x}={:?} is not `y`; the kernel treats the directory as not opaque",
                                String::from_utf8_lossy(&value)
                            ),
                        );
                    }
                }
                "whiteout" => self.add(
                    Severity::Warning,
                    "xwhiteout-in-upper",
                    path,
                    format!("{x} (an xwhiteout) is honoured in lower layers only, not in an upper"),
                ),
                "redirect" => self.add(
                    Severity::Warning,
                    "redirect",
                    path,
                    format!(
                        "renamed directory ({x}={:?}); mount with redirect_dir=on or follow, or its lower content is missing",
                        String::from_utf8_lossy(&value)
                    ),
                ),
                "metacopy" => self.add(
                    Severity::Warning,
                    "metacopy",
                    path,
                    format!("metadata-only copy-up ({x}); mount with metacopy=on, or the file reads empty"),
                ),
                _ => {}
            }
        }
        Ok(opaque)
    }

    /// Check every entry below `root`, depth first. The directories on the way are kept on
    /// a stack on the heap, not in nested calls: an upper's depth is its writer's choice.
    fn walk(&mut self, root: &LayerDir, in_opaque: bool) -> Result<(), Error> {
        type Frame = (std::vec::IntoIter<Entry>, Option<LayerDir>, bool);
        let mut stack: Vec<Frame> = vec![(root.entries()?.into_iter(), None, in_opaque)];
        while let Some((entries, own, in_opaque)) = stack.last_mut() {
            let in_opaque = *in_opaque;
            let Some(e) = entries.next() else {
                stack.pop();
                continue;
            };
            let dir = own.as_ref().unwrap_or(root);
            let mut descend = None;
            let path = dir.path().join(&e.name);
            let name = e.name.as_bytes();
            let wh_name = name.starts_with(overlay_core::format::AUFS_WHITEOUT_PREFIX);
            match e.kind() {
                EntryKind::Whiteout => {
                    if in_opaque {
                        self.add(
                            Severity::Warning,
                            "whiteout-in-opaque",
                            &path,
                            "whiteout inside an opaque directory is redundant (the directory already hides all lower entries)".into(),
                        );
                    }
                    if wh_name {
                        self.add(
                            Severity::Warning,
                            "whiteout-named-wh",
                            &path,
                            format!(
                                "a whiteout named {}: it hides a lower entry of that name, not {}",
                                e.name.to_string_lossy(),
                                String::from_utf8_lossy(&name[4..])
                            ),
                        );
                    }
                    self.xattrs(dir, Some(&e.name), &path, false)?;
                }
                EntryKind::Dir => {
                    let opaque = self.xattrs(dir, Some(&e.name), &path, true)?;
                    if wh_name {
                        self.add(
                            Severity::Warning,
                            "aufs-whiteout",
                            &path,
                            "a .wh.* directory is AUFS metadata; the kernel overlay shows it as a plain directory".into(),
                        );
                    }
                    let sub = dir.open_child(&e.name)?;
                    descend = Some((sub.entries()?.into_iter(), Some(sub), in_opaque || opaque));
                }
                EntryKind::Other => {
                    let ft = e.file_type();
                    if wh_name && ft == FileType::CharacterDevice {
                        self.add(
                            Severity::Error,
                            "whiteout-device",
                            &path,
                            format!(
                                "character device {}:{} named like a whiteout; a whiteout is a character device 0:0 named like the entry it hides",
                                rustix::fs::major(e.stat.st_rdev),
                                rustix::fs::minor(e.stat.st_rdev)
                            ),
                        );
                    } else if name == overlay_core::format::AUFS_OPAQUE_MARKER {
                        self.add(
                            Severity::Warning,
                            "aufs-opaque",
                            &path,
                            "AUFS/fuse-overlayfs opaque marker; the kernel overlay ignores it (mark the directory with overlay.opaque=y)".into(),
                        );
                    } else if wh_name {
                        self.add(
                            Severity::Warning,
                            "aufs-whiteout",
                            &path,
                            format!(
                                "AUFS/OCI whiteout file; the kernel overlay shows it as a plain file and does not hide {} (use a character device 0:0)",
                                String::from_utf8_lossy(&name[4..])
                            ),
                        );
                    }
                    self.xattrs(dir, Some(&e.name), &path, false)?;
                }
            }
            if let Some(frame) = descend {
                stack.push(frame);
            }
        }
        Ok(())
    }

    /// Decide the namespace and flag the xattrs of the other one.
    fn namespace_verdict(&mut self, want: XattrChoice) -> Option<&'static str> {
        let trusted = self.private.iter().filter(|p| p.trusted).count();
        let user = self.private.len() - trusted;
        let ns_trusted = match want {
            XattrChoice::Trusted => true,
            XattrChoice::User => false,
            XattrChoice::Auto if trusted == 0 && user == 0 => return None,
            XattrChoice::Auto => trusted >= user,
        };
        let mixed = trusted > 0 && user > 0;
        let private = std::mem::take(&mut self.private);
        for p in private.iter().filter(|p| p.trusted != ns_trusted) {
            let (stack, why) = if ns_trusted {
                (
                    "trusted.overlay.*",
                    "the kernel reads user.overlay.* only with userxattr (unprivileged stacks)",
                )
            } else {
                (
                    "user.overlay.*",
                    "an unprivileged (userxattr) mount ignores trusted.overlay.*",
                )
            };
            let lead = if mixed && want == XattrChoice::Auto {
                "both overlay xattr namespaces are used in this layer"
            } else {
                "wrong overlay xattr namespace"
            };
            self.add(
                Severity::Error,
                "xattr-namespace",
                &p.path,
                format!("{lead}: {} on a {stack} stack; {why}", p.name),
            );
        }
        Some(if ns_trusted { "trusted" } else { "user" })
    }
}

/// The managed workdir of `upper`: `.NAME.ovl-work` next to it.
pub fn managed_workdir(upper: &Path) -> Option<PathBuf> {
    let name = upper.file_name()?;
    let mut n = OsString::from(".");
    n.push(name);
    n.push(".ovl-work");
    Some(upper.with_file_name(n))
}

fn check_work(c: &mut Checker, upper: &LayerDir, work: &Path) -> Result<(), Error> {
    let w = LayerDir::open_root(work)?;
    let (us, ws) = (upper.stat()?, w.stat()?);
    if us.st_dev != ws.st_dev {
        c.add(
            Severity::Error,
            "work-placement",
            work,
            format!(
                "workdir is on another filesystem than the upper {}",
                upper.path().display()
            ),
        );
    }
    let cu = std::fs::canonicalize(upper.path())
        .map_err(|e| Error::io(upper.path(), "cannot resolve", e))?;
    let cw = std::fs::canonicalize(work).map_err(|e| Error::io(work, "cannot resolve", e))?;
    if cu.starts_with(&cw) || cw.starts_with(&cu) {
        c.add(
            Severity::Error,
            "work-placement",
            work,
            format!("workdir and upper {} are nested", upper.path().display()),
        );
        return Ok(());
    }
    for e in w.entries()? {
        let path = work.join(&e.name);
        let is_dir = e.kind() == EntryKind::Dir;
        match e.name.as_bytes() {
            b"work" if is_dir => {
                for s in w.open_child(&e.name)?.entries()? {
                    // The kernel keeps one whiteout there to hard-link new whiteouts to.
                    if s.kind() == EntryKind::Whiteout {
                        continue;
                    }
                    c.add(
                        Severity::Warning,
                        "work-stray",
                        &path.join(&s.name),
                        "left in work/work by an interrupted copy-up or rename (the kernel removes it at the next mount)".into(),
                    );
                }
            }
            b"index" if is_dir => {}
            b"incompat" if is_dir => {
                for s in w.open_child(&e.name)?.entries()? {
                    if s.name.as_bytes() == b"volatile" {
                        c.add(
                            Severity::Error,
                            "work-volatile",
                            &path.join(&s.name),
                            "a volatile mount of this upper was not cleanly unmounted; the kernel refuses to mount it again, the upper may be inconsistent".into(),
                        );
                    } else {
                        c.add(
                            Severity::Error,
                            "work-foreign",
                            &path.join(&s.name),
                            "unknown incompatible feature marker".into(),
                        );
                    }
                }
            }
            _ => c.add(
                Severity::Error,
                "work-foreign",
                &path,
                "not the overlay's own (a workdir holds only work/, index/ and incompat/)".into(),
            ),
        }
    }
    Ok(())
}

/// Check `upper` (and `work`, or the managed workdir `.NAME.ovl-work` next to the upper if it
/// exists) for what the kernel would misread or refuse; the namespace is detected.
///
/// ```no_run
/// let report = overlay_layers::check("/srv/upper", None::<&str>)?;
/// for f in &report.findings {
///     println!("{:?} {}: {} [{}]", f.severity, f.path.display(), f.message, f.code);
/// }
/// # Ok::<(), overlay_layers::Error>(())
/// ```
pub fn check(upper: impl AsRef<Path>, work: Option<impl AsRef<Path>>) -> Result<Report, Error> {
    check_with(
        upper.as_ref(),
        work.as_ref().map(|w| w.as_ref()),
        XattrChoice::Auto,
    )
}

/// [`check`] with the xattr namespace given.
pub fn check_with(upper: &Path, work: Option<&Path>, want: XattrChoice) -> Result<Report, Error> {
    let root = LayerDir::open_root(upper)?;
    let mut c = Checker {
        findings: Vec::new(),
        private: Vec::new(),
    };
    if root.fs_type()? == overlay_core::stack::OVERLAYFS_SUPER_MAGIC {
        c.add(
            Severity::Error,
            "upper-on-overlay",
            upper,
            "the upper directory is on an overlay filesystem, which the kernel refuses as an upper"
                .into(),
        );
    }
    if let Ok(canon) = std::fs::canonicalize(upper) {
        if let Ok(mounts) = overlay_core::mount::mountinfo::read_mountinfo() {
            for m in mounts.iter().filter(|m| m.fstype == "overlay") {
                if m.overlay_upper().as_deref() == Some(&canon) {
                    c.add(
                        Severity::Warning,
                        "upper-mounted",
                        upper,
                        format!(
                            "in use by the overlay mounted on {}; results may change while it runs",
                            m.mount_point.display()
                        ),
                    );
                }
            }
        }
    }
    let root_opaque = c.xattrs(&root, None, upper, true)?;
    c.walk(&root, root_opaque)?;
    let ns = c.namespace_verdict(want);
    let work = match work {
        Some(w) => Some(w.to_path_buf()),
        None => managed_workdir(upper).filter(|w| w.is_dir()),
    };
    if let Some(w) = &work {
        check_work(&mut c, &root, w)?;
    }
    let errors = c
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    Ok(Report {
        upper: upper.to_path_buf(),
        warnings: c.findings.len() - errors,
        errors,
        work,
        xattr_namespace: ns,
        findings: c.findings,
    })
}
