//! The command line, as clap derive types. `--help` output is written to read like a man
//! page: each subcommand has a long description and examples (`after_long_help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ovl: stack read-only lower layers under a writable upper layer (OverlayFS).
///
/// ovl mounts overlay stacks through the kernel's overlay filesystem (directly, or inside an
/// unprivileged user namespace with `userxattr`) or through its own FUSE union filesystem,
/// runs commands on throwaway uppers, and reads and validates the on-disk format of upper
/// layers without mounting them.
///
/// Layers are always listed bottom-first (`--lower base --lower patch`: `patch` is above
/// `base`), as bubblewrap and systemd-nspawn do. Only the kernel's `-o lowerdir=` string is
/// top-first.
#[derive(Debug, Parser)]
#[command(
    name = "ovl",
    version,
    propagate_version = true,
    after_long_help = MAIN_AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

const MAIN_AFTER_HELP: &str = concat!(
    "EXAMPLES:\n",
    "    Try a change to /usr on a throwaway upper; the host /usr stays untouched:\n",
    "        ovl run --tmp --target /usr -- sh -c 'touch /usr/share/x && ls /usr/share/x'\n",
    "\n",
    "    Mount two layers (bottom first) with a persistent upper, then unmount:\n",
    "        ovl mount --lower base --lower patch --upper changes /mnt/merged\n",
    "        ovl umount /mnt/merged\n",
    "\n",
    "    The same with kernel-style options (lowerdir is top-first there):\n",
    "        ovl mount -o lowerdir=patch:base,upperdir=changes,workdir=work /mnt/merged\n",
    "\n",
    "    What did a container change?\n",
    "        ovl diff --lower base --lower patch changes\n",
    "\n",
    "ENVIRONMENT:\n",
    "    RUST_LOG    tracing filter (e.g. RUST_LOG=overlay=debug); -v, -vv, -vvv raise the default level.\n",
    "\n",
    "EXIT STATUS:\n",
    "    0    success (check: the layers are clean)\n",
    "    1    the operation failed; one line `ovl: <path>: <cause>` on stderr says why\n",
    "    2    usage error (bad options)\n",
    "    3    check: only warnings were found\n",
    "    4    check: errors were found (the kernel would misread these layers)\n",
    "    run: the exit status of CMD; 128+N when CMD was killed by signal N;\n",
    "         125 when ovl itself failed (before CMD ran, or keeping its changes),\n",
    "         126 when CMD could not be executed,\n",
    "         127 when CMD was not found",
);

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount an overlay stack on a directory.
    #[command(long_about = MOUNT_ABOUT, after_long_help = MOUNT_EXAMPLES)]
    Mount(MountArgs),
    /// Unmount an overlay that ovl mounted and forget it.
    #[command(
        alias = "unmount",
        long_about = UMOUNT_ABOUT,
        after_long_help = "EXAMPLES:\n    ovl umount /mnt/merged\n    ovl umount --lazy /mnt/busy\n    ovl umount --force /mnt/made-by-mount8"
    )]
    Umount(UmountArgs),
    /// List the overlays ovl mounted, with their layers and backends.
    #[command(long_about = STATUS_ABOUT, after_long_help = "EXAMPLES:\n    ovl status\n    ovl status --json | jq '.[].target'")]
    Status(StatusArgs),
    /// Say which backends work on this machine, and why.
    #[command(long_about = PROBE_ABOUT, after_long_help = "EXAMPLES:\n    ovl probe\n    ovl probe --json")]
    Probe(ProbeArgs),
    /// Run a command with an overlay over a directory (or the whole root) in a private mount namespace.
    #[command(long_about = RUN_ABOUT, after_long_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// List what an upper layer adds (A), changes (C) and deletes (D), without mounting.
    #[command(long_about = DIFF_ABOUT, after_long_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// Validate the on-disk format of an upper layer and its workdir.
    #[command(long_about = CHECK_ABOUT, after_long_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// Make and apply OCI image layers (export an upper as a layer tar, apply a layer tar).
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Apply the changes of a kept upper layer to a real directory.
    #[command(long_about = COMMIT_ABOUT, after_long_help = COMMIT_EXAMPLES)]
    Commit(CommitArgs),
    /// Flatten lowers and an upper into one directory, or a squashfs or erofs image.
    #[command(long_about = SQUASH_ABOUT, after_long_help = SQUASH_EXAMPLES)]
    Squash(SquashArgs),
    /// Empty a persistence directory (--persist DIR) atomically.
    #[command(long_about = RESET_ABOUT, after_long_help = "EXAMPLES:\n    ovl reset /var/lib/live/persist")]
    Reset(ResetArgs),
    /// Save an upper layer as a squashfs or EROFS image, a new layer for the chain.
    #[command(long_about = SAVE_ABOUT, after_long_help = SAVE_EXAMPLES)]
    Save(SaveArgs),
    /// Print a shell completion script.
    #[command(
        long_about = "Print a completion script for SHELL on stdout.",
        after_long_help = "EXAMPLES:\n    ovl completions bash > /etc/bash_completion.d/ovl\n    ovl completions zsh > \"${fpath[1]}/_ovl\"\n    ovl completions fish > ~/.config/fish/completions/ovl.fish"
    )]
    Completions(CompletionsArgs),
}

