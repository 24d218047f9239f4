//! Commit and squash against the kernel overlay: a generated operation sequence runs on a
//! kernel overlay; afterwards
//! - squash (lowers + upper into a new directory) must give the merged tree the kernel showed;
//! - commit (the upper into the directory it was mounted over) must turn that directory into
//!   the merged tree, and a dry run before it must list the paths it then changes and change
//!   nothing.
//!
//! Both run with the differential tests' options and with `redirect_dir=on,metacopy=on`.
//! `OVL_DIFF_CASES` sets the number of sequences per test (default 60).

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::fixture::FixtureStack;
use common::kernel::{apply_path_op, KernelOverlay};
use common::ops::Op;
use common::tree::{diff, snapshot_dir, Tree, XattrFilter};
use overlay_layers::commit::{commit, CommitOptions};
use overlay_layers::squash::{squash, SquashFormat};
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const REDIRECT: &str = "redirect_dir=on,metacopy=on,index=off,xino=off,uuid=null";

fn run(default_cases: u32, case: impl Fn(&[Op]) -> Result<(), String>) {
    common::init();
    if !common::require_mounts() {
        return;
    }
    let mut runner = TestRunner::new(Config {
        cases: common::cases(default_cases),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    });
    if let Err(e) = runner.run(&common::ops::ops(24), |ops| {
        case(&ops).map_err(TestCaseError::fail)
    }) {
        panic!("{e}");
    }
}

/// The root's own times are not part of what commit or squash promise.
fn without_root(mut t: Tree) -> Tree {
    if let Some(e) = t.entries.get_mut("") {
        e.mtime_kept = true;
    }
    t
}

fn squash_case(ops: &[Op], options: &str) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let stack = FixtureStack::create(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let [top, bottom] = stack.lowers_top_first();
    let data = format!(
        "lowerdir={}:{},upperdir={},workdir={},{options}",
        top.display(),
        bottom.display(),
        stack.upper.display(),
        stack.work.display()
    );
    let merged = {
        let _m = KernelOverlay::mount_data(&data, &mnt).map_err(|e| e.to_string())?;
        for op in ops {
            let _ = apply_path_op(&mnt, op);
        }
        snapshot_dir(&mnt, XattrFilter::All)
    };
    let out = tmp.path().join("flat");
    squash(
        &[&stack.lower0, &stack.lower1],
        Some(&stack.upper),
        &out,
        SquashFormat::Dir,
    )
    .map_err(|e| format!("squash: {e}"))?;
    let flat = snapshot_dir(&out, XattrFilter::All);
    match diff(
        "kernel",
        &without_root(merged),
        "squashed",
        &without_root(flat),
    ) {
        None => Ok(()),
        Some(d) => Err(format!("trees differ:\n{d}")),
    }
}

fn commit_case(ops: &[Op], options: &str) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let stack = FixtureStack::create(tmp.path());
    // The directory the changes are tried on: the fixture's merged lowers as a plain tree.
    let target = tmp.path().join("target");
    squash(
        &[&stack.lower0, &stack.lower1],
        None::<&Path>,
        &target,
        SquashFormat::Dir,
    )
    .map_err(|e| format!("squash: {e}"))?;
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},{options}",
        target.display(),
        stack.upper.display(),
        stack.work.display()
    );
    let merged = {
        let _m = KernelOverlay::mount_data(&data, &mnt).map_err(|e| e.to_string())?;
        for op in ops {
            let _ = apply_path_op(&mnt, op);
        }
        snapshot_dir(&mnt, XattrFilter::All)
    };
    let before = snapshot_dir(&target, XattrFilter::All);
    let plan = commit(
        &stack.upper,
        &target,
        &CommitOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .map_err(|e| format!("dry run: {e}"))?;
    if let Some(d) = diff(
        "before",
        &before,
        "after dry run",
        &snapshot_dir(&target, XattrFilter::All),
    ) {
        return Err(format!("the dry run changed the target:\n{d}"));
    }
    let done = commit(&stack.upper, &target, &CommitOptions::default())
        .map_err(|e| format!("commit: {e}"))?;
    let planned: Vec<_> = plan
        .changes
        .iter()
        .map(|c| (c.path.clone(), c.action))
        .collect();
    let made: Vec<_> = done
        .changes
        .iter()
        .map(|c| (c.path.clone(), c.action))
        .collect();
    if planned != made {
        return Err(format!("dry run listed {planned:?}, commit made {made:?}"));
    }
    let names: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if names
        .iter()
        .any(|n| n.to_string_lossy().contains("ovl-commit"))
    {
        return Err(format!("leftovers in the target: {names:?}"));
    }
    let after = snapshot_dir(&target, XattrFilter::All);
    match diff(
        "kernel",
        &without_root(merged),
        "committed",
        &without_root(after),
    ) {
        None => Ok(()),
        Some(d) => Err(format!("trees differ:\n{d}")),
    }
}

#[test]
fn squash_equals_the_merged_view() {
    let options = common::features::Features::DEFAULTS.kernel_options();
    run(60, |ops| squash_case(ops, &options));
}

#[test]
fn squash_equals_the_merged_view_with_redirects() {
    run(60, |ops| squash_case(ops, REDIRECT));
}

#[test]
fn commit_turns_the_target_into_the_merged_view() {
    let options = common::features::Features::DEFAULTS.kernel_options();
    run(60, |ops| commit_case(ops, &options));
}

#[test]
fn commit_turns_the_target_into_the_merged_view_with_redirects() {
    run(60, |ops| commit_case(ops, REDIRECT));
}

/// Regressions found by the generator (redirected directory holding a renamed metacopy file).
#[test]
fn commit_regressions() {
    common::init();
    if !common::require_mounts() {
        return;
    }
    use common::ops::RenameMode::Plain;
    let r = |from: &str, to: &str| Op::Rename {
        from: from.into(),
        to: to.into(),
        mode: Plain,
    };
    for ops in [
        vec![r("m/a", "m/b"), r("m", "o/a")],
        vec![r("m/c", "c"), r("m", "o/c")],
    ] {
        if let Err(e) = commit_case(&ops, REDIRECT) {
            panic!("{ops:?}: {e}");
        }
    }
}
