//! Real kernel overlay mounts through `overlay_core::mount`.
//!
//! Every test that mounts needs CAP_SYS_ADMIN (root). Without it a test prints why and
//! returns, except with `CI=true`, where it fails. Every mount is held by a guard
//! (`KernelMount`, or the local `TmpfsMount`) so it is unmounted on every path.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use overlay_core::mount::mountinfo::{is_mount_point, read_mountinfo};
use overlay_core::mount::{run_in_user_namespace, MountApi, MountSpec, OverlayMountOptions};
use overlay_core::{Error, LayerStack, XattrNamespace};

/// Whether mounting is possible; with `CI=true` a missing capability is a failure.
fn can_mount(what: &str) -> bool {
    let kernel = overlay_core::probe().backend("kernel").cloned();
    match kernel {
        Some(s) if s.is_yes() => true,
        other => skip(&format!(
            "{what}: cannot mount a kernel overlay here: {other:?}"
        )),
    }
}

/// A test that cannot run here: panics under `CI=true`, else prints why and returns false.
fn skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED {why}");
    false
}

fn mkdirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = root.join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        })
        .collect()
}

fn write(p: &Path, data: &str) {
    std::fs::write(p, data).unwrap();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The stack of lower `d[0]`, upper `d[1]` and workdir `d[2]`, validated.
fn stack_of(d: &[PathBuf]) -> overlay_core::Result<LayerStack> {
    LayerStack::builder()
        .lower(&d[0])
        .upper(&d[1], &d[2])
        .build()
}

fn one_line(e: &Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s:?}");
    s
}

/// A tmpfs mounted by a test, unmounted on drop.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path) -> TmpfsMount {
        rustix::mount::mount(
            "tmpfs",
            at,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", at.display()));
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// `n` lower dirs: layer i holds `f<i>` and `shared` = i.
fn numbered_stack(root: &Path, n: usize, with_upper: bool) -> LayerStack {
    let mut b = LayerStack::builder();
    for i in 0..n {
        let d = root.join(format!("l{i}"));
        std::fs::create_dir(&d).unwrap();
        write(&d.join(format!("f{i}")), &i.to_string());
        write(&d.join("shared"), &i.to_string());
        b = b.lower(d);
    }
    if with_upper {
        let [u, w] = [root.join("upper"), root.join("work")];
        std::fs::create_dir(&u).unwrap();
        std::fs::create_dir(&w).unwrap();
        b = b.upper(u, w);
    }
    b.build().unwrap()
}

fn check_numbered(merged: &Path, n: usize) {
    let got = names(merged);
    assert_eq!(got.len(), n + 1, "merged dir has {} entries", got.len());
    for i in (0..n).step_by((n / 10).max(1)) {
        assert_eq!(read(&merged.join(format!("f{i}"))), i.to_string());
    }
    assert_eq!(
        read(&merged.join(format!("f{}", n - 1))),
        (n - 1).to_string()
    );
    // The last layer added is the top one.
    assert_eq!(read(&merged.join("shared")), (n - 1).to_string());
}

/// Mount `n` numbered lowers with `api` and check the merged view (skips via `can_mount`).
fn mount_numbered(what: &str, n: usize, api: MountApi) {
    if !can_mount(what) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let stack = numbered_stack(t.path(), n, true);
    let m = t.path().join("merged");
    std::fs::create_dir(&m).unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &m)
        .unwrap()
        .with_api(api);
    let g = spec
        .mount()
        .unwrap_or_else(|e| panic!("{n} lowers ({api:?}): {e}"));
    check_numbered(&m, n);
    let eff = g.effective_options();
    let lowers = eff.lowers();
    assert_eq!(lowers.len(), n);
    // Kernel order is top-first.
    assert_eq!(lowers[0], t.path().join(format!("l{}", n - 1)));
    assert_eq!(lowers[n - 1], t.path().join("l0"));
    write(&m.join("new"), "x");
    assert_eq!(read(&t.path().join("upper/new")), "x");
    drop(g);
    assert!(!is_mount_point(&m).unwrap());
}

