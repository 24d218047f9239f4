//! INIT: what the session negotiates with the kernel (capabilities, passthrough and its
//! backing stack depth, the writeback cache, FUSE over io_uring).

use std::path::Path;
use std::sync::atomic::Ordering;

use fuser::{InitFlags, KernelConfig};
use overlay_core::Overlay;
use tracing::info;

use super::plus_policy::ReaddirPlus;
use super::Inner;

impl Inner {
    pub(super) fn negotiate(&self, config: &mut KernelConfig) {
        // add_capabilities is all-or-nothing: add each flag on its own. Never add flags that
        // change the wire format in ways fuser 0.18 does not parse (SETXATTR_EXT,
        // SECURITY_CTX, CREATE_SUPP_GROUP, ALLOW_IDMAP). OVER_IO_URING is served by the
        // transport our vendored fuser adds (third_party/fuser/src/uring.rs).
        fn add(config: &mut KernelConfig, flag: InitFlags, name: &str) -> bool {
            match config.add_capabilities(flag) {
                Ok(()) => true,
                Err(_) => {
                    info!("kernel does not offer {name}");
                    false
                }
            }
        }
        add(config, InitFlags::FUSE_ASYNC_READ, "ASYNC_READ");
        add(config, InitFlags::FUSE_BIG_WRITES, "BIG_WRITES");
        add(config, InitFlags::FUSE_PARALLEL_DIROPS, "PARALLEL_DIROPS");
        add(config, InitFlags::FUSE_ATOMIC_O_TRUNC, "ATOMIC_O_TRUNC");
        add(config, InitFlags::FUSE_CACHE_SYMLINKS, "CACHE_SYMLINKS");
        add(config, InitFlags::FUSE_ASYNC_DIO, "ASYNC_DIO");
        if add(config, InitFlags::FUSE_DO_READDIRPLUS, "DO_READDIRPLUS")
            && self.cfg.readdirplus == ReaddirPlus::Kernel
        {
            add(config, InitFlags::FUSE_READDIRPLUS_AUTO, "READDIRPLUS_AUTO");
        }
        if self.cfg.acl && self.cfg.xattrs && add(config, InitFlags::FUSE_POSIX_ACL, "POSIX_ACL") {
            // The caller's umask comes separately: the engine applies it only where the
            // parent has no default ACL (see `overlay_core::NewMode`).
            add(config, InitFlags::FUSE_DONT_MASK, "DONT_MASK");
        }
        let mut passthrough = false;
        // fsync=0 leaves passthrough off on a writable mount (a passthrough fsync would
        // reach the upper file); a read-only mount passes only lower files through.
        if self.cfg.passthrough && (self.cfg.fsync || self.cfg.read_only) {
            if !has_initial_cap_sys_admin() {
                info!("no CAP_SYS_ADMIN in the initial user namespace: no passthrough");
            } else if add(config, InitFlags::FUSE_PASSTHROUGH, "PASSTHROUGH") {
                match config.set_max_stack_depth(self.stack_depth) {
                    Ok(_) => passthrough = true,
                    Err(max) => {
                        passthrough = config.set_max_stack_depth(max).is_ok();
                    }
                }
            }
        }
        self.passthrough.store(passthrough, Ordering::Relaxed);
        if !passthrough && self.cfg.writeback && !self.cfg.read_only {
            let wb = add(config, InitFlags::FUSE_WRITEBACK_CACHE, "WRITEBACK_CACHE");
            self.writeback.store(wb, Ordering::Relaxed);
        }
        if self.cfg.io_uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_err()
        {
            use overlay_core::mount::probe::{fuse_uring_switch_on, FUSE_URING_SWITCH};
            if fuse_uring_switch_on() == Some(false) {
                info!(
                    "FUSE over io_uring is switched off in this kernel: `echo Y > \
                     {FUSE_URING_SWITCH}` (as root) makes requests cheaper for mounts made \
                     after it"
                );
            } else {
                info!("kernel does not offer FUSE over io_uring");
            }
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        info!(
            "FUSE session: passthrough={passthrough} writeback={} acl={}",
            self.writeback.load(Ordering::Relaxed),
            self.cfg.acl
        );
    }
}

/// Stack depth for passthrough backing files: 2 when a layer is itself on a stacking
/// filesystem (overlayfs, or FUSE with passthrough), else 1 (which keeps this mount usable as
/// a layer of a kernel overlay).
pub(super) fn backing_stack_depth(ovl: &Overlay) -> u32 {
    const OVERLAYFS: i64 = overlay_core::stack::OVERLAYFS_SUPER_MAGIC;
    const FUSE: i64 = 0x6573_5546;
    let stack = ovl.stack();
    let mut paths: Vec<&Path> = stack.lowers().iter().map(|l| l.path.as_path()).collect();
    if let Some(u) = stack.upper() {
        paths.push(&u.upper);
    }
    let stacked = paths.iter().any(|p| {
        rustix::fs::statfs(*p)
            .map(|s| {
                #[allow(clippy::unnecessary_cast)] // c_long on some targets
                let t = s.f_type as i64;
                t == OVERLAYFS || t == FUSE
            })
            .unwrap_or(true)
    });
    if stacked {
        2
    } else {
        1
    }
}

/// True when this process has CAP_SYS_ADMIN in the initial user namespace (the kernel's
/// condition for `FUSE_DEV_IOC_BACKING_OPEN`).
pub fn has_initial_cap_sys_admin() -> bool {
    // PROC_USER_INIT_INO: the inode number of the initial user namespace.
    const INIT_USER_NS: &str = "user:[4026531837]";
    const CAP_SYS_ADMIN: u32 = 21;
    let in_init_ns = std::fs::read_link("/proc/self/ns/user")
        .map(|l| l.as_os_str() == INIT_USER_NS)
        .unwrap_or(false);
    if !in_init_ns {
        return false;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}
