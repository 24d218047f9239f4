//! The operations a differential case applies, and the proptest strategy that generates them.
//!
//! Paths are relative to the overlay root and built from a small fixed name pool (the same
//! names the fixture uses), so operations collide with each other and with the fixture often.
//! Symlink targets are relative and never contain `..`: a `..` at the mount root would leave
//! the kernel mount but not the engine's root.

use std::fmt;

use proptest::prelude::*;

/// Names every path component is drawn from (see the fixture table).
pub const NAMES: &[&str] = &["a", "b", "c", "d", "e", "m", "o"];
/// Targets of symlinks created by [`Op::Symlink`] (dangling ones included).
pub const SYMLINK_TARGETS: &[&str] = &["a", "b", "m", "m/a", "o/b", "zz", "e", "d/c"];
/// The time [`Op::Touch`] sets (2010-01-01), seconds since the epoch.
pub const TOUCH_TIME: i64 = 1_262_304_000;
/// Modes for create, mkdir and chmod.
pub const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o777, 0o666, 0o700, 0o000, 0o1777];
/// Names of extended attributes set or removed: mostly `user.*`, plus a `trusted.*` name and
/// one under the overlay's private prefix, which an overlay must store escaped
/// (`trusted.overlay.overlay.opaque`) and never interpret. `user.a`/`user.b` appear twice to
/// weight them.
pub const XATTR_NAMES: &[&str] = &[
    "user.a",
    "user.b",
    "user.color",
    "user.a",
    "user.b",
    "trusted.t",
    "trusted.overlay.opaque",
];
/// The umask every test process runs with (set by [`crate::common::init`]); backends that
/// bypass the kernel's VFS apply it themselves.
pub const UMASK: u32 = 0o022;

/// Flags of [`Op::Rename`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Plain `rename(2)`.
    Plain,
    /// `RENAME_NOREPLACE`.
    NoReplace,
    /// `RENAME_EXCHANGE`.
    Exchange,
}

/// What [`Op::Mknod`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A FIFO, mode 0644.
    Fifo,
    /// A character device 0/0, mode 0644.
    WhiteoutDevice,
}

/// `XATTR_CREATE` / `XATTR_REPLACE` / neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// `XATTR_CREATE`: fail with EEXIST if present.
    Create,
    /// `XATTR_REPLACE`: fail with ENODATA if absent.
    Replace,
}

impl XattrMode {
    /// The raw flags for `setxattr(2)`.
    pub fn raw(self) -> i32 {
        match self {
            XattrMode::Any => 0,
            XattrMode::Create => libc::XATTR_CREATE,
            XattrMode::Replace => libc::XATTR_REPLACE,
        }
    }
}

/// One filesystem operation, addressed by paths relative to the overlay root.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// `open(path, O_WRONLY|O_CREAT[|O_EXCL], mode)` and close. Without `excl` an existing
    /// file is opened for write (which copies it up) and a dangling final symlink is followed.
    Create { path: String, mode: u32, excl: bool },
    /// `open(path, O_WRONLY)` + `pwrite(data, offset)`.
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// `open(path, O_WRONLY|O_APPEND)` + `write(data)`.
    Append { path: String, data: Vec<u8> },
    /// `open(path, O_WRONLY)` + `ftruncate(size)`.
    Truncate { path: String, size: u64 },
    /// `chmod(path, mode)` (follows symlinks).
    Chmod { path: String, mode: u32 },
    /// `lchown(path, uid, -1)` (a symlink itself): metadata only.
    Chown { path: String, uid: u32 },
    /// `utimensat(path, {atime, mtime} = 2010-01-01)` (follows symlinks): metadata only.
    Touch { path: String },
    /// `unlink(path)`.
    Unlink { path: String },
    /// `rmdir(path)`.
    Rmdir { path: String },
    /// `mkdir(path, mode)`.
    Mkdir { path: String, mode: u32 },
    /// `renameat2(from, to, flags)`.
    Rename {
        from: String,
        to: String,
        mode: RenameMode,
    },
    /// `link(from, to)` (does not follow a final symlink).
    Link { from: String, to: String },
    /// `symlink(target, path)`.
    Symlink { target: String, path: String },
    /// `lsetxattr(path, name, value, flags)`.
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
        mode: XattrMode,
    },
    /// `lremovexattr(path, name)`.
    RemoveXattr { path: String, name: String },
    /// `mknod(path, mode)`: a FIFO, or a character device 0/0 (which an overlay refuses
    /// with EPERM: that is its whiteout).
    Mknod { path: String, kind: NodeKind },
    /// `stat` (follow) or `lstat`: compares kind, permissions and size.
    Stat { path: String, follow: bool },
}

