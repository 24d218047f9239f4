//! Smoke test of the workload benchmark harness (benches/workloads/): a `--quick` run on the
//! kernel overlay (and on `ovl-fuse` as root when a built binary is next to this test) must
//! produce the table, the chart and correct results. Timings are printed, never asserted.
//! Plus unit tests of the report arithmetic, which need no mount.

#[path = "../benches/workloads/harness/mod.rs"]
mod harness;

use std::time::Duration;

use harness::backend::BackendKind;
use harness::options::{target_dirs, Options};
use harness::report::{geomean, Meta, Outcome, Report, RunRecord, Verdict};
use harness::util::{anything_mounted_under, is_root};
use harness::workload::Workload;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[test]
fn quick_run_produces_a_table() {
    if !is_root() {
        assert!(
            !ci(),
            "the benchmark smoke test needs root to mount (CI=true)"
        );
        eprintln!("skipping: mounting needs root");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("overlay-bench-smoke.")
        .tempdir()
        .unwrap();
    let mut opts = Options::parse(&["--quick".to_string()]).unwrap();
    opts.work_dir = tmp.path().join("work");
    opts.out_dir = tmp.path().join("out");
    opts.readme = None;
    opts.install_packages = false;
    opts.build_ovl_fuse = false;
    opts.drop_caches = false;
    opts.backends = vec![BackendKind::Kernel];
    // ovl-fuse when it has been built into this profile (e.g. by `cargo test --workspace`).
    let ovl = target_dirs().map(|(_, profile)| profile.join("ovl-fuse"));
    if let Some(bin) = ovl.filter(|p| p.is_file()) {
        opts.ovl_fuse = Some(bin);
        opts.backends.push(BackendKind::OvlRoot);
    } else {
        eprintln!("ovl-fuse not built in this profile: kernel backend only");
    }
    let report = harness::run_workloads(&opts).expect("quick benchmark run");
    let written = harness::write_workload_report(&opts, &report).expect("writing the report");
    let markdown = report.markdown(None);
    println!("{markdown}");

    assert!(
        !anything_mounted_under(tmp.path()),
        "the harness left a mount behind"
    );
    // The table: a header with the backends and one row per workload.
    let header = opts
        .backends
        .iter()
        .fold("| workload |".to_string(), |h, b| {
            format!("{h} {} |", b.name())
        });
    assert!(markdown.contains(&header), "no table header {header:?}");
    for w in Workload::ALL {
        assert!(
            markdown.contains(&format!("\n| {} |", w.name())),
            "no row for {}",
            w.name()
        );
    }
    // The kernel runs all succeeded (they are the reference of every other backend).
    let cells = report.cells();
    for w in Workload::ALL {
        let cell = &cells[&(w, BackendKind::Kernel)];
        assert!(
            cell.median.is_some() && cell.failures.is_empty(),
            "kernel {}: {:?}",
            w.name(),
            cell.failures
        );
    }
    // Every backend ran every workload once (ovl-fuse results are shown, not judged here:
    // its own tests judge correctness).
    assert_eq!(
        report.records.len(),
        Workload::ALL.len() * opts.backends.len()
    );
    // Files: quick.md with the chart link, quick.svg.
    assert_eq!(written.len(), 2, "{written:?}");
    let md = std::fs::read_to_string(opts.out_dir.join("quick.md")).unwrap();
    assert!(md.contains("![ratios to the kernel overlay](quick.svg)"));
    let svg = std::fs::read_to_string(opts.out_dir.join("quick.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

fn record(b: BackendKind, w: Workload, rep: usize, ms: u64, fp: &str) -> RunRecord {
    RunRecord {
        backend: b,
        workload: w,
        rep,
        outcome: Outcome::Done {
            elapsed: Duration::from_millis(ms),
            fingerprint: fp.into(),
            peak_rss_kib: b.has_daemon().then_some(1024 * ms),
        },
    }
}

fn report(records: Vec<RunRecord>, workloads: Vec<Workload>) -> Report {
    Report {
        meta: Meta::default(),
        backends: BackendKind::ALL.to_vec(),
        skipped: vec![(BackendKind::FuseOverlayfs, "not installed".into())],
        workloads,
        records,
    }
}

#[test]
fn medians_ratios_and_mismatches() {
    use BackendKind::*;
    let w = Workload::ReadBig;
    let r = report(
        vec![
            record(Kernel, w, 0, 100, "42"),
            record(Kernel, w, 1, 300, "42"),
            record(Kernel, w, 2, 200, "42"),
            record(OvlRoot, w, 0, 500, "42"),
            record(OvlRoot, w, 1, 250, "42"),
            record(OvlRoot, w, 2, 260, "42"),
            // A wrong result must not count as a fast run.
            record(OvlRootless, w, 0, 1, "41"),
            RunRecord {
                backend: OvlRootless,
                workload: w,
                rep: 1,
                outcome: Outcome::Failed("mount: boom".into()),
            },
        ],
        vec![w],
    );
    let cells = r.cells();
    assert_eq!(cells[&(w, Kernel)].median, Some(Duration::from_millis(200)));
    assert_eq!(
        cells[&(w, OvlRoot)].median,
        Some(Duration::from_millis(260))
    );
    let ratio = Report::ratio(&cells, w, OvlRoot, Kernel).unwrap();
    assert!((ratio - 1.3).abs() < 1e-9, "{ratio}");
    let rootless = &cells[&(w, OvlRootless)];
    assert_eq!(rootless.median, None);
    assert_eq!(rootless.mismatches.len(), 1);
    assert_eq!(rootless.failures.len(), 1);
    assert_eq!(cells[&(w, OvlRoot)].peak_rss_kib, Some(500 * 1024));

    let targets = r.targets();
    let read_big = targets
        .iter()
        .find(|t| t.what.starts_with("ovl-root read-big"))
        .unwrap();
    assert_eq!(read_big.verdict, Verdict::Fail, "1.3 > 1.2");
    let geo = targets.iter().find(|t| t.what.contains("geomean")).unwrap();
    assert_eq!(geo.verdict, Verdict::Pass, "1.3 <= 1.5");

    let md = r.markdown(Some("x.svg"));
    assert!(md.contains("| read-big | 200.0 ms | skipped | 260.0 ms (×1.30) | WRONG RESULT |"));
    assert!(md.contains("**fuse-overlayfs** skipped: not installed"));
    assert!(md.contains("result differs from the kernel's"));
    let svg = r.svg();
    assert!(svg.contains("×1.30"));
}

#[test]
fn variants_run_only_their_workloads_and_carry_the_metacopy_target() {
    use BackendKind::*;
    let (meta, read) = (Workload::CopyupMeta, Workload::ReadBig);
    assert!(KernelMetacopy.runs(meta) && !KernelMetacopy.runs(read));
    assert!(OvlRootLowerPassthrough.runs(read) && !OvlRootLowerPassthrough.runs(meta));
    assert!(OvlRoot.runs(meta) && OvlRoot.runs(read));
    assert_eq!(
        BackendKind::parse("ovl-root-metacopy"),
        Some(OvlRootMetacopy)
    );
    let mut records = Vec::new();
    for rep in 0..3 {
        records.extend([
            record(Kernel, meta, rep, 1000, "7"),
            record(KernelMetacopy, meta, rep, 300, "7"),
            record(OvlRoot, meta, rep, 900, "7"),
            record(OvlRootMetacopy, meta, rep, 400, "7"),
            record(Kernel, read, rep, 100, "1"),
            record(OvlRoot, read, rep, 700, "1"),
            record(OvlRootLowerPassthrough, read, rep, 110, "1"),
        ]);
    }
    let r = Report {
        meta: Meta::default(),
        backends: BackendKind::ALL
            .into_iter()
            .chain(BackendKind::VARIANTS)
            .collect(),
        skipped: vec![],
        workloads: vec![meta, read],
        records,
    };
    let targets = r.targets();
    let find = |what: &str| targets.iter().find(|t| t.what.starts_with(what));
    let mc = find("ovl-root-metacopy copyup-meta ≤ 0.5 × kernel (metacopy=off)").unwrap();
    assert_eq!(mc.verdict, Verdict::Pass, "0.4 <= 0.5");
    assert!(
        find("ovl-root copyup-meta").is_none(),
        "the metacopy column carries the copyup-meta target"
    );
    assert_eq!(find("ovl-root read-big").unwrap().verdict, Verdict::Fail);
    assert_eq!(find("ovl-root-lp read-big").unwrap().verdict, Verdict::Pass);
    let md = r.markdown(None);
    assert!(
        md.contains("| copyup-meta | 1.00 s | not run | 900.0 ms (×0.90) | not run | 300.0 ms (×0.30) | 400.0 ms (×0.40) | — |"),
        "{md}"
    );
    assert!(md.contains("**ovl-root-metacopy** adds `metacopy=on`"));
    assert!(r.svg().contains("ovl-root-lp read-big: ×1.10"));
}

#[test]
fn geomean_of_ratios() {
    assert!((geomean(&[2.0, 8.0]).unwrap() - 4.0).abs() < 1e-12);
    assert_eq!(geomean(&[]), None);
    assert_eq!(geomean(&[1.0, 0.0]), None);
}

#[test]
fn readme_section_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let readme = dir.path().join("README.md");
    std::fs::write(
        &readme,
        "# x\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n",
    )
    .unwrap();
    harness::replace_section(&readme, "results", "new table\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&readme).unwrap(),
        "# x\n<!-- results:begin -->\nnew table\n<!-- results:end -->\ntail\n"
    );
    assert!(harness::replace_section(&readme, "mem", "x").is_err());
}

#[test]
fn options_parse() {
    let args: Vec<String> = [
        "--bench",
        "--quick",
        "--reps",
        "2",
        "--backends",
        "kernel,ovl-rootless",
        "--workloads=read-big,stat-walk",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = Options::parse(&args).unwrap();
    assert!(o.quick);
    assert_eq!(o.mode, harness::options::Mode::All);
    assert_eq!(o.reps, 2);
    assert!(!o.drop_caches, "quick runs keep the cache unless asked");
    assert!(o.readme.is_none(), "quick runs never touch the README");
    assert_eq!(
        o.backends,
        vec![BackendKind::Kernel, BackendKind::OvlRootless]
    );
    assert_eq!(o.workloads, vec![Workload::ReadBig, Workload::StatWalk]);
    assert!(Options::parse(&["--backends".into(), "zfs".into()]).is_err());
    let mem = Options::parse(&["mem".into()]).unwrap();
    assert_eq!(mem.mode, harness::options::Mode::Mem);
    assert_eq!(mem.mem_entries, 1_000_000);
    let full = Options::parse(&[]).unwrap();
    assert_eq!(full.reps, 3);
    assert!(full.drop_caches);
    assert!(full.warm_too, "a full run has cold and warm tables");
    assert!(!o.warm_too);
    let cold = Options::parse(&["--drop-caches".into()]).unwrap();
    assert!(cold.drop_caches && !cold.warm_too);
    let warm = Options::parse(&["--no-drop-caches".into()]).unwrap();
    assert!(!warm.drop_caches && !warm.warm_too);
    assert_eq!(
        full.backends.len(),
        7,
        "the plain backends and the variants"
    );
    let both = Options::parse(&["--overlay-opts".into(), "redirect_dir=on".into()]).unwrap();
    assert_eq!(both.overlay_opts.as_deref(), Some("redirect_dir=on"));
}