#[test]
fn two_lowers_merge_and_report_effective_options() {
    if !can_mount("two_lowers") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["bottom", "top", "u", "w", "m"]);
    write(&d[0].join("a"), "a");
    write(&d[0].join("shared"), "bottom");
    write(&d[1].join("b"), "b");
    write(&d[1].join("shared"), "top");
    let stack = LayerStack::builder()
        .lower(&d[0])
        .lower(&d[1])
        .upper(&d[2], &d[3])
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[4]).unwrap();
    let cmd = spec.to_command();
    assert!(cmd.starts_with("mount -t overlay overlay -o "), "{cmd}");
    assert!(
        cmd.contains(
            "redirect_dir=follow,index=off,metacopy=off,nfs_export=off,xino=auto,uuid=auto"
        ),
        "{cmd}"
    );
    let g = spec.mount().unwrap();
    assert_eq!(names(&d[4]), ["a", "b", "shared"]);
    assert_eq!(read(&d[4].join("shared")), "top");
    let eff = g.effective_options();
    assert_eq!(eff.entry.fstype, "overlay");
    assert_eq!(eff.lowers(), vec![d[1].clone(), d[0].clone()]);
    assert_eq!(eff.get("upperdir"), Some(d[2].to_str().unwrap()));
    assert_eq!(eff.value("redirect_dir").as_deref(), Some("follow"));
    assert_eq!(eff.value("index").as_deref(), Some("off"));
    assert_eq!(eff.value("metacopy").as_deref(), Some("off"));
    assert!(eff.entry.mount_options.iter().any(|o| o == "nosuid"));
    assert!(eff.entry.mount_options.iter().any(|o| o == "nodev"));
    assert!(is_mount_point(&d[4]).unwrap());
    drop(g);
    assert!(!is_mount_point(&d[4]).unwrap());
}

#[test]
fn explicit_options_show_up_in_mountinfo() {
    if !can_mount("explicit_options") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w", "m"]);
    let stack = stack_of(&d).unwrap();
    let o = OverlayMountOptions {
        redirect_dir: Some(overlay_core::RedirectDir::On),
        index: true,
        metacopy: true,
        volatile: true,
        ..Default::default()
    };
    let g = MountSpec::new(&stack, &o, &d[3]).unwrap().mount().unwrap();
    let eff = g.effective_options();
    assert_eq!(eff.value("redirect_dir").as_deref(), Some("on"));
    assert_eq!(eff.value("index").as_deref(), Some("on"));
    assert_eq!(eff.value("metacopy").as_deref(), Some("on"));
    assert!(eff.is_volatile(), "{:?}", eff.entry.super_options);
}

#[test]
fn fifty_lowers() {
    mount_numbered("fifty_lowers", 50, MountApi::Auto);
}

#[test]
fn fifty_lowers_with_legacy_mount2() {
    mount_numbered("fifty_lowers_legacy", 50, MountApi::Legacy);
}

#[test]
fn five_hundred_lowers() {
    mount_numbered("five_hundred_lowers", 500, MountApi::New);
}

#[test]
fn five_hundred_lowers_with_legacy_mount2_uses_relative_paths() {
    // Absolute paths make the option string far longer than a page; the legacy path then
    // mounts from a forked child with paths relative to the common parent.
    mount_numbered("five_hundred_lowers_legacy", 500, MountApi::Legacy);
}

