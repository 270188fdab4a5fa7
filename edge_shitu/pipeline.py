"""PP-ShiTu recognition on the device: detect -> crop -> embed -> search -> NMS over results.

The steps follow PaddleClas's ``deploy/python/predict_system.py`` so that a bundle recognizes
what PaddleClas would:

1. the mainbody detector; detections sorted by score, the best ``max_det`` kept, those under
   ``det_threshold`` dropped (PaddleClas ``parse_det_results``);
2. the whole image is always added as one more candidate (``append_self``): recall for photos
   of a single product that the detector misses;
3. every candidate is cropped (integer box, as PaddleClas truncates it), embedded by the
   extractor and searched; its top-1 gallery item is kept when the score passes
   ``rec_score_threshold``;
4. NMS over the recognized boxes by recognition score (``nms_to_rec_results``, IoU
   ``rec_nms_iou``, PaddleClas's +1 pixel area convention), so the whole-image box and a
   detection of the same product do not both report it.

The searcher is pluggable: the bundle's Hamming index on the device, or a float brute-force
searcher (what PaddleClas does with faiss ``IndexFlatIP``) for the reference in benchmarks.
Scores: cosine for float search; for binary codes re-ranked with the index's int8 vectors the
cosine with them, else the mean cosine gallery pairs have at the top-1 Hamming distance (a table
the index stores, edge_shitu/scores.py), so one threshold means the same thing for all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from edge_shitu.detection import PicoDetHead, postprocess_detections
from edge_shitu.errors import EdgeShituError
from edge_shitu.gfl_head import GFLHead
from edge_shitu.hashing import l2_normalize
from edge_shitu.preprocess import DetPreprocess, RecPreprocess
from edge_shitu.scores import match_score


# ----------------------------------------------------------------------------- results
@dataclass
class Recognized:
    """One recognized object. ``box`` is x1, y1, x2, y2 in original-image pixels (integers, as
    cropped). ``det_score`` is None for the whole-image candidate."""

    box: list[int]
    label: str
    score: float
    id: int
    det_score: Optional[float]
    source: str  # "det" | "image"

    def to_dict(self) -> dict[str, Any]:
        return {"box": self.box, "label": self.label, "score": round(self.score, 5), "id": self.id,
                "det_score": None if self.det_score is None else round(self.det_score, 5),
                "source": self.source}


@dataclass
class Result:
    """Everything one image gave: recognized objects, the raw detections and stage timings (ms)."""

    objects: list[Recognized]
    detections: np.ndarray  # [K, 6] class, score, x1, y1, x2, y2 after threshold/max_det
    timings_ms: dict[str, float] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)  # (w, h)
    candidates: list[Recognized] = field(default_factory=list)  # every candidate's top-1, before threshold/NMS

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "objects": [o.to_dict() for o in self.objects],
                "detections": [[round(float(v), 4) for v in row] for row in self.detections],
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}


# ----------------------------------------------------------------------------- searchers
class Searcher(Protocol):
    def top1(self, features: np.ndarray) -> list[tuple[int, str, float]]:
        """(gallery id, label, score) of the best match of each row; id -1 when empty."""
        ...


class HammingSearcher:
    """The bundle's binary index; a match's score is its re-rank cosine with the index's int8
    vectors when re-ranking is on, else the mean gallery cosine at its Hamming distance (the
    index's table; SimHash estimate without one): see edge_shitu/scores.py."""

    def __init__(self, index: Any, k: int = 5, rerank: int = 0) -> None:
        self.index, self.k, self.rerank = index, max(1, k), max(0, rerank)

    def top1(self, features: np.ndarray) -> list[tuple[int, str, float]]:
        out = []
        for matches in self.index.query(features, k=self.k, rerank=self.rerank):
            if not matches:
                out.append((-1, "", -1.0))
                continue
            m = matches[0]
            d = self.index.data
            score = match_score(m.distance, m.score, self.index.bits, d.meta, d.vectors is not None)
            out.append((m.id, m.label, score))
        return out


class FloatSearcher:
    """Brute-force cosine over float gallery features (PaddleClas: faiss IndexFlatIP on
    L2-normalised features)."""

    def __init__(self, features: np.ndarray, labels: Sequence[str], ids: Optional[Sequence[int]] = None) -> None:
        self.x = l2_normalize(np.asarray(features, dtype=np.float32))
        self.labels = list(labels)
        self.ids = list(ids) if ids is not None else list(range(len(self.labels)))

    def top1(self, features: np.ndarray) -> list[tuple[int, str, float]]:
        q = l2_normalize(np.asarray(features, dtype=np.float32).reshape(-1, self.x.shape[1]))
        if not len(self.labels):
            return [(-1, "", -1.0)] * q.shape[0]
        sims = q @ self.x.T
        best = sims.argmax(1)
        return [(int(self.ids[b]), self.labels[b], float(sims[i, b])) for i, b in enumerate(best)]


# ----------------------------------------------------------------------------- NMS over results
def nms_recognized(objs: Sequence[Recognized], iou: float) -> list[Recognized]:
    """PaddleClas ``nms_to_rec_results``: keep the best-scored, drop overlaps above ``iou``
    (areas with the +1 pixel convention)."""
    if not objs:
        return []
    b = np.array([o.box for o in objs], dtype=np.float64)
    s = np.array([o.score for o in objs], dtype=np.float64)
    areas = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    order = np.argsort(-s, kind="stable")
    keep: list[Recognized] = []
    while order.size:
        i = order[0]
        keep.append(objs[i])
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr <= iou]
    return keep


