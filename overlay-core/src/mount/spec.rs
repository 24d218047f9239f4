//! [`MountSpec`]: a kernel overlay mount as data, derived from a [`LayerStack`].

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountAttrFlags, MountFlags};

use crate::error::{Error, Result};
use crate::format::XattrNamespace;
use crate::mount::child::{LegacyMount, MountApi, Param, ParamValue, PreparedMount};
use crate::mount::options::{Atime, MountContext, OverlayMountOptions, ResolvedOptions};
use crate::stack::{LayerStack, LowerLayer, UpperLayer};

/// Longest value `fsconfig(FSCONFIG_SET_STRING)` accepts (the kernel copies at most 256 bytes
/// including the NUL and fails with `EINVAL` beyond).
pub const FSCONFIG_MAX_STRING: usize = 255;

/// A kernel overlay mount described as data: filesystem type, source, options and target.
///
/// Built from a validated [`LayerStack`] and [`OverlayMountOptions`] (checked against the
/// kernel's option rules). Lowers are kept in the kernel's **top-first** order.
/// [`MountSpec::to_command`] (also `Display`) prints the equivalent `mount -t overlay`
/// command line; [`MountSpec::mount`] mounts it and returns a guard that unmounts on drop.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub(crate) fstype: String,
    pub(crate) source: String,
    pub(crate) lowers: Vec<LowerLayer>,
    /// Data-only lower layers (`datadir+`, `::`), in the order given.
    pub(crate) data_lowers: Vec<PathBuf>,
    pub(crate) upper: Option<UpperLayer>,
    pub(crate) options: OverlayMountOptions,
    pub(crate) resolved: ResolvedOptions,
    pub(crate) userxattr: bool,
    pub(crate) target: PathBuf,
    pub(crate) api: MountApi,
}

/// The running kernel's (major, minor), or (0, 0) when unknown.
pub(crate) fn kernel_major_minor() -> (u32, u32) {
    let (a, b, _) = crate::mount::probe::kernel_version();
    (a, b)
}

impl MountSpec {
    /// Derive the mount of `stack` at `target` with `options`.
    ///
    /// Fails with [`Error::OptionConflict`] when the options break one of the kernel's rules
    /// for the current privileges (see [`OverlayMountOptions`]), or when `userxattr` is asked
    /// for a stack using `trusted.` xattrs (or the reverse).
    pub fn new(
        stack: &LayerStack,
        options: &OverlayMountOptions,
        target: impl AsRef<Path>,
    ) -> Result<MountSpec> {
        let privileged = crate::mount::has_cap_sys_admin_in_initial_namespace();
        Self::with_privilege(stack, options, target.as_ref(), privileged)
    }

