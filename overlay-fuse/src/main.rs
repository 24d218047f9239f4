//! `ovl-fuse`: mount an overlay through FUSE (fuse-overlayfs compatible command line).

use std::process::ExitCode;

use std::io::Write;

use overlay_fuse::daemon::say;
use overlay_fuse::options::{parse_args, Command, USAGE};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

fn init_logging(debug: bool) {
    let default = if debug {
        "debug"
    } else {
        // fuser warns when the session ends after an external unmount; not news.
        "warn,fuser::session=error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let writer = match std::env::var_os("OVL_FUSE_LOG_FILE") {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => BoxMakeWriter::new(std::sync::Mutex::new(f)),
            Err(e) => {
                say(format_args!(
                    "ovl-fuse: log file {}: {e}",
                    path.to_string_lossy()
                ));
                BoxMakeWriter::new(std::io::stderr)
            }
        },
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
}

/// Write one line to stdout; a closed pipe (`ovl-fuse --help | true`) is not an error.
fn print_stdout(line: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = o
        .write_fmt(line)
        .and_then(|()| o.write_all(b"\n"))
        .and_then(|()| o.flush());
}

/// Raise the soft limit on open files to the hard one: the engine holds each layer's root
/// open, and a stack may have thousands of lower layers (the kernel overlay's limit of 500
/// is not ours), more than the usual soft limit of 1024.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::info!("cannot raise the open-file limit: {e}");
        }
    }
}

fn main() -> ExitCode {
    let cmd = match parse_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            say(format_args!("ovl-fuse: {e}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            print_stdout(format_args!("{USAGE}"));
            ExitCode::SUCCESS
        }
        Command::Version => {
            print_stdout(format_args!("ovl-fuse {}", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Command::Mount(req) => {
            init_logging(req.debug);
            raise_open_file_limit();
            ExitCode::from(overlay_fuse::daemon::run(*req) as u8)
        }
    }
}
