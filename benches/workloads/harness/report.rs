//! Results: medians, ratios to the kernel, targets, the markdown table and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::backend::BackendKind;
use super::util::{mount_of, run};
use super::workload::{Workload, MEM_TARGET_MIB, ROOT_GEOMEAN_TARGET};

/// What one run produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The workload ran.
    Done {
        /// Wall-clock time of the timed script.
        elapsed: Duration,
        /// Output of the run and check scripts (compared across backends).
        fingerprint: String,
        /// Daemon `VmHWM` before unmount, KiB.
        peak_rss_kib: Option<u64>,
    },
    /// Mount, workload or unmount failed.
    Failed(String),
}

/// One (backend, workload, repetition).
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Backend.
    pub backend: BackendKind,
    /// Workload.
    pub workload: Workload,
    /// Repetition (0-based).
    pub rep: usize,
    /// Result.
    pub outcome: Outcome,
}

/// The machine and the run's settings.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// UTC date and time.
    pub date: String,
    /// `nproc`.
    pub nproc: usize,
    /// Total memory.
    pub mem_total: String,
    /// CPU model.
    pub cpu: String,
    /// `uname -r`.
    pub kernel: String,
    /// Filesystem of the work dir (upper and lowers).
    pub disk_fs: String,
    /// Commit of the source tree.
    pub commit: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the benchmark started.
    pub load: String,
    /// Mode summary (full/quick, repetitions, caches).
    pub settings: String,
    /// Description of the stack.
    pub stack: String,
    /// Backend versions.
    pub versions: Vec<(BackendKind, String)>,
}

impl Meta {
    /// Gather machine facts; `work_dir` is where layers live.
    pub fn gather(work_dir: &Path) -> Meta {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let disk_fs = mount_of(work_dir)
            .map(|m| format!("{} on {} ({})", m.fstype, m.source, m.mount_point.display()))
            .unwrap_or_else(|| "unknown".into());
        let manifest = super::options::manifest_dir();
        let commit = run(std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&manifest))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
        let dirty = run(std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&manifest))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
        Meta {
            date: utc_now(),
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            mem_total: format!("{:.1} GiB", mem_kib / 1024.0 / 1024.0),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            disk_fs,
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            commit: if dirty {
                format!("{commit} (with local changes)")
            } else {
                commit
            },
            ..Meta::default()
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate (civil-from-days).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Everything a workload benchmark produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// Machine and settings.
    pub meta: Meta,
    /// Backends requested (table columns), in order.
    pub backends: Vec<BackendKind>,
    /// Requested backends that did not run, with the reason.
    pub skipped: Vec<(BackendKind, String)>,
    /// Workloads (table rows), in order.
    pub workloads: Vec<Workload>,
    /// Every run.
    pub records: Vec<RunRecord>,
}

/// Summary of one (workload, backend) cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// Median time of the successful, verified runs.
    pub median: Option<Duration>,
    /// All successful times.
    pub times: Vec<Duration>,
    /// Failures.
    pub failures: Vec<String>,
    /// Runs whose fingerprint differs from the kernel's.
    pub mismatches: Vec<String>,
    /// Max daemon VmHWM over the runs, KiB.
    pub peak_rss_kib: Option<u64>,
}

fn median(times: &mut [Duration]) -> Option<Duration> {
    if times.is_empty() {
        return None;
    }
    times.sort();
    let n = times.len();
    Some(if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2
    })
}

/// Geometric mean.
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| *v <= 0.0) {
        return None;
    }
    Some((values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

/// Pass/fail/unknown of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Met.
    Pass,
    /// Missed.
    Fail,
    /// Not measurable in this run.
    Unknown,
}

impl Verdict {
    fn of(value: Option<f64>, limit: f64) -> Verdict {
        match value {
            Some(v) if v <= limit => Verdict::Pass,
            Some(_) => Verdict::Fail,
            None => Verdict::Unknown,
        }
    }

    /// Table symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Verdict::Pass => "✅ met",
            Verdict::Fail => "❌ missed",
            Verdict::Unknown => "— not measured",
        }
    }
}

