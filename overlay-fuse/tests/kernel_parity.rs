//! Behaviours FUSE long kept from ovl-fuse, each compared with the kernel overlay on the
//! same layers: `open(O_TMPFILE)` and `linkat` of it, `statfs` (the upper's filesystem),
//! the root's `st_ino`, `FS_IOC_FSSETXATTR`/`FSGETXATTR`; and a stack of more lower layers
//! than the kernel overlay takes (4096 by default, `OVL_MANY_LOWERS`).

mod common;

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;
use overlay_fuse::FsConfig;
use rustix::fs::{AtFlags, Mode, OFlags, CWD};

/// Run `f` on a kernel overlay and on ovl-fuse over fresh copies of the same layers
/// (`fill` makes them); returns (kernel's, ours), each with the upper layer's names.
fn both<T>(fill: impl Fn(&Layers), f: impl Fn(&Path, &Layers) -> T) -> (T, T) {
    let k = Layers::new(1);
    fill(&k);
    let kernel = {
        let _m = KernelOverlay::mount(&k);
        f(&k.mnt, &k)
    };
    let l = Layers::new(1);
    fill(&l);
    let m = InProcess::new(&l, FsConfig::default());
    let ours = f(&l.mnt, &l);
    m.unmount();
    (kernel, ours)
}

fn errno_name(e: rustix::io::Errno) -> String {
    format!("errno {}", e.raw_os_error())
}

/// Open an unnamed file in `dir`, write `data`, and describe it.
fn tmpfile(dir: &Path, flags: OFlags, data: &[u8]) -> Result<(OwnedFd, String), String> {
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC | flags,
        Mode::from_raw_mode(0o640),
    )
    .map_err(errno_name)?;
    rustix::io::write(&fd, data).map_err(errno_name)?;
    let st = rustix::fs::fstat(&fd).map_err(errno_name)?;
    Ok((
        fd,
        format!(
            "nlink {} mode {:o} size {}",
            st.st_nlink, st.st_mode, st.st_size
        ),
    ))
}

/// Give an open unnamed file a name, as `linkat(AT_SYMLINK_FOLLOW)` through /proc.
fn link_fd(fd: &OwnedFd, to: &Path) -> String {
    let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::fs::linkat(CWD, src.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => "linked".into(),
        Err(e) => errno_name(e),
    }
}

