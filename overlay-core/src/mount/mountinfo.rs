//! Reading `/proc/self/mountinfo`: the effective options of a mount, as the kernel shows them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfoEntry {
    /// Unique mount id (`statx` `STATX_MNT_ID`).
    pub mount_id: u64,
    /// Parent mount id.
    pub parent_id: u64,
    /// Mount point (unescaped).
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, `relatime`, ...).
    pub mount_options: Vec<String>,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (unescaped).
    pub source: String,
    /// Superblock options, unescaped, in the kernel's order; flags have no value.
    pub super_options: Vec<(String, Option<String>)>,
}

impl MountInfoEntry {
    /// The value of superblock option `key` as shown (first occurrence; `None` for flags).
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The overlay's upper directory (`upperdir=`, backslash escapes undone), if shown.
    pub fn overlay_upper(&self) -> Option<PathBuf> {
        self.super_option("upperdir").map(unescape_backslashes)
    }
}

/// Undo the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash, `\054` comma, `\072` colon).
pub fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn unescape_string(s: &str) -> String {
    String::from_utf8_lossy(&unescape_octal(s)).into_owned()
}

fn unescape_path(s: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_octal(s)))
}

/// Parse one mountinfo line.
pub fn parse_mountinfo_line(line: &str) -> Option<MountInfoEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let mount_id = f.next()?.parse().ok()?;
    let parent_id = f.next()?.parse().ok()?;
    let _devno = f.next()?;
    let _root = f.next()?;
    let mount_point = unescape_path(f.next()?);
    let mount_options = f.next()?.split(',').map(str::to_string).collect();
    let mut g = post.splitn(3, ' ');
    let fstype = unescape_string(g.next()?);
    let source = unescape_string(g.next()?);
    let supers = g.next().unwrap_or("").trim_end();
    let super_options = supers
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(unescape_string(v))),
            None => (kv.to_string(), None),
        })
        .collect();
    Some(MountInfoEntry {
        mount_id,
        parent_id,
        mount_point,
        mount_options,
        fstype,
        source,
        super_options,
    })
}

/// All mounts of this process's mount namespace.
pub fn read_mountinfo() -> Result<Vec<MountInfoEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read mount table", "/proc/self/mountinfo", e))?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// The mount id of the mount `path` is on (`statx` `STATX_MNT_ID`, Linux 5.8).
pub fn mount_id_of(path: &Path) -> Result<u64> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .map_err(|e| Error::io("statx mount id", path, crate::error::from_rustix(e)))?;
    Ok(st.stx_mnt_id)
}

/// The mountinfo entry of the mount `path` is on.
pub fn entry_for(path: &Path) -> Result<Option<MountInfoEntry>> {
    let id = mount_id_of(path)?;
    Ok(read_mountinfo()?.into_iter().find(|e| e.mount_id == id))
}

/// True when some mount in this namespace has mount point `path`.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(read_mountinfo()?.iter().any(|e| e.mount_point == path))
}

/// Split a `lowerdir=` value as shown in mountinfo (after octal unescaping) at unescaped `:`
/// (and `::` data-layer separators), undoing backslash escapes.
pub fn split_lowerdir(value: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut it = value.bytes();
    while let Some(c) = it.next() {
        match c {
            b'\\' => {
                if let Some(n) = it.next() {
                    cur.push(n);
                }
            }
            b':' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur))));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(OsString::from_vec(cur)));
    }
    out
}

/// The options an overlay mount ended up with, read back from `/proc/self/mountinfo`.
///
/// The kernel omits options that equal its defaults (module parameters), so
/// [`EffectiveOptions::value`] fills those from `/sys/module/overlay/parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveOptions {
    /// The mountinfo entry.
    pub entry: MountInfoEntry,
    /// The overlay module parameters at mount time (name, value).
    pub module_parameters: Vec<(String, String)>,
    /// Set when the overlay was mounted with `mount(2)` and layer paths relative to this
    /// directory (an option string over one page); [`EffectiveOptions::lowers`],
    /// [`EffectiveOptions::upper`] and [`EffectiveOptions::work`] resolve against it.
    pub relative_to: Option<PathBuf>,
}

