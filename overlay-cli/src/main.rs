//! `ovl`: mount overlay stacks, run commands on throwaway uppers, and read and validate
//! upper layers. See `ovl --help`.

mod check;
mod cli;
mod commands;
mod copy;
mod diff;
mod error;
mod layer;
mod mountinfo;
mod mountopts;
mod persist;
mod run;
mod save;
mod state;
mod sys;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// Exit status of a failed operation.
const EXIT_FAILURE: u8 = 1;

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Write one line to stderr. A closed stderr is no reason to panic (as `eprintln!` would):
/// the line is dropped.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(line).and_then(|()| e.write_all(b"\n"));
}

/// [`say`] without the newline (progress lines that rewrite themselves).
pub(crate) fn say_raw(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// Write a stdout result; a closed pipe (`ovl diff | head`) is not an error.
pub(crate) fn output(r: std::io::Result<()>) -> Result<(), CliError> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::msg(format!("cannot write output: {e}"))),
        Ok(()) => Ok(()),
    }
}

/// What `ovl diff PATH` reads: the upper, the lowers, and how to name the internal
/// directories among them in messages (`(internal, shown)`: a `--tmp` upper, image lowers'
/// mount points).
type DiffLayers = (
    std::path::PathBuf,
    Vec<std::path::PathBuf>,
    Vec<(std::path::PathBuf, std::path::PathBuf)>,
);

/// The upper and lowers `ovl diff PATH` reads. PATH is normally an upper directory; when it
/// is the mount point of an overlay, its upper is diffed instead (from ovl's record of the
/// mount, or the kernel's `upperdir=`), against its lowers unless `--lower` was given. The
/// merged tree itself is never diffed as if it were an upper.
fn diff_layers(
    path: &std::path::Path,
    lowers: &[std::path::PathBuf],
) -> Result<DiffLayers, CliError> {
    // A persistence directory (--persist DIR): its upper.
    if let Some(u) = persist::upper_of(path) {
        return Ok((u, lowers.to_vec(), Vec::new()));
    }
    let plain = || Ok((path.to_path_buf(), lowers.to_vec(), Vec::new()));
    let Ok(canon) = std::fs::canonicalize(path) else {
        return plain();
    };
    let mounts =
        mountinfo::read().map_err(|e| CliError::io("/proc/self/mountinfo", "cannot read", e))?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == canon) else {
        return plain();
    };
    if m.fstype != "overlay" && !m.fstype.starts_with("fuse.ovl") {
        return plain();
    }
    let pick = |found: Vec<std::path::PathBuf>| {
        let usable = found.iter().all(|l| l.is_absolute() && l.is_dir());
        if lowers.is_empty() && usable {
            found
        } else {
            lowers.to_vec()
        }
    };
    if let Some(r) = state::Registry::open().get(&canon).filter(|r| !r.pending) {
        return match r.upper {
            Some(u) => {
                let lowers = pick(r.lowers);
                let renames = internal_names(&u, &lowers, &mounts);
                Ok((u, lowers, renames))
            }
            None => Err(CliError::path(
                &canon,
                "is the mount point of a read-only overlay: it has no upper to diff",
            )),
        };
    }
    if m.fstype == "overlay" {
        let found_lowers: Vec<_> = m
            .super_option("lowerdir")
            .map(overlay_core::mount::mountinfo::split_lowerdir)
            .unwrap_or_else(|| {
                // Mounted with the new mount API: one `lowerdir+=` per layer.
                m.super_options
                    .iter()
                    .filter(|(k, _)| k == "lowerdir+")
                    .filter_map(|(_, v)| v.as_deref())
                    .flat_map(overlay_core::mount::mountinfo::split_lowerdir)
                    .collect()
            })
            .into_iter()
            .rev() // top-first there, bottom-first here
            .collect();
        return match m.overlay_upper() {
            Some(u) if u.is_absolute() => {
                let lowers = pick(found_lowers);
                let renames = internal_names(&u, &lowers, &mounts);
                Ok((u, lowers, renames))
            }
            Some(u) => Err(CliError::path(
                &canon,
                format!(
                    "is an overlay mount point whose upper the kernel shows as the relative path {}; give the upper directory instead",
                    u.display()
                ),
            )),
            None => Err(CliError::path(
                &canon,
                "is the mount point of a read-only overlay: it has no upper to diff",
            )),
        };
    }
    Err(CliError::path(
        &canon,
        "is an ovl-fuse mount point that ovl has no record of; give its upper directory instead",
    ))
}