    /// [`MountSpec::new`] with data-only lower layers below every lower (composefs-style
    /// stacks, Linux 6.5+): their files are reached only through the `overlay.redirect` of
    /// metacopy files in the lowers above, and never listed themselves. Given to the kernel
    /// as `datadir+=` parameters with the new mount API and after `::` in `lowerdir=` with
    /// `mount(2)`, in the order given. Needs `metacopy=on` (and so `redirect_dir=on` and
    /// trusted xattrs, i.e. root); `verity=on` or `require` checks the fs-verity digests the
    /// metacopy files carry.
    pub fn new_with_data_lowers<I, P>(
        stack: &LayerStack,
        data_lowers: I,
        options: &OverlayMountOptions,
        target: impl AsRef<Path>,
    ) -> Result<MountSpec>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut data = Vec::new();
        for d in data_lowers {
            let d = d.as_ref();
            let canon = std::fs::canonicalize(d).map_err(|e| Error::InvalidStack {
                path: d.to_path_buf(),
                reason: format!("data-only lower layer: {e}"),
            })?;
            if !canon.is_dir() {
                return Err(Error::InvalidStack {
                    path: d.to_path_buf(),
                    reason: "data-only lower layer: not a directory".into(),
                });
            }
            data.push(canon);
        }
        let privileged = crate::mount::has_cap_sys_admin_in_initial_namespace();
        Self::build(stack, data, options, target.as_ref(), privileged)
    }

    pub(crate) fn with_privilege(
        stack: &LayerStack,
        options: &OverlayMountOptions,
        target: &Path,
        privileged: bool,
    ) -> Result<MountSpec> {
        Self::build(stack, Vec::new(), options, target, privileged)
    }

    /// `data_lowers` come after the stack's own data-only lowers
    /// ([`crate::LayerStackBuilder::data_lower`]).
    fn build(
        stack: &LayerStack,
        data_lowers: Vec<PathBuf>,
        options: &OverlayMountOptions,
        target: &Path,
        privileged: bool,
    ) -> Result<MountSpec> {
        let data_lowers: Vec<PathBuf> = stack
            .data_lowers()
            .iter()
            .map(|l| l.path.clone())
            .chain(data_lowers)
            .collect();
        if !data_lowers.is_empty() && !options.metacopy {
            return Err(Error::OptionConflict(
                "data-only lower layers are reached through metacopy files: they need metacopy=on"
                    .into(),
            ));
        }
        // The kernel's limit (the userspace engine takes more), data lowers included.
        let n = stack.lowers().len() + data_lowers.len();
        if n > crate::stack::MAX_LOWER_LAYERS {
            let path = stack
                .lowers()
                .get(crate::stack::MAX_LOWER_LAYERS)
                .map(|l| l.path.clone())
                .or_else(|| data_lowers.last().cloned())
                .unwrap_or_default();
            return Err(Error::InvalidStack {
                path,
                reason: format!(
                    "too many lower layers for the kernel overlay: {n} given, its limit is {} \
                     (the FUSE backend takes more)",
                    crate::stack::MAX_LOWER_LAYERS
                ),
            });
        }
        let stack_user = stack.xattr_namespace() == XattrNamespace::User;
        let userxattr = options.userxattr.unwrap_or(stack_user);
        if userxattr != stack_user {
            return Err(Error::OptionConflict(format!(
                "userxattr={} but the layer stack keeps its overlay xattrs in {}; build the \
                 stack with the matching XattrNamespace",
                if userxattr { "on" } else { "off" },
                stack.xattr_namespace().prefix()
            )));
        }
        let target = std::path::absolute(target)
            .map_err(|e| Error::io("resolve mount target", target, e))?;
        let mut spec = MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            lowers: stack.lowers_top_first().cloned().collect(),
            data_lowers,
            upper: stack.upper().cloned(),
            options: options.clone(),
            resolved: ResolvedOptions {
                params: Vec::new(),
                redirect_dir: crate::mount::RedirectDir::NoFollow,
            },
            userxattr,
            target,
            api: MountApi::Auto,
        };
        spec.resolved = options.resolve(&spec.context(privileged))?;
        Ok(spec)
    }

    pub(crate) fn context(&self, privileged: bool) -> MountContext {
        MountContext {
            has_upper: self.upper.is_some(),
            // The kernel counts data-only layers among the lower layers.
            lowers: self.lowers.len() + self.data_lowers.len(),
            userxattr: self.userxattr,
            privileged,
            kernel: kernel_major_minor(),
        }
    }

    /// Data-only lower layers (see [`MountSpec::new_with_data_lowers`]).
    pub fn data_lowers(&self) -> &[PathBuf] {
        &self.data_lowers
    }

    /// Use `source` as the mount source shown in the mount table (default `overlay`).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Choose the mount API (default [`MountApi::Auto`]).
    pub fn with_api(mut self, api: MountApi) -> Self {
        self.api = api;
        self
    }

    /// Mount somewhere else.
    pub fn with_target(mut self, target: impl AsRef<Path>) -> Result<Self> {
        let t = target.as_ref();
        self.target =
            std::path::absolute(t).map_err(|e| Error::io("resolve mount target", t, e))?;
        Ok(self)
    }

    /// Filesystem type (`overlay`).
    pub fn fstype(&self) -> &str {
        &self.fstype
    }

    /// Mount source (`overlay` unless changed).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Absolute mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The mount API used.
    pub fn api(&self) -> MountApi {
        self.api
    }

    /// Lower layers, top-first (the kernel's order).
    pub fn lowers_top_first(&self) -> &[LowerLayer] {
        &self.lowers
    }

    /// Upper layer and workdir, if any.
    pub fn upper(&self) -> Option<&UpperLayer> {
        self.upper.as_ref()
    }

    /// True when the overlay uses `user.overlay.*` xattrs (`userxattr`).
    pub fn uses_userxattr(&self) -> bool {
        self.userxattr
    }

    /// The requested options.
    pub fn mount_options(&self) -> &OverlayMountOptions {
        &self.options
    }

    /// The filesystem options passed to the kernel, unescaped, in order: `lowerdir` (joined
    /// top-first; image lowers appear as their image file), `upperdir`, `workdir`, then every
    /// feature option. Flags have no value.
    pub fn options(&self) -> Vec<(String, Option<String>)> {
        let lowers: Vec<&Path> = self.lowers.iter().map(|l| l.path.as_path()).collect();
        let mut lowerdir = lowers
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":");
        for d in &self.data_lowers {
            lowerdir.push_str("::");
            lowerdir.push_str(&d.to_string_lossy());
        }
        let mut v = vec![("lowerdir".to_string(), Some(lowerdir))];
        if let Some(u) = &self.upper {
            v.push((
                "upperdir".into(),
                Some(u.upper.to_string_lossy().into_owned()),
            ));
            v.push((
                "workdir".into(),
                Some(u.work.to_string_lossy().into_owned()),
            ));
        }
        for (k, val) in &self.resolved.params {
            v.push((k.to_string(), val.map(str::to_string)));
        }
        v
    }

    /// The per-mount flags, each with its `mount(8)` option name, its `fsmount` attribute and
    /// its `mount(2)` flag; `set` says whether this mount asks for it.
    fn per_mount_flags(&self) -> [PerMountFlag; 7] {
        let o = &self.options;
        let ro = o.read_only || self.upper.is_none();
        [
            (
                ro,
                "ro",
                MountAttrFlags::MOUNT_ATTR_RDONLY,
                MountFlags::RDONLY,
            ),
            (
                o.nosuid,
                "nosuid",
                MountAttrFlags::MOUNT_ATTR_NOSUID,
                MountFlags::NOSUID,
            ),
            (
                o.nodev,
                "nodev",
                MountAttrFlags::MOUNT_ATTR_NODEV,
                MountFlags::NODEV,
            ),
            (
                o.noexec,
                "noexec",
                MountAttrFlags::MOUNT_ATTR_NOEXEC,
                MountFlags::NOEXEC,
            ),
            // relatime is the default of both APIs (MOUNT_ATTR_RELATIME is 0).
            (
                o.atime == Atime::Noatime,
                "noatime",
                MountAttrFlags::MOUNT_ATTR_NOATIME,
                MountFlags::NOATIME,
            ),
            (
                o.atime == Atime::Strictatime,
                "strictatime",
                MountAttrFlags::MOUNT_ATTR_STRICTATIME,
                MountFlags::STRICTATIME,
            ),
            (
                o.nodiratime,
                "nodiratime",
                MountAttrFlags::MOUNT_ATTR_NODIRATIME,
                MountFlags::NODIRATIME,
            ),
        ]
        .map(|(set, name, attr, flag)| PerMountFlag {
            set,
            name,
            attr,
            flag,
        })
    }

    /// Per-mount flags as `mount(8)` options (`ro`, `nosuid`, `nodev`, `noexec`, `noatime`,
    /// `strictatime`, `nodiratime`).
    pub fn mount_flags(&self) -> Vec<&'static str> {
        self.per_mount_flags()
            .iter()
            .filter(|f| f.set)
            .map(|f| f.name)
            .collect()
    }

    pub(crate) fn fsmount_attrs(&self) -> MountAttrFlags {
        self.per_mount_flags()
            .iter()
            .filter(|f| f.set)
            .fold(MountAttrFlags::empty(), |a, f| a | f.attr)
    }

    fn legacy_flags(&self) -> MountFlags {
        self.per_mount_flags()
            .iter()
            .filter(|f| f.set)
            .fold(MountFlags::empty(), |a, f| a | f.flag)
    }

    /// The `mount(2)` data string for the given (top-first) lower directories, with every
    /// path escaped; paths are made relative to `base` when given.
    fn legacy_data(&self, lowers: &[PathBuf], base: Option<&Path>) -> Vec<u8> {
        let rel = |p: &Path| -> Vec<u8> {
            match base.and_then(|b| p.strip_prefix(b).ok()) {
                Some(r) if r.as_os_str().is_empty() => b".".to_vec(),
                Some(r) => r.as_os_str().as_bytes().to_vec(),
                None => p.as_os_str().as_bytes().to_vec(),
            }
        };
        let mut d = b"lowerdir=".to_vec();
        for (i, l) in lowers.iter().enumerate() {
            if i > 0 {
                d.push(b':');
            }
            d.extend(escape_option_value(&rel(l)));
        }
        for data in &self.data_lowers {
            d.extend_from_slice(b"::");
            d.extend(escape_option_value(&rel(data)));
        }
        d.extend(self.options_after_lowers(rel));
        d
    }

    /// `,upperdir=…,workdir=…` (escaped, each path through `rel`) and `,key[=value]` for
    /// every feature option: what follows `lowerdir=` in an option string.
    fn options_after_lowers(&self, rel: impl Fn(&Path) -> Vec<u8>) -> Vec<u8> {
        let mut d = Vec::new();
        if let Some(u) = &self.upper {
            d.extend_from_slice(b",upperdir=");
            d.extend(escape_option_value(&rel(&u.upper)));
            d.extend_from_slice(b",workdir=");
            d.extend(escape_option_value(&rel(&u.work)));
        }
        for (k, v) in &self.resolved.params {
            d.push(b',');
            d.extend_from_slice(k.as_bytes());
            if let Some(v) = v {
                d.push(b'=');
                d.extend_from_slice(v.as_bytes());
            }
        }
        d
    }

    /// The complete `-o` string for `mount(8)`: per-mount flags then the escaped filesystem
    /// options (image lowers appear as their image file).
    pub fn option_string(&self) -> String {
        let lowers: Vec<PathBuf> = self.lowers.iter().map(|l| l.path.clone()).collect();
        let mut s = self.mount_flags().join(",");
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&String::from_utf8_lossy(&self.legacy_data(&lowers, None)));
        s
    }

    /// The equivalent shell command: `mount -t overlay overlay -o '<options>' '<target>'`,
    /// with kernel escaping (`\` before `,`, `:` and `\`) inside shell quoting. Image lowers are
    /// loop-mounted first into `mktemp -d` directories held in shell variables.
    pub fn to_command(&self) -> String {
        let mut script = String::new();
        let mut lowers_sh: Vec<String> = Vec::new();
        let mut plain = true;
        for (i, l) in self.lowers.iter().enumerate() {
            match l.image {
                Some(fmt) => {
                    plain = false;
                    script.push_str(&format!(
                        "L{i}=$(mktemp -d) && mount -t {} -o ro,loop,nodev,nosuid {} \"$L{i}\" && ",
                        fmt.fstype(),
                        shell_quote(l.path.as_os_str().as_bytes())
                    ));
                    lowers_sh.push(format!("\"$L{i}\""));
                }
                None => lowers_sh.push(shell_quote(&escape_option_value(
                    l.path.as_os_str().as_bytes(),
                ))),
            }
        }
        let flags = self.mount_flags().join(",");
        let mut opts = String::new();
        if !flags.is_empty() {
            opts.push_str(&flags);
            opts.push(',');
        }
        let rest = self.options_after_lowers(|p| p.as_os_str().as_bytes().to_vec());
        let option_arg = if plain {
            let lowers: Vec<PathBuf> = self.lowers.iter().map(|l| l.path.clone()).collect();
            let mut b = opts.into_bytes();
            b.extend(self.legacy_data(&lowers, None));
            shell_quote(&b)
        } else {
            // Adjacent shell words concatenate: 'flags,lowerdir='"$L0":'/x'',upperdir=...'
            let mut s = shell_quote(format!("{opts}lowerdir=").as_bytes());
            for (i, l) in lowers_sh.iter().enumerate() {
                if i > 0 {
                    s.push(':');
                }
                s.push_str(l);
            }
            for d in &self.data_lowers {
                s.push_str("::");
                s.push_str(&shell_quote(&escape_option_value(d.as_os_str().as_bytes())));
            }
            if !rest.is_empty() {
                s.push_str(&shell_quote(&rest));
            }
            s
        };
        script.push_str(&format!(
            "mount -t {} {} -o {} {}",
            self.fstype,
            shell_quote(self.source.as_bytes()),
            option_arg,
            shell_quote(self.target.as_os_str().as_bytes())
        ));
        script
    }

    /// Prepare the system calls for mounting with `lowers` (top-first directories; image
    /// lowers already replaced by their mount points).
    pub(crate) fn prepare(
        &self,
        lowers: &[PathBuf],
        resolved: &ResolvedOptions,
    ) -> Result<PreparedMount> {
        let cstr = |b: &[u8], what: &Path| {
            CString::new(b).map_err(|_| Error::InvalidStack {
                path: what.to_path_buf(),
                reason: "path contains a NUL byte".into(),
            })
        };
        let key = |k: &str| CString::new(k).expect("option keys have no NUL");
        let mut params = vec![Param {
            key: key("source"),
            value: ParamValue::Str(cstr(self.source.as_bytes(), Path::new(&self.source))?),
            shown: cstr(self.source.as_bytes(), Path::new(&self.source))?,
        }];
        // A path as an fsconfig parameter: a string when short enough, else an fd (6.13).
        let path_param = |k: &str, p: &Path, escaped: bool| -> Result<Param> {
            let raw = p.as_os_str().as_bytes();
            let value = if escaped {
                escape_backslashes(raw)
            } else {
                raw.to_vec()
            };
            let v = if value.len() <= FSCONFIG_MAX_STRING {
                ParamValue::Str(cstr(&value, p)?)
            } else {
                let fd = rustix::fs::open(
                    p,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| Error::io("open layer directory", p, crate::error::from_rustix(e)))?;
                ParamValue::Fd(fd)
            };
            Ok(Param {
                key: key(k),
                value: v,
                shown: cstr(raw, p)?,
            })
        };
        for l in lowers {
            // lowerdir+ values are taken literally (no unescaping), so ':' and ',' need nothing.
            params.push(path_param("lowerdir+", l, false)?);
        }
        for d in &self.data_lowers {
            params.push(path_param("datadir+", d, false)?);
        }
        if let Some(u) = &self.upper {
            // upperdir/workdir strings are unescaped by the kernel: protect backslashes.
            params.push(path_param("upperdir", &u.upper, true)?);
            params.push(path_param("workdir", &u.work, true)?);
        }
        for (k, v) in &resolved.params {
            params.push(Param {
                key: key(k),
                value: match v {
                    Some(v) => ParamValue::Str(key(v)),
                    None => ParamValue::Flag,
                },
                shown: key(v.unwrap_or("")),
            });
        }

        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as usize);
        let data = self.legacy_data(lowers, None);
        let legacy = if data.len() < page {
            Ok(LegacyMount {
                source: cstr(self.source.as_bytes(), Path::new(&self.source))?,
                fstype: key(&self.fstype),
                flags: self.legacy_flags(),
                data: cstr(&data, &self.target)?,
                chdir: None,
            })
        } else {
            // Relative paths from the deepest directory common to every layer.
            let mut all: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
            all.extend(self.data_lowers.iter().map(PathBuf::as_path));
            if let Some(u) = &self.upper {
                all.push(&u.upper);
                all.push(&u.work);
            }
            let base = common_ancestor(&all);
            let rel = self.legacy_data(lowers, Some(&base));
            if rel.len() < page && base != Path::new("/") {
                Ok(LegacyMount {
                    source: cstr(self.source.as_bytes(), Path::new(&self.source))?,
                    fstype: key(&self.fstype),
                    flags: self.legacy_flags(),
                    data: cstr(&rel, &self.target)?,
                    chdir: Some(cstr(base.as_os_str().as_bytes(), &base)?),
                })
            } else {
                Err("the option string exceeds mount(2)'s one-page limit (4096 bytes), even with layer paths relative to their common parent directory")
            }
        };
        // Known from the version: `lowerdir+` needs 6.8 (before 6.5 the kernel would only
        // refuse it at superblock creation), fd-valued layers 6.13.
        let kernel = kernel_major_minor();
        let needs_fd = params.iter().any(|p| matches!(p.value, ParamValue::Fd(_)));
        let api = match self.api {
            MountApi::Auto if kernel < (6, 8) || (needs_fd && kernel < (6, 13)) => MountApi::Legacy,
            other => other,
        };
        Ok(PreparedMount {
            fstype: key(&self.fstype),
            target: cstr(self.target.as_os_str().as_bytes(), &self.target)?,
            params,
            attrs: self.fsmount_attrs(),
            legacy,
            api,
        })
    }
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_command())
    }
}

