"""End-to-end recognition per shelf photo with real weights on both sides: FP32 reference vs bundle.

(a) reference, as PaddleClas / PaddleDetection deploy today: the FP32 detector (onnxruntime on the
    user's ONNX file — the real PP-PicoDet-S COCO detector — or Paddle Inference with MKLDNN for a
    Paddle folder), the FP32 extractor (Paddle Inference, MKLDNN: the real MobileNetV2) and float
    brute-force cosine search over FP32 gallery features (PaddleClas: faiss IndexFlatIP);
(b) the bundle: its TFLite artifacts as `edge-shitu recognize` runs them ("bundle": the board's int8
    extractor, and the detector the manifest names: fp32 when the int8 detector is a 16x8 file),
    all-int8 ("int8": the 16x8 detector when int8 activations missed the box gate) and all-fp32,
    Hamming search over its binary index.

Both run through the same ``edge_shitu.pipeline.Pipeline`` (same PP-ShiTu steps: detector
candidates + the whole photo, threshold, NMS over results; same preprocessing), on the same
photos, interleaved in one run; the gallery features of (a) are computed by the reference
extractor from the same gallery photos the bundle's index holds. Also reported: how many of (a)'s
recognized boxes (b) finds (IoU >= 0.5) with the same gallery label, and the same gallery item.

    python benchmarks/bench_pipeline.py                    # `make demo`'s bundle (built if missing)
    python benchmarks/bench_pipeline.py --bundle B --gallery DIR [--det D --rec R]

Writes benchmarks/results/bench_pipeline.json.
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

# Paddle Inference's OpenMP threads busy-wait ~200 ms after each run (KMP_BLOCKTIME): on a
# 2-core machine they would steal the CPU from the bundle's run that follows. Passive waiting
# keeps the interleaved measurement fair to both sides (set before paddle is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import asset  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
# name -> (precision, detector precision), None: the bundle's own choice (its board's precision; the
# manifest's runtime.det_precision: fp32 when the int8 detector is a 16x8 file)
CONFIGS = {"bundle": (None, None), "int8": ("int8", "int8"), "fp32": ("fp32", "fp32")}
STAGES = ("det_pre", "det_infer", "det_post", "rec_pre", "rec_infer", "search", "nms", "total")


def build_bundle(out: Path) -> Path:
    """The default bundle: `make demo`'s (the real PP-PicoDet-S COCO 416 detector + the real
    MobileNetV2 extractor, rpi4 TFLite artifacts, the whole drink gallery), built once."""
    for b in (ROOT / "build" / "demo" / "bundle", out / "bundle"):
        if (b / "manifest.json").exists():
            return b
    cmd = [sys.executable, "-m", "edge_shitu.cli", "demo-bundle", "--out", str(out), "--json"]
    print("building the bundle:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / "bundle"


def cli_start_seconds(runs: int = 5) -> float:
    """Wall time of `edge-shitu --help` in a fresh interpreter (what a user waits for)."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edge_shitu.cli", "--help"], capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return round(statistics.median(out), 3)


def _fp32_backend(model: Path, threads: int) -> Any:
    """The FP32 reference engine of a source model: Paddle Inference (MKLDNN) for a Paddle folder,
    onnxruntime for an ONNX file (what PaddleDetection's ONNX deploy path runs)."""
    from edge_shitu.runtimes.backend import open_backend
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    if model.suffix.lower() == ".onnx":
        return open_backend(model, "onnx", threads)
    return PaddleBackend(model, threads=threads)


