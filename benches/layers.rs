//! Layer export and apply against GNU tar, side by side in one run: `cargo bench --bench
//! layers` (as root, on a quiet machine). See benches/README.md, "Layers".
//!
//! - apply: `overlay::layers::apply` (plain format) of an uncompressed tar of `/usr/include`
//!   vs `tar -xf` of the same file into the same filesystem (TMPDIR, or `target/` by default);
//! - export: `overlay::layers::export` (uncompressed) of `/usr/include` vs `tar -cf`, both
//!   into a file on that filesystem.
//!
//! Each is run `OVL_LAYERS_ROUNDS` times (default 5), interleaved (ours, tar, ours, tar...),
//! after one warm-up each; the median is reported with the ratio ours / tar. Under
//! `cargo test --benches` (no `--bench` argument) it only says how to run it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overlay::layers::apply::{apply_file, ApplyOptions, Format};
use overlay::layers::compress::Compression;
use overlay::layers::export::{export, ExportOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?}: {st}");
}

fn rm(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).unwrap();
    }
}

/// CPU time (user + system) of this process (all its threads) and of its waited-for
/// children: under load the wall clock measures the neighbours as much as the code.
fn cpu() -> (Duration, Duration) {
    use nix::sys::resource::{getrusage, UsageWho};
    let t = |who| {
        let u = getrusage(who).expect("getrusage");
        let d = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
        };
        d(u.user_time()) + d(u.system_time())
    };
    (t(UsageWho::RUSAGE_SELF), t(UsageWho::RUSAGE_CHILDREN))
}

fn sync() {
    rustix::fs::sync();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("layers benchmark: run it with `cargo bench --bench layers`");
        return;
    }
    let src =
        PathBuf::from(std::env::var("OVL_LAYERS_SRC").unwrap_or_else(|_| "/usr/include".into()));
    let rounds: usize = std::env::var("OVL_LAYERS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = tempfile::Builder::new()
        .prefix("ovl-bench-layers-")
        .tempdir_in(&base)
        .unwrap();
    let d = dir.path();
    let (files, bytes) = {
        let out = Command::new("du").args(["-sb"]).arg(&src).output().unwrap();
        let b: u64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let n = walk_count(&src);
        (n, b)
    };
    let fstype = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(d)
        .output()
        .unwrap();
    println!(
        "source {} ({} entries, {} MB), scratch {} ({}), {} rounds, median",
        src.display(),
        files,
        bytes / 1_000_000,
        d.display(),
        String::from_utf8_lossy(&fstype.stdout).trim(),
        rounds
    );
    // The archive both appliers read: made by GNU tar.
    let tarball = d.join("src.tar");
    let parent = src.parent().unwrap();
    let name = src.file_name().unwrap();
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(parent)
        .arg(name));

    let (mut ours_x, mut tar_x, mut ours_c, mut tar_c) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ours_x_cpu, mut tar_x_cpu, mut ours_c_cpu, mut tar_c_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..=rounds {
        // apply vs tar -x
        let out = d.join("x-ours");
        rm(&out);
        std::fs::create_dir(&out).unwrap();
        sync();
        let (c0, _) = cpu();
        let t = Instant::now();
        apply_file(
            &tarball,
            &out,
            &ApplyOptions {
                format: Format::Plain,
                ..Default::default()
            },
        )
        .unwrap();
        let a = t.elapsed();
        let a_cpu = cpu().0 - c0;
        rm(&out);
        let out = d.join("x-tar");
        rm(&out);
        std::fs::create_dir(&out).unwrap();
        sync();
        let (_, k0) = cpu();
        let t = Instant::now();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out));
        let b = t.elapsed();
        let b_cpu = cpu().1 - k0;
        rm(&out);
        // export vs tar -c
        let f = d.join("c-ours.tar");
        sync();
        let (c0, _) = cpu();
        let t = Instant::now();
        // Into a plain file, as `tar -cf` writes (export_file also fsyncs before its rename).
        let out = std::fs::File::create(&f).unwrap();
        export(
            &[] as &[&Path],
            &src,
            out,
            &ExportOptions {
                compression: Compression::None,
                ..Default::default()
            },
        )
        .unwrap();
        let c = t.elapsed();
        let c_cpu = cpu().0 - c0;
        let _ = std::fs::remove_file(&f);
        let f = d.join("c-tar.tar");
        sync();
        let (_, k0) = cpu();
        let t = Instant::now();
        run(Command::new("tar")
            .arg("-cf")
            .arg(&f)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let e = t.elapsed();
        let e_cpu = cpu().1 - k0;
        let _ = std::fs::remove_file(&f);
        if round > 0 {
            ours_x.push(a);
            tar_x.push(b);
            ours_c.push(c);
            tar_c.push(e);
            ours_x_cpu.push(a_cpu);
            tar_x_cpu.push(b_cpu);
            ours_c_cpu.push(c_cpu);
            tar_c_cpu.push(e_cpu);
        }
    }
    let row = |what: &str, ours: Vec<Duration>, tar: Vec<Duration>| {
        let (o, t) = (median(ours), median(tar));
        println!(
            "{what:<10} ours {:>8.1} ms   GNU tar {:>8.1} ms   ratio {:.2}",
            o.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e3,
            o.as_secs_f64() / t.as_secs_f64()
        );
    };
    row("apply", ours_x, tar_x);
    row("export", ours_c, tar_c);
    // CPU time (user + system, all threads; tar's as a waited-for child): what the code
    // costs, whatever the neighbours do; ours includes the sha256 thread.
    row("apply cpu", ours_x_cpu, tar_x_cpu);
    row("export cpu", ours_c_cpu, tar_c_cpu);
}

fn walk_count(p: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            n += 1;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}
