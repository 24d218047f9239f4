//! Command-line options of the workload benchmark.

use std::path::PathBuf;
use std::time::Duration;

use super::backend::BackendKind;
use super::util::{Error, Result, RunAs};
use super::workload::Workload;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The workload matrix, then the memory measurement (default).
    All,
    /// The workload matrix only.
    Workloads,
    /// Daemon memory after a stat-walk over a large tree.
    Mem,
}

/// All options; [`Options::defaults`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// What to run.
    pub mode: Mode,
    /// Smoke run: one repetition, a tree of a few hundred files, 16 MiB instead of 1 GiB.
    pub quick: bool,
    /// Repetitions of every (workload, backend) pair.
    pub reps: usize,
    /// Backends, in the order of the table.
    pub backends: Vec<BackendKind>,
    /// Workloads, in the order of the table.
    pub workloads: Vec<Workload>,
    /// `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed run (all backends alike).
    pub drop_caches: bool,
    /// With `drop_caches`, also a warm-cache pass (full runs unless a cache flag is given):
    /// every cold run is followed by a run of the same workload on the same backend on a
    /// fresh mount without dropping the cache, reported in a table of its own.
    pub warm_too: bool,
    /// Where the base stack and the per-run upper/work dirs live.
    pub work_dir: PathBuf,
    /// Where `latest.{md,svg}` (or `quick.*`, `mem.md`) are written.
    pub out_dir: PathBuf,
    /// The README whose results section is replaced (full runs only).
    pub readme: Option<PathBuf>,
    /// Explicit `ovl-fuse` binary.
    pub ovl_fuse: Option<PathBuf>,
    /// Build `ovl-fuse` (release) with cargo when no binary is given.
    pub build_ovl_fuse: bool,
    /// Install missing Debian packages (fuse-overlayfs, fuse3) with apt-get.
    pub install_packages: bool,
    /// The user of the rootless backend when the harness runs as root.
    pub rootless_user: RunAs,
    /// Extra `-o` options for every ovl-fuse backend.
    pub ovl_opts: Option<String>,
    /// Extra `-o` options for the kernel overlay and every ovl-fuse backend alike (options
    /// both understand, e.g. `metacopy=on`, `redirect_dir=on`); fuse-overlayfs gets none.
    pub overlay_opts: Option<String>,
    /// Turn the kernel's FUSE-over-io_uring switch on for the run (restored after); `None`:
    /// leave it as it is.
    pub fuse_uring: Option<bool>,
    /// Entries of the tree in `mem` mode.
    pub mem_entries: usize,
    /// Limit for one workload run.
    pub timeout: Duration,
    /// Print progress lines.
    pub verbose: bool,
}

/// The source tree (the facade package), fixed at compile time.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory and the profile directory this binary was built into
/// (`<target>/<profile>/deps/<exe>`).
pub fn target_dirs() -> Option<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let profile = if deps.file_name()? == "deps" {
        deps.parent()?
    } else {
        deps
    };
    Some((profile.parent()?.to_path_buf(), profile.to_path_buf()))
}

impl Options {
    /// Defaults: a full run of every workload on every backend, 3 repetitions.
    pub fn defaults() -> Self {
        let target = target_dirs()
            .map(|(t, _)| t)
            .unwrap_or_else(|| manifest_dir().join("target"));
        Options {
            mode: Mode::All,
            quick: false,
            reps: 3,
            backends: BackendKind::ALL
                .into_iter()
                .chain(BackendKind::VARIANTS)
                .collect(),
            workloads: Workload::ALL.to_vec(),
            drop_caches: true,
            warm_too: true,
            work_dir: target.join("overlay-bench"),
            out_dir: manifest_dir().join("benches/results"),
            readme: Some(manifest_dir().join("benches/README.md")),
            ovl_fuse: std::env::var_os("OVL_FUSE").map(PathBuf::from),
            build_ovl_fuse: true,
            install_packages: true,
            rootless_user: RunAs {
                uid: 65534,
                gid: 65534,
            },
            ovl_opts: std::env::var("OVL_FUSE_OPTS")
                .ok()
                .filter(|s| !s.is_empty()),
            overlay_opts: None,
            fuse_uring: Some(true),
            mem_entries: 1_000_000,
            timeout: Duration::from_secs(1800),
            verbose: true,
        }
    }

