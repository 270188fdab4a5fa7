"""The built-in default job: a gallery index on real PP-ShiTu embeddings, searched and edited.

With ../shared/assets present it uses the real drink-gallery embeddings; without them it
generates clustered features, so the demo runs on any fresh machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from edge_shitu.assets import DRINK_EMBEDDINGS, DRINK_LABELS, asset
from edge_shitu.evaluate import float_loo_recall, index_loo_recall
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.hashing import l2_normalize
from edge_shitu.labels import read_labels


def generated_gallery(classes: int = 150, per_class: int = 5, dim: int = 512,
                      seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Clustered unit vectors: a stand-in when the real embeddings are not available."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    x = np.repeat(centres, per_class, axis=0) + 1.6 * rng.standard_normal((classes * per_class, dim))
    x = l2_normalize(x)
    labels = [f"product-{c:03d}" for c in range(classes) for _ in range(per_class)]
    return x.astype(np.float32), labels


def run_demo(out: str | Path, bits: int = 256, as_json: bool = False) -> dict:
    emb, lab = asset(*DRINK_EMBEDDINGS), asset(*DRINK_LABELS)
    if emb is not None and lab is not None:
        x, labels = np.load(emb).astype(np.float32), read_labels(lab)
        source = f"real PP-ShiTu embeddings ({emb})"
    else:
        x, labels = generated_gallery()
        source = "generated features (../shared/assets not found; set EDGE_SHITU_ASSETS for the real ones)"
    out = Path(out)
    path = out / f"gallery-itq{bits}.esidx"
    t0 = time.perf_counter()
    index = GalleryIndex.build(x, labels, bits=bits, method="itq", meta={"source": source})
    index.save(path)
    build_s = time.perf_counter() - t0
    summary: dict = {
        "source": source, "index": str(path), "items": len(index), "bits": bits,
        "bytes_per_item": index.bits // 8, "float32_bytes_per_item": x.shape[1] * 4,
        "file_bytes": path.stat().st_size, "build_seconds": round(build_s, 3), "kernel": index.kernel,
        "recall@1": {
            "float_cosine": round(float_loo_recall(x, labels), 4),
            f"itq{bits}": round(index_loo_recall(index, x, labels), 4),
            f"itq{bits}+rerank50": round(index_loo_recall(index, x, labels, rerank=50), 4),
        },
    }
    reopened = GalleryIndex.open(path)
    t0 = time.perf_counter()
    matches = reopened.query(x[:3], k=3, rerank=50)
    summary["search_ms_3_queries"] = round((time.perf_counter() - t0) * 1000, 2)
    summary["examples"] = [{"query_label": labels[i], "matches": [m.to_dict() for m in ms]}
                           for i, ms in enumerate(matches)]
    # On-device edit: add a new product, find it, remove it again.
    new_ids = reopened.add(x[:1] * 0.9 + x[1:2] * 0.1, ["new product"])
    summary["after_add_top1"] = reopened.query(x[:1] * 0.9 + x[1:2] * 0.1, k=1)[0][0].to_dict()
    reopened.remove(new_ids)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return summary
    r = summary["recall@1"]
    typer.echo(f"source: {source}")
    typer.echo(f"index: {path} — {summary['items']} items, {bits}-bit codes: {summary['bytes_per_item']} bytes "
               f"per item instead of {summary['float32_bytes_per_item']} (float32), {summary['file_bytes']} "
               f"bytes on disk, built in {build_s:.2f} s, search kernel {index.kernel}")
    typer.echo("leave-one-out recall@1: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    for ex in summary["examples"]:
        best = ", ".join(f"{m['label']} (id {m['id']}, d={m['distance']})" for m in ex["matches"])
        typer.echo(f"  query '{ex['query_label']}': {best}")
    typer.echo(f"added 'new product' on the fly -> top-1 {summary['after_add_top1']}, then removed it")
    return summary
