#!/usr/bin/env bash
# Build (or reuse) an emulated board: an aarch64 Debian userland in which the device-side tests run
# under qemu-user (scripts/emu_run.sh runs commands in it). EMU_SUITE=bookworm (default: Raspberry Pi
# OS 64-bit, glibc 2.36, Python 3.11, numpy 2, ai-edge-litert) or bullseye (Raspberry Pi OS bullseye /
# JetPack 5 stand-in: glibc 2.31, Python 3.9, numpy 1.x, tflite-runtime 2.13), in build/emu/aarch64-SUITE.
#
#   scripts/emu_rootfs.sh            # idempotent: only what changed is redone (stamp files)
#   EMU_FORCE=1 scripts/emu_rootfs.sh  # rebuild everything
#
# Steps (each timed):
#   1. host tools   mmdebstrap, qemu-user-static, binfmt-support (apt-get, only when missing)
#   2. binfmt       mount binfmt_misc and enable qemu-aarch64 (not automatic in containers)
#   3. rootfs       mmdebstrap --variant=extract: python3 + libstdc++6 + coreutils, ~75 MB, no emulation
#   4. wheels       the HOST pip installs aarch64 wheels into ROOT/opt/site (--platform ...)
#   5. project      edge_shitu + runtimes/ + board_configs/ copied as the package layout of
#                   pyproject.toml ([tool.setuptools]); no converters, no host-arch .so
#
# Needs root (mmdebstrap, mount, chroot). Knobs: EMU_ROOT, EMU_SUITE, EMU_MIRROR, HOST_PY,
# EMU_EXTRA_PACKAGES (more Debian packages), EMU_PIP_EXTRA (more pip requirements).
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="${EMU_SUITE:-bookworm}"
ROOT="${EMU_ROOT:-$PROJECT/build/emu/aarch64-$SUITE}"
MIRROR="${EMU_MIRROR:-http://deb.debian.org/debian}"
HOST_PY="${HOST_PY:-python3}"
# What differs between the boards is the suite's Python, its glibc (which wheels run) and so the
# TFLite runtime; the steps are the same.
case "$SUITE" in
  bookworm)  # Raspberry Pi OS 64-bit, JetPack 6 stand-in: glibc 2.36, Python 3.11
    DEF_PYVER=3.11; DEF_GLIBC=36
    # numpy: the newest 2.x (the device venv's numpy), everything else: the newest aarch64 wheel.
    DEF_REQS=("numpy>=2,<3" "pillow" "typer" "rich" "ai-edge-litert" "tflite-runtime" "pytest" "hypothesis") ;;
  bullseye)  # Raspberry Pi OS bullseye, JetPack 5 stand-in: glibc 2.31, Python 3.9. ai-edge-litert needs
    # glibc 2.34 (no wheel installs), tflite-runtime 2.14 too: pip falls back to 2.13.0, built against NumPy 1.x.
    DEF_PYVER=3.9; DEF_GLIBC=31
    # pytest 9.1 imports typing.TypeAlias (3.10). A host pip of another Python evaluates environment
    # markers with its own version, so the backports pytest/hypothesis/typer need below 3.11 are named.
    DEF_REQS=("numpy<2" "pillow" "typer" "rich" "tflite-runtime" "pytest<9" "hypothesis"
              "exceptiongroup" "tomli" "typing_extensions") ;;
  *) DEF_PYVER=""; DEF_GLIBC=""; DEF_REQS=() ;;
