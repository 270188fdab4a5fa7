"""Replay the fuzzers' kept inputs (fuzz/regressions/*.hex, fuzz/regressions.py): crash repros and
found disagreements.

Each must give one line of EdgeShituError or open consistently, in the Python reader, the C
reader (ctypes) and, where clang's libFuzzer runtime is installed, the AddressSanitizer harness
itself (fuzz/esindex_fuzz.c runs each file once and fails on any out-of-bounds read).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_c_reader import View, build_c_reader

from edge_shitu.assets import PROJECT_ROOT
from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import parse_index


def _kept_inputs() -> dict[str, bytes]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("es_fuzz_regressions", PROJECT_ROOT / "fuzz" / "regressions.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.inputs()


KEPT = _kept_inputs()
REGRESSIONS = sorted(KEPT)
NATIVE = PROJECT_ROOT / "runtimes" / "native"


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL | None:
    return build_c_reader(tmp_path_factory.mktemp("c"))


def test_regression_inputs_are_small_and_present() -> None:
    assert REGRESSIONS, "fuzz/regressions/ holds the inputs the fuzzers found"
    assert all(len(raw) < 4096 for raw in KEPT.values())


@pytest.mark.parametrize("name", REGRESSIONS)
def test_regression_input_gives_one_line_or_opens(name: str, c_reader: ctypes.CDLL | None) -> None:
    raw = KEPT[name]
    try:
        data = parse_index(raw, name)
    except EdgeShituError as e:
        assert "\n" not in str(e)
        opened, error = False, str(e)
    else:
        opened, error = True, ""
        idx = GalleryIndex(data)
        x = np.random.default_rng(0).standard_normal((2, data.dim)).astype(np.float32)
        idx.search(x, k=5)
        idx.query(x, k=3, rerank=8)
    if c_reader is not None:
        buf = ctypes.create_string_buffer(raw, len(raw))
        status = c_reader.es_index_parse(buf, len(raw), 1, ctypes.byref(View()))
        assert status == 0 or not opened, f"the C reader refuses ({status}) a file Python reads"
        if not opened and status == 0:  # only Python interprets META (JSON, the score table)
            assert "META" in error, error


def test_the_asan_harness_replays_every_regression_input(tmp_path: Path) -> None:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("no clang: the libFuzzer harness cannot be built here")
    exe = tmp_path / "esindex_fuzz"
    build = subprocess.run([clang, "-g", "-O1", "-std=c11", "-fsanitize=fuzzer,address,undefined",
                            "-fno-sanitize-recover=all", f"-I{NATIVE}", "-o", str(exe),
                            str(PROJECT_ROOT / "fuzz" / "esindex_fuzz.c"), str(NATIVE / "esindex.c"),
                            str(NATIVE / "eshamming.c")], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"clang cannot link libFuzzer + ASan here (Debian: libclang-rt-14-dev): "
                    f"{build.stderr.strip().splitlines()[-1] if build.stderr.strip() else build.returncode}")
    files = []
    for name, raw in KEPT.items():
        (tmp_path / name).write_bytes(raw)
        files.append(str(tmp_path / name))
    r = subprocess.run([str(exe), *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