/// The kernel backend refuses more lowers than the kernel overlay takes, naming the first
/// one over the limit; the stack itself is valid (the FUSE backend takes it).
#[test]
fn five_hundred_and_one_lowers_refused() {
    let t = tempfile::tempdir().unwrap();
    let dirs = (0..501)
        .map(|i| {
            let d = t.path().join(format!("l{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect::<Vec<_>>();
    let stack = LayerStack::builder().lowers(&dirs).build().unwrap();
    let e = MountSpec::new(&stack, &OverlayMountOptions::default(), t.path()).unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains("too many lower layers for the kernel overlay: 501")
            && s.contains("limit is 500"),
        "{s}"
    );
    assert!(s.contains("l500"), "{s}");
}

fn special_paths(api: MountApi) {
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(
        t.path(),
        &[
            "low:er",
            "lo,wer",
            "lo wer",
            "up:p,er x",
            "wo rk,:",
            "m o,u:nt",
        ],
    );
    write(&d[0].join("colon"), "1");
    write(&d[1].join("comma"), "2");
    write(&d[2].join("space"), "3");
    let stack = LayerStack::builder()
        .lowers(&d[..3])
        .upper(&d[3], &d[4])
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[5])
        .unwrap()
        .with_api(api);
    let g = spec.mount().unwrap_or_else(|e| panic!("{api:?}: {e}"));
    assert_eq!(names(&d[5]), ["colon", "comma", "space"]);
    let eff = g.effective_options();
    assert_eq!(eff.lowers(), vec![d[2].clone(), d[1].clone(), d[0].clone()]);
    assert_eq!(eff.upper().as_ref(), Some(&d[3]));
    assert_eq!(eff.work().as_ref(), Some(&d[4]));
    assert_eq!(eff.entry.mount_point, d[5]);
    write(&d[5].join("new"), "n");
    assert_eq!(read(&d[3].join("new")), "n");
}

#[test]
fn paths_with_colon_comma_space_new_api() {
    if can_mount("special_paths_new") {
        special_paths(MountApi::New);
    }
}

#[test]
fn paths_with_colon_comma_space_legacy_mount2() {
    if can_mount("special_paths_legacy") {
        special_paths(MountApi::Legacy);
    }
}

#[test]
fn backslash_in_upper_path() {
    if !can_mount("backslash") {
        return;
    }
    for api in [MountApi::New, MountApi::Legacy] {
        let t = tempfile::tempdir().unwrap();
        let d = mkdirs(t.path(), &["l\\ow", "u\\p", "w\\k", "m"]);
        write(&d[0].join("f"), "f");
        let stack = stack_of(&d).unwrap();
        let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[3])
            .unwrap()
            .with_api(api);
        let g = spec.mount().unwrap_or_else(|e| panic!("{api:?}: {e}"));
        write(&d[3].join("new"), "n");
        assert_eq!(read(&d[1].join("new")), "n", "{api:?}");
        assert_eq!(read(&d[3].join("f")), "f");
        drop(g);
    }
}

#[test]
fn printed_command_mounts_the_same_overlay() {
    if !can_mount("printed_command") {
        return;
    }
    if !Path::new("/bin/mount").exists() && !Path::new("/usr/bin/mount").exists() {
        skip("printed_command: no mount(8)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["a:b", "c,d", "e f'g", "u p", "w,k", "m"]);
    write(&d[0].join("x"), "0");
    write(&d[2].join("y"), "2");
    let stack = LayerStack::builder()
        .lowers(&d[..3])
        .upper(&d[3], &d[4])
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[5]).unwrap();
    let cmd = spec.to_string();
    let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let _u = Unmount(&d[5]);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names(&d[5]), ["x", "y"]);
    let e = overlay_core::mount::mountinfo::entry_for(&d[5])
        .unwrap()
        .unwrap();
    assert_eq!(e.fstype, "overlay");
    assert!(e
        .super_options
        .iter()
        .any(|(k, v)| k == "upperdir" && v.as_deref() == d[3].to_str()));
}

#[test]
fn layer_paths_longer_than_255_bytes() {
    if !can_mount("long_paths") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let long = "d".repeat(100);
    let base = t.path().join(&long).join(&long).join(&long);
    let d = mkdirs(&base, &["lower", "upper", "work"]);
    assert!(d[0].as_os_str().len() > 255, "{}", d[0].display());
    let short = mkdirs(t.path(), &["l2", "m"]);
    write(&d[0].join("deep"), "deep");
    write(&short[0].join("flat"), "flat");
    let stack = LayerStack::builder()
        .lower(&d[0])
        .lower(&short[0])
        .upper(&d[1], &d[2])
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &short[1])
        .unwrap()
        .with_api(MountApi::New);
    let g = spec.mount().unwrap();
    assert_eq!(names(&short[1]), ["deep", "flat"]);
    assert!(g.effective_options().lowers().contains(&d[0]));
    write(&short[1].join("new"), "n");
    assert_eq!(read(&d[1].join("new")), "n");
}

/// The uid of `nobody`.
const NOBODY: u32 = 65534;

fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

fn userns_or_skip(what: &str) -> bool {
    match overlay_core::probe().backend("kernel-userns") {
        Some(s) if s.is_yes() => true,
        other => skip(&format!(
            "{what}: no overlay in a user namespace: {other:?}"
        )),
    }
}