/// Which mount backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BackendArg {
    /// Kernel overlay, then kernel overlay in a user namespace, then FUSE.
    #[default]
    Auto,
    /// The kernel's overlay filesystem only.
    Kernel,
    /// ovl's own FUSE union filesystem only (the ovl-fuse program).
    Fuse,
}

/// Live-system persistence (shared by `mount` and `run`).
#[derive(Debug, Clone, Args, Default)]
pub struct PersistArgs {
    /// A persistence directory: the upper lives in DIR/state/upper (created if missing) and
    /// DIR/base.json records the lowers it was made over; mounting it over other lowers is
    /// refused (see --force-base). `ovl reset DIR` empties it.
    #[arg(long, value_name = "DIR")]
    pub persist: Option<PathBuf>,

    /// Read-only-persistent: the persistent upper joins as the top lower under a fresh tmpfs
    /// upper (--tmp=SIZE sizes it), so the session starts from the saved state and leaves it
    /// unchanged.
    #[arg(long)]
    pub persist_ro: bool,

    /// Use --persist DIR over lowers other than those it was made over, and record the new
    /// ones.
    #[arg(long)]
    pub force_base: bool,
}

/// Image formats `ovl save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ImageFormatArg {
    /// squashfs, with mksquashfs (squashfs-tools).
    #[default]
    Squashfs,
    /// EROFS, with mkfs.erofs (erofs-utils).
    Erofs,
}

/// `ovl reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The persistence directory (as given to --persist).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `ovl save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// The image format.
    #[arg(long, value_enum, default_value_t = ImageFormatArg::Squashfs)]
    pub format: ImageFormatArg,

    /// An upper directory, a persistence directory (--persist DIR), or the mount point of an
    /// overlay (its upper is saved, e.g. the tmpfs upper of `ovl mount --tmp`).
    #[arg(value_name = "SOURCE")]
    pub source: PathBuf,

    /// The image file to write (must not exist).
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
}

/// Who the files seem to belong to in `ovl run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OwnersArg {
    /// `root` for a user without privileges when a lower holds files of others (its top
    /// directory is not the user's) or is an image file, else `real` (also with
    /// --backend kernel, which cannot squash ownership).
    #[default]
    Auto,
    /// Every file seems root's and the command is root over them (FUSE backend, ownership
    /// squashed); what it creates is stored as the calling user's.
    Root,
    /// The owners stored in the layers (files of users the namespace does not map show
    /// as nobody).
    Real,
}

/// How the upper layer is provided (shared by `mount` and `run`).
#[derive(Debug, Clone, Args, Default)]
pub struct UpperArgs {
    /// Persistent upper directory (created if missing). The workdir is managed next to it
    /// (`.NAME.ovl-work`) unless --work is given.
    #[arg(long, value_name = "DIR", conflicts_with = "tmp")]
    pub upper: Option<PathBuf>,

    /// Upper on a fresh tmpfs, discarded at unmount; SIZE caps it (bytes with an optional
    /// k/m/g/t suffix, or a percentage of RAM, as tmpfs takes it: 512m, 2g, 25%; 0 is
    /// refused, tmpfs would take it as no limit). Without SIZE, tmpfs's default: half of RAM.
    #[arg(
        long,
        value_name = "SIZE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub tmp: Option<String>,

    /// Cap the number of files and directories of the tmpfs upper (tmpfs's nr_inodes=).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub tmp_inodes: Option<u64>,
}

const MOUNT_ABOUT: &str = "\
Mount an overlay stack on TARGET and record it, so that `ovl status` lists it and `ovl umount`
undoes everything ovl set up (a tmpfs upper, a managed workdir, a FUSE daemon).

