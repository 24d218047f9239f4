//! The mounts handed to containerd, as data, and the choice between them.
//!
//! * No parent: a bind mount of the snapshot's own `fs/` (`rw`, or `ro` for a view).
//! * A view of one committed layer: a read-only bind mount of that layer.
//! * Otherwise an overlay: `overlay` (the kernel's), with containerd's options (`index=off`,
//!   `userxattr` in a user namespace, `workdir`, `upperdir`, `lowerdir` top-first), or
//!   `fuse3.ovl-fuse`, which containerd (and `mount(8)`) hand to `mount.fuse3`, which runs
//!   `ovl-fuse SOURCE TARGET -o OPTIONS` (fuse-overlayfs's command line).
//!
//! The kernel overlay is chosen when it can be mounted here and takes the chain: at most
//! [`KERNEL_MAX_LOWERS`] lowers, and an option string that fits a page once containerd has
//! made the lowers relative to their common directory (as its `mount` package does for long
//! strings). Otherwise FUSE. [`plan`] says which and why.

use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::store::{Kind, MountKind};

/// The kernel overlay stacks at most this many lower layers (`OVL_MAX_STACK`).
pub const KERNEL_MAX_LOWERS: usize = 500;

/// Label naming the mount chosen for an active or view snapshot (`bind`, `kernel`, `fuse`).
pub const LABEL_MOUNT: &str = "containerd.io/snapshot/ovl.mount";

/// Label with the reason for that choice.
pub const LABEL_MOUNT_REASON: &str = "containerd.io/snapshot/ovl.mount-reason";

/// The FUSE mount type: `mount.fuse3` runs the `ovl-fuse` program.
pub const FUSE_TYPE: &str = "fuse3.ovl-fuse";

/// One mount, as containerd's `types.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type (`bind`, `overlay`, `fuse3.ovl-fuse`).
    pub fstype: String,
    /// Source.
    pub source: String,
    /// Options, `mount(8)` style.
    pub options: Vec<String>,
}

fn page_size() -> usize {
    // The kernel copies at most one page of mount(2) data.
    rustix::param::page_size()
}

/// The `mount(2)` data containerd's `mount` package would pass for `options` (flags like
/// `ro` removed), with the lowers made relative to their common directory when the options
/// are long (`compactLowerdirOption`).
pub fn kernel_data_as_containerd_mounts(options: &[String]) -> String {
    containerd_mount_data(options).1
}

/// What containerd's `mount` package does with an overlay's `options`: the directory it
/// mounts from (when it made the lowers relative to it, for options near a page) and the
/// `mount(2)` data (flags like `ro` removed).
pub fn containerd_mount_data(options: &[String]) -> (Option<String>, String) {
    let mut chdir = None;
    const FLAGS: &[&str] = &[
        "async",
        "atime",
        "bind",
        "defaults",
        "dev",
        "diratime",
        "dirsync",
        "exec",
        "mand",
        "noatime",
        "nodev",
        "nodiratime",
        "noexec",
        "nomand",
        "norelatime",
        "nostrictatime",
        "nosuid",
        "rbind",
        "relatime",
        "remount",
        "ro",
        "rw",
        "strictatime",
        "suid",
        "sync",
    ];
    let size: usize = options.iter().map(String::len).sum();
    let mut opts: Vec<String> = options.to_vec();
    if size >= page_size() - 512 {
        if let Some(i) = opts.iter().position(|o| o.starts_with("lowerdir=")) {
            let value = opts[i]["lowerdir=".len()..].to_string();
            let dirs: Vec<&str> = value.split(':').collect();
            if dirs.len() > 1 {
                let min = dirs.iter().min().copied().unwrap_or("");
                let max = dirs.iter().max().copied().unwrap_or("");
                let lcp = min
                    .bytes()
                    .zip(max.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                let common = &min[..lcp];
                let common = match common.rfind('/') {
                    Some(0) | None => "",
                    Some(j) => &common[..j],
                };
                if !common.is_empty() {
                    let rel: Vec<&str> = dirs.iter().map(|d| &d[common.len() + 1..]).collect();
                    opts.remove(i);
                    opts.push(format!("lowerdir={}", rel.join(":")));
                    chdir = Some(common.to_string());
                }
            }
        }
    }
    opts.retain(|o| !FLAGS.contains(&o.as_str()) && o != "loop");
    (chdir, opts.join(","))
}

/// The layers of a snapshot: its own `fs/` (upper of an active snapshot) and its parents'.
struct Layers<'a> {
    layout: &'a Layout,
    kind: Kind,
    id: u64,
    /// Parent ids, nearest first.
    parents: &'a [u64],
}