#[test]
fn unprivileged_mount_in_user_namespace_as_nobody() {
    if !userns_or_skip("unprivileged_userns") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = mkdirs(t.path(), &["lower/dir", "upper", "work", "m"]);
    let lower = t.path().join("lower");
    write(&lower.join("gone"), "x");
    write(&d[0].join("old"), "x");
    // As root, drop to nobody in the child; otherwise run as ourselves. Rootless layers
    // belong to the user (root is not mapped in the namespace).
    let uid = if rustix::process::geteuid().is_root() {
        chown_tree(&lower, NOBODY);
        chown_tree(&d[1], NOBODY);
        chown_tree(&d[2], NOBODY);
        NOBODY
    } else {
        rustix::process::geteuid().as_raw()
    };
    let stack = LayerStack::builder()
        .lower(&lower)
        .upper(&d[1], &d[2])
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let m = &d[3];
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), m).unwrap();
    assert!(spec.uses_userxattr());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            "set -e; rm gone; rm -r dir; mkdir dir; echo new > dir/x; \
             test \"$(cat /proc/self/uid_map | tr -s ' ')\" = \" 0 $EXPECT_UID 1\"; \
             grep -q ' - overlay .*userxattr' /proc/self/mountinfo; ls",
        )
        .env("EXPECT_UID", uid.to_string())
        .current_dir(m);
    if uid == NOBODY {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let out_path = t.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    cmd.stdout(out);
    let status = run_in_user_namespace(&spec, cmd).unwrap();
    assert!(status.success(), "command failed: {status}");
    assert_eq!(
        read(&out_path).split_whitespace().collect::<Vec<_>>(),
        ["dir"]
    );
    // Nothing leaked into our namespace.
    assert!(!is_mount_point(m).unwrap());
    // A 0/0 whiteout for the removed lower file, owned by nobody.
    let wh = std::fs::symlink_metadata(d[1].join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    // The recreated directory is opaque, marked with user.overlay.opaque.
    let v = rustix::fs::lgetxattr(d[1].join("dir"), "user.overlay.opaque", &mut [0u8; 8][..])
        .expect("user.overlay.opaque on the recreated directory");
    assert_eq!(v, 1);
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(d[1].join("dir"), "user.overlay.opaque", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert!(
        rustix::fs::lgetxattr(d[1].join("dir"), "trusted.overlay.opaque", &mut buf[..]).is_err()
    );
    assert_eq!(std::fs::metadata(d[1].join("dir/x")).unwrap().uid(), uid);
    // work/work is mode 000; let a non-root owner remove the temp dir.
    let _ = std::fs::set_permissions(d[2].join("work"), std::fs::Permissions::from_mode(0o700));
}

#[test]
fn overlay_over_usr_inside_user_namespace() {
    if !userns_or_skip("overlay_over_usr") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = mkdirs(t.path(), &["extra"]);
    write(&d[0].join("ovl-marker"), "marker");
    let stack = LayerStack::builder()
        .lower("/usr")
        .lower(&d[0])
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), "/usr").unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("test \"$(cat /usr/ovl-marker)\" = marker && test -x /usr/bin/env && grep -q ' /usr .* - overlay ' /proc/self/mountinfo");
    if rustix::process::geteuid().is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let status = run_in_user_namespace(&spec, cmd).unwrap();
    assert!(status.success(), "{status}");
    assert!(!Path::new("/usr/ovl-marker").exists());
    assert!(read_mountinfo()
        .unwrap()
        .iter()
        .all(|e| !(e.mount_point == Path::new("/usr") && e.fstype == "overlay")));
}

