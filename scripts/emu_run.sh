#!/usr/bin/env bash
# Run a command inside the emulated Raspberry Pi (aarch64 bookworm rootfs from
# scripts/emu_rootfs.sh) under qemu-user, e.g.
#
#   scripts/emu_run.sh python3 -c 'import platform; print(platform.machine())'
#   scripts/emu_run.sh python3 -m pytest -q -p no:cacheprovider tests/test_emu_board.py
#
# Options (before the command):
#   -v HOST:GUEST[:rw]  bind-mount HOST at GUEST inside (read-only unless :rw)
#   -e NAME=VALUE       set a variable inside
#   -C DIR              working directory inside (default /work)
#
# Inside: the project's tests/ at /work/tests and pyproject.toml at /work/pyproject.toml
# (read-only; the package itself comes from /opt/site, never from the checkout), the shared
# assets at /assets (read-only, EDGE_SHITU_ASSETS=/assets), a fresh tmpfs at /tmp, /proc,
# /sys read-only, an aarch64 /proc/cpuinfo (see below), PYTHONPATH=/opt/site,
# QEMU_CPU=cortex-a72 (a Pi 4).
#
# Everything runs in a private mount namespace (unshare -m), so concurrent runs do not see each
# other's mounts and nothing leaks to the host even on SIGKILL; the mounts are also undone by
# an EXIT trap, on failure too.
#
# Knobs: EMU_SUITE (bookworm | bullseye: the board, default rootfs build/emu/aarch64-SUITE), EMU_ROOT, EMU_CPU (cortex-a72; cortex-a53 for a Pi 3, cortex-a57 for a Jetson Nano),
# EMU_MOUNT_SYS=0, EMU_BLAS_THREADS (OPENBLAS_NUM_THREADS inside, default 1), EMU_HAMMING_LIB (HOST path of an aarch64 libeshamming.so; it is mounted at
# /opt/native and EDGE_SHITU_HAMMING_LIB points at it; default:
# build/aarch64-linux-gnu/libeshamming.so when it exists, EMU_HAMMING_LIB= for none),
# EDGE_SHITU_ASSETS (host assets, default ../shared/assets), EMU_TESTS_DIR (host tests dir).
# Passed through when set on the host: EDGE_SHITU_KERNEL, CI.
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="${EMU_SUITE:-bookworm}"  # which emulated board: bookworm (default) or bullseye (scripts/emu_rootfs.sh)
ROOT="${EMU_ROOT:-$PROJECT/build/emu/aarch64-$SUITE}"
CPU="${EMU_CPU:-cortex-a72}"

