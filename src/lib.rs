//! `overlay`: stack read-only lower layers under a writable upper layer.
//!
//! This facade re-exports the engine of [`overlay_core`]; the mount entry point
//! with automatic backend selection is being integrated (CLI issue).
//!
//! ```no_run
//! use overlay::core::{LayerStack, Overlay};
//! let stack = LayerStack::builder()
//!     .lower("/usr/share/doc")
//!     .upper("/tmp/upper", "/tmp/work")
//!     .build()?;
//! let ovl = Overlay::new(stack)?;
//! let root = ovl.root();
//! for entry in ovl.readdir(&root)? {
//!     println!("{}", entry.name.to_string_lossy());
//! }
//! # Ok::<(), overlay::core::Error>(())
//! ```
#![warn(missing_docs)]

pub use overlay_core as core;

/// Errors of the facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the core crate (stack validation, kernel mount, I/O).
    #[error(transparent)]
    Core(#[from] overlay_core::Error),
}

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