esac
PYVER="${EMU_PYVER:-$DEF_PYVER}"          # the suite's python3
GLIBC_MINOR="${EMU_GLIBC_MINOR:-$DEF_GLIBC}" # the suite's glibc: wheels tagged up to manylinux_2_<this> run
[[ -n "$PYVER" && -n "$GLIBC_MINOR" ]] || { printf 'emu-rootfs: error: unknown EMU_SUITE=%s (bookworm, bullseye; or set EMU_PYVER and EMU_GLIBC_MINOR)\n' "$SUITE" >&2; exit 1; }
PACKAGES="python3,libpython$PYVER-stdlib,libstdc++6,coreutils,libc-bin,fonts-wqy-microhei${EMU_EXTRA_PACKAGES:+,$EMU_EXTRA_PACKAGES}"
REQUIREMENTS=("${DEF_REQS[@]}")
((${#REQUIREMENTS[@]})) || REQUIREMENTS=("numpy<2" "pillow" "typer" "rich" "tflite-runtime" "pytest" "hypothesis")
# shellcheck disable=SC2206
[[ -n "${EMU_PIP_EXTRA:-}" ]] && REQUIREMENTS+=(${EMU_PIP_EXTRA})

log() { printf 'emu-rootfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

[[ "$(id -u)" == 0 ]] || die "needs root (mmdebstrap, binfmt_misc, chroot); run as root or in CI"
T_ALL=$(now)

# Never delete through a mount point (a bind-mounted /dev or assets inside the rootfs).
safe_rm_root() {
  local d="$1"
  [[ -e "$d" ]] || return 0
  if awk -v d="$(realpath "$d")/" '{ if (index($5 "/", d) == 1) found = 1 } END { exit !found }' /proc/self/mountinfo; then
    die "$d has mounts inside it (a running scripts/emu_run.sh?); unmount them first: findmnt -R $d"
  fi
  rm -rf --one-file-system "$d"
}

# ------------------------------------------------------------------ 1. host tools
T=$(now)
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v unshare >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
if ! "$HOST_PY" -m pip --version >/dev/null 2>&1; then
  log "$HOST_PY has no pip; using Debian's python3-pip"
  command -v pip3 >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip >/dev/null; }
  HOST_PY=/usr/bin/python3
fi
# A host interpreter of the board's Python version, to write .pyc files the board can use (the
# magic number is per minor version): HOST_PY itself, else python$PYVER on PATH or under pyenv.
same_ver() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))" 2>/dev/null; }
COMPILE_PY=""
for cand in "$HOST_PY" "$(command -v "python$PYVER" 2>/dev/null)" \
            $(command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)"/versions/"$PYVER".*/bin/python"$PYVER" 2>/dev/null); do
  if [[ -n "$cand" ]] && same_ver "$cand"; then COMPILE_PY="$cand"; break; fi
done
log "host tools: $(took "$T")${COMPILE_PY:+ (bytecode for Python $PYVER: $COMPILE_PY)}"

# ------------------------------------------------------------------ 2. binfmt
T=$(now)
BINFMT=/proc/sys/fs/binfmt_misc
if [[ ! -e $BINFMT/register ]]; then
  mount -t binfmt_misc binfmt_misc $BINFMT || die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?)"
fi
if ! grep -qx enabled $BINFMT/qemu-aarch64 2>/dev/null; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  if ! grep -qx enabled $BINFMT/qemu-aarch64 2>/dev/null; then
    update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  grep -qx enabled $BINFMT/qemu-aarch64 2>/dev/null || die "could not register qemu-aarch64 in $BINFMT"
fi
# Debian registers with the F (fix-binary) flag: the interpreter is opened now, so the rootfs
# does not need its own copy of qemu-aarch64-static.
grep -q '^flags: .*F' $BINFMT/qemu-aarch64 || log "warning: qemu-aarch64 binfmt lacks the F flag; copy qemu-aarch64-static into the rootfs"
log "binfmt: qemu-aarch64 $(sed -n 's/^flags: /flags /p' $BINFMT/qemu-aarch64) ($(took "$T"))"

# One builder at a time (make test-emu and tests/test_emu_host.py may race).
mkdir -p "$(dirname "$ROOT")"
exec 9>"$(dirname "$ROOT")/.lock-$(basename "$ROOT")"
flock 9

# ------------------------------------------------------------------ 3 + 4. rootfs and wheels
# Independent, so they run at the same time: the wheels are staged beside the rootfs and moved
# in at the end; a rootfs rebuild keeps wheels that are still current.
SITE="$ROOT/opt/site"
NP1="$ROOT/opt/site-np1"
STAGE="$(dirname "$ROOT")/.stage-$(basename "$ROOT")"
PLATFORMS=(--platform manylinux2014_aarch64)
for ((v = 17; v <= GLIBC_MINOR; v++)); do PLATFORMS+=(--platform "manylinux_2_${v}_aarch64"); done
# pip does not expand --platform to older glibc tags: list them all (ai-edge-litert 2.x is
# tagged manylinux_2_27 only, tflite-runtime 2.14 manylinux_2_34 only).
# pip resolves best with an interpreter of the board's version (environment markers and Requires-Python
# are judged by the running Python, whatever --python-version says): COMPILE_PY when it has pip.
PIP_PY="$HOST_PY"
if [[ -n "$COMPILE_PY" ]] && "$COMPILE_PY" -m pip --version >/dev/null 2>&1; then PIP_PY="$COMPILE_PY"; fi
# measured: a Python 3.11 pip asked for --python-version 3.9 picked iniconfig 2.3, markdown-it-py 4 and
# typer 0.27, which do not import on 3.9; so a board whose Python differs from the host's needs one
if [[ "$PIP_PY" == "$HOST_PY" ]] && ! same_ver "$HOST_PY"; then
  die "no host Python $PYVER with pip to install the $SUITE board's wheels: install one (pyenv install $PYVER) or set HOST_PY=/path/to/python$PYVER"
fi
PIP=("$PIP_PY" -m pip install -q --no-warn-script-location --no-warn-conflicts --root-user-action=ignore
     --disable-pip-version-check --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYVER"
     --implementation cp --abi "cp${PYVER/./}")
