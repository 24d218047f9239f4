//! Shared harness of the differential tests: a fixture stack, a kernel overlay mount guard,
//! generated operation sequences, and snapshot comparison.
//!
//! A differential test runs the same operations on two [`Backend`]s, each on its own fresh
//! copy of the fixture, and requires (1) every operation to have the same outcome (the same
//! errno when it fails), (2) the same merged tree afterwards, and (3) the same upper layer on
//! disk. The kernel overlay is the reference.
//!
//! Used by `tests/differential.rs` (kernel vs engine) and `tests/differential_fuse.rs`
//! (kernel vs our FUSE mount, via [`kernel::MountedBackend`]).
#![allow(dead_code)]

pub mod engine;
pub mod features;
pub mod fixture;
#[path = "../../benches/workloads/harness/fuse_uring.rs"]
pub mod fuse_uring;
pub mod kernel;
pub mod ops;
pub mod tree;

use std::path::Path;
use std::sync::OnceLock;

use ops::Op;
use tree::{diff, snapshot_dir, Tree, XattrFilter};

/// Outcome of one operation: `Ok` with a description (empty, or a stat summary), or the errno.
pub type Outcome = Result<String, i32>;

/// Something that applies operations to an overlay and can be inspected afterwards.
pub trait Backend {
    /// Short name for messages ("kernel", "engine", "fuse").
    fn name(&self) -> &str;
    /// Apply one operation.
    fn apply(&mut self, op: &Op) -> Outcome;
    /// Snapshot of the merged view.
    fn merged(&mut self) -> Tree;
    /// The upper layer directory on disk.
    fn upper(&self) -> &Path;
}

/// Per-process setup every differential test calls first: a fixed umask (backends that
/// bypass the VFS apply [`ops::UMASK`] themselves).
pub fn init() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(ops::UMASK));
}

/// Whether this machine can mount a kernel overlay. Returns `true` when it can. When it
/// cannot, panics if `CI=true` (CI must not silently skip), otherwise prints why and returns
/// `false` so the caller can skip.
pub fn require_mounts() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let stack = fixture::FixtureStack::create(tmp.path());
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let guard = kernel::KernelOverlay::mount(&stack, &mnt).map_err(|e| e.to_string())?;
        drop(guard);
        Ok(())
    });
    match probe {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but a kernel overlay cannot be mounted: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a kernel overlay here ({why}); run as root");
            false
        }
    }
}

/// Turn the kernel's FUSE-over-io_uring switch on while the returned guard lives (put back as
/// it was on drop). Global: FUSE mounts made meanwhile by other tests may use io_uring too,
/// which is one of their two valid transports. `None` (after printing why) where the switch
/// cannot be turned on; panics then if `CI=true`.
pub fn require_fuse_uring() -> Option<fuse_uring::FuseUringSwitch> {
    match fuse_uring::FuseUringSwitch::on() {
        Ok(switch) => Some(switch),
        Err(state) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but FUSE over io_uring cannot be enabled: {state}")
        }
        Err(state) => {
            eprintln!("SKIPPED: FUSE over io_uring cannot be enabled: {state}");
            None
        }
    }
}

/// Generate operation sequences of at most `max_ops` (`cases(default_cases)` of them) and
/// require the two backends `make` returns (fresh for every sequence) to agree on each; on a
/// difference proptest shrinks the sequence (at most `max_shrink_iters` steps) and panics
/// with it.
pub fn run_property(
    default_cases: u32,
    max_ops: usize,
    max_shrink_iters: u32,
    make: impl Fn() -> (Box<dyn Backend>, Box<dyn Backend>),
) {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        max_shrink_iters,
        ..Config::default()
    });
    let result = runner.run(&ops::ops(max_ops), |ops| {
        let (mut a, mut b) = make();
        run_case(&ops, a.as_mut(), b.as_mut()).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => eprintln!("{} sequences agreed", runner.config().cases),
        Err(e) => panic!("{e}"),
    }
}

/// Generate operation sequences as [`run_property`] does, each checked by `check` (an
/// `Err` describes the difference found).
pub fn run_property_fn(
    default_cases: u32,
    max_ops: usize,
    max_shrink_iters: u32,
    check: impl Fn(&[Op]) -> Result<(), String>,
) {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        max_shrink_iters,
        ..Config::default()
    });
    match runner.run(&ops::ops(max_ops), |ops| {
        check(&ops).map_err(TestCaseError::fail)
    }) {
        Ok(()) => eprintln!("{} sequences agreed", runner.config().cases),
        Err(e) => panic!("{e}"),
    }
}

/// Number of generated sequences: `OVL_DIFF_CASES`, or `default`.
pub fn cases(default: u32) -> u32 {
    match std::env::var("OVL_DIFF_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("OVL_DIFF_CASES={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Human-readable outcome.
pub fn show(o: &Outcome) -> String {
    match o {
        Ok(s) if s.is_empty() => "ok".to_string(),
        Ok(s) => format!("ok ({s})"),
        Err(e) => format!(
            "{} ({})",
            errno_name(*e),
            std::io::Error::from_raw_os_error(*e)
        ),
    }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ELOOP => "ELOOP",
        libc::EBUSY => "EBUSY",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "errno",
    }
}

/// Run `ops` on both backends and compare outcomes, merged trees and upper layers.
/// `Err` describes the first difference.
pub fn run_case(ops: &[Op], a: &mut dyn Backend, b: &mut dyn Backend) -> Result<(), String> {
    run_case_with(ops, a, b, true)
}

/// [`run_case`]; `identity` false leaves out the inode identity with the initial tree (for
/// cases starting from uppers the two backends wrote differently: there an inode number
/// freed by a removal may be reused by a new object on one side only).
pub fn run_case_with(
    ops: &[Op],
    a: &mut dyn Backend,
    b: &mut dyn Backend,
    identity: bool,
) -> Result<(), String> {
    let (initial_a, initial_b) = (a.merged(), b.merged());
    if let Some(d) = diff(a.name(), &initial_a, b.name(), &initial_b) {
        return Err(format!("merged views differ before any operation:\n{d}"));
    }
    for (i, op) in ops.iter().enumerate() {
        let ra = a.apply(op);
        let rb = b.apply(op);
        if ra != rb {
            return Err(format!(
                "operation #{i} {op:?}: {} gave {}, {} gave {}",
                a.name(),
                show(&ra),
                b.name(),
                show(&rb)
            ));
        }
    }
    let (mut ma, mut mb) = (a.merged(), b.merged());
    if identity {
        ma.mark_identity(&initial_a);
        mb.mark_identity(&initial_b);
    }
    if let Some(d) = diff(a.name(), &ma, b.name(), &mb) {
        return Err(format!("merged views differ:\n{d}"));
    }
    let ua = snapshot_dir(a.upper(), XattrFilter::UpperLayer);
    let ub = snapshot_dir(b.upper(), XattrFilter::UpperLayer);
    if let Some(d) = diff(a.name(), &ua, b.name(), &ub) {
        return Err(format!("upper layers differ:\n{d}"));
    }
    Ok(())
}

/// [`run_case`] for plain tests: panics with the sequence and the difference.
pub fn assert_same(ops: &[Op], a: &mut dyn Backend, b: &mut dyn Backend) {
    if let Err(d) = run_case(ops, a, b) {
        panic!("{} vs {} after {ops:#?}\n{d}", a.name(), b.name());
    }
}
