//! `overlay-core`: overlayfs layer stacks, the kernel's on-disk format, a userspace union
//! engine with copy-up, and the kernel mount backend.
//!
//! ```no_run
//! use overlay_core::{LayerStack, Overlay};
//! use std::ffi::OsStr;
//!
//! let stack = LayerStack::builder()
//!     .lower("/srv/base")            // bottom layer
//!     .lower("/srv/patch")           // above it
//!     .upper("/srv/upper", "/srv/work")
//!     .build()?;                     // validated: clear errors naming the path
//! let ovl = Overlay::new(stack)?;
//! let root = ovl.root();
//! let etc = ovl.lookup(&root, OsStr::new("etc"))?;
//! for e in ovl.readdir(&etc)? {
//!     println!("{:?} {}", e.kind, e.name.to_string_lossy());
//! }
//! # Ok::<(), overlay_core::Error>(())
//! ```
//!
//! # Modules
//! - [`stack`]: [`LayerStack`], [`LowerLayer`], [`UpperLayer`] and their validation.
//! - [`format`](mod@format): whiteouts, opaque directories, overlay xattrs (`trusted.` vs `user.`).
//! - [`engine`]: [`Overlay`], the node-based union engine (lookup, readdir, mutations).
//! - [`mount`]: the kernel mount backend: [`MountSpec`], [`KernelMount`],
//!   [`OverlayMountOptions`], unprivileged mounts in a user namespace, image lowers and the
//!   feature [`probe()`].
//! - [`path_api`]: [`PathApi`], `std::fs`-like path-based calls over the engine.
//! - [`error`]: the crate's one error type, carrying operation and path.
#![warn(missing_docs)]

pub mod engine;
pub mod error;
pub mod format;
pub mod mount;
pub mod path_api;
pub mod stack;
mod sys;

pub use engine::{
    Attr, DirEntry, FileKind, FsyncMode, NewMode, Node, NodeRef, Overlay, OverlayFile,
    OverlayOptions, Owner, RenameFlags, SetAttr, StatFs, TimeSet, Timestamp,
};
pub use error::{Error, Result};
pub use format::{Opacity, XattrNamespace};
pub use mount::{
    probe, run_in_user_namespace, spawn_in_user_namespace, Atime, EffectiveOptions, ImageMount,
    KernelMount, MountApi, MountSpec, OverlayMountOptions, Probe, RedirectDir, Support, UuidMode,
    Verity, Xino,
};
pub use path_api::PathApi;
pub use stack::{ImageFormat, LayerStack, LayerStackBuilder, LowerLayer, UpperLayer};