#[test]
fn user_namespace_refuses_trusted_stack() {
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l1", "l2", "m"]);
    let stack = LayerStack::builder()
        .lower(&d[0])
        .lower(&d[1])
        .xattr_namespace(XattrNamespace::Trusted)
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[2]).unwrap();
    let e = run_in_user_namespace(&spec, Command::new("true")).unwrap_err();
    assert!(one_line(&e).contains("XattrNamespace::User"), "{e}");
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Build an image of a small tree with `tool`, use it as the bottom lower, check the merged
/// view, and check the loop device and its mount are gone after the guard.
fn image_lower(tool: &str, package: &str, build: &dyn Fn(&Path, &Path, &Path) -> Command) {
    if !can_mount(tool) {
        return;
    }
    let Some(exe) = find_tool(tool) else {
        skip(&format!("{tool} not found (apt-get install {package})"));
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["src/sub", "top", "u", "w", "m"]);
    let src = t.path().join("src");
    write(&src.join("from-image"), "img");
    write(&d[0].join("nested"), "n");
    write(&d[1].join("from-dir"), "dir");
    let img = t.path().join(format!("base.{tool}"));
    let st = build(&exe, &src, &img).status().unwrap();
    assert!(st.success(), "{tool} failed");
    let stack = LayerStack::builder()
        .lower(&img)
        .lower(&d[1])
        .upper(&d[2], &d[3])
        .build()
        .unwrap();
    assert!(stack.has_image_lowers());
    let fstype = stack.lowers()[0].image.unwrap().fstype();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[4]).unwrap();
    let cmd = spec.to_command();
    assert!(
        cmd.contains(&format!("mount -t {fstype} -o ro,loop")),
        "{cmd}"
    );
    let g = spec.mount().unwrap();
    assert_eq!(names(&d[4]), ["from-dir", "from-image", "sub"]);
    assert_eq!(read(&d[4].join("sub/nested")), "n");
    // Copy-up from the image works.
    std::fs::OpenOptions::new()
        .append(true)
        .open(d[4].join("from-image"))
        .unwrap();
    assert!(d[2].join("from-image").exists());
    let ims = g.image_mounts();
    assert_eq!(ims.len(), 1);
    let (dir, loopdev) = (
        ims[0].dir().to_path_buf(),
        ims[0].loop_device().to_path_buf(),
    );
    let e = overlay_core::mount::mountinfo::entry_for(&dir)
        .unwrap()
        .unwrap();
    assert_eq!(e.fstype, fstype);
    assert!(e.mount_options.iter().any(|o| o == "ro"), "{e:?}");
    let sys = PathBuf::from("/sys/block")
        .join(loopdev.file_name().unwrap())
        .join("loop/backing_file");
    assert_eq!(read(&sys).trim(), img.to_str().unwrap());
    drop(g);
    assert!(!is_mount_point(&d[4]).unwrap());
    assert!(!is_mount_point(&dir).unwrap());
    assert!(!dir.exists(), "image mount point left behind");
    // Autoclear releases the loop device once the filesystem is gone.
    let mut cleared = false;
    for _ in 0..50 {
        if !sys.exists() || read(&sys).trim() != img.to_str().unwrap() {
            cleared = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        cleared,
        "{} still attached to {}",
        loopdev.display(),
        img.display()
    );
}

#[test]
fn squashfs_image_lower() {
    image_lower("mksquashfs", "squashfs-tools", &|exe, src, img| {
        let mut c = Command::new(exe);
        c.arg(src).arg(img).args(["-noappend", "-quiet"]);
        c
    });
}

#[test]
fn erofs_image_lower() {
    image_lower("mkfs.erofs", "erofs-utils", &|exe, src, img| {
        let mut c = Command::new(exe);
        c.arg("--quiet").arg(img).arg(src);
        c
    });
}

#[test]
fn non_image_file_lower_refused() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("notanimage");
    write(&f, &"x".repeat(2000));
    let e = LayerStack::builder().lower(&f).build().unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains("notanimage") && s.contains("not a squashfs or erofs image"),
        "{s}"
    );
}

#[test]
fn workdir_on_another_filesystem() {
    if !can_mount("workdir_other_fs") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w"]);
    let _tmpfs = TmpfsMount::new(&d[2]);
    let e = stack_of(&d).unwrap_err();
    let s = one_line(&e);
    assert!(s.contains(d[2].to_str().unwrap()), "{s}");
    assert!(s.contains("workdir is on another filesystem"), "{s}");
}

#[test]
fn non_empty_workdir() {
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w"]);
    write(&d[2].join("leftover"), "x");
    let e = stack_of(&d).unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains("leftover") && s.contains("workdir is not empty"),
        "{s}"
    );
}