impl Layers<'_> {
    fn lowerdir(&self) -> String {
        let v: Vec<String> = self
            .parents
            .iter()
            .map(|&p| self.layout.fs(p).to_string_lossy().into_owned())
            .collect();
        format!("lowerdir={}", v.join(":"))
    }

    fn upper_options(&self) -> Vec<String> {
        if self.kind == Kind::Active {
            vec![
                format!("workdir={}", self.layout.work(self.id).display()),
                format!("upperdir={}", self.layout.fs(self.id).display()),
            ]
        } else {
            Vec::new()
        }
    }

    fn kernel_options(&self, b: &Backends, userxattr: bool) -> Vec<String> {
        let mut o = Vec::new();
        if b.index_off {
            o.push("index=off".to_string());
        }
        if userxattr {
            o.push("userxattr".to_string());
        }
        o.extend(self.upper_options());
        o.push(self.lowerdir());
        o
    }
}

/// Decide how a new snapshot is mounted, and why.
pub fn plan(
    layout: &Layout,
    b: &Backends,
    kind: Kind,
    id: u64,
    parents: &[u64],
) -> Result<(MountKind, String)> {
    if parents.is_empty() {
        return Ok((
            MountKind::Bind,
            "no parent: a bind mount of the snapshot's own directory".into(),
        ));
    }
    if kind == Kind::View && parents.len() == 1 {
        return Ok((
            MountKind::Bind,
            "a view of one layer: a read-only bind mount of it".into(),
        ));
    }
    let layers = Layers {
        layout,
        kind,
        id,
        parents,
    };
    let why_not_kernel = match &b.kernel {
        Err(e) => Some(e.clone()),
        Ok(_) if parents.len() > KERNEL_MAX_LOWERS => Some(format!(
            "{} lower layers: the kernel overlay stacks at most {KERNEL_MAX_LOWERS}",
            parents.len()
        )),
        Ok(userxattr) => {
            let userxattr = *userxattr;
            let data = kernel_data_as_containerd_mounts(&layers.kernel_options(b, userxattr));
            (data.len() >= page_size()).then(|| {
                format!(
                    "the overlay options take {} bytes even with relative lowers, over the kernel's page of {}",
                    data.len(),
                    page_size()
                )
            })
        }
    };
    match (why_not_kernel, &b.fuse) {
        (None, _) => Ok((
            MountKind::Kernel,
            format!(
                "kernel overlay{}: {} lower layers",
                if b.kernel == Ok(true) {
                    " with userxattr"
                } else {
                    ""
                },
                parents.len()
            ),
        )),
        (Some(why), Ok(())) => Ok((MountKind::Fuse, format!("ovl-fuse, not the kernel: {why}"))),
        (Some(why), Err(fuse)) => Err(Error::FailedPrecondition(format!(
            "no backend can mount this snapshot: {why}; ovl-fuse: {fuse}"
        ))),
    }
}

