"""Board runtimes (issue 19): each board names its device runtime and the oldest version it must
support; `convert` refuses a TFLite artifact whose op versions that runtime does not have, and the
device refuses, when the bundle is opened, an artifact too new for the installed runtime: one line
that names the runtime version and what to do. Light: no TensorFlow, runs under Python 3.8.

The .tflite files are built byte by byte (tests/test_emu_board.py's FlatBuffers writer): the tiny
FULLY_CONNECTED + ADD graph with the op versions a test needs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_emu_board as emu

from edge_shitu import tflite_ops
from edge_shitu.boards import list_boards, load_board
from edge_shitu.errors import EdgeShituError

PROJECT = Path(__file__).resolve().parent.parent
MATRIX = PROJECT / "docs" / "support-matrix.md"


def fc_model(fc_version: int = 1, add_version: int = 1) -> bytes:
    """y = (x @ W.T + b) + c, x [1, 4], with the given FULLY_CONNECTED and ADD versions."""
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 4
    b = np.array([0.5, -1.0, 2.0], np.float32)
    c = np.array([1.0, 0.25, -0.5], np.float32)
    tensors = [emu._tensor("x", [1, 4], emu.FLOAT32, 0), emu._tensor("w", [3, 4], emu.FLOAT32, 1),
               emu._tensor("b", [3], emu.FLOAT32, 2), emu._tensor("t", [1, 3], emu.FLOAT32, 0),
               emu._tensor("c", [3], emu.FLOAT32, 3), emu._tensor("y", [1, 3], emu.FLOAT32, 0)]
    return emu._model(tensors, [b"", w.tobytes(), b.tobytes(), c.tobytes()],
                      ops=[(0, [0, 1, 2], [3]), (1, [3, 4], [5])],
                      opcodes=[(emu.OP_FULLY_CONNECTED, fc_version), (emu.OP_ADD, add_version)],
                      inputs=[0], outputs=[5])


# ---------------------------------------------------------------- reading op versions
def test_op_codes_and_required_runtime() -> None:
    m = fc_model(1, 1)
    assert tflite_ops.op_codes(m) == [(emu.OP_FULLY_CONNECTED, 1, ""), (emu.OP_ADD, 1, "")]
    assert tflite_ops.required_runtime(m)[0] == (1, 5)
    # values of tensorflow/compiler/mlir/lite/tools/versioning/runtime_version.cc
    for fc, need in ((9, (2, 3)), (10, (2, 11)), (11, (2, 15)), (12, (2, 17)), (13, (2, 18))):
        assert tflite_ops.required_runtime(fc_model(fc)) == (need, f"FULLY_CONNECTED version {fc}")
    assert tflite_ops.required_runtime(fc_model(1, 5)) == ((2, 13), "ADD version 5")
    need, why = tflite_ops.required_runtime(fc_model(14))  # unknown to the table: after 2.18
    assert need == tflite_ops.AFTER_TABLE and "newer than TFLite 2.18" in why
    assert tflite_ops.metadata_min_runtime(m) is None


def test_not_a_tflite_file_is_one_line() -> None:
    for blob in (b"", b"PK\x03\x04" * 8, fc_model()[:40]):
        with pytest.raises(EdgeShituError) as e:
            tflite_ops.required_runtime(blob, "rec_int8.tflite")
        assert "\n" not in str(e.value) and "rec_int8.tflite" in str(e.value)


def test_runtime_op_levels() -> None:
    assert tflite_ops.op_level("tflite-runtime", "2.13.0") == (2, 13)
    assert tflite_ops.op_level("tflite-runtime", "2.14.0rc1") == (2, 14)
    assert tflite_ops.op_level("ai-edge-litert", "1.2.0") >= (2, 18)
    assert tflite_ops.op_level("ai-edge-litert", "2.3.0") >= tflite_ops.AFTER_TABLE
    with pytest.raises(ValueError):
        tflite_ops.parse_version("latest")


def test_check_loadable_names_runtime_version_and_what_to_do(tmp_path: Path) -> None:
    p = tmp_path / "rec_int8.tflite"
    p.write_bytes(fc_model(12))
    tflite_ops.check_loadable(p, "ai-edge-litert", "1.2.0")  # 2.17 ops: fine on LiteRT
    tflite_ops.check_loadable(p, "tflite-runtime", "2.17.0")
    with pytest.raises(EdgeShituError) as e:
        tflite_ops.check_loadable(p, "tflite-runtime", "2.13.0", advice="do this")
    msg = str(e.value)
    assert "\n" not in msg and "TFLite >= 2.17" in msg and "FULLY_CONNECTED version 12" in msg
    assert "tflite-runtime 2.13.0" in msg and msg.endswith("do this")


# ---------------------------------------------------------------- board configs
def test_every_board_names_its_runtime() -> None:
    for name in list_boards():
        b = load_board(name)
        assert b.runtime["name"] in tflite_ops.RUNTIME_NAMES, name
        tflite_ops.parse_version(b.runtime["min_version"])
        if b.backend == "tflite":
            assert b.runtime["name"] in tflite_ops.TFLITE_RUNTIMES
    # glibc 2.31 boards (bullseye, JetPack 5) must be served by tflite-runtime 2.13, the newest there
    for name in ("rpi4", "jetson-orin", "jetson-nano"):
        rt = load_board(name).runtime
        assert (rt["name"], rt["min_version"], rt["glibc"][:4]) == ("tflite-runtime", "2.13.0", "2.31"), (name, rt)


@pytest.mark.parametrize(("runtime", "msg"), [
    (None, 'needs "runtime"'),
    ({"name": "tensorflow", "min_version": "2.13"}, "runtime.name must be one of tflite-runtime, ai-edge-litert"),
    ({"name": "paddlelite", "min_version": "2.13"}, "for backend 'tflite'"),
    ({"name": "tflite-runtime"}, "runtime.min_version must be a version string"),
    ({"name": "tflite-runtime", "min_version": "new"}, "runtime.min_version must be a version string"),
    ({"name": "tflite-runtime", "min_version": "2.13", "python": 3.8}, "runtime.python must be a string"),
])
def test_bad_runtime_block_is_one_line(tmp_path: Path, runtime: Any, msg: str) -> None:
    raw = load_board("rpi4").to_dict()
    raw.pop("runtime")
    if runtime is not None:
        raw["runtime"] = runtime
    p = tmp_path / "custom.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(EdgeShituError, match=re.escape(msg)) as e:
        load_board(p)
    assert "\n" not in str(e.value) and "custom.json" in str(e.value)


def test_jetpack4_is_stated_unsupported_with_the_nearest_path() -> None:
    nano = load_board("jetson-nano").to_dict()
    text = nano["unsupported"]
    assert "JetPack 4" in text and "Python 3.6" in text and "not supported" in text
    assert "container" in text and "jetson-orin" in text  # the nearest paths: a container, other hardware
    assert "JetPack 4/5" not in nano["description"]


# ---------------------------------------------------------------- convert: the board's oldest runtime
def test_converter_refuses_an_artifact_the_boards_oldest_runtime_cannot_load(tmp_path: Path) -> None:
    mod = pytest.importorskip("edge_shitu.converters.board_runtime",
                              reason="the conversion side is not installed on a device (the emulated board)")
    check_artifact, check_bundle_dir = mod.check_artifact, mod.check_bundle_dir

    (tmp_path / "rec").mkdir()
    new = tmp_path / "rec" / "rec_int8.tflite"
    new.write_bytes(fc_model(12))  # TFLite >= 2.17
    check_artifact(new, load_board("rpi5"))  # ai-edge-litert
    check_artifact(new, load_board("android-arm64"))  # a Paddle Lite board: not a TFLite runtime check
    for board in ("rpi4", "jetson-orin", "jetson-nano"):
        with pytest.raises(EdgeShituError) as e:
            check_bundle_dir(load_board(board), tmp_path)
        msg = str(e.value)
        assert "\n" not in msg and "tflite-runtime 2.13.0" in msg and f"board '{board}'" in msg
        assert "FULLY_CONNECTED version 12" in msg and "runtime.min_version" in msg
    new.write_bytes(fc_model(10, 5))  # 2.11 and 2.13: loads on 2.13
    check_bundle_dir(load_board("rpi4"), tmp_path)


def test_converted_bundle_loads_on_the_oldest_runtime_of_its_board(rpi4_bundle: Any, tmp_path: Path) -> None:
    """The session's rpi4 bundle went through convert's check (converters/convert.py calls
    check_bundle_dir): its TFLite files load on tflite-runtime 2.13 (bullseye, JetPack 5), the
    manifest carries the board's runtime block, and a board whose oldest runtime is older than the
    files need is refused in one line."""
    mod = pytest.importorskip("edge_shitu.converters.board_runtime")
    root = Path(rpi4_bundle.path)
    files = sorted(root.glob("*/*.tflite"))
    assert files
    manifest = json.loads((root / "manifest.json").read_text("utf-8"))
    assert manifest["board"]["runtime"]["name"] == "tflite-runtime"
    mod.check_bundle_dir(load_board("rpi4"), root)
    need = max(tflite_ops.required_runtime(p.read_bytes())[0] for p in files)
    print("rpi4 bundle needs", {p.name: mod.describe(p) for p in files})
    assert need <= (2, 13)
    raw = load_board("rpi4").to_dict()
    raw["runtime"] = {"name": "tflite-runtime", "min_version": "2.1.0"}  # older than anything onnx2tf writes
    (tmp_path / "old.json").write_text(json.dumps(raw))
    with pytest.raises(EdgeShituError, match=r"needs TFLite >= .*tflite-runtime 2\.1\.0 is the oldest runtime") as e:
        mod.check_bundle_dir(load_board(tmp_path / "old.json"), root)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the device: refused when opened
def _bundle_with(tmp_path: Path, model: bytes) -> Path:
    from edge_shitu.bundle import artifact_entry, write_manifest
    from tests.test_bundle import make_bundle

    root = make_bundle(tmp_path / "b")  # 64-d features; the model never runs
    art = root / "rec" / "rec_int8.tflite"
    art.write_bytes(model)
    m = json.loads((root / "manifest.json").read_text())
    m["rec"]["artifacts"] = [artifact_entry(root, art, "tflite:int8", outputs=[{"name": "y", "shape": [1, 64]}])]
    write_manifest(root, m)
    return root


class _NeverBuilt:
    def __init__(self, *a: Any, **k: Any) -> None:
        raise AssertionError("the interpreter must not be built for a model its runtime cannot load")


def test_opening_a_bundle_on_an_older_tflite_runtime_is_one_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """tflite-runtime 2.13 (what pip installs on glibc 2.31) and a bundle with 2.17 ops: refused at
    Recognizer.open, naming the runtime version and what to do; never a crash at inference."""
    from edge_shitu import Recognizer
    from edge_shitu.runtimes import tflite_backend

    root = _bundle_with(tmp_path, fc_model(12))
    monkeypatch.setattr(tflite_backend, "_interpreter_class", lambda: (_NeverBuilt, "tflite-runtime"))
    monkeypatch.setattr(tflite_ops, "installed_version", lambda engine: "2.13.0")
    with pytest.raises(EdgeShituError) as e:
        Recognizer.open(root)
    msg = str(e.value)
    assert "\n" not in msg and "tflite-runtime 2.13.0 is installed" in msg and "TFLite >= 2.17" in msg
    assert "pip install -U tflite-runtime" in msg and "ai-edge-litert" in msg and "rec_int8.tflite" in msg


def test_cli_refuses_a_too_new_bundle_with_the_installed_runtime(tmp_path: Path) -> None:
    """With the real installed runtime (tflite-runtime 2.13 on the emulated bullseye board, 2.14 on
    a Python 3.8 host): `recognize` on a bundle with TFLite 2.18 ops is one line, exit 2."""
    import subprocess

    from edge_shitu.runtimes.tflite_backend import _interpreter_class

    try:
        engine = _interpreter_class()[1]
    except EdgeShituError:
        pytest.skip("no TFLite runtime installed here")
    version = tflite_ops.installed_version(engine)
    if not version or tflite_ops.op_level(engine, version) >= (2, 18):
        pytest.skip(f"{engine} {version} loads every op version the table knows")
    root = _bundle_with(tmp_path, fc_model(13))  # FULLY_CONNECTED v13: TFLite 2.18
    img = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(img)
    r = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "recognize", str(root), str(img)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert len(lines) == 1, r.stderr
    assert f"{engine} {version} is installed" in lines[0] and "TFLite >= 2.18" in lines[0]
    assert f"pip install -U {engine}" in lines[0] and "Traceback" not in r.stderr


def test_installed_runtime_check_passes_what_it_can_load(tmp_path: Path) -> None:
    p = tmp_path / "m.tflite"
    p.write_bytes(fc_model(10, 5))
    tflite_ops.check_installed(p, "tflite-runtime", "2.13.0")
    tflite_ops.check_installed(tmp_path / "missing.tflite", "tflite-runtime", "2.13.0")  # the interpreter says
    p.write_bytes(b"garbage" * 10)
    tflite_ops.check_installed(p, "tflite-runtime", "2.13.0")  # left to the interpreter's own message


def test_the_installed_runtime_agrees_with_the_table(tmp_path: Path) -> None:
    """Whatever TFLite runtime is installed here: a model the table says it can load loads, one it
    says it cannot is refused by the runtime itself too (the table is right about this runtime)."""
    for module, engine in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                           ("tflite_runtime.interpreter", "tflite-runtime")):
        try:
            cls = __import__(module, fromlist=["Interpreter"]).Interpreter
        except ImportError:
            continue
        version = tflite_ops.installed_version(engine)
        if not version or (engine == "tflite-runtime" and int(np.__version__.split(".")[0]) >= 2):
            continue  # tflite-runtime cannot run with numpy 2 (tests/test_emu_board.py)
        level = tflite_ops.op_level(engine, version)
        for fc in (9, 10, 11, 12, 13):
            m = fc_model(fc)
            need, _ = tflite_ops.required_runtime(m)
            try:
                cls(model_content=m)
                loaded = True
            except (RuntimeError, ValueError):
                loaded = False
            assert loaded == (level >= need), (engine, version, fc, need, loaded)
        return
    pytest.skip("no TFLite runtime installed here")


# ---------------------------------------------------------------- the support matrix
def test_every_board_claim_is_in_the_support_matrix() -> None:
    """docs/support-matrix.md has a row per board with its runtime, oldest version, Python, glibc
    and how it is tested, as the board config claims them."""
    if emu.EMU and not MATRIX.exists():
        pytest.skip("docs/ is not mounted in the emulated board")
    text = MATRIX.read_text("utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[0] in list_boards():
            rows.setdefault(cells[0], []).append(" | ".join(cells))
    for name in list_boards():
        rt = load_board(name).runtime
        assert name in rows, f"docs/support-matrix.md has no row for board {name}"
        row = " ".join(rows[name])
        assert f"{rt['name']} {rt['min_version']}" in row, (name, row)
        for key in ("python", "glibc", "tested"):
            if key in rt:
                assert rt[key] in row, (name, key, rt[key], row)
    assert "JetPack 4" in text and "unsupported" in text.lower()
