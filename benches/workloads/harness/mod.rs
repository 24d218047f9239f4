//! The workload benchmark harness: builds the base stack once, then for every repetition,
//! workload and backend (interleaved, backend order rotated per repetition) mounts a fresh
//! upper/work over the shared lowers, optionally drops the page cache, times the workload,
//! checks its result against the kernel's, reads the daemon's peak RSS and unmounts.
//!
//! Shared by the `workloads` bench binary and the smoke test (tests/bench_smoke.rs).
#![allow(dead_code)]

pub mod backend;
pub mod fuse_uring;
pub mod options;
pub mod random;
pub mod report;
pub mod stack;
pub mod util;
pub mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use backend::{mount, Backend, BackendKind, RunDir};
use fuse_uring::FuseUringSwitch;
use options::{Mode, Options};
use report::{MemLine, MemResult, Meta, Outcome, Report, RunRecord};
use stack::Stack;
use util::{
    check_interrupt, command, install_signal_handlers, is_root, run_timed, Context, Error, Result,
};
use workload::Workload;

/// Entry point of the bench binary; returns the exit code.
pub fn cli_main(args: &[String]) -> i32 {
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return if args.iter().any(|a| a == "-h" || a == "--help") {
                0
            } else {
                2
            };
        }
    };
    install_signal_handlers();
    let matrix = || {
        run_matrix(&opts).and_then(|(report, warm)| {
            let paths = write_workload_reports(&opts, &report, warm.as_ref())?;
            println!("{}", report.markdown(None));
            if let Some(w) = &warm {
                println!("{}", w.markdown(None));
            }
            for p in paths {
                println!("wrote {}", p.display());
            }
            Ok(())
        })
    };
    let mem = || run_mem(&opts).map(|md| println!("{md}"));
    let result = match opts.mode {
        Mode::All => matrix().and_then(|()| mem()),
        Mode::Workloads => matrix(),
        Mode::Mem => mem(),
    };
    match result {
        Ok(()) => 0,
        Err(e) if e.interrupted => {
            eprintln!("interrupted: every mount has been cleaned up");
            130
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn prepare_work_dir(opts: &Options) -> Result<PathBuf> {
    fs::create_dir_all(&opts.work_dir)
        .context(|| format!("creating the work dir {}", opts.work_dir.display()))?;
    let dir = opts
        .work_dir
        .canonicalize()
        .context(|| format!("resolving {}", opts.work_dir.display()))?;
    if util::mount_of(&dir).is_some_and(|m| m.fstype == "overlay" || m.fstype.starts_with("fuse")) {
        return Err(Error::new(format!(
            "{} is on {}: layers must be on a plain filesystem; pass --work-dir",
            dir.display(),
            util::mount_of(&dir).map(|m| m.fstype).unwrap_or_default()
        )));
    }
    Ok(dir)
}

/// Run the workload matrix (one cache mode: the first pass of [`run_matrix`]).
pub fn run_workloads(opts: &Options) -> Result<Report> {
    run_matrix(opts).map(|(r, _)| r)
}

/// Run the workload matrix: the report of the runs as `opts.drop_caches` says, and with
/// `opts.warm_too` the one of the warm runs that follow each cold one.
pub fn run_matrix(opts: &Options) -> Result<(Report, Option<Report>)> {
    let work_dir = prepare_work_dir(opts)?;
    let owner = is_root().then_some(opts.rootless_user);
    let stack = stack::ensure(&work_dir, opts.quick, owner, opts.verbose)?;
    let prepared = backend::prepare(opts, &stack)?;
    let runs_dir = work_dir.join("runs");
    fs::create_dir_all(&runs_dir).context(|| format!("mkdir {}", runs_dir.display()))?;
    let drop_caches = opts.drop_caches && is_root();
    let warm_too = drop_caches && opts.warm_too;
    let uring = FuseUringSwitch::apply(opts.fuse_uring);

    let mut meta = Meta::gather(&work_dir);
    let load1: f64 = meta
        .load
        .split(' ')
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    if !opts.quick && load1 > 0.25 * meta.nproc.max(1) as f64 {
        eprintln!(
            "warning: load average {} on {} CPUs: timings will be noisy; run on a quiet machine",
            meta.load, meta.nproc
        );
    }
    meta.settings = format!(
        "{} run, {} repetition{} per cell, page cache {}, {}",
        if opts.quick { "quick (smoke)" } else { "full" },
        opts.reps,
        if opts.reps == 1 { "" } else { "s" },
        if drop_caches {
            "dropped before every timed run"
        } else {
            "warm (not dropped)"
        },
        uring.state
    );
    meta.stack = format!(
        "bottom lower: copies of /usr/share/doc ({} files{}) and /usr/share/man, a {} random file, a \
         directory of {} files; top lower: shadows every 4th doc package and half of the big \
         directory, whiteouts in every 10th package; create-untar unpacks /usr/{}",
        stack.doc_files,
        if opts.quick { ", subset" } else { "" },
        if stack.sizes.big_file_bytes >= 1 << 30 {
            format!("{} GiB", stack.sizes.big_file_bytes >> 30)
        } else {
            format!("{} MiB", stack.sizes.big_file_bytes >> 20)
        },
        stack.sizes.big_entries,
        stack.sizes.include_dir
    );
    meta.versions = prepared
        .ready
        .iter()
        .map(|b| {
            let mut v = b.version.clone();
            if let Some(user) = b.user {
                v.push_str(&format!(", run as uid:gid {user} via fusermount3"));
            }
            if let Some(o) = &b.extra_opts {
                v.push_str(&format!(", extra options `{o}`"));
            }
            (b.kind, v)
        })
        .collect();

    for (b, why) in &prepared.skipped {
        eprintln!("skipping {}: {why}", b.name());
    }
    let mut records = Vec::new();
    let mut warm_records = Vec::new();
    let mut broken: Vec<(BackendKind, String)> = Vec::new();
    let mut ctx = RunContext {
        opts,
        stack: &stack,
        runs_dir: &runs_dir,
        drop_caches,
        kernel_options: Vec::new(),
    };
    let passes: &[bool] = if warm_too {
        &[true, false]
    } else {
        &[drop_caches]
    };
    let cells_per_rep: usize = opts
        .workloads
        .iter()
        .map(|&w| prepared.ready.iter().filter(|b| b.kind.runs(w)).count())
        .sum();
    let total = opts.reps * cells_per_rep * passes.len();
    let mut n = 0;
    for rep in 0..opts.reps {
        for &w in &opts.workloads {
            let k = prepared.ready.len().max(1);
            let order: Vec<&Backend> = (0..prepared.ready.len())
                .map(|i| &prepared.ready[(i + rep) % k])
                .filter(|b| b.kind.runs(w))
                .collect();
            for (b, &drop) in order
                .iter()
                .flat_map(|b| passes.iter().map(move |d| (*b, d)))
            {
                check_interrupt()?;
                n += 1;
                let records = if drop == drop_caches {
                    &mut records
                } else {
                    &mut warm_records
                };
                if let Some((_, why)) = broken.iter().find(|(k, _)| *k == b.kind) {
                    records.push(RunRecord {
                        backend: b.kind,
                        workload: w,
                        rep,
                        outcome: Outcome::Failed(format!("not run: {why}")),
                    });
                    continue;
                }
                ctx.drop_caches = drop;
                let outcome = run_one(&mut ctx, b, w, rep)?;
                if opts.verbose {
                    let what = match &outcome {
                        Outcome::Done {
                            elapsed,
                            peak_rss_kib,
                            ..
                        } => format!(
                            "{}{}",
                            report::fmt_secs(*elapsed),
                            peak_rss_kib
                                .map(|k| format!(", peak RSS {}", report::fmt_mib(k)))
                                .unwrap_or_default()
                        ),
                        Outcome::Failed(why) => format!("FAILED: {why}"),
                    };
                    eprintln!(
                        "[{n}/{total}] rep {} {:<16} {:<14} {:<4} {what}",
                        rep + 1,
                        w.name(),
                        b.kind.name(),
                        if drop { "cold" } else { "warm" }
                    );
                }
                if let Outcome::Failed(why) = &outcome {
                    if why.starts_with("mount:") {
                        broken.push((b.kind, format!("an earlier mount failed ({why})")));
                    }
                }
                records.push(RunRecord {
                    backend: b.kind,
                    workload: w,
                    rep,
                    outcome,
                });
            }
        }
    }
    drop(prepared.dev_fuse);
    for (kind, o) in ctx.kernel_options {
        if let Some((_, v)) = meta.versions.iter_mut().find(|(b, _)| *b == kind) {
            v.push_str(&format!(", mount options `{o}`"));
        }
    }
    // Columns: the requested backends that run at least one of the requested workloads.
    let backends: Vec<BackendKind> = opts
        .backends
        .iter()
        .copied()
        .filter(|b| opts.workloads.iter().any(|&w| b.runs(w)))
        .collect();
    let warm = warm_too.then(|| {
        let mut meta = meta.clone();
        meta.settings = meta.settings.replace(
            "page cache dropped before every timed run",
            "page cache warm: each run right after the cold run of the same workload and \
             backend (a fresh mount, the layers' data in the page cache)",
        );
        Report {
            meta,
            backends: backends.clone(),
            skipped: prepared.skipped.clone(),
            workloads: opts.workloads.clone(),
            records: warm_records,
        }
    });
    Ok((
        Report {
            meta,
            backends,
            skipped: prepared.skipped,
            workloads: opts.workloads.clone(),
            records,
        },
        warm,
    ))
}

fn script_command(b: &Backend, script: &str, mnt: &Path, stack: &Stack) -> Command {
    let mut cmd = command("sh", b.user);
    cmd.arg("-c")
        .arg(script)
        .env("M", mnt)
        .env("B", &stack.root)
        .env("WRITE_MIB", stack.sizes.write_mib.to_string())
        .env("SMALL_FILES", stack.sizes.small_files.to_string())
        .env("LC_ALL", "C");
    cmd
}

fn drop_page_cache() -> Result<()> {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").context(|| "writing /proc/sys/vm/drop_caches".into())
}

/// One mount, one workload, one unmount. `Err` only for an interrupt or a harness problem;
/// backend problems become [`Outcome::Failed`].
/// What every run of one benchmark shares.
struct RunContext<'a> {
    opts: &'a Options,
    stack: &'a Stack,
    runs_dir: &'a Path,
    drop_caches: bool,
    /// Superblock options of the first mount of each kernel backend, for the report.
    kernel_options: Vec<(BackendKind, String)>,
}

fn run_one(ctx: &mut RunContext<'_>, b: &Backend, w: Workload, rep: usize) -> Result<Outcome> {
    let (opts, stack, runs_dir, drop_caches) = (ctx.opts, ctx.stack, ctx.runs_dir, ctx.drop_caches);
    let kernel_options = &mut ctx.kernel_options;
    let run_dir = RunDir::create(
        runs_dir,
        &format!("{}-{}-{}", b.kind.name(), w.name(), rep),
        b.user,
    )?;
    let mounted = match mount(b, stack, &run_dir) {
        Ok(m) => m,
        Err(e) if e.interrupted => return Err(e),
        Err(e) => return Ok(Outcome::Failed(format!("mount: {e}"))),
    };
    if drop_caches {
        drop_page_cache()?;
    } else {
        // Warm runs keep the page cache but not the previous run's dirty data: without this
        // the writeback of an earlier copy-up or `rm -rf` lands in whichever run comes next.
        rustix::fs::sync();
    }
    let timed = match run_timed(
        script_command(b, w.run_script(), &mounted.mnt, stack),
        opts.timeout,
    ) {
        Ok(t) => t,
        Err(e) if e.interrupted => return Err(e),
        Err(e) => return Ok(Outcome::Failed(e.message)),
    };
    if !timed.success {
        return Ok(Outcome::Failed(format!(
            "workload exited with {}: {}",
            timed.status,
            timed.stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        )));
    }
    let mut fingerprint = timed.stdout.trim().to_string();
    if let Some(check) = w.check_script() {
        let out = run_timed(script_command(b, check, &mounted.mnt, stack), opts.timeout)?;
        if !out.success {
            return Ok(Outcome::Failed(format!(
                "check `{check}` exited with {}: {}",
                out.status,
                out.stderr.trim()
            )));
        }
        fingerprint.push_str(" | ");
        fingerprint.push_str(out.stdout.trim());
    }
    if b.kind.is_kernel() && !kernel_options.iter().any(|(k, _)| *k == b.kind) {
        // Record the options the kernel chose (redirect_dir, index, metacopy, ...).
        if let Some(m) = util::mount_at(&mounted.mnt) {
            let shown: Vec<&str> = m
                .options
                .split(',')
                .filter(|o| {
                    !o.starts_with("lowerdir")
                        && !o.starts_with("upperdir")
                        && !o.starts_with("workdir")
                })
                .collect();
            kernel_options.push((b.kind, shown.join(",")));
        }
    }
    let peak_rss_kib = mounted.daemon_peak_rss_kib();
    if let Err(e) = mounted.unmount() {
        return Ok(Outcome::Failed(format!("unmount: {e}")));
    }
    drop(run_dir);
    Ok(Outcome::Done {
        elapsed: timed.elapsed,
        fingerprint,
        peak_rss_kib,
    })
}

/// Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `readme`.
pub fn replace_section(readme: &Path, name: &str, content: &str) -> Result<()> {
    let text = fs::read_to_string(readme).context(|| format!("reading {}", readme.display()))?;
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        return Err(Error::new(format!(
            "{} lacks the markers {begin} ... {end}",
            readme.display()
        )));
    };
    if e < b {
        return Err(Error::new(format!(
            "{}: {end} before {begin}",
            readme.display()
        )));
    }
    let new = format!(
        "{}{begin}\n{}\n{}",
        &text[..b],
        content.trim_end(),
        &text[e..]
    );
    fs::write(readme, new).context(|| format!("writing {}", readme.display()))
}

