#!/usr/bin/env python3
"""Preprocessing benchmark: per photo, today's numpy path vs the C preprocessing (every path here).

    python benchmarks/bench_preprocess.py            # 13 shelf photos x 15 interleaved rounds
    python benchmarks/bench_preprocess.py --quick    # 3 rounds

Per photo of ../shared/assets/drink/test_images (13 shelf photos), what the device runtime
preprocesses: the detector input (PP-ShiTu's mainbody detector: 640x640 bicubic, ImageNet
normalisation, CHW, PadStride 32) and 5 extractor inputs (the whole photo and 4 boxes; 224x224
bilinear stretch, PP-ShiTu's extractor). Modes: ``numpy`` (EDGE_SHITU_NATIVE_PREPROCESS=0 and no
OpenCV, a board's path today), ``native-<path>`` for every C path this CPU runs, and ``opencv``
(numpy with OpenCV's resize, where installed) for reference. The modes run interleaved (rotating
order, per photo, per round) so that machine noise hits them alike; times are medians over the
rounds, summed over the photos. The demo bundle's extractor (320x320 letterbox with Pillow's
bilinear resize, numpy path: Pillow + numpy canvas and tables) is timed too; there the C code
reproduces Pillow's resampling.

Prints a table; writes benchmarks/results/bench_preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu import preprocess as pp  # noqa: E402
from edge_shitu.assets import asset  # noqa: E402
from edge_shitu.runtimes import native_preprocess as npre  # noqa: E402

DET_OPS = [{"type": "Resize", "target_size": [640, 640], "keep_ratio": False, "interp": 2},
           {"type": "NormalizeImage", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True},
           {"type": "Permute"}, {"type": "PadStride", "stride": 32}]
# boxes as fractions of the photo (x1, y1, x2, y2): product-sized crops like the detector's
BOXES = [(0.0, 0.0, 1.0, 1.0), (0.05, 0.1, 0.35, 0.8), (0.4, 0.2, 0.62, 0.9), (0.6, 0.05, 0.95, 0.5),
         (0.3, 0.55, 0.7, 0.98)]


def crops(img: np.ndarray) -> list[np.ndarray]:
    h, w = img.shape[:2]
    return [img[int(y1 * h):int(y2 * h), int(x1 * w):int(x2 * w)] for x1, y1, x2, y2 in BOXES]


def per_photo(det: pp.DetPreprocess, rec: pp.RecPreprocess) -> Callable[[np.ndarray, list[np.ndarray]], float]:
    def run(img: np.ndarray, cs: list[np.ndarray]) -> float:
        t0 = time.perf_counter()
        det(img)
        for c in cs:
            rec(c)
        return time.perf_counter() - t0
    return run


def set_mode(mode: str, nat: npre.NativePreprocess | None) -> None:
    os.environ["EDGE_SHITU_RESIZE"] = "auto" if mode == "opencv" else "numpy"
    os.environ[npre.ENV] = "auto" if mode.startswith("native") else "0"
    if mode.startswith("native-") and nat is not None:
        assert nat.force(mode.split("-", 1)[1])


def measure(photos: list[np.ndarray], modes: list[str], rounds: int, rec: pp.RecPreprocess,
            nat: npre.NativePreprocess | None) -> dict[str, list[float]]:
    """Median seconds per photo, per mode (modes interleaved, order rotated every photo)."""
    run = per_photo(pp.DetPreprocess([dict(o) for o in DET_OPS]), rec)
    cs = [crops(p) for p in photos]
    times: dict[str, list[list[float]]] = {m: [[] for _ in photos] for m in modes}
    for r in range(rounds + 1):  # round 0 warms up (taps caches, page faults)
        for i, img in enumerate(photos):
            order = modes[(r + i) % len(modes):] + modes[:(r + i) % len(modes)]
            for m in order:
                set_mode(m, nat)
                t = run(img, cs[i])
                if r:
                    times[m][i].append(t)
    if nat is not None:
        nat.force("auto")
    return {m: [statistics.median(ts) for ts in v] for m, v in times.items()}


def table(name: str, med: dict[str, list[float]]) -> list[dict[str, Any]]:
    base = med["numpy"]
    rows = []
    print(f"\n{name}: ms per photo (sum of per-photo medians / photos), ratio = numpy / mode")
    print(f"{'mode':<18}{'ms/photo':>10}{'ratio':>8}{'min ratio':>11}{'max ratio':>11}")
    for m, v in med.items():
        ratios = [b / t for b, t in zip(base, v)]
        row = {"mode": m, "ms_per_photo": 1e3 * sum(v) / len(v), "ratio_vs_numpy": sum(base) / sum(v),
               "min_photo_ratio": min(ratios), "max_photo_ratio": max(ratios),
               "per_photo_ms": [round(1e3 * t, 3) for t in v]}
        rows.append(row)
        print(f"{m:<18}{row['ms_per_photo']:>10.2f}{row['ratio_vs_numpy']:>8.2f}{row['min_photo_ratio']:>11.2f}"
              f"{row['max_photo_ratio']:>11.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_preprocess.json")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 15)
    d = asset("drink", "test_images")
    if d is None:
        sys.exit("bench_preprocess: ../shared/assets/drink/test_images not found (set EDGE_SHITU_ASSETS)")
    paths = sorted(d.iterdir())
    photos = [pp.load_image(p) for p in paths]
    os.environ[npre.ENV] = "auto"
    nat = npre.get()
    native_paths = [k for k in ("portable", "avx2", "neon") if nat is not None and nat.force(k)]
    if nat is not None:
        nat.force("auto")
    modes = ["numpy"] + [f"native-{k}" for k in native_paths]
    if pp._opencv() is not None or _has_cv2():
        modes.append("opencv")
    print(f"{len(photos)} photos, {rounds} rounds, modes: {', '.join(modes)}"
          f"{'' if nat else ' (no native library: make native)'}", flush=True)
    shitu = table("PP-ShiTu (det 640 bicubic + 5 x rec 224 bilinear stretch)",
                  measure(photos, modes, rounds, pp.RecPreprocess(), nat))
    demo = table("demo bundle (det 640 bicubic + 5 x rec 320 letterbox, Pillow bilinear)",
                 measure(photos, modes, max(3, rounds // 3), pp.RecPreprocess(size=(320, 320), fit="letterbox",
                                                                              resize="pil"), nat))
    result = {
        "benchmark": "bench_preprocess", "quick": args.quick, "rounds": rounds,
        "photos": [p.name for p in paths], "photo_sizes": [list(p.shape[:2]) for p in photos],
        "per_photo": "detector input (640x640 bicubic, PadStride 32) + 5 extractor inputs (whole photo + 4 boxes)",
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "numpy": np.__version__, "native_default": nat.kernel if nat is not None else None},
        "pp_shitu": shitu, "demo_bundle": demo,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")


def _has_cv2() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
