"""Retrieval quality measured through the real index code path (used by the demo and benchmarks).

Leave-one-out over a labelled gallery: every item whose class has at least one other item
queries the gallery that holds it, minus itself. Metrics: recall@1 (top-1 has the query's
label) and mAP@k (``AP@k = sum_{i<=k} P@i * rel_i / min(k, R)``, R = the other items of the
query's class), the two figures PaddleClas reports for retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.hashing import l2_normalize


def loo_queries(labels: Sequence[str]) -> np.ndarray:
    """Rows whose class has at least 2 items: the only ones leave-one-out can get right."""
    labs = np.asarray(labels)
    _, inv, counts = np.unique(labs, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inv] >= 2)


def float_loo_topk(features: np.ndarray, labels: Sequence[str], k: int = 5,
                   gallery: np.ndarray | None = None) -> np.ndarray:
    """Rows of the k nearest OTHER items by cosine (PaddleClas: Faiss IndexFlatIP), per LOO query.

    ``gallery``: the same photos embedded by another model (a bundle's FP32 reference gallery
    searched with a device's int8 queries); default: the queries' own features."""
    x = l2_normalize(features)
    g = x if gallery is None else l2_normalize(gallery)
    q = loo_queries(labels)
    s = x[q] @ g.T
    s[np.arange(len(q)), q] = -np.inf
    top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def index_loo_topk(index: GalleryIndex, features: np.ndarray, labels: Sequence[str], k: int = 5,
                   rerank: int = 0) -> np.ndarray:
    """Rows of the k nearest OTHER items in the index (the item's own row dropped by id, not by
    rank: exact duplicates also have distance 0); -1 where fewer exist."""
    q = loo_queries(labels)
    ids = index.ids(live_only=False)
    id_to_row = {int(i): r for r, i in enumerate(ids)}
    _, rows, _ = index.search_rows(features[q], k=k + 1, rerank=rerank + 1 if rerank else 0)
    out = np.full((len(q), k), -1, dtype=np.int64)
    for i, (qi, row_list) in enumerate(zip(q, rows)):
        own = id_to_row.get(int(ids[qi]), -1)
        kept = [int(r) for r in row_list if r >= 0 and r != own][:k]
        out[i, : len(kept)] = kept
    return out


def recall_at_1(top: np.ndarray, labels: Sequence[str]) -> float:
    labs = np.asarray(labels)
    q = loo_queries(labels)
    return float(np.mean([top[i, 0] >= 0 and labs[top[i, 0]] == labs[qi] for i, qi in enumerate(q)]))


def map_at_k(top: np.ndarray, labels: Sequence[str], k: int = 5) -> float:
    labs = np.asarray(labels)
    q = loo_queries(labels)
    _, inv, counts = np.unique(labs, return_inverse=True, return_counts=True)
    aps = []
    for i, qi in enumerate(q):
        rel = np.array([r >= 0 and labs[r] == labs[qi] for r in top[i, :k]], dtype=np.float64)
        hits = np.cumsum(rel)
        precision = hits / np.arange(1, len(rel) + 1)
        aps.append(float((precision * rel).sum() / min(k, counts[inv[qi]] - 1)))
    return float(np.mean(aps))


def float_loo_recall(features: np.ndarray, labels: Sequence[str]) -> float:
    """Cosine brute force (what PaddleClas does with Faiss IndexFlatIP): the reference."""
    return recall_at_1(float_loo_topk(features, labels, 1), labels)


def index_loo_recall(index: GalleryIndex, features: np.ndarray, labels: Sequence[str],
                     rerank: int = 0) -> float:
    """Leave-one-out recall@1 through the index (see :func:`index_loo_topk`)."""
    return recall_at_1(index_loo_topk(index, features, labels, 1, rerank), labels)
