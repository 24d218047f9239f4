//! `ovl layer export|apply`, `ovl commit`, `ovl squash`: thin callers of
//! [`overlay::layers`], with a progress bar on a terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use overlay::layers::apply::{ApplyOptions, Format};
use overlay::layers::commit::{Action, CommitOptions};
use overlay::layers::compress::Compression;
use overlay::layers::export::ExportOptions;
use overlay::layers::squash::SquashFormat;

use crate::cli::{
    ApplyArgs, CommitArgs, CompressArg, ExportArgs, FormatArg, LayerCommand, SquashArgs,
};
use crate::error::CliError;
use crate::output;

/// A progress display on stderr when it is a terminal; nothing otherwise.
fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {elapsed}").expect("template"),
        ),
    };
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Print `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value).expect("serializable");
    text.push('\n');
    output(std::io::stdout().lock().write_all(text.as_bytes()))
}

/// `ovl layer ...`.
pub fn layer(c: LayerCommand) -> Result<u8, CliError> {
    match c {
        LayerCommand::Export(a) => export(a),
        LayerCommand::Apply(a) => apply(a),
    }
}

fn export(a: ExportArgs) -> Result<u8, CliError> {
    let done = Arc::new(AtomicU64::new(0));
    let opts = ExportOptions {
        compression: match a.compress {
            CompressArg::Gzip => Compression::Gzip,
            CompressArg::Zstd => Compression::Zstd,
            CompressArg::None => Compression::None,
        },
        reproducible: a.reproducible,
        progress: Some(done.clone()),
        ..Default::default()
    };
    let to_stdout = a.output == Path::new("-");
    let pb = bar(None, "exporting");
    let stop = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (pb, done, stop) = (pb.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            while stop.load(Ordering::Relaxed) == 0 {
                pb.set_position(done.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = if to_stdout {
        if std::io::stdout().is_terminal() {
            stop.store(1, Ordering::Relaxed);
            let _ = ticker.join();
            return Err(CliError::msg(
                "refusing to write a layer to a terminal: give -o FILE or redirect stdout",
            ));
        }
        overlay::layers::export::export(&a.lowers, &a.upper, std::io::stdout().lock(), &opts)
    } else {
        overlay::layers::export::export_file(&a.lowers, &a.upper, &a.output, &opts)
    };
    stop.store(1, Ordering::Relaxed);
    let _ = ticker.join();
    pb.finish_and_clear();
    let layer = r?;
    // The digests go to stdout, unless the layer itself does.
    let text = if a.json {
        serde_json::to_string_pretty(&layer).expect("serializable") + "\n"
    } else {
        format!(
            "diff_id    {}\ndigest     {}\nsize       {}\nmedia_type {}\n",
            layer.diff_id, layer.digest, layer.size, layer.media_type
        )
    };
    if to_stdout {
        crate::say_raw(format_args!("{text}"));
    } else {
        output(std::io::stdout().lock().write_all(text.as_bytes()))?;
    }
    Ok(0)
}

fn apply(a: ApplyArgs) -> Result<u8, CliError> {
    let opts = ApplyOptions {
        format: match a.format {
            FormatArg::Overlay => Format::Overlay,
            FormatArg::Plain => Format::Plain,
        },
        ..Default::default()
    };
    if !a.dir.exists() {
        std::fs::create_dir_all(&a.dir).map_err(|e| CliError::io(&a.dir, "cannot create", e))?;
    }
    let report = if a.file == Path::new("-") {
        overlay::layers::apply::apply(std::io::stdin().lock(), &a.dir, &opts)?
    } else {
        let f =
            std::fs::File::open(&a.file).map_err(|e| CliError::io(&a.file, "cannot open", e))?;
        let len = f.metadata().map(|m| m.len()).ok();
        let pb = bar(len, "applying");
        let r = overlay::layers::apply::apply(pb.wrap_read(f), &a.dir, &opts);
        pb.finish_and_clear();
        r.map_err(|e| match e {
            overlay::layers::Error::Archive { reason, .. } => CliError::path(&a.file, reason),
            overlay::layers::Error::Entry { .. } => CliError::path(&a.file, e.to_string()),
            e => e.into(),
        })?
    };
    if a.json {
        print_json(&report)?;
    } else {
        let mut out = String::new();
        out.push_str(&format!(
            "applied {} entries ({}), diff_id {}\n",
            report.entries,
            report.compression.as_str(),
            report.diff_id
        ));
        for adj in &report.adjustments {
            out.push_str(&format!(
                "{} {}: {}\n",
                adj.action,
                adj.path.display(),
                adj.reason
            ));
        }
        if report.owners_not_kept > 0 {
            out.push_str(&format!(
                "owners not kept on {} entries (not root: they belong to you)\n",
                report.owners_not_kept
            ));
        }
        output(std::io::stdout().lock().write_all(out.as_bytes()))?;
    }
    Ok(0)
}

/// `ovl commit`.
pub fn commit(a: CommitArgs) -> Result<u8, CliError> {
    let pb = if a.dry_run {
        ProgressBar::hidden()
    } else {
        bar(None, "committing")
    };
    let r = overlay::layers::commit::commit(
        &a.upper,
        &a.into,
        &CommitOptions {
            dry_run: a.dry_run,
            ..Default::default()
        },
    );
    pb.finish_and_clear();
    let report = r?;
    if a.json {
        print_json(&report)?;
        return Ok(0);
    }
    let mut out = String::new();
    for c in &report.changes {
        let k = match c.action {
            Action::Add => 'A',
            Action::Replace => 'R',
            Action::Update => 'U',
            Action::Delete => 'D',
            Action::Move => 'M',
        };
        match &c.from {
            Some(f) => out.push_str(&format!(
                "{k} {} (from {})\n",
                c.path.display(),
                f.display()
            )),
            None => out.push_str(&format!("{k} {}\n", c.path.display())),
        }
    }
    output(std::io::stdout().lock().write_all(out.as_bytes()))?;
    Ok(0)
}

/// `ovl squash`.
pub fn squash(a: SquashArgs) -> Result<u8, CliError> {
    let format = SquashFormat::from_path(&a.output);
    let pb = bar(None, "squashing");
    let r = overlay::layers::squash::squash(&a.lowers, a.upper.as_ref(), &a.output, format);
    pb.finish_and_clear();
    let report = r?;
    output(writeln!(
        std::io::stdout().lock(),
        "{}: {} layers flattened ({})",
        report.output.display(),
        report.layers,
        match report.format {
            SquashFormat::Dir => "directory",
            SquashFormat::Squashfs => "squashfs image",
            SquashFormat::Erofs => "erofs image",
        }
    ))?;
    Ok(0)
}
