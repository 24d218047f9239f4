//! Workload benchmark: the same workloads on the kernel overlay, fuse-overlayfs and ovl-fuse
//! (as root with passthrough, and rootless), each on a freshly mounted copy of one two-lower
//! stack. See benches/README.md for the command line, the procedure and the results.
//!
//! `cargo bench --bench workloads` runs the full matrix (as root; about 15 minutes);
//! `cargo bench --bench workloads -- --quick` is a smoke run; `-- --help` lists the options.

mod harness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        // `cargo test --benches` / `--all-targets` runs bench binaries without arguments
        // (`cargo bench` passes `--bench`): do not start a 15-minute benchmark from a test run.
        println!(
            "workloads: nothing to do in a test run; the harness's smoke test is \
             tests/bench_smoke.rs. Run `cargo bench --bench workloads` (see benches/README.md)."
        );
        return;
    }
    std::process::exit(harness::cli_main(&args));
}
