//! Runs a fixed battery of operations through the engine and prints `step errno` lines
//! (0 = success), to compare with the same battery run on a kernel overlay mount.
use std::ffi::OsStr;

use overlay_core::{LayerStack, NodeRef, Overlay, RenameFlags};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let stack = LayerStack::builder()
        .lower(&a[1])
        .upper(&a[2], &a[3])
        .build()
        .unwrap();
    let ovl = Overlay::new(stack).unwrap();
    let r = ovl.root();
    let get = |p: &str| -> Result<NodeRef, overlay_core::Error> {
        let mut n = ovl.root();
        for c in p.split('/') {
            n = ovl.lookup(&n, OsStr::new(c))?;
        }
        Ok(n)
    };
    let o = |s: &str| OsStr::new(s).to_owned();
    let code = |x: Result<(), overlay_core::Error>| x.err().map(|e| e.raw_os_error()).unwrap_or(0);
    let mv = |a: &str, b: &str, f: RenameFlags| {
        let (pa, na) = a
            .rsplit_once('/')
            .map(|(p, n)| (get(p).unwrap(), o(n)))
            .unwrap_or((ovl.root(), o(a)));
        let (pb, nb) = b
            .rsplit_once('/')
            .map(|(p, n)| (get(p).unwrap(), o(n)))
            .unwrap_or((ovl.root(), o(b)));
        code(ovl.rename(&pa, &na, &pb, &nb, f))
    };
    let e = RenameFlags::empty();
    let steps: Vec<(&str, i32)> = vec![
        (
            "mkdir f",
            code(ovl.mkdir(&r, &o("f"), 0o755, None).map(|_| ())),
        ),
        ("rmdir d", code(ovl.rmdir(&r, &o("d")))),
        ("unlink d", code(ovl.unlink(&r, &o("d")))),
        ("rmdir f", code(ovl.rmdir(&r, &o("f")))),
        ("mv d d2", mv("d", "d2", e)),
        ("mv f d", mv("f", "d", e)),
        ("mv e f", mv("e", "f", e)),
        ("mv e d", mv("e", "d", e)),
        (
            "mknod w",
            code(
                ovl.mknod(&r, &o("w"), libc::S_IFCHR | 0o644, 0, None)
                    .map(|_| ()),
            ),
        ),
        (
            "link d dl",
            code(
                get("d")
                    .and_then(|d| ovl.link(&d, &r, &o("dl")))
                    .map(|_| ()),
            ),
        ),
        ("mv f e/sub", mv("f", "e/sub", e)),
        (
            "mv e/sub f noreplace",
            mv("e/sub", "f", RenameFlags::NOREPLACE),
        ),
        (
            "mkdir n",
            code(ovl.mkdir(&r, &o("n"), 0o755, None).map(|_| ())),
        ),
        ("mv n d", mv("n", "d", e)),
        ("mv n e", mv("n", "e", e)),
        ("rmdir e", code(ovl.rmdir(&r, &o("e")))),
        (
            "unlink d/x",
            code(get("d").and_then(|d| ovl.unlink(&d, &o("x")))),
        ),
        ("rmdir d", code(ovl.rmdir(&r, &o("d")))),
        ("mv s f exchange", mv("s", "f", RenameFlags::EXCHANGE)),
        ("mv nope x", mv("nope", "x", e)),
        ("lookup f/x", code(get("f/x").map(|_| ()))),
        ("mv f f noreplace", mv("f", "f", RenameFlags::NOREPLACE)),
        ("mv f f", mv("f", "f", e)),
        (
            "mkdir m",
            code(ovl.mkdir(&r, &o("m"), 0o755, None).map(|_| ())),
        ),
        ("mv m m/x", mv("m", "m/x", e)),
        ("mv g m exchange", mv("g", "m", RenameFlags::EXCHANGE)),
        ("rmdir g", code(ovl.rmdir(&r, &o("g")))),
        ("mv s g exchange", mv("s", "g", RenameFlags::EXCHANGE)),
    ];
    for (s, c) in steps {
        println!("{s}: {c}");
    }
    let mut names: Vec<String> = ovl
        .readdir(&r)
        .unwrap()
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("root: {names:?}");
}
