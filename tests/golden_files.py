"""Golden index files: written deterministically by the Python writer, read by every reader.

The C reader (runtimes/native) and the Java reader (android_demo) are tested against the same
files; the SHA-256 of each is pinned here, so any change to the byte layout fails the tests
until the format version and these hashes are changed on purpose.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import IndexData, Method, rows_to_planes, write_index

# Update together with docs/index-format.md when the layout changes on purpose.
PINNED_SHA256 = {
    "sign512.esidx": "0f3d75d994635145ea6b2a8835a5ee3f2c322ff3f1f878bcaf7740502cdffa83",
    "itq128.esidx": "395201b2c260359ceec1c59a3dad0b5486bd310512b3221cd8e26bbcc5b36f9d",
    "itq128_rerank.esidx": "891f1bff827b5db1d1eb151421be2f42e81f81c36288e50082c8c9ef80aeaa5d",
}


def _codes(n: int, nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, nbytes), dtype=np.uint8)


def golden_sign512() -> IndexData:
    """13 items, ids not 0..n-1, Chinese labels, 3 deleted, one duplicate code (a tie)."""
    codes = _codes(13, 64, 1)
    codes[9] = codes[4]
    labels_text = ["脉动", "农夫山泉", "可口可乐", "new\tproduct", "雪碧"]
    label_of = np.array([i % 5 for i in range(13)], dtype=np.uint32)
    deleted = np.zeros(2, dtype=np.uint8)
    for r in (2, 7, 12):
        deleted[r >> 3] |= 1 << (r & 7)
    return IndexData(bits=512, dim=512, method=Method.SIGN, planes=rows_to_planes(codes),
                     ids=np.array([1000 + 7 * i for i in range(13)], dtype=np.uint64), deleted=deleted,
                     label_of=label_of, labels=labels_text, normalize=True, next_id=1091, generation=3,
                     meta={"golden": "sign512"})


def golden_itq128() -> IndexData:
    """ITQ parameters with exactly representable values, so every reader hashes identically."""
    dim, bits = 32, 128
    rng = np.random.default_rng(2)
    mean = (rng.integers(-8, 8, size=dim) / 64).astype(np.float32)
    proj = (rng.integers(-16, 16, size=(dim, bits)) / 32).astype(np.float32)
    feats = (rng.integers(-32, 32, size=(20, dim)) / 16).astype(np.float32)
    z = (feats / np.linalg.norm(feats, axis=1, keepdims=True) - mean) @ proj
    codes = np.packbits(z > 0, axis=1)
    return IndexData(bits=bits, dim=dim, method=Method.ITQ, planes=rows_to_planes(codes),
                     ids=np.arange(20, dtype=np.uint64), deleted=np.zeros(3, dtype=np.uint8),
                     label_of=np.arange(20, dtype=np.uint32) % 4, labels=["a", "b", "c", "d"],
                     mean=mean, proj=proj, normalize=True, next_id=20, generation=0, meta={})


def golden_itq128_rerank() -> IndexData:
    """itq128 plus format 1.1's RERANK_VECTORS section (the same features as int8)."""
    from edge_shitu.gallery_index import quantize_rows

    d = golden_itq128()
    rng = np.random.default_rng(2)
    rng.integers(-8, 8, size=32), rng.integers(-16, 16, size=(32, 128))  # the same draws as golden_itq128
    feats = (rng.integers(-32, 32, size=(20, 32)) / 16).astype(np.float32)
    d.vectors = quantize_rows(feats)
    d.meta = {"golden": "itq128_rerank"}
    return d


def golden_queries_itq128() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.integers(-32, 32, size=(4, 32)) / 16).astype(np.float32)


def write_golden(folder: Path) -> dict[str, str]:
    """Write the golden files plus expected search results (expected.json); returns name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    expected = {}
    for name, data in (("sign512.esidx", golden_sign512()), ("itq128.esidx", golden_itq128()),
                       ("itq128_rerank.esidx", golden_itq128_rerank())):
        path = folder / name
        write_index(path, data)
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        index = GalleryIndex.open(path)
        if name == "sign512.esidx":
            codes = np.ascontiguousarray(data.planes[:, : data.count].T).view(np.uint8)[[0, 4, 5]]
            dist, rows = index.search_codes(codes, k=5)
            expected[name] = {"query_codes_hex": [c.tobytes().hex() for c in codes],
                              "k": 5, "distances": dist.tolist(), "rows": rows.tolist()}
        else:
            q = golden_queries_itq128()
            codes = index.hasher.encode(q)
            dist, rows = index.search_codes(codes, k=5)
            expected[name] = {"queries": q.tolist(), "query_codes_hex": [c.tobytes().hex() for c in codes],
                              "k": 5, "distances": dist.tolist(), "rows": rows.tolist()}
            if data.vectors is not None:  # re-ranked: every row a candidate, cosine with the int8 vectors
                _, rr_rows, rr_scores = index.search_rows(q, k=5, rerank=data.count)
                expected[name].update(rerank=data.count, rerank_rows=rr_rows.tolist(),
                                      rerank_scores=np.round(rr_scores, 6).tolist())
    (folder / "expected.json").write_text(json.dumps(expected, indent=1))
    return out
