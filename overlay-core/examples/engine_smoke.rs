//! Smoke tool: run a few engine operations on a stack given as `lower upper work`, then print
//! `name ino kind` for every entry of the merged root and of `d/` (for comparing with a kernel
//! mount of the same layers).
use std::ffi::OsStr;
use std::io::Write;

use overlay_core::{LayerStack, Overlay, RenameFlags};

fn main() -> Result<(), overlay_core::Error> {
    let a: Vec<String> = std::env::args().collect();
    let stack = LayerStack::builder()
        .lower(&a[1])
        .upper(&a[2], &a[3])
        .build()?;
    let ovl = Overlay::new(stack)?;
    let root = ovl.root();
    let d = ovl.lookup(&root, OsStr::new("d"))?;
    let f = ovl.lookup(&d, OsStr::new("f"))?;
    ovl.open(&f, libc::O_WRONLY | libc::O_APPEND)?
        .write_all(b"more")
        .unwrap();
    ovl.unlink(&d, OsStr::new("g"))?;
    ovl.rename(
        &root,
        OsStr::new("h"),
        &d,
        OsStr::new("h2"),
        RenameFlags::empty(),
    )?;
    ovl.mkdir(&root, OsStr::new("new"), 0o755, None)?;
    for dir in [&root, &d] {
        for e in ovl.readdir(dir)? {
            let n = ovl.lookup(dir, &e.name)?;
            println!(
                "{} {} {:?}",
                e.name.to_string_lossy(),
                ovl.getattr(&n)?.ino,
                e.kind
            );
        }
    }
    Ok(())
}