fn show_data(d: &[u8]) -> String {
    if d.len() > 16 {
        format!("{} bytes of {:?}", d.len(), d[0] as char)
    } else {
        format!("{:?}", String::from_utf8_lossy(d))
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { path, mode, excl } => {
                let x = if *excl { "|O_EXCL" } else { "" };
                write!(f, "create({path:?}, O_CREAT{x}, {mode:#o})")
            }
            Op::Write { path, offset, data } => {
                write!(f, "pwrite({path:?}, at {offset}, {})", show_data(data))
            }
            Op::Append { path, data } => write!(f, "append({path:?}, {})", show_data(data)),
            Op::Truncate { path, size } => write!(f, "truncate({path:?}, {size})"),
            Op::Chmod { path, mode } => write!(f, "chmod({path:?}, {mode:#o})"),
            Op::Chown { path, uid } => write!(f, "lchown({path:?}, {uid})"),
            Op::Touch { path } => write!(f, "touch({path:?})"),
            Op::Unlink { path } => write!(f, "unlink({path:?})"),
            Op::Rmdir { path } => write!(f, "rmdir({path:?})"),
            Op::Mkdir { path, mode } => write!(f, "mkdir({path:?}, {mode:#o})"),
            Op::Rename { from, to, mode } => {
                let m = match mode {
                    RenameMode::Plain => "",
                    RenameMode::NoReplace => ", NOREPLACE",
                    RenameMode::Exchange => ", EXCHANGE",
                };
                write!(f, "rename({from:?} -> {to:?}{m})")
            }
            Op::Link { from, to } => write!(f, "link({from:?} -> {to:?})"),
            Op::Symlink { target, path } => write!(f, "symlink({path:?} -> {target:?})"),
            Op::SetXattr {
                path,
                name,
                value,
                mode,
            } => {
                let m = match mode {
                    XattrMode::Any => "",
                    XattrMode::Create => ", CREATE",
                    XattrMode::Replace => ", REPLACE",
                };
                write!(f, "setxattr({path:?}, {name}={}{m})", show_data(value))
            }
            Op::RemoveXattr { path, name } => write!(f, "removexattr({path:?}, {name})"),
            Op::Mknod { path, kind } => write!(f, "mknod({path:?}, {kind:?})"),
            Op::Stat { path, follow } => {
                write!(f, "{}({path:?})", if *follow { "stat" } else { "lstat" })
            }
        }
    }
}

/// Names that are directories in the fixture.
pub const DIR_NAMES: &[&str] = &["d", "m", "o"];

/// A path of one to three components from [`NAMES`]; longer paths mostly start with a
/// fixture directory.
pub fn path() -> impl Strategy<Value = String> {
    let name = || proptest::sample::select(NAMES);
    prop_oneof![
        3 => name().prop_map(str::to_string),
        3 => (proptest::sample::select(DIR_NAMES), name()).prop_map(|(a, b)| format!("{a}/{b}")),
        1 => (name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
        1 => (proptest::sample::select(DIR_NAMES), name(), name())
            .prop_map(|(a, b, c)| format!("{a}/{b}/{c}")),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"x".to_vec()),
        Just(b"hello\n".to_vec()),
        Just(vec![b'z'; 100]),
        Just(vec![b'p'; 5000]),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    proptest::sample::select(MODES)
}

/// One operation; mutating operations are weighted so that sequences build up state.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), mode(), any::<bool>()).prop_map(|(path, mode, excl)| Op::Create { path, mode, excl }),
        3 => (path(), proptest::sample::select(&[0u64, 1, 3, 4096, 10000][..]), data())
            .prop_map(|(path, offset, data)| Op::Write { path, offset, data }),
        2 => (path(), data()).prop_map(|(path, data)| Op::Append { path, data }),
        2 => (path(), proptest::sample::select(&[0u64, 1, 5, 4097][..]))
            .prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => (path(), mode()).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), proptest::sample::select(&[0u32, 65534][..]))
            .prop_map(|(path, uid)| Op::Chown { path, uid }),
        1 => path().prop_map(|path| Op::Touch { path }),
        3 => path().prop_map(|path| Op::Unlink { path }),
        3 => path().prop_map(|path| Op::Rmdir { path }),
        3 => (path(), proptest::sample::select(&[0o755u32, 0o700, 0o777][..]))
            .prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        5 => (path(), path(), prop_oneof![
                4 => Just(RenameMode::Plain),
                1 => Just(RenameMode::NoReplace),
                1 => Just(RenameMode::Exchange),
            ])
            .prop_map(|(from, to, mode)| Op::Rename { from, to, mode }),
        2 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        2 => (proptest::sample::select(SYMLINK_TARGETS), path())
            .prop_map(|(target, path)| Op::Symlink { target: target.to_string(), path }),
        2 => (
            path(),
            proptest::sample::select(XATTR_NAMES),
            proptest::sample::select(&["1", "red", ""][..]),
            prop_oneof![Just(XattrMode::Any), Just(XattrMode::Create), Just(XattrMode::Replace)],
        )
            .prop_map(|(path, name, value, mode)| Op::SetXattr {
                path,
                name: name.to_string(),
                value: value.as_bytes().to_vec(),
                mode,
            }),
        1 => (path(), proptest::sample::select(XATTR_NAMES))
            .prop_map(|(path, name)| Op::RemoveXattr { path, name: name.to_string() }),
        1 => (path(), prop_oneof![Just(NodeKind::Fifo), Just(NodeKind::WhiteoutDevice)])
            .prop_map(|(path, kind)| Op::Mknod { path, kind }),
        1 => (path(), any::<bool>()).prop_map(|(path, follow)| Op::Stat { path, follow }),
    ]
}

/// A sequence of 1 to `max_len` operations.
pub fn ops(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=max_len)
}