Lower layers are given bottom-first with --lower (repeatable). Then exactly one of:
  --upper DIR    a persistent upper; the workdir is created next to it as .DIR.ovl-work
                 (or given with --work; it must be on the same filesystem, and empty)
  --tmp[=SIZE]   an upper on a private tmpfs, size-capped, gone at unmount
                 (SIZE 0 is refused: tmpfs would take it as no limit)
  --read-only    no upper at all (needs at least two lowers for the kernel, like bwrap
                 --ro-overlay; one lower is mounted as a read-only view)

Kernel-style options are accepted too: -o lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W
(note: lowerdir is TOP-first there, as mount(8) takes it; `\\:` escapes a colon and `\\,`
a comma). Other -o options (userxattr, redirect_dir=, metacopy=, index=, volatile, ro) are
passed to the kernel overlay; redirect_dir=, metacopy= and index= to the FUSE backend too
(which refuses nfs_export=on).

MOUNT FLAGS (-o, both backends):
  rw (default) | ro          read-write or read-only
  nosuid (default) | suid    ignore or honour set-user/group-ID bits and file capabilities
  nodev (default) | dev      refuse or allow device nodes
  exec (default) | noexec    allow or refuse running programs
  relatime (default) | noatime | strictatime, diratime (default) | nodiratime
                             access-time updates; the FUSE backend is noatime unless
                             strictatime is given, which gives relatime there (fuser asks
                             the kernel for atime or noatime only)
The defaults are rw,nosuid,nodev,exec,relatime: a set-uid program does not run as its owner
and device nodes do not open until -o suid / -o dev are given (as fuse-overlayfs and
container tools mount). `-o defaults` is accepted and changes nothing.

Upper and workdir must not overlap a lower or the mount point. That is checked before
anything is created, and a mount that fails later removes the directories it created.

--backend auto (the default) tries the kernel overlay, then the kernel overlay inside a new
user namespace (not usable from the calling namespace, so `ovl mount` only picks it when
told to run a command, see `ovl run`), then FUSE. The mount stays until `ovl umount`.";

const MOUNT_EXAMPLES: &str = "\
EXAMPLES:
    Persistent upper, workdir managed next to it:
        ovl mount --lower /srv/base --lower /srv/app --upper /srv/changes /mnt/app

    Throwaway upper capped at 256 MiB:
        ovl mount --lower /srv/base --tmp=256m /mnt/scratch

    Read-only union of two layers:
        ovl mount --lower /srv/base --lower /srv/app --read-only /mnt/ro

    mount(8)-style options, lowerdir top-first:
        ovl mount -o lowerdir=/srv/app:/srv/base,upperdir=/srv/u,workdir=/srv/w /mnt/app

    A composefs-style image over a data-only layer (`::`, or --data DIR):
        ovl mount --read-only -o lowerdir=/srv/meta.erofs::/srv/objects,metacopy=on,redirect_dir=on /mnt/root

    Force the FUSE backend:
        ovl mount --backend fuse --lower /srv/base --upper /srv/changes /mnt/app";

const RESET_ABOUT: &str = "\
Discard what a persistence directory (--persist DIR) holds: its upper and workdir are
replaced by empty ones in a single atomic rename (renameat2 RENAME_EXCHANGE), so a crash
leaves either the old state or the empty one, never half of it; the old state is removed
afterwards (or at the next mount, if that was interrupted). The recorded base stays.
Refused while an overlay uses the upper.";

const SAVE_ABOUT: &str = "\
Write an upper layer as a read-only image with mksquashfs (--format squashfs, the default)
or mkfs.erofs (--format erofs), keeping the kernel's format (whiteouts as character devices
0/0, opaque directories and other overlay xattrs), so the image can be added on top of the
chain it was made over: --lower base.squashfs --lower saved.squashfs. The image keeps the
upper's xattr namespace: an upper made without root (user.overlay.*) is read by mounts with
userxattr, i.e. again without root.

SOURCE is an upper directory, a persistence directory, or the mount point of an overlay (its
upper: the tmpfs upper of `ovl mount --tmp` included). Saving an upper that is mounted
read-write gives what is on disk at that moment.";

const SAVE_EXAMPLES: &str = "\
EXAMPLES:
    A live session's changes as a new layer:
        ovl save /mnt/live ./update1.squashfs
        ovl mount --lower base.squashfs --lower update1.squashfs --tmp /mnt/live

    The same from `ovl run`:
        ovl run --lower base.squashfs --target /mnt/x --save update1.squashfs -- ./install.sh";

