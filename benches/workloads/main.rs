//! Workload benchmark: the same workloads on the kernel overlay, fuse-overlayfs and ovl-fuse
//! (as root with passthrough, and rootless), each on a freshly mounted copy of one two-lower
//! stack. See benches/README.md for the command line, the procedure and the results.
//!
//! `cargo bench --bench workloads` runs the full matrix (as root; about 15 minutes);
//! `cargo bench --bench workloads -- --quick` is a smoke run; `-- --help` lists the options.

mod harness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(harness::cli_main(&args));
}
