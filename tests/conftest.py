"""Shared fixtures: the one place that finds ../shared/assets (or skips, saying why)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge_shitu.assets import assets_dir


def require_asset(*parts: str) -> Path:
    """Return an asset path, or skip the test with the reason it is missing."""
    p = assets_dir().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset {'/'.join(parts)} not found under {assets_dir()} "
                    "(set EDGE_SHITU_ASSETS to the shared/assets folder)")
    return p


@pytest.fixture(scope="session")
def assets() -> Path:
    root = assets_dir()
    if not root.exists():
        pytest.skip(f"shared assets not found at {root} (set EDGE_SHITU_ASSETS)")
    return root


@pytest.fixture(scope="session")
def synth_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runnable PP-ShiTu detector + v1 extractor (real graphs, synthesized weights)."""
    pytest.importorskip("paddleslim")
    from tests.bundles import make_synth_models

    return make_synth_models(tmp_path_factory.mktemp("synth"))


def small_drink_gallery(dest: Path, n_labels: int = 12, per_label: int = 2) -> Path:
    """A few drink gallery photos (copied: the gallery reader refuses symlinks) + a labels file."""
    src = require_asset("drink", "gallery")
    rows: dict[str, list[str]] = {}
    for line in (src / "drink_label.txt").read_text(encoding="utf-8").splitlines():
        rel, _, label = line.partition("\t")
        if label and len(rows.setdefault(label, [])) < per_label:
            rows[label].append(rel)
    picked = [(rel, lab) for lab, rels in list(rows.items())[:n_labels] for rel in rels]
    for rel, _ in picked:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
    (dest / "drink_label.txt").write_text("".join(f"{r}\t{lab}\n" for r, lab in picked), encoding="utf-8")
    return dest


MNV2_SMALL = 96  # input size of the small MobileNetV2 export the converter-step tests share


@pytest.fixture(scope="session")
def mnv2_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's MobileNetV2 (real ImageNet weights) as a Paddle extractor at 96 px: small
    enough for per-step converter tests; skips when the weights are not available."""
    pytest.importorskip("paddleslim")
    from edge_shitu.converters import mobilenet_v2
    from edge_shitu.errors import EdgeShituError

    try:
        mobilenet_v2.find_weights()
    except EdgeShituError as e:
        pytest.skip(str(e))
    return mobilenet_v2.export_extractor(None, tmp_path_factory.mktemp("mnv2") / "m", input_size=MNV2_SMALL)


def plain_conv_model(out: Path) -> Path:
    """A conv-BN-ReLU-conv-BN Paddle model (16 px input ``x``): no inverted residual, no stream."""
    from edge_shitu.converters import mobilenet_v2

    with mobilenet_v2.dygraph() as paddle:
        from paddle import nn

        net = nn.Sequential(nn.Conv2D(3, 8, 3, padding=1, bias_attr=False), nn.BatchNorm2D(8), nn.ReLU(),
                            nn.Conv2D(8, 4, 1, bias_attr=False), nn.BatchNorm2D(4))
        net.eval()
        paddle.jit.save(net, str(out / "inference"),
                        input_spec=[paddle.static.InputSpec([1, 3, 16, 16], "float32", name="x")])
    return out


@pytest.fixture(scope="session")
def rpi4_bundle(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """The session's det + rec rpi4 bundle (tests/bundles.py); fails the test if convert failed.

    EDGE_SHITU_REUSE_BUNDLES=DIR (developers; CI never sets it) keeps the bundle in DIR/rpi4 and
    reuses it in later sessions: the runtime tests then start in seconds."""
    import os
    import subprocess

    from tests.bundles import BundleRun, make_rpi4_bundle

    keep = os.environ.get("EDGE_SHITU_REUSE_BUNDLES")
    if keep and (Path(keep) / "rpi4" / "bundle" / "manifest.json").is_file():
        root = Path(keep) / "rpi4"
        return BundleRun(root / "bundle", root / "g", subprocess.CompletedProcess([], 0, "", ""))
    if keep:
        (Path(keep) / "rpi4").mkdir(parents=True, exist_ok=True)
    synth_models = request.getfixturevalue("synth_models")  # only when the bundle must be made
    run = make_rpi4_bundle(Path(keep) / "rpi4" if keep else tmp_path_factory.mktemp("rpi4"), synth_models)
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    return run
