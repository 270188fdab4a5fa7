#!/usr/bin/env python3
"""Channel pruning with least-squares reconstruction on the real MobileNetV2 extractor.

    .venv/bin/python benchmarks/bench_prune.py                 # ~30 min on 2 shared cores
    .venv/bin/python benchmarks/bench_prune.py --sample 400    # faster search (under-states the drop)
    .venv/bin/python benchmarks/bench_prune.py --quick         # 300 photos for the figures, no TFLite

Rows: MobileNetV2 (torchvision ImageNet weights, GeM, letterbox 320) unpruned; pruned by
``converters/prune_reconstruct.py`` at the largest MAC reduction whose recall@1 drop on a
sample of whole drink classes (``--sample``, default: the whole gallery) stays within the budget
(1 point), with and without the least-squares reconstruction; and the same at the issue's 25% MAC
target when the search chose another. Each row: MACs, params,
leave-one-out recall@1 on the whole drink gallery (1068 photos, float search; the pruned model's
own features on both sides, and its queries against the FP32 gallery, as a bundle holds by
default), the drop vs FP32 float search, and, for the reconstructed models, fp32 and int8 TFLite
latency (the toolchain's own export path, ``convert_model``), all files timed interleaved in one
run at 1 and 2 threads.

Prints a table; writes benchmarks/results/bench_prune.json.
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import DRINK_GALLERY, DRINK_LABELS_ALL, asset  # noqa: E402
from edge_shitu.timing import interleaved, median_ms  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "prune"
SEARCH_TARGETS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
ISSUE_TARGET = 0.25


def _interleaved(runners: dict[str, Any], feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    x = next(iter(feed.values()))
    calls = {k: partial(r.run, {r.inputs[0].name: x}) for k, r in runners.items()}
    return median_ms(interleaved(calls, runs, warmup=3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 photos for the final figures, no TFLite")
    ap.add_argument("--budget", type=float, default=1.0, help="recall@1 budget in points (default 1.0)")
    ap.add_argument("--calib", type=int, default=240, help="statistics photos (spread over the gallery; convert "
                    "tops its calibration photos up to prune_reconstruct.RECONSTRUCT_IMAGES = 240 the same way)")
    ap.add_argument("--sample", type=int, default=2000, help="gallery photos (whole classes) for the search; a "
                    "sample smaller than the gallery under-states the drop")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_prune.json")
    args = ap.parse_args()

    from edge_shitu.converters import mobilenet_v2
    from edge_shitu.converters import prune_reconstruct as pr
    from edge_shitu.converters.paddle_model import count_flops, count_params, load_model
    from edge_shitu.converters.task_gate import sample_rows
    from edge_shitu.gallery import read_gallery
    from edge_shitu.gallery_build_embed import rec_preprocess_for
    from edge_shitu.preprocess import load_image

    gallery = asset(*DRINK_GALLERY)
    if gallery is None:
        raise SystemExit("no drink gallery: put ../shared/assets beside the project (or set EDGE_SHITU_ASSETS)")
    CACHE.mkdir(parents=True, exist_ok=True)
    base = CACHE / "mnv2"
    if not (base / "inference.pdiparams").exists():
        mobilenet_v2.export_extractor(None, base)
    g = read_gallery(gallery, asset(*DRINK_LABELS_ALL))
    items = list(g.items)
    labels = [it.label for it in items]
    pre = rec_preprocess_for(base)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    calib = [{"x": pre.batch([load_image(items[i].path)])}
             for i in np.linspace(0, len(items) - 1, args.calib).round().astype(int)]
    search_rows = sample_rows(labels, args.sample, seed=1)
    t0 = time.time()
    search_probe = pr.RecallProbe(base, [load_image(items[i].path) for i in search_rows],
                                  [labels[i] for i in search_rows])
    say(f"search sample: {len(search_rows)} photos, FP32 recall@1 {search_probe.reference:.4f}")
    chosen = pr.prune_reconstruct(base, CACHE / "pruned_budget", calib, probe=search_probe,
                                  recall_budget=args.budget, targets=SEARCH_TARGETS, progress=say)
    target = chosen.target or 0.0
    say(f"budget {args.budget} points -> target {target:.2f}: {chosen.macs_reduction:.1%} fewer MACs "
        f"({time.time() - t0:.0f} s)")
    models: dict[str, tuple[Path, Any]] = {"unpruned": (base, None), "reconstruct @budget": (chosen.out_dir, chosen)}
    variants = [("no-reconstruct @budget", target, False)]
    if abs(target - ISSUE_TARGET) > 1e-9:
        variants += [("reconstruct @25%", ISSUE_TARGET, True), ("no-reconstruct @25%", ISSUE_TARGET, False)]
    for name, t, rec in variants:
        if t <= 0:
            continue
        d = CACHE / name.replace(" ", "_").replace("@", "").replace("%", "")
        models[name] = (d, pr.prune_reconstruct(base, d, calib, target=t, reconstruct=rec))

    rows_eval = sample_rows(labels, 300, seed=1) if args.quick else np.arange(len(items))
    say(f"recall on {len(rows_eval)} photos")
    probe = pr.RecallProbe(base, [load_image(items[i].path) for i in rows_eval], [labels[i] for i in rows_eval])
    shapes = {"x": [1, 3, 320, 320]}
    rows: list[dict[str, Any]] = []
    for name, (d, rep) in models.items():
        m = load_model(d)
        fig = probe.figures(probe.ref_feats) if rep is None else probe.measure(d)
        rows.append({"model": name, "dir": str(d), "macs": count_flops(m, shapes).macs, "params": count_params(m),
                     "target": None if rep is None else rep.target,
                     "hidden_channels": None if rep is None else rep.to_dict()["hidden_channels"], **fig})
        say(f"{name}: recall {fig['recall_at_1']:.4f} / vs fp32 gallery {fig['recall_at_1_fp32_gallery']:.4f}")
    m0 = rows[0]["macs"]
    for r in rows:
        r["macs_reduction"] = round(1 - r["macs"] / m0, 4)

    latency: dict[str, dict[str, float]] = {}
    if not args.quick:
        from edge_shitu.converters.convert import ConvertOptions, convert_model
        from edge_shitu.formats import artifact_format, kind_for
        from edge_shitu.runtimes.backend import open_backend

        kinds = [kind_for("tflite", "fp32"), kind_for("tflite", "int8")]
        photos = [load_image(items[i].path) for i in np.linspace(0, len(items) - 1, 48).round().astype(int)]
        files: dict[str, Path] = {}
        for name in ("unpruned", "reconstruct @budget", "reconstruct @25%"):
            if name not in models:
                continue
            d = models[name][0]
            safe = name.replace(" ", "_").replace("@", "").replace("%", "")
            opts = ConvertOptions(prune=False, allow_degraded=True, latency_threads=(1,), latency_runs=3)
            res = convert_model(d, "rec", photos[:32], photos[32:], kinds, CACHE / f"tfl_{safe}",
                                CACHE / f"work_{safe}", opts, lambda m, n=name: say(f"  [{n}] {m}"))
            for k, p in res.runnable.items():
                files[f"{name} {k}"] = p
        feed = {"x": calib[0]["x"]}
        for threads in (1, 2):
            runners = {k: open_backend(p, artifact_format(k.split()[-1]).backend, threads=threads)
                       for k, p in files.items()}
            latency[str(threads)] = _interleaved(runners, feed, args.runs)
        for r in rows:
            for k in kinds:
                for t in ("1", "2"):
                    ms = latency.get(t, {}).get(f"{r['model']} {k}")
                    if ms is not None:
                        r[f"{k} ms {t}t"] = round(ms, 2)
                        ref = latency[t].get(f"unpruned {k}")
                        r[f"{k} speedup {t}t"] = round(ref / ms, 3) if ref else None

    print(f"\nMobileNetV2 (real weights), drink gallery {len(rows_eval)} photos, leave-one-out recall@1 "
          f"(float search); FP32 {probe.reference:.4f}")
    print(f"{'model':24} {'MACs M':>8} {'-MACs':>6} {'params M':>8} {'r@1 own':>8} {'r@1 x fp32':>10} {'drop pt':>8} "
          f"{'fp32 1t':>8} {'int8 1t':>8} {'fp32 2t':>8} {'int8 2t':>8}")
    for r in rows:
        lat = [r.get(f"tflite:{p} ms {t}t") for t in ("1", "2") for p in ("fp32", "int8")]
        print(f"{r['model']:24} {r['macs'] / 1e6:8.1f} {r['macs_reduction']:6.1%} {r['params'] / 1e6:8.3f} "
              f"{r['recall_at_1']:8.4f} {r['recall_at_1_fp32_gallery']:10.4f} {r['drop_points']:8.2f} "
              + " ".join("       -" if v is None else f"{v:8.2f}" for v in lat))
    print("TFLite ms: median of interleaved runs, same process; drop: FP32 float search minus the worse of the two "
          "recall columns")
    result = {"budget_points": args.budget, "search": {"photos": len(search_rows), "tried": chosen.tried,
                                                      "chosen_target": target},
              "calibration_photos": args.calib, "eval_photos": len(rows_eval), "reference_recall_at_1": probe.reference,
              "rows": rows, "latency_ms": latency, "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
