//! ovl-fuse as podman's `mount_program` (where podman calls fuse-overlayfs today): podman's
//! overlay driver mounts every container's layers by running ovl-fuse. A container changes
//! files of its image (append to a hard-linked file, delete a directory, rename a lower
//! directory, chmod, a new file), is committed to a new image (podman writes whiteouts and
//! opaque directories of the upper into the layer), and a second container lists the
//! result. The same runs on podman's own kernel overlay mounts; both must print the same.
//!
//! Podman runs with private storage, run root and configuration (never the system's), as
//! root and rootless (a test user of its own). The image's root file system is made here from the host's `dash` and a few
//! coreutils with their libraries.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
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
    /// The run root: podman's overlay driver refuses one of over 50 bytes, so it is a
    /// private directory under /run rather than under TMPDIR.
    _runroot_dir: tempfile::TempDir,
    mount_program: Option<String>,
    /// Rootless: run podman as this user, in a private mount namespace where `/dev/fuse`
    /// is a 0666 node (bound over the real one), with its own runtime directory.
    user: Option<RootlessUser>,
    root: PathBuf,
    runroot: PathBuf,
    conf: PathBuf,
    storage: PathBuf,
}

impl Podman {
    fn new(t: &Path, mount_program: Option<&str>, user: Option<RootlessUser>) -> Podman {
        let runroot_dir = tempfile::Builder::new()
            .prefix("ovl-podman.")
            .tempdir_in("/run")
            .unwrap();
        let p = Podman {
            runroot: runroot_dir.path().to_path_buf(),
            _runroot_dir: runroot_dir,
            mount_program: mount_program.map(str::to_string),
            user,
            root: t.join("root"),
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
        let mut c = match &self.user {
            None => Command::new("podman"),
            Some(u) => u.command("podman"),
        };
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
        if let Some(u) = &self.user {
            // Rootless podman's pause process, and any ovl-fuse it left.
            let _ = Command::new("pkill").args(["-KILL", "-u", u.name]).status();
        }
        for m in mount_points() {
            if m.starts_with(&self.root) || m.starts_with(&self.runroot) {
                force_unmount(&m);
            }
        }
    }
}

/// A user of its own for rootless podman (created once with useradd, which gives it a
/// subordinate id range), and the runtime pieces it needs under a directory it can reach.
struct RootlessUser {
    name: &'static str,
    /// Holds the 0666 FUSE node and the user's runtime and home directories.
    dir: PathBuf,
}

impl RootlessUser {
    const NAME: &'static str = "ovl-podman-test";

    /// Whether rootless podman can run here: the tools, and the user with a subordinate id
    /// range (created with useradd if missing). Otherwise `skip`s.
    fn prepare(test: &str) -> bool {
        for tool in ["useradd", "setpriv", "unshare", "newuidmap", "pkill"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                skip(test, &format!("needs {tool} (uidmap for newuidmap)"));
                return false;
            }
        }
        let exists = Command::new("id")
            .arg(Self::NAME)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let o = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/sh", Self::NAME])
                .output()
                .unwrap();
            assert!(o.status.success(), "useradd: {o:?}");
        }
        let subuid = fs::read_to_string("/etc/subuid").unwrap_or_default();
        if !subuid
            .lines()
            .any(|l| l.starts_with(&format!("{}:", Self::NAME)))
        {
            skip(test, "the test user got no /etc/subuid range from useradd");
            return false;
        }
        true
    }

    /// The user's FUSE node, home and runtime directory under `dir` (after [`Self::prepare`]).
    fn in_dir(dir: &Path) -> RootlessUser {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("fuse"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(10, 229),
        )
        .unwrap();
        fs::set_permissions(dir.join("fuse"), fs::Permissions::from_mode(0o666)).unwrap();
        let u = RootlessUser {
            name: Self::NAME,
            dir: dir.to_path_buf(),
        };
        for d in ["home", "xdg"] {
            fs::create_dir(dir.join(d)).unwrap();
            fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o700)).unwrap();
            u.own(&dir.join(d));
        }
        u
    }

    /// `program` as the user, in a private mount namespace with the 0666 FUSE node.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount --bind '{}' /dev/fuse && exec setpriv --reuid={1} --regid={1} --init-groups -- \"$@\"",
                self.dir.join("fuse").display(),
                self.name
            ))
            .arg("sh")
            .arg(program)
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("xdg"))
            .current_dir(&self.dir);
        c
    }

    /// Give the user `p` (recursively).
    fn own(&self, p: &Path) {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", self.name))
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// Build the image's root file system and tar it under `t`.
fn rootfs_tar(t: &Path) -> PathBuf {
    let src = t.join("rootfs");
    rootfs(&src);
    let tar = t.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    tar
}

/// The same session on ovl-fuse (`mount_program`) and on podman's kernel overlay; both
/// must print the same.
fn compare(t: &Path, tar: &Path, ovl_fuse: &str, user: impl Fn(&Path) -> Option<RootlessUser>) {
    let mut seen = Vec::new();
    for (name, program) in [("fuse", Some(ovl_fuse)), ("kernel", None)] {
        let d = t.join(name);
        fs::create_dir(&d).unwrap();
        let p = Podman::new(&d, program, user(&d));
        if let Some(u) = &p.user {
            u.own(&d);
            u.own(&p.runroot);
        }
        seen.push(p.session(tar));
    }
    let (ours, kernel) = (&seen[0], &seen[1]);
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

/// Rootless podman (its own user namespace over the test user's subordinate ids) with
/// ovl-fuse as `mount_program`, where fuse-overlayfs serves most rootless podman users
/// today; compared with rootless podman on the kernel overlay.
#[test]
fn rootless_podman_mount_program_matches_kernel_overlay() {
    const TEST: &str = "rootless_podman_mount_program_matches_kernel_overlay";
    if !can_mount(TEST) {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return skip(TEST, "needs podman (Debian package podman)");
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tar = rootfs_tar(tmp.path());
    // ovl-fuse where the user can run it.
    let bin = tmp.path().join("ovl-fuse");
    fs::copy(env!("CARGO_BIN_EXE_ovl-fuse"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    if !RootlessUser::prepare(TEST) {
        return;
    }
    compare(tmp.path(), &tar, &bin.display().to_string(), |d| {
        Some(RootlessUser::in_dir(d))
    });
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
    let tar = rootfs_tar(tmp.path());
    compare(tmp.path(), &tar, env!("CARGO_BIN_EXE_ovl-fuse"), |_| None);
}