/// How messages name ovl's own directories among an overlay's layers, as the user gave
/// them: a `--tmp` upper (`ovl-tmp-*/upper` on its own tmpfs) as "the tmpfs upper", an
/// image lower (`ovl-image-*`, loop-mounted) by its image file. Found from the mounts, so
/// it works for a user who cannot read the owner's records.
fn internal_names(
    upper: &std::path::Path,
    lowers: &[std::path::PathBuf],
    mounts: &[mountinfo::MountInfo],
) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    let ours = |p: &std::path::Path, prefix: &str| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            && mounts.iter().any(|m| m.mount_point == p)
    };
    let mut renames: Vec<_> = lowers
        .iter()
        .filter(|l| ours(l, "ovl-image-"))
        .filter_map(|l| overlay::image_file_of(l).map(|f| (l.clone(), f)))
        .collect();
    if upper.parent().is_some_and(|t| ours(t, "ovl-tmp-")) {
        renames.push((upper.to_path_buf(), overlay::TMPFS_UPPER.into()));
    }
    renames
}

fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Diff(a) => {
            let opts = diff::DiffOptions { aufs: a.aufs };
            let (upper, lowers, renames) = diff_layers(&a.upper, &a.lowers)?;
            let named = |e: CliError| e.rename_prefixes(&renames);
            let lowers = if lowers.is_empty() {
                None
            } else {
                Some(diff::LowerStack::open(&lowers, opts.clone()).map_err(named)?)
            };
            let changes = diff::diff(&upper, lowers.as_ref(), &opts).map_err(named)?;
            output(diff::print(&changes, lowers.is_some(), a.json))?;
            Ok(0)
        }
        Command::Check(a) => {
            let report = check::check(&a.upper, a.work.as_deref(), a.xattr)?;
            output(check::print(&report, a.json))?;
            Ok(report.exit_code() as u8)
        }
        Command::Completions(a) => {
            // clap_complete panics when its writer fails: generate into memory, then write
            // the way every other output is written (a closed pipe is fine).
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "ovl", &mut script);
            output(std::io::stdout().lock().write_all(&script))?;
            Ok(0)
        }
        Command::Reset(a) => persist::reset(&a.dir).map(|()| 0),
        Command::Save(a) => {
            let source = persist::upper_of(&a.source)
                .map_or_else(|| diff_layers(&a.source, &[]).map(|(u, _, _)| u), Ok)?;
            save::save(&source, &a.image, a.format)?;
            Ok(0)
        }
        Command::Mount(a) => commands::mount(a),
        Command::Umount(a) => commands::umount(a),
        Command::Status(a) => commands::status(a),
        Command::Probe(a) => commands::probe(a),
        Command::Run(a) => match run::run(a)? {
            run::RunOutcome::Exited(code) => Ok(code),
        },
    }
}

fn main() -> ExitCode {
    if let Some(target) = std::env::var_os(commands::STATFS_PROBE_ENV) {
        commands::statfs_probe_main(&target);
    }
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let is_run = matches!(cli.command, Command::Run(_));
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say(format_args!("ovl: {e}"));
            // `ovl run` reserves 1..=124 for the command: its own failures are 125.
            ExitCode::from(if is_run { 125 } else { EXIT_FAILURE })
        }
    }
}
