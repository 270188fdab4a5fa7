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

# Paddle Inference's OpenMP threads busy-wait ~200 ms after each run (KMP_BLOCKTIME): on a
# 2-core machine they would steal the CPU from the bundle's run that follows. Passive waiting
# keeps the interleaved measurement fair to both sides (set before paddle is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import asset  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
# name -> (precision, detector precision or None for the same)
CONFIGS = {"int8": ("int8", None), "int8-rec+fp32-det": ("int8", "fp32"), "fp32": ("fp32", None)}
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
    from edge_shitu.formats import kind_for

    board.update(name="rpi4-tflite", artifacts=[kind_for("tflite", p) for p in ("int8", "fp32")])
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


def cli_start_seconds(runs: int = 5) -> float:
    """Wall time of `edge-shitu --help` in a fresh interpreter (what a user waits for)."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edge_shitu.cli", "--help"], capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return round(statistics.median(out), 3)


def reference_pipeline(bundle: Any, det_dir: Path | None, rec_dir: Path, gallery_root: Path,
                       threads: int) -> tuple[Any, float]:
    """(a): Paddle Inference FP32 + float search over FP32 gallery features (cached)."""
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
    labels = gallery / "drink_label_all.txt" if (gallery / "drink_label_all.txt").exists() else None
    bundle_dir = args.bundle or build_bundle(CACHE / "bundle", gallery, labels)
    bundle = Bundle.open(bundle_dir)
    src = bundle.manifest["source_models"]
    det_dir = args.det or (Path(src["det"]["dir"]) if "det" in src else None)
    rec_dir = args.rec or Path(src["rec"]["dir"])
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

    def mean(n: str, s_: str) -> float:
        return float(np.mean(times[n][s_])) if times[n][s_] else 0.0

    print(f"\nper-photo latency in ms, mean over {len(files)} photos (median of {args.repeats} runs each), "
          f"{args.threads} threads; (a) = FP32 Paddle Inference (MKLDNN) + float search")
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
        "reference": {"det": str(det_dir), "rec": str(rec_dir), "engine": "paddle inference fp32 mkldnn",
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
