#!/usr/bin/env python3
"""Conversion benchmark: every artifact `edge-shitu convert` emits, next to FP32 Paddle Inference.

    python benchmarks/bench_convert.py                       # v1, v2, det, mnv2 (~25-40 min on 2 cores)
    python benchmarks/bench_convert.py --models v1,mnv2      # a subset
    python benchmarks/bench_convert.py --models mnv2r        # MobileNetV2 pruned with reconstruction
    python benchmarks/bench_convert.py --quick               # fewer images and timing runs

Per model and artifact: file size, median latency at 1 and 2 threads, fidelity against the FP32
Paddle reference on held-out real drink photos. The reference row, FP32 Paddle Inference with
MKLDNN at the same thread counts, is timed in the same run, interleaved with the artifacts
(this machine is noisy: read the ratios, not the milliseconds).

Models: the real PP-ShiTu graphs (v1 extractor, v2 extractor, mainbody detector) with synthesized
weights, and torchvision's MobileNetV2 with REAL ImageNet weights as an extractor (`mnv2`;
`mnv2r`: the same pruned by `--prune-method reconstruct` within one recall@1 point on the drink
gallery, its TFLite files timed beside the unpruned ones: the pruning's own speed gain).
Every artifact is produced by the toolchain's own code path (converters.convert.convert_model:
prune, PTQ, .nb, ONNX, TFLite, verification), here with --allow-degraded so that the synthetic
models' int8 figures are reported rather than refused.

Prints a table; writes benchmarks/results/bench_convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

# Paddle Inference's OpenMP threads busy-wait ~200 ms after each run (KMP_BLOCKTIME): in the
# interleaved timing below they would take the CPU from the artifact timed next (int8 TFLite at
# 2 threads measured 13 ms instead of 6). Set before paddle is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import DRINK_GALLERY, SHITU_GRAPHS, asset  # noqa: E402
from edge_shitu.formats import artifact_format, kind_for, kinds  # noqa: E402
from edge_shitu.timing import interleaved, median_ms  # noqa: E402

GRAPHS = {"v1": ("rec", "general_PPLCNet_x2_5_lite_v1.0_infer"),
          "v2": ("rec", "general_PPLCNetV2_base_pretrained_v1.0_infer"),
          "det": ("det", "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer")}
# every TFLite precision (int8 first), the x86 .nb that runs here, the arm int8 .nb a phone gets
ARTIFACTS = [*kinds(backend="tflite")[::-1], kind_for("nb", "fp32", "x86_64"), kind_for("nb", "int8", "aarch64")]


def _photos(n: int, offset: int) -> list[np.ndarray]:
    from edge_shitu.preprocess import load_image

    files = sorted(asset(*DRINK_GALLERY).glob("*/*.jpg"))
    idx = np.random.default_rng(0).permutation(len(files))[offset:offset + n]
    return [load_image(files[i]) for i in idx]


def _model_dir(name: str, work: Path) -> tuple[str, Path, str]:
    from edge_shitu.converters.synth_weights import synthesize

    if name == "mnv2":
        from edge_shitu.converters import mobilenet_v2

        return "rec", mobilenet_v2.export_extractor(None, work / "mnv2"), "real (torchvision ImageNet)"
    kind, graph = GRAPHS[name]
    out = synthesize(asset(*SHITU_GRAPHS, graph), work / name, calib_images=_photos(4, 900)).out_dir
    return kind, out, "synthesized"


def _feed_for(runner: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A detector cut before its NMS (TFLite) takes the image alone; full programs take all three."""
    inputs = getattr(runner, "inputs", None)
    if inputs is not None and len(inputs) == 1 and len(feed) > 1:
        return {inputs[0].name: feed.get("image", next(iter(feed.values())))}
    return feed


