//! FUSE adapter over the `overlay-core` engine (implemented in the FUSE issue).
#![warn(missing_docs)]
