//! Real clients, both directions, each started by the test with private state:
//! - containerd (its own root, state, sockets and config; never the system's): an OCI image
//!   whose layers we exported (a base layer, and an upper over it with whiteouts, an opaque
//!   directory, hard links and xattrs) imports with `ctr images import`, is unpacked by its
//!   overlayfs snapshotter, and `ctr images mount` shows the tree the kernel overlay showed;
//! - podman (private `--root`/`--runroot`, storage.conf and containers.conf): an image made
//!   with `podman import` is saved with `podman save --format oci-dir`; its layer, written by
//!   podman, applied by us, gives the tree `podman image mount` shows.
//!
//! The OCI layout (oci-layout, index.json, manifest, config, blobs) is written here with
//! serde_json, following the image-spec.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tree::{diff, snapshot_dir, Tree, XattrFilter};
use overlay_layers::apply::{apply_file, ApplyOptions, Format};
use overlay_layers::compress::Compression;
use overlay_layers::export::{export_file, ExportOptions, ExportedLayer};

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the test can run; panics under CI=true when it cannot.
fn require(programs: &[&str]) -> bool {
    let missing: Vec<_> = programs.iter().filter(|p| !have(p)).collect();
    let why = if !rustix::process::geteuid().is_root() {
        Some("not root".to_string())
    } else if !missing.is_empty() {
        Some(format!(
            "missing {missing:?} (Debian packages containerd, podman)"
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI=true but {w}"),
        Some(w) => {
            eprintln!("SKIPPED: {w}");
            false
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unmounts `target` on drop (also when the test panics).
struct Unmount(Option<PathBuf>);
impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// A private containerd; killed and its mounts removed on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let socket = dir.join("c.sock");
        let cfg = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            ttrpc = dir.join("c.ttrpc").display(),
            opt = dir.join("opt").display(),
        );
        fs::write(dir.join("config.toml"), cfg).unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let c = Containerd {
            child,
            dir: dir.to_path_buf(),
            socket,
        };
        let start = Instant::now();
        while Command::new("ctr")
            .arg("--address")
            .arg(&c.socket)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "ovl-test"]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever its snapshotter left mounted below its root.
        if let Ok(m) = fs::read_to_string("/proc/self/mounts") {
            for line in m.lines().rev() {
                if let Some(p) = line.split(' ').nth(1) {
                    if Path::new(p).starts_with(&self.dir) {
                        let _ = rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH);
                    }
                }
            }
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Write an OCI image layout with `layers` (files and their export results) into `dir`;
/// returns the manifest digest.
fn oci_layout(dir: &Path, layers: &[(PathBuf, ExportedLayer)], name: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |data: &[u8]| -> (String, u64) {
        let d = overlay_layers::digest::sha256(data);
        fs::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
        (d, data.len() as u64)
    };
    let mut ls = Vec::new();
    for (file, l) in layers {
        fs::copy(file, blobs.join(l.digest.trim_start_matches("sha256:"))).unwrap();
        ls.push(serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}));
    }
    let config = serde_json::json!({
        "architecture": arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, l)| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "ovl layer export"})).collect::<Vec<_>>(),
    });
    let (cd, cs) = put(serde_json::to_vec(&config).unwrap().as_slice());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": ls,
    });
    let (md, ms) = put(serde_json::to_vec(&manifest).unwrap().as_slice());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name},
            "platform": {"architecture": arch(), "os": "linux"},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

/// The image tree: a base, then changes made through a kernel overlay.
fn make_base(base: &Path) {
    for (p, c) in [
        ("etc/os-release", "NAME=ovl-test\n"),
        ("etc/keep", "keep"),
        ("usr/bin/tool", "v1"),
        ("usr/share/doc/a", "a"),
        ("usr/share/doc/b", "b"),
        ("opt/app/old", "old"),
        ("var/log/x", "x"),
    ] {
        let f = base.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, c).unwrap();
    }
    fs::set_permissions(base.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("tool", base.join("usr/bin/tool-link")).unwrap();
}

