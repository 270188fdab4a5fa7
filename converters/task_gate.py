"""The extractor's task gate: the user's own leave-one-out recall@1, searched as the board searches.

Why: cosine and top-1 neighbour identity are proxies. MobileNetV2's int8 TFLite misses both
(cosine 0.988 < 0.995, neighbour identity 0.74 < 0.97) while costing 0.28 recall@1 points on the
drink gallery: lossless for the user. Every ``convert`` run has a labelled gallery, so the
converter measures what the user gets: each extractor artifact's queries searched in the index the
bundle will hold (same features, bits, method and re-rank as the board), against FP32 float
brute-force search (PaddleClas's Faiss IndexFlatIP) of the reference features. The artifact passes
when it loses at most ``budget`` recall points. Cosine stays as a floor for garbage (NaN, a broken
graph); neighbour identity is reported only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_shitu.evaluate import float_loo_recall, index_loo_recall, loo_queries
from edge_shitu.gallery_index import GalleryIndex

DEFAULT_BUDGET_POINTS = 1.0
DEFAULT_MAX_PHOTOS = 2000  # gallery photos the gate embeds per artifact (whole classes, seeded)
MIN_QUERIES = 20  # fewer leave-one-out queries say nothing: the proxies gate instead


def sample_rows(labels: Sequence[str], max_photos: int = DEFAULT_MAX_PHOTOS, seed: int = 0) -> np.ndarray:
    """Gallery rows the gate uses: every row when the gallery is small enough, else whole classes
    with >= 2 photos in a seeded random order until ``max_photos`` (a class split in two would
    lose the leave-one-out partner its queries need)."""
    labs = np.asarray(labels)
    if len(labs) <= max_photos:
        return np.arange(len(labs))
    classes, inv, counts = np.unique(labs, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(classes))
    keep: list[int] = []
    total = 0
    for c in order:
        if counts[c] < 2 or total + counts[c] > max_photos:
            continue
        keep.append(int(c))
        total += int(counts[c])
    return np.flatnonzero(np.isin(inv, keep))


def usable(labels: Sequence[str]) -> bool:
    """Whether the gallery can gate at all (enough photos whose class has another photo)."""
    return len(loo_queries(labels)) >= MIN_QUERIES


@dataclass
class TaskFigures:
    """What one artifact's queries achieve on the user's gallery (recall in [0, 1])."""

    recall_at_1: float
    reference_recall_at_1: float
    drop_points: float
    budget_points: float
    queries: int
    photos: int
    search: str

    @property
    def resolution_points(self) -> float:
        """One query's worth of recall: a drop measured on these queries moves in these steps."""
        return round(100.0 / self.queries, 4) if self.queries else 0.0

    @property
    def allowed_points(self) -> float:
        """The budget, but never finer than one query: on 60 queries a 1-point budget would demand
        that not one query change (a coin flip, not a measurement). A zero budget stays zero."""
        return max(self.budget_points, self.resolution_points) if self.budget_points > 0 else 0.0

    @property
    def passed(self) -> bool:
        return bool(self.drop_points <= self.allowed_points + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolution_points": self.resolution_points, "passed": self.passed}


class TaskGate:
    """The board's index over the gallery sample, built once, queried by each artifact."""

    def __init__(self, ref_feats: np.ndarray, gallery_feats: np.ndarray, labels: Sequence[str],
                 index_settings: Mapping[str, Any], budget_points: float = DEFAULT_BUDGET_POINTS) -> None:
        self.labels = list(labels)
        self.budget = float(budget_points)
        self.reference = float_loo_recall(ref_feats, self.labels)
        bits = int(index_settings.get("bits", 256))
        method = str(index_settings.get("method", "itq"))
        self.rerank = int(index_settings.get("rerank", 0))
        vectors = bool(index_settings.get("rerank_vectors", self.rerank > 0))
        self.index = GalleryIndex.build(gallery_feats, self.labels, bits=bits, method=method, rerank_vectors=vectors)
        self.search = (f"{method} {bits}-bit Hamming index" + (f", re-rank {self.rerank} by "
                       f"{'int8 vectors' if vectors else 'codes'}" if self.rerank else ", no re-rank"))

    def measure(self, query_feats: np.ndarray) -> TaskFigures:
        got = index_loo_recall(self.index, query_feats, self.labels, rerank=self.rerank)
        return TaskFigures(recall_at_1=round(got, 6), reference_recall_at_1=round(self.reference, 6),
                           drop_points=round(100.0 * (self.reference - got), 4), budget_points=self.budget,
                           queries=len(loo_queries(self.labels)), photos=len(self.labels), search=self.search)


# ----------------------------------------------------------------------------- threshold
ACCEPT_RIGHT = 0.95  # the share of right gallery matches the recognition threshold must accept


def choose_threshold(index: GalleryIndex, query_feats: np.ndarray, labels: Sequence[str], *, k: int = 5,
                     rerank: int = 0, accept_right: float = ACCEPT_RIGHT) -> dict[str, Any]:
    """The recognition threshold from held-out GALLERY photos, scored exactly as the device scores
    a match (``pipeline.HammingSearcher``: the re-rank cosine with the index's int8 vectors when
    re-ranking is on, else the index's distance -> cosine table).

    Each photo queries the index twice: without itself (leave-one-out: its top-1 is a RIGHT match
    when the label agrees, a WRONG one otherwise) and without its whole label (leave-label-out: a
    product the gallery does not hold, always WRONG). The threshold is the highest one that still
    accepts ``accept_right`` of the right matches: photos on a shelf match their gallery product
    less well than gallery photos match each other (MobileNetV2 on the drink shelf photos: right
    crops score 0.86-0.89 where Youden's J over gallery photos puts the cut at 0.885 and keeps one
    bottle of three), so the cut leans to recall; how many wrong matches it lets through is
    recorded with it, and Youden's J (the balanced cut) is reported beside it.
    """
    from edge_shitu.scores import match_score

    labs = np.asarray(labels)
    ids = np.asarray(index.ids(live_only=False))
    row_of = {int(i): r for r, i in enumerate(ids)}
    _, _, counts = np.unique(labs, return_inverse=True, return_counts=True)
    depth = min(len(labs), int(counts.max()) + k + 1)
    dist, rows, scores = index.search_rows(query_feats, k=depth, rerank=max(rerank, depth) if rerank else 0)
    meta, vectors = index.data.meta, index.data.vectors is not None

    def score(i: int, j: int) -> float:
        return match_score(int(dist[i, j]), None if scores is None else float(scores[i, j]), index.bits, meta, vectors)

    right: list[float] = []
    wrong: list[float] = []
    for i in range(len(labs)):
        own = row_of.get(int(ids[i]), -1)
        cand = [(int(r), j) for j, r in enumerate(rows[i]) if r >= 0 and r != own]
        if not cand:
            continue
        r, j = cand[0]  # leave-one-out top-1
        (right if labs[r] == labs[i] else wrong).append(score(i, j))
        other = next(((r, j) for r, j in cand if labs[r] != labs[i]), None)  # leave-label-out top-1
        if other is not None:
            wrong.append(score(i, other[1]))
    pos, neg = np.asarray(right), np.asarray(wrong)
    if not len(pos) or not len(neg):
        return {}
    cands = np.unique(np.concatenate([pos, neg]))
    tpr = (pos[None, :] >= cands[:, None]).mean(1)
    fpr = (neg[None, :] >= cands[:, None]).mean(1)
    j = tpr - fpr
    youden = int(np.flatnonzero(j == j.max())[-1])
    best = int(np.flatnonzero(tpr >= accept_right)[-1])  # tpr falls as the threshold rises; cands[0] accepts all
    t = float(cands[best])
    return {"threshold": round(t, 6), "right_matches": len(pos), "wrong_matches": len(neg),
            "right_accepted": round(float(tpr[best]), 4), "wrong_accepted": round(float(fpr[best]), 4),
            "youden_threshold": round(float(cands[youden]), 6),
            "youden_right_wrong_accepted": [round(float(tpr[youden]), 4), round(float(fpr[youden]), 4)],
            "chosen_by": (f"the highest score accepting >= {accept_right:.0%} of the right top-1 matches of "
                          f"{len(labs)} gallery photos, each held out of the index ({len(pos)} right, "
                          f"{len(neg)} wrong: leave-one-out, and leave-label-out as products the gallery "
                          "lacks), scored as the device scores")}