/// One line of the targets table.
#[derive(Debug, Clone)]
pub struct TargetLine {
    /// What is aimed for.
    pub what: String,
    /// The measured value.
    pub value: Option<f64>,
    /// Verdict.
    pub verdict: Verdict,
}

impl Report {
    /// Summaries of every cell.
    pub fn cells(&self) -> BTreeMap<(Workload, BackendKind), Cell> {
        let mut reference: BTreeMap<Workload, String> = BTreeMap::new();
        for r in &self.records {
            if let (BackendKind::Kernel, Outcome::Done { fingerprint, .. }) =
                (r.backend, &r.outcome)
            {
                reference
                    .entry(r.workload)
                    .or_insert_with(|| fingerprint.clone());
            }
        }
        let mut cells: BTreeMap<(Workload, BackendKind), Cell> = BTreeMap::new();
        for r in &self.records {
            let cell = cells.entry((r.workload, r.backend)).or_default();
            match &r.outcome {
                Outcome::Done {
                    elapsed,
                    fingerprint,
                    peak_rss_kib,
                } => {
                    cell.peak_rss_kib = cell.peak_rss_kib.max(*peak_rss_kib);
                    match reference.get(&r.workload) {
                        Some(expected) if expected != fingerprint => cell.mismatches.push(format!(
                            "rep {}: got `{}`, kernel `{}`",
                            r.rep + 1,
                            fingerprint.replace('\n', " ⏎ "),
                            expected.replace('\n', " ⏎ ")
                        )),
                        _ => cell.times.push(*elapsed),
                    }
                }
                Outcome::Failed(why) => cell.failures.push(format!("rep {}: {why}", r.rep + 1)),
            }
        }
        for cell in cells.values_mut() {
            let mut times = cell.times.clone();
            cell.median = median(&mut times);
        }
        cells
    }

    /// Ratio of a backend's median to the kernel's for a workload.
    pub fn ratio(
        cells: &BTreeMap<(Workload, BackendKind), Cell>,
        w: Workload,
        b: BackendKind,
        base: BackendKind,
    ) -> Option<f64> {
        let num = cells.get(&(w, b))?.median?;
        let den = cells.get(&(w, base))?.median?;
        (den.as_secs_f64() > 0.0).then(|| num.as_secs_f64() / den.as_secs_f64())
    }

    /// Geomean of a backend's ratios to the kernel over all workloads (None unless every
    /// workload has one).
    pub fn geomean_ratio(
        &self,
        cells: &BTreeMap<(Workload, BackendKind), Cell>,
        b: BackendKind,
    ) -> Option<f64> {
        let ratios: Option<Vec<f64>> = self
            .workloads
            .iter()
            .map(|&w| Self::ratio(cells, w, b, BackendKind::Kernel))
            .collect();
        geomean(&ratios?)
    }

