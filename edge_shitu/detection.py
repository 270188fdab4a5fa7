"""Detector postprocessing in numpy: PP-PicoDet head decode, Paddle-compatible NMS, IoU.

Device-side code. A detector artifact cut before its NMS (every TFLite detector: TFLite has no
``multiclass_nms3``) outputs decoded ``boxes`` [1, N, 4] and ``scores`` [1, N, C]; the runtime
clips, rescales and runs NMS here, with the parameters the converter read out of the Paddle
program (``details.head.nms`` in the bundle manifest). The converter's verifier uses the very
same functions, so a bundle is checked with the code that will run it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from edge_shitu.errors import EdgeShituError


@dataclass
class PicoDetHead:
    """Where a PP-PicoDet program's head ends and how its outputs decode (read from the graph)."""

    image: str
    scores: list[str]  # per level, [1, H, W, C] after sigmoid
    dists: list[str]  # per level, [1, H, W, 4 * (reg_max + 1)]
    strides: list[int]
    grids: list[tuple[int, int]]
    num_classes: int
    reg_max: int
    cell_offset: float
    nms: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PicoDetHead:
        names = {f.name for f in fields(cls)}
        missing = names - set(d) - {"nms"}
        if missing:
            raise EdgeShituError(f"detector head description lacks {sorted(missing)}: rebuild the bundle "
                                 "with 'edge-shitu convert'")
        return cls(**{k: v for k, v in d.items() if k in names})


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (x1, y1, x2, y2)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float = 0.025,
    iou_threshold: float = 0.6,
    top_k: int = 1000,
    keep_top_k: int = 100,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Multi-class NMS with the semantics of Paddle's ``multiclass_nms3`` (normalized=True).

    ``boxes`` [N, 4] (x1, y1, x2, y2), ``scores`` [C, N]. Returns [K, 6] rows
    ``[class, score, x1, y1, x2, y2]`` sorted by score, like the Paddle detector's output.
    ``max_per_class`` stops each class early (exact when the caller keeps at most that many).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:  # nothing above the threshold (reshape(-1, 0) cannot infer C)
        return np.zeros((0, 6), np.float32)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1, boxes.shape[0])
    out = []
    for c in range(scores.shape[0]):
        s = scores[c]
        idx = np.where(s > score_threshold)[0]
        idx = idx[np.argsort(-s[idx], kind="stable")][:top_k]
        keep: list[int] = []
        while idx.size and (max_per_class is None or len(keep) < max_per_class):
            i = idx[0]
            keep.append(int(i))
            if idx.size == 1:
                break
            iou = iou_matrix(boxes[i:i + 1], boxes[idx[1:]])[0]
            idx = idx[1:][iou <= iou_threshold]
        for i in keep:
            out.append([c, s[i], *boxes[i]])
    if not out:
        return np.zeros((0, 6), dtype=np.float32)
    res = np.array(out, dtype=np.float32)
    res = res[np.argsort(-res[:, 1], kind="stable")][:keep_top_k]
    return res


def anchor_centers(head: PicoDetHead) -> list[np.ndarray]:
    out = []
    for (h, w), s in zip(head.grids, head.strides):
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        c = np.stack([(xs.ravel() + head.cell_offset) * s, (ys.ravel() + head.cell_offset) * s], 1)
        out.append(c.astype(np.float32))
    return out


def decode_picodet(raw: Sequence[np.ndarray], head: PicoDetHead) -> tuple[np.ndarray, np.ndarray]:
    """Per-level raw maps -> boxes [1,N,4], scores [1,N,C] (the numpy twin of the ONNX decode
    the converter appends). ``raw`` = the score maps then the distribution maps, head order."""
    n = len(head.scores)
    boxes, scores = [], []
    bins = head.reg_max + 1
    proj = np.arange(bins, dtype=np.float32)
    for lvl, centre in enumerate(anchor_centers(head)):
        sc = np.asarray(raw[lvl], dtype=np.float32).reshape(1, -1, head.num_classes)
        d = np.asarray(raw[n + lvl], dtype=np.float32).reshape(1, -1, 4, bins)
        e = np.exp(d - d.max(-1, keepdims=True))
        dist = (e / e.sum(-1, keepdims=True)) @ proj * head.strides[lvl]
        boxes.append(np.concatenate([centre[None] - dist[..., :2], centre[None] + dist[..., 2:]], -1))
        scores.append(sc)
    return np.concatenate(boxes, 1), np.concatenate(scores, 1)


def candidate_boxes(boxes: np.ndarray, im_shape: Sequence[float], scale_factor: Sequence[float]) -> np.ndarray:
    """All decoded boxes clipped to the network input and mapped back to original-image pixels."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, float(im_shape[1]))
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, float(im_shape[0]))
    sy, sx = float(scale_factor[0]), float(scale_factor[1])
    return b / np.array([sx, sy, sx, sy], dtype=np.float32)


def postprocess_detections(boxes: np.ndarray, scores: np.ndarray, head: PicoDetHead,
                           im_shape: Sequence[float], scale_factor: Sequence[float], *,
                           min_score: float = 0.0, max_keep: int | None = None) -> np.ndarray:
    """After a detector cut before NMS: clip to ``im_shape`` (h, w), divide by ``scale_factor``
    (sy, sx), NMS with the program's own parameters. Returns [K, 6] rows like Paddle's output.

    ``min_score`` / ``max_keep``: what the caller keeps anyway (its detection threshold and
    max_det). Greedy NMS never lets a lower-scored box suppress a higher one, so dropping boxes
    under ``min_score`` first and stopping at ``max_keep`` per class gives exactly the top rows
    of the full NMS, at a fraction of the cost (thousands of low-score anchors otherwise).
    """
    p = head.nms
    keep_top_k = int(p.get("keep_top_k", 100))
    if max_keep is not None:
        keep_top_k = min(keep_top_k, int(max_keep))
    s = np.asarray(scores, dtype=np.float32).reshape(-1, head.num_classes).T
    # the caller keeps score >= min_score; NMS keeps score > threshold
    thr = max(float(p.get("score_threshold", 0.025)), float(np.nextafter(np.float32(min_score), np.float32(-1))))
    live = np.flatnonzero((s > thr).any(axis=0))
    b = candidate_boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[live], im_shape, scale_factor)
    return nms(b, s[:, live], score_threshold=thr, iou_threshold=float(p.get("nms_threshold", 0.6)),
               top_k=int(p.get("nms_top_k", 1000)), keep_top_k=keep_top_k, max_per_class=keep_top_k)
