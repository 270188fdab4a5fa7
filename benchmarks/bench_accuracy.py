"""What pruning, int8 and binary codes do to recognition, measured on real photos.

The ImageNet MobileNetV2 extractor (real torchvision weights, ported to Paddle by
edge_shitu.converters.mobilenet_v2) goes through the toolchain's own `convert_model` (the code
`edge-shitu convert` runs): structured pruning under the fidelity budget, PaddleSlim int8 PTQ,
Paddle Lite .nb (x86, int8) and TFLite fp32/fp16/int8. Every model then embeds the whole drink
gallery (1068 photos, 212 classes) through the runtime's own backends and preprocessing, and
leave-one-out retrieval (queries: photos whose class has >= 2 images) is scored with float
cosine search and with the binary index (sign, learned 256 and 128 bits, with and without
re-ranking by the index's int8 features, format 1.1) built by `GalleryIndex.build`, as a
bundle's index is. Each artifact is scored twice:
with its own features on both sides, and (rows "/ fp32 gallery") querying the FP32 reference's
features of the gallery, which is what `edge-shitu convert` puts in a bundle by default.

    .venv/bin/python benchmarks/bench_accuracy.py            # ~25 min on 2 cores, cached per step
    .venv/bin/python benchmarks/bench_accuracy.py --quick    # 300 photos, no pruning
    .venv/bin/python benchmarks/bench_accuracy.py --prune-method reconstruct --weight-rounding
        # a 25%-style cut within 1 point (convert's), rows "/ pruned fp32 gallery" (a pruned bundle's
        # index), and the int8 TFLite twin with re-rounded weights where it measures better

Prints one table, writes benchmarks/results/bench_accuracy.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import asset  # noqa: E402
from edge_shitu.formats import kind_for, kinds  # noqa: E402

# every artifact kind that runs on an x86 build host: the x86 int8 .nb and every TFLite precision
ARTIFACTS = [kind_for("nb", "int8", "x86_64"), *kinds(backend="tflite")]
INT8_TFLITE = kind_for("tflite", "int8")

CACHE = ROOT / "benchmarks" / ".cache" / "accuracy"
INDEXES = [("float", None, None, 0), ("sign", "sign", None, 0), ("sign+rerank50", "sign", None, 50),
           ("itq-256", "itq", 256, 0), ("itq-256+rerank50", "itq", 256, 50),
           ("itq-128", "itq", 128, 0), ("itq-128+rerank50", "itq", 128, 50)]


def gallery_items(gallery: Path, quick: bool) -> tuple[list[Path], list[str]]:
    from edge_shitu.gallery import read_gallery

    g = read_gallery(gallery, gallery / "drink_label_all.txt" if (gallery / "drink_label_all.txt").exists()
                     else None)
    items = list(g.items)
    if quick:
        items = items[::3][:300]
    return [it.path for it in items], [it.label for it in items]


def convert(rec: Path, photos: list[np.ndarray], prune: bool, method: str = "sensitivity",
            gallery: tuple[list[np.ndarray], list[str]] | None = None, weight_rounding: bool = False,
            equalize: bool = True, mixed_precision: bool = False) -> dict[str, Path]:
    """The toolchain's convert_model on the extractor: every artifact kind, degraded ones kept.
    ``method="reconstruct"`` prunes within one recall@1 point on ``gallery`` (photos, labels)."""
    from edge_shitu.converters.convert import ConvertOptions, convert_model, split_images

    out, work = CACHE / "artifacts", CACHE / "work"
    done = CACHE / "artifacts.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    calib, verify = split_images(photos, 32, 16)
    opts = ConvertOptions(prune=prune, allow_degraded=True, work_dir=work, latency_threads=(1,), latency_runs=3,
                          prune_method=method, prune_gallery=gallery, weight_rounding=weight_rounding,
                          equalize=equalize, mixed_precision=mixed_precision)
    res = convert_model(rec, "rec", calib, verify, ARTIFACTS, out, work, opts,
                        lambda m: print(f"convert: {m}", file=sys.stderr))
    models: dict[str, Path] = {"paddle:fp32": rec}
    if prune and (work / "rec_pruned").exists():
        models["paddle:fp32 pruned"] = work / "rec_pruned"
    models["paddle:int8 (PTQ)"] = work / "rec_int8"
    models.update(res.runnable)
    info = {e["kind"]: {"pruned": e.get("pruned"), "fidelity": e.get("fidelity", {}).get("cosine_mean"),
                        "int8_mode": (e.get("details") or {}).get("int8_mode"),
                        "weight_rounding": (e.get("details") or {}).get("weight_rounding"),
                        "bytes": e.get("bytes")}
            for e in res.entries}
    (CACHE / "conversion.json").write_text(json.dumps({"entries": info, "pruning": res.pruning,
                                                       "equalization": res.equalization}, indent=1))
    done.write_text(json.dumps({k: str(v) for k, v in models.items()}))
    return models


def embed_all(name: str, path: Path, paths: list[Path], pre: Any, threads: int) -> np.ndarray:
    from edge_shitu.preprocess import load_image
    from edge_shitu.runtimes.backend import open_backend

    safe = name.replace(":", "_").replace(" ", "_").replace("(", "").replace(")", "")
    cache = CACHE / f"feats_{safe}_{len(paths)}.npy"
    if cache.exists():
        return np.load(cache)
    kind = "paddle" if name.startswith("paddle") else None
    be = open_backend(path, kind, threads)
    t0 = time.perf_counter()
    feats = np.stack([np.asarray(be.run({be.inputs[0].name: pre(load_image(p))})[0], np.float32).reshape(-1)
                      for p in paths])
    print(f"embedded {len(paths)} photos with {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    np.save(cache, feats)
    return feats


def score(feats: np.ndarray, labels: list[str], gallery: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Every search kind; ``gallery``: index and float search over these features instead (the
    FP32 reference gallery a bundle holds by default), queried with ``feats``."""
    from edge_shitu.evaluate import float_loo_topk, index_loo_topk, map_at_k, recall_at_1
    from edge_shitu.gallery_index import GalleryIndex

    out: dict[str, dict[str, float]] = {}
    built: dict[tuple[str, int | None], Any] = {}
    for name, method, bits, rerank in INDEXES:
        if method is None:
            top = float_loo_topk(feats, labels, 5, gallery=gallery)
        else:
            key = (method, bits)
            if key not in built:
                built[key] = GalleryIndex.build(feats if gallery is None else gallery, labels, bits=bits,
                                                method=method, score_table=False, rerank_vectors=True)
            top = index_loo_topk(built[key], feats, labels, 5, rerank)
        out[name] = {"recall@1": recall_at_1(top, labels), "mAP@5": map_at_k(top, labels, 5)}
    return out