#[test]
fn upper_on_an_overlay() {
    if !can_mount("upper_on_overlay") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w", "m", "l2"]);
    let stack = stack_of(&d).unwrap();
    let _g = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[3])
        .unwrap()
        .mount()
        .unwrap();
    let inner = mkdirs(&d[3], &["up", "wk"]);
    let e = LayerStack::builder()
        .lower(&d[4])
        .upper(&inner[0], &inner[1])
        .build()
        .unwrap_err();
    let s = one_line(&e);
    assert!(s.contains(inner[0].to_str().unwrap()), "{s}");
    assert!(s.contains("on an overlay filesystem"), "{s}");
}

#[test]
fn missing_lower() {
    let t = tempfile::tempdir().unwrap();
    let e = LayerStack::builder()
        .lower(t.path().join("does-not-exist"))
        .build()
        .unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains("does-not-exist") && s.contains("No such file"),
        "{s}"
    );
}

#[test]
fn lower_removed_after_validation_names_layer_and_cause() {
    if !can_mount("lower_removed") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l1", "vanishing", "u", "w", "m"]);
    let stack = LayerStack::builder()
        .lower(&d[0])
        .lower(&d[1])
        .upper(&d[2], &d[3])
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[4]).unwrap();
    std::fs::remove_dir(&d[1]).unwrap();
    for api in [MountApi::New, MountApi::Legacy] {
        let e = spec.clone().with_api(api).mount().unwrap_err();
        let s = one_line(&e);
        assert!(s.contains(d[4].to_str().unwrap()), "{s}");
        if api == MountApi::New {
            assert!(s.contains("lowerdir+=") && s.contains("vanishing"), "{s}");
        }
        assert!(s.contains("No such file or directory"), "{s}");
        assert!(!is_mount_point(&d[4]).unwrap());
    }
}

#[test]
fn upper_in_use_with_index_explained() {
    if !can_mount("upper_in_use") {
        return;
    }
    // With index=on two mounts may not share an upper/work dir: the second gets EBUSY (the
    // kernel says why in dmesg only, so the error names the likely cause).
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w", "m1", "m2"]);
    let stack = stack_of(&d).unwrap();
    let o = OverlayMountOptions {
        index: true,
        ..Default::default()
    };
    let _g = MountSpec::new(&stack, &o, &d[3]).unwrap().mount().unwrap();
    let e = MountSpec::new(&stack, &o, &d[4])
        .unwrap()
        .mount()
        .unwrap_err();
    let s = one_line(&e);
    assert!(s.contains(d[4].to_str().unwrap()), "{s}");
    assert!(
        s.contains("busy") && s.contains("in use by another overlay"),
        "{s}"
    );
}

#[test]
fn option_conflicts_explained_before_mounting() {
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w", "m"]);
    let stack = LayerStack::builder()
        .lower(&d[0])
        .upper(&d[1], &d[2])
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let o = OverlayMountOptions {
        metacopy: true,
        redirect_dir: Some(overlay_core::RedirectDir::On),
        ..Default::default()
    };
    let e = MountSpec::new(&stack, &o, &d[3]).unwrap_err();
    let s = one_line(&e);
    assert!(
        matches!(e, Error::OptionConflict(_)) && s.contains("userxattr"),
        "{s}"
    );
}

#[test]
fn guard_unmounts_when_the_test_panics() {
    if !can_mount("guard_panic") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w", "m"]);
    let stack = stack_of(&d).unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[3]).unwrap();
    let r = std::panic::catch_unwind(|| {
        let _g = spec.mount().unwrap();
        assert!(is_mount_point(&d[3]).unwrap());
        panic!("deliberate panic while mounted");
    });
    assert!(r.is_err());
    assert!(
        read_mountinfo()
            .unwrap()
            .iter()
            .all(|e| e.mount_point != d[3]),
        "overlay still mounted after the panic"
    );
}

#[test]
fn detach_keeps_the_mount() {
    if !can_mount("detach") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "u", "w", "m"]);
    let stack = stack_of(&d).unwrap();
    let g = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[3])
        .unwrap()
        .mount()
        .unwrap();
    let target = g.detach();
    let still = is_mount_point(&target).unwrap();
    rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH).unwrap();
    assert!(still);
}

