//! `cargo bench -p overlay-snapshotter --bench snapshotter` (as root, on a quiet machine):
//! `ovl-snapshotter` against containerd's own snapshotters, through a private containerd.
//!
//! 1. Unpack: `ctr images import` of a 20-layer image (about 36 MiB) into each snapshotter.
//! 2. Start a container's filesystem: `ctr snapshots prepare` over the image's top layer,
//!    `ctr snapshots mounts`, mount, and the first read of a file of the bottom layer and one
//!    of the top layer.
//!
//! Root: `ovl` (kernel overlay) against containerd's `overlayfs`. Rootless (uid 65534 in a
//! user+mount namespace): `ovl` with `ovl-fuse` (`--backend fuse`) against the same layers
//! mounted by `fuse-overlayfs` (what containerd's fuse-overlayfs snapshotter hands out,
//! `fuse3.fuse-overlayfs` with the same options), and against containerd's `overlayfs`
//! rootless (kernel overlay with `userxattr`). Each figure is the median of `OVL_BENCH_RUNS`
//! (default 7) runs. `cargo test --benches` runs nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::oci::{dir, Entry};
use common::*;

const IMAGE: &str = "docker.io/library/ovlbench:20";

fn layers() -> Vec<Vec<Entry>> {
    (0..20)
        .map(|i| {
            let mut l = vec![dir(&format!("l{i}"))];
            for f in 0..50 {
                l.push(Entry::File(
                    format!("l{i}/f{f}"),
                    0o644,
                    vec![(i * 7 + f) as u8; 16 << 10],
                ));
            }
            l.push(Entry::File(
                format!("l{i}/big"),
                0o644,
                vec![i as u8; 1 << 20],
            ));
            l
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Setup {
    // Drop order: containerd, then the snapshotter, then the directory.
    c: Containerd,
    _snap: Snapshotterd,
    dir: tempfile::TempDir,
    ns: Ns,
    archive: String,
}

fn setup(ns: &Ns, backend: &str, owner: Option<u32>) -> Setup {
    let dir = scratch(owner);
    let snap = Snapshotterd::start(ns, dir.path(), backend);
    let c = Containerd::start(ns, dir.path(), &snap.sock);
    let archive = dir.path().join("img.tar");
    oci::write_archive(&archive, IMAGE, &layers());
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&archive, Some(uid), Some(uid)).unwrap();
    }
    Setup {
        c,
        _snap: snap,
        archive: archive.to_str().unwrap().to_string(),
        dir,
        ns: ns.clone(),
    }
}

/// Median time of `ctr images import --snapshotter sn` (content and unpack), the image
/// removed after each run (and with it, by containerd's GC, every snapshotter's layers).
fn unpack(s: &Setup, sn: &str, runs: usize) -> Duration {
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        s.c.ctr(&["images", "import", "--snapshotter", sn, &s.archive]);
        v.push(t.elapsed());
        s.c.ctr(&["images", "rm", "--sync", IMAGE]);
    }
    median(v)
}

/// Median time from `ctr snapshots prepare` to the first reads done, for `sn`;
/// `fuse_program` replaces `ovl-fuse` in FUSE mounts (fuse-overlayfs).
fn start(s: &Setup, sn: &str, top: &str, fuse_program: Option<&str>, runs: usize) -> Duration {
    let mut v = Vec::new();
    for i in 0..runs {
        let key = format!("bench-{sn}-{}-{i}", fuse_program.unwrap_or("x"));
        let target = s.dir.path().join(format!("m-{key}"));
        s.ns.run("mkdir", &["-p", target.to_str().unwrap()]);
        let t = Instant::now();
        s.c.ctr(&["snapshots", "--snapshotter", sn, "prepare", &key, top]);
        let mut printed = s.c.ctr(&[
            "snapshots",
            "--snapshotter",
            sn,
            "mounts",
            target.to_str().unwrap(),
            &key,
        ]);
        if let Some(p) = fuse_program {
            printed = printed.replace("-t fuse3.ovl-fuse ovl-fuse", &format!("-t fuse3.{p} {p}"));
        }
        let m = mount_printed(&s.ns, &printed, &target);
        let read =
            s.ns.command("cat")
                .arg(target.join("l0/big"))
                .arg(target.join("l19/f3"))
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
        v.push(t.elapsed());
        assert!(read.success());
        m.unmount();
        s.c.ctr(&["snapshots", "--snapshotter", sn, "rm", &key]);
    }
    median(v)
}

