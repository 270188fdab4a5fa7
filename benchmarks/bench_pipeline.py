"""End-to-end recognition latency per shelf photo: the FP32 reference vs the bundle.

(a) reference: FP32 Paddle Inference (MKLDNN, what PaddleClas's Python pipeline runs) for the
    detector (full program, NMS in the graph) and the extractor, float brute-force cosine
    search over FP32 gallery features (PaddleClas: faiss IndexFlatIP);
(b) the bundle: its int8 TFLite detector (cut before NMS, numpy NMS) and extractor, Hamming
    search over the bundle's binary index.

Both run through the same ``edge_shitu.pipeline.Pipeline`` (same PP-ShiTu steps, same numpy
preprocessing), on the same photos, interleaved in one run; the gallery features of (a) are
computed by the reference extractor from the same gallery photos the bundle's index was built
from. Also reported: how many of (a)'s recognized boxes (b) finds (IoU >= 0.5) with the same
gallery label, and with the very same gallery item.

    python benchmarks/bench_pipeline.py                    # builds (and caches) a bundle first
    python benchmarks/bench_pipeline.py --bundle B --gallery DIR [--det D --rec R]

Without --bundle, one is built with ``edge-shitu convert`` from the PP-ShiTu mainbody detector
graph (synthesized weights, ../shared/assets) and the ImageNet MobileNetV2 extractor (real
weights) for a Raspberry Pi 4 board limited to TFLite artifacts, cached under
benchmarks/.cache/. Writes benchmarks/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import asset  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
STAGES = ("det_pre", "det_infer", "det_post", "rec_pre", "rec_infer", "search", "nms", "total")


def build_bundle(out: Path, gallery: Path, labels: Path | None) -> Path:
    """The default bundle: synthesized PicoDet + MobileNetV2 (real weights), rpi4, TFLite only."""
    from edge_shitu.converters import mobilenet_v2
    from edge_shitu.converters.synth_weights import synthesize
    from edge_shitu.preprocess import load_image

    if (out / "manifest.json").exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    shelf = sorted(asset("drink", "test_images").glob("*"))
    photos = [load_image(p) for p in shelf[:6]]
    det = CACHE / "det"
    if not (det / "inference.pdiparams").exists():
        graph = asset("models", "shitu_graphs", "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer")
        synthesize(graph, det, calib_images=photos)
    rec = CACHE / "mnv2"
    if not (rec / "inference.pdiparams").exists():
        mobilenet_v2.export_extractor(None, rec)
    board = json.loads((ROOT / "board_configs" / "rpi4.json").read_text(encoding="utf-8"))
    board.update(name="rpi4-tflite", artifacts=["tflite:int8", "tflite:fp32"])
    bpath = CACHE / "rpi4-tflite.json"
    bpath.write_text(json.dumps(board), encoding="utf-8")
    calib = CACHE / "calib"
    calib.mkdir(exist_ok=True)
    for p in shelf:
        (calib / p.name).write_bytes(p.read_bytes())
    cmd = [sys.executable, "-m", "edge_shitu.cli", "convert", "--det", str(det), "--rec", str(rec),
           "--gallery", str(gallery), "--board", str(bpath), "--no-prune", "--allow-degraded",
           "--calib", str(calib), "--calib-images", "13", "-o", str(out)]
    if labels is not None:
        cmd += ["--labels", str(labels)]
    print("building the bundle:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return out


def reference_pipeline(bundle: Any, det_dir: Path | None, rec_dir: Path, gallery_root: Path,
                       threads: int) -> tuple[Any, float]:
    """(a): Paddle Inference FP32 + float search over FP32 gallery features (cached)."""
    from edge_shitu.detection import PicoDetHead  # noqa: F401  (same module the bundle uses)
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.pipeline import Detector, FloatSearcher, Pipeline, Settings
    from edge_shitu.preprocess import DetPreprocess, RecPreprocess, load_image
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    rec = PaddleBackend(rec_dir, threads=threads)
    rec_pre = RecPreprocess.from_dict(bundle.model("rec")["preprocess"])
    index = GalleryIndex.open(bundle.index_path)
    sources = index.data.meta.get("source_images") or []
    items = index.items()
    if len(sources) != len(items):
        raise SystemExit("the bundle's index has been edited since convert: use a fresh bundle")
    cache = CACHE / f"ref_gallery_{bundle.manifest['source_models']['rec']['files']['inference.pdiparams'][:12]}.npy"
    t0 = time.perf_counter()
    if cache.exists() and np.load(cache).shape[0] == len(sources):
        feats = np.load(cache)
    else:
        feats = np.stack([np.asarray(rec.run({rec.inputs[0].name: rec_pre(load_image(gallery_root / s))})[0],
                                     np.float32).reshape(-1) for s in sources])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(cache, feats)
    embed_s = time.perf_counter() - t0
    searcher = FloatSearcher(feats, [lab for _, lab in items], [i for i, _ in items])
    detector = None
    if det_dir is not None:
        detector = Detector(PaddleBackend(det_dir, threads=threads),
                            DetPreprocess.from_dict(bundle.model("det")["preprocess"]), None)
    settings = Settings.from_runtime(bundle.runtime)
    return Pipeline(rec, rec_pre, searcher, detector=detector, settings=settings), embed_s


def match(ref: list[Any], art: list[Any]) -> tuple[int, int]:
    """(same label, same gallery item) counts of reference objects found by the artifact at IoU >= 0.5."""
    from edge_shitu.detection import iou_matrix

    if not ref or not art:
        return 0, 0
    iou = iou_matrix(np.array([o.box for o in ref]), np.array([o.box for o in art]))
    same_label = same_item = 0
    for i, o in enumerate(ref):
        cands = [j for j in np.argsort(-iou[i]) if iou[i, j] >= 0.5]
        same_label += any(art[j].label == o.label for j in cands)
        same_item += any(art[j].id == o.id for j in cands)
    return same_label, same_item


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="an existing bundle (default: build one, cached)")
    ap.add_argument("--gallery", type=Path, help="the gallery the bundle was built from (default: the drink gallery)")
    ap.add_argument("--det", type=Path, help="FP32 Paddle detector (default: the bundle's source model)")
    ap.add_argument("--rec", type=Path, help="FP32 Paddle extractor (default: the bundle's source model)")
    ap.add_argument("--images", type=Path, help="photos to recognize (default: drink/test_images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per photo and pipeline (median kept)")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_pipeline.json")
    args = ap.parse_args()

    from edge_shitu.bundle import Bundle
    from edge_shitu.cli_recognize import expand_images
    from edge_shitu.pipeline import open_pipeline
    from edge_shitu.preprocess import load_image

    gallery = args.gallery or asset("drink", "gallery")
    if gallery is None:
        raise SystemExit("no gallery: pass --gallery DIR (or put ../shared/assets beside the project)")
    labels = gallery / "drink_label_all.txt" if (gallery / "drink_label_all.txt").exists() else None
    bundle_dir = args.bundle or build_bundle(CACHE / "bundle", gallery, labels)
    bundle = Bundle.open(bundle_dir)
    src = bundle.manifest["source_models"]
    det_dir = args.det or (Path(src["det"]["dir"]) if "det" in src else None)
    rec_dir = args.rec or Path(src["rec"]["dir"])
    images_dir = args.images or asset("drink", "test_images")
    files = list(expand_images([images_dir]))
    ref, embed_s = reference_pipeline(bundle, det_dir, rec_dir, gallery, args.threads)
    dev = open_pipeline(bundle_dir, backend="tflite", precision=args.precision, threads=args.threads)
    print(f"reference gallery features: {embed_s:.1f} s; bundle artifact {dev.artifact_kind}, "
          f"kernel {dev.searcher.index.kernel}, {args.threads} threads, {len(files)} photos", file=sys.stderr)

    per_image: list[dict[str, Any]] = []
    t_ref: dict[str, list[float]] = {s: [] for s in STAGES}
    t_dev: dict[str, list[float]] = {s: [] for s in STAGES}
    n_ref = n_label = n_item = 0
    for f in files:
        img = load_image(f)
        ref(img), dev(img)  # warm-up (first-run allocations)
        runs: dict[str, list[dict[str, float]]] = {"ref": [], "dev": []}
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            ra = ref(img)
            rb = dev(img)
            runs["ref"].append(ra.timings_ms)
            runs["dev"].append(rb.timings_ms)
        med = {k: {s: statistics.median(r.get(s, 0.0) for r in v) for s in STAGES} for k, v in runs.items()}
        for s in STAGES:
            t_ref[s].append(med["ref"][s])
            t_dev[s].append(med["dev"][s])
        lab, item = match(ra.objects, rb.objects)
        n_ref, n_label, n_item = n_ref + len(ra.objects), n_label + lab, n_item + item
        per_image.append({"image": f.name, "size": list(ra.image_size), "ms_ref": round(med["ref"]["total"], 2),
                          "ms_bundle": round(med["dev"]["total"], 2), "ref_objects": len(ra.objects),
                          "bundle_objects": len(rb.objects), "matched_label": lab, "matched_item": item,
                          "ref": [o.to_dict() for o in ra.objects], "bundle": [o.to_dict() for o in rb.objects]})

    def mean(d: dict[str, list[float]], s: str) -> float:
        return float(np.mean(d[s])) if d[s] else 0.0

    rows = [(s, mean(t_ref, s), mean(t_dev, s)) for s in STAGES]
    speedup = rows[-1][1] / rows[-1][2] if rows[-1][2] else float("nan")
    print(f"\nper-photo latency, mean over {len(files)} photos (median of {args.repeats} runs each), "
          f"{args.threads} threads")
    head_b = f"(b) bundle {dev.artifact_kind} + Hamming"
    print(f"{'stage':<10} {'(a) FP32 Paddle + float':>24} {head_b:>30} {'a/b':>6}")
    for s, a, b in rows:
        print(f"{s:<10} {a:>21.2f} ms {b:>27.2f} ms {a / b if b else float('nan'):>6.2f}")
    frac_label = n_label / n_ref if n_ref else float("nan")
    frac_item = n_item / n_ref if n_ref else float("nan")
    print(f"\nend to end: (b) is {speedup:.2f}x faster than (a) (target >= 3x)")
    print(f"recognized boxes of (a): {n_ref}; found by (b) at IoU >= 0.5 with the same label: {n_label} "
          f"({frac_label:.1%}), with the same gallery item: {n_item} ({frac_item:.1%}) (target >= 95%)")
    result = {
        "bundle": str(bundle_dir), "artifact": dev.artifact_kind, "kernel": dev.searcher.index.kernel,
        "threads": args.threads, "repeats": args.repeats, "photos": len(files),
        "reference": {"det": str(det_dir), "rec": str(rec_dir), "engine": "paddle inference fp32 mkldnn",
                      "search": "float brute-force cosine"},
        "stages_ms": {s: {"reference": round(a, 3), "bundle": round(b, 3)} for s, a, b in rows},
        "speedup_end_to_end": round(speedup, 3),
        "ref_recognized_boxes": n_ref, "matched_same_label": n_label, "matched_same_item": n_item,
        "match_fraction_label": round(frac_label, 4), "match_fraction_item": round(frac_item, 4),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "per_image": per_image,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
