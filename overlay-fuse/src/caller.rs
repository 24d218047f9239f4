//! The credentials of the process behind a request, for the permission decisions the kernel
//! leaves to the filesystem: an ioctl number it passes through unchecked (the 32-bit
//! `FS_IOC32_SETFLAGS` from a 64-bit process reaches us without the VFS's owner and
//! `CAP_LINUX_IMMUTABLE` checks), and the listing of `trusted.*` names (the kernel overlay
//! lists them to `CAP_SYS_ADMIN` callers only).
//!
//! A request carries the caller's fsuid, fsgid and pid; capabilities are read from
//! `/proc/PID/status`. They count only when the process is in this daemon's user namespace
//! (a capability in a child namespace grants nothing over our files) and its fsuid is still
//! the request's (a pid reused by another process between the request and the read is
//! refused, not trusted). Anything unreadable counts as no capability: a refusal, never a
//! grant.

use std::sync::OnceLock;

/// A capability a decision needs (the kernel's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// `CAP_FOWNER`: act as the owner of any file.
    Fowner = 3,
    /// `CAP_LINUX_IMMUTABLE`: change the immutable and append-only flags.
    LinuxImmutable = 9,
    /// `CAP_SYS_ADMIN`: among much else, see and use `trusted.*` xattrs.
    SysAdmin = 21,
}

/// The process a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// Its fsuid, as the kernel sent it.
    pub uid: u32,
    /// Its fsgid.
    pub gid: u32,
    /// Its pid in the daemon's pid namespace (0: unknown, e.g. a kernel thread).
    pub pid: u32,
}

impl Caller {
    /// The caller's `/proc/PID/status`, if it is still the process the request came from
    /// (same fsuid: a pid reused since by someone else's process does not count).
    fn status(&self) -> Option<String> {
        if self.pid == 0 {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        // Uid: real, effective, saved, filesystem.
        let fsuid = field(&status, "Uid:")
            .and_then(|v| v.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u32>().ok());
        (fsuid == Some(self.uid)).then_some(status)
    }

    /// True when the caller holds `cap` in its effective set, in this daemon's user
    /// namespace, and is still the process the request came from (same fsuid).
    pub fn has_capability(&self, cap: Capability) -> bool {
        let Some(status) = self.status() else {
            return false;
        };
        let Some(eff) = field(&status, "CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok())
        else {
            return false;
        };
        eff & (1u64 << cap as u32) != 0 && self.shares_our_user_namespace()
    }

    /// True when the caller is in this daemon's user namespace and is still the process
    /// the request came from (false when unknown).
    pub fn in_our_user_namespace(&self) -> bool {
        self.status().is_some() && self.shares_our_user_namespace()
    }

    fn shares_our_user_namespace(&self) -> bool {
        static OURS: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
        let ours = OURS.get_or_init(|| std::fs::read_link("/proc/self/ns/user").ok());
        let theirs = std::fs::read_link(format!("/proc/{}/ns/user", self.pid)).ok();
        ours.is_some() && *ours == theirs
    }
}

/// The value of `key` (e.g. `Uid:`) in a `/proc/PID/status` text.
fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_judged_by_its_own_status() {
        let me = Caller {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            pid: std::process::id(),
        };
        let root = rustix::process::geteuid().is_root();
        // Root in the initial namespace holds CAP_SYS_ADMIN; anyone else does not.
        assert_eq!(me.has_capability(Capability::SysAdmin), root);
        // Another fsuid than the process's: refused whatever the process holds.
        let other = Caller {
            uid: me.uid.wrapping_add(1),
            ..me
        };
        assert!(!other.has_capability(Capability::SysAdmin));
        assert!(!Caller { pid: 0, ..me }.has_capability(Capability::Fowner));
    }
}
