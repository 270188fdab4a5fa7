"""The detector's input size as a board setting: PicoDet-S at 320 vs 416, speed and boxes.

The real PP-PicoDet-S COCO 416 ONNX (the `make demo` detector: product classes, one
class-agnostic NMS) is run at its own 416x416 and re-targeted to each other size
(``converters/onnx_resize.py``: what ``convert`` does for a board whose ``det.input_size`` is
not the model's), each size as FP32 onnxruntime and as the FP32 TFLite file ``convert`` would
ship (onnx2tf, the user's-ONNX route). Every configuration runs on the same shelf photos,
interleaved (each photo: every configuration, ``--repeats`` times), and its boxes (scoring >= 0.25,
as the GFL gate counts them) are matched at IoU 0.5 in photo pixels against the FP32 reference at
the model's own size (onnxruntime at 416, boxes scoring >= 0.3). For context, PaddleDetection's
separately trained picodet_s_320_coco (a different model, not the 416 one re-targeted) is run
the same way when present.

    python benchmarks/bench_det_size.py                        # 320 vs 416, 13 shelf photos, 1 and 2 threads
    python benchmarks/bench_det_size.py --sizes 256,320,416 --threads 2 --repeats 9

Writes benchmarks/results/bench_det_size.json; TFLite files are cached in benchmarks/.cache/det_size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import DRINK_TEST_IMAGES, PICODET_S_416, asset  # noqa: E402
from edge_shitu.timing import interleaved_stages, median_ms  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "det_size"
PICODET_S_320 = ("models", "real_weights", "picodet_s_coco", "picodet_s_320_coco.onnx")
CLASSES = "bottle,wine glass,cup,bowl,vase"  # the demo's product classes, one NMS across them


def _models(det: Path, sizes: list[int], with_320_file: bool) -> list[dict[str, Any]]:
    """One row per (model file, size): the ONNX run at that size (re-targeted when needed)."""
    from edge_shitu.converters.model_input import inspect_model
    from edge_shitu.converters.onnx_resize import retarget_onnx

    own = inspect_model(det).input_size()
    assert own is not None
    rows = []
    for s in sizes:
        if (s, s) == tuple(own):
            path, what = det, f"{det.stem} (own size)"
        else:
            path = CACHE / f"{det.stem}_{s}x{s}.onnx"
            fresh = path.exists() and path.stat().st_mtime >= det.stat().st_mtime
            r = retarget_onnx(det, (s, s), None if fresh else path)  # kept: its TFLite file stays cached
            what = f"{det.stem} re-targeted to {s} ({len(r.rewritten)} constants)"
        rows.append({"name": f"{s}", "size": s, "onnx": path, "what": what})
    other = asset(*PICODET_S_320)
    if with_320_file and other is not None:
        rows.append({"name": "320-file", "size": 320, "onnx": other,
                     "what": "picodet_s_320_coco (separately trained; own size)"})
    return rows


def _tflite(onnx_path: Path, name: str) -> Path:
    """The FP32 TFLite file convert makes from an ONNX detector (onnx2tf in a child process), cached."""
    out = CACHE / f"{name}_fp32.tflite"
    if out.exists() and out.stat().st_mtime >= onnx_path.stat().st_mtime:
        return out
    from edge_shitu.converters.export_tflite import to_tflite

    t0 = time.perf_counter()
    arts = to_tflite(onnx_path, CACHE, name=name, precisions=("fp32",))
    print(f"  {out.name}: onnx2tf {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return Path(arts["fp32"].path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--det", type=Path, default=None, help="ONNX detector with a raw GFL head (default: PicoDet-S 416)")
    ap.add_argument("--sizes", default="320,416", help="square input sizes, multiples of 32")
    ap.add_argument("--photos", type=Path, default=None, help="default: the 13 drink shelf photos")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5, help="runs per photo and configuration (median kept)")
    ap.add_argument("--no-320-file", action="store_true", help="skip the separately trained picodet_s_320_coco")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_det_size.json")
    args = ap.parse_args()

    from edge_shitu.converters.model_input import inspect_model
    from edge_shitu.converters.preprocess_spec import parse_spec
    from edge_shitu.converters.verify import GFL_GATE_SCORE, GFL_SCORE_MARGIN, compare_boxes, gfl_photo_boxes
    from edge_shitu.gallery import expand_images
    from edge_shitu.gfl_head import GFLHead
    from edge_shitu.preprocess import load_image
    from edge_shitu.runtimes.backend import open_backend

    det = args.det or asset(*PICODET_S_416)
    photos_dir = args.photos or asset(*DRINK_TEST_IMAGES)
    if det is None or photos_dir is None:
        raise SystemExit("no detector / photos: pass --det and --photos (or put ../shared/assets beside the project)")
    CACHE.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    photos = [load_image(p) for p in expand_images([photos_dir])]
    own = inspect_model(det).input_size()
    assert own is not None

    def head_pre(path: Path, size: int) -> tuple[Any, Any]:
        info = inspect_model(path)
        head = GFLHead.from_output_shapes((size, size), [(t.name, t.shape) for t in info.outputs],
                                          image=info.image_input.name, classes=CLASSES.split(","),
                                          class_agnostic=True)
        return head, parse_spec(None, "det", model_size=(size, size)).det_preprocess()

    rows = _models(det, sizes, not args.no_320_file)
    configs: list[dict[str, Any]] = []
    for r in rows:
        head, pre = head_pre(r["onnx"], r["size"])
        tfl = _tflite(r["onnx"], Path(r["onnx"]).stem)
        for engine, path in (("onnxruntime", r["onnx"]), ("tflite fp32", tfl)):
            configs.append({"row": r, "engine": engine, "path": path, "head": head, "pre": pre,
                            "bytes": Path(path).stat().st_size})
    ref_head, ref_pre = head_pre(det, own[0])
    ref = open_backend(det, "onnx", 1)
    ref_boxes = [gfl_photo_boxes(ref, ref_pre, ref_head, im, GFL_GATE_SCORE) for im in photos]
    for c in configs:
        be = open_backend(c["path"], "onnx" if c["engine"] == "onnxruntime" else "tflite", 1)
        c["boxes"] = compare_boxes(ref_boxes, [gfl_photo_boxes(be, c["pre"], c["head"], im,
                                                               GFL_GATE_SCORE - GFL_SCORE_MARGIN) for im in photos])

    def stages(c: dict[str, Any], be: Any, feed: dict[str, np.ndarray], im: np.ndarray) -> dict[str, float]:
        """One round of one configuration: inference alone, then the runtime's whole detector step."""
        t0 = time.perf_counter()
        be.run(feed)
        t1 = time.perf_counter()
        gfl_photo_boxes(be, c["pre"], c["head"], im, 0.3)  # preprocess + infer + decode + NMS
        t2 = time.perf_counter()
        return {"infer": (t1 - t0) * 1e3, "det": (t2 - t1) * 1e3}

    timing: dict[int, dict[int, dict[str, list[float]]]] = {}
    for t in threads:  # interleaved: every configuration sees the same machine load, photo by photo
        runners = [open_backend(c["path"], "onnx" if c["engine"] == "onnxruntime" else "tflite", t) for c in configs]
        feeds = [[{be.inputs[0].name: c["pre"](im)["image"]} for im in photos] for c, be in zip(configs, runners)]
        per: dict[int, dict[str, list[float]]] = {i: {"infer": [], "det": []} for i in range(len(configs))}
        for j, im in enumerate(photos):
            for i, be in enumerate(runners):
                be.run(feeds[i][j])  # warm-up: inference only
            runs = interleaved_stages({i: partial(stages, c, be, feeds[i][j], im)
                                       for i, (c, be) in enumerate(zip(configs, runners))}, args.repeats, warmup=0)
            for i in per:
                for k, ms in median_ms(runs[i]).items():
                    per[i][k].append(ms)
        timing[t] = per

    print(f"\nPicoDet-S COCO, {len(photos)} photos ({photos_dir.name}), median of {args.repeats} runs per photo, "
          f"mean over photos; box recall at IoU 0.5 vs FP32 onnxruntime at the model's own {own[0]}x{own[1]}")
    head_cells = " ".join(f"{f'infer ms {t}t':>12} {f'det ms {t}t':>10}" for t in threads)
    print(f"{'size':<9} {'engine':<12} {'MB':>5} {head_cells} {'recall':>7} {'matched':>8}  model")
    result_rows = []
    for i, c in enumerate(configs):
        b = c["boxes"]
        cells = " ".join(f"{np.mean(timing[t][i]['infer']):>12.2f} {np.mean(timing[t][i]['det']):>10.2f}"
                         for t in threads)
        print(f"{c['row']['name']:<9} {c['engine']:<12} {c['bytes'] / 1e6:>5.2f} {cells} {b.matched_frac:>7.3f} "
              f"{f'{b.matched}/{b.ref_boxes}':>8}  {c['row']['what']}")
        result_rows.append({
            "size": c["row"]["size"], "name": c["row"]["name"], "model": c["row"]["what"], "engine": c["engine"],
            "file": Path(c["path"]).name, "bytes": c["bytes"],
            "infer_ms": {str(t): round(float(np.mean(timing[t][i]["infer"])), 3) for t in threads},
            "det_ms": {str(t): round(float(np.mean(timing[t][i]["det"])), 3) for t in threads},
            "box_recall_vs_native_size": round(b.matched_frac, 4), "ref_boxes": b.ref_boxes,
            "art_boxes": b.art_boxes, "matched": b.matched,
            "iou_mean": None if b.iou_mean != b.iou_mean else round(b.iou_mean, 4)})
    print("det ms = the runtime's detector step: preprocessing + inference + GFL decode + NMS")
    result = {"detector": str(det), "own_size": list(own), "photos": len(photos), "photos_dir": str(photos_dir),
              "threads": threads, "repeats": args.repeats, "classes": CLASSES, "class_agnostic": True,
              "reference": f"onnxruntime FP32 at {own[0]}x{own[1]}, boxes scoring >= {GFL_GATE_SCORE}",
              "candidate_min_score": GFL_GATE_SCORE - GFL_SCORE_MARGIN, "rows": result_rows,
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
