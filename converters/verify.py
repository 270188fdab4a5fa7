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

:class:`Fidelity` is a plain dataclass that round-trips through JSON (it is stored in bundles).
:func:`check` raises :class:`EdgeShituError` naming the stage and the measured figure.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from edge_shitu.detection import iou_matrix, nms  # noqa: F401  (re-exported: the verifier's API)
from edge_shitu.errors import EdgeShituError
from edge_shitu.runtimes.backend import Backend

Feeds = Mapping[str, np.ndarray]

# Product gates (see the brief): FP32 artifacts must be numerically the same model, int8 ones
# must keep retrieval intact.
FP32_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.9999, "cosine_min": 0.999}
FP16_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.999, "cosine_min": 0.995}
INT8_THRESHOLDS: dict[str, float] = {"cosine_mean": 0.995, "cosine_min": 0.98}
BOX_THRESHOLDS: dict[str, float] = {"box_match": 0.9}
# --allow-degraded: the artifact is measured and kept whatever its figures, except NaN output
# (a NaN cosine fails any lower bound), which is broken rather than degraded.
PERMISSIVE: dict[str, float] = {"cosine_mean": -math.inf, "box_match": 0.0}


def thresholds_for(precision: str) -> dict[str, float]:
    """Default gate for an artifact precision ("fp32", "fp16", "int8")."""
    return dict({"fp32": FP32_THRESHOLDS, "fp16": FP16_THRESHOLDS, "int8": INT8_THRESHOLDS}[precision])


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

    @property
    def cosine_mean(self) -> float:
        """The worst output's mean cosine (one number for the whole model)."""
        return min((o.cosine_mean for o in self.outputs), default=float("nan"))

    @property
    def cosine_min(self) -> float:
        return min((o.cosine_min for o in self.outputs), default=float("nan"))

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=float("nan"))

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


@dataclass
class Artifact:
    """What an exporter wrote: where, in which format/precision, how big, and how verified."""

    path: str
    format: str  # "nb", "onnx", "tflite"
    precision: str  # "fp32", "fp16", "int8"
    bytes: int
    target: str = ""  # "arm" / "x86" for .nb
    fidelity: Optional[Fidelity] = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fidelity"] = self.fidelity.to_dict() if self.fidelity else None
        return d


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
) -> Fidelity:
    """Run both backends on every feed dict and compare their outputs one by one.

    ``ref_outputs`` lets a caller reuse reference results across several artifacts (the
    reference is the slow part with MKLDNN warm-up). ``outputs`` restricts the comparison to
    some reference output indices (e.g. skip an NMS count output).
    """
    if not feeds:
        raise EdgeShituError(f"{stage}: no held-out inputs to verify with; give at least one sample")
    refs = list(ref_outputs) if ref_outputs is not None else run_all(reference, feeds)
    arts = run_all(artifact, feeds)
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
    ref = reference if hasattr(reference, "run") else open_backend(reference, "paddle", threads)
    fid = compare(ref, art, feeds, stage=stage, ref_outputs=ref_outputs)
    if thresholds:
        check(fid, thresholds)
    return fid


def _save_feeds(feeds: Sequence[Feeds], path: str) -> None:
    flat = {f"{i}::{k}": np.asarray(v) for i, f in enumerate(feeds) for k, v in f.items()}
    np.savez(path, **flat)


def _load_feeds(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    out: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, name = key.split("::", 1)
        out.setdefault(int(i), {})[name] = data[key]
    return [out[i] for i in sorted(out)]


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
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="es-verify-") as tmp:
        feeds_file = os.path.join(tmp, "feeds.npz")
        out_file = os.path.join(tmp, "fidelity.json")
        _save_feeds(feeds, feeds_file)
        job = {"path": str(path), "reference": str(reference), "feeds": feeds_file, "stage": stage,
               "kind": kind, "mode": mode, "out": out_file}
        cmd = [sys.executable, "-m", "edge_shitu.converters.verify", "--worker", json.dumps(job)]
        env = dict(os.environ, GLOG_minloglevel="2")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise EdgeShituError(f"{stage}: running the artifact took longer than {timeout:.0f} s") from e
        if proc.returncode != 0 or not os.path.exists(out_file):
            lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
            why = next((ln for ln in lines if ln.startswith(("[F ", "F1", "RuntimeError", "EdgeShituError"))),
                       lines[-1] if lines else "")
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            raise EdgeShituError(f"{stage}: the artifact crashed when run ({how}): {why[:300]}")
        with open(out_file) as f:
            return Fidelity.from_dict(json.load(f))


def _verify_worker(job: Mapping[str, Any]) -> None:
    from edge_shitu.runtimes.backend import open_backend

    feeds = _load_feeds(job["feeds"])
    art = open_backend(job["path"], job["kind"], 1)
    ref = open_backend(job["reference"], "paddle", 1)
    if job["mode"] == "boxes":
        refs, arts = run_all(ref, feeds), run_all(art, feeds)
        fid = Fidelity(stage=job["stage"], artifact=art.name, reference=ref.name, samples=len(feeds),
                       boxes=compare_boxes([r[0] for r in refs], [a[0] for a in arts]),
                       note="detector with NMS: boxes matched at IoU 0.5")
    else:
        fid = compare(ref, art, feeds, stage=job["stage"])
    with open(job["out"], "w") as f:
        json.dump(fid.to_dict(), f)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _verify_worker(json.loads(sys.argv[2]))
        sys.exit(0)
    print("usage: python -m edge_shitu.converters.verify --worker JOB_JSON", file=sys.stderr)
    sys.exit(2)