/// Escape a path for an overlay option string: a backslash before `\`, `,` and `:`.
pub fn escape_option_value(path: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(path.len() + 8);
    for &b in path {
        if matches!(b, b'\\' | b',' | b':') {
            v.push(b'\\');
        }
        v.push(b);
    }
    v
}

/// Escape only backslashes (for `upperdir`/`workdir` values given to `fsconfig`).
fn escape_backslashes(path: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(path.len() + 2);
    for &b in path {
        if b == b'\\' {
            v.push(b'\\');
        }
        v.push(b);
    }
    v
}

/// Quote bytes for a POSIX shell: bare when harmless, `'...'` for printable UTF-8, `$'...'`
/// with `\xNN` escapes otherwise.
pub fn shell_quote(b: &[u8]) -> String {
    let safe = |c: u8| c.is_ascii_alphanumeric() || b"_/.,:=+-@%".contains(&c);
    if !b.is_empty() && b.iter().all(|&c| safe(c)) {
        return String::from_utf8_lossy(b).into_owned();
    }
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => format!("'{}'", s.replace('\'', "'\\''")),
        _ => {
            let mut s = String::from("$'");
            for &c in b {
                match c {
                    b'\'' => s.push_str("\\'"),
                    b'\\' => s.push_str("\\\\"),
                    0x20..=0x7e => s.push(c as char),
                    _ => s.push_str(&format!("\\x{c:02x}")),
                }
            }
            s.push('\'');
            s
        }
    }
}

