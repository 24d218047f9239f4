//! Kernel-style `-o` option strings and tmpfs size values.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::error::CliError;

/// What a `-o lowerdir=…,upperdir=…,workdir=…,opt,key=value` string says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelStyle {
    /// `lowerdir=`, converted to **bottom-first**.
    pub lowers: Vec<PathBuf>,
    /// Data-only lowers after `::` in `lowerdir=` (`lowerdir=L1:L2::D1::D2`), in the
    /// order given (the order they are searched in).
    pub data: Vec<PathBuf>,
    /// `upperdir=`.
    pub upper: Option<PathBuf>,
    /// `workdir=`.
    pub work: Option<PathBuf>,
    /// Every other option, in order: `(key, value)`.
    pub options: Vec<(String, Option<String>)>,
}

/// Split at unescaped `sep` and drop the escaping backslashes (`\,` `\:` `\\`).
fn split_unescape(s: &str, sep: u8) -> Vec<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            cur.push(b'\\');
            cur.push(b[i + 1]);
            i += 2;
        } else if b[i] == sep {
            out.push(std::mem::take(&mut cur));
            i += 1;
        } else {
            cur.push(b[i]);
            i += 1;
        }
    }
    out.push(cur);
    out
}

fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && i + 1 < v.len() {
            out.push(v[i + 1]);
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn path_of(v: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(v)))
}

/// Parse every `-o` argument (they accumulate, as with mount(8)).
pub fn parse_kernel_style(args: &[String]) -> Result<KernelStyle, CliError> {
    let mut k = KernelStyle::default();
    for arg in args {
        for opt in split_unescape(arg, b',') {
            if opt.is_empty() {
                continue;
            }
            let (key, value) = match opt.iter().position(|c| *c == b'=') {
                Some(i) => (&opt[..i], Some(&opt[i + 1..])),
                None => (&opt[..], None),
            };
            let key = String::from_utf8_lossy(key).into_owned();
            match (key.as_str(), value) {
                ("lowerdir", Some(v)) => {
                    if !k.lowers.is_empty() {
                        return Err(CliError::msg("-o lowerdir= given twice"));
                    }
                    let s = String::from_utf8_lossy(v).into_owned();
                    let parts = split_unescape(&s, b':');
                    // As the kernel: regular lowers, then data-only ones each after `::`.
                    let first_data = parts.iter().position(|p| p.is_empty());
                    let (regular, data) = parts.split_at(first_data.unwrap_or(parts.len()));
                    let data_ok = data.len() % 2 == 0
                        && data
                            .chunks(2)
                            .all(|pair| pair[0].is_empty() && !pair[1].is_empty());
                    if regular.is_empty() || !data_ok {
                        return Err(CliError::msg(format!(
                            "-o lowerdir={s}: an empty layer (lowerdir=TOP:...:BOTTOM, then data-only layers each after `::`)"
                        )));
                    }
                    // The kernel's order is top-first; ours is bottom-first.
                    k.lowers = regular.iter().rev().map(|p| path_of(p)).collect();
                    k.data = data.chunks(2).map(|pair| path_of(&pair[1])).collect();
                }
                ("upperdir", Some(v)) => k.upper = Some(path_of(v)),
                ("workdir", Some(v)) => k.work = Some(path_of(v)),
                ("lowerdir" | "upperdir" | "workdir", None) => {
                    return Err(CliError::msg(format!(
                        "-o {key} needs a value ({key}=PATH)"
                    )))
                }
                _ => k.options.push((
                    key,
                    value.map(|v| String::from_utf8_lossy(&unescape(v)).into_owned()),
                )),
            }
        }
    }
    Ok(k)
}

/// Check a tmpfs `size=` value: a number with an optional k/m/g/t/p/e suffix, or a
/// percentage. Empty means no cap.
pub fn check_tmpfs_size(s: &str) -> Result<Option<String>, CliError> {
    if s.is_empty() {
        return Ok(None);
    }
    let digits = s.trim_end_matches(|c: char| !c.is_ascii_digit());
    let suffix = &s[digits.len()..];
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(
            suffix.to_ascii_lowercase().as_str(),
            "" | "k" | "m" | "g" | "t" | "p" | "e" | "%"
        )
        && (suffix != "%" || digits.parse::<u32>().is_ok_and(|p| (1..=100).contains(&p)));
    if ok && digits.chars().all(|c| c == '0') {
        // tmpfs takes size=0 as "no limit": the opposite of what it looks like.
        return Err(CliError::msg(format!(
            "--tmp={s}: a size of 0 would make tmpfs unlimited; give a size (512m, 2g, 25%), or --tmp alone for tmpfs's default (half of RAM)"
        )));
    }
    if ok {
        Ok(Some(s.to_ascii_lowercase()))
    } else {
        Err(CliError::msg(format!(
            "--tmp={s}: not a size (use bytes with an optional k/m/g/t suffix, or a percentage: 512m, 2g, 25%)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_is_top_first_and_escapes_work() {
        let k = parse_kernel_style(&[
            "lowerdir=/top:/mid\\:dle:/bottom,upperdir=/u\\,x,workdir=/w".into(),
            "userxattr,redirect_dir=on".into(),
        ])
        .unwrap();
        assert_eq!(
            k.lowers,
            [
                PathBuf::from("/bottom"),
                PathBuf::from("/mid:dle"),
                PathBuf::from("/top")
            ]
        );
        assert_eq!(k.upper, Some(PathBuf::from("/u,x")));
        assert_eq!(k.work, Some(PathBuf::from("/w")));
        assert_eq!(
            k.options,
            [
                ("userxattr".to_string(), None),
                ("redirect_dir".to_string(), Some("on".to_string()))
            ]
        );
    }

    #[test]
    fn refuses_data_only_lowers_and_valueless_paths() {
        let k = parse_kernel_style(&["lowerdir=/a:/b::/d1::/d\\:2".into()]).unwrap();
        assert_eq!(k.lowers, [PathBuf::from("/b"), PathBuf::from("/a")]);
        assert_eq!(k.data, [PathBuf::from("/d1"), PathBuf::from("/d:2")]);
        for bad in [
            "lowerdir=::/d",
            "lowerdir=/a:::/d",
            "lowerdir=/a::/d:/e",
            "lowerdir=/a::",
            "lowerdir=/a:",
            "lowerdir=:/a",
        ] {
            assert!(parse_kernel_style(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_kernel_style(&["upperdir".into()]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(check_tmpfs_size("").unwrap(), None);
        assert_eq!(check_tmpfs_size("512M").unwrap().as_deref(), Some("512m"));
        assert_eq!(check_tmpfs_size("25%").unwrap().as_deref(), Some("25%"));
        assert_eq!(check_tmpfs_size("4096").unwrap().as_deref(), Some("4096"));
        for bad in ["m", "12q", "0%", "101%", "1.5g", "-1", "0", "0k", "000m"] {
            assert!(check_tmpfs_size(bad).is_err(), "{bad}");
        }
    }
}