def reference_pipeline(bundle: Any, det_dir: Path | None, rec_dir: Path, gallery_root: Path,
                       threads: int) -> tuple[Any, float]:
    """(a): FP32 engines + float search over FP32 gallery features (cached)."""
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.pipeline import Detector, FloatSearcher, Pipeline, Settings
    from edge_shitu.preprocess import DetPreprocess, RecPreprocess, load_image
    rec = _fp32_backend(rec_dir, threads)
    rec_pre = RecPreprocess.from_dict(bundle.model("rec")["preprocess"])
    index = GalleryIndex.open(bundle.index_path)
    sources = index.data.meta.get("source_images") or []
    items = index.items()
    if len(sources) != len(items):
        raise SystemExit("the bundle's index has been edited since convert: use a fresh bundle")
    src = bundle.manifest["source_models"]["rec"]
    key = src.get("sha256") or (src.get("files") or {}).get("inference.pdiparams", "x")
    cache = CACHE / f"ref_gallery_{key[:12]}.npy"
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
        from edge_shitu.gfl_head import GFLHead

        head = None  # a Paddle detector has NMS in the graph; a raw-GFL ONNX is decoded as on the device
        details = (bundle.model("det")["artifacts"][0].get("details") or {})
        if isinstance(details.get("head"), dict) and details["head"].get("type") == "gfl":
            head = GFLHead.from_dict(details["head"])
        detector = Detector(_fp32_backend(det_dir, threads),
                            DetPreprocess.from_dict(bundle.model("det")["preprocess"]), head)
    settings = Settings.from_runtime(bundle.runtime)
    return Pipeline(rec, rec_pre, searcher, detector=detector, settings=settings), embed_s


