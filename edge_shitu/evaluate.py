"""Retrieval quality measured through the real index code path (used by the demo and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_shitu.gallery_index import GalleryIndex


def loo_queries(labels: Sequence[str]) -> np.ndarray:
    """Rows whose class has at least 2 items: the only ones leave-one-out can get right."""
    labs = np.asarray(labels)
    _, inv, counts = np.unique(labs, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inv] >= 2)


def float_loo_recall(features: np.ndarray, labels: Sequence[str]) -> float:
    """Cosine brute force (what PaddleClas does with Faiss IndexFlatIP): the reference."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    labs = np.asarray(labels)
    q = loo_queries(labels)
    return float((labs[s.argmax(1)] == labs)[q].mean())


def index_loo_recall(index: GalleryIndex, features: np.ndarray, labels: Sequence[str],
                     rerank: int = 0) -> float:
    """Leave-one-out recall@1: each gallery item queries the index that holds it, minus itself.

    The item's own row is dropped from its result list (it has distance 0 but so may exact
    duplicates, so we drop by id, not by rank).
    """
    labs = np.asarray(labels)
    q = loo_queries(labels)
    ids = index.ids(live_only=False)
    id_to_row = {int(i): r for r, i in enumerate(ids)}
    # k=2: the item itself plus its nearest neighbour; the shortlist also grows by one for itself.
    _, rows, _ = index.search_rows(features[q], k=2, rerank=rerank + 1 if rerank else 0)
    hits = 0
    for qi, row_list in zip(q, rows):
        own = id_to_row.get(int(ids[qi]), -1)
        best = next((int(r) for r in row_list if r >= 0 and r != own), -1)
        hits += best >= 0 and labs[best] == labs[qi]
    return hits / len(q)
