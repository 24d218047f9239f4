//! A real non-root user for the tests (created once with useradd), and running `ovl` as that
//! user with a usable /dev/fuse.
#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{open_tempdir, ovl_bin, root_or_skip, skip_or_fail, stderr};

/// The user the tests create (once) and run `ovl` as.
pub const USER: &str = "ovl-rootless-test";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Everything the tests need to run `ovl` as [`USER`]: the binaries copied where the user
/// can run them, and a 0666 FUSE device node (bound over /dev/fuse when that is root-only).
pub struct AsUser {
    dir: tempfile::TempDir,
    /// The user's uid.
    pub uid: u32,
}

impl AsUser {
    /// `None` (after skip_or_fail) when something is missing.
    pub fn new() -> Option<AsUser> {
        if !root_or_skip("these tests need root to create a user and switch to it") {
            return None;
        }
        for tool in ["setpriv", "useradd", "unshare"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |o| !o.status.success())
            {
                skip_or_fail(&format!("{tool} (util-linux/passwd) is not installed"));
                return None;
            }
        }
        let uid = match create_user() {
            Ok(u) => u,
            Err(why) => {
                skip_or_fail(&why);
                return None;
            }
        };
        let fuse = ovl_bin().parent().unwrap().join("ovl-fuse");
        if !fuse.is_file() {
            skip_or_fail(&format!(
                "{} is not built (cargo build --workspace)",
                fuse.display()
            ));
            return None;
        }
        let dir = open_tempdir();
        for (from, name) in [(ovl_bin(), "ovl"), (fuse, "ovl-fuse")] {
            let to = dir.path().join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fuse"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(10, 229),
        )
        .expect("mknod a FUSE device node");
        std::fs::set_permissions(
            dir.path().join("fuse"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        Some(AsUser { dir, uid })
    }

    /// Scratch space the user owns.
    pub fn home(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        rustix::fs::chown(
            &p,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.uid)),
        )
        .unwrap();
        p
    }

    /// Run `ovl ARGS` as the user (stdin closed), with its own state directory.
    pub fn ovl(&self, args: &[&str]) -> Output {
        let bin = self.dir.path().join("ovl");
        let state = self.home("state");
        let fuse_node = self.dir.path().join("fuse");
        // Bind the 0666 node over /dev/fuse only where the real one is root-only.
        let bind = if dev_fuse_is_world_usable() {
            String::new()
        } else {
            format!("mount --bind '{}' /dev/fuse && ", s(&fuse_node))
        };
        let script =
            format!("{bind}exec setpriv --reuid={USER} --regid={USER} --init-groups -- \"$@\"");
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(&bin)
            .args(args)
            .env("OVL_STATE_DIR", state)
            .env("HOME", format!("/home/{USER}"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ovl as the test user")
    }
}

/// [`USER`]'s uid, creating the user (once per test process: the tests run in parallel).
fn create_user() -> Result<u32, String> {
    static UID: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
    UID.get_or_init(|| {
        if let Some(u) = user_uid() {
            return Ok(u);
        }
        let o = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", USER])
            .output()
            .map_err(|e| format!("useradd: {e}"))?;
        if !o.status.success() {
            return Err(format!("useradd {USER}: {}", stderr(&o)));
        }
        user_uid().ok_or_else(|| format!("{USER} does not exist after useradd"))
    })
    .clone()
}

fn user_uid() -> Option<u32> {
    let o = Command::new("id").args(["-u", USER]).output().ok()?;
    if !o.status.success() {
        return None;
    }
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

fn dev_fuse_is_world_usable() -> bool {
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.mode() & 0o006 == 0o006)
}