# ----------------------------------------------------------------------------- the pipeline
@dataclass
class Settings:
    det_threshold: float = 0.2
    max_det: int = 5
    rec_score_threshold: float = 0.5
    rec_nms_iou: float = 0.05
    top_k: int = 5
    rerank: int = 0

    @classmethod
    def from_runtime(cls, rt: Mapping[str, Any], **override: Any) -> Settings:
        s = cls(**{k: rt[k] for k in ("det_threshold", "max_det", "rec_score_threshold", "rec_nms_iou", "top_k",
                                      "rerank") if k in rt})
        for k, v in override.items():
            if v is not None:
                setattr(s, k, v)
        return s


class Detector:
    """A detector artifact + its preprocessing + the postprocessing its outputs need."""

    def __init__(self, backend: Any, pre: DetPreprocess, head: Optional[PicoDetHead | GFLHead]) -> None:
        self.backend, self.pre, self.head = backend, pre, head
        self.input_names = [s.name for s in backend.inputs]

    def feeds(self, img: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        f = self.pre(img)
        if len(self.input_names) == 1:  # cut artifacts take the image only
            return {self.input_names[0]: f["image"]}, f["im_shape"][0], f["scale_factor"][0]
        return f, f["im_shape"][0], f["scale_factor"][0]

    def postprocess(self, outs: Sequence[np.ndarray], im_shape: np.ndarray, scale_factor: np.ndarray,
                    min_score: float = 0.0, max_keep: Optional[int] = None) -> np.ndarray:
        if isinstance(self.head, GFLHead):  # raw GFL maps: decode + class filter + NMS in numpy
            return self.head.postprocess(order_gfl_outputs(outs, self.head), im_shape, scale_factor,
                                         min_score=min_score, max_keep=max_keep)
        if self.head is not None:  # cut before NMS: decoded boxes + scores
            boxes, scores = _boxes_and_scores(outs, self.head.num_classes)
            return postprocess_detections(boxes, scores, self.head, im_shape, scale_factor,
                                          min_score=min_score, max_keep=max_keep)
        return np.asarray(outs[0], dtype=np.float32).reshape(-1, 6)  # in-graph NMS: [K, 6]


def order_gfl_outputs(outs: Sequence[np.ndarray], head: GFLHead) -> list[np.ndarray]:
    """Raw GFL maps in the head's order (score maps by level, then distribution maps), whatever
    order the engine returns them in (onnx2tf / Paddle Lite may permute outputs): each map is
    known by its cell count (the level) and its last dimension (classes or 4 x bins)."""
    arrs = [np.asarray(o) for o in outs]
    cells = [gh * gw for gh, gw in head.grids]
    bins = 4 * (head.reg_max + 1)
    if head.num_classes == bins:  # ambiguous by shape: trust the model's order
        return head.order_outputs(arrs)
    by: dict[tuple[int, int], np.ndarray] = {}
    for a in arrs:
        n, c = (a.shape[-2], a.shape[-1]) if a.ndim >= 2 else (-1, -1)
        if c in (head.num_classes, bins) and n in cells:
            by.setdefault((0 if c == head.num_classes else 1, cells.index(n)), a)
    if len(by) != 2 * len(cells):
        raise EdgeShituError(f"detector outputs {[list(a.shape) for a in arrs]} are not the {len(cells)} score + "
                             f"{len(cells)} box maps of the bundle's GFL head; rebuild the bundle")
    return [by[(t, i)] for t in (0, 1) for i in range(len(cells))]


def _boxes_and_scores(outs: Sequence[np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick boxes [.., N, 4] and scores [.., N, C] from a cut detector's outputs, in any order."""
    arrs = [np.asarray(o) for o in outs]
    boxes = next((a for a in arrs if a.shape[-1] == 4 and a.ndim >= 2), None)
    scores = next((a for a in arrs if a is not boxes and a.shape[-1] == num_classes), None)
    if boxes is None or scores is None:
        raise EdgeShituError(f"detector outputs {[a.shape for a in arrs]} are not boxes [1,N,4] + scores "
                             f"[1,N,{num_classes}]; rebuild the bundle")
    return boxes, scores


def crop_boxes(dets: np.ndarray, w: int, h: int, min_side: int = 2) -> list[tuple[list[int], float]]:
    """Detections as integer crop boxes inside a w x h photo (PaddleClas truncates:
    ``bbox.astype("int")``), with their scores; boxes thinner than ``min_side`` are dropped."""
    out = []
    for row in dets:
        x1, y1, x2, y2 = (int(v) for v in row[2:6])
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if x2 - x1 >= min_side and y2 - y1 >= min_side:
            out.append(([x1, y1, x2, y2], float(row[1])))
    return out


class Pipeline:
    """detector (optional) -> extractor -> searcher, PP-ShiTu style. See the module doc."""

    def __init__(self, rec_backend: Any, rec_pre: RecPreprocess, searcher: Searcher, *,
                 detector: Optional[Detector] = None, settings: Optional[Settings] = None) -> None:
        self.rec, self.rec_pre, self.searcher = rec_backend, rec_pre, searcher
        self.detector = detector
        self.settings = settings or Settings()
        self.rec_input = rec_backend.inputs[0].name

    # ------------------------------------------------------------------ stages
    def detect(self, img: np.ndarray, timings: dict[str, float]) -> np.ndarray:
        """[K, 6] detections above threshold, best ``max_det`` first."""
        if self.detector is None:
            return np.zeros((0, 6), np.float32)
        t0 = time.perf_counter()
        feeds, im_shape, sf = self.detector.feeds(img)
        t1 = time.perf_counter()
        outs = self.detector.backend.run(feeds)
        t2 = time.perf_counter()
        dets = self.detector.postprocess(outs, im_shape, sf, self.settings.det_threshold, self.settings.max_det)
        order = np.argsort(-dets[:, 1], kind="stable")[: self.settings.max_det]
        dets = dets[order]
        dets = dets[dets[:, 1] >= self.settings.det_threshold]
        t3 = time.perf_counter()
        timings["det_pre"] = (t1 - t0) * 1e3
        timings["det_infer"] = (t2 - t1) * 1e3
        timings["det_post"] = (t3 - t2) * 1e3
        return dets

    def embed(self, crops: Sequence[np.ndarray], timings: Optional[dict[str, float]] = None) -> np.ndarray:
        """Features of RGB uint8 crops, one extractor run per crop (mobile artifacts have batch 1)."""
        feats, t_pre, t_inf = [], 0.0, 0.0
        for c in crops:
            t0 = time.perf_counter()
            x = self.rec_pre(c)
            t1 = time.perf_counter()
            feats.append(np.asarray(self.rec.run({self.rec_input: x})[0], dtype=np.float32).reshape(-1))
            t_inf += time.perf_counter() - t1
            t_pre += t1 - t0
        if timings is not None:
            timings["rec_pre"] = t_pre * 1e3
            timings["rec_infer"] = t_inf * 1e3
        return np.stack(feats) if feats else np.zeros((0, 0), np.float32)

    def __call__(self, img: np.ndarray) -> Result:
        return self.recognize(img)

    def recognize(self, img: np.ndarray) -> Result:
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        h, w = img.shape[:2]
        dets = self.detect(img, timings)
        cands: list[tuple[list[int], Optional[float], str]] = [
            (box, score, "det") for box, score in crop_boxes(dets, w, h)]
        cands.append(([0, 0, w, h], None, "image"))
        crops = [img[b[1]:b[3], b[0]:b[2]] for b, _, _ in cands]
        feats = self.embed(crops, timings)
        t0 = time.perf_counter()
        hits = self.searcher.top1(feats)
        timings["search"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        every = [Recognized(b, label, score, gid, ds, src) for (b, ds, src), (gid, label, score) in zip(cands, hits)]
        objs = [o for o in every if o.id >= 0 and o.score >= self.settings.rec_score_threshold]
        objs = nms_recognized(objs, self.settings.rec_nms_iou)
        timings["nms"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return Result(objs, dets, timings, (w, h), every)