const UMOUNT_ABOUT: &str = "\
Unmount TARGET. For mounts ovl made, also stop the FUSE daemon, unmount the tmpfs upper and
the image lowers (freeing their loop devices), then drop the record `ovl status` lists. This
also cleans up after an `ovl mount` that died half-way.

Refuses a target that is not mounted, and an overlay ovl did not mount unless --force is
given. A busy mount is not detached behind your back: ovl says so, and `fuser -vm TARGET`
shows who uses it; --lazy detaches it at once (it goes away when no longer used).";

const STATUS_ABOUT: &str = "\
List the overlays ovl mounted: target, backend, layers (bottom-first), upper, workdir and image
lowers. Records live under /run/ovl (root) or $XDG_RUNTIME_DIR/ovl (other users); records whose
mount is gone from /proc/self/mountinfo are dropped (releasing the tmpfs upper and image lowers
they left). A broken mount says so (BROKEN; \"health\" in --json): a FUSE mount whose daemon
is gone, or an `ovl mount` that died before finishing. `ovl umount` removes either.";

const PROBE_ABOUT: &str = "\
Say what works on this machine: the kernel overlay (as this user, and inside a user namespace
with userxattr), FUSE (/dev/fuse, the ovl-fuse program, fusermount3), and optional kernel
features (new mount API, lowerdir+, volatile, redirect_dir, metacopy), and the programs that
serve image lowers without root (squashfuse; erofsfuse, else ovl's own ovl-erofs; fuseiso). Each answer comes with
the reason, taken from real test mounts in a temporary directory. The backend `--backend auto`
would choose is printed last.";

const RUN_ABOUT: &str = "\
Run CMD in a private mount namespace where TARGET (default: the root with --root, else the
directory given with --target) is covered by an overlay: the lowers (default: TARGET itself)
under a writable upper. CMD sees the overlay; nothing else on the system does, and TARGET
itself is never written.

The upper is a tmpfs (--tmp, the default) discarded when CMD exits, unless --keep DIR copies
the changes into DIR (DIR must not exist or be empty; progress is shown on a terminal). With
--upper DIR the changes persist in DIR (and a later `ovl run --upper DIR` sees them again).

--root makes the overlay the whole root file system of CMD: the root filesystem (without the
filesystems mounted below it) is the lower, CMD is chrooted into the overlay, and /dev, /proc and
/sys are bound in from the host. As a non-root user --root needs the FUSE backend: the kernel
refuses, inside a user namespace, a lower that has other filesystems mounted below it.

MOUNT FLAGS: -o takes the flags of `ovl mount -o` (ro, [no]suid, [no]dev, [no]exec,
relatime, noatime, strictatime, [no]diratime) and its overlay options; the defaults are
rw,nosuid,nodev,exec,relatime, so test a set-uid program with -o suid (as root).