/// Undo the backslash escapes of an overlay option value.
fn unescape_backslashes(v: &str) -> PathBuf {
    let mut out = Vec::with_capacity(v.len());
    let mut it = v.bytes();
    while let Some(c) = it.next() {
        if c == b'\\' {
            if let Some(n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

impl EffectiveOptions {
    /// The value shown for `key` (first occurrence); `Some("")` is never returned for flags,
    /// use [`EffectiveOptions::has_flag`].
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry
            .super_options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// True when the flag option `key` (e.g. `userxattr`, `volatile`) is shown.
    pub fn has_flag(&self, key: &str) -> bool {
        self.entry
            .super_options
            .iter()
            .any(|(k, v)| k == key && v.is_none())
    }

    /// The effective value of `key`: as shown, or else the kernel default from the module
    /// parameters for `redirect_dir`, `index`, `metacopy`, `nfs_export` and `xino`.
    pub fn value(&self, key: &str) -> Option<String> {
        if let Some(v) = self.get(key) {
            return Some(v.to_string());
        }
        let param = |name: &str| {
            self.module_parameters
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str() == "Y")
        };
        let onoff = |b: bool| if b { "on" } else { "off" }.to_string();
        match key {
            "index" | "metacopy" | "nfs_export" => param(key).map(onoff),
            "xino" => param("xino_auto").map(|a| if a { "auto" } else { "off" }.to_string()),
            "redirect_dir" => match param("redirect_dir") {
                Some(true) => Some("on".into()),
                Some(false) => param("redirect_always_follow")
                    .map(|f| if f { "follow" } else { "nofollow" }.to_string()),
                None => None,
            },
            _ => None,
        }
    }

    fn resolve(&self, p: PathBuf) -> PathBuf {
        match &self.relative_to {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }

    /// The lower layers as the kernel shows them, top-first (`lowerdir+=` entries, taken
    /// literally, or the split and unescaped `lowerdir=` list).
    pub fn lowers(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for (k, val) in &self.entry.super_options {
            match (k.as_str(), val) {
                ("lowerdir+", Some(p)) => v.push(self.resolve(PathBuf::from(p))),
                ("lowerdir", Some(list)) => {
                    v.extend(split_lowerdir(list).into_iter().map(|p| self.resolve(p)))
                }
                _ => {}
            }
        }
        v
    }

    /// The upper directory (backslash escapes undone), if the overlay has one.
    pub fn upper(&self) -> Option<PathBuf> {
        self.get("upperdir")
            .map(|v| self.resolve(unescape_backslashes(v)))
    }

    /// The workdir (backslash escapes undone), if the overlay has one.
    pub fn work(&self) -> Option<PathBuf> {
        self.get("workdir")
            .map(|v| self.resolve(unescape_backslashes(v)))
    }

    /// True for a `volatile` mount (shown as `volatile` or, since 6.18, `fsync=volatile`).
    pub fn is_volatile(&self) -> bool {
        self.has_flag("volatile") || self.get("fsync") == Some("volatile")
    }

    /// True when the mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.entry.mount_options.iter().any(|o| o == "ro")
    }
}

/// The overlay module parameters (`/sys/module/overlay/parameters/*`), sorted by name.
pub fn overlay_module_parameters() -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/module/overlay/parameters") {
        for e in rd.flatten() {
            if let Ok(val) = std::fs::read_to_string(e.path()) {
                v.push((
                    e.file_name().to_string_lossy().into_owned(),
                    val.trim().to_string(),
                ));
            }
        }
    }
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_line() {
        let l = "812 30 0:97 / /tmp/kx/t1/m rw,nosuid,relatime shared:1 - overlay overlay rw,lowerdir+=/tmp/l1,lowerdir+=/tmp/l:2\\054x\\040y,upperdir=/tmp/u,workdir=/tmp/w,redirect_dir=nofollow,uuid=on,userxattr";
        let e = parse_mountinfo_line(l).unwrap();
        assert_eq!(e.mount_id, 812);
        assert_eq!(e.mount_point, Path::new("/tmp/kx/t1/m"));
        assert_eq!(e.fstype, "overlay");
        assert_eq!(e.super_option("redirect_dir"), Some("nofollow"));
        assert_eq!(e.super_option("userxattr"), None);
        assert_eq!(e.overlay_upper(), Some(PathBuf::from("/tmp/u")));
        let escaped = parse_mountinfo_line(
            "9 1 0:9 / /m rw - overlay overlay rw,lowerdir=/l,upperdir=/u\\134\\054x,workdir=/w",
        )
        .unwrap();
        assert_eq!(escaped.overlay_upper(), Some(PathBuf::from("/u,x")));
        let eo = EffectiveOptions {
            entry: e,
            module_parameters: vec![
                ("index".into(), "N".into()),
                ("redirect_always_follow".into(), "Y".into()),
                ("redirect_dir".into(), "N".into()),
            ],
            relative_to: None,
        };
        assert_eq!(
            eo.lowers(),
            vec![PathBuf::from("/tmp/l1"), PathBuf::from("/tmp/l:2,x y")]
        );
        assert!(eo.has_flag("userxattr"));
        assert_eq!(eo.get("redirect_dir"), Some("nofollow"));
        assert_eq!(eo.value("index").as_deref(), Some("off"));
        assert!(!eo.is_read_only());
    }

    #[test]
    fn splits_legacy_lowerdir() {
        let v = unescape_string("/a:/tmp/l\\134:2\\134\\054x\\040y");
        assert_eq!(
            split_lowerdir(&v),
            vec![PathBuf::from("/a"), PathBuf::from("/tmp/l:2,x y")]
        );
    }
}
