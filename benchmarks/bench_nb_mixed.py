"""What the .nb int8 mixed-precision ladder (converters/nb_mixed.py) buys on real weights.

MobileNetV2 (torchvision ImageNet weights, ported to Paddle) is quantized by PaddleSlim PTQ as
`edge-shitu convert` does (the same calibration / verification split of the photos in --calib),
all-int8 and with the k most int8-sensitive ops kept float (``skip_tensor_list``, ranked by
``nb_mixed.rank_in_subprocess``). Each quantized program (what an arm ``.nb`` int8 is gated on, run
in Paddle Inference without oneDNN) is compared with the FP32 program on the held-out photos
(cosine) and embeds --gallery-photos drink gallery photos (whole classes, as the task gate
samples) for leave-one-out recall@1 (float search), beside the FP32 program's.

    .venv/bin/python benchmarks/bench_nb_mixed.py --calib DIR --ks 16     # ~7 min on 2 cores

Prints one JSON document per row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _features(model_dir: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    from edge_shitu.hashing import l2_normalize
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    b = PaddleBackend(model_dir, mkldnn=False)
    return l2_normalize(np.concatenate([np.asarray(b.run(f)[0]).reshape(1, -1) for f in feeds]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=Path, required=True, help="the photo folder given to convert-model --calib")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--verify-images", type=int, default=16)
    ap.add_argument("--ks", default="16", help="comma-separated k (ops kept float)")
    ap.add_argument("--gallery-photos", type=int, default=400)
    args = ap.parse_args()

    from edge_shitu.assets import asset
    from edge_shitu.converters import mobilenet_v2, model_source, nb_mixed, quantize
    from edge_shitu.converters.convert import load_calib_dir, split_images
    from edge_shitu.converters.task_gate import sample_rows
    from edge_shitu.converters.verify import verify_quantized_program
    from edge_shitu.evaluate import float_loo_recall
    from edge_shitu.gallery import read_gallery

    with tempfile.TemporaryDirectory(prefix="bench-nbmixed-") as tmp:
        work = Path(tmp)
        fp32 = mobilenet_v2.export_extractor(None, work / "mnv2")
        images = load_calib_dir(args.calib, lambda m: None)
        cal, ver = split_images(images, args.calib_images, args.verify_images)
        prepared = model_source.prepare(fp32, "rec", ver[:4], work / "prep")
        calib = [prepared.feed(im) for im in cal]
        verify = [prepared.feed(im) for im in ver]
        gdir = asset("drink/gallery")
        g = read_gallery(gdir, gdir / "drink_label_all.txt")
        all_items = list(g.items)
        rows_kept = sample_rows([it.label for it in all_items], args.gallery_photos)
        items = [all_items[i] for i in rows_kept]
        from edge_shitu.preprocess import load_image

        gfeeds = [prepared.feed(load_image(it.path)) for it in items]
        labels = [it.label for it in items]
        ref = _features(fp32, gfeeds)
        rows: list[dict[str, Any]] = [{"model": "paddle fp32", "recall_at_1": round(float_loo_recall(ref, labels), 4)}]
        t0 = time.perf_counter()
        scores = nb_mixed.rank_in_subprocess(fp32, calib, quantize.DEFAULT_OPS)
        ranked = nb_mixed.rank({n: s["score"] for n, s in scores.items()})
        rank_s = time.perf_counter() - t0
        for k in [0, *[int(x) for x in args.ks.split(",")]]:
            t0 = time.perf_counter()
            rep = quantize.quantize_in_subprocess(fp32, work / f"q{k}", calib, skip_tensor_list=ranked[:k] or None)
            ptq_s = time.perf_counter() - t0
            fid = verify_quantized_program(rep.out_dir, fp32, verify, f"int8, {k} float")
            feats = _features(rep.out_dir, gfeeds)
            rows.append({"model": f"paddle int8, {k} of {len(ranked)} ops float", "quantized_ops": rep.n_quant_ops,
                         "cosine_mean": round(fid.cosine_mean, 5), "cosine_min": round(fid.cosine_min, 5),
                         "recall_at_1": round(float_loo_recall(feats, labels), 4),
                         "gallery_cosine_mean": round(float(np.mean(np.sum(feats * ref, 1))), 5),
                         "ptq_s": round(ptq_s, 1), "skipped": ranked[:k]})
        rows.append({"ranking_s": round(rank_s, 1), "gallery_photos": len(items), "ranked": ranked[:16]})
    for r in rows:
        print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    main()