/// The mounts of a snapshot mounted as `mk`.
pub fn mounts(
    layout: &Layout,
    b: &Backends,
    kind: Kind,
    id: u64,
    parents: &[u64],
    mk: MountKind,
) -> Vec<Mount> {
    let layers = Layers {
        layout,
        kind,
        id,
        parents,
    };
    match mk {
        MountKind::Bind => {
            let (src, ro) = match (kind, parents.first()) {
                (Kind::View, Some(&p)) if parents.len() == 1 => (layout.fs(p), true),
                _ => (layout.fs(id), kind == Kind::View),
            };
            vec![Mount {
                fstype: "bind".into(),
                source: src.to_string_lossy().into_owned(),
                options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
            }]
        }
        MountKind::Kernel => vec![Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: layers.kernel_options(b, b.kernel == Ok(true)),
        }],
        MountKind::Fuse => {
            let mut o = vec![layers.lowerdir()];
            o.extend(layers.upper_options().into_iter().rev());
            if kind == Kind::View {
                o.push("ro".into());
            }
            if b.privileged {
                // As the kernel overlay's mounts: device nodes and set-id bits of the image
                // work (ovl-fuse's own default is nodev,nosuid).
                o.push("dev".into());
                o.push("suid".into());
            }
            vec![Mount {
                fstype: FUSE_TYPE.into(),
                source: "ovl-fuse".into(),
                options: o,
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendChoice;

    fn backends(kernel: Result<bool, String>) -> Backends {
        Backends {
            choice: BackendChoice::Auto,
            kernel,
            fuse: Ok(()),
            index_off: true,
            privileged: true,
        }
    }

    #[test]
    fn long_lowerdirs_are_compacted_like_containerd() {
        let dirs: Vec<String> = (1..=200)
            .map(|i| format!("/var/lib/ovl-snapshotter/snapshots/{i}/fs"))
            .collect();
        let opts = vec![
            "index=off".to_string(),
            "workdir=/w".into(),
            format!("lowerdir={}", dirs.join(":")),
        ];
        let data = kernel_data_as_containerd_mounts(&opts);
        assert!(
            data.starts_with("index=off,workdir=/w,lowerdir=1/fs:2/fs:"),
            "{data}"
        );
        let short = vec!["ro".to_string(), "lowerdir=/a:/b".into()];
        assert_eq!(kernel_data_as_containerd_mounts(&short), "lowerdir=/a:/b");
    }

    #[test]
    fn chains_the_kernel_refuses_go_to_fuse() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::create(d.path()).unwrap();
        let b = backends(Ok(false));
        let few: Vec<u64> = (1..=128).rev().collect();
        assert_eq!(
            plan(&l, &b, Kind::Active, 200, &few).unwrap().0,
            MountKind::Kernel
        );
        let many: Vec<u64> = (1..=600).rev().collect();
        let (mk, why) = plan(&l, &b, Kind::Active, 700, &many).unwrap();
        assert_eq!(mk, MountKind::Fuse);
        assert!(why.contains("600 lower layers"), "{why}");
        let (mk, why) = plan(&l, &backends(Err("no".into())), Kind::View, 9, &few).unwrap();
        assert_eq!((mk, why.contains("no")), (MountKind::Fuse, true));
        assert_eq!(
            plan(&l, &b, Kind::View, 9, &[3]).unwrap().0,
            MountKind::Bind
        );
        assert_eq!(
            plan(&l, &b, Kind::Active, 9, &[]).unwrap().0,
            MountKind::Bind
        );
    }

    #[test]
    fn options_over_a_page_go_to_fuse() {
        // A root so long that upperdir= and workdir= alone fill a page: relative lowers
        // cannot help.
        let d = tempfile::tempdir().unwrap();
        let mut root = d.path().to_path_buf();
        while root.as_os_str().len() < page_size() / 2 {
            root.push("a".repeat(200));
        }
        let l = Layout::create(&root).unwrap();
        let (mk, why) = plan(&l, &backends(Ok(false)), Kind::Active, 3, &[2, 1]).unwrap();
        assert_eq!(mk, MountKind::Fuse);
        assert!(why.contains("over the kernel's page"), "{why}");
        // A view has no upper: its relative lowers fit.
        let (mk, _) = plan(&l, &backends(Ok(false)), Kind::View, 3, &[2, 1]).unwrap();
        assert_eq!(mk, MountKind::Kernel);
    }

    #[test]
    fn mounts_look_like_containerds_overlayfs() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::create(d.path()).unwrap();
        let b = backends(Ok(false));
        let m = mounts(&l, &b, Kind::Active, 3, &[2, 1], MountKind::Kernel);
        let r = l.snapshots();
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(
            m[0].options,
            vec![
                "index=off".to_string(),
                format!("workdir={}/3/work", r.display()),
                format!("upperdir={}/3/fs", r.display()),
                format!("lowerdir={0}/2/fs:{0}/1/fs", r.display()),
            ]
        );
        let v = mounts(&l, &b, Kind::View, 4, &[2], MountKind::Bind);
        assert_eq!(v[0].source, format!("{}/2/fs", r.display()));
        assert_eq!(v[0].options, vec!["ro", "rbind"]);
        let f = mounts(&l, &b, Kind::View, 4, &[2, 1], MountKind::Fuse);
        assert_eq!(f[0].fstype, FUSE_TYPE);
        assert!(f[0].options.contains(&"ro".to_string()));
    }
}
