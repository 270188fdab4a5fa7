"""From feature shards to one index: hash fitted on a sample, codes encoded shard by shard.

Why not ``GalleryIndex.build(all_features, ...)``: a million 1280-d features are 5 GB of float32.
Here only the fit sample (``itq_sample`` rows, seeded), the 1500-row sample of the score table
(the very rows ``distance_cosine_table`` would draw) and one shard per encoding thread are ever
in memory as floats. With at most ``itq_sample`` rows the fit sees every row in order and the
result equals ``GalleryIndex.build`` on the same features (codes, ids, labels, hash, table).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_shitu import __version__
from edge_shitu.gallery_build_shards import Shard
from edge_shitu.gallery_index import GalleryIndex, quantize_rows
from edge_shitu.hashing import Hasher, parse_method
from edge_shitu.index_format import IndexData

if TYPE_CHECKING:
    from edge_shitu.gallery_build import BuildOptions


class _Features:
    """Float features of the distinct photos, read from their shards on demand."""

    def __init__(self, row_shas: Sequence[str], where: dict[str, tuple[str, int]], shards: dict[str, Shard]) -> None:
        self.unique: dict[str, int] = {}
        for s in row_shas:
            self.unique.setdefault(s, len(self.unique))
        self.row_u = np.fromiter((self.unique[s] for s in row_shas), dtype=np.int64, count=len(row_shas))
        # shard key -> (rows in the shard, unique numbers): each shard is read once per pass
        by: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for s, u in self.unique.items():
            key, r = where[s]
            by[key][0].append(r)
            by[key][1].append(u)
        self.by_shard = {k: (np.asarray(r, np.int64), np.asarray(u, np.int64)) for k, (r, u) in by.items()}
        self.shards = shards
        self.dim = next(sh.dim for sh in shards.values() if sh.rows)

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Features of index rows ``rows`` (duplicates share one feature)."""
        want = self.row_u[rows]
        need = np.unique(want)
        pos = {int(u): i for i, u in enumerate(need)}
        got = np.empty((len(need), self.dim), np.float32)
        need_set = set(pos)
        for key, (r, u) in self.by_shard.items():
            sel = [i for i, uu in enumerate(u.tolist()) if uu in need_set]
            if not sel:
                continue
            x = self.shards[key].load()
            for i in sel:
                got[pos[int(u[i])]] = x[r[i]]
        return got[np.fromiter((pos[int(u)] for u in want), dtype=np.int64, count=len(want))]


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def build_index(row_shas: Sequence[str], labels: Sequence[str], ids: np.ndarray, where: dict[str, tuple[str, int]],
                shards: dict[str, Shard], opts: BuildOptions, meta: dict[str, Any]) -> tuple[GalleryIndex, int]:
    from edge_shitu.scores import MAX_ITEMS, TABLE_KEY, distance_cosine_table

    feats = _Features(row_shas, where, shards)
    n = len(row_shas)
    fit_rows = _sample(n, opts.itq_sample, opts.seed)
    hasher = Hasher.fit(feats.gather_rows(fit_rows), bits=opts.bits, method=parse_method(opts.method))
    n_u = len(feats.unique)
    ucodes = np.zeros((n_u, hasher.bits // 8), np.uint8)
    uvec = np.zeros((n_u, hasher.dim), np.int8) if opts.rerank_vectors else None

    def encode(key: str) -> None:  # numpy releases the GIL in the matmul: threads scale
        r, u = feats.by_shard[key]
        x = shards[key].load()[r]
        ucodes[u] = hasher.encode(x)
        if uvec is not None:
            uvec[u] = quantize_rows(x)

    with ThreadPoolExecutor(max(1, opts.encode_threads)) as pool:
        list(pool.map(encode, list(feats.by_shard)))
    codes = ucodes[feats.row_u]
    data = IndexData(
        bits=hasher.bits, dim=hasher.dim, method=hasher.method,
        planes=np.zeros((hasher.bits // 64, 0), dtype=np.uint64),
        ids=np.zeros(0, dtype=np.uint64), deleted=np.zeros(0, dtype=np.uint8),
        label_of=np.zeros(0, dtype=np.uint32), labels=[], mean=hasher.mean, proj=hasher.proj,
        normalize=hasher.normalize, next_id=0, generation=0,
        meta={"created_by": f"edge-shitu {__version__}", **meta,
              "itq_sample": {"rows": len(fit_rows), "of": n, "seed": opts.seed}},
        vectors=np.zeros((0, hasher.dim), dtype=np.int8) if uvec is not None else None,
    )
    index = GalleryIndex(data)
    index.add_codes(codes, labels, ids=ids, vectors=None if uvec is None else uvec[feats.row_u])
    index.data.generation = 0
    table_rows = _sample(n, MAX_ITEMS, 0)  # the rows distance_cosine_table itself would draw (seed 0)
    index.data.meta[TABLE_KEY] = distance_cosine_table(feats.gather_rows(table_rows), codes[table_rows],
                                                       hasher.bits)
    return index, len(fit_rows)
