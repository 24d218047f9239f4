//! placeholder
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

pub(crate) fn ser_path<S: serde::Serializer>(
    p: &std::path::Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}
