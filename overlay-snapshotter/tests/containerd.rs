//! With a real containerd (Debian's 1.6): a private instance (its own root, state, sockets
//! and config with `[proxy_plugins.ovl]`) and `ovl-snapshotter`; an OCI archive made here
//! is imported with `ctr images import --snapshotter ovl` and with containerd's own
//! `overlayfs` snapshotter, and the trees mounted from what `ctr snapshots mounts` prints
//! must be equal. As root (kernel overlay), rootless (an unprivileged user's user+mount
//! namespace, FUSE mounts), with 128 layers, and across a `kill -9` mid-import.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::oci::{dir, file, Entry};
use common::*;

const IMAGE: &str = "docker.io/library/ovltest:1";

/// Layers with the cases unpacking must get right: modes, symlinks, hard links, file and
/// directory whiteouts, opaque directories, replaced files.
fn layers() -> Vec<Vec<Entry>> {
    vec![
        vec![
            dir("etc"),
            file("etc/hostname", "ovl\n"),
            file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            dir("usr"),
            dir("usr/bin"),
            Entry::File(
                "usr/bin/tool".into(),
                0o755,
                b"#!/bin/sh\necho tool\n".to_vec(),
            ),
            Entry::Hardlink("usr/bin/tool2".into(), "usr/bin/tool".into()),
            Entry::Symlink("bin".into(), "usr/bin".into()),
            dir("usr/lib"),
            file("usr/lib/libx.so.1", "ELF?"),
            Entry::Symlink("usr/lib/libx.so".into(), "libx.so.1".into()),
            dir("opt"),
            dir("opt/old"),
            file("opt/old/a", "a"),
            file("opt/old/b", "b"),
            Entry::Dir("tmp".into(), 0o1777),
            Entry::Dir("root".into(), 0o700),
        ],
        vec![
            Entry::Whiteout("etc/passwd".into()),
            file("etc/group", "root:x:0:\n"),
            file("etc/hostname", "ovl-2\n"),
            dir("opt/old"),
            Entry::Opaque("opt/old".into()),
            file("opt/old/c", "c"),
            dir("var"),
            dir("var/lib"),
            file("var/lib/data", &"x".repeat(100_000)),
        ],
        vec![
            Entry::Whiteout("usr/lib".into()),
            dir("usr/lib2"),
            file("usr/lib2/z", "z"),
            Entry::File("etc/hostname".into(), 0o600, b"ovl-3\n".to_vec()),
            Entry::File("root/.profile".into(), 0o644, b"PS1=#\n".to_vec()),
        ],
    ]
}

/// Both snapshotters serve the image: prepare a container snapshot in each, mount what
/// `ctr snapshots mounts` prints, and return the manifests (ovl, `base`).
fn prepare_both(
    ns: &Ns,
    c: &Containerd,
    work: &Path,
    top: &str,
    key: &str,
    base: &str,
) -> (Mounted, Mounted, String, String) {
    let mut guards = Vec::new();
    let mut manifests = Vec::new();
    for sn in ["ovl", base] {
        c.ctr(&["snapshots", "--snapshotter", sn, "prepare", key, top]);
        let target = work.join(format!("{sn}-{key}"));
        ns.run("mkdir", &["-p", target.to_str().unwrap()]);
        let printed = c.ctr(&[
            "snapshots",
            "--snapshotter",
            sn,
            "mounts",
            target.to_str().unwrap(),
            key,
        ]);
        let g = mount_printed(ns, &printed, &target);
        manifests.push(manifest(ns, &target));
        guards.push(g);
    }
    let o = guards.remove(1);
    let k = guards.remove(0);
    (k, o, manifests.remove(0), manifests.remove(0))
}

