//! A mount prepared down to system-call arguments, executable without allocating.
//!
//! [`PreparedMount::execute`] runs in three places: in the calling process, in a forked child
//! that must `chdir` (legacy `mount(2)` with relative paths), and between fork and exec of a
//! command that runs in a new user and mount namespace. The last two run after `fork()` in a
//! possibly multi-threaded process, so this code must stay **async-signal-safe**: no
//! allocation, no locks, no `std::io::Error` formatting, only rustix system calls on data
//! prepared before the fork. Errors are reported as an errno plus bytes written to a
//! [`MessageSink`] (a pipe in the child).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use rustix::mount::{
    fsconfig_create, fsconfig_set_fd, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    move_mount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags,
    MoveMountFlags,
};

/// Separates the failing step from the kernel's messages in a sink.
pub(crate) const KERNEL_MSG_SEPARATOR: u8 = 0;

/// Returned by [`PreparedMount::execute`] when the legacy path needs a `chdir`, which must
/// not happen in the calling (multi-threaded) process: run it in a forked child instead.
pub(crate) const NEEDS_FORK: i32 = -1;

/// Where error text goes: a `Vec<u8>` in process, a pipe in a child.
pub(crate) trait MessageSink {
    /// Append bytes.
    fn put(&mut self, bytes: &[u8]);
}

impl MessageSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A fixed-size sink on the stack (async-signal-safe); excess bytes are dropped.
pub(crate) struct StackSink {
    buf: [u8; 1024],
    len: usize,
}

impl StackSink {
    pub(crate) fn new() -> Self {
        StackSink {
            buf: [0; 1024],
            len: 0,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl MessageSink for StackSink {
    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A sink writing straight to a pipe (async-signal-safe).
pub(crate) struct PipeSink<'a>(pub &'a OwnedFd);

impl MessageSink for PipeSink<'_> {
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match rustix::io::write(self.0, bytes) {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes = &bytes[n..],
            }
        }
    }
}

/// Which mount API to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MountApi {
    /// The new mount API, falling back to `mount(2)` when the kernel lacks it (`ENOSYS`) or
    /// lacks `lowerdir+` (before 6.8) or fd-valued layers (before 6.13).
    #[default]
    Auto,
    /// Only `fsopen`/`fsconfig`/`fsmount`/`move_mount`.
    New,
    /// Only `mount(2)` with an escaped option string (limited to one page).
    Legacy,
}

/// A value for `fsconfig`.
#[derive(Debug)]
pub(crate) enum ParamValue {
    /// `FSCONFIG_SET_FLAG`.
    Flag,
    /// `FSCONFIG_SET_STRING` (at most 255 bytes).
    Str(CString),
    /// `FSCONFIG_SET_FD`, for paths too long for a string (Linux 6.13).
    Fd(OwnedFd),
}

/// One `fsconfig` call.
#[derive(Debug)]
pub(crate) struct Param {
    /// Key, e.g. `lowerdir+`.
    pub key: CString,
    /// Value.
    pub value: ParamValue,
    /// What to name in an error message (the path for fd values).
    pub shown: CString,
}

/// A `mount(2)` call.
#[derive(Debug)]
pub(crate) struct LegacyMount {
    /// Source (`overlay`).
    pub source: CString,
    /// Filesystem type.
    pub fstype: CString,
    /// MS_* flags.
    pub flags: MountFlags,
    /// Escaped option string, shorter than a page.
    pub data: CString,
    /// Directory the layer paths in `data` are relative to (needs a forked child).
    pub chdir: Option<CString>,
}

/// Everything needed to mount, prepared before any fork.
#[derive(Debug)]
pub(crate) struct PreparedMount {
    /// Filesystem type for `fsopen`.
    pub fstype: CString,
    /// Absolute mount point.
    pub target: CString,
    /// The `fsconfig` calls, in order (including `source`).
    pub params: Vec<Param>,
    /// Attributes for `fsmount`.
    pub attrs: MountAttrFlags,
    /// The `mount(2)` fallback, or why there is none.
    pub legacy: Result<LegacyMount, &'static str>,
    /// Which API to use.
    pub api: MountApi,
}

