//! Fuzz `overlay_layers::apply`: any byte string (plain, or gzip/zstd when it starts with
//! their magic) is applied to a fresh target directory; the apply may succeed or fail with an
//! error, but must not panic, and nothing may appear or change outside the target (a canary
//! file sits next to it).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use overlay_layers::apply::{apply, ApplyOptions, Format, Limits};

struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn scene() -> &'static Scene {
    static S: OnceLock<Scene> = OnceLock::new();
    S.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir(root.join("outside")).unwrap();
        std::fs::write(root.join("outside/canary"), b"canary").unwrap();
        Scene { _tmp: tmp, root }
    })
}

fn check_outside(root: &std::path::Path) {
    let names: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| n == "outside" || n == "target"), "{names:?}");
    let o: Vec<_> = std::fs::read_dir(root.join("outside")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(o, ["canary"]);
    let md = std::fs::symlink_metadata(root.join("outside/canary")).unwrap();
    assert!(md.is_file());
    assert_eq!(std::fs::read(root.join("outside/canary")).unwrap(), b"canary");
}

fuzz_target!(|data: &[u8]| {
    let s = scene();
    let target = s.root.join("target");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir(&target).unwrap();
    let (format, data) = match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => (Format::Plain, rest),
        Some((_, rest)) => (Format::Overlay, rest),
        None => (Format::Overlay, data),
    };
    let opts = ApplyOptions {
        format,
        limits: Limits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
            ratio_after: 1 << 20,
            ..Limits::default()
        },
        ..Default::default()
    };
    let _ = apply(data, &target, &opts);
    check_outside(&s.root);
});