ROOTFS_KEY="suite=$SUITE mirror=$MIRROR packages=$PACKAGES"
WHEELS_KEY="py=$PYVER glibc=2.$GLIBC_MINOR reqs=${REQUIREMENTS[*]} pip-python=$("$PIP_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# tflite-runtime 2.14 (its last release) is compiled against NumPy 1.x and fails with numpy 2
# ("_ARRAY_API not found"): numpy<2 goes into a second folder, put before /opt/site only by
# the test that runs tflite-runtime (EDGE_SHITU_NUMPY1_SITE).
NP1_KEY="py=$PYVER glibc=2.$GLIBC_MINOR numpy<2"
stale() { [[ "${EMU_FORCE:-0}" == 1 || "$(cat "$1" 2>/dev/null)" != "$2" ]]; }

# pip_job NAME DEST KEY ARGS...: install into $STAGE/NAME in the background (log in $STAGE/NAME.log)
JOBS=()
pip_job() {
  local name="$1" key="$2"; shift 2
  rm -rf --one-file-system "${STAGE:?}/$name"
  mkdir -p "$STAGE"
  (
    t=$(now)
    rc=0
    "${PIP[@]}" --target "$STAGE/$name" "$@" >"$STAGE/$name.log" 2>&1 || rc=$?
    grep -v "^WARNING: Location '" "$STAGE/$name.log" >&2 || true
    ((rc == 0)) || { log "error: pip could not install the aarch64 wheels for /opt/$name: $*"; exit 1; }
    rm -rf "$STAGE/$name/bin"   # console scripts with the host interpreter's shebang
    echo "$key" >"$STAGE/$name/.stamp-wheels"
    log "wheels: /opt/$name: $(cd "$STAGE/$name" && ls -d ./*.dist-info | sed 's|^\./||; s|\.dist-info$||' | tr '\n' ' ')"
    log "wheels: /opt/$name installed, $(du -sm "$STAGE/$name" | cut -f1) MB ($(took "$t"))"
  ) &
  JOBS+=("$!:$name")
}
kill_jobs() { local job; for job in "${JOBS[@]+"${JOBS[@]}"}"; do kill "${job%%:*}" 2>/dev/null || true; done; }
trap kill_jobs EXIT
stale "$SITE/.stamp-wheels" "$WHEELS_KEY" && { log "installing aarch64 wheels with the host pip: ${REQUIREMENTS[*]}"; pip_job site "$WHEELS_KEY" "${REQUIREMENTS[@]}"; }
if [[ " ${REQUIREMENTS[*]} " == *" numpy>=2"* ]]; then
  stale "$NP1/.stamp-wheels" "$NP1_KEY" && pip_job site-np1 "$NP1_KEY" --no-deps "numpy<2"
fi

T=$(now)
if [[ ! -x "$ROOT/usr/bin/python3" ]] || stale "$ROOT/.stamp-rootfs" "$ROOTFS_KEY"; then
  log "building $ROOT ($SUITE arm64: $PACKAGES)"
  safe_rm_root "$ROOT.tmp"
  mmdebstrap --quiet --variant=extract --arch=arm64 --include="$PACKAGES" "$SUITE" "$ROOT.tmp" "$MIRROR" \
    || die "mmdebstrap failed (is $MIRROR reachable?)"
  # what a login would have: an /etc/passwd for getpass/pytest, mount points for emu_run.sh
  [[ -s "$ROOT.tmp/etc/passwd" ]] || printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT.tmp/etc/passwd"
  [[ -s "$ROOT.tmp/etc/group" ]] || printf 'root:x:0:\n' >"$ROOT.tmp/etc/group"
  mkdir -p "$ROOT.tmp"/{proc,sys,dev,tmp,root,work/tests,assets,opt/native}
  touch "$ROOT.tmp/work/pyproject.toml"
  chmod 1777 "$ROOT.tmp/tmp"
  rm -rf "$ROOT.tmp/var/cache/apt/archives/"*.deb
  # Debian byte-compiles the stdlib in postinst, which --variant=extract never runs: without
  # .pyc files every emulated start compiles what it imports (pytest + numpy: +7 s under qemu).
  # A host Python of the board's version compiles (same .pyc magic: $COMPILE_PY), else the board.
  if [[ -n "$COMPILE_PY" ]]; then
    "$COMPILE_PY" -m compileall -q -j0 "$ROOT.tmp/usr/lib/python$PYVER" >/dev/null 2>&1 || true
  else
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin QEMU_CPU=cortex-a72 chroot "$ROOT.tmp" /usr/bin/python3 -m compileall \
      -q "/usr/lib/python$PYVER" >/dev/null 2>&1 || true
  fi
  # quick check through binfmt before the rootfs is accepted: catches a broken registration at once
  out=$(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin QEMU_CPU=cortex-a72 chroot "$ROOT.tmp" /usr/bin/python3 -c \
        'import platform, sys; print(platform.machine(), "python", sys.version.split()[0])') \
    || die "the aarch64 python3 does not start under qemu (binfmt?)"
  echo "$ROOTFS_KEY" >"$ROOT.tmp/.stamp-rootfs"
  for keep in site site-np1; do  # wheels that are still current survive the rebuild
    [[ -d "$ROOT/opt/$keep" ]] && mv "$ROOT/opt/$keep" "$ROOT.tmp/opt/$keep"
  done
  safe_rm_root "$ROOT"
  mv "$ROOT.tmp" "$ROOT"
  log "rootfs: built, $(du -sm --exclude="$ROOT/opt" "$ROOT" | cut -f1) MB, $out ($(took "$T"))"