    /// The project's targets, evaluated.
    pub fn targets(&self) -> Vec<TargetLine> {
        let cells = self.cells();
        let mut lines = Vec::new();
        let k = BackendKind::Kernel;
        let root = BackendKind::OvlRoot;
        let rootless = BackendKind::OvlRootless;
        let fo = BackendKind::FuseOverlayfs;
        let has = |b: BackendKind| self.backends.contains(&b);
        if !has(k) {
            return lines;
        }
        if has(root) {
            let value = self.geomean_ratio(&cells, root);
            lines.push(TargetLine {
                what: format!("ovl-root geomean of ratios to kernel ≤ {ROOT_GEOMEAN_TARGET}"),
                value,
                verdict: Verdict::of(value, ROOT_GEOMEAN_TARGET),
            });
        }
        let metacopy = BackendKind::OvlRootMetacopy;
        let roots = [root, metacopy, BackendKind::OvlRootLowerPassthrough];
        for b in roots.into_iter().filter(|&b| has(b)) {
            for &w in self.workloads.iter().filter(|&&w| b.runs(w)) {
                // Issue 14's copyup-meta target is a metadata-only copy-up (metacopy=on)
                // against the kernel's full one: the metacopy column carries it when present.
                if b == root && w == Workload::CopyupMeta && has(metacopy) {
                    continue;
                }
                if let Some(limit) = w.root_target() {
                    let value = Self::ratio(&cells, w, b, k);
                    let base = if b == metacopy { " (metacopy=off)" } else { "" };
                    lines.push(TargetLine {
                        what: format!("{} {} ≤ {limit} × kernel{base}", b.name(), w.name()),
                        value,
                        verdict: Verdict::of(value, limit),
                    });
                }
            }
        }
        for &w in self.workloads.iter().filter(|_| has(rootless)) {
            if let Some(limit) = w.rootless_target() {
                let value = Self::ratio(&cells, w, rootless, k);
                lines.push(TargetLine {
                    what: format!("ovl-rootless {} ≤ {limit} × kernel", w.name()),
                    value,
                    verdict: Verdict::of(value, limit),
                });
            }
        }
        let daemons = [root, rootless]
            .into_iter()
            .chain(BackendKind::VARIANTS.into_iter().filter(|b| b.has_daemon()));
        for b in daemons.filter(|&b| has(b) && has(fo)) {
            let worst = self
                .workloads
                .iter()
                .filter(|&&w| b.runs(w))
                .map(|&w| Self::ratio(&cells, w, b, fo))
                .collect::<Option<Vec<f64>>>()
                .and_then(|v| v.into_iter().reduce(f64::max));
            lines.push(TargetLine {
                what: format!(
                    "{}: no workload slower than fuse-overlayfs (worst ratio to it ≤ 1)",
                    b.name()
                ),
                value: worst,
                verdict: Verdict::of(worst, 1.0),
            });
        }
        lines
    }

