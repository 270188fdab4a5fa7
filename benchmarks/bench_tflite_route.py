#!/usr/bin/env python3
"""Which route makes the better TFLite of an ONNX model: onnx2tf on the user's ONNX file, or on
the ONNX re-exported (paddle2onnx) from x2paddle's Paddle program (docs/model-inputs.md)?

    python benchmarks/bench_tflite_route.py                 # OSNet-x0.25 + PicoDet-S 320
    python benchmarks/bench_tflite_route.py --models osnet

Both routes are verified against onnxruntime on the user's file, on held-out real drink photos
(``converters/verify.py``), fp32 and int8 (int8 calibrated on 8 photos, not gated here).
Writes benchmarks/results/bench_tflite_route.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


MODELS = {
    "osnet": ("rec", "models/real_weights/osnet_x0_25_msmt17/osnet_x0_25_msmt17.onnx"),
    "picodet320": ("det", "models/real_weights/picodet_s_coco/picodet_s_320_coco.onnx"),
}


def _fid(art: Any) -> dict[str, Any]:
    if str(getattr(art, "path", "")) in ("", "."):
        return {"rejected": (art.details or {}).get("rejected")}
    f = art.fidelity.to_dict() if art.fidelity is not None else {}
    outs = f.get("outputs") or []
    return {"bytes": Path(art.path).stat().st_size,
            "cosine_mean": min(o["cosine_mean"] for o in outs) if outs else None,
            "cosine_min": min(o["cosine_min"] for o in outs) if outs else None,
            "max_abs": max(o["max_abs"] for o in outs) if outs else None}


def run(name: str, assets: Path, work: Path) -> dict[str, Any]:
    from edge_shitu.converters import export_onnx, model_source
    from edge_shitu.converters.convert import load_calib_dir, split_images
    from edge_shitu.converters.export_tflite import to_tflite
    from edge_shitu.converters.verify import PERMISSIVE

    kind, rel = MODELS[name]
    images = load_calib_dir(assets / "drink" / "test_images", lambda m: None)
    cal, ver = split_images(images, 8, 4)
    prep = model_source.prepare(assets / rel, kind, ver, work / name)
    calib = [prep.feed(im) for im in cal]
    verify = [prep.feed(im) for im in ver]
    import numpy as np

    x = np.concatenate([next(iter(c.values())) for c in calib], axis=0)
    opts = {"float_pooling": True, "mse_ranges": True} if kind == "rec" else {}
    out: dict[str, Any] = {"kind": kind, "model": rel}
    paddle_onnx = export_onnx.to_onnx(prep.paddle_dir, work / name / "from_paddle.onnx",
                                      verify_feeds=verify, reference=prep.reference).path
    for route, src in (("onnx file", prep.reference), ("paddle program", paddle_onnx)):
        t0 = time.perf_counter()
        res: dict[str, Any] = {}
        for precision in ("fp32", "int8"):
            try:
                arts = to_tflite(src, work / name / route.replace(" ", "_"), name=kind, precisions=[precision],
                                 calibration=x, verify_feeds=verify, reference=prep.reference,
                                 thresholds={precision: PERMISSIVE}, on_fail="skip", **opts)
                res[precision] = _fid(arts[precision])
            except Exception as e:  # a route that fails is a result
                res[precision] = {"error": str(e)[:300]}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out[route] = res
        print(name, route, json.dumps(res), flush=True)
    return out


def main() -> None:
    from edge_shitu.assets import assets_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    a = ap.parse_args()
    assets = assets_dir()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        for m in a.models.split(","):
            results[m] = run(m, assets, Path(tmp))
    dest = ROOT / "benchmarks" / "results" / "bench_tflite_route.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