/// [`write_workload_report`], and with a warm-cache report `<out>/latest-warm.{md,svg}`,
/// whose table follows the cold one in the README section.
pub fn write_workload_reports(
    opts: &Options,
    report: &Report,
    warm: Option<&Report>,
) -> Result<Vec<PathBuf>> {
    let Some(warm) = warm else {
        return write_workload_report(opts, report);
    };
    let no_readme = Options {
        readme: None,
        ..opts.clone()
    };
    let mut written = write_workload_report(&no_readme, report)?;
    let stem = if opts.quick {
        "quick-warm"
    } else {
        "latest-warm"
    };
    let md_path = opts.out_dir.join(format!("{stem}.md"));
    let svg_path = opts.out_dir.join(format!("{stem}.svg"));
    fs::write(&svg_path, warm.svg()).context(|| format!("writing {}", svg_path.display()))?;
    fs::write(&md_path, warm.markdown(Some(&format!("{stem}.svg"))))
        .context(|| format!("writing {}", md_path.display()))?;
    written.extend([md_path, svg_path]);
    if let Some(readme) = &opts.readme {
        let both = format!(
            "#### Cold cache\n\n{}\n\n#### Warm cache\n\n{}",
            report.markdown(Some("results/latest.svg")),
            warm.markdown(Some(&format!("results/{stem}.svg")))
        );
        replace_section(readme, "results", &both)?;
        written.push(readme.clone());
    }
    Ok(written)
}