OWNERSHIP (non-root users): ovl enters a new user namespace in which the caller is root
(uid and gid 0 map to the caller's own ids only, like `unshare -r`; /etc/subuid ranges are
not used). What CMD sees then depends on --owners:
  root   (the default when a lower's top directory belongs to someone else, e.g. /usr or /,
         or a lower is an image file)
         the FUSE backend shows every file and directory as owned by root (uid 0, gid 0);
         CMD is root over them: it can delete, create, chmod (set-uid bits included) and
         chown (which succeeds and changes nothing: everything stays root's). Files are
         stored in the upper as the calling user's. A file the caller cannot read on the host
         (a 0600 file of root) cannot be copied up: changing it fails with EACCES, and ovl
         names it afterwards. Needs a usable /dev/fuse (see `ovl probe`). Only uid and gid 0
         exist inside: a program that switches to another user (su, apt's _apt sandbox)
         cannot (EINVAL).
  real   (the default for lowers of your own) the kernel overlay with userxattr (or FUSE):
         files of other users show as owned by nobody and cannot be changed; your own
         files are root's inside.
As root (or with CAP_SYS_ADMIN) nothing is squashed: CMD sees the real owners.

The exit status is CMD's.";

const RUN_EXAMPLES: &str = "\
EXAMPLES:
    Test a change to /usr; the host's /usr is untouched afterwards:
        ovl run --tmp --target /usr -- sh -c 'touch /usr/share/ovl-was-here && ls /usr/share/ovl-was-here'

    Keep what a build installed into /usr/local:
        ovl run --target /usr/local --keep ./usr-local-changes -- make install

    A throwaway root file system, changes kept in ./state across runs:
        ovl run --root --upper ./state -- sh

    As a normal user: be root over a throwaway /usr (the host's /usr is untouched):
        ovl run --tmp --target /usr -- sh -c 'rm -rf /usr/share/doc && touch /usr/bin/new'

    Test a set-uid program (as root; the default is nosuid):
        ovl run -o suid --target /usr/local -- ./test-setuid.sh

    Extra layers on top of /opt (bottom-first, /opt itself is not a lower then):
        ovl run --target /opt --lower /opt --lower ./plugin-layer -- ls /opt";

const DIFF_ABOUT: &str = "\
List the paths an upper layer changes, one per line like `docker diff`:
  A PATH    added (not in the lowers)
  C PATH    changed (exists in the lowers; directories that hold changes count as C)
  D PATH    deleted (a whiteout: character device 0/0, or an opaque directory hiding lower entries)

The upper is read on disk without mounting (do not run it against an upper that is mounted
read-write). Paths are absolute, as seen in the merged view, sorted. Given the mount point of an
overlay, ovl diffs that overlay's upper (from its record of the mount, or the kernel's
upperdir=), against its lowers unless --lower is given; never the merged tree itself. Given a
persistence directory (--persist DIR), ovl diffs its upper.

With --lower (bottom-first, repeatable) ovl resolves each path in the merged lowers the way
the kernel does (whiteouts, opaque directories, redirects), so A and C are exact, whiteouts
that hide nothing are skipped, and for an opaque directory each hidden lower entry is listed
as D.

Without --lower, ovl only has the upper to go by:
  - a whiteout is D;
  - a non-directory is C if it carries an overlay.origin record (the kernel writes one when it
    copies a file up from a lower), else A; so a lower file deleted and re-created shows as A;
  - a directory is C (opaque directories replaced something in the lowers; other directories
    are most often parents copied up to hold a change); so a brand-new directory shows as C,
    and its new children as A;
  - a directory renamed through the overlay (it carries overlay.redirect) is A, and so is all
    of it that the upper holds; with --lower, the content it brings from its old place in the
    lowers is listed as A too (its old path is a whiteout, D).

Overlay xattrs are read from both trusted.overlay.* and user.overlay.* (the namespace of an
unprivileged stack); trusted.* can only be read by root.";

const DIFF_EXAMPLES: &str = "\
EXAMPLES:
    ovl diff --lower /srv/base /srv/changes
    ovl diff /srv/changes
    ovl diff --json --lower /srv/base /srv/changes | jq -r '.changes[] | select(.kind == \"D\") | .path'
    ovl diff --aufs ~/.local/share/containers/storage/overlay/ID/diff";

const CHECK_ABOUT: &str = "\
Validate an upper layer (and its workdir) without mounting. Each finding is one line:
  SEVERITY PATH: what is wrong [code]

Errors (the kernel would misread or refuse the layers):
  xattr-namespace     overlay xattrs of the wrong namespace (user.overlay.* on a trusted stack or
                      trusted.overlay.* on a user stack), or both namespaces mixed
  whiteout-device     a .wh.* character device whose device number is not 0/0
  opaque-not-dir      an overlay.opaque xattr on something that is not a directory
  upper-on-overlay    the upper directory is itself on an overlay filesystem
  work-foreign        the workdir holds something other than the overlay's work/ and index/
  work-volatile       the workdir holds incompat/volatile: a volatile mount was not cleanly
                      unmounted, the kernel refuses this upper until upper and work are recreated
  work-placement      workdir and upper are nested or on different filesystems
Warnings:
  whiteout-in-opaque  a whiteout inside an opaque directory (redundant: the opaque directory
                      already hides every lower entry)
  whiteout-named-wh   a whiteout named .wh.NAME (it hides a lower `.wh.NAME`, not NAME)
  aufs-whiteout       a .wh.NAME file: an AUFS/OCI/fuse-overlayfs whiteout that the kernel shows as a
                      plain file
  aufs-opaque         a .wh..wh..opq file: an AUFS/fuse-overlayfs opaque marker that the kernel ignores
  fuse-overlayfs-xattr  user.fuseoverlayfs.* xattrs, which only fuse-overlayfs understands
  opaque-value        overlay.opaque with a value other than `y` (`x` only works in lower layers)
  xwhiteout-in-upper  an overlay.whiteout xattr in an upper (xwhiteouts only work in lower layers)
  redirect            overlay.redirect: mount with redirect_dir=on (or follow) to see renamed dirs
  metacopy            overlay.metacopy: mount with metacopy=on, or the file's data is missing
  work-stray          leftovers in work/work from an interrupted copy-up (the kernel removes them
                      at the next mount)
  upper-mounted       the upper is in use by a mounted overlay right now

Without --work, the managed workdir next to the upper (.NAME.ovl-work) is checked if it exists.

The exit status tells the result: 0 clean, 3 only warnings, 4 errors, 1 could not check.";

const CHECK_EXAMPLES: &str = "\
EXAMPLES:
    ovl check /srv/changes
    ovl check /srv/changes --work /srv/work
    ovl check --xattr user ~/upper || echo \"upper needs attention\"
    ovl check --json /srv/changes";

/// `ovl mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// A lower layer; repeat for more, bottom-first.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,

    #[command(flatten)]
    pub upper: UpperArgs,

    /// A data-only lower layer (composefs-style: the lowers hold metacopy files redirected
    /// into it); repeatable, searched in the order given. Root, with
    /// -o metacopy=on,redirect_dir=on (and, kernel backend only, verity=on|require to check
    /// fs-verity digests).
    #[arg(long = "data", value_name = "DIR")]
    pub data_lowers: Vec<PathBuf>,

    #[command(flatten)]
    pub persist: PersistArgs,

    /// Workdir for --upper (same filesystem as the upper, empty).
    #[arg(long, value_name = "DIR", requires = "upper")]
    pub work: Option<PathBuf>,

    /// No upper layer: a read-only union of the lowers.
    #[arg(long, conflicts_with_all = ["upper", "tmp", "work"])]
    pub read_only: bool,

    /// Kernel-style options: lowerdir=TOP:..:BOTTOM,upperdir=U,workdir=W and overlay options.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Which backend mounts the stack.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Who the files seem to belong to: `root` shows every file as root's (FUSE backend,
    /// ownership squashed; for a caller without privileges that view is read-only in effect,
    /// directories shown as root's cannot be written); `real` the owners stored in the
    /// layers; `auto` (default) is `root` for a caller without privileges mounting image
    /// files --read-only (files as root sees them), else `real`.
    #[arg(long, value_enum, default_value_t = OwnersArg::Auto)]
    pub owners: OwnersArg,

    /// The mount point.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,
}

/// `ovl umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Detach now, clean up when the mount is no longer busy (MNT_DETACH).
    #[arg(long, short = 'l')]
    pub lazy: bool,
    /// Also unmount an overlay (or FUSE mount) that ovl did not mount.
    #[arg(long)]
    pub force: bool,
    /// The mount point.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,
}

