//! More lower layers than the kernel overlay takes (its limit is 500): `Backend::Auto` mounts
//! them through FUSE and says why; `Backend::Kernel` refuses them, naming the limit. 4096
//! layers by default (`OVL_MANY_LOWERS`), with absolute paths too long for one `-o`
//! argument of `ovl-fuse`.

use std::fs;
use std::path::Path;

use overlay::{mount, Backend, Chosen, Request, Upper};

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "auto_falls_to_fuse_past_the_kernels_lower_limit: {why}, and CI=true forbids skipping"
        );
    }
    eprintln!("auto_falls_to_fuse_past_the_kernels_lower_limit: SKIPPED ({why})");
}

#[test]
fn auto_falls_to_fuse_past_the_kernels_lower_limit() {
    if !rustix::process::geteuid().is_root() {
        return skip("needs root to mount");
    }
    // The facade runs the ovl-fuse program from the target dir (built with the workspace).
    let exe = std::env::current_exe().unwrap();
    if !exe
        .ancestors()
        .skip(1)
        .take(2)
        .any(|d| d.join("ovl-fuse").is_file())
    {
        return skip("no ovl-fuse built next to the tests (cargo build -p overlay-fuse)");
    }
    let n: usize = std::env::var("OVL_MANY_LOWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let tmp = tempfile::Builder::new()
        .prefix("ovl-many-lowers-test.")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    // Bottom-first, as the facade takes them; a long name per layer.
    let lowers: Vec<_> = (0..n)
        .map(|i| dir.join(format!("layer-with-a-long-name-{i:05}")))
        .collect();
    for (i, l) in lowers.iter().enumerate() {
        fs::create_dir(l).unwrap();
        if i == 0 || i == n - 1 {
            fs::write(l.join(format!("f{i}")), format!("{i}")).unwrap();
        }
    }
    let upper = dir.join("upper");
    let mnt = dir.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let req = |backend| {
        Request::new(lowers.clone())
            .upper(Upper::Dir {
                upper: upper.clone(),
                work: Some(dir.join("work")),
            })
            .backend(backend)
    };

    let e = mount(&req(Backend::Kernel), &mnt).expect_err("the kernel overlay took them");
    assert!(e.to_string().contains("limit is 500"), "{e}");

    let m = mount(&req(Backend::Auto), &mnt).unwrap();
    assert_eq!(m.backend(), Chosen::Fuse, "{:?}", m.reasons());
    assert!(
        m.reasons()
            .iter()
            .any(|r| r.contains("over the kernel overlay's limit of 500")),
        "{:?}",
        m.reasons()
    );
    assert_eq!(fs::read(mnt.join("f0")).unwrap(), b"0", "bottom layer");
    let top = format!("f{}", n - 1);
    assert_eq!(
        fs::read(mnt.join(&top)).unwrap(),
        format!("{}", n - 1).as_bytes()
    );
    fs::write(mnt.join("f0"), b"changed").unwrap();
    assert_eq!(fs::read(upper.join("f0")).unwrap(), b"changed");
    drop(m);
    assert!(!is_mounted(&mnt), "still mounted");
}

fn is_mounted(p: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
}
