"""Helpers for tests that run the `edge-shitu` CLI and need real bundles.

The det + rec bundle for a Raspberry Pi 4 is the most expensive thing the suite makes
(~10 minutes), so it is made once per session (fixtures in conftest.py) and shared by the
convert tests (which check what was written), the runtime tests (which recognize with it) and
the emulated-board test (which runs it on aarch64). Tests that change a bundle copy it first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_shitu.assets import DRINK_GALLERY
from tests.conftest import require_asset

V1 = "general_PPLCNet_x2_5_lite_v1.0_infer"
DET = "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"


@dataclass
class BundleRun:
    """A bundle made by `edge-shitu convert --json` in this session, and how that run went."""

    path: Path
    gallery: Path
    proc: subprocess.CompletedProcess

    def copy(self, dst: Path) -> Path:
        shutil.copytree(self.path, dst)
        return dst


def cli(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_shitu.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-shitu: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def _gallery(root: Path, n: int, step: int = 37, corrupt: int = 0) -> Path:
    """A PaddleClas-layout gallery: n real drink photos (copied), `corrupt` broken files, labels file."""
    src = require_asset(*DRINK_GALLERY)
    lines = (src / "drink_label_all.txt").read_text(encoding="utf-8").splitlines()[::step][:n]
    root.mkdir(parents=True)
    out = []
    for line in lines:
        rel, label = line.split("\t")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, root / rel)
        out.append(f"{rel}\t{label}")
    for i in range(corrupt):
        (root / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        out.append(f"broken_{i}.jpg\tbroken")
    (root / "labels.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    return root


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], list(out.parent.iterdir())


def _board(tmp_path: Path, base: str, artifacts: list[str], **over: object) -> Path:
    from edge_shitu.boards import boards_dir

    raw = json.loads((boards_dir() / f"{base}.json").read_text(encoding="utf-8"))
    raw.update(artifacts=artifacts, name=f"{base}-test", **over)
    p = tmp_path / f"{base}-test.json"
    p.write_text(json.dumps(raw), encoding="utf-8")
    return p


def make_synth_models(out: Path) -> dict[str, Path]:
    """The real PP-ShiTu mainbody detector and v1 extractor graphs with synthesized weights."""
    from edge_shitu.assets import SHITU_GRAPHS
    from edge_shitu.converters.synth_weights import synthesize
    from edge_shitu.preprocess import load_image

    photos = [load_image(p) for p in sorted(require_asset(*DRINK_GALLERY).glob("*/*.jpg"))[::200][:4]]
    return {"rec": synthesize(require_asset(*SHITU_GRAPHS, V1), out / "rec", calib_images=photos).out_dir,
            "det": synthesize(require_asset(*SHITU_GRAPHS, DET), out / "det", calib_images=photos[:2]).out_dir}


def make_rpi4_bundle(tmp: Path, synth: dict[str, Path]) -> BundleRun:
    """det + rec for rpi4 (TFLite int8/fp32, Paddle Lite arm int8/fp32), 14 photos + 1 corrupt file."""
    gal = _gallery(tmp / "g", 14, corrupt=1)
    board = _board(tmp, "rpi4", ["tflite:int8", "tflite:fp32", "nb:arm:int8", "nb:arm:fp32"])
    out = tmp / "bundle"
    # synthetic weights sit at int8's noise floor: --allow-degraded keeps those artifacts, flagged.
    # Their int8 features are too far from FP32 for a reference-embedded gallery (a photo would not
    # find itself): the index is embedded by the int8 artifact, as the device sees it. (The default,
    # --gallery-features reference, is tested with real weights in test_real_weights_extractor_bundle.)
    # --no-bias-correction: synthetic weights give bias correction nothing to find (it is measured on
    # MobileNetV2's real weights in test_convert.py and tests/test_int8_bias.py); it saves CI time.
    proc = cli("convert", "--det", str(synth["det"]), "--rec", str(synth["rec"]), "--gallery", str(gal),
               "--board", str(board), "--allow-degraded", "--no-bias-correction", "--calib-images", "6",
               "--verify-images", "4", "--gallery-features", "artifact", "--json", "-o", str(out))
    return BundleRun(out, gal, proc)
