"""Measure how faithful a converted artifact is to the FP32 Paddle reference, and gate on it.

Every exporter runs its artifact on held-out inputs through the same :mod:`runtimes.backend`
the device uses, compares the outputs with the FP32 Paddle program, and only then renames the
artifact into place. What is compared:

- every output tensor: per-sample cosine (mean and min), max/mean absolute error and the max
  error relative to the reference's dynamic range. Cosine is the figure that matters for the
  512-d retrieval features; the absolute errors catch a scale/offset drift cosine cannot see.
- detector boxes (when given): reference boxes matched to artifact boxes at IoU >= 0.5 (same
  class), fraction matched and score differences. With synthetic weights the boxes are often
  degenerate (none above threshold, or thousands of identical ones), so the result is marked
  ``degenerate`` and the raw head outputs carry the verdict instead.

:class:`Fidelity` is a plain dataclass that round-trips through JSON (it is stored in bundles,
so it names files, never build-machine paths: ``artifact`` is a file name, ``reference``
:data:`FP32_REFERENCE`). :func:`check` raises :class:`EdgeShituError` naming the stage and the
measured figure.

The verification of every artifact kind lives here, the exporters only call it:
:func:`verify_in_process` (ONNX Runtime, LiteRT; a detector cut before NMS by decoded head and
boxes), :func:`verify_nb` (an x86 ``.nb`` run in a child process, an arm one through its x86
twin or, for int8, the quantized program) and :func:`verify_in_subprocess` (any engine that can
abort its process).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_shitu.detection import (  # noqa: F401  (nms re-exported: the verifier's API)
    PicoDetHead,
    candidate_boxes,
    decode_picodet,
    iou_matrix,
    nms,
    postprocess_detections,
)
from edge_shitu.errors import EdgeShituError
from edge_shitu.runtimes.backend import Backend

Feeds = Mapping[str, np.ndarray]

# Product gates (see the brief): FP32 artifacts must be numerically the same model, int8 ones
# must keep retrieval intact.
FP32_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.9999, "cosine_min": 0.999}
FP16_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.999, "cosine_min": 0.995}
INT8_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.995, "cosine_min": 0.98}
BOX_THRESHOLDS: dict[str, float] = {"box_match": 0.9}
# An int8 extractor judged by the user's recall (converters/task_gate.py) only has to be sane here:
# NaN or a broken graph misses it, quantization noise does not.
INT8_SANITY: dict[str, float] = {"cosine_mean": 0.9}
# --allow-degraded: the artifact is measured and kept whatever its figures, except NaN output
# (a NaN cosine fails any lower bound), which is broken rather than degraded.
PERMISSIVE: dict[str, float] = {"cosine_mean": -math.inf, "box_match": 0.0}


# A raw-GFL-head detector is judged by what it is for, its boxes: every reference box scoring
# >= GFL_GATE_SCORE must be found (IoU 0.5) among the artifact's boxes scoring >= GFL_GATE_SCORE
# - GFL_SCORE_MARGIN (a score nudged across the threshold by rounding is not a lost object).
# The raw maps' cosine stays as a floor that only garbage misses.
GFL_GATE_SCORE, GFL_SCORE_MARGIN = 0.3, 0.05
GFL_INT8_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.9, "box_match": 0.95}


def thresholds_for(precision: str, gfl: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
    """Default gate for an artifact precision ("fp32", "fp16", "int8"); ``gfl``: the artifact is
    a raw-GFL-head detector (gated on its decoded boxes)."""
    base = dict({"fp32": FP32_THRESHOLDS, "fp16": FP16_THRESHOLDS, "int8": INT8_THRESHOLDS}[precision])
    if gfl is None:
        return base
    return dict(GFL_INT8_THRESHOLDS) if precision == "int8" else {**base, "box_match": 0.95}


def gfl_boxes(outs: Sequence[np.ndarray], head: Any, min_score: float) -> np.ndarray:
    """A raw GFL head's boxes in network-input pixels (class column zeroed for a class-agnostic
    head: which COCO class wins does not matter to a mainbody detector)."""
    from edge_shitu.pipeline import order_gfl_outputs

    rows = head.postprocess(order_gfl_outputs(outs, head), head.input_size, (1.0, 1.0), min_score=min_score)
    if head.class_agnostic or head.classes is None:
        rows = rows.copy()
        rows[:, 0] = 0
    return rows


def _gfl_fidelity(ref: Backend, art: Backend, feeds: Sequence[Feeds], gfl: Mapping[str, Any], stage: str,
                  ref_outputs: Optional[Sequence[Sequence[np.ndarray]]]) -> Fidelity:
    from edge_shitu.gfl_head import GFLHead

    head = GFLHead.from_dict(gfl)
    refs = list(ref_outputs) if ref_outputs is not None else run_all(ref, feeds)
    arts = run_all(art, feeds)
    fid = compare(ref, art, feeds, stage=stage, ref_outputs=refs, art_outputs=arts)
    fid.boxes = compare_boxes([gfl_boxes(r, head, GFL_GATE_SCORE) for r in refs],
                              [gfl_boxes(a, head, GFL_GATE_SCORE - GFL_SCORE_MARGIN) for a in arts])
    fid.note = (f"raw GFL head: maps vs the reference; boxes scoring >= {GFL_GATE_SCORE} vs the artifact's "
                f">= {GFL_GATE_SCORE - GFL_SCORE_MARGIN}, decoded as on the device")
    return fid


def gfl_photo_boxes(backend: Backend, pre: Any, head: Any, img: np.ndarray, min_score: float) -> np.ndarray:
    """One photo through a raw-GFL detector as the device runs it (its preprocessing at its
    input size, decode, NMS): rows in PHOTO pixels, the class column zeroed for a class-agnostic
    head (as :func:`gfl_boxes`)."""
    from edge_shitu.pipeline import order_gfl_outputs

    f = pre(img)
    outs = backend.run({backend.inputs[0].name: f["image"]})
    rows = head.postprocess(order_gfl_outputs(outs, head), f["im_shape"][0], f["scale_factor"][0],
                            min_score=min_score)
    if head.class_agnostic or head.classes is None:
        rows = rows.copy()
        rows[:, 0] = 0
    return rows


def gfl_recall_across_sizes(ref: Backend, ref_pre: Any, ref_head: Any, art: Backend, art_pre: Any, art_head: Any,
                            images: Sequence[np.ndarray]) -> BoxFidelity:
    """Box agreement of a raw-GFL detector run at one input size (``art`` with ``art_pre`` /
    ``art_head``: e.g. the board's) against a reference run at another (the model's own), on the
    same photos, compared in photo pixels; scores as the GFL gate counts them (reference boxes
    >= GFL_GATE_SCORE, artifact boxes >= GFL_GATE_SCORE - GFL_SCORE_MARGIN). Informational: the
    gates compare at the same size."""
    return compare_boxes([gfl_photo_boxes(ref, ref_pre, ref_head, im, GFL_GATE_SCORE) for im in images],
                         [gfl_photo_boxes(art, art_pre, art_head, im, GFL_GATE_SCORE - GFL_SCORE_MARGIN)
                          for im in images])


@dataclass
class OutputFidelity:
    """Agreement of one output tensor over all samples."""

    name: str
    shape: list[int]
    cosine_mean: float
    cosine_min: float
    max_abs: float
    mean_abs: float
    max_rel: float  # max_abs / max |reference|


@dataclass
class BoxFidelity:
    """Agreement of detector boxes (after NMS) over all samples."""

    ref_boxes: int
    art_boxes: int
    matched: int
    matched_frac: float
    iou_mean: float
    score_diff_mean: float
    score_diff_max: float
    degenerate: bool
    reason: str = ""
    # fraction of reference boxes present among the artifact's pre-NMS candidates (IoU >= 0.5):
    # robust to score ties, used instead of matched_frac when the boxes are degenerate
    candidates_frac: float = float("nan")


@dataclass
class Fidelity:
    """How closely an artifact reproduces the FP32 reference (JSON-serialisable)."""

    stage: str
    artifact: str
    reference: str
    samples: int
    outputs: list[OutputFidelity] = field(default_factory=list)
    boxes: Optional[BoxFidelity] = None
    note: str = ""

    def _worst(self, key: str) -> float:
        """The worst output's figure: the lowest cosine, the highest error (NaN without outputs)."""
        pick = min if key.startswith("cosine") else max
        return pick((getattr(o, key) for o in self.outputs), default=float("nan"))

    cosine_mean = property(lambda self: self._worst("cosine_mean"),
                           doc="The worst output's mean cosine (one number for the whole model).")
    cosine_min = property(lambda self: self._worst("cosine_min"))
    max_abs = property(lambda self: self._worst("max_abs"))
    max_rel = property(lambda self: self._worst("max_rel"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = {"cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
                        "max_abs": self.max_abs, "max_rel": self.max_rel}
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fidelity:
        d = dict(d)
        d.pop("summary", None)
        outs = [OutputFidelity(**o) for o in d.pop("outputs", [])]
        boxes = d.pop("boxes", None)
        return cls(outputs=outs, boxes=BoxFidelity(**boxes) if boxes else None, **d)

    @classmethod
    def from_json(cls, s: str) -> Fidelity:
        return cls.from_dict(json.loads(s))


# ----------------------------------------------------------------------------- tensors
def align_output(art: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Bring an artifact output to the reference's layout.

    onnx2tf writes 4-D (and sometimes 3-D) outputs channels-last; a feature may come back as
    [512] instead of [1, 512]. Transposes are tried before a plain reshape because a reshape of a
    transposed tensor would silently scramble it.
    """
    if art.shape == ref.shape:
        return art
    if art.ndim == ref.ndim == 4 and art.transpose(0, 3, 1, 2).shape == ref.shape:
        return art.transpose(0, 3, 1, 2)
    if art.ndim == ref.ndim == 3 and art.shape != ref.shape and art.transpose(0, 2, 1).shape == ref.shape:
        return art.transpose(0, 2, 1)
    if art.size == ref.size:
        return art.reshape(ref.shape)
    raise EdgeShituError(
        f"artifact output of shape {list(art.shape)} cannot be compared with the reference "
        f"shape {list(ref.shape)}: the conversion changed the model's outputs"
    )


def _per_sample_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0] if a.ndim > 1 else 1, -1).astype(np.float64)
    b = b.reshape(a.shape).astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


def compare_tensors(name: str, refs: Sequence[np.ndarray], arts: Sequence[np.ndarray]) -> OutputFidelity:
    """Statistics of one output over samples (each item is one run's output, batch included)."""
    cos: list[np.ndarray] = []
    max_abs = mean_acc = 0.0
    count = 0
    ref_range = 0.0
    for r, a in zip(refs, arts):
        r = np.asarray(r, dtype=np.float64)
        a = align_output(np.asarray(a), r).astype(np.float64)
        if not np.all(np.isfinite(a)):
            return OutputFidelity(name, list(r.shape), float("nan"), float("nan"), float("inf"),
                                  float("inf"), float("inf"))
        cos.append(_per_sample_cosine(a, r))
        d = np.abs(a - r)
        max_abs = max(max_abs, float(d.max(initial=0.0)))
        mean_acc += float(d.sum())
        count += d.size
        ref_range = max(ref_range, float(np.abs(r).max(initial=0.0)))
    c = np.concatenate(cos) if cos else np.array([float("nan")])
    return OutputFidelity(
        name=name, shape=list(np.shape(refs[0])) if refs else [],
        cosine_mean=float(c.mean()), cosine_min=float(c.min()),
        max_abs=max_abs, mean_abs=mean_acc / max(count, 1),
        max_rel=max_abs / ref_range if ref_range > 0 else (0.0 if max_abs == 0 else float("inf")),
    )


def run_all(backend: Backend, feeds: Iterable[Feeds]) -> list[list[np.ndarray]]:
    return [backend.run(f) for f in feeds]


def compare(
    reference: Backend,
    artifact: Backend,
    feeds: Sequence[Feeds],
    *,
    stage: str,
    output_names: Optional[Sequence[str]] = None,
    ref_outputs: Optional[Sequence[Sequence[np.ndarray]]] = None,
    outputs: Optional[Sequence[int]] = None,
    art_outputs: Optional[Sequence[Sequence[np.ndarray]]] = None,
) -> Fidelity:
    """Run both backends on every feed dict and compare their outputs one by one.

    ``ref_outputs`` lets a caller reuse reference results across several artifacts (the
    reference is the slow part with MKLDNN warm-up); ``art_outputs`` likewise for a caller that
    already ran the artifact (the GFL box gate decodes the same runs). ``outputs`` restricts the comparison to
    some reference output indices (e.g. skip an NMS count output).
    """
    if not feeds:
        raise EdgeShituError(f"{stage}: no held-out inputs to verify with; give at least one sample")
    refs = list(ref_outputs) if ref_outputs is not None else run_all(reference, feeds)
    arts = list(art_outputs) if art_outputs is not None else run_all(artifact, feeds)
    n_ref, n_art = len(refs[0]), len(arts[0])
    idx = list(outputs) if outputs is not None else list(range(n_ref))
    if n_art != len(idx) and n_art != n_ref:
        raise EdgeShituError(
            f"{stage}: the artifact has {n_art} outputs but the reference {n_ref}: the conversion "
            "changed the model's outputs"
        )
    names = list(output_names) if output_names else [o.name for o in reference.outputs]
    res = []
    for j, i in enumerate(idx):
        aj = j if n_art == len(idx) else i
        res.append(compare_tensors(names[i] if i < len(names) else f"out{i}",
                                   [r[i] for r in refs], [a[aj] for a in arts]))
    return Fidelity(stage=stage, artifact=getattr(artifact, "name", "?"),
                    reference=getattr(reference, "name", "?"), samples=len(feeds), outputs=res)


# ----------------------------------------------------------------------------- boxes
def match_boxes(
    ref: np.ndarray, art: np.ndarray, iou_threshold: float = 0.5
) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """Greedy one-to-one matching of reference to artifact detections.

    Rows are ``[class, score, x1, y1, x2, y2]`` (Paddle's multiclass_nms layout). Reference boxes
    are taken by descending score and each takes the unmatched artifact box of the same class with
    the highest IoU, if that IoU >= ``iou_threshold``. Returns (ref_i, art_j, iou) triples and the
    IoU matrix.
    """
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, 6)
    art = np.asarray(art, dtype=np.float64).reshape(-1, 6)
    ious = iou_matrix(ref[:, 2:], art[:, 2:])
    same = ref[:, None, 0] == art[None, :, 0]
    ious = np.where(same, ious, 0.0)
    taken = np.zeros(len(art), dtype=bool)
    pairs: list[tuple[int, int, float]] = []
    for i in np.argsort(-ref[:, 1], kind="stable"):
        if len(art) == 0:
            break
        cand = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            taken[j] = True
            pairs.append((int(i), j, float(cand[j])))
    return pairs, ious


def _degenerate(ref: np.ndarray) -> str:
    if len(ref) == 0:
        return "the reference detects nothing"
    wh = np.stack([ref[:, 4] - ref[:, 2], ref[:, 5] - ref[:, 3]], 1)
    if np.mean(np.any(wh <= 1e-6, axis=1)) > 0.5:
        return "most reference boxes have zero area"
    if len(ref) >= 20 and np.ptp(ref[:, 1]) < 1e-4:
        return "all reference scores are equal"
    return ""


def compare_boxes(
    refs: Sequence[np.ndarray], arts: Sequence[np.ndarray], iou_threshold: float = 0.5
) -> BoxFidelity:
    """Box agreement over samples; each item is one image's [N, 6] detections."""
    n_ref = n_art = matched = 0
    ious: list[float] = []
    sd: list[float] = []
    reasons = []
    for r, a in zip(refs, arts):
        r = np.asarray(r, dtype=np.float64).reshape(-1, 6)
        a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
        why = _degenerate(r)
        if why:
            reasons.append(why)
        pairs, _ = match_boxes(r, a, iou_threshold)
        n_ref += len(r)
        n_art += len(a)
        matched += len(pairs)
        ious += [p[2] for p in pairs]
        sd += [abs(r[i, 1] - a[j, 1]) for i, j, _ in pairs]
    degenerate = len(reasons) > len(refs) / 2
    return BoxFidelity(
        ref_boxes=n_ref, art_boxes=n_art, matched=matched,
        matched_frac=matched / n_ref if n_ref else (1.0 if n_art == 0 else 0.0),
        iou_mean=statistics.fmean(ious) if ious else float("nan"),
        score_diff_mean=statistics.fmean(sd) if sd else float("nan"),
        score_diff_max=max(sd) if sd else float("nan"),
        degenerate=degenerate, reason=reasons[0] if degenerate else "",
    )


# ----------------------------------------------------------------------------- gate
def check(fidelity: Fidelity, thresholds: Mapping[str, float]) -> None:
    """Raise :class:`EdgeShituError` when a measured figure misses its threshold.

    Known keys: ``cosine_mean``, ``cosine_min`` (lower bounds), ``max_abs``, ``max_rel`` (upper
    bounds), ``box_match`` (lower bound on the matched fraction; skipped when the boxes are
    degenerate, the raw outputs then decide).
    """
    try:
        _check(fidelity, thresholds)
    except EdgeShituError as e:
        e.fidelity = fidelity  # type: ignore[attr-defined]  # the figures, for callers that fall back
        raise


def _check(fidelity: Fidelity, thresholds: Mapping[str, float]) -> None:
    where = f"{fidelity.stage} ({fidelity.artifact})"
    n = fidelity.samples
    for key, limit in thresholds.items():
        if key in ("cosine_mean", "cosine_min"):
            got = getattr(fidelity, key)
            if not (got >= limit):  # NaN fails too
                worst = min(fidelity.outputs, key=lambda o: getattr(o, key) if not math.isnan(getattr(o, key)) else -9)
                raise EdgeShituError(
                    f"{where}: {key.replace('_', ' ')} {got:.5f} < {limit} vs the FP32 Paddle reference "
                    f"on {n} held-out inputs (output {worst.name}); the artifact was not written"
                )
        elif key in ("max_abs", "max_rel"):
            got = getattr(fidelity, key)
            if not (got <= limit):
                raise EdgeShituError(
                    f"{where}: {key.replace('_', ' ')} error {got:.4g} > {limit} vs the FP32 Paddle "
                    f"reference on {n} held-out inputs; the artifact was not written"
                )
        elif key == "box_match":
            b = fidelity.boxes
            if b is None:
                continue
            if b.degenerate:
                if not math.isnan(b.candidates_frac) and not (b.candidates_frac >= limit):
                    raise EdgeShituError(
                        f"{where}: only {b.candidates_frac:.3f} of {b.ref_boxes} reference boxes are among the "
                        f"artifact's candidate boxes at IoU 0.5 (need {limit}); the artifact was not written")
                continue
            if not (b.matched_frac >= limit):
                raise EdgeShituError(
                    f"{where}: only {b.matched_frac:.3f} of {b.ref_boxes} reference boxes matched at "
                    f"IoU 0.5 (need {limit}); the artifact was not written"
                )
        else:
            raise EdgeShituError(f"unknown fidelity threshold {key!r}")


# ----------------------------------------------------------------------------- speed
def measure_latency(backend: Backend, feeds: Feeds, runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median / p90 / min wall time of ``backend.run`` in milliseconds (after warm-up runs)."""
    for _ in range(warmup):
        backend.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "min_ms": times[0], "runs": float(runs)}


# ----------------------------------------------------------------------------- one call
def verify_file(
    path: str,
    reference: Any,
    feeds: Sequence[Feeds],
    *,
    stage: str,
    thresholds: Optional[Mapping[str, float]] = None,
    kind: Optional[str] = None,
    threads: int = 1,
    ref_outputs: Optional[Sequence[Sequence[np.ndarray]]] = None,
) -> Fidelity:
    """Open ``path`` with its backend, compare it with ``reference`` and apply ``thresholds``.

    ``reference`` is a Paddle model directory (the FP32 program) or an already open Backend.
    """
    from edge_shitu.runtimes.backend import open_backend

    art = open_backend(path, kind, threads)
    ref = reference if hasattr(reference, "run") else open_backend(reference, reference_backend(reference), threads)
    fid = compare(ref, art, feeds, stage=stage, ref_outputs=ref_outputs)
    if thresholds:
        check(fid, thresholds)
    return fid


def verify_in_subprocess(
    path: str,
    reference: str,
    feeds: Sequence[Feeds],
    *,
    stage: str,
    kind: Optional[str] = None,
    mode: str = "tensors",
    timeout: float = 1800,
) -> Fidelity:
    """:func:`verify_file` (no gate) in a child process, for engines that can ABORT the process.

    Paddle Lite kills its host process on an unsupported kernel (e.g. an fp64 ``fill_constant``)
    instead of raising; a crash here becomes an EdgeShituError naming the stage. ``mode="boxes"``
    compares detector outputs ([N, 6] rows + count) with the box matcher instead of tensors.
    """
    import tempfile

    from edge_shitu.converters.child import run_worker, save_feeds

    with tempfile.TemporaryDirectory(prefix="es-verify-") as tmp:
        feeds_file = str(Path(tmp) / "feeds.npz")
        save_feeds(feeds, feeds_file)
        job = {"path": str(path), "reference": str(reference), "feeds": feeds_file, "stage": stage,
               "kind": kind, "mode": mode}
        out = run_worker("edge_shitu.converters.verify", job, stage=f"{stage}: running the artifact", timeout=timeout)
    return Fidelity.from_dict(out)


def _verify_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    from edge_shitu.converters.child import load_feeds
    from edge_shitu.runtimes.backend import open_backend

    feeds = load_feeds(job["feeds"])
    art = open_backend(job["path"], job["kind"], 1)
    ref = open_backend(job["reference"], reference_backend(job["reference"]), 1)
    if job["mode"] == "boxes":
        refs, arts = run_all(ref, feeds), run_all(art, feeds)
        fid = Fidelity(stage=job["stage"], artifact=art.name, reference=ref.name, samples=len(feeds),
                       boxes=compare_boxes([r[0] for r in refs], [a[0] for a in arts]),
                       note="detector with NMS: boxes matched at IoU 0.5")
    else:
        fid = compare(ref, art, feeds, stage=job["stage"])
    return fid.to_dict()


# ----------------------------------------------------------------------------- per artifact format
# What a Fidelity names as its reference once it leaves the build machine (a manifest, a report):
# every artifact is compared with the FP32 Paddle program (or its head, cut the same way).
FP32_REFERENCE = "paddle:fp32 reference"
ONNX_REFERENCE = "onnx:fp32 reference (onnxruntime)"


def reference_backend(reference: Any) -> str:
    """The engine of an FP32 reference: onnxruntime for an ``.onnx`` file (a user's ONNX model, or
    the verified ONNX of a Paddle 3 folder), Paddle Inference for a model directory."""
    return "onnx" if str(reference).lower().endswith(".onnx") else "paddle"


def reference_label(reference: Any) -> str:
    return ONNX_REFERENCE if reference_backend(reference) == "onnx" else FP32_REFERENCE


def verify_in_process(
    path: Path,
    backend: str,
    reference: str | os.PathLike[str],
    feeds: Sequence[Feeds],
    *,
    stage: str,
    thresholds: Mapping[str, float],
    head: Optional[PicoDetHead] = None,
    cut_dir: Optional[Path] = None,
    ref_outputs: Optional[Sequence[Sequence[np.ndarray]]] = None,
    gfl: Optional[Mapping[str, Any]] = None,
) -> Fidelity:
    """Verify an artifact whose engine cannot crash the process (ONNX Runtime, LiteRT) and gate it.

    Ordinary models: every output tensor vs the FP32 program. A detector cut before NMS (``head``,
    ``cut_dir`` = the Paddle program cut at the same tensors): its boxes/scores vs the decoded
    Paddle head, then its boxes after the runtime's NMS vs the full program (IoU 0.5).
    """
    from edge_shitu.runtimes.backend import open_backend

    art = open_backend(path, backend, 1)
    if head is None:
        ref = open_backend(reference, reference_backend(reference), 1)
        if gfl is not None:
            fid = _gfl_fidelity(ref, art, feeds, gfl, stage, ref_outputs)
        else:
            fid = compare(ref, art, feeds, stage=stage, ref_outputs=ref_outputs)
        fid.reference = reference_label(reference)
        check(fid, thresholds)
        return fid
    if cut_dir is None:
        raise EdgeShituError(f"{stage}: a cut detector is verified against its cut Paddle program; none was given")
    cut = open_backend(cut_dir, "paddle", 1)
    image_feeds = [{head.image: f[head.image]} for f in feeds]
    decoded = [list(decode_picodet(r, head)) for r in run_all(cut, image_feeds)]
    arts = run_all(art, image_feeds)
    outs = [compare_tensors(name, [d[i] for d in decoded], [a[i] for a in arts])
            for i, name in enumerate(("boxes", "scores"))]
    full_out = run_all(open_backend(reference, reference_backend(reference), 1), feeds)
    ref_boxes, art_boxes, cand = [], [], []
    for f, fo, a in zip(feeds, full_out, arts):
        im_shape = np.asarray(f.get("im_shape", np.array([f[head.image].shape[2:]]))).reshape(-1)[:2]
        sf = np.asarray(f.get("scale_factor", np.array([[1.0, 1.0]]))).reshape(-1)[:2]
        ref_boxes.append(np.asarray(fo[0]).reshape(-1, 6))
        art_boxes.append(postprocess_detections(a[0], a[1], head, im_shape, sf))
        cand.append(candidate_boxes(a[0], im_shape, sf))
    boxes = compare_boxes(ref_boxes, art_boxes)
    present = sum(int((iou_matrix(r[:, 2:], c).max(1, initial=0.0) >= 0.5).sum()) for r, c in zip(ref_boxes, cand))
    boxes.candidates_frac = present / boxes.ref_boxes if boxes.ref_boxes else float("nan")
    fid = Fidelity(stage=stage, artifact=art.name, reference=FP32_REFERENCE, samples=len(feeds), outputs=outs,
                   boxes=boxes,
                   note="detector cut before NMS: tensors vs decoded Paddle head; boxes vs full program")
    check(fid, {"box_match": 0.9, **thresholds})
    return fid


# Builds an x86 .nb from a Paddle model folder (export_nb's opt route for the artifact's precision).
NbBuilder = Callable[[Path, str], Path]


def verify_nb_run(nb: Path, program: Path, reference: Path, feeds: Sequence[Feeds], *, stage: str, work: Path,
                  build_x86: NbBuilder) -> Fidelity:
    """Run an x86 ``.nb`` (in a child process: Lite aborts on unsupported kernels) against the
    FP32 reference. A detector ending in NMS is compared by boxes, and its head by tensors
    through an x86 ``.nb`` of the program cut before the decode loop (raw outputs do not suffer
    from NMS score ties)."""
    from edge_shitu.converters.export_onnx import find_picodet_head, has_nms, write_cut_model

    if not has_nms(program):
        fid = verify_in_subprocess(str(nb), str(reference), feeds, stage=stage, kind="nb")
        fid.reference = reference_label(reference)
        return fid
    fid = verify_in_subprocess(str(nb), str(reference), feeds, stage=stage, kind="nb", mode="boxes")
    fid.reference = FP32_REFERENCE
    try:
        head = find_picodet_head(program)
    except EdgeShituError:
        return fid  # not PicoDet: boxes only
    cut_names = head.scores + head.dists
    cut_src = write_cut_model(program.parent, work / "cut_src", [head.image], cut_names)
    cut_nb = build_x86(cut_src, "cut_x86")
    cut_ref = write_cut_model(reference, work / "cut_ref", [head.image], cut_names)
    raw = verify_in_subprocess(str(cut_nb), str(cut_ref), [{head.image: f[head.image]} for f in feeds],
                               stage=stage + " head", kind="nb")
    fid.outputs = raw.outputs
    fid.note = "detector: boxes after NMS vs the full program; head tensors via an x86 .nb cut before NMS"
    return fid


def verify_quantized_program(program_dir: Path, reference: Path, feeds: Sequence[Feeds], stage: str) -> Fidelity:
    """A PaddleSlim quantized program in Paddle Inference (no oneDNN) vs the FP32 reference."""
    from edge_shitu.runtimes.backend import open_backend
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    fid = compare(open_backend(reference, reference_backend(reference)), PaddleBackend(program_dir, mkldnn=False),
                  feeds, stage=stage)
    fid.reference = reference_label(reference)
    return fid


def verify_nb(nb: Path, twin: Optional[Path], program: Path, reference: Path, feeds: Sequence[Feeds], *,
              cpu: str, int8: bool, thresholds: Optional[Mapping[str, float]], work: Path,
              build_x86: NbBuilder) -> tuple[Fidelity, dict[str, Any]]:
    """Verify and gate a ``.nb`` built from ``program``; returns (fidelity, extra details).

    An x86 file is run. An arm file cannot run here: its x86 ``twin`` (same program, identical
    weights, checked structurally by the exporter) is run instead. Lite's x86 int8 kernels are
    not a faithful stand-in for its arm ones (wrong features on real models, even crashes): for
    an arm int8 file the twin's figure is only recorded (``x86_twin_fidelity``) and the gate is
    the quantized program itself in Paddle Inference (its scales are what opt baked into the file).
    """
    precision = "int8" if int8 else "fp32"
    run_me = twin if twin is not None else nb
    stage = f"nb-{cpu}-{precision}" + (" (x86 twin)" if twin is not None else "")
    gate = dict(thresholds) if thresholds is not None else thresholds_for(precision)
    extra: dict[str, Any] = {}
    if twin is not None and int8:
        try:
            extra["x86_twin_fidelity"] = verify_nb_run(run_me, program, reference, feeds, stage=stage, work=work,
                                                       build_x86=build_x86).to_dict()
        except EdgeShituError as e:  # informative only: a crash of the x86 int8 kernels is recorded
            extra["x86_twin_fidelity"] = {"error": str(e).replace(str(work), "<work>")}  # no build path kept
        fidelity = verify_quantized_program(program.parent, reference, feeds, f"nb-{cpu}-int8 (quantized program)")
    else:
        fidelity = verify_nb_run(run_me, program, reference, feeds, stage=stage, work=work, build_x86=build_x86)
        if fidelity.boxes is not None:
            gate.setdefault("box_match", 0.9)
    check(fidelity, gate)
    return fidelity, extra


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_verify_worker)
