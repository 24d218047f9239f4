//! Live systems: real squashfs, EROFS and ISO 9660 images made by the tests (mksquashfs,
//! mkfs.erofs, genisoimage) as lowers, chained; a persistent upper (`--persist`) across
//! remounts, refused over a different base, reset atomically; the read-only-persistent mode;
//! a session saved as a new image layer; a tmpfs upper with an inode cap. As root (kernel
//! overlay, loop-mounted images) and as a real non-root user (images through squashfuse,
//! fuseiso and ovl-erofs, FUSE overlay).

mod common;

use common::user::AsUser;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn both(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o))
}

fn tool_or_skip(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_or_fail(&format!("{tool} is not installed (package {package})"));
    }
    found
}

/// `dir` → a squashfs image at `image`.
fn squashfs(dir: &Path, image: &Path) {
    let st = Command::new("mksquashfs")
        .arg(dir)
        .arg(image)
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// `dir` → an EROFS image at `image`.
fn erofs(dir: &Path, image: &Path) {
    erofs_with(dir, image, &[]);
}

/// `dir` → an EROFS image at `image`, with more mkfs.erofs options (`-zlz4hc`).
fn erofs_with(dir: &Path, image: &Path, opts: &[&str]) {
    let st = Command::new("mkfs.erofs")
        .arg("--quiet")
        .args(opts)
        .arg(image)
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `dir` → an ISO 9660 image (Rock Ridge) at `image`.
fn iso(dir: &Path, image: &Path) {
    let o = Command::new("genisoimage")
        .args(["-quiet", "-R", "-o"])
        .arg(image)
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", both(&o));
}

/// A base image (etc/a, etc/b, etc/c: "base") and an update image over it (etc/b: "upd").
struct Images {
    t: tempfile::TempDir,
    base: PathBuf,
    update: PathBuf,
}

impl Images {
    /// `update_kind`: "squashfs" or "erofs".
    fn new(update_kind: &str) -> Images {
        let t = open_tempdir();
        let r = t.path();
        for f in ["a", "b", "c"] {
            write(r, &format!("src-base/etc/{f}"), "base\n");
        }
        write(r, "src-upd/etc/b", "upd\n");
        let base = r.join("base.squashfs");
        squashfs(&r.join("src-base"), &base);
        let update = r.join(format!("update.{update_kind}"));
        match update_kind {
            "erofs" => erofs(&r.join("src-upd"), &update),
            _ => squashfs(&r.join("src-upd"), &update),
        }
        Images { t, base, update }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }
}

/// `cat` of etc/{a,b,c} in a tree, "-" for a missing one.
fn cat_etc(root: &Path) -> String {
    ["a", "b", "c"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(root.join("etc").join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "-".into())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mount with `ovl mount` (private state dir), check it worked.
fn mount(state: &Path, args: &[&str]) {
    let mut a = vec!["mount"];
    a.extend(args);
    let o = ovl_with_state(state, &a);
    assert!(o.status.success(), "ovl {a:?}: {}", both(&o));
}

fn umount(state: &Path, target: &Path) {
    let o = ovl_with_state(state, ["umount", &s(target)]);
    assert!(o.status.success(), "{}", both(&o));
}

/// Unmounts on every path (a failed assertion included).
struct Unmount<'a>(&'a Path, &'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.1) {
            let _ = ovl_with_state(self.0, ["umount", &s(self.1)]);
        }
    }
}

/// Root and the image tools, or skip; then images (the update of `update_kind`), a mount
/// point `m` and a state directory.
fn root_setup(update_kind: &str) -> Option<(Images, PathBuf, PathBuf)> {
    if !root_or_skip("live-system tests loop-mount images (root)")
        || !tool_or_skip("mksquashfs", "squashfs-tools")
        || !tool_or_skip("mkfs.erofs", "erofs-utils")
    {
        return None;
    }
    let im = Images::new(update_kind);
    let m = im.path("m");
    std::fs::create_dir(&m).unwrap();
    let state = im.path("state");
    Some((im, m, state))
}

#[test]
fn persistent_upper_over_an_image_chain_survives_remounts_and_resets() {
    let Some((im, m, state)) = root_setup("erofs") else {
        return;
    };
    let persist = im.path("persist");
    let _guard = Unmount(&state, &m);
    let (base, update, p, ms) = (s(&im.base), s(&im.update), s(&persist), s(&m));
    let chain = ["--lower", &base, "--lower", &update, "--persist", &p, &ms];

    // A fresh persistent upper over base + update.
    mount(&state, &chain);
    assert_eq!(cat_etc(&m), "base upd base");
    std::fs::write(m.join("etc/a"), "changed\n").unwrap();
    std::fs::remove_file(m.join("etc/c")).unwrap();
    // Reset is refused while the upper is in use.
    let o = ovl_with_state(&state, ["reset", &p]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("in use"), "{}", both(&o));
    umount(&state, &m);

    // "Reboot": the changes are there again.
    mount(&state, &chain);
    assert_eq!(cat_etc(&m), "changed upd -");
    umount(&state, &m);
    // `ovl diff DIR` reads the persistent upper.
    let o = ovl_with_state(&state, ["diff", &p]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        lines(&o),
        ["C /etc", "C /etc/a", "D /etc/c"],
        "{}",
        both(&o)
    );

    // Over another base: refused, naming the directory; --force-base takes it.
    let o = ovl_with_state(&state, ["mount", "--lower", &base, "--persist", &p, &ms]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert!(
        stderr(&o).contains(&format!("ovl: {p}: was made over other lowers")),
        "{}",
        both(&o)
    );
    assert!(!is_mounted(&m));
    // A rebuilt image (same path, other content) is another base too.
    let rebuilt = im.path("rebuilt.squashfs");
    write(im.t.path(), "src-upd2/etc/b", "upd2\n");
    squashfs(&im.path("src-upd2"), &rebuilt);
    std::fs::copy(&rebuilt, &im.update).unwrap();
    let o = ovl_with_state(
        &state,
        ["mount"]
            .iter()
            .chain(chain.iter())
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let mut forced = vec!["--force-base"];
    forced.extend(chain);
    mount(&state, &forced);
    assert_eq!(cat_etc(&m), "changed upd2 -");
    umount(&state, &m);

    // While `ovl run --persist` runs, the directory is in use: a reset is refused.
    let o = ovl_with_state(
        &state,
        [
            "run",
            "--lower",
            &base,
            "--lower",
            &update,
            "--persist",
            &p,
            "--target",
            &ms,
            "--",
            &s(&ovl_bin()),
            "reset",
            &p,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert!(stderr(&o).contains("in use by another ovl"), "{}", both(&o));

    // Reset: the next mount starts from the images alone.
    let o = ovl_with_state(&state, ["reset", &p]);
    assert!(o.status.success(), "{}", both(&o));
    mount(&state, &chain);
    assert_eq!(cat_etc(&m), "base upd2 base");
    umount(&state, &m);
}

#[test]
fn read_only_persistent_mode_leaves_the_persistent_upper_unchanged() {
    let Some((im, m, state)) = root_setup("squashfs") else {
        return;
    };
    let persist = im.path("persist");
    let _guard = Unmount(&state, &m);
    let (base, p, ms) = (s(&im.base), s(&persist), s(&m));
    mount(&state, &["--lower", &base, "--persist", &p, &ms]);
    std::fs::write(m.join("etc/a"), "saved\n").unwrap();
    std::fs::remove_file(m.join("etc/b")).unwrap();
    umount(&state, &m);

    mount(
        &state,
        &[
            "--lower",
            &base,
            "--persist",
            &p,
            "--persist-ro",
            "--tmp=8m",
            &ms,
        ],
    );
    assert_eq!(cat_etc(&m), "saved - base");
    std::fs::write(m.join("etc/a"), "session\n").unwrap();
    std::fs::write(m.join("etc/b"), "session\n").unwrap();
    assert_eq!(cat_etc(&m), "session session base");
    umount(&state, &m);

    mount(&state, &["--lower", &base, "--persist", &p, &ms]);
    assert_eq!(cat_etc(&m), "saved - base", "the session was thrown away");
    umount(&state, &m);
}

#[test]
fn a_session_saved_as_an_image_joins_the_chain() {
    let Some((im, m, state)) = root_setup("squashfs") else {
        return;
    };
    let _guard = Unmount(&state, &m);
    let (base, ms) = (s(&im.base), s(&m));
    mount(&state, &["--lower", &base, "--tmp=8m", &ms]);
    std::fs::write(m.join("etc/a"), "session\n").unwrap();
    std::fs::remove_file(m.join("etc/c")).unwrap();
    for (format, name) in [("squashfs", "s1.squashfs"), ("erofs", "s1.erofs")] {
        let img = s(&im.path(name));
        let o = ovl_with_state(&state, ["save", "--format", format, &ms, &img]);
        assert!(o.status.success(), "{}", both(&o));
        // Never overwritten.
        let o = ovl_with_state(&state, ["save", &ms, &img]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("exists"), "{}", both(&o));
    }
    umount(&state, &m);
    for name in ["s1.squashfs", "s1.erofs"] {
        let img = s(&im.path(name));
        mount(
            &state,
            &["--lower", &base, "--lower", &img, "--read-only", &ms],
        );
        assert_eq!(cat_etc(&m), "session base -", "{name}");
        umount(&state, &m);
    }
    // `ovl run --save` does the same after the command.
    let t2 = im.path("t2");
    std::fs::create_dir(&t2).unwrap();
    let img = im.path("run.squashfs");
    let o = ovl_with_state(
        &state,
        [
            "run",
            "--lower",
            &base,
            "--target",
            &s(&t2),
            "--save",
            &s(&img),
            "--",
            "sh",
            "-c",
            &format!("echo run > {}/etc/b", s(&t2)),
        ],
    );
    assert!(o.status.success(), "{}", both(&o));
    mount(
        &state,
        &["--lower", &base, "--lower", &s(&img), "--read-only", &ms],
    );
    assert_eq!(cat_etc(&m), "base run base");
    umount(&state, &m);
}

#[test]
fn tmpfs_upper_with_an_inode_cap() {
    if !root_or_skip("mounts a tmpfs") {
        return;
    }
    let t = open_tempdir();
    mkdirs(t.path(), &["d"]);
    let d = s(&t.path().join("d"));
    let o = ovl_with_state(
        &t.path().join("state"),
        [
            "run",
            "--tmp=8m",
            "--tmp-inodes",
            "40",
            "--target",
            &d,
            "--",
            "sh",
            "-c",
            &format!("for i in $(seq 100); do touch {d}/f$i || exit 9; done"),
        ],
    );
    assert_eq!(o.status.code(), Some(9), "{}", both(&o));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        both(&o)
    );
}

/// As a real non-root user: a chain of images through FUSE (squashfuse, fuseiso), a
/// persistent upper across runs, refused over another base, reset, read-only-persistent,
/// and a saved session.
#[test]
fn a_user_runs_a_live_system_from_images() {
    let Some(u) = AsUser::new() else { return };
    if !tool_or_skip("mksquashfs", "squashfs-tools")
        || !tool_or_skip("squashfuse", "squashfuse")
        || !tool_or_skip("fuseiso", "fuseiso")
        || !tool_or_skip("genisoimage", "genisoimage")
    {
        return;
    }
    let im = Images::new("squashfs");
    let extra = im.path("extra.iso");
    write(im.t.path(), "src-iso/etc/c", "iso\n");
    iso(&im.path("src-iso"), &extra);
    let home = u.home("live");
    let m = home.join("m");
    let persist = home.join("persist");
    let saved = home.join("saved.squashfs");
    std::fs::create_dir(&m).unwrap();
    rustix::fs::chown(
        &m,
        Some(rustix::fs::Uid::from_raw(u.uid)),
        Some(rustix::fs::Gid::from_raw(u.uid)),
    )
    .unwrap();
    let (base, update, x, p, ms) = (s(&im.base), s(&im.update), s(&extra), s(&persist), s(&m));
    let show =
        format!("for f in a b c; do cat {ms}/etc/$f 2>/dev/null || echo -; done | tr '\\n' ' '");
    let run = |args: &[&str], script: &str| {
        let mut a = vec!["run", "--lower", &base, "--lower", &update, "--lower", &x];
        a.extend(args);
        a.extend(["--target", &ms, "--", "sh", "-c", script]);
        u.ovl(&a)
    };
    let o = run(
        &["--persist", &p],
        &format!("{show}; echo changed > {ms}/etc/a && rm {ms}/etc/b"),
    );
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "base upd iso ", "{}", both(&o));
    // The next run sees the persistent changes.
    let o = run(&["--persist", &p], &show);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "changed - iso ", "{}", both(&o));
    // Read-only-persistent: the session's changes are thrown away.
    let o = run(
        &["--persist", &p, "--persist-ro", "--save", &s(&saved)],
        &format!("echo session > {ms}/etc/c; {show}"),
    );
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "changed - session ", "{}", both(&o));
    let o = run(&["--persist", &p], &show);
    assert_eq!(stdout(&o), "changed - iso ", "{}", both(&o));
    // The saved session is a layer of its own, read back on top of the chain.
    let o = u.ovl(&[
        "run",
        "--lower",
        &base,
        "--lower",
        &update,
        "--lower",
        &x,
        "--lower",
        &s(&saved),
        "--target",
        &ms,
        "--",
        "sh",
        "-c",
        &show,
    ]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "base upd session ", "{}", both(&o));
    // Another base: refused.
    let o = u.ovl(&[
        "run",
        "--lower",
        &base,
        "--persist",
        &p,
        "--target",
        &ms,
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125), "{}", both(&o));
    assert!(
        stderr(&o).contains("was made over other lowers"),
        "{}",
        both(&o)
    );
    // Reset.
    let o = u.ovl(&["reset", &p]);
    assert!(o.status.success(), "{}", both(&o));
    let o = run(&["--persist", &p], &show);
    assert_eq!(stdout(&o), "base upd iso ", "{}", both(&o));
}

/// As a real non-root user, a chain of EROFS images (a plain base, an LZ4HC-compressed
/// update with a whiteout and an opaque directory) served without root (by ovl-erofs, or
/// erofsfuse where installed): `ovl run` sees the merged tree; `ovl mount` records the
/// image lowers with the mount and `ovl umount` releases them.
#[test]
fn a_user_runs_a_chain_of_erofs_images() {
    let Some(u) = AsUser::new() else { return };
    if !tool_or_skip("mkfs.erofs", "erofs-utils") {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    for f in ["a", "b", "c"] {
        write(r, &format!("src-base/etc/{f}"), "base\n");
    }
    write(r, "src-base/opt/keep/x", "base\n");
    write(r, "src-upd/etc/b", "upd\n");
    write(r, "src-upd/opt/keep/y", "upd\n");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("src-upd/etc/c"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        rustix::fs::makedev(0, 0),
    )
    .expect("mknod a whiteout");
    // Opaque for a root overlay (trusted.) and for a user's (user.).
    for ns in ["trusted", "user"] {
        setxattr(
            &r.join("src-upd/opt/keep"),
            &format!("{ns}.overlay.opaque"),
            b"y",
        );
    }
    let (base, update) = (r.join("base.erofs"), r.join("update.erofs"));
    erofs(&r.join("src-base"), &base);
    erofs_with(&r.join("src-upd"), &update, &["-zlz4hc"]);
    let home = u.home("erofs");
    let m = home.join("m");
    std::fs::create_dir(&m).unwrap();
    rustix::fs::chown(
        &m,
        Some(rustix::fs::Uid::from_raw(u.uid)),
        Some(rustix::fs::Gid::from_raw(u.uid)),
    )
    .unwrap();
    let (b, up, ms) = (s(&base), s(&update), s(&m));
    let show = format!(
        "for f in a b c; do cat {ms}/etc/$f 2>/dev/null || echo -; done | tr '\\n' ' '; ls {ms}/opt/keep | tr '\\n' ' '"
    );
    let o = u.ovl(&[
        "run", "--lower", &b, "--lower", &up, "--target", &ms, "--", "sh", "-c", &show,
    ]);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(stdout(&o), "base upd - y ", "{}", both(&o));

    // `ovl mount` as the user (fusermount3): the images are recorded and released.
    let script = format!(
        "set -e; $OVL mount --lower {b} --lower {up} --read-only {ms}; {show}; echo; \
         $OVL status --json | grep -c ovl-image; grep -c ' fuse.ovl-erofs \\| fuse.erofsfuse ' /proc/self/mountinfo; \
         $OVL umount {ms}; echo left $(grep -c 'ovl-image' /proc/self/mountinfo)"
    );
    let o = u.sh(&script);
    assert!(o.status.success(), "{}", both(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["base upd - y ", "2", "2", "left 0"], "{}", both(&o));
}

/// An EROFS image whose etc/f belongs to 1234:5678, and a mount point `m` the test user
/// owns (when `uid` is given).
fn owned_image(t: &Path, uid: Option<u32>) -> (PathBuf, PathBuf) {
    write(t, "src/etc/f", "f\n");
    rustix::fs::chown(
        t.join("src/etc/f"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
    )
    .unwrap();
    let img = t.join("owned.erofs");
    erofs(&t.join("src"), &img);
    let m = t.join("m");
    std::fs::create_dir(&m).unwrap();
    if let Some(uid) = uid {
        for d in [t, &m] {
            rustix::fs::chown(
                d,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(uid)),
            )
            .unwrap();
        }
    }
    (img, m)
}

/// `ovl mount --owners` for a user without root: an image mounted --read-only shows its files
/// as root's by default (`auto`) and with `root`, the stored owners with `real` and under a
/// writable upper.
#[test]
fn a_user_mounts_an_image_with_the_owners_chosen() {
    let Some(u) = AsUser::new() else { return };
    if !tool_or_skip("mkfs.erofs", "erofs-utils") {
        return;
    }
    let home = u.home("owners");
    let (img, m) = owned_image(&home, Some(u.uid));
    let (img, ms, up) = (s(&img), s(&m), s(&home.join("up")));
    let script = format!(
        "set -e; for o in auto root real; do $OVL mount --owners $o --lower {img} --read-only {ms}; \
         stat -c \"$o %u:%g\" {ms}/etc/f; $OVL umount {ms}; done; \
         $OVL mount --lower {img} --upper {up} {ms}; stat -c 'upper %u:%g' {ms}/etc/f; $OVL umount {ms}"
    );
    let o = u.sh(&script);
    assert!(o.status.success(), "{}", both(&o));
    assert_eq!(
        lines(&o),
        ["auto 0:0", "root 0:0", "real 1234:5678", "upper 1234:5678"],
        "{}",
        both(&o)
    );
}

/// As root, `ovl mount --owners root` takes the FUSE backend and shows every file as root's;
/// by default the image keeps its owners (kernel overlay, loop-mounted image; and a single
/// image --read-only, which falls back to FUSE with the image served by ovl-erofs).
#[test]
fn ovl_mount_owners_root_squashes_for_root_too() {
    if !root_or_skip("mounts overlays") || !tool_or_skip("mkfs.erofs", "erofs-utils") {
        return;
    }
    let t = open_tempdir();
    let (img, m) = owned_image(t.path(), None);
    let state = t.path().join("state");
    let _guard = Unmount(&state, &m);
    let (img, ms) = (s(&img), s(&m));
    let owner = || {
        let md = std::fs::metadata(m.join("etc/f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        (md.uid(), md.gid())
    };
    mount(
        &state,
        &["--owners", "root", "--lower", &img, "--tmp=8m", &ms],
    );
    assert_eq!(owner(), (0, 0));
    umount(&state, &m);
    mount(&state, &["--lower", &img, "--tmp=8m", &ms]);
    assert_eq!(owner(), (1234, 5678));
    umount(&state, &m);
    // A single image --read-only: the kernel refuses one lower without an upper, so the FUSE
    // backend takes it, with the image served by its FUSE program.
    mount(&state, &["--lower", &img, "--read-only", &ms]);
    assert_eq!(owner(), (1234, 5678));
    assert_eq!(std::fs::read_to_string(m.join("etc/f")).unwrap(), "f\n");
    umount(&state, &m);
}

/// As root with the FUSE backend (and for ISO images on the kernel backend), images are
/// served by squashfuse, ovl-erofs (or erofsfuse) and fuseiso: recorded with the mount,
/// released by `ovl umount`.
#[test]
fn fuse_served_images_are_recorded_and_released() {
    if !root_or_skip("mounts overlays")
        || !tool_or_skip("mksquashfs", "squashfs-tools")
        || !tool_or_skip("mkfs.erofs", "erofs-utils")
        || !tool_or_skip("squashfuse", "squashfuse")
        || !tool_or_skip("fuseiso", "fuseiso")
        || !tool_or_skip("genisoimage", "genisoimage")
    {
        return;
    }
    let im = Images::new("erofs");
    let extra = im.path("extra.iso");
    write(im.t.path(), "src-iso/etc/c", "iso\n");
    iso(&im.path("src-iso"), &extra);
    let m = im.path("m");
    std::fs::create_dir(&m).unwrap();
    let state = im.path("state");
    let _guard = Unmount(&state, &m);
    let (base, update, x, ms) = (s(&im.base), s(&im.update), s(&extra), s(&m));
    for backend in ["fuse", "kernel"] {
        mount(
            &state,
            &[
                "--backend",
                backend,
                "--lower",
                &base,
                "--lower",
                &update,
                "--lower",
                &x,
                "--tmp=8m",
                &ms,
            ],
        );
        assert_eq!(cat_etc(&m), "base upd iso", "{backend}");
        let o = ovl_with_state(&state, ["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let images: Vec<PathBuf> = v[0]["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| PathBuf::from(i.as_str().unwrap()))
            .collect();
        assert_eq!(images.len(), 3, "{v}");
        assert!(images.iter().all(|i| is_mounted(i)), "{v}");
        umount(&state, &m);
        for i in &images {
            assert!(
                !is_mounted(i) && !i.exists(),
                "{backend}: {} released",
                i.display()
            );
        }
    }
}

/// What a test sees of a tree: per path (sorted), its kind and mode, its size, and its
/// content or the errno of reading it.
fn seen_tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if md.is_dir() {
                todo.push(p.clone());
                String::new()
            } else if md.is_file() {
                match std::fs::read(&p) {
                    Ok(b) => format!("{:?}", String::from_utf8_lossy(&b)),
                    Err(e) => format!("read error {:?}", e.raw_os_error()),
                }
            } else {
                String::new()
            };
            out.push(format!("{rel} {:o} {} {what}", md.mode(), md.size()));
        }
    }
    out.sort();
    out
}

/// `ovl mount --data DIR`: a composefs-style stack (an EROFS image of metacopy files over a
/// data-only layer) shows the same tree on the kernel backend and on ovl-fuse: names, modes,
/// sizes, the content read through the redirects, and ENOENT (the kernel's, at open) for a
/// metacopy file whose data is in no data-only layer. The data layer's own tree is never shown.
#[test]
fn composefs_style_stack_with_ovl_mount() {
    if !root_or_skip("metacopy files need trusted xattrs (root)")
        || !tool_or_skip("mkfs.erofs", "erofs-utils")
    {
        return;
    }
    let t = open_tempdir();
    let r = t.path();
    write(r, "data/ab/0123", "from the object store\n");
    write(r, "data/cd/4567", "second object\n");
    write(r, "data/top-level-object", "never shown by name\n");
    write(r, "meta/etc/plain", "plain\n");
    for (name, size, redirect) in [
        ("meta/etc/hello", 22, "/ab/0123"),
        ("meta/usr/lib/second", 14, "/cd/4567"),
        ("meta/etc/missing", 10, "/ef/nowhere"),
    ] {
        let f = r.join(name);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::File::create(&f).unwrap().set_len(size).unwrap();
        setxattr(&f, "trusted.overlay.metacopy", b"");
        setxattr(&f, "trusted.overlay.redirect", redirect.as_bytes());
    }
    let image = r.join("meta.erofs");
    erofs(&r.join("meta"), &image);
    mkdirs(r, &["m"]);
    let m = r.join("m");
    let state = r.join("state");
    let _guard = Unmount(&state, &m);
    let (img, data, ms) = (s(&image), s(&r.join("data")), s(&m));
    let mut trees = Vec::new();
    for backend in ["kernel", "fuse"] {
        let args = [
            "--backend",
            backend,
            "--lower",
            &img,
            "--data",
            &data,
            "--read-only",
            "-o",
            "metacopy=on,redirect_dir=on",
            &ms,
        ];
        mount(&state, &args);
        assert_eq!(
            std::fs::read_to_string(m.join("etc/hello")).unwrap(),
            "from the object store\n",
            "{backend}"
        );
        let e = std::fs::read(m.join("etc/missing")).unwrap_err();
        // The kernel (6.18) looks data-only layers up lazily, at open, and fails with
        // ENOENT (not EIO) when the data is in none of them; the file itself stats.
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{backend}: {e}");
        assert_eq!(std::fs::metadata(m.join("etc/missing")).unwrap().len(), 10);
        assert!(!m.join("ab").exists() && !m.join("top-level-object").exists());
        trees.push(seen_tree(&m));
        umount(&state, &m);
        assert!(!is_mounted(&m));
    }
    // The same with mount(8)'s syntax: data-only layers after `::` in lowerdir=.
    for backend in ["kernel", "fuse"] {
        let o = format!("lowerdir={img}::{data},metacopy=on,redirect_dir=on");
        mount(
            &state,
            &["--backend", backend, "--read-only", "-o", &o, &ms],
        );
        assert_eq!(
            std::fs::read_to_string(m.join("etc/hello")).unwrap(),
            "from the object store\n",
            "{backend}, -o {o}"
        );
        trees.push(seen_tree(&m));
        umount(&state, &m);
    }
    for (i, t) in trees.iter().enumerate().skip(1) {
        assert_eq!(
            &trees[0], t,
            "kernel with --data (left) and mount {i} differ"
        );
    }
    // ovl-fuse checks no fs-verity digests: verity= is refused there, never ignored.
    let o = ovl_with_state(
        &state,
        [
            "mount",
            "--backend",
            "fuse",
            "--lower",
            &img,
            "--data",
            &data,
            "--read-only",
            "-o",
            "metacopy=on,redirect_dir=on,verity=require",
            &ms,
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("fs-verity"), "{}", both(&o));
    assert!(!is_mounted(&m));
    assert!(trees[0]
        .iter()
        .any(|l| l.contains("usr/lib/second") && l.contains("second object")));
}

/// `ovl probe` says which image formats can be mounted without root (their FUSE programs).
#[test]
fn probe_names_the_image_programs() {
    if !tool_or_skip("squashfuse", "squashfuse") {
        return;
    }
    let o = ovl(["probe", "--json"]);
    assert!(o.status.success(), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sq = &v["image_programs"]["squashfs"];
    assert_eq!(sq["program"], "squashfuse", "{v}");
    assert!(
        sq["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/squashfuse")),
        "{v}"
    );
    // EROFS: erofsfuse where installed, else ovl's own ovl-erofs (built with ovl).
    let er = &v["image_programs"]["EROFS"];
    let prog = er["program"].as_str().unwrap_or_default();
    assert!(prog == "erofsfuse" || prog == "ovl-erofs", "{v}");
    assert!(
        er["path"].as_str().is_some_and(|p| p.ends_with(prog)),
        "{v}"
    );
    let o = ovl(["probe"]);
    assert!(
        stdout(&o).contains("squashfs images without root (or for FUSE): yes"),
        "{}",
        both(&o)
    );
    assert!(
        stdout(&o).contains("EROFS images without root (or for FUSE): yes"),
        "{}",
        both(&o)
    );
}