def _interleaved_latency(runners: dict[str, Any], feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Median ms per runner, round-robin so that machine noise hits every runner alike."""
    calls = {k: partial(r.run, _feed_for(r, feed)) for k, r in runners.items()}
    return median_ms(interleaved(calls, runs, warmup=3))


def _gallery(n: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` labelled drink gallery photos (whole classes, convert's recall sample) for the
    reconstruct pruning's recall budget."""
    from edge_shitu.converters.task_gate import sample_rows
    from edge_shitu.gallery import read_gallery

    root = asset(*DRINK_GALLERY)
    decoded = list(read_gallery(root, root / "drink_label_all.txt").images())
    labels = [it.label for it, _ in decoded]
    rows = sample_rows(labels, n)
    return [decoded[i][1] for i in rows], [labels[i] for i in rows]


def bench_model(name: str, work: Path, n_calib: int, n_verify: int, runs: int,
                recall_photos: int = 2000) -> list[dict[str, Any]]:
    """``mnv2r``: MobileNetV2 pruned by ``--prune-method reconstruct`` (the largest cut within one
    recall@1 point on the drink gallery), its TFLite files timed in the same run as the unpruned
    model's ("unpruned ..." rows): ``prune_speedup`` is the pruning's own gain per format."""
    from edge_shitu.converters.convert import ConvertOptions, convert_model
    from edge_shitu.runtimes.backend import open_backend

    kind, model_dir, weights = _model_dir("mnv2" if name == "mnv2r" else name, work)
    opts = ConvertOptions(prune=True, allow_degraded=True, n_calib=n_calib, n_verify=n_verify,
                          latency_runs=3, latency_threads=(1,))
    arts, twins = ARTIFACTS, {}
    say = partial(_say, name)
    if name == "mnv2r":
        opts.prune_method, opts.prune_gallery = "reconstruct", _gallery(recall_photos)
        arts = kinds(backend="tflite", precision="int8") + kinds(backend="tflite", precision="fp32")
        plain = convert_model(model_dir, kind, _photos(n_calib, 0), _photos(n_verify, 500), arts,
                              work / f"{name}_plain", work / f"{name}_plain_work",
                              ConvertOptions(prune=False, allow_degraded=True, n_calib=n_calib, n_verify=n_verify,
                                             latency_runs=3, latency_threads=(1,)), say)
        twins = {f"unpruned {e['kind']}": (e, work / f"{name}_plain" / Path(e["file"]).name) for e in plain.entries}
    t0 = time.time()
    res = convert_model(model_dir, kind, _photos(n_calib, 0), _photos(n_verify, 500), arts, work / f"{name}_out",
                        work / f"{name}_work", opts, say)
    seconds = time.time() - t0
    feed = _feed(kind, model_dir)
    rows = [{"model": name, "weights": weights, "artifact": "paddle:fp32 (MKLDNN)", "bytes": res.reference["bytes"],
             "fidelity": 1.0, "pruned": False}]
    paths: dict[str, Path | None] = {"paddle:fp32 (MKLDNN)": None}
    entries = [(e["kind"], e, work / f"{name}_out" / Path(e["file"]).name) for e in res.entries]
    for k, e, p in [*entries, *((k, e, p) for k, (e, p) in twins.items())]:
        f = e["fidelity"]
        fid = f.get("cosine_mean", f.get("box_recall_iou50"))
        rows.append({"model": name, "weights": weights, "artifact": k, "bytes": e["bytes"], "fidelity": fid,
                     "fidelity_min": f.get("cosine_min"), "verified": f.get("verified"), "pruned": e.get("pruned"),
                     "degraded": bool(f.get("degraded"))})
        paths[k] = p
    for threads in (1, 2):
        runners: dict[str, Any] = {"paddle:fp32 (MKLDNN)": open_backend(model_dir, "paddle", threads=threads)}
        for k, p in paths.items():
            if p is None or not artifact_format(k.removeprefix("unpruned ")).runs_here():  # arm .nb: not on x86
                continue
            runners[k] = open_backend(p, artifact_format(k.removeprefix("unpruned ")).backend, threads=threads)
        lat = _interleaved_latency(runners, feed, runs)
        for r in rows:
            r[f"ms_{threads}t"] = lat.get(r["artifact"])
    ref = rows[0]
    for r in rows:
        for t in (1, 2):
            ms = r.get(f"ms_{t}t")
            r[f"speedup_{t}t"] = ref[f"ms_{t}t"] / ms if ms else None
        r["size_ratio"] = ref["bytes"] / r["bytes"]
        twin = next((t for t in rows if t["artifact"] == f"unpruned {r['artifact']}"), None)
        for t in (1, 2):
            if twin is not None and r.get(f"ms_{t}t") and twin.get(f"ms_{t}t"):
                r[f"prune_speedup_{t}t"] = twin[f"ms_{t}t"] / r[f"ms_{t}t"]
    rows[0]["convert_seconds"] = round(seconds, 1)
    if res.pruning:
        keep = ("method", "params_before", "params_after", "flops_before", "flops_after", "macs_before",
                "macs_after", "macs_reduction", "fidelity", "recall", "target")
        rows[0]["pruning"] = {k: res.pruning[k] for k in keep if k in res.pruning}
    return rows


def _say(name: str, msg: str) -> None:
    print(f"  [{name}] {msg}", flush=True)


def _feed(kind: str, model_dir: Path) -> dict[str, np.ndarray]:
    from edge_shitu.converters.convert import det_preprocess_for, rec_preprocess_for
    from edge_shitu.converters.paddle_model import load_program

    img = _photos(1, 1000)[0]
    if kind == "det":
        return det_preprocess_for(model_dir)(img)
    _, feeds, _ = load_program(model_dir)
    return {feeds[0]: rec_preprocess_for(model_dir).batch([img])}


def print_table(rows: list[dict[str, Any]]) -> None:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    print(f"\n{'model':5} {'weights':12} {'artifact':22} {'MB':>7} {'x smaller':>9} {'ms@1t':>8} {'x fast@1':>8} "
          f"{'ms@2t':>8} {'x fast@2':>8} {'fidelity':>9}")
    for r in rows:
        print(f"{r['model']:5} {r['weights'][:12]:12} {r['artifact']:22} {r['bytes'] / 1e6:7.2f} "
              f"{r['size_ratio']:9.2f} {f(r.get('ms_1t'), '8.2f')} {f(r.get('speedup_1t'), '8.2f')} "
              f"{f(r.get('ms_2t'), '8.2f')} {f(r.get('speedup_2t'), '8.2f')} {f(r.get('fidelity'), '9.5f')}"
              f"{' (degraded)' if r.get('degraded') else ''}"
              + (f"  pruning: {r['prune_speedup_1t']:.2f}x @1t, {r['prune_speedup_2t']:.2f}x @2t"
                 if r.get("prune_speedup_1t") and r.get("prune_speedup_2t") else ""))
    print("x fast / x smaller: FP32 Paddle Inference (MKLDNN) time or size divided by the artifact's, same run, "
          "same threads. nb:arm rows: size only (arm kernels do not run on x86; verified through their x86 twin).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="v1,v2,det,mnv2")
    ap.add_argument("--quick", action="store_true", help="fewer calibration images and timing runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_convert.json")
    args = ap.parse_args()
    if asset(*DRINK_GALLERY) is None:
        sys.exit("bench_convert: ../shared/assets/drink not found (set EDGE_SHITU_ASSETS)")
    n_calib, n_verify, runs = (8, 4, 10) if args.quick else (32, 16, 40)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            rows += bench_model(name.strip(), Path(tmp), n_calib, n_verify, runs)
            print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from edge_shitu.converters.convert import _tool_versions

    args.out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                                    "tools": _tool_versions(), "n_calib": n_calib, "n_verify": n_verify,
                                    "timing_runs": runs, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
