//! `overlay-layers`: layers in and out of overlay stacks. OCI image layers are exported
//! from an upper (or any layer directory) and applied onto a layer directory; what an upper
//! changes is listed and checked without mounting; a kept upper is committed into a real
//! directory; a stack is squashed into one directory or image. Every one of these is one call.
//! Re-exported by the facade as `overlay::layers`; tar and compression live here so that
//! `overlay-core` stays free of them.
//!
//! ```
//! use overlay_layers::{apply, changes, export, ChangeKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let (lower, upper, layer_dir) = (tmp.path().join("lower"), tmp.path().join("upper"), tmp.path().join("layer"));
//! for d in [&lower, &upper, &layer_dir] {
//!     std::fs::create_dir(d)?;
//! }
//! std::fs::write(lower.join("kept"), "from the lower")?;
//! std::fs::write(upper.join("hello"), "world")?; // what a container wrote
//!
//! // What the upper changes over its lowers.
//! let added: Vec<_> = changes(&[&lower], &upper)?.filter(|c| c.kind == ChangeKind::Added).collect();
//! assert_eq!(added[0].path, std::path::Path::new("/hello"));
//!
//! // The upper as an OCI layer (tar+gzip here), with its digests.
//! let mut blob = Vec::new();
//! let layer = export::export(&[&lower], &upper, &mut blob, &export::ExportOptions::default())?;
//! println!("diff_id {} digest {} size {}", layer.diff_id, layer.digest, layer.size);
//!
//! // And back: applied onto an empty layer directory in the kernel overlay's format.
//! let report = apply::apply(&blob[..], &layer_dir, &apply::ApplyOptions::default())?;
//! assert_eq!(report.diff_id, layer.diff_id);
//! assert_eq!(std::fs::read_to_string(layer_dir.join("hello"))?, "world");
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//! - [`changes`](mod@changes): [`changes()`], what an upper adds, modifies and deletes over its lowers.
//! - [`check`](mod@check): [`check()`], format problems of an upper and its workdir.
//! - [`export`]: an upper (over its lowers) as an OCI layer tar, with `diff_id`, digest, size.
//! - [`apply`]: an OCI layer tar onto a directory, in overlay or plain format, safely.
//! - [`commit`]: a kept upper's changes into the directory it was made over.
//! - [`squash`]: lowers and upper flattened into a directory, squashfs or erofs image.
//! - [`compress`]: none/gzip/zstd detection and streams, the decompression-bomb guard.
//! - [`digest`]: sha256 of streams.
//! - [`tar`]: the tar format: a bounded reader and a deterministic writer.
//! - [`layer_dir`]: read-only access to layer directories through descriptors.
//! - [`error`]: the crate's one error type, naming the path or archive entry.
#![warn(missing_docs)]

pub mod apply;
pub mod changes;
pub mod check;
pub mod commit;
pub mod compress;
pub mod digest;
pub mod error;
pub mod export;
pub mod layer_dir;
pub mod squash;
pub mod tar;
mod target;

pub use changes::{changes, Change, ChangeKind};
pub use check::check;
pub use error::{Error, Result};

/// Serialize a path as a (lossy) string, for the JSON forms of reports.
pub(crate) fn ser_path<S: serde::Serializer>(
    p: &std::path::Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}