fn change(m: &Path) {
    fs::write(m.join("usr/bin/tool"), "v2").unwrap();
    fs::remove_dir_all(m.join("usr/share/doc")).unwrap();
    fs::remove_file(m.join("etc/keep")).unwrap();
    fs::remove_dir_all(m.join("opt/app")).unwrap();
    fs::create_dir(m.join("opt/app")).unwrap(); // opaque
    fs::write(m.join("opt/app/new"), "new").unwrap();
    fs::hard_link(m.join("opt/app/new"), m.join("opt/app/new-link")).unwrap();
    fs::write(m.join("etc/added"), "added").unwrap();
    rustix::fs::lsetxattr(
        m.join("etc/added"),
        "user.origin",
        b"ovl",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// Mode, content, links and xattrs; the root and directory times are the tool's business.
fn comparable(mut t: Tree) -> Tree {
    for e in t.entries.values_mut() {
        if matches!(e.kind, common::tree::EntryKind::Dir) {
            e.mtime_kept = true;
        }
    }
    t.entries.remove("");
    t
}

#[test]
fn containerd_imports_our_layers() {
    common::init();
    if !require(&["containerd", "ctr"]) || !common::require_mounts() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (base, upper, work, mnt) = (
        t.join("base"),
        t.join("upper"),
        t.join("work"),
        t.join("mnt"),
    );
    for d in [&upper, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    fs::create_dir(&base).unwrap();
    make_base(&base);
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        base.display(),
        upper.display(),
        work.display()
    );
    let expected = {
        let _m = common::kernel::KernelOverlay::mount_data(&data, &mnt).unwrap();
        change(&mnt);
        snapshot_dir(&mnt, XattrFilter::All)
    };
    let l0 = t.join("l0.tar.gz");
    let l1 = t.join("l1.tar.zst");
    let e0 = export_file(
        &[] as &[&Path],
        &base,
        &l0,
        &ExportOptions {
            compression: Compression::Gzip,
            reproducible: true,
            ..Default::default()
        },
    )
    .unwrap();
    let e1 = export_file(
        &[&base],
        &upper,
        &l1,
        &ExportOptions {
            compression: Compression::Zstd,
            reproducible: true,
            ..Default::default()
        },
    )
    .unwrap();
    let layout = t.join("layout");
    oci_layout(&layout, &[(l0, e0), (l1, e1)], "ovl.test/ours:1");
    let archive = t.join("image.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg("."));

    let cdir = t.join("ctrd");
    fs::create_dir(&cdir).unwrap();
    let c = Containerd::start(&cdir);
    run(c
        .ctr()
        .args(["images", "import", "--base-name", "ovl.test/ours"])
        .arg(&archive));
    let listed = run(c.ctr().args(["images", "ls", "-q"]));
    assert!(listed.contains("ovl.test/ours:1"), "{listed}");
    let target = t.join("ctr-mnt");
    fs::create_dir(&target).unwrap();
    run(c
        .ctr()
        .args(["images", "mount", "--rw=false", "ovl.test/ours:1"])
        .arg(&target));
    let guard = Unmount(Some(target.clone()));
    let theirs = snapshot_dir(&target, XattrFilter::All);
    drop(guard);
    let _ = c.ctr().args(["images", "unmount"]).arg(&target).output();
    if let Some(d) = diff(
        "kernel overlay",
        &comparable(expected),
        "containerd",
        &comparable(theirs),
    ) {
        panic!("containerd's tree differs:\n{d}");
    }
    drop(c);
}

#[test]
fn podman_layers_apply_to_the_tree_podman_mounts() {
    common::init();
    if !require(&["podman"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (root, runroot) = (t.join("root"), t.join("runroot"));
    fs::write(
        t.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            root.display(),
            runroot.display()
        ),
    )
    .unwrap();
    fs::write(
        t.join("containers.conf"),
        "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
    )
    .unwrap();
    let podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", t.join("storage.conf"))
            .env("CONTAINERS_CONF", t.join("containers.conf"))
            .env("XDG_CONFIG_HOME", t.join("xdg"))
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"]);
        c
    };
    // A tree made into an image by podman, which writes its own layer.
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    make_base(&src);
    fs::write(src.join("etc/big"), vec![0x5au8; 200_000]).unwrap();
    fs::hard_link(src.join("etc/big"), src.join("etc/big-link")).unwrap();
    run(Command::new("tar")
        .arg("-cf")
        .arg(t.join("src.tar"))
        .arg("-C")
        .arg(&src)
        .arg("."));
    run(podman()
        .arg("import")
        .arg(t.join("src.tar"))
        .arg("ovl.test/podman:1"));
    let dir = t.join("oci");
    run(podman()
        .args(["save", "--format", "oci-dir", "-o"])
        .arg(&dir)
        .arg("ovl.test/podman:1"));
    // Its layers, applied by us in order.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(md)).unwrap()).unwrap();
    let cd = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(cd)).unwrap()).unwrap();
    let ours = t.join("ours");
    fs::create_dir(&ours).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for (i, l) in layers.iter().enumerate() {
        let d = l["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let r = apply_file(
            dir.join("blobs/sha256").join(d),
            &ours,
            &ApplyOptions {
                format: Format::Plain,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            Some(r.diff_id.as_str()),
            config["rootfs"]["diff_ids"][i].as_str(),
            "diff_id of layer {i}"
        );
    }
    // The tree podman mounts for the image.
    let mounted = run(podman().args(["image", "mount", "ovl.test/podman:1"]))
        .trim()
        .to_string();
    let theirs = snapshot_dir(Path::new(&mounted), XattrFilter::All);
    let _ = podman()
        .args(["image", "unmount", "ovl.test/podman:1"])
        .output();
    let mine = snapshot_dir(&ours, XattrFilter::All);
    if let Some(d) = diff(
        "podman",
        &comparable(theirs),
        "ovl apply",
        &comparable(mine),
    ) {
        panic!("trees differ:\n{d}");
    }
    let _ = podman().args(["rmi", "-a", "-f"]).output();
}
