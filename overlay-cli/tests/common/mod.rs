//! Helpers shared by the end-to-end tests of `ovl`.
#![allow(dead_code)]

pub mod user;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built `ovl` binary.
pub fn ovl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ovl"))
}

/// Run `ovl` with `args`, capturing its output.
pub fn ovl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    ovl_command(args).output().expect("run ovl")
}

/// Run `ovl` with `args` and a private state directory, so tests do not see each other's
/// mount records.
pub fn ovl_with_state<I, S>(state: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    ovl_command(args)
        .env("OVL_STATE_DIR", state)
        .output()
        .expect("run ovl")
}

fn ovl_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(ovl_bin());
    c.args(args).env_remove("RUST_LOG");
    c
}

/// stdout as a String.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a String.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A test that cannot do what it needs: fail under CI=true, skip (with a message) otherwise.
/// Returns normally only when skipping is allowed; the caller then returns.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cannot run this test under CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// True when running as root; otherwise fails under CI=true or skips, saying `why` root is
/// needed.
pub fn root_or_skip(why: &str) -> bool {
    if !is_root() {
        skip_or_fail(why);
        return false;
    }
    true
}

/// A temp dir everybody can enter (tests that run commands as another user need that).
pub fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("ovl-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// Create directories (and parents) under `root`.
pub fn mkdirs(root: &Path, rels: &[&str]) {
    for r in rels {
        std::fs::create_dir_all(root.join(r)).unwrap();
    }
}

/// Write files under `root`, creating parents.
pub fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// True when `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    overlay_core::mount::mountinfo::is_mount_point(&canon).unwrap_or(false)
}

/// A kernel overlay mounted by the test itself (not by ovl); unmounted on drop, also when
/// the test panics.
pub struct KernelOverlay {
    target: PathBuf,
}

impl KernelOverlay {
    /// Mount `lowers` (bottom-first) + upper/work on `target`; `extra` kernel options.
    pub fn mount(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        target: &Path,
        extra: &str,
    ) -> Result<Self, String> {
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            std::ffi::CString::new(opts).unwrap().as_c_str(),
        )
        .map_err(|e| format!("mount overlay on {}: {e}", target.display()))?;
        Ok(KernelOverlay {
            target: target.to_path_buf(),
        })
    }
}

impl KernelOverlay {
    /// Mount the `lowers` (names under `root`, bottom-first) with `root/upper` and
    /// `root/work` on `root/merged`, creating the last three; `extra` kernel options.
    pub fn mount_in(root: &Path, lowers: &[&str], extra: &str) -> Result<Self, String> {
        mkdirs(root, &["upper", "work", "merged"]);
        let lowers: Vec<PathBuf> = lowers.iter().map(|l| root.join(l)).collect();
        let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        KernelOverlay::mount(
            &lowers,
            &root.join("upper"),
            &root.join("work"),
            &root.join("merged"),
            extra,
        )
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::empty()) {
            eprintln!("unmount {}: {e}; detaching", self.target.display());
            let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Lines of stdout, sorted as printed.
pub fn lines(o: &Output) -> Vec<String> {
    stdout(o).lines().map(str::to_string).collect()
}

/// Make a kernel whiteout (character device 0/0) at `path`.
pub fn mknod_whiteout(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o000),
        0,
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// Set an xattr (no symlink following).
pub fn setxattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// True when running as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
