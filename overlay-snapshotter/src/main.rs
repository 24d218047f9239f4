//! `ovl-snapshotter --address SOCKET --root DIR`: containerd's snapshots API on a Unix
//! socket, for `[proxy_plugins.NAME] type = "snapshot"`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use overlay_snapshotter::{service, BackendChoice, Snapshotter};

/// A containerd snapshotter on the overlay engine: kernel overlay mounts where this process
/// may mount overlay, ovl-fuse mounts where it may not.
#[derive(Debug, Parser)]
#[command(name = "ovl-snapshotter", version)]
struct Args {
    /// The Unix socket to serve on (containerd's `address` of the proxy plugin).
    #[arg(long, default_value = "/run/ovl-snapshotter/ovl-snapshotter.sock")]
    address: PathBuf,
    /// Where snapshots and the metadata database live.
    #[arg(long, default_value = "/var/lib/ovl-snapshotter")]
    root: PathBuf,
    /// Which overlay to hand out: the kernel's where possible (auto), or always one.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let root = match std::path::absolute(&args.root) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ovl-snapshotter: --root {}: {e}", args.root.display());
            return ExitCode::from(2);
        }
    };
    // containerd splits overlay options at `,` and lowerdir at `:`, unescaped.
    if root
        .to_str()
        .is_none_or(|s| s.contains([',', ':', '\\', '=']))
    {
        eprintln!(
            "ovl-snapshotter: --root {}: must be UTF-8 without ',', ':', '=' or '\\' (containerd splits mount options at them)",
            root.display()
        );
        return ExitCode::from(2);
    }
    // Probe (test mounts) before any thread exists.
    let snapshotter = match Snapshotter::open(&root, args.backend) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ovl-snapshotter: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        root = %root.display(),
        "backends: {}",
        snapshotter.backends().describe()
    );
    if snapshotter.backends().kernel.is_err() && snapshotter.backends().fuse.is_err() {
        tracing::warn!("no overlay backend works here: only single-layer snapshots can be mounted");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ovl-snapshotter: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(service::serve(snapshotter, &args.address)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ovl-snapshotter: {e}");
            ExitCode::FAILURE
        }
    }
}
