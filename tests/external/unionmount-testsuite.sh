#!/usr/bin/env bash
# Run the unionmount-testsuite (https://github.com/amir73il/unionmount-testsuite, GPL; not
# part of this repository) against ovl-fuse, in the modes its README describes, and against
# the kernel overlay for comparison. Needs root.
#
#   tests/external/unionmount-testsuite.sh /path/to/unionmount-testsuite [SCRATCH]
#
# The suite mounts with `mount -t fuse.ovl-fuse`, which runs mount.fuse3 (Debian fuse3),
# which runs `ovl-fuse` from a sanitized PATH: the script links target/release/ovl-fuse as
# /usr/local/bin/ovl-fuse for the run (unless one is installed there) and removes the link
# afterwards. SCRATCH (default: a new directory under /var/tmp, on the disk) holds the
# layers and the mount point; the logs go to a directory beside it (printed).
#
# Directory renames: ovl-fuse follows the kernel's default here (`redirect_dir` off unless
# asked: EXDEV, as the kernel and fuse-overlayfs answer), while the suite expects renames
# to work on FUSE. So each mode runs with `UNIONMOUNT_MNTOPTIONS=redirect_dir=on`, or with
# `--xdev` (rename tests skipped), as the suite's own help says.
#
# Not run: `--ovov` (the suite refuses it with --fuse), and `--squashfs`: its first test
# passes (open-plain, lower files of a squashfs without ACLs), but the suite unmounts the
# lower image right after the FUSE mount, and a FUSE umount(2) returns before the daemon
# has closed its descriptors on the lower layers (the kernel sends FUSE_DESTROY only to
# fuseblk mounts), so that umount fails with EBUSY; fuse-overlayfs is in the same place.
set -euo pipefail

suite=${1:?usage: $0 UNIONMOUNT_TESTSUITE_DIR [SCRATCH]}
suite=$(cd "$suite" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
scratch=${2:-$(mktemp -d /var/tmp/ovl-unionmount.XXXXXX)}
mkdir -p "$scratch"
# Its impermissible-operation tests run as another user, who must reach the layers.
chmod 755 "$scratch"
# The suite empties its base directory before each test: the logs go beside it.
logs=$(mktemp -d /var/tmp/ovl-unionmount-logs.XXXXXX)

(cd "$repo" && cargo build --release -p overlay-fuse --bin ovl-fuse)
linked=
if [ ! -e /usr/local/bin/ovl-fuse ]; then
    ln -s "$repo/target/release/ovl-fuse" /usr/local/bin/ovl-fuse
    linked=1
fi
# Whatever the suite left mounted below the scratch directory (the union, and the tmpfs
# layers of --maxfs), deepest first.
unmount_all() {
    local p
    for p in $(awk -v s="$scratch/" 'index($2, s) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$p" 2>/dev/null || umount -l "$p"
    done
}
cleanup() {
    unmount_all
    if [ -n "$linked" ]; then rm -f /usr/local/bin/ovl-fuse; fi
}
trap cleanup EXIT

echo "logs: $logs"
failed=0
run() {
    local name=$1
    shift
    local log="$logs/$name.log"
    if (cd "$suite" && env UNIONMOUNT_BASEDIR="$scratch" "$@" >"$log" 2>&1); then
        echo "ok      $name ($(grep -ac '^TEST' "$log") checks): $*"
    else
        echo "FAILED  $name: $* (log: $log)"
        tail -5 "$log" | sed 's/^/        /'
        failed=1
    fi
    unmount_all
}

run kernel ./run --ov=10 --samefs
run fuse-xdev ./run --ov --fuse=ovl-fuse --samefs --xdev
run fuse-redirect UNIONMOUNT_MNTOPTIONS=redirect_dir=on ./run --ov --fuse=ovl-fuse --samefs
run fuse-rotate UNIONMOUNT_MNTOPTIONS=redirect_dir=on ./run --ov=10 --fuse=ovl-fuse --samefs
run fuse-metacopy UNIONMOUNT_MNTOPTIONS=redirect_dir=on,metacopy=on ./run --ov=10 --fuse=ovl-fuse --samefs
run fuse-maxfs UNIONMOUNT_MNTOPTIONS=redirect_dir=on ./run --ov=4 --fuse=ovl-fuse --maxfs=2
# --verify checks hard links and inode numbers across copy-up, which needs index=on.
run fuse-index UNIONMOUNT_MNTOPTIONS=redirect_dir=on,index=on ./run --ov=10 --fuse=ovl-fuse --samefs --verify
run fuse-index-maxfs UNIONMOUNT_MNTOPTIONS=redirect_dir=on,index=on ./run --ov=4 --fuse=ovl-fuse --maxfs=2 --verify
run fuse-all UNIONMOUNT_MNTOPTIONS=redirect_dir=on,metacopy=on,index=on ./run --ov=10 --fuse=ovl-fuse --samefs --verify
exit $failed
