#!/usr/bin/env python3
"""Gallery index benchmark: (a) recall on real PP-ShiTu embeddings, (b) search speed vs Faiss.

    python benchmarks/bench_index.py            # full run (N up to 1M), ~2-4 min
    python benchmarks/bench_index.py --quick    # smoke run, seconds

(a) leave-one-out recall@1 on ../shared/assets/drink/embeddings (987 real PP-ShiTu v1
    features, 196 classes; queries whose class has >= 2 items), for float cosine, sign-512 and
    learned ITQ 512/256/128/64, with and without re-ranking, and bytes per item.
(b) time per query (k=5, one thread, one query at a time) over N random codes at 256 and 512
    bits: the numpy path, the C kernel and faiss.IndexBinaryFlat, measured interleaved in one
    run and reported as ratios to faiss (this machine is noisy: ratios, not absolute numbers).

Prints tables; writes benchmarks/results/bench_index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu import hamming  # noqa: E402
from edge_shitu.assets import DRINK_EMBEDDINGS, DRINK_LABELS, asset  # noqa: E402
from edge_shitu.evaluate import float_loo_recall, index_loo_recall  # noqa: E402
from edge_shitu.gallery_index import GalleryIndex  # noqa: E402
from edge_shitu.index_format import rows_to_planes  # noqa: E402
from edge_shitu.labels import read_labels  # noqa: E402

RERANK = 50


def recall_table() -> list[dict]:
    emb, lab = asset(*DRINK_EMBEDDINGS), asset(*DRINK_LABELS)
    if emb is None or lab is None:
        print("(a) skipped: ../shared/assets/drink not found (set EDGE_SHITU_ASSETS)")
        return []
    x = np.load(emb).astype(np.float32)
    labels = read_labels(lab)
    rows = [{"method": "float32 cosine (brute force)", "bits": 32 * x.shape[1], "bytes_per_item": 4 * x.shape[1],
             "recall@1": float_loo_recall(x, labels), "recall@1_rerank": None}]
    for method, bits in (("sign", 512), ("itq", 512), ("itq", 256), ("itq", 128), ("itq", 64)):
        idx = GalleryIndex.build(x, labels, bits=bits, method=method)
        rows.append({"method": f"{method}-{bits}", "bits": bits, "bytes_per_item": bits // 8,
                     "recall@1": index_loo_recall(idx, x, labels),
                     "recall@1_rerank": index_loo_recall(idx, x, labels, rerank=RERANK)})
    return rows


def _time_per_query(fn, queries: np.ndarray, repeats: int) -> float:
    """Median seconds per query over `repeats` passes (each pass: every query once)."""
    per_pass = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for q in queries:
            fn(q)
        per_pass.append((time.perf_counter() - t0) / len(queries))
    return statistics.median(per_pass)


def speed_table(sizes: list[int], widths: list[int], nq: int, repeats: int) -> list[dict]:
    try:
        import faiss
    except ImportError:
        faiss = None
        print("(b) faiss-cpu not installed: ratios to faiss unavailable (pip install faiss-cpu)")
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    from edge_shitu.runtimes import native_kernel

    native = native_kernel.load()
    if native is None:
        print("(b) C kernel not built (make native): C column empty")
    rng = np.random.default_rng(0)
    out = []
    for bits in widths:
        nbytes = bits // 8
        for n in sizes:
            codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
            planes = rows_to_planes(codes)
            queries = rng.integers(0, 256, size=(nq, nbytes), dtype=np.uint8)
            qwords = queries.view(np.uint64)
            paths = {"numpy": lambda q, planes=planes, n=n: hamming.topk(planes, n, q[None], 5)}
            if native is not None:
                paths["c"] = lambda q, planes=planes, n=n: native.topk_planar(planes, n, q[None], 5, None)
            if faiss is not None:
                index = faiss.IndexBinaryFlat(bits)
                index.add(codes)
                paths["faiss"] = lambda q, index=index: index.search(q.view(np.uint8)[None], 5)
            # same answers (faiss may order equal distances differently: compare distances)
            ref = hamming.topk(planes, n, qwords[:3], 5)[0]
            if native is not None:
                assert np.array_equal(native.topk_planar(planes, n, qwords[:3], 5, None)[0], ref)
            if faiss is not None:
                assert np.array_equal(index.search(queries[:3], 5)[0], ref)
            # interleave the paths so that machine noise hits all of them alike
            times: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(repeats):
                for name, fn in paths.items():
                    times[name].append(_time_per_query(fn, qwords, 1))
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"bits": bits, "n": n, **{f"{k}_ms": v * 1e3 for k, v in med.items()}}
            if "faiss" in med:
                for k in med:
                    if k != "faiss":
                        row[f"{k}_vs_faiss"] = med[k] / med["faiss"]
            out.append(row)
            print(f"  {bits}-bit N={n:>8,}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in med.items()),
                  flush=True)
    return out


def print_tables(recall: list[dict], speed: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if recall:
        t = Table(title=f"(a) leave-one-out recall@1, real PP-ShiTu v1 drink embeddings (re-rank shortlist {RERANK})")
        for c in ("method", "bytes/item", "recall@1", "+ re-rank"):
            t.add_column(c, justify="right" if c != "method" else "left")
        for r in recall:
            rr = r["recall@1_rerank"]
            t.add_row(r["method"], str(r["bytes_per_item"]), f"{r['recall@1']:.4f}", "-" if rr is None else f"{rr:.4f}")
        console.print(t)
    if speed:
        t = Table(title="(b) search time per query, k=5, one thread (ms; ratio to faiss IndexBinaryFlat)")
        for c in ("bits", "N", "numpy", "C", "faiss", "numpy/faiss", "C/faiss"):
            t.add_column(c, justify="right")

        def f(r: dict, k: str, fmt: str) -> str:
            return format(r[k], fmt) if k in r else "-"

        for r in speed:
            t.add_row(str(r["bits"]), f"{r['n']:,}", f(r, "numpy_ms", ".3f"), f(r, "c_ms", ".3f"),
                      f(r, "faiss_ms", ".3f"), f(r, "numpy_vs_faiss", ".2f"), f(r, "c_vs_faiss", ".2f"))
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    ap.add_argument("--sizes", type=int, nargs="*", help="gallery sizes for (b)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_index.json")
    args = ap.parse_args()
    sizes = args.sizes or ([2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000])
    nq, repeats = (5, 3) if args.quick else (30, 7)
    print("(a) recall ...", flush=True)
    recall = recall_table()
    print("(b) speed ...", flush=True)
    speed = speed_table(sizes, [256, 512], nq, repeats)
    print_tables(recall, speed)
    from edge_shitu.runtimes import native_kernel

    native = native_kernel.load()
    result = {
        "benchmark": "bench_index", "quick": args.quick,
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "numpy": np.__version__, "numpy_kernel": hamming.NUMPY_KERNEL,
                    "c_kernel": native.kernel if native is not None else None},
        "recall": recall, "speed": speed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