/// The whole round: import into both, list, stat, prepare, mount, compare, write, commit,
/// view, compare, remove. `expect_mount` is the mount type ovl must hand out for the
/// three-layer container snapshot.
fn round_trip(ns: &Ns, dir: &Path, backend: &str, expect_mount: &str) {
    let snapd = Snapshotterd::start(ns, dir, backend);
    let c = Containerd::start(ns, dir, &snapd.sock);
    let archive = dir.join("img.tar");
    let chain = oci::write_archive(&archive, IMAGE, &layers());
    if let Ns::User { uid, .. } = ns {
        std::os::unix::fs::chown(&archive, Some(*uid), Some(*uid)).unwrap();
    }
    let a = archive.to_str().unwrap();
    c.ctr(&["images", "import", "--snapshotter", "ovl", a]);
    let out = c.ctr_output(&["images", "import", "--snapshotter", "overlayfs", a]);
    // containerd's own overlayfs fails rootless on some filesystems (EIO on whiteouts in
    // a tmpfs); its native snapshotter (plain copies) is then the reference.
    let base = if out.status.success() {
        "overlayfs"
    } else if ns.rootless() {
        eprintln!(
            "containerd's overlayfs cannot unpack here rootless ({}); comparing with native",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        c.ctr(&["images", "import", "--snapshotter", "native", a]);
        "native"
    } else {
        panic!(
            "import with overlayfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ls = c.ctr(&["snapshots", "--snapshotter", "ovl", "ls"]);
    for id in &chain {
        let line = ls
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not listed:\n{ls}"));
        assert!(line.contains("Committed"), "{line}");
    }
    let top = chain.last().unwrap();
    let info = c.ctr(&["snapshots", "--snapshotter", "ovl", "info", top]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    assert!(info.contains(&chain[1]), "parent missing: {info}");

    let work = dir.join("mnt");
    ns.run("mkdir", &["-p", work.to_str().unwrap()]);
    let (k, o, mk, mo) = prepare_both(ns, &c, &work, top, "ctr-1", base);
    assert_eq!(mk, mo, "the image differs between ovl and {base}");
    assert!(
        mk.contains("etc/hostname f 600") && !mk.contains("etc/passwd"),
        "{mk}"
    );
    let info = c.ctr(&["snapshots", "--snapshotter", "ovl", "info", "ctr-1"]);
    assert!(
        info.contains(&format!(
            "\"containerd.io/snapshot/ovl.mount\": \"{expect_mount}\""
        )),
        "{info}"
    );
    // Write the same changes through both mounts.
    for m in [&k, &o] {
        let t = m.target.to_str().unwrap().to_string();
        ns.run(
            "sh",
            &[
                "-c",
                r#"set -e; cd "$1"; echo new > etc/new; rm etc/group; rm -r opt/old; mkdir -p opt/old/d; chmod 750 opt/old/d; ln -s ../etc/new usr/bin/new; echo more >> var/lib/data"#,
                "sh",
                &t,
            ],
        );
    }
    k.unmount();
    o.unmount();
    let usage = c.ctr(&["snapshots", "--snapshotter", "ovl", "usage", "ctr-1"]);
    assert!(usage.contains("ctr-1"), "{usage}");
    for sn in ["ovl", base] {
        c.ctr(&[
            "snapshots",
            "--snapshotter",
            sn,
            "commit",
            "ctr-1-c",
            "ctr-1",
        ]);
    }
    let (k, o, mk, mo) = prepare_both(ns, &c, &work, "ctr-1-c", "ctr-2", base);
    assert_eq!(
        mk, mo,
        "the committed changes differ between ovl and {base}"
    );
    assert!(
        mk.contains("etc/new f") && !mk.contains("etc/group"),
        "{mk}"
    );
    k.unmount();
    o.unmount();
    for sn in ["ovl", base] {
        let out = c.ctr_output(&["snapshots", "--snapshotter", sn, "rm", "ctr-1-c"]);
        assert!(!out.status.success(), "{sn}: removed a parent with a child");
        c.ctr(&["snapshots", "--snapshotter", sn, "rm", "ctr-2"]);
        c.ctr(&["snapshots", "--snapshotter", sn, "rm", "ctr-1-c"]);
    }
    c.ctr(&["images", "rm", "--sync", IMAGE]);
}

#[test]
fn import_as_root_matches_overlayfs() {
    let t = "import_as_root_matches_overlayfs";
    if !can_mount(t) || !have_containerd(t) {
        return;
    }
    let d = scratch(None);
    round_trip(&Ns::Host, d.path(), "auto", "kernel");
}

#[test]
fn import_rootless_with_fuse_matches_containerd() {
    let t = "import_rootless_with_fuse_matches_containerd";
    if !can_mount(t) || !have_containerd(t) {
        return;
    }
    let userns = match UserNs::new(ROOTLESS_UID) {
        Ok(u) => u,
        Err(e) => return skip(t, &e),
    };
    let d = scratch(Some(ROOTLESS_UID));
    round_trip(&userns.ns, d.path(), "fuse", "fuse");
}

#[test]
fn import_rootless_with_kernel_userxattr_matches_containerd() {
    let t = "import_rootless_with_kernel_userxattr_matches_containerd";
    if !can_mount(t) || !have_containerd(t) {
        return;
    }
    let userns = match UserNs::new(ROOTLESS_UID) {
        Ok(u) => u,
        Err(e) => return skip(t, &e),
    };
    let d = scratch(Some(ROOTLESS_UID));
    round_trip(&userns.ns, d.path(), "auto", "kernel");
}

/// An image of 128 layers, each changing a shared file and adding its own: the kernel
/// overlay takes the chain (short paths), and the tree equals overlayfs's.
#[test]
fn import_128_layers() {
    let t = "import_128_layers";
    if !can_mount(t) || !have_containerd(t) {
        return;
    }
    let d = scratch(None);
    let ns = Ns::Host;
    let snapd = Snapshotterd::start(&ns, d.path(), "auto");
    let c = Containerd::start(&ns, d.path(), &snapd.sock);
    let layers: Vec<Vec<Entry>> = (0..128)
        .map(|i| {
            let mut l = vec![
                dir("layers"),
                file(&format!("layers/{i}"), &format!("layer {i}\n")),
                file("shared", &format!("{i}\n")),
            ];
            if i > 0 && i % 10 == 0 {
                l.push(Entry::Whiteout(format!("layers/{}", i - 1)));
            }
            l
        })
        .collect();
    let archive = d.path().join("img128.tar");
    let chain = oci::write_archive(&archive, "docker.io/library/ovl128:1", &layers);
    let a = archive.to_str().unwrap();
    c.ctr(&["images", "import", "--snapshotter", "ovl", a]);
    c.ctr(&["images", "import", "--snapshotter", "overlayfs", a]);
    let work = d.path().join("mnt");
    std::fs::create_dir(&work).unwrap();
    let (k, o, mk, mo) = prepare_both(&ns, &c, &work, chain.last().unwrap(), "c128", "overlayfs");
    assert_eq!(mk, mo);
    assert!(mk.contains("layers/127 f") && !mk.contains("layers/119 f"));
    let info = c.ctr(&["snapshots", "--snapshotter", "ovl", "info", "c128"]);
    assert!(
        info.contains("\"containerd.io/snapshot/ovl.mount\": \"kernel\""),
        "{info}"
    );
    k.unmount();
    o.unmount();
}

/// `kill -9` of the snapshotter while containerd unpacks through it; after a restart the
/// same import succeeds, every snapshot containerd lists is there, and Cleanup leaves no
/// directory without a snapshot.
#[test]
fn kill9_mid_import_then_import_again() {
    let t = "kill9_mid_import_then_import_again";
    if !can_mount(t) || !have_containerd(t) {
        return;
    }
    let d = scratch(None);
    let ns = Ns::Host;
    let mut snapd = Snapshotterd::start(&ns, d.path(), "auto");
    let c = Containerd::start(&ns, d.path(), &snapd.sock);
    let layers: Vec<Vec<Entry>> = (0..24)
        .map(|i| {
            vec![
                dir(&format!("l{i}")),
                Entry::File(format!("l{i}/blob"), 0o644, vec![i as u8; 2 << 20]),
                file("shared", &format!("{i}\n")),
            ]
        })
        .collect();
    let archive = d.path().join("imgk.tar");
    let chain = oci::write_archive(&archive, "docker.io/library/ovlkill:1", &layers);
    let a = archive.to_str().unwrap().to_string();
    let mut import = ns
        .command("ctr")
        .arg("--address")
        .arg(&c.sock)
        .args([
            "--namespace",
            "ovltest",
            "images",
            "import",
            "--snapshotter",
            "ovl",
            &a,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a few layers are unpacked, then kill -9.
    let snaps = snapd.root.join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&snaps).map(|r| r.count()).unwrap_or(0) < 6 {
        assert!(Instant::now() < deadline, "the import made no progress");
        if let Ok(Some(st)) = import.try_wait() {
            panic!("the import finished ({st}) before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    snapd.kill9();
    let st = import.wait().unwrap();
    eprintln!("interrupted import: {st}");
    snapd.restart();
    // containerd reconnects to the proxy with a backoff: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.ctr_output(&["images", "import", "--snapshotter", "ovl", &a]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "import after restart: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            snapd.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut client = snapd.client();
    client.cleanup().unwrap();
    // Every snapshot containerd lists is one of ours (containerd names them
    // NAMESPACE/N/KEY in the backend), and every directory is a snapshot.
    let ls = c.ctr(&["snapshots", "--snapshotter", "ovl", "ls"]);
    let ours = client.list(&[]).unwrap();
    let known = |key: &str| ours.iter().any(|i| i.name.ends_with(&format!("/{key}")));
    for line in ls.lines().skip(1) {
        let key = line.split_whitespace().next().unwrap();
        assert!(known(key), "{key} unknown to ovl");
    }
    for id in &chain {
        assert!(known(id), "layer {id} missing");
    }
    let dirs: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs.len(), ours.len(), "orphans left: {dirs:?}");
    assert!(dirs.iter().all(|d| d.parse::<u64>().is_ok()), "{dirs:?}");
    // And the image is whole.
    c.ctr(&["images", "import", "--snapshotter", "overlayfs", &a]);
    let work = d.path().join("mnt");
    std::fs::create_dir(&work).unwrap();
    let (k, o, mk, mo) = prepare_both(&ns, &c, &work, chain.last().unwrap(), "after", "overlayfs");
    assert_eq!(mk, mo);
    k.unmount();
    o.unmount();
}

/// A layer with the host's `/bin/sh` and the libraries it loads (from `ldd`), at the same
/// paths.
fn shell_layer() -> Option<Vec<Entry>> {
    let sh = std::fs::canonicalize("/bin/sh").ok()?;
    let out = std::process::Command::new("ldd").arg(&sh).output().ok()?;
    let mut files = vec![("bin/sh".to_string(), sh)];
    for tok in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if tok.starts_with('/') {
            files.push((tok.trim_start_matches('/').to_string(), tok.into()));
        }
    }
    let mut entries = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (dst, src) in files {
        let mut p = Path::new(&dst).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
        let data = std::fs::read(std::fs::canonicalize(&src).ok()?).ok()?;
        entries.push(Entry::File(dst, 0o755, data));
    }
    let mut v: Vec<Entry> = dirs.iter().map(|d| dir(d)).collect();
    v.extend(entries);
    Some(v)
}

/// `ctr run --snapshotter ovl`: a container runs on the mounts (kernel overlay, then
/// `ovl-fuse` through containerd's shim and `mount.fuse3`), reads a file of the image and
/// writes one.
#[test]
fn containers_run_on_kernel_and_fuse_mounts() {
    let t = "containers_run_on_kernel_and_fuse_mounts";
    if !can_mount(t) || !have_containerd(t) {
        return;
    }
    if which("runc").is_none() {
        return skip(t, "needs runc (a dependency of the containerd package)");
    }
    let Some(sh) = shell_layer() else {
        return skip(t, "cannot find /bin/sh and its libraries");
    };
    let had_run_containerd = Path::new("/run/containerd").exists();
    for backend in ["auto", "fuse"] {
        let d = scratch(None);
        let ns = Ns::Host;
        let snapd = Snapshotterd::start(&ns, d.path(), backend);
        let c = Containerd::start(&ns, d.path(), &snapd.sock);
        let archive = d.path().join("sh.tar");
        oci::write_archive(
            &archive,
            "docker.io/library/ovlsh:1",
            &[
                sh.clone(),
                vec![dir("etc"), file("etc/hello", "hello from ovl\n")],
            ],
        );
        c.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "ovl",
            archive.to_str().unwrap(),
        ]);
        // FIFOs and runc's state in our directory (the shim's socket still goes to
        // /run/containerd/s, which containerd 1.6 does not let us move).
        let fifo = d.path().join("fifo");
        let runc_root = d.path().join("runc");
        let out = c.ctr(&[
            "run",
            "--rm",
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
            "--snapshotter",
            "ovl",
            "docker.io/library/ovlsh:1",
            &format!("run-{backend}"),
            "/bin/sh",
            "-c",
            r#"read l < /etc/hello; echo "$l"; echo x > /newfile && echo wrote"#,
        ]);
        assert_eq!(out, "hello from ovl\nwrote\n", "{backend}");
        let want = if backend == "fuse" { "fuse" } else { "kernel" };
        assert!(
            snapd.log_text().contains(&format!(
                "/run-{backend}: {}",
                if want == "fuse" {
                    "ovl-fuse"
                } else {
                    "kernel overlay"
                }
            )),
            "{backend}: {}",
            snapd.log_text()
        );
    }
    if !had_run_containerd {
        // The shims' socket directory, if it is empty (nothing else uses it).
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
    }
}