/// How the new API failed.
enum NewApiFailure {
    /// Not available here (ENOSYS, unknown `lowerdir+`): fall back.
    Unavailable(i32),
    /// A real failure, already described in the sink.
    Failed(i32),
}

/// Copy the fs_context log (`e <msg>` lines) into the sink, separated by "; ".
pub(crate) fn drain_kernel_messages(fs_fd: impl AsFd, sink: &mut dyn MessageSink) {
    let mut buf = [0u8; 1024];
    let mut first = true;
    // The log holds at most 8 messages; bound the loop anyway.
    for _ in 0..16 {
        match rustix::io::read(&fs_fd, &mut buf) {
            Ok(n) if n > 0 => {
                let mut msg = &buf[..n];
                if msg.len() > 2 && msg[1] == b' ' && matches!(msg[0], b'e' | b'w' | b'i') {
                    msg = &msg[2..];
                }
                while msg.last() == Some(&b'\n') {
                    msg = &msg[..msg.len() - 1];
                }
                if !first {
                    sink.put(b"; ");
                }
                sink.put(msg);
                first = false;
            }
            _ => break,
        }
    }
}

impl PreparedMount {
    /// Mount. `in_child` allows the `chdir` of the legacy relative-path variant. Returns the
    /// errno on failure (or [`NEEDS_FORK`]), with the step and the kernel's messages in `sink`.
    pub(crate) fn execute(&self, sink: &mut dyn MessageSink, in_child: bool) -> Result<(), i32> {
        match self.api {
            MountApi::Legacy => self.legacy(sink, in_child, None),
            MountApi::New => {
                match self.new_api(sink) {
                    Ok(()) => Ok(()),
                    Err(NewApiFailure::Unavailable(e)) => {
                        sink.put(b"new mount API (fsopen/fsconfig lowerdir+) not supported by this kernel");
                        Err(e)
                    }
                    Err(NewApiFailure::Failed(e)) => Err(e),
                }
            }
            MountApi::Auto => match self.new_api(sink) {
                Ok(()) => Ok(()),
                Err(NewApiFailure::Unavailable(e)) => self.legacy(sink, in_child, Some(e)),
                Err(NewApiFailure::Failed(e)) => Err(e),
            },
        }
    }

