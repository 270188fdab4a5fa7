"""Device-side decoding of PP-PicoDet's RAW GFL heads (no NMS in the model), in numpy.

PaddleDetection publishes PicoDet detectors as ONNX files exported without post-processing
(e.g. the PicoDet-S COCO deploy models): per FPN level one score map [1, N_i, C] (sigmoid already
applied) and one distribution map [1, N_i, 4 * (reg_max + 1)] (left, top, right, bottom, each a
discrete distribution over reg_max + 1 bins: softmax, expectation, times the stride). ``N_i`` is
``ceil(H / s) * ceil(W / s)`` for the level's stride ``s``, cells in row-major order, and the
anchor point of cell (row, col) is ``((col + 0.5) * s, (row + 0.5) * s)`` — the convention of
PaddleDetection's PicoDet post-processing (its C++ deploy code and ``cell_offset=0.5``).

Such a model can serve as PP-ShiTu's mainbody detector when its classes are restricted to the
product-like ones (``det_classes``: COCO names or 0-based ids) or scored class-agnostically. The
rows returned are the PP-ShiTu detector's: ``[class, score, x1, y1, x2, y2]`` in original-image
pixels, sorted by score, so the pipeline treats them as it treats the Paddle detector's output.
The decode and NMS are :mod:`edge_shitu.detection`'s (the functions the converter's verifier and
the runtime already share), so nothing here re-implements Paddle's NMS semantics.

Device-side module: numpy only. :meth:`GFLHead.to_dict` / :meth:`GFLHead.from_dict` are what a
bundle manifest stores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from edge_shitu.detection import PicoDetHead, decode_picodet, nms
from edge_shitu.errors import EdgeShituError

# COCO-80 in the 0-based order of PaddleDetection's (and every COCO-trained PicoDet's) label list.
COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
# Names other label lists use for the same COCO classes.
_COCO_ALIASES = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
                 "diningtable": "dining table", "tvmonitor": "tv", "cellphone": "cell phone"}
# The product-like COCO classes: a sensible --det-classes for shelf photos.
PRODUCT_CLASSES = ("bottle", "wine glass", "cup", "bowl", "vase", "book")

DEFAULT_STRIDES = (8, 16, 32, 64)
# PaddleDetection's PicoDet configs: score 0.025, NMS IoU 0.6, nms_top_k 1000, keep_top_k 100.
DEFAULT_NMS = {"score_threshold": 0.025, "nms_threshold": 0.6, "nms_top_k": 1000, "keep_top_k": 100}

ClassSpec = Union[str, int]


def resolve_classes(classes: Optional[Sequence[ClassSpec]], num_classes: int,
                    names: Optional[Sequence[str]] = None) -> Optional[list[int]]:
    """``det_classes`` (names or 0-based ids, or one comma-separated string) -> sorted ids.

    Names are looked up in ``names`` (default: COCO-80 when the head has 80 classes). None or an
    empty list means every class. A name or id that does not exist is one EdgeShituError line."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c.strip()]
    if not classes:
        return None
    table = [n.lower() for n in (names if names is not None else (COCO80 if num_classes == 80 else ()))]
    out: set[int] = set()
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            i = int(c)
        elif isinstance(c, str) and c.strip().lstrip("-").isdigit():
            i = int(c.strip())
        elif isinstance(c, str):
            key = _COCO_ALIASES.get(c.strip().lower(), c.strip().lower())
            if key not in table:
                hint = "COCO-80 names such as bottle, cup, vase" if table else "0-based class ids (no names known)"
                raise EdgeShituError(f"detector class {c!r} is unknown: use {hint}")
            i = table.index(key)
        else:
            raise EdgeShituError(f"detector class {c!r} must be a name or a 0-based id")
        if not 0 <= i < num_classes:
            raise EdgeShituError(f"detector class id {i} is out of range: the head has {num_classes} classes (0-based)")
        out.add(i)
    return sorted(out)