    /// The markdown report.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let cells = self.cells();
        let mut md = String::new();
        let m = &self.meta;
        let _ = writeln!(md, "### Workload benchmark, {}\n", m.date);
        let _ = writeln!(
            md,
            "Machine: {} CPUs ({}), {} RAM, Linux {}, layers on {}, load average {} at the start. \
             Commit {}. {}.\n",
            m.nproc, m.cpu, m.mem_total, m.kernel, m.disk_fs, m.load, m.commit, m.settings
        );
        let _ = writeln!(md, "Stack: {}\n", m.stack);
        // Medians.
        let _ = write!(md, "| workload |");
        for b in &self.backends {
            let _ = write!(md, " {} |", b.name());
        }
        let _ = writeln!(md);
        let _ = write!(md, "|---|");
        for _ in &self.backends {
            let _ = write!(md, "---:|");
        }
        let _ = writeln!(md);
        let skipped: BTreeMap<BackendKind, &String> =
            self.skipped.iter().map(|(b, w)| (*b, w)).collect();
        for &w in &self.workloads {
            let _ = write!(md, "| {} |", w.name());
            for &b in &self.backends {
                let text = if skipped.contains_key(&b) {
                    "skipped".to_string()
                } else {
                    match cells.get(&(w, b)) {
                        None if !b.runs(w) => "—".to_string(),
                        None => "not run".to_string(),
                        Some(c) => match c.median {
                            None if !c.mismatches.is_empty() => "WRONG RESULT".to_string(),
                            None => "FAILED".to_string(),
                            Some(t) => {
                                let mut s = fmt_secs(t);
                                if b != BackendKind::Kernel {
                                    if let Some(r) = Self::ratio(&cells, w, b, BackendKind::Kernel)
                                    {
                                        let _ = write!(s, " (×{r:.2})");
                                    }
                                }
                                if !c.failures.is_empty() || !c.mismatches.is_empty() {
                                    s.push_str(" ⚠");
                                }
                                s
                            }
                        },
                    }
                };
                let _ = write!(md, " {text} |");
            }
            let _ = writeln!(md);
        }
        let _ = write!(md, "| **geomean ×kernel** |");
        for &b in &self.backends {
            let text = match (b, self.geomean_ratio(&cells, b)) {
                (BackendKind::Kernel, _) => "1".to_string(),
                (_, Some(g)) => format!("**×{g:.2}**"),
                (_, None) => "—".to_string(),
            };
            let _ = write!(md, " {text} |");
        }
        let _ = writeln!(md);
        let _ = write!(md, "| daemon peak RSS (max VmHWM) |");
        for &b in &self.backends {
            let peak = self
                .workloads
                .iter()
                .filter_map(|&w| cells.get(&(w, b)).and_then(|c| c.peak_rss_kib))
                .max();
            let text = match (b.has_daemon(), peak) {
                (false, _) => "n/a".to_string(),
                (true, Some(kib)) => fmt_mib(kib),
                (true, None) => "—".to_string(),
            };
            let _ = write!(md, " {text} |");
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "\nMedians of the wall-clock time of the timed command; (×r) is the ratio to the \
             kernel overlay's median in the same run (lower is better). A ⚠ after a time would \
             mark a cell where some repetitions failed or gave a result different from the \
             kernel's (listed below, left out of the median).\n"
        );
        let variants: Vec<String> = self
            .backends
            .iter()
            .filter_map(|b| {
                b.fixed_opts().map(|o| {
                    let on: Vec<&str> = b
                        .workloads()
                        .unwrap_or(&[])
                        .iter()
                        .map(|w| w.name())
                        .collect();
                    format!("**{}** adds `{o}` (run for {})", b.name(), on.join(", "))
                })
            })
            .collect();
        if !variants.is_empty() {
            let _ = writeln!(
                md,
                "Variants (—: not run for that workload; ratios are still to the plain kernel \
                 column): {}.\n",
                variants.join("; ")
            );
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(md, "![ratios to the kernel overlay]({svg})\n");
        }
        // Targets.
        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(md, "| target | measured | verdict |\n|---|---:|---|");
            for t in targets {
                let value = t
                    .value
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "—".into());
                let _ = writeln!(md, "| {} | {value} | {} |", t.what, t.verdict.symbol());
            }
            let _ = writeln!(md);
        }
        // Per-workload RSS.
        let daemons: Vec<BackendKind> = self
            .backends
            .iter()
            .copied()
            .filter(|b| b.has_daemon() && !skipped.contains_key(b))
            .collect();
        if !daemons.is_empty() {
            let _ = write!(md, "<details><summary>Daemon peak RSS per workload (VmHWM before unmount, max over repetitions)</summary>\n\n| workload |");
            for b in &daemons {
                let _ = write!(md, " {} |", b.name());
            }
            let _ = write!(md, "\n|---|");
            for _ in &daemons {
                let _ = write!(md, "---:|");
            }
            let _ = writeln!(md);
            for &w in &self.workloads {
                let _ = write!(md, "| {} |", w.name());
                for &b in &daemons {
                    let text = cells
                        .get(&(w, b))
                        .and_then(|c| c.peak_rss_kib)
                        .map(fmt_mib)
                        .unwrap_or_else(|| "—".into());
                    let _ = write!(md, " {text} |");
                }
                let _ = writeln!(md);
            }
            let _ = writeln!(md, "\n</details>\n");
        }
        // All repetitions.
        let _ = writeln!(
            md,
            "<details><summary>All repetitions (seconds)</summary>\n"
        );
        let _ = writeln!(md, "| workload | backend | times |\n|---|---|---|");
        for &w in &self.workloads {
            for &b in &self.backends {
                if let Some(c) = cells.get(&(w, b)) {
                    let times: Vec<String> = c
                        .times
                        .iter()
                        .map(|t| format!("{:.3}", t.as_secs_f64()))
                        .collect();
                    let _ = writeln!(md, "| {} | {} | {} |", w.name(), b.name(), times.join(", "));
                }
            }
        }
        let _ = writeln!(md, "\n</details>\n");
        // Problems.
        let mut problems = Vec::new();
        let kernel_ran = self
            .records
            .iter()
            .any(|r| r.backend == BackendKind::Kernel && matches!(r.outcome, Outcome::Done { .. }));
        if !kernel_ran {
            problems.push(
                "- results are **not verified**: the kernel overlay, the reference of every check, did not run"
                    .to_string(),
            );
        }
        for (b, why) in &self.skipped {
            problems.push(format!("- **{}** skipped: {why}", b.name()));
        }
        for ((w, b), c) in &cells {
            for f in &c.failures {
                problems.push(format!("- {} on {} failed ({f})", w.name(), b.name()));
            }
            for mm in &c.mismatches {
                problems.push(format!(
                    "- {} on {}: result differs from the kernel's ({mm})",
                    w.name(),
                    b.name()
                ));
            }
        }
        if !problems.is_empty() {
            let _ = writeln!(md, "Skipped backends and problems:\n");
            for p in problems {
                let _ = writeln!(md, "{p}");
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md, "Workloads:\n");
        for &w in &self.workloads {
            let _ = writeln!(md, "- **{}**: {}", w.name(), w.description());
        }
        if !m.versions.is_empty() {
            let _ = writeln!(md, "\nBackends:\n");
            for (b, v) in &m.versions {
                let _ = writeln!(md, "- **{}**: {v}", b.name());
            }
        }
        md
    }

    /// A horizontal bar chart of the ratios to the kernel (log scale), hand-written SVG.
    pub fn svg(&self) -> String {
        let cells = self.cells();
        let series: Vec<BackendKind> = self
            .backends
            .iter()
            .copied()
            .filter(|&b| b != BackendKind::Kernel)
            .collect();
        // Rows of each workload: the backends run for it.
        let rows = |w: Workload| -> Vec<BackendKind> {
            series.iter().copied().filter(|b| b.runs(w)).collect()
        };
        let colors = |b: BackendKind| match b {
            BackendKind::FuseOverlayfs => "#9e9e9e",
            BackendKind::OvlRoot => "#1f77b4",
            BackendKind::OvlRootless => "#ff7f0e",
            BackendKind::Kernel => "#2ca02c",
            BackendKind::KernelMetacopy => "#98df8a",
            BackendKind::OvlRootMetacopy => "#17becf",
            BackendKind::OvlRootLowerPassthrough => "#9467bd",
        };
        let bar_h = 12.0;
        let group_h = |w: Workload| bar_h * rows(w).len().max(1) as f64 + 14.0;
        let left = 140.0;
        let plot_w = 560.0;
        let top = 72.0;
        let height = top + self.workloads.iter().map(|&w| group_h(w)).sum::<f64>() + 40.0;
        let width = left + plot_w + 150.0;
        // Log scale from 0.1 to 100.
        let (lo, hi) = (0.1f64.log10(), 100f64.log10());
        let x = |r: f64| left + (r.clamp(0.1, 100.0).log10() - lo) / (hi - lo) * plot_w;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"##
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="18" font-size="14" font-weight="bold">Time relative to the kernel overlay (median, log scale; lower is better)</text>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="34" fill="#555">{} · commit {}</text>"##,
            xml(&self.meta.date),
            xml(&self.meta.commit)
        );
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="48" fill="#555">{}</text>"##,
            xml(&self.meta.settings)
        );
        let plot_bottom = height - 40.0;
        for tick in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] {
            let tx = x(tick);
            let (stroke, w) = if tick == 1.0 {
                ("#2ca02c", 2.0)
            } else {
                ("#ddd", 1.0)
            };
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{plot_bottom:.1}" stroke="{stroke}" stroke-width="{w}"/>"##
            );
            let _ = writeln!(
                s,
                r##"<text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{tick}×</text>"##,
                plot_bottom + 14.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#2ca02c">kernel = 1</text>"##,
            x(1.0),
            top - 6.0
        );
        let mut group_top = top;
        for &w in &self.workloads {
            let gy = group_top + 7.0;
            group_top += group_h(w);
            let series = rows(w);
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left - 8.0,
                gy + group_h(w) / 2.0 - 4.0,
                w.name()
            );
            for (j, &b) in series.iter().enumerate() {
                let y = gy + bar_h * j as f64;
                match Self::ratio(&cells, w, b, BackendKind::Kernel) {
                    Some(r) => {
                        let _ = writeln!(
                            s,
                            r##"<rect x="{left}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: ×{r:.2}</title></rect>"##,
                            (x(r) - left).max(1.0),
                            bar_h - 2.0,
                            colors(b),
                            b.name(),
                            w.name()
                        );
                        let _ = writeln!(
                            s,
                            r##"<text x="{:.1}" y="{:.1}" fill="#333" font-size="9">×{r:.2}</text>"##,
                            x(r) + 3.0,
                            y + bar_h - 3.5
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{:.1}" y="{:.1}" fill="#999" font-size="9">{}: no data</text>"##,
                            left + 3.0,
                            y + bar_h - 3.5,
                            b.name()
                        );
                    }
                }
            }
            if let (Some(limit), true) = (w.root_target(), series.contains(&BackendKind::OvlRoot)) {
                let j = series
                    .iter()
                    .position(|&b| b == BackendKind::OvlRoot)
                    .unwrap_or(0);
                let y = gy + bar_h * j as f64;
                let _ = writeln!(
                    s,
                    r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#d62728" stroke-width="2"><title>ovl-root target ≤ {limit}×</title></line>"##,
                    x(limit),
                    y - 1.0,
                    y + bar_h - 1.0
                );
            }
        }
        // Legend.
        let lx = left + plot_w + 16.0;
        for (j, &b) in series.iter().enumerate() {
            let ly = top + 18.0 * j as f64;
            let _ = writeln!(
                s,
                r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                colors(b),
                lx + 16.0,
                ly + 9.0,
                b.name()
            );
        }
        let ly = top + 18.0 * series.len() as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{ly:.1}" x2="{0:.1}" y2="{1:.1}" stroke="#d62728" stroke-width="2"/><text x="{2:.1}" y="{3:.1}">ovl-root target</text>"##,
            lx + 6.0,
            ly + 10.0,
            lx + 16.0,
            ly + 9.0
        );
        let _ = writeln!(s, "</svg>");
        s
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Seconds with 3 significant decimals.
pub fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.1} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1000.0)
    }
}

