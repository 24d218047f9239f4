//! `ovl check`: print the findings of [`overlay::layers::check`].

use std::io::Write;

use overlay::layers::check::{Report, Severity};

/// Print a report as text or JSON.
pub fn print(r: &Report, json: bool) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if json {
        serde_json::to_writer_pretty(&mut w, r)?;
        writeln!(w)?;
    } else {
        for f in &r.findings {
            let sev = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            writeln!(w, "{sev}: {}: {} [{}]", f.path.display(), f.message, f.code)?;
        }
        match (r.errors, r.warnings) {
            (0, 0) => writeln!(w, "{}: clean", r.upper.display())?,
            (e, wn) => writeln!(
                w,
                "{}: {e} error{}, {wn} warning{}",
                r.upper.display(),
                if e == 1 { "" } else { "s" },
                if wn == 1 { "" } else { "s" }
            )?,
        }
    }
    w.flush()
}
