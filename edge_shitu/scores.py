"""Turning a Hamming distance into a score that means what PP-ShiTu's threshold means.

PP-ShiTu thresholds the cosine of L2-normalised features (``score_thres`` 0.5). A binary code
only knows distances. The angle estimate ``cos(pi * d / bits)`` (SimHash) is exact in
expectation for random hyperplanes on the raw features, but a learned (ITQ) hash centres the
data first, so it estimates the *centred* cosine, which for features that are all positive
(ReLU backbones, GeM) sits far below the raw one: the same threshold would then reject most
true matches. So at build time, when the float features are still at hand, the index measures
the mean raw cosine of gallery pairs at each Hamming distance and stores that table
(``cosine_of_distance`` in its META section, docs/index-format.md); the runtime reads the
score of a match off it. Indexes without the table fall back to the SimHash estimate.

An index that stores int8 re-rank vectors has better than an estimate: re-ranking computes the
cosine of the query with the match's own (int8) features, within ~0.002 of the float cosine. That
is the score when re-ranking is on (:func:`match_score`): the table gives the MEAN cosine of all
pairs at a distance, and pairs at one distance spread over ~0.05 of cosine, which moved shelf
crops across the recognition threshold that float search put on the other side (issue 16).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

TABLE_KEY = "cosine_of_distance"
MAX_ITEMS = 1500  # pairs of a 1500-item sample: ~1.1 M pairs, two small matrix products


def distance_cosine_table(features: np.ndarray, codes: np.ndarray, bits: int, seed: int = 0) -> list[float]:
    """Mean cosine of item pairs at each Hamming distance 0..bits, non-increasing in d.

    Distances no pair has are interpolated; float64 and 4 decimals, so the table (and hence
    the index file) is the same on every CPU.
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return [round(math.cos(math.pi * d / bits), 4) for d in range(bits + 1)]
    if n > MAX_ITEMS:
        rows = np.sort(np.random.default_rng(seed).choice(n, MAX_ITEMS, replace=False))
        x, codes = x[rows], codes[rows]
        n = MAX_ITEMS
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    signs = np.unpackbits(np.ascontiguousarray(codes, dtype=np.uint8), axis=1)[:, :bits].astype(np.float64) * 2 - 1
    dist = np.rint((bits - signs @ signs.T) / 2).astype(np.int64)
    cos = x @ x.T
    off = ~np.eye(n, dtype=bool)
    d, c = dist[off], cos[off]
    count = np.bincount(d, minlength=bits + 1)[: bits + 1]
    total = np.bincount(d, weights=c, minlength=bits + 1)[: bits + 1]
    known = np.flatnonzero(count)
    mean = total[known] / count[known]
    if known[0] != 0:  # identical codes: as similar as it gets
        known, mean = np.r_[0, known], np.r_[1.0, mean]
    table = np.interp(np.arange(bits + 1), known, mean)
    table = np.minimum.accumulate(np.clip(table, -1.0, 1.0))
    return [round(float(v), 4) for v in table]


def score_of_distance(distance: int, bits: int, meta: Optional[dict[str, Any]] = None) -> float:
    """The match score for a Hamming distance: the index's table, else the SimHash estimate."""
    table = (meta or {}).get(TABLE_KEY)
    if isinstance(table, list) and len(table) == bits + 1:
        return float(table[min(max(int(distance), 0), bits)])
    return math.cos(math.pi * distance / bits)


def match_score(distance: int, rerank_score: Optional[float], bits: int, meta: Optional[dict[str, Any]] = None,
                rerank_vectors: bool = False) -> float:
    """A match's score: its re-rank cosine when the index re-ranked it with stored int8 vectors
    (``rerank_vectors`` and a finite ``rerank_score``), else :func:`score_of_distance`. Without
    vectors a re-rank score is a projection dot product, not a cosine, and is not used."""
    if rerank_vectors and rerank_score is not None and math.isfinite(rerank_score):
        return float(rerank_score)
    return score_of_distance(distance, bits, meta)