fn upper_names(l: &Layers) -> Vec<String> {
    let mut v: Vec<String> = walk(&l.upper);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

#[test]
fn tmpfile_as_the_kernel_overlay() {
    if !can_mount("tmpfile_as_the_kernel_overlay") {
        return;
    }
    let fill = |l: &Layers| {
        fs::create_dir(l.lower().join("sub")).unwrap();
        put(l.lower().join("sub/old"), b"old");
    };
    let (kernel, ours) = both(fill, |mnt, l| {
        let mut seen = Vec::new();
        // In the merged root, then in a lower-only directory (copied up for it).
        for dir in ["", "sub"] {
            let d = mnt.join(dir);
            let (fd, what) = tmpfile(&d, OFlags::empty(), b"tmp data").unwrap();
            seen.push(format!("{dir}: {what}"));
            seen.push(format!("listing {:?}", walk(&d).len()));
            seen.push(link_fd(&fd, &d.join("named")));
            let md = fs::metadata(d.join("named")).unwrap();
            seen.push(format!(
                "named: nlink {} same inode {} {:?}",
                md.nlink(),
                md.ino() == rustix::fs::fstat(&fd).unwrap().st_ino,
                fs::read(d.join("named")).unwrap()
            ));
            // A second name, then the first name again (EEXIST).
            seen.push(link_fd(&fd, &d.join("named2")));
            seen.push(link_fd(&fd, &d.join("named")));
            drop(fd);
            // One never linked: nothing is left of it.
            let (fd, what) = tmpfile(&d, OFlags::empty(), b"gone").unwrap();
            seen.push(what);
            drop(fd);
            // O_EXCL: never linkable.
            let (fd, _) = tmpfile(&d, OFlags::EXCL, b"x").unwrap();
            seen.push(link_fd(&fd, &d.join("excl")));
        }
        seen.push(format!("{:?}", upper_names(l)));
        seen
    });
    assert_eq!(ours, kernel);
}

#[test]
fn statfs_is_the_upper_filesystems_as_on_the_kernel_overlay() {
    if !can_mount("statfs_is_the_upper_filesystems_as_on_the_kernel_overlay") {
        return;
    }
    let (kernel, ours) = both(
        |_| {},
        |mnt, l| {
            let s = rustix::fs::statvfs(mnt).unwrap();
            let u = rustix::fs::statvfs(&l.upper).unwrap();
            // What does not move while the test runs (free counts do).
            let fields = |s: &rustix::fs::StatVfs| {
                (s.f_bsize, s.f_frsize, s.f_blocks, s.f_files, s.f_namemax)
            };
            (fields(&s), fields(&s) == fields(&u))
        },
    );
    assert!(
        kernel.1,
        "the kernel overlay reports its upper's filesystem"
    );
    assert_eq!(ours, kernel);
}

#[test]
fn root_st_ino_as_the_kernel_overlay() {
    if !can_mount("root_st_ino_as_the_kernel_overlay") {
        return;
    }
    // The same layer directories mounted by each in turn.
    let l = Layers::new(2);
    put(l.lowers[1].join("f"), b"x");
    fs::create_dir(l.lowers[0].join("d")).unwrap();
    let look = |mnt: &Path| {
        let root = fs::metadata(mnt).unwrap().ino();
        let dot = fs::read_dir(mnt)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), std::os::unix::fs::DirEntryExt::ino(&e)))
            .collect::<Vec<_>>();
        (root, dot.len())
    };
    let kernel = {
        let _m = KernelOverlay::mount(&l);
        look(&l.mnt)
    };
    let m = InProcess::new(&l, FsConfig::default());
    let ours = look(&l.mnt);
    m.unmount();
    assert_ne!(ours.0, 1);
    assert_eq!(ours, kernel);
}

/// Root sets and reads extended inode attributes on a lower file and a lower directory
/// (each copied up), and asks for a project id.
const FSXATTR_SCRIPT: &str = r#"
import errno, fcntl, os, struct, sys
GET, SET, GETFLAGS = 0x801c581f, 0x401c5820, 0x80086601
res = []
def get(fd):
    x = fcntl.ioctl(fd, GET, bytes(28))
    xflags, extsize, nextents, projid, cow, _ = struct.unpack("IIIII8s", x)
    fl = struct.unpack("q", fcntl.ioctl(fd, GETFLAGS, bytes(8)))[0]
    return "xflags %#x projid %d flags %#x" % (xflags, projid, fl)
for name in ("f", "d"):
    fd = os.open(os.path.join(sys.argv[1], name), os.O_RDONLY)
    res.append(get(fd))
    for xflags, projid in ((0xc0, 0), (0x80, 0), (0x80, 7)):
        try:
            fcntl.ioctl(fd, SET, struct.pack("IIIII8s", xflags, 0, 0, projid, 0, b""))
            res.append("set ok")
        except OSError as e:
            res.append(errno.errorcode[e.errno])
        res.append(get(fd))
    os.close(fd)
print("; ".join(res))
"#;

#[test]
fn fssetxattr_as_the_kernel_overlay() {
    fssetxattr_case("fssetxattr_as_the_kernel_overlay", &[]);
}

/// The same from root of a child user namespace (uid 0 mapped to 0): the immutable flag
/// needs `CAP_LINUX_IMMUTABLE` and a project id the initial namespace (EPERM, EINVAL).
#[test]
fn fssetxattr_from_a_child_user_namespace_as_the_kernel_overlay() {
    fssetxattr_case(
        "fssetxattr_from_a_child_user_namespace_as_the_kernel_overlay",
        &["unshare", "--user", "--map-root-user", "--"],
    );
}

