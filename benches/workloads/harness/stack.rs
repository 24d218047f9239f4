//! The base stack shared by every run: two read-only lower layers, built once and reused
//! across invocations (a stamp file records what was built), plus the tarball for
//! create-untar.
//!
//! * bottom lower: `doc/` and `man/` (copies of /usr/share/doc and /usr/share/man),
//!   `data/random.bin` (1 GiB of random bytes), `big/` (20k empty files);
//! * top lower: shadows every 4th package of `doc/` (a copy with one file changed), whites out
//!   the `copyright` file of every 10th other package (0/0 character devices, understood in both
//!   xattr namespaces), and shadows every other name of `big/` (10k files with content).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::util::{count_files, is_root, run, Context, Error, Result, RunAs};

/// Bump when the layout changes: stale stacks are rebuilt.
const LAYOUT_VERSION: u32 = 1;

/// Sizes of one stack flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Entries of `big/` (merged).
    pub big_entries: usize,
    /// Size of `data/random.bin`.
    pub big_file_bytes: u64,
    /// Size written by write-big, in MiB.
    pub write_mib: u64,
    /// Files of small-write-read.
    pub small_files: usize,
    /// Copy only the first packages of /usr/share/doc until this many files (None: all).
    pub doc_min_files: Option<usize>,
    /// Copy only this many files of /usr/share/man/man1 (None: all of /usr/share/man).
    pub man_files: Option<usize>,
    /// Directory below /usr that the tarball holds.
    pub include_dir: &'static str,
}

impl Sizes {
    /// The full-size stack.
    pub const FULL: Sizes = Sizes {
        big_entries: 20_000,
        big_file_bytes: 1 << 30,
        write_mib: 512,
        small_files: 2000,
        doc_min_files: None,
        man_files: None,
        include_dir: "include",
    };

    /// The `--quick` stack.
    pub const QUICK: Sizes = Sizes {
        big_entries: 1000,
        big_file_bytes: 16 << 20,
        write_mib: 16,
        small_files: 200,
        doc_min_files: Some(300),
        man_files: Some(100),
        include_dir: "include/linux",
    };
}

/// A built base stack.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The stack directory (`$B` in the scripts).
    pub root: PathBuf,
    /// Bottom lower layer.
    pub bottom: PathBuf,
    /// Top lower layer.
    pub top: PathBuf,
    /// The lower layers mounted, top first (the kernel's `lowerdir=` order).
    pub lowers: Vec<PathBuf>,
    /// Sizes it was built with.
    pub sizes: Sizes,
    /// Owner of the layer contents (the rootless user), when built as root.
    pub owner: Option<RunAs>,
    /// Files in the merged doc tree's bottom layer (for the report).
    pub doc_files: usize,
}

impl Stack {
    /// `lowerdir=` value: top first, as the kernel wants it.
    pub fn lowerdir(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        lowers.join(":")
    }

    /// A stack of the single lower layer `lower` (the `mem` mode).
    pub fn single_lower(lower: &Path, owner: Option<RunAs>) -> Stack {
        Stack {
            root: lower.to_path_buf(),
            bottom: lower.to_path_buf(),
            top: lower.to_path_buf(),
            lowers: vec![lower.to_path_buf()],
            sizes: Sizes::QUICK,
            owner,
            doc_files: 0,
        }
    }
}

fn stamp_text(sizes: &Sizes, owner: Option<RunAs>) -> String {
    format!("layout={LAYOUT_VERSION} sizes={sizes:?} owner={owner:?}\n")
}

