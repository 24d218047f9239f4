//! The tar format, read and written by this crate (ustar with PAX extensions, GNU long names
//! and sparse files): [`reader`] bounds everything an archive controls, [`writer`] is
//! deterministic.
pub mod header;
pub mod reader;
pub mod writer;