def chart(rows: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(rows)
    kinds = [n for n, *_ in INDEXES]
    fig, ax = plt.subplots(figsize=(16, 6))
    w = 0.8 / len(kinds)
    for j, k in enumerate(kinds):
        ax.bar(np.arange(len(models)) + j * w, [rows[m][k]["recall@1"] for m in models], w, label=k)
    ax.set_xticks(np.arange(len(models)) + 0.4 - w / 2)
    ax.set_xticklabels(models, rotation=25, fontsize=7, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("leave-one-out recall@1")
    ax.set_title("MobileNetV2 (real weights) on the drink gallery: artifacts x search")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", type=Path, help="labelled gallery (default: ../shared/assets drink gallery)")
    ap.add_argument("--quick", action="store_true", help="300 photos, no pruning (a smoke run)")
    ap.add_argument("--no-prune", action="store_true")
    ap.add_argument("--prune-method", default="sensitivity", choices=("sensitivity", "reconstruct"),
                    help="reconstruct: the largest cut within 1 recall@1 point on the gallery; rows "
                         "'/ pruned fp32 gallery' then query the pruned FP32 program's gallery (a pruned bundle's)")
    ap.add_argument("--weight-rounding", action="store_true", help="the int8 TFLite twin with re-rounded weights")
    ap.add_argument("--no-equalize", action="store_true", help="skip the residual-stream equalization before int8")
    ap.add_argument("--mixed-precision", action="store_true", help="the int8 TFLite mixed-precision ladder (files at "
                    "most 1.1x the int8 size) where int8 misses the 0.995 cosine gate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_accuracy.json")
    args = ap.parse_args()

    from edge_shitu.converters import mobilenet_v2
    from edge_shitu.preprocess import RecPreprocess, load_image

    gallery = args.gallery or asset("drink", "gallery")
    if gallery is None:
        raise SystemExit("no gallery: pass --gallery DIR (or put ../shared/assets beside the project)")
    global CACHE
    if args.quick:
        CACHE = CACHE.parent / "accuracy-quick"
    if args.prune_method != "sensitivity" or args.weight_rounding:
        CACHE = CACHE.parent / (CACHE.name + f"-{args.prune_method}" + ("-wr" if args.weight_rounding else ""))
    if not args.no_equalize:  # artifacts cached before equalization existed are not reused
        CACHE = CACHE.parent / (CACHE.name + "-eq")
    if args.mixed_precision:
        CACHE = CACHE.parent / (CACHE.name + "-mp")
    CACHE.mkdir(parents=True, exist_ok=True)
    rec = CACHE / "mnv2"
    if not (rec / "inference.pdiparams").exists():
        mobilenet_v2.export_extractor(None, rec)
    paths, labels = gallery_items(gallery, args.quick)
    pre = RecPreprocess.from_dict(json.loads((rec / "preprocess.json").read_text())["preprocess"])
    calib_photos = [load_image(p) for p in paths[:: max(1, len(paths) // 48)][:48]]
    prune = not (args.quick or args.no_prune)
    gal = None
    if prune and args.prune_method == "reconstruct":
        gal = ([load_image(p) for p in paths], labels)
    models = convert(rec, calib_photos, prune, args.prune_method, gal, args.weight_rounding, not args.no_equalize,
                     args.mixed_precision)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    feats = {name: embed_all(name, path, paths, pre, args.threads) for name, path in models.items()}
    for name, f in feats.items():
        rows[name] = score(f, labels)
    for name, f in feats.items():  # a bundle's gallery: FP32 reference features (convert --gallery-features)
        if name != "paddle:fp32":
            rows[f"{name} / fp32 gallery"] = score(f, labels, gallery=feats["paddle:fp32"])
    if args.prune_method == "reconstruct" and "paddle:fp32 pruned" in feats:  # a pruned bundle's gallery
        for name, f in feats.items():
            if name not in ("paddle:fp32", "paddle:fp32 pruned"):
                rows[f"{name} / pruned fp32 gallery"] = score(f, labels, gallery=feats["paddle:fp32 pruned"])

    kinds = [n for n, *_ in INDEXES]
    print(f"\nleave-one-out on {len(paths)} photos, {len(set(labels))} classes: recall@1 / mAP@5")
    print(f"{'model':<36}" + "".join(f"{k:>19}" for k in kinds))
    for m, r in rows.items():
        print(f"{m:<36}" + "".join(f"{r[k]['recall@1']:>10.4f} /{r[k]['mAP@5']:.4f}" for k in kinds))
    base = rows["paddle:fp32"]["float"]["recall@1"]
    target = {}
    for row, what in ((f"{INT8_TFLITE} / pruned fp32 gallery", "pruned bundle: pruned FP32 gallery, int8 queries"),
                      (f"{INT8_TFLITE} / fp32 gallery", "bundle default: FP32 reference gallery, int8 queries"),
                      (INT8_TFLITE, "int8 on both sides (convert --gallery-features artifact)")):
        if row not in rows:
            continue
        r = rows[row]
        t = {"row": row, "int8_itq256_recall@1": r["itq-256"]["recall@1"],
             "int8_itq256_rerank_recall@1": r["itq-256+rerank50"]["recall@1"],
             "drop_points": round(100 * (base - r["itq-256"]["recall@1"]), 2),
             "drop_points_rerank": round(100 * (base - r["itq-256+rerank50"]["recall@1"]), 2)}
        target.setdefault("fp32_float_recall@1", base)
        target.setdefault("cases", []).append(t)
        print(f"\nint8 TFLite + learned 256-bit index ({what}): {t['drop_points']:.2f} points below FP32 float "
              f"search (target <= 1.5), {t['drop_points_rerank']:.2f} with re-ranking (target <= 0.5)")
    conv = json.loads((CACHE / "conversion.json").read_text()) if (CACHE / "conversion.json").exists() else {}
    result = {"photos": len(paths), "classes": len(set(labels)), "queries": "classes with >= 2 photos",
              "extractor": "torchvision MobileNetV2 ImageNet, GeM p=3, letterbox 320", "rows": rows,
              "targets": target, "conversion": conv}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    chart(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