def candidate_agreement(ref: list[Any], art: list[Any]) -> tuple[int, int]:
    """(candidates compared, same top-1 label): candidates of both runs at IoU >= 0.9, before the
    threshold and the NMS over results (which amplify near-ties between overlapping boxes)."""
    from edge_shitu.detection import iou_matrix

    if not ref or not art:
        return 0, 0
    iou = iou_matrix(np.array([o.box for o in ref]), np.array([o.box for o in art]))
    pairs = [(i, int(iou[i].argmax())) for i in range(len(ref)) if iou[i].max() >= 0.9]
    return len(pairs), sum(ref[i].label == art[j].label for i, j in pairs)


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
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"bundle configurations to time against (a): {', '.join(CONFIGS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_pipeline.json")
    args = ap.parse_args()

    from edge_shitu import Recognizer
    from edge_shitu.bundle import Bundle
    from edge_shitu.gallery import expand_images
    from edge_shitu.preprocess import _opencv, load_image

    gallery = args.gallery or asset("drink", "gallery")
    if gallery is None:
        raise SystemExit("no gallery: pass --gallery DIR (or put ../shared/assets beside the project)")
    bundle_dir = args.bundle or build_bundle(CACHE / "demo")
    bundle = Bundle.open(bundle_dir)
    src = bundle.manifest["source_models"]

    def source(kind: str) -> Path | None:
        if kind not in src:
            return None
        return Path(src[kind].get("dir") or src[kind].get("file") or src[kind].get("path"))

    det_dir = args.det or source("det")
    rec_dir = args.rec or source("rec")
    images_dir = args.images or asset("drink", "test_images")
    files = list(expand_images([images_dir]))
    ref, embed_s = reference_pipeline(bundle, det_dir, rec_dir, gallery, args.threads)
    configs: dict[str, Any] = {}
    for name in args.configs.split(","):
        prec, det_prec = CONFIGS[name]
        configs[name] = Recognizer.open(bundle_dir, backend="tflite", precision=prec, det_precision=det_prec,
                                      threads=args.threads)
    first = next(iter(configs.values()))
    print(f"reference gallery features: {embed_s:.1f} s; kernel {first.searcher.index.kernel}, resize "
          f"{'opencv' if _opencv() else 'numpy'}, {args.threads} threads, {len(files)} photos", file=sys.stderr)

    names = ["ref", *configs]
    pipes = {"ref": ref, **configs}
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in STAGES} for n in names}
    counts = {n: [0, 0, 0, 0] for n in configs}  # same label, same item, candidates, same candidate label
    n_ref = 0
    per_image: list[dict[str, Any]] = []
    for f in files:
        img = load_image(f)
        for p in pipes.values():
            p(img)  # warm-up (first-run allocations)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        last: dict[str, Any] = {}
        for _ in range(args.repeats):  # interleaved: every pipeline sees the same machine load
            for n in names:
                last[n] = pipes[n](img)
                runs[n].append(last[n].timings_ms)
        entry: dict[str, Any] = {"image": f.name, "size": list(last["ref"].image_size),
                                 "ref": [o.to_dict() for o in last["ref"].objects]}
        n_ref += len(last["ref"].objects)
        for n in names:
            for s_ in STAGES:
                times[n][s_].append(statistics.median(r.get(s_, 0.0) for r in runs[n]))
            entry[f"ms_{n}"] = round(times[n]["total"][-1], 2)
            if n != "ref":
                lab, item = match(last["ref"].objects, last[n].objects)
                counts[n][0] += lab
                counts[n][1] += item
                nc, same = candidate_agreement(last["ref"].candidates, last[n].candidates)
                counts[n][2] += nc
                counts[n][3] += same
                entry[n] = {"objects": [o.to_dict() for o in last[n].objects], "matched_label": lab,
                            "matched_item": item}
        per_image.append(entry)

    def engine(m: Path | None) -> str:
        return "no" if m is None else "FP32 onnxruntime" if m.suffix.lower() == ".onnx" else \
            "FP32 Paddle Inference (MKLDNN)"

    def mean(n: str, s_: str) -> float:
        return float(np.mean(times[n][s_])) if times[n][s_] else 0.0

    print(f"\nper-photo latency in ms, mean over {len(files)} photos (median of {args.repeats} runs each), "
          f"{args.threads} threads; (a) = {engine(det_dir)} detector + {engine(rec_dir)} extractor + float search")
    print(f"{'stage':<10} {'(a)':>9} " + " ".join(f"{n:>22}" for n in configs))
    for s_ in STAGES:
        cells = [f"{mean(n, s_):>9.2f} ({mean('ref', s_) / mean(n, s_) if mean(n, s_) else float('nan'):>5.2f}x)"
                 for n in configs]
        print(f"{s_:<10} {mean('ref', s_):>9.2f} " + " ".join(f"{c:>22}" for c in cells))
    print(f"\nrecognized boxes of (a): {n_ref}; found by each bundle configuration at IoU >= 0.5 (target >= 95%):")
    summary = {}
    for n in configs:
        sp = mean("ref", "total") / mean(n, "total")
        fl, fi = (counts[n][0] / n_ref, counts[n][1] / n_ref) if n_ref else (float("nan"), float("nan"))
        fc = counts[n][3] / counts[n][2] if counts[n][2] else float("nan")
        print(f"  {n:<22} {sp:5.2f}x faster end to end (target >= 3x); same label {counts[n][0]} ({fl:.1%}), "
              f"same gallery item {counts[n][1]} ({fi:.1%}); per candidate box, same top-1 label "
              f"{counts[n][3]}/{counts[n][2]} ({fc:.1%})")
        summary[n] = {"artifact": configs[n].artifact_kind, "speedup_end_to_end": round(sp, 3),
                      "matched_same_label": counts[n][0], "matched_same_item": counts[n][1],
                      "match_fraction_label": round(fl, 4), "match_fraction_item": round(fi, 4),
                      "candidates_compared": counts[n][2], "candidate_label_agreement": round(fc, 4)}
    result = {
        "bundle": str(bundle_dir), "kernel": first.searcher.index.kernel, "resize": "opencv" if _opencv() else "numpy",
        "threads": args.threads, "repeats": args.repeats, "photos": len(files),
        "reference": {"det": str(det_dir), "rec": str(rec_dir),
                      "engine": f"{engine(det_dir)} det, {engine(rec_dir)} rec",
                      "search": "float brute-force cosine"},
        "stages_ms": {n: {s_: round(mean(n, s_), 3) for s_ in STAGES} for n in names},
        "ref_recognized_boxes": n_ref, "configs": summary,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "per_image": per_image,
    }
    result["cli_start_s"] = cli_start_seconds()
    print(f"CLI start (edge-shitu --help, median of 5): {result['cli_start_s']:.3f} s (target < 1 s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