fn fssetxattr_case(name: &str, wrapper: &[&str]) {
    if !can_mount(name) {
        return;
    }
    let fill = |l: &Layers| {
        put(l.lower().join("f"), b"data");
        fs::create_dir(l.lower().join("d")).unwrap();
    };
    let (kernel, ours) = both(fill, |mnt, l| {
        let argv: Vec<&str> = wrapper
            .iter()
            .copied()
            .chain(["/usr/bin/python3"])
            .collect();
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .arg("-c")
            .arg(FSXATTR_SCRIPT)
            .arg(mnt)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lower_flags =
            rustix::fs::ioctl_getflags(fs::File::open(l.lower().join("f")).unwrap()).unwrap();
        (
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
            lower_flags.bits(),
            upper_names(l),
        )
    });
    assert_eq!(ours, kernel);
    assert_eq!(
        kernel.1 & 0x40,
        0,
        "the kernel overlay set a lower file's flags"
    );
}

/// More lower layers than the kernel overlay takes (its limit is 500): the kernel refuses
/// them, ovl-fuse mounts them (raising its open-file limit) and serves every layer.
#[test]
fn more_lowers_than_the_kernel_takes() {
    if !can_mount("more_lowers_than_the_kernel_takes") {
        return;
    }
    let n: usize = std::env::var("OVL_MANY_LOWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let l = Layers::new(0);
    let root = l.tmp.path();
    // Short relative names: 4096 absolute paths would not fit in one argument (128 KiB).
    // Every layer has `shared/` (a directory merged through all of them; `shared/f` in the
    // top and bottom ones); a file of its own only every 512th layer and the bottom one
    // (each name looked up costs a look into every layer down to the one that has it, as
    // on the kernel overlay, and each inode made here costs the scratch disk); `deep` in
    // some of the lower half, whited out just above it.
    let own = |i: usize| i.is_multiple_of(512) || i == n - 1;
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{i}");
        let d = root.join(&name);
        fs::create_dir_all(d.join("shared")).unwrap();
        if own(i) {
            put(d.join(format!("only{i}")), format!("{i}").as_bytes());
        }
        if i == 0 || i == n - 1 {
            put(d.join("shared/f"), format!("{i}").as_bytes());
        }
        if i > n / 2 && own(i) {
            put(d.join("deep"), b"deep");
        } else if i == n / 2 {
            rustix::fs::mknodat(
                CWD,
                d.join("deep"),
                rustix::fs::FileType::CharacterDevice,
                Mode::empty(),
                0,
            )
            .unwrap();
        }
        names.push(name);
    }
    let opts = format!("lowerdir={},upperdir=upper,workdir=work", names.join(":"));
    // The kernel overlay refuses the stack (relative names, so the options fit in a page).
    let kernel = Command::new("mount")
        .current_dir(root)
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir=upper,workdir=work",
            names[..501].join(":")
        ))
        .arg(&l.mnt)
        .output()
        .expect("run mount");
    if kernel.status.success() {
        force_unmount(&l.mnt);
        panic!("the kernel overlay took 501 lowers: its limit changed");
    }
    // ovl-fuse with a soft open-file limit of 1024 (the usual default).
    let mut cmd = Command::new("sh");
    cmd.current_dir(root)
        .args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\"", BIN]);
    let d = Daemon::foreground_with(cmd, &opts, &l.mnt);
    let mnt = &l.mnt;
    let entries = fs::read_dir(mnt).unwrap().count();
    assert_eq!(
        entries,
        (0..n).filter(|i| own(*i)).count() + 1,
        "merged root"
    );
    assert_eq!(fs::read_dir(mnt.join("shared")).unwrap().count(), 1);
    assert_eq!(
        fs::read(mnt.join("shared/f")).unwrap(),
        b"0",
        "top layer wins"
    );
    let last = format!("only{}", n - 1);
    assert_eq!(
        fs::read(mnt.join(&last)).unwrap(),
        format!("{}", n - 1).as_bytes()
    );
    assert!(
        !mnt.join("deep").exists(),
        "a whiteout hides the name below it"
    );
    // A copy-up from the bottom layer, and a new file.
    fs::write(mnt.join(&last), b"changed").unwrap();
    fs::write(mnt.join("new"), b"new").unwrap();
    assert_eq!(fs::read(l.upper.join(&last)).unwrap(), b"changed");
    assert_eq!(
        fs::read(root.join(format!("{}", n - 1)).join(&last)).unwrap(),
        format!("{}", n - 1).as_bytes()
    );
    fs::set_permissions(mnt.join("shared"), fs::Permissions::from_mode(0o700)).unwrap();
    d.unmount_and_wait();
}

