//! Shared helpers of the snapshotter's tests: the daemon under test on its own socket and
//! root, a gRPC client of it, containerd's way of mounting what it returns, tree manifests to
//! compare mounted trees, a private containerd, and an unprivileged user+mount namespace to
//! run all of it rootless.
#![allow(dead_code)]
// The client returns tonic::Status as the gRPC calls do.
#![allow(clippy::result_large_err)]

pub mod oci;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1 as api;
use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::types::Mount;
use tonic::transport::{Channel, Endpoint, Uri};

/// The snapshotter binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ovl-snapshotter");

/// The uid the rootless tests run as (outside their user namespace).
pub const ROOTLESS_UID: u32 = 65534;

/// `test` cannot run here because of `why`: under CI=true the test fails, else this prints
/// that it is skipped and the caller returns.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("{test}: SKIPPED ({why})");
}

/// True when this test can mount (root, /dev/fuse, ovl-fuse built). Otherwise skips (fails
/// under CI=true).
pub fn can_mount(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        skip(test, "needs root to mount");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(test, "needs /dev/fuse");
        return false;
    }
    if ovl_fuse_dir().is_none() {
        skip(
            test,
            "needs the ovl-fuse binary next to the test's target dir (cargo build -p overlay-fuse)",
        );
        return false;
    }
    true
}

/// True when containerd and ctr are installed (else skip; fail under CI=true).
pub fn have_containerd(test: &str) -> bool {
    for p in ["containerd", "ctr"] {
        if which(p).is_none() {
            skip(test, &format!("needs {p} (Debian package containerd)"));
            return false;
        }
    }
    true
}

/// The path of program `name` in PATH or the sbin directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The directory holding the `ovl-fuse` binary of this build (target/debug).
pub fn ovl_fuse_dir() -> Option<PathBuf> {
    let exe = Path::new(BIN);
    exe.parent()
        .filter(|d| d.join("ovl-fuse").is_file())
        .map(Path::to_path_buf)
}

/// PATH with this build's `ovl-fuse` first (mount.fuse3 runs it from PATH).
pub fn path_env() -> OsString {
    let mut dirs = vec![ovl_fuse_dir().unwrap_or_default()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(d.into());
    }
    std::env::join_paths(dirs).unwrap()
}

/// A scratch directory for one test, under TMPDIR; for rootless tests owned by the
/// unprivileged user.
pub fn scratch(owner: Option<u32>) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("snap").tempdir().unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(d.path(), Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

/// Where commands run: here, or inside a user and mount namespace of an unprivileged user
/// (the rootless setup: `unshare -Urm` as that user, entered with `nsenter`).
#[derive(Debug, Clone)]
pub enum Ns {
    /// The test's own namespaces, as root.
    Host,
    /// A user+mount namespace owned by `uid`, held open by process `holder`.
    User {
        /// The holding process (`sleep`).
        holder: i32,
        /// The unprivileged user outside.
        uid: u32,
    },
}

impl Ns {
    /// A command running `prog` in these namespaces, with PATH finding `ovl-fuse`.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = match self {
            Ns::Host => Command::new(prog),
            Ns::User { holder, uid } => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    "--".into(),
                    "nsenter".into(),
                    format!("--target={holder}"),
                    "--user".into(),
                    "--mount".into(),
                    "--preserve-credentials".into(),
                    "--".into(),
                ]);
                c.arg(prog);
                c
            }
        };
        c.env("PATH", path_env());
        c.stdin(Stdio::null());
        c
    }

    /// Run a command to completion; panics with its output when it fails.
    pub fn run(&self, prog: &str, args: &[&str]) -> String {
        let out = self.command(prog).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when this is the rootless namespace.
    pub fn rootless(&self) -> bool {
        matches!(self, Ns::User { .. })
    }
}

/// The process holding a rootless user+mount namespace open; killed on drop.
pub struct UserNs {
    child: Child,
    /// The namespace to run commands in.
    pub ns: Ns,
    /// Holds the 0666 FUSE node bound over /dev/fuse inside the namespace.
    _node_dir: tempfile::TempDir,
}

