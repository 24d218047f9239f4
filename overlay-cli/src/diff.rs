//! `ovl diff`: print the changes an upper layer makes ([`overlay::layers::changes`] computes
//! them).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use overlay::layers::changes::Change;
use serde::Serialize;

/// Print changes as text (`K /path` per line) or JSON.
pub fn print(changes: &[Change], exact: bool, json: bool) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            exact: bool,
            changes: &'a [Change],
        }
        serde_json::to_writer_pretty(&mut w, &Out { exact, changes })?;
        writeln!(w)?;
    } else {
        for c in changes {
            write!(w, "{} ", c.kind.letter())?;
            w.write_all(c.path.as_os_str().as_bytes())?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()
}