/// A squashfs image mounted (loop, read-only) on a directory; unmounted on drop.
struct ImageMount(std::path::PathBuf);

impl Drop for ImageMount {
    fn drop(&mut self) {
        // The FUSE daemon's descriptors on the image go when its session ends; a moment.
        for _ in 0..50 {
            if !is_mounted(&self.0) || nix::mount::umount(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A lower layer on a filesystem without POSIX ACLs (squashfs made with `-no-xattrs`, as
/// the unionmount-testsuite's `--squashfs` mode does): its files answer EOPNOTSUPP for the
/// ACL xattrs. The kernel overlay answers ENODATA (no ACL); ovl-fuse must too, or the FUSE
/// kernel fails every permission check with EOPNOTSUPP and nothing opens.
#[test]
fn lower_without_acls_as_the_kernel_overlay() {
    if !can_mount("lower_without_acls_as_the_kernel_overlay") {
        return;
    }
    if Command::new("mksquashfs").arg("-version").output().is_err() {
        return skip(
            "lower_without_acls_as_the_kernel_overlay",
            "needs mksquashfs (squashfs-tools)",
        );
    }
    let side = |kernel: bool| {
        let l = Layers::new(1);
        let src = l.tmp.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        put(src.join("d/f"), b"lower data");
        let img = l.tmp.path().join("lower.sqfs");
        let out = Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-quiet", "-no-xattrs", "-no-progress"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mksquashfs: {out:?}");
        let st = Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(&img)
            .arg(l.lower())
            .status()
            .unwrap();
        assert!(st.success(), "loop mount of the squashfs image");
        let _image = ImageMount(l.lower().to_path_buf());
        let look = |mnt: &Path| {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 256];
            for p in ["d", "d/f"] {
                for x in [
                    "system.posix_acl_access",
                    "system.posix_acl_default",
                    "user.x",
                ] {
                    let r = rustix::fs::lgetxattr(mnt.join(p), x, &mut buf);
                    seen.push(format!("{p} {x}: {:?}", r.map_err(errno_name)));
                }
            }
            let read = || {
                fs::read(mnt.join("d/f"))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|e| e.kind())
            };
            seen.push(format!("read: {:?}", read()));
            let w = fs::OpenOptions::new()
                .append(true)
                .open(mnt.join("d/f"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b" + upper"));
            seen.push(format!("append: {:?}", w.map_err(|e| e.kind())));
            seen.push(format!("read: {:?}", read()));
            seen
        };
        if kernel {
            let _m = KernelOverlay::mount(&l);
            look(&l.mnt)
        } else {
            let m = InProcess::new(&l, FsConfig::default());
            let seen = look(&l.mnt);
            m.unmount();
            seen
        }
    };
    let kernel = side(true);
    let ours = side(false);
    assert_eq!(ours, kernel);
    assert!(
        kernel.iter().any(|s| s.contains("lower data + upper")),
        "the copy-up worked: {kernel:?}"
    );
}
