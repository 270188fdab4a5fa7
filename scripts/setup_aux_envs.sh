#!/usr/bin/env bash
# Creates the auxiliary conversion environments for model inputs that the main .venv cannot read
# (docs/model-inputs.md). Each conflicts with the pinned 2.6 conversion set, so each lives apart and
# is only ever run as a child process:
#
#   build/aux/x2paddle   pip --target dir: x2paddle 1.6.0 + onnx 1.15.0 (x2paddle imports onnx.mapping,
#                        gone in onnx >= 1.16). Used as PYTHONPATH by .venv's interpreter, whose
#                        paddlepaddle 2.6.2 x2paddle needs. --no-deps: numpy/protobuf/paddle come from
#                        .venv and must not be shadowed by other copies.
#   .venv-paddle3        Python 3.10 venv: paddlepaddle 3.3.1 + paddle2onnx 2.1.0 (Paddle 3 / PIR ->
#                        ONNX, and the Paddle 3 reference), onnxruntime, onnx-graphsurgeon from PyPI
#                        (paddle2onnx's default optimizer would otherwise pip-install it at run time
#                        from a non-PyPI index).
#
# Idempotent: each environment has a stamp file holding the spec it was built from; a matching
# stamp means nothing to do. Prints one line per environment saying what it did.
# Environment: VENV (default .venv), AUX_DIR (build/aux), VENV_PADDLE3 (.venv-paddle3), PYTHON310.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
AUX_DIR=${AUX_DIR:-build/aux}
VENV_PADDLE3=${VENV_PADDLE3:-.venv-paddle3}
X2P_SPEC="x2paddle==1.6.0 onnx==1.15.0"
P3_SPEC="paddlepaddle==3.3.1 paddle2onnx==2.1.0 onnxruntime==1.23.2 onnx-graphsurgeon==0.6.1 numpy<2"

if [ ! -x "$VENV/bin/python" ]; then
  echo "edge-shitu: $VENV/bin/python not found: run 'make setup' first (x2paddle runs on its paddle 2.6.2)" >&2
  exit 1
fi

t0=$SECONDS
# ---------------------------------------------------------------- x2paddle (pip --target, no deps)
x2p_dir="$AUX_DIR/x2paddle"
x2p_stamp="$x2p_dir/.stamp"
if [ -f "$x2p_stamp" ] && [ "$(cat "$x2p_stamp")" = "$X2P_SPEC" ]; then
  echo "aux-envs: $x2p_dir up to date ($X2P_SPEC)"
else
  t=$SECONDS
  tmp="$x2p_dir.tmp.$$"
  rm -rf "$tmp"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$tmp" $X2P_SPEC
  # the import check runs the way from_onnx.py will: .venv's interpreter, the dir first on the path
  PYTHONPATH="$tmp" "$VENV/bin/python" -c \
    'import onnx, x2paddle.convert; assert onnx.__version__ == "1.15.0", onnx.__version__' >/dev/null
  echo "$X2P_SPEC" > "$tmp/.stamp"
  rm -rf "$x2p_dir"
  mkdir -p "$AUX_DIR"
  mv "$tmp" "$x2p_dir"
  echo "aux-envs: installed $X2P_SPEC into $x2p_dir ($((SECONDS - t)) s)"
fi

# ---------------------------------------------------------------- Paddle 3 venv
p3_stamp="$VENV_PADDLE3/.aux-stamp"
if [ -f "$p3_stamp" ] && [ "$(cat "$p3_stamp")" = "$P3_SPEC" ]; then
  echo "aux-envs: $VENV_PADDLE3 up to date ($P3_SPEC)"
else
  t=$SECONDS
  py310=$(scripts/find_python310.sh)
  [ -x "$VENV_PADDLE3/bin/python" ] || "$py310" -m venv "$VENV_PADDLE3"
  "$VENV_PADDLE3/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip<25" "setuptools<81"
  # shellcheck disable=SC2086
  "$VENV_PADDLE3/bin/python" -m pip install -q --disable-pip-version-check $P3_SPEC
  "$VENV_PADDLE3/bin/python" -c 'import paddle, paddle2onnx, onnxruntime
assert paddle.__version__.startswith("3."), paddle.__version__' >/dev/null 2>&1
  echo "$P3_SPEC" > "$p3_stamp"
  echo "aux-envs: created $VENV_PADDLE3 with $P3_SPEC ($((SECONDS - t)) s)"
fi
echo "aux-envs: done in $((SECONDS - t0)) s"