/// `ovl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (an array of mounts).
    #[arg(long)]
    pub json: bool,
}

/// `ovl probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ovl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A lower layer; repeat for more, bottom-first. Default: the target directory itself.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,

    #[command(flatten)]
    pub upper: UpperArgs,

    #[command(flatten)]
    pub persist: PersistArgs,

    /// After CMD exits, save the changes of the upper as a new image layer IMAGE (squashfs;
    /// see `ovl save`), to add to the chain with --lower IMAGE.
    #[arg(long, value_name = "IMAGE")]
    pub save: Option<PathBuf>,

    /// After CMD exits, copy the changes of the throwaway upper into DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "upper")]
    pub keep: Option<PathBuf>,

    /// The directory to cover with the overlay (e.g. /usr).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "root",
        required_unless_present = "root"
    )]
    pub target: Option<PathBuf>,

    /// Cover the whole root file system and make the overlay CMD's root.
    #[arg(long)]
    pub root: bool,

    /// Which backend mounts the stack.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,

    /// Mount flags and overlay options, comma-separated (repeatable): ro, rw, [no]suid,
    /// [no]dev, [no]exec, relatime, noatime, strictatime, [no]diratime, and the overlay
    /// options of `ovl mount -o` (layers are given with --lower/--upper here). Default:
    /// rw,nosuid,nodev,exec,relatime.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Who the files seem to belong to (see OWNERSHIP below).
    #[arg(long, value_enum, default_value_t = OwnersArg::Auto)]
    pub owners: OwnersArg,

    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD", required = true, last = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// `ovl diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// A lower layer the upper sits on; repeat for more, bottom-first.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,

    /// Also read AUFS/OCI whiteouts (.wh.NAME files, .wh..wh..opq) and fuse-overlayfs's
    /// user.fuseoverlayfs.opaque, as fuse-overlayfs and OCI layer directories use them.
    #[arg(long)]
    pub aufs: bool,

    /// Print JSON: {"exact": bool, "changes": [{"kind": "A", "path": "/x"}, ...]}.
    #[arg(long)]
    pub json: bool,

    /// The upper layer directory (or a persistence directory, or an overlay's mount point).
    #[arg(value_name = "UPPER")]
    pub upper: PathBuf,
}