    /// Parse command-line arguments (without the program name). `cargo bench` adds `--bench`,
    /// which is ignored.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut opts = Options::defaults();
        let mut drop_caches: Option<bool> = None;
        let mut fuse_uring: Option<Option<bool>> = None;
        let mut reps: Option<usize> = None;
        let mut entries: Option<usize> = None;
        let mut readme_off = false;
        let mut out_given = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| Error::new(format!("{name} needs a value"))),
                }
            };
            match flag {
                "--bench" => {}
                "all" => opts.mode = Mode::All,
                "run" | "workloads" => opts.mode = Mode::Workloads,
                "mem" => opts.mode = Mode::Mem,
                "--quick" => opts.quick = true,
                "--reps" => reps = Some(parse_num(&value("--reps")?, "--reps")?),
                "--backends" => {
                    opts.backends = split_list(&value("--backends")?)
                        .map(|s| {
                            BackendKind::parse(s).ok_or_else(|| {
                                Error::new(format!(
                                    "unknown backend {s:?}; known: {}",
                                    BackendKind::ALL
                                        .into_iter()
                                        .chain(BackendKind::VARIANTS)
                                        .map(|b| b.name())
                                        .collect::<Vec<_>>()
                                        .join(",")
                                ))
                            })
                        })
                        .collect::<Result<_>>()?
                }
                "--workloads" => {
                    opts.workloads = split_list(&value("--workloads")?)
                        .map(|s| {
                            Workload::parse(s).ok_or_else(|| {
                                Error::new(format!(
                                    "unknown workload {s:?}; known: {}",
                                    Workload::ALL.map(|w| w.name()).join(",")
                                ))
                            })
                        })
                        .collect::<Result<_>>()?
                }
                "--drop-caches" => drop_caches = Some(true),
                "--no-drop-caches" => drop_caches = Some(false),
                "--work-dir" => opts.work_dir = PathBuf::from(value("--work-dir")?),
                "--out" => {
                    opts.out_dir = PathBuf::from(value("--out")?);
                    out_given = true;
                }
                "--no-readme" => readme_off = true,
                "--ovl-fuse" => opts.ovl_fuse = Some(PathBuf::from(value("--ovl-fuse")?)),
                "--no-build" => opts.build_ovl_fuse = false,
                "--no-install" => opts.install_packages = false,
                "--rootless-user" => {
                    let v = value("--rootless-user")?;
                    let (u, g) = v.split_once(':').unwrap_or((&v, &v));
                    opts.rootless_user = RunAs {
                        uid: parse_num(u, "--rootless-user")?,
                        gid: parse_num(g, "--rootless-user")?,
                    };
                }
                "--ovl-opts" => opts.ovl_opts = Some(value("--ovl-opts")?),
                "--overlay-opts" => opts.overlay_opts = Some(value("--overlay-opts")?),
                "--fuse-uring" => {
                    fuse_uring = Some(match value("--fuse-uring")?.as_str() {
                        "on" => Some(true),
                        "off" => Some(false),
                        "keep" => None,
                        v => {
                            return Err(Error::new(format!("--fuse-uring {v:?}: on, off or keep")))
                        }
                    })
                }
                "--entries" => entries = Some(parse_num(&value("--entries")?, "--entries")?),
                "--timeout" => {
                    opts.timeout =
                        Duration::from_secs(parse_num(&value("--timeout")?, "--timeout")?)
                }
                "-q" | "--quiet" => opts.verbose = false,
                "-h" | "--help" => return Err(Error::new(USAGE)),
                other => return Err(Error::new(format!("unknown argument {other:?}\n\n{USAGE}"))),
            }
        }
        if opts.backends.is_empty() || opts.workloads.is_empty() {
            return Err(Error::new("--backends and --workloads must not be empty"));
        }
        opts.reps = reps.unwrap_or(if opts.quick { 1 } else { 3 }).max(1);
        // Quick runs are smoke tests: keep them from disturbing a shared machine.
        opts.drop_caches = drop_caches.unwrap_or(!opts.quick);
        opts.warm_too = drop_caches.is_none() && !opts.quick;
        // Quick runs leave the machine's FUSE settings alone, like its page cache.
        opts.fuse_uring = fuse_uring.unwrap_or(if opts.quick { None } else { Some(true) });
        opts.mem_entries = entries.unwrap_or(if opts.quick { 10_000 } else { 1_000_000 });
        if opts.quick {
            opts.timeout = opts.timeout.min(Duration::from_secs(300));
        }
        if readme_off || opts.quick || out_given {
            opts.readme = None;
        }
        Ok(opts)
    }
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_num<T: std::str::FromStr>(s: &str, name: &str) -> Result<T> {
    s.parse()
        .map_err(|_| Error::new(format!("{name}: not a number: {s:?}")))
}