/// Build (or reuse) the stack below `work_dir`.
pub fn ensure(work_dir: &Path, quick: bool, owner: Option<RunAs>, verbose: bool) -> Result<Stack> {
    let sizes = if quick { Sizes::QUICK } else { Sizes::FULL };
    let root = work_dir.join(if quick { "stack-quick" } else { "stack-full" });
    let stamp = root.join("stamp");
    let stack = Stack {
        bottom: root.join("lower-bottom"),
        top: root.join("lower-top"),
        lowers: vec![root.join("lower-top"), root.join("lower-bottom")],
        root: root.clone(),
        sizes,
        owner,
        doc_files: 0,
    };
    let want = stamp_text(&sizes, owner);
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        let doc_files = count_files(&stack.bottom.join("doc"));
        return Ok(Stack { doc_files, ..stack });
    }
    if verbose {
        eprintln!("building the base stack in {} ...", root.display());
    }
    if root.exists() {
        fs::remove_dir_all(&root).context(|| format!("removing stale stack {}", root.display()))?;
    }
    fs::create_dir_all(&stack.bottom).context(|| format!("mkdir {}", stack.bottom.display()))?;
    fs::create_dir_all(&stack.top).context(|| format!("mkdir {}", stack.top.display()))?;
    // Other users (the rootless daemon) must be able to traverse to the layers.
    set_mode(&root, 0o755)?;

    let bottom = &stack.bottom;
    let top = &stack.top;
    copy_doc(&bottom.join("doc"), sizes.doc_min_files)?;
    copy_man(&bottom.join("man"), sizes.man_files)?;
    fs::create_dir_all(bottom.join("data")).context(|| "mkdir data".into())?;
    write_random_file(&bottom.join("data/random.bin"), sizes.big_file_bytes)?;
    fs::create_dir_all(bottom.join("big")).context(|| "mkdir big".into())?;
    fs::create_dir_all(top.join("big")).context(|| "mkdir top big".into())?;
    for i in 0..sizes.big_entries {
        let name = format!("entry-{i:05}");
        fs::write(bottom.join("big").join(&name), b"")
            .context(|| format!("creating big/{name}"))?;
        if i % 2 == 0 {
            fs::write(top.join("big").join(&name), b"top\n")
                .context(|| format!("creating top big/{name}"))?;
        }
    }
    shadow_doc(bottom, top)?;
    if let Some(owner) = owner {
        run(std::process::Command::new("chown")
            .arg("-hR")
            .arg(owner.to_string())
            .arg(bottom)
            .arg(top))?;
    }
    run(std::process::Command::new("tar")
        .arg("cf")
        .arg(root.join("include.tar"))
        .arg("-C")
        .arg("/usr")
        .arg(sizes.include_dir))?;
    set_mode(&root.join("include.tar"), 0o644)?;
    fs::write(&stamp, want).context(|| format!("writing {}", stamp.display()))?;
    let doc_files = count_files(&bottom.join("doc"));
    Ok(Stack { doc_files, ..stack })
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .context(|| format!("chmod {mode:o} {}", path.display()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    Ok(entries)
}

fn cp_a(sources: &[PathBuf], dest: &Path) -> Result<()> {
    if sources.is_empty() {
        return Ok(());
    }
    for chunk in sources.chunks(500) {
        run(std::process::Command::new("cp")
            .arg("-a")
            .args(chunk)
            .arg(dest))?;
    }
    Ok(())
}

fn copy_doc(dest: &Path, min_files: Option<usize>) -> Result<()> {
    fs::create_dir_all(dest).context(|| format!("mkdir {}", dest.display()))?;
    let packages = sorted_entries(Path::new("/usr/share/doc"))?;
    let chosen: Vec<PathBuf> = match min_files {
        None => packages,
        Some(min) => {
            let mut total = 0;
            packages
                .into_iter()
                .take_while(|p| {
                    let more = total < min;
                    total += count_files(p).max(1);
                    more
                })
                .collect()
        }
    };
    if chosen.is_empty() {
        return Err(Error::new(
            "/usr/share/doc is empty: nothing to build the doc tree from",
        ));
    }
    cp_a(&chosen, dest)
}

fn copy_man(dest: &Path, files: Option<usize>) -> Result<()> {
    match files {
        None => {
            fs::create_dir_all(dest).context(|| format!("mkdir {}", dest.display()))?;
            cp_a(&sorted_entries(Path::new("/usr/share/man"))?, dest)
        }
        Some(n) => {
            let man1 = dest.join("man1");
            fs::create_dir_all(&man1).context(|| format!("mkdir {}", man1.display()))?;
            let mut pages = sorted_entries(Path::new("/usr/share/man/man1")).unwrap_or_default();
            pages.truncate(n);
            cp_a(&pages, &man1)
        }
    }
}

/// The top layer's part of the doc tree: every 4th package shadowed by a copy (its first
/// regular file changed), the `copyright` of every 10th other package whited out.
fn shadow_doc(bottom: &Path, top: &Path) -> Result<()> {
    let packages = sorted_entries(&bottom.join("doc"))?;
    let top_doc = top.join("doc");
    fs::create_dir_all(&top_doc).context(|| format!("mkdir {}", top_doc.display()))?;
    let mut shadowed = Vec::new();
    for (i, pkg) in packages.iter().enumerate() {
        let is_dir = fs::symlink_metadata(pkg)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !is_dir {
            continue;
        }
        if i % 4 == 0 {
            shadowed.push(pkg.clone());
        } else if i % 10 == 1 && pkg.join("copyright").is_file() {
            let dir = top_doc.join(pkg.file_name().unwrap_or_default());
            fs::create_dir_all(&dir).context(|| format!("mkdir {}", dir.display()))?;
            if is_root() {
                run(std::process::Command::new("mknod")
                    .arg(dir.join("copyright"))
                    .args(["c", "0", "0"]))?;
            }
        }
    }
    cp_a(&shadowed, &top_doc)?;
    for pkg in &shadowed {
        let copy = top_doc.join(pkg.file_name().unwrap_or_default());
        if let Some(file) = sorted_entries(&copy)?.into_iter().find(|p| {
            fs::symlink_metadata(p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        }) {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .context(|| format!("open {}", file.display()))?;
            f.write_all(b"\nshadowed by the top layer\n")
                .context(|| format!("append {}", file.display()))?;
        }
    }
    Ok(())
}

/// `len` bytes of incompressible pseudo-random data (xorshift64*), fsynced.
pub fn write_random_file(path: &Path, len: u64) -> Result<()> {
    let file = fs::File::create(path).context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    super::random::write_stream(&mut out, len, 0x9E37_79B9_7F4A_7C15 ^ len)
        .context(|| format!("write {}", path.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| Error::new(format!("write {}: {e}", path.display())))?;
    file.sync_all()
        .context(|| format!("fsync {}", path.display()))
}
