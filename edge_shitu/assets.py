"""Where the shared real assets (drink gallery, PP-ShiTu graphs, real-weight models) live.

One helper so that tests, benchmarks and demos agree: ``EDGE_SHITU_ASSETS`` if set, else
``../shared/assets`` next to the project checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    env = os.environ.get("EDGE_SHITU_ASSETS")
    if env:
        return Path(env).expanduser().resolve()
    return (PROJECT_ROOT.parent / "shared" / "assets").resolve()


def asset(*parts: str) -> Path | None:
    """The path of an asset, or None when it is absent (callers decide to skip or fail)."""
    p = assets_dir().joinpath(*parts)
    return p if p.exists() else None


DRINK_EMBEDDINGS = ("drink", "embeddings", "shitu_v1_drink_label_987x512.npy")
DRINK_LABELS = ("drink", "gallery", "drink_label.txt")
DRINK_LABELS_ALL = ("drink", "gallery", "drink_label_all.txt")
DRINK_GALLERY = ("drink", "gallery")
DRINK_TEST_IMAGES = ("drink", "test_images")
PICODET_S_416 = ("models", "real_weights", "picodet_s_coco", "picodet_s_416_coco.onnx")
SHITU_GRAPHS = ("models", "shitu_graphs")
REAL_WEIGHTS = ("models", "real_weights")