#[test]
fn probe_reports_and_serializes() {
    let p = overlay_core::probe();
    let text = p.to_string();
    assert!(
        text.contains("backends:") && text.contains("kernel-userns"),
        "{text}"
    );
    let json = p.to_json();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert!(
        json.contains("\"backends\":{\"kernel\":{\"status\":"),
        "{json}"
    );
    eprintln!("{text}");
    if overlay_core::mount::has_cap_sys_admin_in_initial_namespace() {
        assert!(p.backend("kernel").unwrap().is_yes(), "{text}");
        assert!(p.new_mount_api.is_yes(), "{text}");
        // Every option that failed says why.
        for f in &p.options {
            if !f.support.is_yes() {
                assert!(
                    f.support.to_string().len() > 10,
                    "{}: {}",
                    f.name,
                    f.support
                );
            }
        }
    }
    assert!(std::ptr::eq(p, overlay_core::probe()), "probe is cached");
}

#[test]
fn namespace_mount_failure_is_reported_from_the_child() {
    if !userns_or_skip("namespace_mount_failure") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l1", "gone-after-check", "m"]);
    let stack = LayerStack::builder()
        .lower(&d[0])
        .lower(&d[1])
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[2]).unwrap();
    std::fs::remove_dir(&d[1]).unwrap();
    let e = run_in_user_namespace(&spec, Command::new("true")).unwrap_err();
    let s = one_line(&e);
    assert!(s.contains(d[2].to_str().unwrap()), "{s}");
    assert!(
        s.contains("fsconfig lowerdir+=") && s.contains("gone-after-check"),
        "{s}"
    );
    assert!(s.contains("No such file or directory"), "{s}");
}

#[test]
fn image_lower_refused_in_user_namespace() {
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["l", "m"]);
    let img = t.path().join("fake.squashfs");
    std::fs::write(&img, b"hsqs and then nothing useful").unwrap();
    let stack = LayerStack::builder()
        .lower(&img)
        .lower(&d[0])
        .xattr_namespace(XattrNamespace::User)
        .build()
        .unwrap();
    let spec = MountSpec::new(&stack, &OverlayMountOptions::default(), &d[1]).unwrap();
    let e = run_in_user_namespace(&spec, Command::new("true")).unwrap_err();
    let s = one_line(&e);
    assert!(matches!(e, Error::Unsupported { .. }), "{s}");
    assert!(
        s.contains("fake.squashfs") && s.contains("user namespace"),
        "{s}"
    );
}

#[test]
fn legacy_option_string_over_one_page_fails_clearly() {
    // Layer names alone exceed a page, so even relative paths cannot fit in mount(2)'s data.
    let t = tempfile::tempdir().unwrap();
    let mut b = LayerStack::builder();
    for i in 0..300 {
        let d = t
            .path()
            .join(format!("a-rather-long-layer-directory-name-{i:04}"));
        std::fs::create_dir(&d).unwrap();
        b = b.lower(d);
    }
    let m = t.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let spec = MountSpec::new(&b.build().unwrap(), &OverlayMountOptions::default(), &m)
        .unwrap()
        .with_api(MountApi::Legacy);
    let e = spec.mount().unwrap_err();
    let s = one_line(&e);
    assert!(
        s.contains("one-page limit") && s.contains(m.to_str().unwrap()),
        "{s}"
    );
}

/// The kernel accepts an upper on another filesystem mounted below a lower (a layer never
/// includes submounts), so validation must too; on the same filesystem it is refused.
#[test]
fn upper_on_a_submount_below_a_lower_is_accepted() {
    if !can_mount("upper_on_a_submount_below_a_lower_is_accepted") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = mkdirs(t.path(), &["lower", "lower/sub", "lower/same"]);
    let _tmpfs = TmpfsMount::new(&d[1]);
    let up = mkdirs(&d[1], &["u", "w"]);
    LayerStack::builder()
        .lower(&d[0])
        .upper(&up[0], &up[1])
        .build()
        .expect("upper on a tmpfs below the lower is valid");
    let same = mkdirs(&d[2], &["u", "w"]);
    let e = LayerStack::builder()
        .lower(&d[0])
        .upper(&same[0], &same[1])
        .build()
        .unwrap_err();
    assert!(one_line(&e).contains("inside lower layer"), "{e}");
}
