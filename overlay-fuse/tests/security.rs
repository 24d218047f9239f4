//! Attacks on a root-run `ovl-fuse` mounted with `allow_other`, by a real non-root user
//! (uid 65534 through `setpriv`), each checked against what the kernel overlay allows.
//!
//! The attacker side is a short Python script (`/usr/bin/python3`, Debian's `python3`):
//! it needs `O_PATH` descriptors and `/proc/self/fd` reopening, which no shell tool gives.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{can_mount, skip, Daemon, KernelOverlay, Layers};

/// The unprivileged user the attacks run as.
const NOBODY: &str = "65534";

/// A command run as uid/gid 65534 with no supplementary groups.
fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--",
        program,
    ]);
    c
}

/// Layers under `dir` whose temp root can be traversed by other users.
fn open_layers_in(dir: &Path) -> Layers {
    let l = Layers::new_in(dir, 1);
    std::fs::set_permissions(l.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&l.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    l
}

/// True when the filesystem holding `p` hands a freed inode number to the next new file
/// (ext4 and xfs do; tmpfs and btrfs count up).
fn reuses_inode_numbers(p: &Path) -> bool {
    let st = rustix::fs::statfs(p).unwrap();
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    matches!(st.f_type as i64, EXT4 | XFS)
}

/// The attacker keeps `O_PATH` descriptors of files it deleted in a world-writable sticky
/// directory; root then creates files in a 0700 directory, which reuse the freed inode
/// numbers; the attacker reopens its old descriptors through `/proc/self/fd`. Through the
/// kernel overlay nothing can be read; through ovl-fuse, neither: the kernel must see the
/// new files as new inodes (another FUSE generation), not as the attacker's old ones.
#[test]
fn reused_inode_numbers_do_not_hand_out_new_files() {
    const TEST: &str = "reused_inode_numbers_do_not_hand_out_new_files";
    if !can_mount(TEST) {
        return;
    }
    // Scratch space on the disk (the target dir), where inode numbers are reused.
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if !reuses_inode_numbers(scratch) {
        return skip(TEST, "the target dir is not on ext4 or xfs");
    }
    let l = open_layers_in(scratch);
    let d = Daemon::foreground(&format!("{},allow_other", l.options()), &l.mnt);

    // ext4 hands freed numbers out again at once within a block group; should a round see
    // none reused (its directories landed in another group, say), another round runs with
    // new directories, up to five.
    let mut reused = 0;
    for round in 0..5 {
        let (r, leaked) = reuse_attack_round(&l, round);
        eprintln!("round {round}: {r} of root's new files got numbers the attacker freed");
        assert_eq!(
            leaked, 0,
            "round {round}: the attacker read root's new files through {r} reused inode numbers"
        );
        reused += r;
        if reused > 0 {
            break;
        }
    }
    assert!(
        reused > 0,
        "no inode number was reused in five rounds, so this run proves nothing"
    );
    d.unmount_and_wait();
}

/// One round of the attack of [`reused_inode_numbers_do_not_hand_out_new_files`] (file
/// names carry `round`): how many of root's new files got a number the attacker's deleted
/// files had, and how many of those the attacker read.
fn reuse_attack_round(l: &Layers, round: usize) -> (usize, usize) {
    const N: usize = 300;
    // Root's 0700 directory inside the shared 1777 one: ext4 puts a subdirectory in its
    // parent's block group as a rule, so root's new files get numbers the attacker freed.
    let shared = l.mnt.join(format!("pub{round}"));
    let secret = shared.join("secret");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let script = format!(
        r#"
import os, sys
d = sys.argv[1]
fds = []
inos = []
for i in range({N}):
    p = os.path.join(d, "pub{round}", "f{round}_%d" % i)
    with open(p, "w") as f:
        f.write("mine")
    fd = os.open(p, os.O_PATH)
    inos.append(os.fstat(fd).st_ino)
    fds.append(fd)
for i in range({N}):
    os.unlink(os.path.join(d, "pub{round}", "f{round}_%d" % i))
print(" ".join(map(str, inos)), flush=True)
sys.stdin.readline()
leaked = 0
for fd in fds:
    try:
        rfd = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY)
    except OSError:
        continue
    try:
        if os.read(rfd, 100).startswith(b"SECRET"):
            leaked += 1
    except OSError:
        pass
    os.close(rfd)
print(leaked, flush=True)
"#
    );
    let mut child = as_nobody("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .arg(&l.mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 as nobody (setpriv, python3)");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let attacker_inos: std::collections::HashSet<u64> = line
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(attacker_inos.len(), N, "attacker set-up failed: {line:?}");

    // Root writes its secrets; ext4 hands them the freed inode numbers (of the upper
    // layer: ovl-fuse may show a reused number's new file under a node id of its own).
    let mut reused = 0;
    for i in 0..N {
        let name = format!("s{round}_{i}");
        std::fs::write(secret.join(&name), format!("SECRET {i}")).unwrap();
        let real_dir = l.upper.join(format!("pub{round}")).join("secret");
        let real = std::fs::symlink_metadata(real_dir.join(&name)).unwrap();
        reused += usize::from(attacker_inos.contains(&std::os::unix::fs::MetadataExt::ino(&real)));
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "attacker script failed: {status}");
    (reused, line.trim().parse().expect("the attacker's count"))
}