/// Which xattr namespace a stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum XattrArg {
    /// Whichever namespace the layer uses; both at once is an error.
    #[default]
    Auto,
    /// trusted.overlay.* (stacks mounted by root).
    Trusted,
    /// user.overlay.* (stacks mounted with userxattr, e.g. in a user namespace).
    User,
}

/// `ovl check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The workdir that belongs to the upper.
    #[arg(long, value_name = "WORK")]
    pub work: Option<PathBuf>,

    /// The xattr namespace the stack is mounted with.
    #[arg(long, value_enum, default_value_t = XattrArg::Auto)]
    pub xattr: XattrArg,

    /// Print JSON: {"findings": [...], "errors": N, "warnings": N, ...}.
    #[arg(long)]
    pub json: bool,

    /// The upper layer directory.
    #[arg(value_name = "UPPER")]
    pub upper: PathBuf,
}

/// `ovl layer ...`.
#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Export an upper layer (over its lowers) as an OCI image layer tar.
    #[command(long_about = EXPORT_ABOUT, after_long_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),
    /// Apply an OCI image layer tar (compression detected) onto a directory.
    #[command(long_about = APPLY_ABOUT, after_long_help = APPLY_EXAMPLES)]
    Apply(ApplyArgs),
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CompressArg {
    /// gzip (tar+gzip), accepted everywhere.
    #[default]
    Gzip,
    /// zstd (tar+zstd).
    Zstd,
    /// A plain tar.
    None,
}

/// `ovl layer export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A lower layer under the upper, bottom-first (needed for renamed directories and
    /// metacopy files); repeat for more.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,

    /// Where to write the layer (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,

    /// Compression.
    #[arg(long, value_enum, default_value_t = CompressArg::Gzip)]
    pub compress: CompressArg,

    /// Same tree, same digest: times clamped to $SOURCE_DATE_EPOCH, no owner names.
    #[arg(long)]
    pub reproducible: bool,

    /// Print the digests as JSON.
    #[arg(long)]
    pub json: bool,

    /// The upper (or any layer directory) to export.
    #[arg(value_name = "UPPER")]
    pub upper: PathBuf,
}

/// How `ovl layer apply` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum FormatArg {
    /// The kernel overlay's format: whiteouts as 0/0 devices, opaque directories as xattrs
    /// (a layer directory to use as a lower or upper).
    #[default]
    Overlay,
    /// A plain tree: whiteouts delete, opaque markers empty the directory.
    Plain,
}

/// `ovl layer apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Overlay)]
    pub format: FormatArg,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// The layer file (`-` for stdin): tar, tar+gzip or tar+zstd.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The directory to apply it to (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `ovl commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The directory the upper was made over (it receives the changes).
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,

    /// List what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the changes as JSON.
    #[arg(long)]
    pub json: bool,

    /// The kept upper layer.
    #[arg(value_name = "UPPER")]
    pub upper: PathBuf,
}

/// `ovl squash`.
#[derive(Debug, Args)]
pub struct SquashArgs {
    /// A lower layer, bottom-first; repeat for more.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,

    /// The output: a new (or empty) directory, or an image file named *.squashfs, *.sqfs or
    /// *.erofs.
    #[arg(short = 'o', long = "output", value_name = "DIR|IMAGE")]
    pub output: PathBuf,

    /// The upper layer on top (optional).
    #[arg(value_name = "UPPER")]
    pub upper: Option<PathBuf>,
}

const EXPORT_ABOUT: &str = "\
Export UPPER (an upper layer, over the lowers given with --lower) as an OCI image layer:
a tar, tar+gzip (the default) or tar+zstd that containerd, podman and docker accept. The
digests are printed: diff_id (sha256 of the tar, for the image config), digest and size (of
the file, for the manifest).

Whiteouts become .wh.NAME entries, opaque directories get .wh..wh..opq, a renamed directory
(overlay.redirect) is exported with its full content plus a whiteout of its old name, a
metacopy file with its data (both need the lowers), hard links stay hard links, xattrs go in
PAX records (overlay-private ones left out, security.capability kept), files with holes stay
sparse. --reproducible clamps times to $SOURCE_DATE_EPOCH and writes no owner names, so the
same tree gives the same digests.";