    fn new_api(&self, sink: &mut dyn MessageSink) -> Result<(), NewApiFailure> {
        let fs = match fsopen(self.fstype.as_c_str(), FsOpenFlags::FSOPEN_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::NOSYS => {
                return Err(NewApiFailure::Unavailable(e.raw_os_error()))
            }
            Err(e) => {
                sink.put(b"fsopen ");
                sink.put(self.fstype.as_bytes());
                return Err(NewApiFailure::Failed(e.raw_os_error()));
            }
        };
        for p in &self.params {
            let r = match &p.value {
                ParamValue::Flag => fsconfig_set_flag(&fs, p.key.as_c_str()),
                ParamValue::Str(v) => fsconfig_set_string(&fs, p.key.as_c_str(), v.as_c_str()),
                ParamValue::Fd(fd) => fsconfig_set_fd(&fs, p.key.as_c_str(), fd),
            };
            if let Err(e) = r {
                let mut kmsg = StackSink::new();
                drain_kernel_messages(&fs, &mut kmsg);
                // 6.5-6.7: the overlay parser exists but does not know `lowerdir+`.
                if e == rustix::io::Errno::INVAL
                    && p.key.as_bytes() == b"lowerdir+"
                    && contains(kmsg.bytes(), b"Unknown parameter")
                {
                    return Err(NewApiFailure::Unavailable(e.raw_os_error()));
                }
                sink.put(b"fsconfig ");
                sink.put(p.key.as_bytes());
                if !matches!(p.value, ParamValue::Flag) {
                    sink.put(b"=");
                    sink.put(p.shown.as_bytes());
                }
                sink.put(&[KERNEL_MSG_SEPARATOR]);
                sink.put(kmsg.bytes());
                return Err(NewApiFailure::Failed(e.raw_os_error()));
            }
        }
        if let Err(e) = fsconfig_create(&fs) {
            sink.put(b"create ");
            sink.put(self.fstype.as_bytes());
            sink.put(b" superblock (fsconfig FSCONFIG_CMD_CREATE)");
            sink.put(&[KERNEL_MSG_SEPARATOR]);
            drain_kernel_messages(&fs, sink);
            return Err(NewApiFailure::Failed(e.raw_os_error()));
        }
        let mnt = match fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, self.attrs) {
            Ok(m) => m,
            Err(e) => {
                sink.put(b"fsmount");
                sink.put(&[KERNEL_MSG_SEPARATOR]);
                drain_kernel_messages(&fs, sink);
                return Err(NewApiFailure::Failed(e.raw_os_error()));
            }
        };
        if let Err(e) = move_mount(
            &mnt,
            c"",
            rustix::fs::CWD,
            self.target.as_c_str(),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        ) {
            sink.put(b"move_mount onto the target");
            return Err(NewApiFailure::Failed(e.raw_os_error()));
        }
        Ok(())
    }

    fn legacy(
        &self,
        sink: &mut dyn MessageSink,
        in_child: bool,
        new_api_errno: Option<i32>,
    ) -> Result<(), i32> {
        let lm = match &self.legacy {
            Ok(lm) => lm,
            Err(why) => {
                if new_api_errno.is_some() {
                    sink.put(b"the new mount API is not available here (no fsopen or no lowerdir+), and ");
                }
                sink.put(b"mount(2) cannot be used: ");
                sink.put(why.as_bytes());
                return Err(rustix::io::Errno::TOOBIG.raw_os_error());
            }
        };
        if let Some(dir) = &lm.chdir {
            if !in_child {
                return Err(NEEDS_FORK);
            }
            if let Err(e) = rustix::process::chdir(dir.as_c_str()) {
                sink.put(b"chdir ");
                sink.put(dir.as_bytes());
                return Err(e.raw_os_error());
            }
        }
        if let Err(e) = rustix::mount::mount(
            lm.source.as_c_str(),
            self.target.as_c_str(),
            lm.fstype.as_c_str(),
            lm.flags,
            lm.data.as_c_str(),
        ) {
            sink.put(b"mount(2) -t ");
            sink.put(lm.fstype.as_bytes());
            sink.put(b" (the kernel logs the details to dmesg only)");
            return Err(e.raw_os_error());
        }
        Ok(())
    }
}

/// Namespace set-up for a child: new mount namespace, optionally a new user namespace in
/// which the caller's uid/gid map to root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NamespaceSetup {
    /// Also create a user namespace.
    pub user: bool,
}

/// What a forked child does before exec (or before exiting, for [`crate::sys::fork_plan`]).
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// Namespaces to enter first.
    pub namespaces: Option<NamespaceSetup>,
    /// The mount.
    pub mount: PreparedMount,
    /// Directory to change into after mounting (the command's cwd, now seen through the
    /// overlay if the overlay covers it).
    pub chdir_after: Option<CString>,
    /// Write end of the error pipe (close-on-exec).
    pub err_pipe: OwnedFd,
}

/// Format `n` in decimal into `buf`, returning the used part.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Write `0 <id> 1\n` to a `/proc/self/{uid,gid}_map` file.
fn write_id_map(path: &std::ffi::CStr, id: u32) -> Result<(), i32> {
    let mut line = [0u8; 16];
    let mut digits = [0u8; 10];
    let d = decimal(id, &mut digits);
    line[..2].copy_from_slice(b"0 ");
    line[2..2 + d.len()].copy_from_slice(d);
    line[2 + d.len()..2 + d.len() + 3].copy_from_slice(b" 1\n");
    let len = 2 + d.len() + 3;
    write_file(path, &line[..len])
}

fn write_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), i32> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| e.raw_os_error())?;
    match rustix::io::write(&fd, data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(rustix::io::Errno::IO.raw_os_error()),
        Err(e) => Err(e.raw_os_error()),
    }
}