/// `--help` text.
pub const USAGE: &str = "\
usage: cargo bench --bench workloads -- [all|run|mem] [options]

  all (default)      run, then mem
  run                the workload matrix: every workload on every backend, interleaved
  mem                daemon RSS after a stat-walk over a large tree (--entries, default 1M)

options:
  --quick            smoke run: 1 repetition, a few hundred files, 16 MiB instead of 1 GiB
  --reps N           repetitions per (workload, backend) (default 3; quick: 1)
  --backends LIST    kernel,fuse-overlayfs,ovl-root,ovl-rootless and the variants
                     kernel-metacopy,ovl-root-metacopy (metacopy=on; copyup-meta only),
                     ovl-root-lp (lower_passthrough=1; read-small and read-big only)
                     (default: all)
  --workloads LIST   stat-walk,readdir-big,read-small,read-big,copyup-meta,copyup-big,
                     create-untar,delete-tree,write-big,small-write-read (default: all)
  --drop-caches / --no-drop-caches
                     only cold runs (the page cache dropped before every timed run) / only
                     warm ones (default: both, in two tables, each warm run right after the
                     cold run of the same workload and backend; quick: warm only)
  --work-dir DIR     base stack and per-run dirs (default: <target>/overlay-bench)
  --out DIR          where latest.{md,svg} go (default: benches/results)
  --no-readme        do not update benches/README.md (quick runs and --out never do)
  --ovl-fuse PATH    ovl-fuse binary (or $OVL_FUSE); default: cargo build --release
  --no-build         do not build ovl-fuse; use <target>/<profile>/ovl-fuse if present
  --no-install       do not apt-get install fuse-overlayfs / fuse3 when missing
  --ovl-opts OPTS    extra -o options for ovl-fuse (or $OVL_FUSE_OPTS)
  --overlay-opts OPTS
                     extra -o options for the kernel overlay and ovl-fuse alike, e.g.
                     metacopy=on or redirect_dir=on (fuse-overlayfs gets none)
  --fuse-uring on|off|keep
                     set the kernel's FUSE-over-io_uring switch
                     (/sys/module/fuse/parameters/enable_uring) for the run and restore it
                     after (default: on; quick: keep). ovl-fuse uses io_uring when it is on;
                     fuse-overlayfs (libfuse without io_uring) reads /dev/fuse either way
  --rootless-user U:G  user of ovl-rootless when run as root (default 65534:65534)
  --entries N        tree size for mem mode
  --timeout SECS     limit per workload run (default 1800)
  -q, --quiet        no progress lines
";