else
  log "rootfs: up to date ($(took "$T"))"
fi

for job in "${JOBS[@]+"${JOBS[@]}"}"; do
  wait "${job%%:*}" || die "installing the wheels for /opt/${job#*:} failed (see above)"
  rm -rf --one-file-system "$ROOT/opt/${job#*:}"
  mv "$STAGE/${job#*:}" "$ROOT/opt/${job#*:}"
  # pip compiled with HOST_PY's version; the board needs its own .pyc (else numpy and pytest are
  # compiled in memory at every emulated start)
  if [[ -n "$COMPILE_PY" && "$COMPILE_PY" != "$PIP_PY" ]]; then
    "$COMPILE_PY" -m compileall -q -j0 "$ROOT/opt/${job#*:}" >/dev/null 2>&1 || true
  fi
done
((${#JOBS[@]})) || log "wheels: up to date"
rm -rf --one-file-system "$STAGE"

# ------------------------------------------------------------------ 5. the project
T=$(now)
# Layout of pyproject.toml [tool.setuptools]: edge_shitu/, runtimes/ -> edge_shitu/runtimes,
# board_configs/ -> edge_shitu/board_configs. Not converters/ (the host-only conversion stack)
# and not runtimes/lib/*.so (built for the host's architecture).
cd "$PROJECT"
PROJECT_KEY=$( (find edge_shitu runtimes board_configs pyproject.toml -type f \
                  \( -name '*.py' -o -name '*.json' -o -name '*.c' -o -name '*.h' -o -name '*.toml' \) \
                  -not -path '*/__pycache__/*' -not -path 'runtimes/lib/*' -print0 | sort -z | xargs -0 sha256sum
                echo "$WHEELS_KEY") | sha256sum | cut -c1-16)
if [[ "${EMU_FORCE:-0}" == 1 || "$(cat "$SITE/.stamp-project" 2>/dev/null)" != "$PROJECT_KEY" ]]; then
  PKG="$SITE/edge_shitu"
  rm -rf --one-file-system "$PKG" "$SITE"/edge_shitu-*.dist-info
  mkdir -p "$PKG"
  copy_tree() {  # copy_tree SRC DST: the package's files only
    (cd "$1" && find . -type f \( -name '*.py' -o -name '*.json' -o -name '*.c' -o -name '*.h' \) \
        -not -path '*/__pycache__/*' -not -path './lib/*' -print0 | tar --null -T - -cf -) \
      | tar -C "$2" -xf -
  }
  copy_tree edge_shitu "$PKG"
  mkdir -p "$PKG/runtimes" "$PKG/board_configs"
  copy_tree runtimes "$PKG/runtimes"
  copy_tree board_configs "$PKG/board_configs"
  version=$("$HOST_PY" -c 'import re,sys; print(re.search(r"^version\s*=\s*\"([^\"]+)\"", open(sys.argv[1]).read(), re.M).group(1))' pyproject.toml)
  mkdir -p "$SITE/edge_shitu-$version.dist-info"
  printf 'Metadata-Version: 2.1\nName: edge-shitu\nVersion: %s\n' "$version" >"$SITE/edge_shitu-$version.dist-info/METADATA"
  printf 'emu_rootfs.sh\n' >"$SITE/edge_shitu-$version.dist-info/INSTALLER"
  # bytecode now, with the host interpreter when it is the board's version (same .pyc magic),
  # so the emulated board does not compile on every run
  if [[ -n "$COMPILE_PY" ]]; then
    "$COMPILE_PY" -m compileall -q "$PKG" >/dev/null || true
  fi
  echo "$PROJECT_KEY" >"$SITE/.stamp-project"
  log "project: installed edge_shitu $version ($(find "$PKG" -name '*.py' | wc -l) modules, $(took "$T"))"
else
  log "project: up to date ($(took "$T"))"
fi

log "ready: $ROOT (total $(took "$T_ALL"))"