log() { printf 'emu-run: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 125; }

[[ "$(id -u)" == 0 ]] || die "needs root (mount, chroot)"
[[ -x "$ROOT/usr/bin/python3" && -f "$ROOT/opt/site/.stamp-project" ]] \
  || die "no emulated rootfs at $ROOT; run scripts/emu_rootfs.sh (or make emu-rootfs) first"

# A private mount namespace: re-exec once inside it.
if [[ -z "${_EMU_RUN_NS:-}" ]]; then
  if unshare --mount --propagation private true 2>/dev/null; then
    exec unshare --mount --propagation private env _EMU_RUN_NS=1 bash "$0" "$@"
  fi
  log "warning: unshare -m not available; mounting in the host namespace (EXIT trap unmounts)"
  export _EMU_RUN_NS=host
fi

MOUNTS=()  # guest paths mounted, in order
MOUNTS_REQ=()
EXTRA_ENV=()
CWD=/work
while (($#)); do
  case "$1" in
    -v) [[ $# -ge 2 ]] || die "-v needs HOST:GUEST[:rw]"; MOUNTS_REQ+=("$2"); shift 2 ;;
    -e) [[ $# -ge 2 && "$2" == *=* ]] || die "-e needs NAME=VALUE"; EXTRA_ENV+=("$2"); shift 2 ;;
    -C) [[ $# -ge 2 ]] || die "-C needs a directory"; CWD="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
(($#)) || die "no command given (see --help)"

cleanup() {
  local rc=$? i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "$ROOT${MOUNTS[i]}" 2>/dev/null || umount -l "$ROOT${MOUNTS[i]}" 2>/dev/null \
      || log "warning: could not unmount $ROOT${MOUNTS[i]}"
  done
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# mnt TYPE SRC GUEST [ro]: mount and remember (for the trap)
mnt() {
  local kind="$1" src="$2" guest="$3" ro="${4:-}" target="$ROOT$3"
  if [[ -d "$src" || "$kind" != bind ]]; then mkdir -p "$target"; else [[ -e "$target" ]] || { mkdir -p "$(dirname "$target")"; touch "$target"; }; fi
  case "$kind" in
    bind) mount --bind "$src" "$target" ;;
    *) mount -t "$kind" "$src" "$target" ${ro:+-o "$ro"} ;;
  esac
  MOUNTS+=("$guest")
  if [[ "$kind" == bind && "$ro" == ro ]]; then mount -o remount,bind,ro "$target"; fi
}

# binfmt is lost when the machine restarts; emu_rootfs.sh registers it, repair it here too
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 is not registered in binfmt_misc; run scripts/emu_rootfs.sh"
fi

mnt proc proc /proc
if [[ "${EMU_MOUNT_SYS:-1}" == 1 ]]; then mnt bind /sys /sys ro; fi
mnt tmpfs tmpfs /tmp mode=1777
# qemu 7.2 does not emulate /proc/cpuinfo for aarch64: the guest would read the host's x86
# one, and LiteRT's cpuinfo library, finding no ARM core in it next to the cores listed in
# /sys, segfaults. Show what a Pi shows: one "CPU part" stanza per core of the emulated CPU.
case "$CPU" in
  cortex-a53) part=0xd03 ;; cortex-a57) part=0xd07 ;; cortex-a76) part=0xd0b ;; *) part=0xd08 ;;  # A72
esac
mkdir -p "$ROOT/tmp/.emu"
for ((i = 0; i < $(getconf _NPROCESSORS_CONF); i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$i" "$part"
done >"$ROOT/tmp/.emu/cpuinfo"
printf 'Hardware\t: BCM2835\nModel\t\t: edge-shitu emulated board (qemu-aarch64 -cpu %s)\n' "$CPU" >>"$ROOT/tmp/.emu/cpuinfo"
mnt bind "$ROOT/tmp/.emu/cpuinfo" /proc/cpuinfo ro
mnt tmpfs tmpfs /dev/shm mode=1777
mnt bind "${EMU_TESTS_DIR:-$PROJECT/tests}" /work/tests ro
mnt bind "$PROJECT/pyproject.toml" /work/pyproject.toml ro

ENVV=(PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root USER=root LOGNAME=root
      LANG=C.UTF-8 PYTHONUTF8=1 PYTHONPATH=/opt/site PYTHONDONTWRITEBYTECODE=1 TMPDIR=/tmp
      HYPOTHESIS_STORAGE_DIRECTORY=/tmp/.hypothesis QEMU_CPU="$CPU" EDGE_SHITU_EMU="aarch64 $CPU"
      EDGE_SHITU_EMU_SUITE="$(sed -n 's/^suite=\([^ ]*\).*/\1/p' "$ROOT/.stamp-rootfs" 2>/dev/null)"
      OPENBLAS_NUM_THREADS="${EMU_BLAS_THREADS:-1}")
# OPENBLAS_NUM_THREADS=1: OpenBLAS's worker threads spin while they wait, and spinning under
# qemu on a busy 2-core host made an ITQ fit 1.8x slower (161 s vs 90 s); -e overrides it.
# numpy<2 for tflite-runtime (built against NumPy 1.x), used by tests/test_emu_board.py only
[[ -d "$ROOT/opt/site-np1/numpy" ]] && ENVV+=(EDGE_SHITU_NUMPY1_SITE=/opt/site-np1)

ASSETS="${EDGE_SHITU_ASSETS:-$PROJECT/../shared/assets}"
if [[ -d "$ASSETS" ]]; then
  mnt bind "$(cd "$ASSETS" && pwd)" /assets ro
  ENVV+=(EDGE_SHITU_ASSETS=/assets)
else
  ENVV+=(EDGE_SHITU_ASSETS=/nonexistent-assets)  # tests skip, saying why
fi

# The native Hamming kernel cross-built for aarch64 (make cross-aarch64), when there is one.
LIB="${EMU_HAMMING_LIB-$PROJECT/build/aarch64-linux-gnu/libeshamming.so}"
if [[ -n "$LIB" && -f "$LIB" ]]; then
  # e_machine at byte 18: 0xB7 = aarch64; refuse the host's x86-64 library
  if [[ "$(od -An -tx2 -j18 -N2 "$LIB" | tr -d ' ')" != 00b7 ]]; then
    die "EMU_HAMMING_LIB=$LIB is not an aarch64 ELF library"
  fi
  mnt bind "$(cd "$(dirname "$LIB")" && pwd)" /opt/native ro
  ENVV+=(EDGE_SHITU_HAMMING_LIB="/opt/native/$(basename "$LIB")")
elif [[ -n "$LIB" && -n "${EMU_HAMMING_LIB:-}" ]]; then
  die "EMU_HAMMING_LIB=$LIB does not exist (make cross-aarch64?)"
fi

for spec in "${MOUNTS_REQ[@]+"${MOUNTS_REQ[@]}"}"; do
  IFS=: read -r host guest mode <<<"$spec"
  [[ -e "$host" && "$guest" == /* ]] || die "-v $spec: HOST must exist and GUEST be absolute"
  [[ -z "$mode" || "$mode" == rw || "$mode" == ro ]] || die "-v $spec: mode must be rw or ro"
  mnt bind "$(realpath "$host")" "$guest" "$([[ "$mode" == rw ]] || echo ro)"
done

for name in EDGE_SHITU_KERNEL CI; do
  [[ -n "${!name:-}" ]] && ENVV+=("$name=${!name}")
done
ENVV+=("${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}")

start=$(date +%s.%N)
rc=0
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin QEMU_CPU="$CPU" \
  chroot "$ROOT" /usr/bin/env -i --chdir="$CWD" "${ENVV[@]}" "$@" || rc=$?
log "exit $rc after $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (qemu-aarch64, -cpu $CPU)"
exit $rc