/// Write `<out>/latest.{md,svg}` (`quick.*` for --quick) and update the README section.
pub fn write_workload_report(opts: &Options, report: &Report) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(&opts.out_dir).context(|| format!("mkdir {}", opts.out_dir.display()))?;
    let stem = if opts.quick { "quick" } else { "latest" };
    let md_path = opts.out_dir.join(format!("{stem}.md"));
    let svg_path = opts.out_dir.join(format!("{stem}.svg"));
    let svg_name = format!("{stem}.svg");
    fs::write(&svg_path, report.svg()).context(|| format!("writing {}", svg_path.display()))?;
    fs::write(&md_path, report.markdown(Some(&svg_name)))
        .context(|| format!("writing {}", md_path.display()))?;
    let mut written = vec![md_path, svg_path];
    if let Some(readme) = &opts.readme {
        replace_section(
            readme,
            "results",
            &report.markdown(Some("results/latest.svg")),
        )?;
        written.push(readme.clone());
    }
    Ok(written)
}

/// Build (or reuse) a lower of `entries` empty files in directories of 1000.
fn ensure_mem_tree(work_dir: &Path, entries: usize, owner: Option<util::RunAs>) -> Result<PathBuf> {
    let root = work_dir.join(format!("mem-{entries}"));
    let lower = root.join("lower");
    let stamp = root.join("stamp");
    let want = format!("entries={entries} owner={owner:?}\n");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(lower);
    }
    eprintln!(
        "building a tree of {entries} entries in {} ...",
        lower.display()
    );
    if root.exists() {
        fs::remove_dir_all(&root).context(|| format!("removing {}", root.display()))?;
    }
    let dirs = entries.div_ceil(1000);
    let mut made = 0;
    for d in 0..dirs {
        check_interrupt()?;
        let dir = lower.join(format!("d{d:04}"));
        fs::create_dir_all(&dir).context(|| format!("mkdir {}", dir.display()))?;
        for f in 0..1000.min(entries - made) {
            let path = dir.join(format!("file-{f:04}"));
            fs::File::create(&path).context(|| format!("create {}", path.display()))?;
        }
        made += 1000.min(entries - made);
    }
    if let Some(owner) = owner {
        util::run(
            Command::new("chown")
                .arg("-hR")
                .arg(owner.to_string())
                .arg(&root),
        )?;
    }
    fs::write(&stamp, want).context(|| format!("writing {}", stamp.display()))?;
    Ok(lower)
}

