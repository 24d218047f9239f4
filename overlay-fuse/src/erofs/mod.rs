//! `ovl-erofs`: an EROFS image served read-only through FUSE, read in-process (the
//! `erofs-rs` crate), for users without root where `erofsfuse` is not installed (Debian 12
//! does not package it). `ovl` uses it for EROFS image lowers without root.
//!
//! ```no_run
//! use overlay_fuse::erofs::{ErofsFs, ErofsImage};
//!
//! let image = ErofsImage::open("/srv/base.erofs".as_ref())?;
//! let root = image.root();
//! for e in image.listing(root)?.iter() {
//!     println!("{}", String::from_utf8_lossy(&e.name));
//! }
//! let _fs = ErofsFs::new(image); // a fuser::Filesystem
//! # Ok::<(), overlay_fuse::Error>(())
//! ```
//!
//! Modules: [`image`] reads the image (by inode number, with bounds on what a hostile image
//! can make it hold); [`fs`] answers FUSE requests from it; [`options`] is the command line;
//! [`run`] mounts and serves (forking into the background unless `-f`, as `ovl-fuse`).
//!
//! What is served: names, modes (set-id bits included), owners as stored in the image,
//! sizes, the modification time (as all three times), hard links (one inode), symbolic
//! links, device nodes (an overlay whiteout is a character device 0:0), FIFOs and sockets,
//! extended attributes (inline and shared, every prefix, `trusted.*` listed only to root
//! in the initial user namespace, as the kernel does), `statfs` from the superblock. Data
//! layouts: plain, inline, chunk-based, and compressed with LZ4 (mkfs.erofs `-zlz4` and
//! `-zlz4hc`); an image compressed otherwise is refused when mounted, naming the algorithm.
//!
//! Permissions: like squashfuse and erofsfuse, the daemon checks none by default (whoever
//! can use the mount can read the image file itself); with `allow_other` the kernel checks
//! them from the image's modes and owners (`default_permissions`, also settable alone).
//!
//! Hostile images: every read of the image is bounds-checked; a structure that does not
//! hold gives EIO for that request (the reason goes to the log), never a panic or unbounded
//! memory. The image is memory-mapped: it must not be truncated while mounted.

pub mod fs;
pub mod image;
pub mod options;

pub use fs::ErofsFs;
pub use image::ErofsImage;
pub use options::{parse_args, ErofsCommand, ErofsRequest, USAGE};

use crate::daemon::{block_signals, daemonize, mountpoint_is_a_directory, say, serve_session};
use crate::fs::FsConfig;
use crate::mount::{mount_fs, MountConfig};

/// Open the image, mount it and serve it until unmounted; returns the exit code.
pub fn run(req: ErofsRequest) -> i32 {
    // Open it before forking: a bad image is reported by the command itself.
    let image = match ErofsImage::open(&req.image) {
        Ok(i) => i,
        Err(e) => {
            say(format_args!("ovl-erofs: {e}"));
            return 1;
        }
    };
    if !mountpoint_is_a_directory("ovl-erofs", &req.mountpoint) {
        return 1;
    }
    daemonize("ovl-erofs", req.foreground, |ready| {
        let signals = block_signals();
        let config = mount_config(&req);
        let fuser_config =
            config.fuser_config_as("ovl-erofs", req.default_permissions || req.allow_other);
        let (session, unmounter) = mount_fs(ErofsFs::new(image), &req.mountpoint, &fuser_config)?;
        serve_session(session, unmounter, &req.mountpoint, signals, ready)
    })
}

fn mount_config(req: &ErofsRequest) -> MountConfig {
    let fs = FsConfig {
        read_only: true,
        ..FsConfig::default()
    };
    let mut c = MountConfig::for_current_user(fs);
    c.fsname = req
        .fsname
        .clone()
        .unwrap_or_else(|| req.image.display().to_string());
    c.allow_other = req.allow_other;
    c.allow_root = req.allow_root;
    c.dev = req.dev;
    c.suid = req.suid;
    c.exec = req.exec;
    c.threads = 4;
    c
}