@dataclass
class GFLHead:
    """How a raw-GFL-head PicoDet's outputs decode, and which classes count as objects.

    ``outputs``: the score map names per level then the distribution map names per level (the
    model's output order). ``input_size``: the network input (h, w). ``classes``: 0-based ids kept
    (None: all); ``class_agnostic``: one NMS over the per-anchor max of the kept classes (a
    mainbody detector: one box per object whatever its class), each row still naming the class
    that won.
    """

    input_size: tuple[int, int]
    num_classes: int
    strides: list[int] = field(default_factory=lambda: list(DEFAULT_STRIDES))
    reg_max: int = 7
    cell_offset: float = 0.5
    outputs: list[str] = field(default_factory=list)
    image: str = "image"
    classes: Optional[list[int]] = None
    class_agnostic: bool = False
    nms: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_NMS))

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.strides = [int(s) for s in self.strides]
        if self.classes is not None:
            self.classes = resolve_classes(self.classes, self.num_classes)
        self.nms = {**DEFAULT_NMS, **dict(self.nms or {})}

    # ------------------------------------------------------------------ building
    @property
    def grids(self) -> list[tuple[int, int]]:
        h, w = self.input_size
        return [(math.ceil(h / s), math.ceil(w / s)) for s in self.strides]

    @classmethod
    def from_output_shapes(cls, input_size: Sequence[int], outputs: Sequence[tuple[str, Sequence[Any]]], *,
                           image: str = "image", strides: Sequence[int] = DEFAULT_STRIDES,
                           **kw: Any) -> GFLHead:
        """Recognise a raw GFL head from the model's outputs ``[(name, shape), ...]``: pairs of
        [1, N_i, C] score maps and [1, N_i, 4 * (reg_max + 1)] distribution maps whose N_i match
        the strides' grids over ``input_size`` (h, w). Raises EdgeShituError when they do not."""
        h, w = int(input_size[0]), int(input_size[1])
        want = [math.ceil(h / s) * math.ceil(w / s) for s in strides]
        n = len(strides)
        shaped = [(name, [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else -1 for d in s])
                  for name, s in outputs]
        if len(shaped) != 2 * n or any(len(s) != 3 for _, s in shaped):
            raise EdgeShituError(f"detector outputs {[s for _, s in shaped]} are not {n} score + "
                                 f"{n} box maps of a raw PicoDet/GFL head")
        # PaddleDetection exports every score map, then every distribution map, level by level
        scores, dists = shaped[:n], shaped[n:]
        got = [s[1] for _, s in scores], [s[1] for _, s in dists]
        if got[0] != want or got[1] != want:
            raise EdgeShituError(f"detector outputs have {got[0]} / {got[1]} cells per level; a {h}x{w} input "
                                 f"with strides {list(strides)} gives {want}: not a raw PicoDet/GFL head of this size")
        c_set = {s[2] for _, s in scores}
        d_set = {s[2] for _, s in dists}
        if len(c_set) != 1 or len(d_set) != 1 or next(iter(d_set)) % 4 or next(iter(d_set)) < 4:
            raise EdgeShituError(f"detector head maps disagree across levels (classes {sorted(c_set)}, "
                                 f"box bins {sorted(d_set)})")
        scores, dists = [nm for nm, _ in scores], [nm for nm, _ in dists]
        return cls(input_size=(h, w), num_classes=next(iter(c_set)), strides=list(strides),
                   reg_max=next(iter(d_set)) // 4 - 1, outputs=scores + dists, image=image, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gfl", "input_size": list(self.input_size), "num_classes": self.num_classes,
                "strides": list(self.strides), "reg_max": self.reg_max, "cell_offset": self.cell_offset,
                "outputs": list(self.outputs), "image": self.image, "classes": self.classes,
                "class_agnostic": self.class_agnostic, "nms": dict(self.nms)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GFLHead:
        if d.get("type", "gfl") != "gfl":
            raise EdgeShituError(f"detector head type {d.get('type')!r} is not a GFL head")
        missing = {"input_size", "num_classes"} - set(d)
        if missing:
            raise EdgeShituError(f"GFL head description lacks {sorted(missing)}: rebuild the bundle with "
                                 "'edge-shitu convert'")
        known = {"input_size", "num_classes", "strides", "reg_max", "cell_offset", "outputs", "image", "classes",
                 "class_agnostic", "nms"}
        return cls(**{k: v for k, v in d.items() if k in known})

    def picodet_head(self) -> PicoDetHead:
        """The same head in :mod:`edge_shitu.detection`'s terms (its decode runs it)."""
        n = len(self.strides)
        names = self.outputs or [f"score_{i}" for i in range(n)] + [f"dist_{i}" for i in range(n)]
        return PicoDetHead(image=self.image, scores=list(names[:n]), dists=list(names[n:]), strides=self.strides,
                           grids=self.grids, num_classes=self.num_classes, reg_max=self.reg_max,
                           cell_offset=self.cell_offset, nms=dict(self.nms))

    # ------------------------------------------------------------------ running
    def order_outputs(self, outputs: Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]) -> list[np.ndarray]:
        """Backend outputs (a name -> array mapping, or a list in the model's order) -> head order."""
        if isinstance(outputs, Mapping):
            try:
                return [np.asarray(outputs[n]) for n in self.outputs]
            except KeyError as e:
                raise EdgeShituError(f"detector output {e} is missing: the bundle's head description does not "
                                     "match its model") from None
        outs = [np.asarray(o) for o in outputs]
        if len(outs) != 2 * len(self.strides):
            raise EdgeShituError(f"a GFL head needs {2 * len(self.strides)} output maps, got {len(outs)}")
        return outs

    def decode(self, raw: Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Raw maps -> boxes [N, 4] in network-input pixels (not clipped) and scores [N, C]."""
        boxes, scores = decode_picodet(self.order_outputs(raw), self.picodet_head())
        return boxes[0], scores[0]

    def postprocess(self, raw: Union[Mapping[str, np.ndarray], Sequence[np.ndarray]],
                    im_shape: Sequence[float], scale_factor: Sequence[float], *,
                    min_score: float = 0.0, max_keep: Optional[int] = None) -> np.ndarray:
        """Raw maps -> [K, 6] rows ``[class, score, x1, y1, x2, y2]`` in original-image pixels.

        ``im_shape`` (h, w): the resized image inside the network input (boxes are clipped to it;
        the letterbox padding lies outside); ``scale_factor`` (sy, sx): original -> network pixels,
        as :class:`edge_shitu.preprocess.DetPreprocess` returns them. ``min_score`` / ``max_keep``:
        what the caller keeps anyway (see :func:`edge_shitu.detection.postprocess_detections`:
        dropping those early gives the same top rows)."""
        boxes, scores = self.decode(raw)
        p = self.nms
        keep_top_k = int(p["keep_top_k"]) if max_keep is None else min(int(p["keep_top_k"]), int(max_keep))
        thr = max(float(p["score_threshold"]), float(np.nextafter(np.float32(min_score), np.float32(-1))))
        cls_ids = np.arange(self.num_classes) if self.classes is None else np.asarray(self.classes, np.int64)
        s = scores[:, cls_ids]  # [N, K]
        if self.class_agnostic:
            best = s.argmax(1)
            s_nms = s[np.arange(s.shape[0]), best][None]  # [1, N]
        else:
            s_nms = s.T  # [K, N]
        live = np.flatnonzero((s_nms > thr).any(axis=0))
        if not live.size:  # nms() cannot shape zero boxes
            return np.zeros((0, 6), np.float32)
        b = _to_original(boxes[live], im_shape, scale_factor)
        rows = nms(b, s_nms[:, live], score_threshold=thr, iou_threshold=float(p["nms_threshold"]),
                   top_k=int(p["nms_top_k"]), keep_top_k=keep_top_k, max_per_class=keep_top_k)
        if not len(rows):
            return rows
        if self.class_agnostic:
            # rows name the kept box's own best class; nms() reports its position among the boxes
            # only through the box itself, so look the winner up by box identity
            idx = _row_indices(rows, b, s_nms[0, live])
            rows[:, 0] = cls_ids[best[live][idx]]
        else:
            rows[:, 0] = cls_ids[rows[:, 0].astype(np.int64)]
        return rows


def _to_original(boxes: np.ndarray, im_shape: Sequence[float], scale_factor: Sequence[float]) -> np.ndarray:
    """Clip to the resized image (h, w) and divide by (sy, sx): PaddleDetection's PicoDet post-processing."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, float(im_shape[1]))
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, float(im_shape[0]))
    sy, sx = float(scale_factor[0]), float(scale_factor[1])
    return b / np.array([sx, sy, sx, sy], np.float32)


def _row_indices(rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Index into ``boxes`` of each NMS row (its coordinates and score are copied bit for bit)."""
    eq = (rows[:, None, 2:6] == boxes[None, :, :]).all(-1) & (rows[:, None, 1] == scores[None, :])
    return eq.argmax(1)