/// The `mem` mode: daemon RSS after a stat-walk over a large tree, for each FUSE backend.
pub fn run_mem(opts: &Options) -> Result<String> {
    let work_dir = prepare_work_dir(opts)?;
    let owner = is_root().then_some(opts.rootless_user);
    let lower = ensure_mem_tree(&work_dir, opts.mem_entries, owner)?;
    let stack = Stack::single_lower(&lower, owner);
    let _uring = FuseUringSwitch::apply(opts.fuse_uring);
    let mut mem_opts = opts.clone();
    mem_opts
        .backends
        .retain(|b| b.has_daemon() && !b.is_variant());
    let prepared = backend::prepare(&mem_opts, &stack)?;
    let runs_dir = work_dir.join("runs");
    fs::create_dir_all(&runs_dir).context(|| format!("mkdir {}", runs_dir.display()))?;
    let mut lines = Vec::new();
    for b in &prepared.ready {
        check_interrupt()?;
        let run_dir = RunDir::create(&runs_dir, &format!("mem-{}", b.kind.name()), b.user)?;
        let outcome = (|| -> Result<std::result::Result<MemResult, String>> {
            let mounted = match mount(b, &stack, &run_dir) {
                Ok(m) => m,
                Err(e) if e.interrupted => return Err(e),
                Err(e) => return Ok(Err(format!("mount: {e}"))),
            };
            let walk = run_timed(
                script_command(b, Workload::StatWalk.run_script(), &mounted.mnt, &stack),
                opts.timeout,
            )?;
            if !walk.success {
                return Ok(Err(format!(
                    "stat-walk exited with {}: {}",
                    walk.status,
                    walk.stderr.trim()
                )));
            }
            let result = MemResult {
                entries: walk.stdout.trim().parse().unwrap_or(0),
                elapsed: walk.elapsed,
                peak_kib: mounted.daemon_peak_rss_kib(),
                rss_kib: mounted.daemon_rss_kib(),
            };
            if let Err(e) = mounted.unmount() {
                return Ok(Err(format!("unmount: {e}")));
            }
            Ok(Ok(result))
        })()?;
        if opts.verbose {
            eprintln!("mem {}: {outcome:?}", b.kind.name());
        }
        lines.push(MemLine {
            backend: b.kind,
            outcome,
        });
    }
    let mut skipped = prepared.skipped.clone();
    if opts
        .backends
        .iter()
        .any(|b| b.is_kernel() && !b.is_variant())
    {
        skipped.push((BackendKind::Kernel, "no daemon".into()));
    }
    drop(prepared.dev_fuse);
    let meta = Meta::gather(&work_dir);
    let md = report::mem_markdown(&meta, opts.mem_entries, &lines, &skipped);
    fs::create_dir_all(&opts.out_dir).context(|| format!("mkdir {}", opts.out_dir.display()))?;
    let path = opts
        .out_dir
        .join(if opts.quick { "mem-quick.md" } else { "mem.md" });
    fs::write(&path, &md).context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    if let Some(readme) = &opts.readme {
        replace_section(readme, "mem", &md)?;
        eprintln!("updated {}", readme.display());
    }
    Ok(md)
}