const EXPORT_EXAMPLES: &str = "\
EXAMPLES:
    ovl layer export --lower /srv/base /srv/changes -o layer.tar.gz
    SOURCE_DATE_EPOCH=0 ovl layer export --reproducible --compress zstd /srv/changes -o layer.tar.zst
    ovl layer export --json --compress none /srv/changes -o - > layer.tar";

const APPLY_ABOUT: &str = "\
Apply the OCI image layer FILE (tar, tar+gzip or tar+zstd, detected) onto DIR.

--format overlay (the default) writes the kernel overlay's on-disk format, for a layer
directory to stack with `ovl mount --lower`: .wh.NAME becomes a whiteout (a 0/0 character
device, or an xattr whiteout where none can be made) and .wh..wh..opq the opaque xattr.
--format plain applies the layer to a plain tree: whiteouts delete, opaque markers empty the
directory of what the layer did not put there.

Every path is resolved inside DIR through file descriptors: a symlink (from the layer or
already in DIR) is never followed, `..` is refused, a leading / is dropped, hard links must
point inside DIR. A hostile or broken layer stops at the first bad entry with one error
naming it. Owners, set-ID bits, device nodes and privileged xattrs are applied as far as the
caller may; what was changed or skipped is listed. Duplicate entries: the last one wins.";

const APPLY_EXAMPLES: &str = "\
EXAMPLES:
    mkdir -p layers/0 && ovl layer apply blobs/sha256/3f5... layers/0
    ovl layer apply --format plain update.tar.gz /srv/rootfs
    curl -sL https://example.org/layer.tar.gz | ovl layer apply - layers/1";

const COMMIT_ABOUT: &str = "\
Apply the changes of UPPER (an upper layer kept with `ovl run --keep` or `ovl mount --upper`)
to the directory it was made over: whiteouts delete, opaque directories replace their
content, renamed directories move, and each file is written under a temporary name and
renamed into place, so a reader never sees half a file. --dry-run lists what would change
(A add, R replace, U update metadata, D delete, M move) and changes nothing. Unmount the
overlay first.";

const COMMIT_EXAMPLES: &str = "\
EXAMPLES:
    ovl run --target /usr/local --keep ./changes -- make install
    ovl commit ./changes --into /usr/local --dry-run
    ovl commit ./changes --into /usr/local";

const SQUASH_ABOUT: &str = "\
Flatten the lowers (bottom-first) and an optional UPPER into one layer without overlay
format in it: a new or empty directory, or, for an output named *.squashfs/*.sqfs or
*.erofs, an image made with the system's mksquashfs or mkfs.erofs.";

const SQUASH_EXAMPLES: &str = "\
EXAMPLES:
    ovl squash --lower /srv/base --lower /srv/app /srv/changes -o /srv/flat
    ovl squash --lower /srv/base /srv/changes -o /srv/flat.squashfs";

/// `ovl completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tmp_takes_an_optional_size() {
        let c = Cli::try_parse_from(["ovl", "mount", "--lower", "a", "--tmp", "t"]).unwrap();
        let Command::Mount(m) = c.command else {
            panic!()
        };
        assert_eq!(m.upper.tmp.as_deref(), Some(""));
        assert_eq!(m.target, PathBuf::from("t"));
        let c = Cli::try_parse_from(["ovl", "mount", "--lower", "a", "--tmp=1g", "t"]).unwrap();
        let Command::Mount(m) = c.command else {
            panic!()
        };
        assert_eq!(m.upper.tmp.as_deref(), Some("1g"));
    }

    #[test]
    fn upper_conflicts_with_tmp_and_read_only() {
        assert!(Cli::try_parse_from(["ovl", "mount", "--upper", "u", "--tmp", "t"]).is_err());
        assert!(Cli::try_parse_from(["ovl", "mount", "--upper", "u", "--read-only", "t"]).is_err());
        assert!(Cli::try_parse_from([
            "ovl", "run", "--upper", "u", "--keep", "k", "--root", "--", "x"
        ])
        .is_err());
    }

    #[test]
    fn run_takes_the_command_after_dashes() {
        let c = Cli::try_parse_from(["ovl", "run", "--target", "/usr", "--", "sh", "-c", "true"])
            .unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert_eq!(r.command, ["sh", "-c", "true"]);
        assert!(
            Cli::try_parse_from(["ovl", "run", "--", "sh"]).is_err(),
            "target or root"
        );
    }
}
