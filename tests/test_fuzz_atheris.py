"""A short coverage-guided (atheris) run of the Python index reader: the long ones are
`make fuzz` / `make fuzz-long` (fuzz/run.sh). Skipped, saying why, where atheris is not
installed (it builds from source against clang's libFuzzer; see fuzz/README.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_shitu.assets import PROJECT_ROOT

FUZZ = PROJECT_ROOT / "fuzz"


def test_atheris_finds_no_crash_in_the_python_reader(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris not installed in this environment (make fuzz installs it into .venv)")
    seeds, corpus = tmp_path / "seeds", tmp_path / "corpus"
    corpus.mkdir()
    subprocess.run([sys.executable, str(FUZZ / "make_seeds.py"), str(seeds)], check=True)
    regressions = tmp_path / "regressions"
    subprocess.run([sys.executable, str(FUZZ / "regressions.py"), "decode", str(regressions)], check=True,
                   capture_output=True)
    # a defined environment: variables earlier tests of the session set (engines, Ray, thread pools) must
    # not change what the fuzzer measures (one full-suite run hit its 2 GB RSS limit; alone it peaks ~80 MB)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    r = subprocess.run([sys.executable, str(FUZZ / "fuzz_index_py.py"), str(corpus), str(seeds),
                        str(regressions), "-max_total_time=15", "-max_len=65536", "-seed=13",
                        f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [line for line in r.stderr.splitlines() if "number_of_executed_units" in line]
    assert runs and int(runs[0].split()[-1]) > 1000, r.stderr[-1000:]