/// The deepest directory containing all `paths` (absolute).
fn common_ancestor(paths: &[&Path]) -> PathBuf {
    let mut it = paths.iter();
    let Some(first) = it.next() else {
        return PathBuf::from("/");
    };
    let mut base: PathBuf = first.parent().unwrap_or(Path::new("/")).to_path_buf();
    for p in it {
        while !p.starts_with(&base) {
            if !base.pop() {
                return PathBuf::from("/");
            }
        }
    }
    // A layer equal to the base would become "."; keep the base strictly above every layer.
    while paths.contains(&base.as_path()) {
        if !base.pop() {
            return PathBuf::from("/");
        }
    }
    base
}

/// One per-mount flag in its three spellings (see `MountSpec::per_mount_flags`).
struct PerMountFlag {
    set: bool,
    name: &'static str,
    attr: MountAttrFlags,
    flag: MountFlags,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_kernel_separators() {
        assert_eq!(
            escape_option_value(b"/a:b,c\\d e"),
            b"/a\\:b\\,c\\\\d e".to_vec()
        );
        assert_eq!(escape_backslashes(b"/a\\b,c"), b"/a\\\\b,c".to_vec());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote(b"/tmp/a,b:c"), "/tmp/a,b:c");
        assert_eq!(shell_quote(b"/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote(b"it's"), "'it'\\''s'");
        assert_eq!(shell_quote(b"a\nb"), "$'a\\x0ab'");
        assert_eq!(shell_quote(b""), "''");
    }

    #[test]
    fn common_ancestor_stays_above_layers() {
        let p = |s: &str| PathBuf::from(s);
        let v = [p("/t/x/l1"), p("/t/x/l2"), p("/t/y/u")];
        let refs: Vec<&Path> = v.iter().map(PathBuf::as_path).collect();
        assert_eq!(common_ancestor(&refs), p("/t"));
        let v = [p("/t/x"), p("/t/x/l2")];
        let refs: Vec<&Path> = v.iter().map(PathBuf::as_path).collect();
        assert_eq!(common_ancestor(&refs), p("/t"));
    }
}
