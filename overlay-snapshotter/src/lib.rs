//! `ovl-snapshotter`: a containerd snapshotter (a proxy plugin over a Unix socket) on the
//! overlay engine. It hands containerd kernel overlay mounts where this process may mount
//! overlay (root; a rootless containerd's user namespace with `userxattr`), and `ovl-fuse`
//! mounts (`fuse3.ovl-fuse`, run by `mount.fuse3`) where it may not or where the kernel
//! refuses the chain (over 500 layers, options over a page). Metadata lives in an embedded
//! transactional database, so a `kill -9` at any moment leaves a consistent store.
//!
//! ```
//! use std::collections::BTreeMap;
//! use overlay_snapshotter::{BackendChoice, Snapshotter};
//!
//! let root = tempfile::tempdir()?;
//! let s = Snapshotter::open(root.path(), BackendChoice::Auto)?;
//! // A first layer: a bind mount of its own directory, to unpack into.
//! let mounts = s.prepare("extract-1", "", BTreeMap::new())?;
//! assert_eq!(mounts[0].fstype, "bind");
//! s.commit("layer-1", "extract-1", BTreeMap::new())?;
//! // A container's writable snapshot over it.
//! s.prepare("ctr-1", "layer-1", BTreeMap::new())?;
//! assert!(s.remove("layer-1").is_err()); // it has a child
//! s.remove("ctr-1")?;
//! s.remove("layer-1")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules:
//! * [`snapshotter`]: the operations with containerd's semantics;
//! * [`store`]: the metadata database (redb);
//! * [`layout`]: `ROOT/snapshots/ID/{fs,work}`, orphans, disk usage;
//! * [`mounts`]: the mounts as data and the choice between kernel, FUSE and bind;
//! * [`backend`]: what this process may mount, probed once;
//! * [`filter`]: containerd's filter syntax for `Walk`;
//! * [`service`]: the gRPC server (tokio, tonic);
//! * [`error`]: the error type and its gRPC codes.
#![warn(missing_docs)]

pub mod backend;
pub mod error;
pub mod filter;
pub mod layout;
pub mod mounts;
pub mod service;
pub mod snapshotter;
pub mod store;

pub use backend::{BackendChoice, Backends};
pub use error::{Error, Result};
pub use mounts::Mount;
pub use snapshotter::{Info, Snapshotter};
