#!/usr/bin/env bash
# Prints the path of a working Python 3.8 interpreter: the oldest Python the device runtime
# supports (JetPack 5 = Ubuntu 20.04 ships 3.8), used by `make test-py38`. Exit 1 with a message
# that says what to do when there is none.
set -u
ok() { [ -x "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 8)' 2>/dev/null; }
if [ -n "${PYTHON38:-}" ] && ok "$PYTHON38"; then echo "$PYTHON38"; exit 0; fi
if command -v python3.8 >/dev/null 2>&1 && ok "$(command -v python3.8)"; then command -v python3.8; exit 0; fi
if command -v pyenv >/dev/null 2>&1; then
  for p in "$(pyenv root)"/versions/3.8.*/bin/python3.8; do
    if ok "$p"; then echo "$p"; exit 0; fi
  done
fi
for p in /usr/bin/python3.8 /usr/local/bin/python3.8; do
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo "edge-shitu: no Python 3.8 found; install one (e.g. 'pyenv install 3.8') or set PYTHON38=/path/to/python3.8" >&2
exit 1
