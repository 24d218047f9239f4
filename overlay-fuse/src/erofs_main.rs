//! `ovl-erofs`: serve an EROFS image read-only through FUSE (see `overlay_fuse::erofs`).

use std::io::Write;
use std::process::ExitCode;

use overlay_fuse::daemon::say;
use overlay_fuse::erofs::{parse_args, ErofsCommand, USAGE};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cmd = match parse_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            say(format_args!("ovl-erofs: {e}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    let print = |s: std::fmt::Arguments<'_>| {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{s}");
    };
    match cmd {
        ErofsCommand::Help => {
            print(format_args!("{USAGE}"));
            ExitCode::SUCCESS
        }
        ErofsCommand::Version => {
            print(format_args!("ovl-erofs {}", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        ErofsCommand::Mount(req) => {
            let default = if req.debug {
                "debug"
            } else {
                "warn,fuser::session=error"
            };
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .try_init();
            ExitCode::from(overlay_fuse::erofs::run(*req) as u8)
        }
    }
}