/// KiB as MiB.
pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One line of the memory report.
#[derive(Debug, Clone)]
pub struct MemLine {
    /// Backend.
    pub backend: BackendKind,
    /// Result or failure.
    pub outcome: std::result::Result<MemResult, String>,
}

/// Memory measured after a stat-walk.
#[derive(Debug, Clone, Copy)]
pub struct MemResult {
    /// Entries the walk printed.
    pub entries: u64,
    /// Time of the walk.
    pub elapsed: Duration,
    /// VmHWM, KiB.
    pub peak_kib: Option<u64>,
    /// VmRSS, KiB.
    pub rss_kib: Option<u64>,
}

/// The markdown of the `mem` mode.
pub fn mem_markdown(
    meta: &Meta,
    entries: usize,
    lines: &[MemLine],
    skipped: &[(BackendKind, String)],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### Daemon memory after a stat-walk, {}\n", meta.date);
    let _ = writeln!(
        md,
        "Machine: {} CPUs, {} RAM, Linux {}, layers on {}. Commit {}. Tree: {entries} empty files \
         in directories of 1000, one lower layer; fresh mount, then `find MNT -printf '%s %i\\n'`.\n",
        meta.nproc, meta.mem_total, meta.kernel, meta.disk_fs, meta.commit
    );
    let _ = writeln!(
        md,
        "| backend | entries seen | walk time | VmHWM | VmRSS after walk | target ≤ {MEM_TARGET_MIB} MiB |\n|---|---:|---:|---:|---:|---|"
    );
    for line in lines {
        match &line.outcome {
            Ok(r) => {
                let peak = r.peak_kib.map(fmt_mib).unwrap_or_else(|| "—".into());
                let rss = r.rss_kib.map(fmt_mib).unwrap_or_else(|| "—".into());
                let verdict = match r.peak_kib {
                    Some(k) if (k as f64 / 1024.0) <= MEM_TARGET_MIB => Verdict::Pass,
                    Some(_) => Verdict::Fail,
                    None => Verdict::Unknown,
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {peak} | {rss} | {} |",
                    line.backend.name(),
                    r.entries,
                    fmt_secs(r.elapsed),
                    verdict.symbol()
                );
            }
            Err(why) => {
                let _ = writeln!(md, "| {} | FAILED: {why} | | | | |", line.backend.name());
            }
        }
    }
    for (b, why) in skipped {
        let _ = writeln!(md, "| {} | skipped: {why} | | | | |", b.name());
    }
    md
}
