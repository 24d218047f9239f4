#!/bin/sh
# Profile one workload of the benchmark on ovl-fuse, and show what the FUSE round trips cost.
#
#   benches/profile.sh [create-untar|stat-walk|copyup-meta|delete-tree|read-small|read-big] [OUT_DIR]
#
# OVL_OPTS adds -o options to every ovl-fuse mount (e.g. OVL_OPTS=metacopy=on), KERNEL_OPTS to
# the kernel overlay's.
#
# Needs root, perf (Debian: linux-perf) and a built benchmark stack (any
# `cargo bench --bench workloads` run builds target/overlay-bench/stack-full). It
#
#   1. counts the FUSE requests the workload sends, by opcode (ovl-fuse -o debug log);
#   2. records the whole system with `perf record -a -g` while the workload runs on a fresh
#      mount and, if inferno is installed (`cargo install inferno`), draws a flame graph;
#   3. times the workload on the kernel overlay and on ovl-fuse with the daemon and the
#      workload on the same CPU, on different CPUs, and unpinned.
#
# Every mount is unmounted on exit, also on errors and Ctrl-C.
set -eu

WORKLOAD=${1:-create-untar}
OUT=${2:-target/overlay-bench/profile}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=${STACK:-$ROOT/target/overlay-bench/stack-full}
BIN=${OVL_FUSE:-$ROOT/target/release/ovl-fuse}

[ "$(id -u)" = 0 ] || { echo "profile.sh: needs root" >&2; exit 1; }
[ -d "$S/lower-bottom" ] || { echo "profile.sh: no stack at $S (run cargo bench --bench workloads first)" >&2; exit 1; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p overlay-fuse)
command -v perf >/dev/null || { echo "profile.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
mkdir -p "$OUT"

case $WORKLOAD in
create-untar) CMD='mkdir "$M/inc" && tar xf "$S/include.tar" -C "$M/inc"' ;;
stat-walk) CMD='find "$M" -printf "%s %i\n" > /dev/null' ;;
copyup-meta) CMD='find "$M/doc" -type f -exec touch -c {} +' ;;
delete-tree) CMD='rm -rf "$M/doc"' ;;
read-small) CMD='tar cf - -C "$M" doc | wc -c > /dev/null' ;;
read-big) CMD='dd if="$M/data/random.bin" of=/dev/null bs=1M status=none' ;;
*) echo "profile.sh: unknown workload $WORKLOAD" >&2; exit 2 ;;
esac

RUN=""
PID=""
KMNT=""
cleanup() {
	if [ -n "$KMNT" ]; then umount "$KMNT" 2>/dev/null || umount -l "$KMNT"; KMNT=""; fi
	if [ -n "$PID" ]; then
		umount "$RUN/mnt" 2>/dev/null || umount -l "$RUN/mnt" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
		PID=""
	fi
	if [ -n "$RUN" ]; then rm -rf "$RUN"; RUN=""; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

fresh() {
	cleanup
	RUN=$(mktemp -d /var/tmp/ovl-profile.XXXXXX)
	mkdir "$RUN/upper" "$RUN/work" "$RUN/mnt"
	M=$RUN/mnt
}

mount_ovl() { # $1: extra -o options (besides $OVL_OPTS)
	fresh
	extra="${OVL_OPTS:-}${OVL_OPTS:+${1:+,}}$1"
	"$BIN" -f -o "lowerdir=$S/lower-top:$S/lower-bottom,upperdir=$RUN/upper,workdir=$RUN/work${extra:+,$extra}" \
		"$M" 2>"$RUN/daemon.log" &
	PID=$!
	i=0
	until grep -q " $M " /proc/mounts; do
		i=$((i + 1)); [ $i -lt 100 ] || { echo "profile.sh: ovl-fuse did not mount" >&2; exit 1; }
		sleep 0.05
	done
}

mount_kernel() {
	fresh
	mount -t overlay overlay -o "lowerdir=$S/lower-top:$S/lower-bottom,upperdir=$RUN/upper,workdir=$RUN/work${KERNEL_OPTS:+,$KERNEL_OPTS}" "$M"
	KMNT=$M
}

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

timed() { # $1: label, $2: taskset prefix for the workload (or empty)
	cold
	t0=$(date +%s.%N)
	$2 sh -c "S='$S' M='$M'; $CMD"
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" -v l="$1" 'BEGIN { printf "%-40s %6.2f s\n", l, b - a }' | tee -a "$OUT/$WORKLOAD.pinning.txt"
}

echo "== 1. FUSE requests of $WORKLOAD, by opcode"
mount_ovl debug
cold
sh -c "S='$S' M='$M'; $CMD"
counts=$(grep -o 'fuser::request: FUSE([ 0-9]*) ino 0x[0-9a-f]* [A-Z_]*' "$RUN/daemon.log" | awk '{print $NF}' | sort | uniq -c | sort -rn)
echo "$counts" | tee "$OUT/$WORKLOAD.requests.txt"
grep -o 'GETXATTR name "[^"]*"' "$RUN/daemon.log" | sort | uniq -c | sort -rn | tee -a "$OUT/$WORKLOAD.requests.txt" || true

echo "== 2. perf record -a -g ($OUT/$WORKLOAD.perf.data)"
mount_ovl ""
cold
perf record -q -F 999 -a -g -o "$OUT/$WORKLOAD.perf.data" -- sh -c "S='$S' M='$M'; $CMD" 2>/dev/null
perf report -i "$OUT/$WORKLOAD.perf.data" --no-children --sort comm -g none 2>/dev/null \
	| grep -v '^#' | grep -v '^$' | head -8 | tee "$OUT/$WORKLOAD.by-command.txt"
if command -v inferno-collapse-perf >/dev/null; then
	perf script -i "$OUT/$WORKLOAD.perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/$WORKLOAD.folded"
	inferno-flamegraph --minwidth 0.2 \
		--title "$WORKLOAD on ovl-fuse, whole system (perf -a -g, 999 Hz)" \
		< "$OUT/$WORKLOAD.folded" > "$OUT/$WORKLOAD.svg"
	awk '{ n = $NF + 0; t += n
	       if ($0 ~ /pv_native_safe_halt|default_idle/) idle += n
	       if ($0 ~ /__wake_up|try_to_wake_up|wake_up_q/) wake += n
	       if ($0 ~ /__schedule|schedule_idle/) sched += n
	       if ($0 ~ /overlay_core::/) eng += n }
	     END { printf "idle %.1f%%, waking a task %.1f%%, in the scheduler %.1f%%, overlay engine %.1f%% of all samples\n",
	           100 * idle / t, 100 * wake / t, 100 * sched / t, 100 * eng / t }' "$OUT/$WORKLOAD.folded" \
		| tee "$OUT/$WORKLOAD.summary.txt"
	echo "flame graph: $OUT/$WORKLOAD.svg"
fi

echo "== 3. where the daemon and the workload run (cold cache each time)"
: > "$OUT/$WORKLOAD.pinning.txt"
mount_kernel
timed "kernel overlay" ""
cleanup
mount_ovl ""
timed "ovl-fuse, unpinned" ""
mount_ovl ""
taskset -apc 0 "$PID" > /dev/null
timed "ovl-fuse, daemon and workload on CPU 0" "taskset -c 0"
if [ "$(nproc)" -gt 1 ]; then
	mount_ovl ""
	taskset -apc 0 "$PID" > /dev/null
	timed "ovl-fuse, daemon on CPU 0, workload on 1" "taskset -c 1"
fi
