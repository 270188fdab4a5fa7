"""Bundle manifest: checksums, versions and malformed manifests are refused with one clear line."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from edge_shitu.boards import load_board
from edge_shitu.bundle import Bundle, artifact_entry, sha256_file, write_manifest
from edge_shitu.errors import EdgeShituError, VersionError
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.preprocess import RecPreprocess


def make_bundle(root: Path, *, feature_dim: int = 64, index_dim: int | None = None, items: int = 20,
                native_lib: bytes | None = None) -> Path:
    """A small device bundle without the conversion stack: one rec artifact (random bytes, so it
    opens and verifies but cannot run), a real 64-bit index of ``items`` random features of
    ``index_dim`` (default ``feature_dim``), the rpi4 board's runtime block, optionally a native
    library (``lib/libeshamming.so`` with these bytes, target of this host)."""
    from edge_shitu.formats import NATIVE_TARGETS

    (root / "rec").mkdir(parents=True)
    art = root / "rec" / "rec_int8.tflite"
    art.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    x = np.random.default_rng(1).standard_normal((items, index_dim or feature_dim)).astype(np.float32)
    GalleryIndex.build(x, [f"p{i}" for i in range(items)], bits=64).save(root / "gallery.esidx")
    board = load_board("rpi4").to_dict()
    manifest = {
        "format": "edge-shitu-bundle", "format_version": [1, 0], "board": board,
        "det": None,
        "rec": {"preprocess": RecPreprocess().to_dict(), "feature_dim": feature_dim,
                "artifacts": [artifact_entry(root, art, "tflite:int8",
                                             outputs=[{"name": "feat", "shape": [1, feature_dim]}])]},
        "index": {"file": "gallery.esidx", "bits": 64, "method": "itq", "items": items, "rerank": 0},
        "runtime": {"backend": "tflite", "precision": "int8", "threads": 1, "det_threshold": 0.2, "max_det": 5,
                    "rec_score_threshold": 0.5, "rec_nms_iou": 0.05, "top_k": 5},
    }
    if native_lib is not None:
        (root / "lib").mkdir()
        (root / "lib" / "libeshamming.so").write_bytes(native_lib)
        machine = platform.machine().lower()
        here = next((t for t, machines in NATIVE_TARGETS.items() if machine in machines), "host")
        manifest["native_lib"] = {"file": "lib/libeshamming.so", "target": here,
                                  "sha256": sha256_file(root / "lib" / "libeshamming.so")}
    write_manifest(root, manifest)
    return root


def test_open_and_verify(tmp_path: Path) -> None:
    b = Bundle.open(make_bundle(tmp_path / "b"))
    assert not b.has_detector
    art = b.artifact("rec", "tflite:int8")
    assert art.precision == "int8" and art.path.exists()
    assert GalleryIndex.open(b.index_path).ntotal == 20


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    p = root / "rec" / "rec_int8.tflite"
    raw = bytearray(p.read_bytes())
    raw[100] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(EdgeShituError, match="sha256 does not match"):
        Bundle.open(root).artifact("rec", "tflite:int8")
    p.write_bytes(bytes(raw[:-5]))
    with pytest.raises(EdgeShituError, match="truncated or replaced"):
        Bundle.open(root).artifact("rec", "tflite:int8")
    p.unlink()
    with pytest.raises(EdgeShituError, match="missing from the bundle"):
        Bundle.open(root).artifact("rec", "tflite:int8")


def test_missing_kind_says_what_exists(tmp_path: Path) -> None:
    b = Bundle.open(make_bundle(tmp_path / "b"))
    with pytest.raises(EdgeShituError, match=r"no rec artifact of kind nb:arm:int8 \(the bundle has: tflite:int8\)"):
        b.artifact("rec", "nb:arm:int8")


def test_newer_format_and_malformed_manifest(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**m, "format_version": [2, 0]}))
    with pytest.raises(VersionError, match="upgrade edge-shitu"):
        Bundle.open(root)
    (root / "manifest.json").write_text(json.dumps({**m, "rec": {"preprocess": {}, "feature_dim": 64}}))
    with pytest.raises(EdgeShituError, match=r"rec\.artifacts is missing"):
        Bundle.open(root)
    bad = json.loads(json.dumps(m))
    bad["rec"]["artifacts"][0]["file"] = "../../etc/passwd"
    (root / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(EdgeShituError, match="inside the bundle"):
        Bundle.open(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(EdgeShituError, match="not valid JSON"):
        Bundle.open(root)
    with pytest.raises(EdgeShituError, match="not a bundle directory"):
        Bundle.open(tmp_path / "nope")

