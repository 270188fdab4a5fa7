"""Issue 13: no path out of a bundle, hand-edited manifests give one line, index/extractor mismatch.

Every case runs on a small real bundle (tests/test_bundle.py ``make_bundle``: a real index, an
artifact of random bytes) in the device venv too. CLI cases run ``python -m edge_shitu.cli`` and
check exit code 2, ONE stderr line naming the key, and that nothing outside the bundle was
written (bytes, mtime, no lock or temporary file beside it) or loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edge_shitu.bundle import Bundle, resolve_in_bundle, sha256_file, write_manifest
from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery_index import GalleryIndex
from tests.test_bundle import make_bundle

DELETE = object()


def es(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_shitu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge-shitu: error:"), proc.stderr[-2000:]
    return lines[0]


def snapshot(d: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every entry of a folder (hidden ones too): bytes, mtime, mode."""
    out = {}
    for p in sorted(d.iterdir()):
        st = p.lstat()
        out[p.name] = (p.read_bytes() if p.is_file() else b"", st.st_mtime_ns, st.st_mode)
    return out


def edit(root: Path, key: str, value: Any) -> None:
    """Set (or delete, value=DELETE) a dotted key path such as ``rec.artifacts[0].sha256``."""
    mpath = root / "manifest.json"
    m = json.loads(mpath.read_text("utf-8"))
    node: Any = m
    parts = key.replace("[", ".[").split(".")
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    k: Any = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[k]
    else:
        node[k] = value
    mpath.write_text(json.dumps(m, ensure_ascii=False), "utf-8")


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    p = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(p)
    return p


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the bundle holding a real index that a manifest must never reach."""
    d = tmp_path / "outside"
    d.mkdir()
    x = np.random.default_rng(5).standard_normal((10, 64)).astype(np.float32)
    GalleryIndex.build(x, [f"v{i}" for i in range(10)], bits=64).save(d / "victim.esidx")
    os.chmod(d / "victim.esidx", 0o644)
    return d


# ============================================================================ paths
INDEX_ESCAPES = ["relative ..", "absolute", "symlinked file", "symlinked folder"]


def _escape_index(b: Path, outside: Path, how: str) -> None:
    victim = outside / "victim.esidx"
    if how == "relative ..":
        edit(b, "index.file", "../outside/victim.esidx")
    elif how == "absolute":
        edit(b, "index.file", str(victim))
    elif how == "symlinked file":
        (b / "gallery.esidx").unlink()
        (b / "gallery.esidx").symlink_to(victim)
    else:
        (b / "data").symlink_to(outside, target_is_directory=True)
        edit(b, "index.file", "data/victim.esidx")


@pytest.mark.parametrize("how", INDEX_ESCAPES)
def test_index_outside_the_bundle_is_refused_by_every_command(tmp_path: Path, outside: Path, photo: Path,
                                                              how: str) -> None:
    b = make_bundle(tmp_path / "b")
    _escape_index(b, outside, how)
    before = snapshot(outside)
    with pytest.raises(EdgeShituError, match=r"index\.file"):
        Bundle.open(b)
    for cmd in (["gallery", "remove", str(b), "0"], ["gallery", "remove", str(b), "--label", "v1"],
                ["gallery", "add", str(b), str(photo), "--label", "x", "--whole-image"],
                ["gallery", "list", str(b)], ["recognize", str(b), str(photo)]):
        line = one_line(es(*cmd))
        assert "manifest.json: index.file" in line and ("inside the bundle" in line or "leads out" in line), line
        assert snapshot(outside) == before, (cmd, "the outside folder changed")
    assert GalleryIndex.open(outside / "victim.esidx").ntotal == 10


def test_symlink_inside_the_bundle_is_followed_and_edits_stay_inside(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    (b / "data").mkdir()
    shutil.move(str(b / "gallery.esidx"), b / "data" / "real.esidx")
    (b / "gallery.esidx").symlink_to(Path("data") / "real.esidx")
    assert Bundle.open(b).index_path == (b / "data" / "real.esidx").resolve()
    proc = es("gallery", "remove", str(b), "3")
    assert proc.returncode == 0, proc.stderr
    assert (b / "gallery.esidx").is_symlink() and GalleryIndex.open(b / "data" / "real.esidx").ntotal == 19
    assert not [p for p in b.iterdir() if p.name.startswith(".")]  # lock + tmp beside the real file only
    assert (b / "data" / ".real.esidx.lock").exists()


def test_symlink_loop_and_fifo_index_are_one_line(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    (b / "gallery.esidx").unlink()
    (b / "gallery.esidx").symlink_to("gallery.esidx")
    with pytest.raises(EdgeShituError, match=r"index\.file") as e:
        Bundle.open(b)
    assert "\n" not in str(e.value)
    (b / "gallery.esidx").unlink()
    os.mkfifo(b / "gallery.esidx")  # opening it for reading would block forever
    line = one_line(es("gallery", "list", str(b), timeout=60))
    assert "index.file" in line and "FIFO" in line


def test_artifact_symlink_out_of_the_bundle_is_refused(tmp_path: Path, outside: Path) -> None:
    b = make_bundle(tmp_path / "b")
    art = b / "rec" / "rec_int8.tflite"
    shutil.move(str(art), outside / "model.tflite")
    art.symlink_to(outside / "model.tflite")  # same bytes, same sha256: only the location is wrong
    with pytest.raises(EdgeShituError, match=r"rec\.artifacts\[0\]\.file .*leads out of the bundle"):
        Bundle.open(b)
    for bad in ("/etc/passwd", "../outside/model.tflite", "rec/../../outside/model.tflite"):
        edit(b, "rec.artifacts[0].file", bad)
        with pytest.raises(EdgeShituError, match=r"rec\.artifacts\[0\]\.file must be a relative path"):
            Bundle.open(b)


def _evil_library(tmp: Path) -> tuple[bytes, bool]:
    """A shared library that, once loaded, creates the file named by $EVIL_MARKER (random
    bytes when no C compiler is installed: then only the refusal is checked)."""
    src = tmp / "evil.c"
    src.write_text('#include <stdio.h>\n#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) '
                   '{ const char *p = getenv("EVIL_MARKER"); if (p) { FILE *f = fopen(p, "w"); if (f) fclose(f); } }\n')
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc and subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp / "evil.so"), str(src)],
                             capture_output=True).returncode == 0:
        return (tmp / "evil.so").read_bytes(), True
    return os.urandom(2048), False


NATIVE_ESCAPES = ["relative ..", "absolute", "inside the bundle but not lib/", "symlinked file",
                  "symlinked lib folder"]


@pytest.mark.parametrize("how", NATIVE_ESCAPES)
def test_native_library_only_from_the_bundles_lib(tmp_path: Path, outside: Path, photo: Path, how: str) -> None:
    evil, real = _evil_library(tmp_path)
    (outside / "evil.so").write_bytes(evil)
    marker = tmp_path / "LOADED"
    if real:  # the marker works: loading the library creates it
        subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(outside / 'evil.so')!r})"],
                       env={**os.environ, "EVIL_MARKER": str(marker)}, check=True)
        assert marker.exists()
        marker.unlink()
    b = make_bundle(tmp_path / "b", native_lib=b"placeholder")
    edit(b, "native_lib.sha256", sha256_file(outside / "evil.so"))
    if how == "relative ..":
        edit(b, "native_lib.file", "../outside/evil.so")
    elif how == "absolute":
        edit(b, "native_lib.file", str(outside / "evil.so"))
    elif how == "inside the bundle but not lib/":
        shutil.copy(outside / "evil.so", b / "rec" / "evil.so")
        edit(b, "native_lib.file", "rec/evil.so")
    elif how == "symlinked file":
        (b / "lib" / "libeshamming.so").unlink()
        (b / "lib" / "libeshamming.so").symlink_to(outside / "evil.so")
    else:
        shutil.rmtree(b / "lib")
        (b / "lib").symlink_to(outside, target_is_directory=True)
        edit(b, "native_lib.file", "lib/evil.so")
    with pytest.raises(EdgeShituError, match=r"native_lib\.file"):
        Bundle.open(b)
    for cmd in (["recognize", str(b), str(photo)], ["gallery", "list", str(b)]):
        line = one_line(es(*cmd, env={"EVIL_MARKER": str(marker), "EDGE_SHITU_KERNEL": "auto"}))
        assert "native_lib.file" in line and "lib/" in line, line
        assert not marker.exists(), "the library outside lib/ was loaded"


def test_native_library_in_lib_is_accepted(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", native_lib=b"not really a library")
    lib = Bundle.open(b).native_lib()
    assert lib == (b / "lib" / "libeshamming.so").resolve()
    (b / "lib" / "libeshamming.so").write_bytes(b"replaced")
    with pytest.raises(EdgeShituError, match="sha256 does not match"):
        Bundle.open(b).native_lib()


def test_resolve_in_bundle_is_the_one_rule(tmp_path: Path) -> None:
    root = tmp_path / "b"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "x.so").write_bytes(b"x")
    assert resolve_in_bundle(root, "lib/x.so", "k", under="lib") == (root / "lib" / "x.so").resolve()
    assert resolve_in_bundle(root, "./lib/./x.so", "k") == (root / "lib" / "x.so").resolve()
    assert resolve_in_bundle(root, "missing/file", "k") == (root / "missing" / "file").resolve()
    for bad in ("", ".", "/abs", "..", "a/../../b", "a/..", "\\\\server\\x", "C:/x", "x\x00y", 5, None, ["a"]):
        with pytest.raises(EdgeShituError, match="k must be a relative path inside the bundle") as e:
            resolve_in_bundle(root, bad, "k")
        assert "\n" not in str(e.value)
    with pytest.raises(EdgeShituError, match="k must be a relative path inside the bundle's lib/ folder"):
        resolve_in_bundle(root, "x.so", "k", under="lib")
    os.mkfifo(root / "lib" / "fifo")
    with pytest.raises(EdgeShituError, match="not a regular file"):
        resolve_in_bundle(root, "lib/fifo", "k")
    with pytest.raises(EdgeShituError, match="not a regular file"):
        resolve_in_bundle(root, "lib", "k")


# ============================================================================ the schema
@pytest.mark.parametrize("key, value, says", [
    ("runtime.threads", "four", 'runtime.threads must be an integer in [1, 1024], got "four"'),
    ("runtime.rec_score_threshold", "high", 'runtime.rec_score_threshold must be a number in [-1, 1], got "high"'),
    ("rec.preprocess.size", "big", 'rec.preprocess.size must be a list of 2 integers >= 1, got "big"'),
])
def test_hand_edited_manifest_values_give_one_line_through_the_cli(tmp_path: Path, photo: Path, key: str,
                                                                   value: Any, says: str) -> None:
    b = make_bundle(tmp_path / "b")
    edit(b, key, value)
    for cmd in (["recognize", str(b), str(photo)], ["gallery", "list", str(b)],
                ["gallery", "add", str(b), str(photo), "--label", "x"]):
        line = one_line(es(*cmd))
        assert f"manifest.json: {says}" in line, line


BAD_VALUES = [
    ("format_version", ["1", 0], "format_version"),
    ("board", DELETE, "board is missing"),
    ("board.max_image_pixels", 0, "board.max_image_pixels must be an integer >= 1"),
    ("board.max_image_pixels", "40M", "board.max_image_pixels"),
    ("runtime", "fast", "runtime must be an object"),
    ("runtime.threads", 0, "runtime.threads"),
    ("runtime.threads", 2.5, "runtime.threads"),
    ("runtime.threads", True, "runtime.threads"),
    ("runtime.threads", 100000, "runtime.threads"),
    ("runtime.backend", "cuda", 'runtime.backend must be one of "tflite", "nb"'),
    ("runtime.backend", 3, "runtime.backend"),
    ("runtime.precision", "int4", 'runtime.precision must be one of "fp32", "fp16", "int8"'),
    ("runtime.det_threshold", 1.5, "runtime.det_threshold must be a number in [0, 1]"),
    ("runtime.det_threshold", math.nan, "runtime.det_threshold"),
    ("runtime.max_det", -1, "runtime.max_det must be an integer >= 0"),
    ("runtime.max_det", 1.0, "runtime.max_det"),
    ("runtime.rec_score_threshold", 2, "runtime.rec_score_threshold"),
    ("runtime.rec_nms_iou", -0.1, "runtime.rec_nms_iou"),
    ("runtime.top_k", 0, "runtime.top_k must be an integer >= 1"),
    ("index", DELETE, "index is missing"),
    ("index", [], "index must be an object"),
    ("index.file", DELETE, "index.file is missing"),
    ("index.file", 5, "index.file must be a relative path"),
    ("index.file", "", "index.file must be a relative path"),
    ("index.bits", 100, "index.bits must be an integer >= 64, a multiple of 64"),
    ("index.rerank", -1, "index.rerank"),
    ("index.rerank", "50", "index.rerank"),
    ("index.method", "lsh", "index.method"),
    ("rec", DELETE, "rec is missing"),
    ("rec.feature_dim", 0, "rec.feature_dim must be an integer >= 1"),
    ("rec.feature_dim", "512", "rec.feature_dim"),
    ("rec.feature_dim", DELETE, "rec.feature_dim is missing"),
    ("rec.preprocess", DELETE, "rec.preprocess is missing"),
    ("rec.preprocess.size", [224], "rec.preprocess.size"),
    ("rec.preprocess.size", [0, 224], "rec.preprocess.size"),
    ("rec.preprocess.mean", [0.5, 0.5], "rec.preprocess.mean must be a list of 3 numbers"),
    ("rec.preprocess.std", [0.2, 0, 0.2], "rec.preprocess.std[1] must be a number > 0, got 0"),
    ("rec.preprocess.scale", 0, "rec.preprocess.scale must be a number > 0"),
    ("rec.preprocess.resize", "opencv", 'rec.preprocess.resize must be one of "cv2", "pil"'),
    ("rec.preprocess.interp", "smooth", "rec.preprocess.interp"),
    ("rec.preprocess.interp", 9, "rec.preprocess.interp"),
    ("rec.preprocess.fit", "crop", "rec.preprocess.fit"),
    ("rec.preprocess.pad_value", 300, "rec.preprocess.pad_value must be an integer in [0, 255]"),
    ("rec.preprocess.colour", "bgr", "rec.preprocess.colour: unknown key"),
    ("rec.artifacts", [], "rec.artifacts must be a non-empty list"),
    ("rec.artifacts", DELETE, "rec.artifacts is missing"),
    ("rec.artifacts[0].sha256", "abc", "rec.artifacts[0].sha256 must be a sha256"),
    ("rec.artifacts[0].bytes", -1, "rec.artifacts[0].bytes"),
    ("rec.artifacts[0].bytes", "4096", "rec.artifacts[0].bytes"),
    ("rec.artifacts[0].kind", "tflite:int4", "rec.artifacts[0].kind must be one of"),
    ("rec.artifacts[0].details", "x", "rec.artifacts[0].details must be an object"),
    ("det", 3, "det must be an object"),
    ("det", {"preprocess": {"ops": []}}, "det.artifacts is missing"),
    ("native_lib", {"file": "lib/libeshamming.so"}, "native_lib.sha256 is missing"),
    ("native_lib", {"file": "libeshamming.so", "sha256": "0" * 64}, "native_lib.file must be a relative path"),
]


@pytest.mark.parametrize("key, value, says", BAD_VALUES, ids=[f"{k}={v!r}"[:60] for k, v, _ in BAD_VALUES])
def test_every_key_the_runtime_reads_is_checked(tmp_path: Path, key: str, value: Any, says: str) -> None:
    b = make_bundle(tmp_path / "b")
    edit(b, key, value)
    with pytest.raises(EdgeShituError) as e:
        Bundle.open(b)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert f"manifest.json: {says}" in msg, msg


def test_detector_preprocess_and_head_are_checked(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text("utf-8"))
    det_art = dict(m["rec"]["artifacts"][0])
    ops = [{"type": "Resize", "target_size": [640, 640], "keep_ratio": False, "interp": 2},
           {"type": "NormalizeImage", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True},
           {"type": "Permute"}, {"type": "PadStride", "stride": 32}]
    head = {"image": "image", "scores": ["s0"], "dists": ["d0"], "strides": [8], "grids": [[80, 80]],
            "num_classes": 1, "reg_max": 7, "cell_offset": 0.5, "nms": {"nms_threshold": 0.6, "keep_top_k": 100}}
    m["det"] = {"preprocess": {"kind": "det", "ops": ops}, "postprocess": {"type": "picodet"},
                "artifacts": [{**det_art, "details": {"cut_before_nms": True, "head": head}}]}
    (b / "manifest.json").write_text(json.dumps(m), "utf-8")
    assert Bundle.open(b).has_detector
    for key, value, says in [
        ("det.preprocess.ops[0].target_size", "big", "det.preprocess.ops[0].target_size must be an integer >= 1 or"),
        ("det.preprocess.ops[0].type", "Crop", 'det.preprocess.ops[0].type must be one of "Resize"'),
        ("det.preprocess.ops[1].std", [1, 1, 0], "det.preprocess.ops[1].std"),
        ("det.preprocess.ops[3].stride", -32, "det.preprocess.ops[3].stride must be an integer >= 0"),
        ("det.preprocess.ops", DELETE, "det.preprocess.ops is missing"),
        ("det.artifacts[0].details.head.num_classes", 0, "det.artifacts[0].details.head.num_classes"),
        ("det.artifacts[0].details.head.strides", "8", "det.artifacts[0].details.head.strides"),
        ("det.artifacts[0].details.head.nms.nms_threshold", 6, "det.artifacts[0].details.head.nms.nms_threshold"),
    ]:
        edit(b, key, value)
        with pytest.raises(EdgeShituError) as e:
            Bundle.open(b)
        assert f"manifest.json: {says}" in str(e.value) and "\n" not in str(e.value), (key, str(e.value))
        (b / "manifest.json").write_text(json.dumps(m), "utf-8")


def test_accepted_values_and_aliases(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    for key, value in [("runtime.backend", "paddlelite"), ("runtime.backend", "TFLite"), ("runtime.max_det", 0),
                       ("runtime.rec_score_threshold", -0.5), ("runtime", None), ("native_lib", None),
                       ("board.max_image_pixels", 12_000_000), ("rec.preprocess.interp", 1),
                       ("rec.artifacts[0].sha256", sha256_file(b / "rec" / "rec_int8.tflite").upper()),
                       ("some_future_key", {"anything": [1, 2]}), ("rec.artifacts[0].future", 1)]:
        edit(b, key, value)
        Bundle.open(b).artifact("rec", "tflite:int8")
    assert Bundle.open(b).max_image_pixels == 12_000_000 and Bundle.open(b).runtime == {}


def test_the_writer_refuses_what_the_reader_refuses(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    good = json.loads((b / "manifest.json").read_text("utf-8"))
    out = tmp_path / "new"
    out.mkdir()
    shutil.copytree(b / "rec", out / "rec")
    shutil.copy(b / "gallery.esidx", out / "gallery.esidx")
    for key, value in [("runtime", {"threads": "four"}), ("index", {"file": "../victim.esidx"}),
                       ("rec", {**good["rec"], "feature_dim": -1})]:
        with pytest.raises(EdgeShituError, match=key):
            write_manifest(out, {**good, key: value})
        assert not (out / "manifest.json").exists()
    (out / "gallery.esidx").unlink()
    (out / "gallery.esidx").symlink_to(tmp_path / "elsewhere.esidx")
    with pytest.raises(EdgeShituError, match=r"index\.file .*leads out of the bundle"):
        write_manifest(out, good)
    (out / "gallery.esidx").unlink()
    shutil.copy(b / "gallery.esidx", out / "gallery.esidx")
    write_manifest(out, good)
    assert Bundle.open(out).manifest == good


def test_the_writer_checks_what_the_reader_will_read(tmp_path: Path) -> None:
    """Python tuples (PicoDetHead.to_dict()'s grids, a preprocess size) are JSON lists on disk."""
    from edge_shitu.detection import PicoDetHead

    b = make_bundle(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text("utf-8"))
    head = PicoDetHead("image", ["s0", "s1"], ["d0", "d1"], [8, 16], [(80, 80), (40, 40)], 1, 7, 0.5,
                       {"nms_threshold": 0.6}).to_dict()
    assert isinstance(head["grids"][0], tuple)
    ops = [{"type": "Resize", "target_size": (640, 640), "keep_ratio": False}, {"type": "Permute"}]
    m["det"] = {"preprocess": {"kind": "det", "ops": ops},
                "artifacts": [{**m["rec"]["artifacts"][0], "details": {"cut_before_nms": True, "head": head}}]}
    m["rec"]["preprocess"]["size"] = (224, 224)
    (b / "manifest.json").unlink()
    write_manifest(b, m)
    assert Bundle.open(b).manifest["det"]["artifacts"][0]["details"]["head"]["grids"] == [[80, 80], [40, 40]]


# ============================================================================ index / extractor dims
def test_index_of_another_dimension_refuses_the_bundle(tmp_path: Path, photo: Path) -> None:
    b = make_bundle(tmp_path / "b", feature_dim=64, index_dim=128)
    bundle = Bundle.open(b)  # the manifest itself is fine
    for arg in (None, GalleryIndex.open(bundle.index_path)):
        with pytest.raises(EdgeShituError, match=r"the index holds 128-d features .* 64-d \(rec\.feature_dim\)"):
            bundle.check_index(arg)
    line = one_line(es("recognize", str(b), str(photo)))
    assert "128-d" in line and "rec.feature_dim" in line, line
    Bundle.open(make_bundle(tmp_path / "ok")).check_index()


def test_extractor_output_size_must_match_feature_dim(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    edit(b, "rec.artifacts[0].outputs", [{"name": "feat", "shape": [1, 128]}])
    with pytest.raises(EdgeShituError, match=r"rec\.artifacts\[0\] \(tflite:int8\) outputs 128-d features but "
                                             r"rec\.feature_dim is 64"):
        Bundle.open(b).check_index()
    edit(b, "rec.artifacts[0].outputs", [{"name": "feat", "shape": [-1, -1]}])  # dynamic: nothing to compare
    Bundle.open(b).check_index()


@pytest.mark.parametrize("text, says", [
    ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ('{"format": "edge-shitu-bundle", "n": ' + "9" * 5000 + "}", "not valid JSON"),
    ("{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ("NaN", "not an edge-shitu bundle manifest"),
    ('{"format": "edge-shitu-bundle", "format_version": "1.0"}', r"format_version must be \[major, minor\]"),
], ids=["deep-nesting", "huge-number", "not-json", "bad-utf8", "nan", "bad-format-version"])  # short ids: pytest 8.3
# (the last for Python 3.8) puts the whole parameter into PYTEST_CURRENT_TEST, too long for exec's environment
def test_malformed_manifest_files_are_one_line(tmp_path: Path, text: str | bytes, says: str) -> None:
    b = make_bundle(tmp_path / "b")
    if isinstance(text, bytes):
        (b / "manifest.json").write_bytes(text)
    else:
        (b / "manifest.json").write_text(text, "utf-8")
    with pytest.raises(EdgeShituError, match=says) as e:
        Bundle.open(b)
    assert "\n" not in str(e.value)
    line = one_line(es("gallery", "list", str(b)))
    assert re.search(says, line), line


@pytest.mark.parametrize("bad", [["Resize"], {"type": "Resize"}])
def test_unhashable_preprocess_op_type_is_one_line(bad: object) -> None:
    """A hand-edited op type that is a list or an object: one line naming the key, not a TypeError."""
    from edge_shitu.manifest_schema import validate

    m = {"format": "edge-shitu-bundle", "format_version": [1, 0], "board": {}, "index": {"file": "g"},
         "rec": {"preprocess": {}, "artifacts": []}, "det": {"preprocess": {"ops": [{"type": bad}]}, "artifacts": []}}
    with pytest.raises(EdgeShituError, match=r"det\.preprocess\.ops\[0\]\.type must be one of"):
        validate(m, "manifest.json")
