//! The workloads: shell commands run against the mount point `$M`.
//!
//! Every workload has a timed `run` script and an untimed `check` script. Their output (counts
//! and sizes, never timings or inode numbers) forms a fingerprint that must equal the kernel
//! overlay's in the same benchmark, so that a backend cannot look fast by doing the wrong thing.
//!
//! Environment of the scripts: `M` mount point, `B` the stack directory (holds
//! `include.tar`), `WRITE_MIB` size for write-big, `SMALL_FILES` count for small-write-read.

/// One workload of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// `find MNT -printf '%s %i\n'` over the whole merged tree.
    StatWalk,
    /// List the merged 20k-entry directory.
    ReaddirBig,
    /// tar the doc tree to a pipe.
    ReadSmall,
    /// Sequential read of the 1 GiB file.
    ReadBig,
    /// `touch -c` every file of the doc tree: a metadata change (utimensat, no open) of many
    /// small lower files, i.e. a copy-up of each (metadata only with `metacopy=on`).
    CopyupMeta,
    /// Append one byte to the 1 GiB lower file (copy-up of a big file).
    CopyupBig,
    /// Untar /usr/include into the mount.
    CreateUntar,
    /// `rm -rf` of the lower doc tree (whiteouts).
    DeleteTree,
    /// Write 512 MiB and fsync.
    WriteBig,
    /// Write small files, then read them back.
    SmallWriteRead,
}

impl Workload {
    /// Every workload, in table order.
    pub const ALL: [Workload; 10] = [
        Workload::StatWalk,
        Workload::ReaddirBig,
        Workload::ReadSmall,
        Workload::ReadBig,
        Workload::CopyupMeta,
        Workload::CopyupBig,
        Workload::CreateUntar,
        Workload::DeleteTree,
        Workload::WriteBig,
        Workload::SmallWriteRead,
    ];

    /// Command-line and table name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::StatWalk => "stat-walk",
            Workload::ReaddirBig => "readdir-big",
            Workload::ReadSmall => "read-small",
            Workload::ReadBig => "read-big",
            Workload::CopyupMeta => "copyup-meta",
            Workload::CopyupBig => "copyup-big",
            Workload::CreateUntar => "create-untar",
            Workload::DeleteTree => "delete-tree",
            Workload::WriteBig => "write-big",
            Workload::SmallWriteRead => "small-write-read",
        }
    }

    /// Parse a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// What the workload does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Workload::StatWalk => "`find $M -printf '%s %i\\n'` over the whole tree",
            Workload::ReaddirBig => "`ls -f` of the merged 20k-entry directory",
            Workload::ReadSmall => "`tar cf - doc | wc -c` (GNU tar skips reading for /dev/null)",
            Workload::ReadBig => "`dd bs=1M` of the 1 GiB lower file to /dev/null",
            Workload::CopyupMeta => {
                "`touch -c` every file of the doc tree (utimensat: copy-up, metadata only with metacopy=on)"
            }
            Workload::CopyupBig => "append one byte to the 1 GiB lower file (copy-up)",
            Workload::CreateUntar => "untar a tarball of /usr/include into the mount",
            Workload::DeleteTree => "`rm -rf` the lower doc tree (whiteouts)",
            Workload::WriteBig => "`dd bs=1M conv=fsync` of 512 MiB into a new file",
            Workload::SmallWriteRead => "write 2000 small files, then `cat` them back",
        }
    }

    /// The timed script.
    pub fn run_script(self) -> &'static str {
        match self {
            Workload::StatWalk => r#"find "$M" -printf '%s %i\n' | wc -l"#,
            Workload::ReaddirBig => r#"ls -f "$M/big" | wc -l"#,
            Workload::ReadSmall => r#"tar cf - -C "$M" doc | wc -c"#,
            Workload::ReadBig => r#"dd if="$M/data/random.bin" of=/dev/null bs=1M status=none"#,
            // `-c`: utimensat on the name. A plain `touch` opens each file for writing, which
            // copies its data up under every setting (kernel `metacopy=on` included).
            Workload::CopyupMeta => r#"find "$M/doc" -type f -exec touch -c {} +"#,
            Workload::CopyupBig => r#"printf x >> "$M/data/random.bin""#,
            Workload::CreateUntar => r#"mkdir "$M/inc" && tar xf "$B/include.tar" -C "$M/inc""#,
            Workload::DeleteTree => r#"rm -rf "$M/doc""#,
            Workload::WriteBig => {
                r#"dd if=/dev/zero of="$M/write.bin" bs=1M count="$WRITE_MIB" conv=fsync status=none"#
            }
            Workload::SmallWriteRead => {
                r#"mkdir "$M/sw" && i=0 && while [ $i -lt "$SMALL_FILES" ]; do i=$((i+1)); echo "small file number $i" > "$M/sw/f$i" || exit 1; done && cat "$M"/sw/* | wc -c"#
            }
        }
    }

    /// The untimed check script; its output joins the fingerprint.
    pub fn check_script(self) -> Option<&'static str> {
        match self {
            Workload::StatWalk | Workload::ReaddirBig | Workload::ReadSmall => None,
            Workload::SmallWriteRead => Some(r#"ls "$M/sw" | wc -l"#),
            Workload::ReadBig | Workload::CopyupBig => Some(r#"stat -c %s "$M/data/random.bin""#),
            Workload::CopyupMeta => Some(r#"find "$M/doc" -type f -mmin -1440 | wc -l"#),
            Workload::CreateUntar => Some(r#"find "$M/inc" | wc -l"#),
            Workload::DeleteTree => Some(r#"ls -A "$M" | tr '\n' ' '"#),
            Workload::WriteBig => Some(r#"stat -c %s "$M/write.bin""#),
        }
    }

    /// The upper bound of `ovl-root / kernel` the project aims for, if any.
    pub fn root_target(self) -> Option<f64> {
        match self {
            Workload::StatWalk | Workload::ReaddirBig | Workload::ReadSmall => Some(2.0),
            // Issue 14: read-big within 1.2x (with passthrough of lower files).
            Workload::ReadBig => Some(1.2),
            Workload::WriteBig => Some(1.1),
            Workload::DeleteTree => Some(3.0),
            Workload::CopyupBig => Some(0.5),
            Workload::CreateUntar => Some(1.2),
            Workload::CopyupMeta => Some(0.5),
            Workload::SmallWriteRead => None,
        }
    }

    /// The upper bound of `ovl-rootless / kernel`, if any.
    pub fn rootless_target(self) -> Option<f64> {
        match self {
            Workload::ReadBig => Some(3.0),
            _ => None,
        }
    }
}

/// The upper bound of the geometric mean of `ovl-root / kernel` over all workloads.
pub const ROOT_GEOMEAN_TARGET: f64 = 1.5;

/// The daemon RSS bound after a stat-walk over 1M entries, in MiB.
pub const MEM_TARGET_MIB: f64 = 200.0;