fn main() {
    // `cargo test --benches` passes --test (or nothing) and must not run the benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("the snapshotter benchmark needs root");
        return;
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "overlay-fuse",
            "--bin",
            "ovl-fuse",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --release -p overlay-fuse");
    if which("fuse-overlayfs").is_none() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "fuse-overlayfs"])
            .status();
    }
    let runs: usize = std::env::var("OVL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let chain = {
        let t = tempfile::tempdir().unwrap();
        oci::write_archive(&t.path().join("x.tar"), IMAGE, &layers())
    };
    let top = chain.last().unwrap().clone();
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // Root.
    let s = setup(&Ns::Host, "auto", None);
    let u_ovl = unpack(&s, "ovl", runs);
    let u_ofs = unpack(&s, "overlayfs", runs);
    for sn in ["ovl", "overlayfs"] {
        s.c.ctr(&["images", "import", "--snapshotter", sn, &s.archive]);
    }
    let p_ovl = start(&s, "ovl", &top, None, runs);
    let p_ofs = start(&s, "overlayfs", &top, None, runs);
    rows.push(("root: ovl (kernel overlay)".into(), ms(u_ovl), ms(p_ovl)));
    rows.push(("root: containerd overlayfs".into(), ms(u_ofs), ms(p_ofs)));
    drop(s);

    // Rootless.
    match UserNs::new(ROOTLESS_UID) {
        Ok(userns) => {
            let s = setup(&userns.ns, "fuse", Some(ROOTLESS_UID));
            let u_ovl = unpack(&s, "ovl", runs);
            let out =
                s.c.ctr_output(&["images", "import", "--snapshotter", "overlayfs", &s.archive]);
            let overlayfs_works = out.status.success();
            let u_ofs = if overlayfs_works {
                s.c.ctr(&["images", "rm", "--sync", IMAGE]);
                ms(unpack(&s, "overlayfs", runs))
            } else {
                "fails here".to_string()
            };
            s.c.ctr(&["images", "import", "--snapshotter", "ovl", &s.archive]);
            if overlayfs_works {
                s.c.ctr(&["images", "import", "--snapshotter", "overlayfs", &s.archive]);
            }
            let p_ovl = ms(start(&s, "ovl", &top, None, runs));
            let p_fo = if which("fuse-overlayfs").is_some() {
                ms(start(&s, "ovl", &top, Some("fuse-overlayfs"), runs))
            } else {
                "fuse-overlayfs not installed".into()
            };
            let p_ofs = if overlayfs_works {
                ms(start(&s, "overlayfs", &top, None, runs))
            } else {
                "fails here".to_string()
            };
            rows.push(("rootless: ovl (ovl-fuse)".into(), ms(u_ovl), p_ovl));
            rows.push((
                "rootless: same layers, fuse-overlayfs".into(),
                "(no snapshotter packaged)".into(),
                p_fo,
            ));
            rows.push((
                "rootless: containerd overlayfs (userxattr)".into(),
                u_ofs,
                p_ofs,
            ));
        }
        Err(e) => eprintln!("rootless part skipped: {e}"),
    }

    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string();
    let tmp = std::env::temp_dir();
    println!(
        "\n20-layer image (about 36 MiB), median of {runs} runs, scratch in {}, Linux {kernel}\n",
        tmp.display()
    );
    println!("| snapshotter | import + unpack | prepare + mount + first read |");
    println!("|---|---|---|");
    for (a, b, c) in &rows {
        println!("| {a} | {b} | {c} |");
    }
}
