#!/usr/bin/env bash
# Coverage-guided fuzzing of the index readers (issue 13), bounded in time:
#   1. the C reader + kernel with libFuzzer + AddressSanitizer/UBSan (fuzz/esindex_fuzz.c),
#   2. the Python reader + numpy search with atheris (fuzz/fuzz_index_py.py).
# usage: fuzz/run.sh C_SECONDS PY_SECONDS   (make fuzz: 60 + 20; make fuzz-long: 600 + 120)
# The corpus grows in build/fuzz/ (kept between runs, never committed); seeds are generated
# from tests/golden_files.py. A crash is kept in fuzz/regressions/ as hex text (fuzz/regressions.py;
# replayed by tests/test_fuzz_regressions.py) and fails the run. Without clang's libFuzzer runtime
# (Debian: libclang-rt-14-dev), or atheris for the Python side, that half is skipped, saying why.
set -uo pipefail
c_secs=${1:-60}
py_secs=${2:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PY:-.venv/bin/python}
out=build/fuzz
mkdir -p "$out/seeds" "$out/corpus" "$out/py-corpus" "$out/artifacts" fuzz/regressions
"$py" fuzz/make_seeds.py "$out/seeds" || exit 1
rm -rf "$out/regressions" && "$py" fuzz/regressions.py decode "$out/regressions" >/dev/null || exit 1
status=0

keep_crashes() {  # artifacts -> fuzz/regressions/*.hex (small ones; big ones stay in build/fuzz/artifacts)
  local f
  for f in "$out"/artifacts/*; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -lt 4096 ]; then "$py" fuzz/regressions.py encode "$f" >/dev/null; fi
    echo "fuzz: CRASH INPUT $f (regression copy in fuzz/regressions/ if < 4 KB)" >&2
    status=1
  done
}

report() {  # NAME LOG RC ERROR_PATTERN: the run's figures, and its first error lines when it failed
  grep -E "DONE|stat::number_of_executed_units|stat::peak_rss_mb" "$2" | sed 's/^/  /'
  if [ "$3" -ne 0 ]; then
    echo "fuzz: the $1 harness failed (exit $3), see $2:" >&2
    grep -E "$4" "$2" | head -5 >&2
    status=1
  fi
}

rm -f "$out"/artifacts/*
if make --no-print-directory "$out/esindex_fuzz" >/dev/null 2>"$out/build.log"; then
  echo "fuzz: libFuzzer + ASan/UBSan on runtimes/native/esindex.c + eshamming.c for ${c_secs}s"
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 "$out/esindex_fuzz" "$out/corpus" "$out/seeds" \
    "$out/regressions" -max_total_time="$c_secs" -max_len=65536 -rss_limit_mb=1024 -timeout=10 \
    -artifact_prefix="$out/artifacts/c-" -print_final_stats=1 >"$out/c.log" 2>&1
  report C "$out/c.log" $? "ERROR|SUMMARY|runtime error"
else
  echo "fuzz: SKIPPED the C harness: clang cannot build it with -fsanitize=fuzzer,address (see $out/build.log;" \
       "Debian: apt-get install clang libclang-rt-14-dev)"
fi

if ! "$py" -c "import atheris" 2>/dev/null; then
  echo "fuzz: installing atheris into $py's environment (make setup normally has: the fuzz extra)"
  "$py" -m pip install -q "atheris==2.3.0" >"$out/atheris-install.log" 2>&1 || true
fi
if "$py" -c "import atheris" 2>/dev/null; then
  echo "fuzz: atheris on edge_shitu/index_format.py + the numpy search for ${py_secs}s"
  "$py" fuzz/fuzz_index_py.py "$out/py-corpus" "$out/seeds" "$out/regressions" -max_total_time="$py_secs" \
    -max_len=65536 -rss_limit_mb=2048 -timeout=20 -artifact_prefix="$out/artifacts/py-" \
    -print_final_stats=1 >"$out/py.log" 2>&1
  report Python "$out/py.log" $? "Error|Exception|Traceback"
else
  echo "fuzz: SKIPPED the Python harness: atheris does not install here (see $out/atheris-install.log)"
fi
keep_crashes
[ $status -eq 0 ] && echo "fuzz: no crash, leak or out-of-bounds read"
exit $status
