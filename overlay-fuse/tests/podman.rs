//! ovl-fuse as podman's `mount_program` (where podman calls fuse-overlayfs today): podman's
//! overlay driver mounts every container's layers by running ovl-fuse. A container changes
//! files of its image (append to a hard-linked file, delete a directory, rename a lower
//! directory, chmod, a new file), is committed to a new image (podman writes whiteouts and
//! opaque directories of the upper into the layer), and a second container lists the
//! result. The same runs on podman's own kernel overlay mounts; both must print the same.
//!
//! Podman runs with private storage, run root and configuration (never the system's), as
//! root. The image's root file system is made here from the host's `dash` and a few
//! coreutils with their libraries.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What the containers run. The first changes the image; the second reads what the first
/// container's commit made. `stat -c` without inode numbers (they differ by design).
const CHANGE: &str = "cat /data/file; echo more >> /data/file; cat /data/link; \
    rm -r /data/gone; mv /data/dir /data/moved; chmod 600 /data/moved/x; \
    mkdir /data/new; echo new > /data/new/f; \
    stat -c '%n %h %a %s' /data/file /data/link /data/moved/x";
const READ: &str = "ls -a /data /data/moved /data/new; cat /data/file /data/link /data/new/f; \
    stat -c '%n %h %a %s' /data/file /data/link /data/moved/x /data/moved/y";

/// A minimal root file system: `sh` (dash), some coreutils and their libraries, and a data
/// tree with a hard link, a directory to delete and one to rename.
fn rootfs(dir: &Path) {
    for d in ["bin", "etc", "tmp", "data/gone", "data/dir"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    for b in ["dash", "cat", "ls", "mkdir", "rm", "mv", "chmod", "stat"] {
        let src = PathBuf::from("/bin").join(b);
        fs::copy(&src, dir.join("bin").join(b)).unwrap();
        let ldd = Command::new("ldd").arg(&src).output().unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let to = dir.join(lib.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            if !to.exists() {
                fs::copy(lib, &to).unwrap();
            }
        }
    }
    std::os::unix::fs::symlink("dash", dir.join("bin/sh")).unwrap();
    put(dir.join("data/file"), b"hello\n");
    fs::hard_link(dir.join("data/file"), dir.join("data/link")).unwrap();
    put(dir.join("data/gone/g"), b"g\n");
    put(dir.join("data/dir/x"), b"x\n");
    put(dir.join("data/dir/y"), b"y\n");
}

/// Podman with private storage under `t`: `mount_program` set, or podman's own kernel
/// overlay mounts.
struct Podman {
    mount_program: Option<String>,
    root: PathBuf,
    runroot: PathBuf,
    conf: PathBuf,
    storage: PathBuf,
}

impl Podman {
    fn new(t: &Path, mount_program: Option<&str>) -> Podman {
        let p = Podman {
            mount_program: mount_program.map(str::to_string),
            root: t.join("root"),
            runroot: t.join("runroot"),
            conf: t.join("containers.conf"),
            storage: t.join("storage.conf"),
        };
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            p.root.display(),
            p.runroot.display()
        );
        fs::write(&p.storage, storage).unwrap();
        // Limits podman may set under any sandbox the tests run in; no network.
        fs::write(
            &p.conf,
            "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n\
             [containers]\nnetns = \"none\"\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
        )
        .unwrap();
        p
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", &self.storage)
            .env("CONTAINERS_CONF", &self.conf)
            .env("XDG_CONFIG_HOME", self.root.with_file_name("xdg"))
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot);
        // On the command line: with --root given, podman 4.3 leaves storage.conf's options
        // out (its mount_program included).
        if let Some(m) = &self.mount_program {
            c.arg("--storage-opt")
                .arg(format!("overlay.mount_program={m}"));
        }
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("podman runs");
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Import the root file system, change it in a container, commit, read it back; and
    /// the type of the file system a container's root is.
    fn session(&self, rootfs_tar: &Path) -> (String, String, String) {
        self.run(&[
            "import",
            &rootfs_tar.display().to_string(),
            "ovl.test/mini:1",
        ]);
        let changed = self.run(&["run", "--name", "c1", "ovl.test/mini:1", "sh", "-c", CHANGE]);
        self.run(&["commit", "c1", "ovl.test/mini:2"]);
        let read = self.run(&["run", "--rm", "ovl.test/mini:2", "sh", "-c", READ]);
        let mounts = self.run(&["run", "--rm", "ovl.test/mini:2", "cat", "/proc/self/mounts"]);
        let root_type = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(1) == Some(&"/")).then(|| f[2].to_string())
            })
            .unwrap_or_default();
        (changed, read, root_type)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers, images, and every mount and daemon of the storage.
        let _ = self.cmd().args(["rm", "-a", "-f"]).output();
        let _ = self.cmd().args(["system", "reset", "-f"]).output();
        for m in mount_points() {
            if m.starts_with(&self.root) || m.starts_with(&self.runroot) {
                force_unmount(&m);
            }
        }
    }
}

#[test]
fn podman_mount_program_matches_kernel_overlay() {
    if !can_mount("podman_mount_program_matches_kernel_overlay") {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return skip(
            "podman_mount_program_matches_kernel_overlay",
            "needs podman (Debian package podman)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("rootfs");
    rootfs(&src);
    let tar = tmp.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let ovl_fuse = env!("CARGO_BIN_EXE_ovl-fuse");
    let ours = {
        let d = tmp.path().join("fuse");
        fs::create_dir(&d).unwrap();
        let p = Podman::new(&d, Some(ovl_fuse));
        p.session(&tar)
    };
    let kernel = {
        let d = tmp.path().join("kernel");
        fs::create_dir(&d).unwrap();
        let p = Podman::new(&d, None);
        p.session(&tar)
    };
    eprintln!("ovl-fuse: {ours:#?}");
    assert_eq!(
        ours.2, "fuse.ovl-fuse",
        "the containers' root is ovl-fuse's mount"
    );
    assert_eq!(kernel.2, "overlay");
    assert_eq!(
        (&ours.0, &ours.1),
        (&kernel.0, &kernel.1),
        "ovl-fuse as mount_program (left), kernel overlay (right)"
    );
    assert!(
        kernel.1.contains("moved") && !kernel.1.contains("gone"),
        "{kernel:?}"
    );
}