impl ChildPlan {
    /// Enter the namespaces, mount, change directory. Async-signal-safe (see the module
    /// documentation); returns an errno, with the explanation written to `err_pipe`.
    pub(crate) fn run(&self) -> Result<(), i32> {
        let mut sink = PipeSink(&self.err_pipe);
        if let Some(ns) = self.namespaces {
            let uid = rustix::process::geteuid().as_raw();
            let gid = rustix::process::getegid().as_raw();
            if ns.user {
                // After a setuid() the child is not dumpable, and /proc/self/*_map would then
                // belong to root; exec would restore this anyway.
                let _ = rustix::process::set_dumpable_behavior(
                    rustix::process::DumpableBehavior::Dumpable,
                );
            }
            if let Err(e) = crate::sys::unshare_mount_namespace(ns.user) {
                sink.put(if ns.user {
                    b"unshare(CLONE_NEWUSER|CLONE_NEWNS): user namespaces are not allowed here (see /proc/sys/user/max_user_namespaces, kernel.unprivileged_userns_clone, AppArmor)"
                } else {
                    b"unshare(CLONE_NEWNS)"
                });
                return Err(e.raw_os_error().unwrap_or(libc::EPERM));
            }
            if ns.user {
                let steps: [(&std::ffi::CStr, Option<u32>); 3] = [
                    (c"/proc/self/setgroups", None),
                    (c"/proc/self/uid_map", Some(uid)),
                    (c"/proc/self/gid_map", Some(gid)),
                ];
                for (path, id) in steps {
                    let r = match id {
                        None => write_file(path, b"deny"),
                        Some(id) => write_id_map(path, id),
                    };
                    if let Err(e) = r {
                        sink.put(b"write ");
                        sink.put(path.to_bytes());
                        return Err(e);
                    }
                }
            }
            if let Err(e) = rustix::mount::mount_change(
                c"/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            ) {
                sink.put(b"make mount propagation private (mount --make-rprivate /)");
                return Err(e.raw_os_error());
            }
        }
        self.mount.execute(&mut sink, true)?;
        if let Some(dir) = &self.chdir_after {
            let _ = rustix::process::chdir(dir.as_c_str());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fs_context log reaches the error message (needs CAP_SYS_ADMIN).
    #[test]
    fn kernel_messages_reach_the_error() {
        if !crate::mount::has_cap_sys_admin_in_initial_namespace() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true but no CAP_SYS_ADMIN to test mounting"
            );
            eprintln!("SKIPPED kernel_messages_reach_the_error: not privileged");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dir = |n: &str| {
            let p = t.path().join(n);
            std::fs::create_dir(&p).unwrap();
            CString::new(p.into_os_string().into_encoded_bytes()).unwrap()
        };
        let (data, lower, m) = (dir("data"), dir("lower"), dir("m"));
        let param = |k: &str, v: &CString| Param {
            key: CString::new(k).unwrap(),
            value: ParamValue::Str(v.clone()),
            shown: v.clone(),
        };
        let p = PreparedMount {
            fstype: c"overlay".into(),
            target: m.clone(),
            params: vec![param("datadir+", &data), param("lowerdir+", &lower)],
            attrs: MountAttrFlags::empty(),
            legacy: Err("not used"),
            api: MountApi::Auto,
        };
        let mut sink = Vec::new();
        let errno = p.execute(&mut sink, false).unwrap_err();
        assert_eq!(errno, libc::EINVAL);
        let e = crate::mount::kernel::mount_error(t.path(), errno, &sink).to_string();
        assert!(
            e.contains("fsconfig lowerdir+=") && e.contains("/lower"),
            "{e}"
        );
        assert!(
            e.contains("kernel says \"")
                && e.contains("regular lower layers cannot follow data layers\""),
            "{e}"
        );
    }

    #[test]
    fn decimal_formats() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(65534, &mut b), b"65534");
        assert_eq!(decimal(u32::MAX, &mut b), b"4294967295");
    }
}