/// Run a Python script as nobody with `args`; its stdout, trimmed (the test fails if it
/// fails).
fn python_as_nobody(script: &str, args: &[&Path]) -> String {
    let out = as_nobody("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3 as nobody (setpriv, python3)");
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The same lower content for the kernel's mount and ours: a root-owned 0644 file with a
/// `trusted.*` and a `user.*` xattr.
fn root_file_layers() -> Layers {
    let l = open_layers_in(&std::env::temp_dir());
    let f = l.lower().join("rootfile");
    std::fs::write(&f, b"root's data").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    rustix::fs::setxattr(&f, "trusted.test", b"t", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&f, "user.test", b"u", rustix::fs::XattrFlags::empty()).unwrap();
    l
}

/// What an unprivileged user gets from the inode-flags ioctls on a root file it can read:
/// the 32-bit numbers (which the kernel passes to a FUSE server unchecked) and the 64-bit
/// one (which the kernel checks), each trying to set the immutable flag.
const CHATTR_SCRIPT: &str = r#"
import errno, fcntl, os, struct, sys
fd = os.open(os.path.join(sys.argv[1], "rootfile"), os.O_RDONLY)
res = []
for cmd in (0x40046602, 0x40086602, 0x80046601):
    try:
        fcntl.ioctl(fd, cmd, struct.pack("q", 0x10))
        res.append("ok")
    except OSError as e:
        res.append(errno.errorcode[e.errno])
print(" ".join(res))
"#;

/// A reader may not set the inode flags of a root file through the mount, whatever ioctl
/// number it uses: ovl-fuse answers as the kernel overlay does, sets nothing and copies
/// nothing up.
#[test]
fn inode_flag_ioctls_of_other_users_are_refused_as_by_the_kernel() {
    if !can_mount("inode_flag_ioctls_of_other_users_are_refused_as_by_the_kernel") {
        return;
    }
    let k = root_file_layers();
    let kernel = {
        let _m = KernelOverlay::mount(&k);
        python_as_nobody(CHATTR_SCRIPT, &[&k.mnt])
    };
    let l = root_file_layers();
    let d = Daemon::foreground(&format!("{},allow_other", l.options()), &l.mnt);
    let ours = python_as_nobody(CHATTR_SCRIPT, &[&l.mnt]);
    let flags =
        rustix::fs::ioctl_getflags(std::fs::File::open(l.mnt.join("rootfile")).unwrap()).unwrap();
    d.unmount_and_wait();
    assert_eq!(ours, kernel, "errors of SETFLAGS32, SETFLAGS, GETFLAGS32");
    assert!(
        !flags.contains(rustix::fs::IFlags::IMMUTABLE),
        "a reader made root's file immutable"
    );
    assert!(
        !l.upper.join("rootfile").exists(),
        "a reader forced a copy-up of root's file"
    );
}

const LISTXATTR_SCRIPT: &str = r#"
import os, sys
print(" ".join(sorted(os.listxattr(os.path.join(sys.argv[1], "rootfile"), follow_symlinks=False))))
"#;

/// `trusted.*` names are listed to callers with CAP_SYS_ADMIN only, as the kernel overlay
/// lists them; `user.*` names to everyone.
#[test]
fn trusted_xattr_names_are_listed_to_privileged_callers_only() {
    if !can_mount("trusted_xattr_names_are_listed_to_privileged_callers_only") {
        return;
    }
    let names_as_root = |mnt: &Path| {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(mnt.join("rootfile"), &mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .replace('\0', " ")
            .trim()
            .to_string()
    };
    let k = root_file_layers();
    let (kernel_nobody, kernel_root) = {
        let _m = KernelOverlay::mount(&k);
        (
            python_as_nobody(LISTXATTR_SCRIPT, &[&k.mnt]),
            names_as_root(&k.mnt),
        )
    };
    let l = root_file_layers();
    let d = Daemon::foreground(&format!("{},allow_other", l.options()), &l.mnt);
    let (ours_nobody, ours_root) = (
        python_as_nobody(LISTXATTR_SCRIPT, &[&l.mnt]),
        names_as_root(&l.mnt),
    );
    d.unmount_and_wait();
    assert_eq!(kernel_nobody, "user.test", "the kernel's view changed");
    assert_eq!(ours_nobody, kernel_nobody, "names listed to nobody");
    assert_eq!(ours_root, kernel_root, "names listed to root");
}
