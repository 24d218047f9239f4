//! `changes()` against the kernel overlay (`redirect_dir=on`) for a renamed directory that
//! holds a renamed subdirectory: the subdirectory's relative `overlay.redirect` names a
//! sibling in the lowers *at its parent's old place*, not at its merged path. Every path the
//! kernel shows under the new name must be reported as added, and the old name as deleted.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::kernel::KernelOverlay;
use overlay_layers::changes::changes;

/// Every path below `root` (relative, `/`-prefixed), as the mount shows it.
fn kernel_paths(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            out.insert(format!("/{}", r.display()));
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            }
        }
    }
    out
}

#[test]
fn renamed_subdir_inside_renamed_dir_resolves_against_the_old_place() {
    common::init();
    if !common::require_mounts() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (lower, upper, work, mnt) = (
        t.join("lower"),
        t.join("upper"),
        t.join("work"),
        t.join("mnt"),
    );
    fs::create_dir_all(lower.join("a/b/d")).unwrap();
    fs::write(lower.join("a/b/f"), b"f").unwrap();
    fs::write(lower.join("a/b/d/g"), b"g").unwrap();
    fs::write(lower.join("a/keep"), b"k").unwrap();
    for d in [&upper, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=on,index=off,xino=off,uuid=null",
        lower.display(),
        upper.display(),
        work.display()
    );
    let shown = {
        let _m = KernelOverlay::mount_data(&data, &mnt).unwrap();
        // Inner rename first (a/b -> a/c, a relative redirect "b"), then its parent (a -> z).
        fs::rename(mnt.join("a/b"), mnt.join("a/c")).unwrap();
        fs::rename(mnt.join("a"), mnt.join("z")).unwrap();
        kernel_paths(&mnt)
    };
    // The case this test is about: the subdirectory's redirect is relative.
    let mut v = [0u8; 256];
    let n = rustix::fs::lgetxattr(upper.join("z/c"), "trusted.overlay.redirect", &mut v)
        .expect("the kernel set a redirect on the renamed subdirectory");
    assert!(
        !v[..n].starts_with(b"/"),
        "expected a relative redirect, the kernel wrote {:?}",
        String::from_utf8_lossy(&v[..n])
    );

    let got: Vec<(char, String)> = changes(&[&lower], &upper)
        .unwrap()
        .map(|c| (c.kind.letter(), c.path.display().to_string()))
        .collect();
    let mut want: Vec<(char, String)> = shown.iter().map(|p| ('A', p.clone())).collect();
    want.push(('D', "/a".into()));
    want.sort_by(|a, b| a.1.cmp(&b.1));
    let mut got_sorted = got.clone();
    got_sorted.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got_sorted, want, "changes() vs the kernel's merged view");
    // Where the renamed subdirectory's content comes from: its parent's old place.
    let c = changes(&[&lower], &upper)
        .unwrap()
        .find(|c| c.path == Path::new("/z/c"))
        .unwrap();
    assert_eq!(c.renamed_from.as_deref(), Some(Path::new("/a/b")));
}
