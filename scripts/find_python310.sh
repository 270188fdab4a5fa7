#!/usr/bin/env bash
# Prints the path of a working Python 3.10 interpreter (Paddle Lite's converter has no
# wheels for 3.11+). Exit 1 with a message that says what to do when there is none.
set -u
if [ -n "${PYTHON310:-}" ] && "$PYTHON310" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
  echo "$PYTHON310"; exit 0
fi
if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
  command -v python3.10; exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for p in "$root"/versions/3.10.*/bin/python3.10; do
    if [ -x "$p" ] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      echo "$p"; exit 0
    fi
  done
fi
for p in /usr/bin/python3.10 /usr/local/bin/python3.10; do
  if [ -x "$p" ]; then echo "$p"; exit 0; fi
done
echo "edge-shitu: no Python 3.10 found; install one (e.g. 'pyenv install 3.10' or your distribution's python3.10) or set PYTHON310=/path/to/python3.10" >&2
exit 1