impl UserNs {
    /// `unshare -Urm` as `uid`, or `None` (with the reason) when that fails here.
    pub fn new(uid: u32) -> Result<UserNs, String> {
        // Where /dev/fuse is root-only (0600 on this machine; a fresh Debian has 0666), a
        // 0666 node of the same device is bound over it in a mount namespace of the test's
        // own, which the user's namespace is then made in: nothing changes for the rest of
        // the machine.
        let node_dir = tempfile::Builder::new()
            .prefix("devfuse")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .map_err(|e| format!("tempdir for a FUSE node: {e}"))?;
        let node = node_dir.path().join("fuse");
        let bind = if dev_fuse_is_world_usable() {
            String::new()
        } else {
            format!(
                "mknod -m 0666 '{0}' c 10 229 && mount --bind '{0}' /dev/fuse && ",
                node.display()
            )
        };
        let script = format!(
            "{bind}exec setpriv --reuid={uid} --regid={uid} --clear-groups -- \
             unshare --user --map-root-user --mount --propagation=private -- sleep infinity"
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare/setpriv: {e}"))?;
        let pid = child.id() as i32;
        // Wait until the process runs `sleep` in its own user namespace.
        let own = std::fs::read_link("/proc/self/ns/user").ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if ns.is_some() && ns != own && comm.trim() == "sleep" {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("unshare -Urm as uid {uid} exited: {st}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("unshare -Urm did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(UserNs {
            child,
            ns: Ns::User { holder: pid, uid },
            _node_dir: node_dir,
        })
    }
}

impl Drop for UserNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_socket(sock: &Path, child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited ({st}) before serving {}:\n{}",
                sock.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not serve {} within 30 s:\n{}",
            sock.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The snapshotter under test, serving `dir/ovl.sock` with root `dir/root`; stopped on drop.
pub struct Snapshotterd {
    child: Child,
    ns: Ns,
    /// The socket.
    pub sock: PathBuf,
    /// The root directory.
    pub root: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    backend: String,
}

impl Snapshotterd {
    /// Start it in `ns` under `dir` with `--backend backend`.
    pub fn start(ns: &Ns, dir: &Path, backend: &str) -> Snapshotterd {
        let mut s = Snapshotterd {
            child: Command::new("true").spawn().unwrap(),
            ns: ns.clone(),
            sock: dir.join("ovl.sock"),
            root: dir.join("root"),
            log: dir.join("ovl-snapshotter.log"),
            backend: backend.into(),
        };
        let _ = s.child.wait();
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = self.ns.command(BIN);
        c.arg("--address")
            .arg(&self.sock)
            .arg("--root")
            .arg(&self.root)
            .arg("--backend")
            .arg(&self.backend)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = c.spawn().unwrap();
        wait_for_socket(&self.sock, &mut self.child, &self.log, "ovl-snapshotter");
    }

    /// `kill -9` it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again (after [`Snapshotterd::kill9`]).
    pub fn restart(&mut self) {
        stop(&mut self.child);
        self.spawn();
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of it.
    pub fn client(&self) -> Client {
        Client::connect(&self.sock)
    }
}

impl Drop for Snapshotterd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A blocking gRPC client of a snapshots service.
pub struct Client {
    rt: tokio::runtime::Runtime,
    c: SnapshotsClient<Channel>,
}

/// Labels as the API takes them.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The label containerd's testsuite puts on every snapshot.
pub fn gc_root() -> HashMap<String, String> {
    labels(&[("containerd.io/gc.root", "2026-01-01T00:00:00Z")])
}

impl Client {
    /// Connect to the socket.
    pub fn connect(sock: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sock = sock.to_path_buf();
        let ch = rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        tokio::net::UnixStream::connect(sock.clone())
                    })),
            )
            .unwrap();
        Client {
            rt,
            c: SnapshotsClient::new(ch),
        }
    }

    /// `Prepare`.
    pub fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, tonic::Status> {
        let req = api::PrepareSnapshotRequest {
            snapshotter: "ovl".into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        self.rt
            .block_on(self.c.prepare(req))
            .map(|r| r.into_inner().mounts)
    }

    /// `View`.
    pub fn view(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, tonic::Status> {
        let req = api::ViewSnapshotRequest {
            snapshotter: "ovl".into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        self.rt
            .block_on(self.c.view(req))
            .map(|r| r.into_inner().mounts)
    }

    /// `Mounts`.
    pub fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, tonic::Status> {
        let req = api::MountsRequest {
            snapshotter: "ovl".into(),
            key: key.into(),
        };
        self.rt
            .block_on(self.c.mounts(req))
            .map(|r| r.into_inner().mounts)
    }

    /// `Commit`.
    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        let req = api::CommitSnapshotRequest {
            snapshotter: "ovl".into(),
            name: name.into(),
            key: key.into(),
            labels,
        };
        self.rt.block_on(self.c.commit(req)).map(drop)
    }

    /// `Remove`.
    pub fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let req = api::RemoveSnapshotRequest {
            snapshotter: "ovl".into(),
            key: key.into(),
        };
        self.rt.block_on(self.c.remove(req)).map(drop)
    }

    /// `Stat`.
    pub fn stat(&mut self, key: &str) -> Result<api::Info, tonic::Status> {
        let req = api::StatSnapshotRequest {
            snapshotter: "ovl".into(),
            key: key.into(),
        };
        self.rt
            .block_on(self.c.stat(req))
            .map(|r| r.into_inner().info.unwrap())
    }

    /// `Update` with field paths (none: replace all labels).
    pub fn update(&mut self, info: api::Info, paths: &[&str]) -> Result<api::Info, tonic::Status> {
        let req = api::UpdateSnapshotRequest {
            snapshotter: "ovl".into(),
            info: Some(info),
            update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        self.rt
            .block_on(self.c.update(req))
            .map(|r| r.into_inner().info.unwrap())
    }

    /// `Usage`: (size, inodes).
    pub fn usage(&mut self, key: &str) -> Result<(i64, i64), tonic::Status> {
        let req = api::UsageRequest {
            snapshotter: "ovl".into(),
            key: key.into(),
        };
        self.rt
            .block_on(self.c.usage(req))
            .map(|r| r.into_inner())
            .map(|u| (u.size, u.inodes))
    }

    /// `List` (Walk) with filters.
    pub fn list(&mut self, filters: &[&str]) -> Result<Vec<api::Info>, tonic::Status> {
        let req = api::ListSnapshotsRequest {
            snapshotter: "ovl".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        self.rt.block_on(async {
            let mut s = self.c.list(req).await?.into_inner();
            let mut v = Vec::new();
            while let Some(r) = s.message().await? {
                v.extend(r.info);
            }
            Ok(v)
        })
    }

    /// `Cleanup`.
    pub fn cleanup(&mut self) -> Result<(), tonic::Status> {
        let req = api::CleanupRequest {
            snapshotter: "ovl".into(),
        };
        self.rt.block_on(self.c.cleanup(req)).map(drop)
    }
}

/// Mounts made as containerd's `mount.All` makes them; unmounted (last first) on drop.
pub struct Mounted {
    ns: Ns,
    /// The mount point.
    pub target: PathBuf,
    count: usize,
}

/// Mount `mounts` on `target` in `ns` the way containerd does: `bind` with `mount(8)`,
/// `overlay` with containerd's option compaction (relative lowers from their common
/// directory), `fuse3.*` through `mount.fuse3 SOURCE TARGET -o OPT... -t SUBTYPE`.
pub fn mount_all(ns: &Ns, mounts: &[Mount], target: &Path) -> Result<Mounted, String> {
    let mut m = Mounted {
        ns: ns.clone(),
        target: target.to_path_buf(),
        count: 0,
    };
    for mnt in mounts {
        let out = if let Some(sub) = mnt.r#type.strip_prefix("fuse3.") {
            let mut c = ns.command("mount.fuse3");
            c.arg(&mnt.source).arg(target);
            for o in &mnt.options {
                c.arg("-o").arg(o);
            }
            c.arg("-t").arg(sub).output()
        } else if mnt.r#type == "overlay" {
            let (chdir, data) = overlay_snapshotter::mounts::containerd_mount_data(&mnt.options);
            let mut c = ns.command("mount");
            c.args(["-t", "overlay", &mnt.source, "-o", &data])
                .arg(target);
            if let Some(d) = chdir {
                c.current_dir(d);
            }
            c.output()
        } else if mnt.r#type == "bind" {
            ns.command("mount")
                .args(["-o", &mnt.options.join(","), &mnt.source])
                .arg(target)
                .output()
        } else {
            return Err(format!("unknown mount type {}", mnt.r#type));
        }
        .map_err(|e| e.to_string())?;
        if !out.status.success() {
            let mut what = format!("{mnt:?}");
            if what.len() > 600 {
                what = format!("{}...{}", &what[..300], &what[what.len() - 300..]);
            }
            return Err(format!(
                "mount {what} on {}: {}{}",
                target.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        m.count += 1;
    }
    Ok(m)
}

impl Mounted {
    /// Take charge of `count` mounts stacked on `target` (made by something else).
    pub fn adopt(ns: &Ns, target: &Path, count: usize) -> Mounted {
        Mounted {
            ns: ns.clone(),
            target: target.to_path_buf(),
            count,
        }
    }

    /// Unmount now.
    pub fn unmount(mut self) {
        self.release();
    }

    fn release(&mut self) {
        while self.count > 0 {
            // fusermount3 -u for FUSE (as containerd), else umount; a busy mount is
            // retried, then detached.
            let mut ok = false;
            for _ in 0..50 {
                let out = self
                    .ns
                    .command("umount")
                    .arg(&self.target)
                    .stderr(Stdio::piped())
                    .output()
                    .unwrap();
                if out.status.success() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !ok {
                let _ = self
                    .ns
                    .command("umount")
                    .arg("-l")
                    .arg(&self.target)
                    .status();
            }
            self.count -= 1;
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.release();
    }
}

/// Mount what `ctr snapshots mounts TARGET KEY` printed (`mount -t TYPE SOURCE TARGET -o
/// OPTS` lines): overlay and bind lines run as printed when their options fit a page;
/// longer overlay options and `fuse3.*` lines the way containerd mounts them (relative
/// lowers from their common directory; `mount.fuse3 ... -t SUBTYPE`, as `mount(8)` would
/// hand `mount.fuse3` the type with its `fuse3.` prefix, which it does not strip).
pub fn mount_printed(ns: &Ns, printed: &str, target: &Path) -> Mounted {
    let mut m = Mounted::adopt(ns, target, 0);
    for line in printed.lines().filter(|l| l.starts_with("mount ")) {
        let w: Vec<&str> = line.split(' ').collect();
        assert!(
            w.len() == 7 && w[1] == "-t" && w[5] == "-o",
            "unexpected line {line:?}"
        );
        assert_eq!(Path::new(w[4]), target, "{line}");
        if w[2].starts_with("fuse3.") || w[6].len() >= 3584 {
            let mnt = Mount {
                r#type: w[2].into(),
                source: w[3].into(),
                target: String::new(),
                options: w[6].split(',').map(str::to_string).collect(),
            };
            let g = mount_all(ns, &[mnt], target).unwrap();
            std::mem::forget(g);
        } else {
            let out = ns.command("sh").args(["-c", line]).output().unwrap();
            assert!(
                out.status.success(),
                "{line}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        m.count += 1;
    }
    assert!(m.count > 0, "no mount lines in {printed:?}");
    m
}

/// A listing of the tree at `dir` as seen in `ns`: every entry's path, type, mode, owner,
/// and link target or size and link count, then the sha256 of every regular file. Two trees are equal when
/// their manifests are.
pub fn manifest(ns: &Ns, dir: &Path) -> String {
    // Sizes of regular files only: a directory's st_size is the filesystem's business.
    let script = r#"cd "$1" && { find . -mindepth 1 ! -type f -printf '%P %y %m %U:%G %l\n'; find . -type f -printf '%P %y %m %U:%G %s %n\n'; } | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum"#;
    let out = ns
        .command("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "manifest of {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mount points in this mount namespace under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// A private containerd (its own root, state, sockets and config with the `ovl` proxy
/// plugin), stopped on drop.
pub struct Containerd {
    child: Child,
    ns: Ns,
    /// Its gRPC socket.
    pub sock: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl Containerd {
    /// Start containerd in `ns` under `dir`, with the proxy snapshotter `ovl` at `snap_sock`.
    pub fn start(ns: &Ns, dir: &Path, snap_sock: &Path) -> Containerd {
        let cfg = dir.join("containerd.toml");
        let d = dir.display();
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{d}/c-root"
state = "{d}/c-state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/c-opt"

[proxy_plugins.ovl]
  type = "snapshot"
  address = "{}"
"#,
                snap_sock.display()
            ),
        )
        .unwrap();
        if let Ns::User { uid, .. } = ns {
            std::os::unix::fs::chown(&cfg, Some(*uid), Some(*uid)).unwrap();
        }
        let log = dir.join("containerd.log");
        let f = std::fs::File::create(&log).unwrap();
        if let Ns::User { uid, .. } = ns {
            std::os::unix::fs::chown(&log, Some(*uid), Some(*uid)).unwrap();
        }
        let mut child = ns
            .command("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let sock = dir.join("c.sock");
        wait_for_socket(&sock, &mut child, &log, "containerd");
        Containerd {
            child,
            ns: ns.clone(),
            sock,
            log,
        }
    }

    /// `ctr --address SOCK -n ovltest ARGS`.
    pub fn ctr_output(&self, args: &[&str]) -> Output {
        self.ns
            .command("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "ovltest"])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctr` that must succeed; its stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_output(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}{}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// /dev/fuse can be opened by everyone (its usual 0666).
fn dev_fuse_is_world_usable() -> bool {
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006)
}
