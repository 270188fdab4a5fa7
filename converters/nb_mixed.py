"""Mixed-precision Paddle Lite int8: the fewest conv/matmul ops kept float so that a ``.nb`` int8
extractor passes its gate.

Why: an extractor's ``nb:*:int8`` comes from PaddleSlim PTQ of every quantizable op
(``quantize.DEFAULT_OPS``). When that file misses its gate (MobileNetV2's real weights: cosine
0.9888 < 0.995 vs FP32) the conversion used to fail, or keep the degraded file under
``--allow-degraded``. This is the rung in between: PTQ again with PaddleSlim's
``skip_tensor_list`` holding the k most int8-sensitive ops, for k in :data:`LADDER_K`, each file
built and verified exactly as the plain one, the first that passes kept.

What ``skip_tensor_list`` takes (paddle 2.6, ``PostTrainingQuantization._collect_target_varnames``):
ANY input variable name of an op; every op reading a listed name is marked ``skip_quant`` and
left float. An activation name would also skip its other readers, so ops are named here by their
WEIGHT (``Filter`` of conv2d/depthwise_conv2d, ``Y`` of mul/matmul): unique to the op. The
ladder checks on each quantized program that exactly the named ops stayed float
(``quantize.quantized_op_weights``).

How an op is scored (:func:`op_score`): its input activation on a few calibration images of the
FP32 program (one static-executor pass fetching every quantizable op's input), quantize-dequantized
as PaddleSlim's activations are (symmetric, per tensor, 127 levels) at the abs-max of those
images, and the noise-to-signal ratio (rms error / rms value) taken PER CHANNEL, capped at 1 and
averaged over the channels (a tensor-wide ratio hides one huge channel that flattens the others
to zero); combined root-sum-square with the same figure of its weight at per-output-channel
abs-max scales (``channel_wise_abs_max``). Ranking costs one float pass and numpy, no quantized
model. Only extractors are laddered (the detector's box gate and NMS loop are not handled here).

Measured on MobileNetV2 (docs/benchmarks.md): 16 of 52 convs float pass (cosine 0.9888 -> 0.9982),
at 2.2x the plain file's size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

RANKED_BY = ("per-channel int8 noise-to-signal of each quantizable op's input activation (symmetric, abs-max over "
             "the ranking images, FP32 program), root-sum-square with its weight's per-output-channel int8 noise")
LADDER_K = (1, 2, 4, 8, 16)  # how many of the worst ops each candidate keeps float
RANK_IMAGES = 4  # calibration images the activations are read on
NSR_CAP = 1.0  # a channel rounded to zero scores 1; a noisier one counts no more
WEIGHT_SLOTS = ("Filter", "Y")  # the weight input of conv2d/depthwise_conv2d (Filter), mul/matmul (Y)


def sym_fake_quant(values: np.ndarray, absmax: np.ndarray | float, bits: int = 8) -> np.ndarray:
    """Symmetric quantize-dequantize at ``absmax`` (a scalar or one per channel, broadcastable)."""
    levels = float(2 ** (bits - 1) - 1)
    a = np.asarray(absmax, np.float64)
    scale = np.where(a > 0, a / levels, 1.0)
    q = np.clip(np.round(values / scale), -levels, levels)
    return np.where(a > 0, q * scale, 0.0)


def channel_nsr(values: np.ndarray, axis: int, absmax: np.ndarray | float) -> float:
    """Mean over the channels on ``axis`` of rms(int8 error) / rms(value), each capped at NSR_CAP.

    ``absmax``: the quantization range (scalar: per tensor; shaped to broadcast: per channel).
    All-zero channels carry nothing to lose and are skipped; 0.0 when none is left.
    """
    v = np.asarray(values, np.float64)
    err = sym_fake_quant(v, absmax) - v
    other = tuple(i for i in range(v.ndim) if i != axis % max(v.ndim, 1))
    sig = np.sqrt(np.mean(v ** 2, axis=other))
    live = sig > 0
    if not live.any():
        return 0.0
    nsr = np.sqrt(np.mean(err ** 2, axis=other))[live] / sig[live]
    return float(np.mean(np.minimum(nsr, NSR_CAP)))


def activation_nsr(batches: Sequence[np.ndarray]) -> float:
    """An op's input activation (NCHW or [N, C] batches): per-tensor abs-max over all of them, NSR
    per channel (axis 1)."""
    v = np.concatenate([np.asarray(b, np.float32) for b in batches], axis=0)
    return channel_nsr(v, 1 if v.ndim > 1 else 0, float(np.max(np.abs(v))) if v.size else 0.0)


def weight_nsr(weight: np.ndarray, op_type: str) -> float:
    """A weight at PaddleSlim's channel_wise_abs_max: one scale per output channel (axis 0 of a
    conv filter, axis 1 of a mul/matmul Y)."""
    w = np.asarray(weight, np.float64)
    axis = 0 if op_type.startswith(("conv", "depthwise")) or w.ndim != 2 else 1
    other = tuple(i for i in range(w.ndim) if i != axis)
    return channel_nsr(w, axis, np.max(np.abs(w), axis=other, keepdims=True))


def op_score(act_nsr: float, w_nsr: float) -> float:
    """Independent noises add in power."""
    return float(np.hypot(act_nsr, w_nsr))


def rank(scores: Mapping[str, float]) -> list[str]:
    """Op names, worst (highest score) first; ties keep graph order."""
    order = {n: i for i, n in enumerate(scores)}
    return sorted(scores, key=lambda n: (-scores[n], order[n]))


@dataclass(frozen=True)
class QuantOp:
    """A quantizable op: ``name`` is its weight (what ``skip_tensor_list`` gets), ``act`` its
    activation input."""

    name: str
    type: str
    act: str


def quantizable_ops(program: Any, op_types: Sequence[str]) -> list[QuantOp]:
    """Ops of ``op_types`` in the main block with a persistable weight input, in graph order."""
    blk = program.global_block()
    out: list[QuantOp] = []
    for op in blk.ops:
        if op.type not in op_types:
            continue
        weight = next((op.input(s)[0] for s in WEIGHT_SLOTS if s in op.input_names and op.input(s)
                       and blk.has_var(op.input(s)[0]) and blk.var(op.input(s)[0]).persistable), None)
        acts = [a for a in op.input_arg_names if a != weight]
        if weight is not None and acts:
            out.append(QuantOp(weight, op.type, acts[0]))
    return out


def score_model(model_dir: str | os.PathLike[str], feeds: Sequence[Mapping[str, np.ndarray]],
                op_types: Sequence[str]) -> dict[str, dict[str, float]]:
    """Score every quantizable op of an FP32 Paddle model on ``feeds`` (in this process: call
    :func:`rank_in_subprocess` from the converter). Returns {weight name: {score, act, weight}}
    in graph order."""
    from edge_shitu.converters.paddle_model import load_model

    model = load_model(model_dir)
    ops = quantizable_ops(model.program, op_types)
    acts: dict[str, list[np.ndarray]] = {o.act: [] for o in ops}
    names = list(acts)
    for f in feeds:
        for n, v in zip(names, model.run(f, fetch=names)):
            acts[n].append(v)
    out: dict[str, dict[str, float]] = {}
    for o in ops:
        a = activation_nsr(acts[o.act])
        w = weight_nsr(model.get_param(o.name), o.type)
        out[o.name] = {"score": op_score(a, w), "act": a, "weight": w}
    return out


def rank_in_subprocess(model_dir: str | os.PathLike[str], feeds: Sequence[Mapping[str, np.ndarray]],
                       op_types: Sequence[str], timeout: float = 600) -> dict[str, dict[str, float]]:
    """:func:`score_model` in a child process (Paddle's executor can crash its process)."""
    from edge_shitu.converters.child import run_worker, save_feeds

    with tempfile.TemporaryDirectory(prefix="es-nbmixed-") as tmp:
        feeds_file = os.path.join(tmp, "feeds.npz")
        save_feeds(list(feeds)[:RANK_IMAGES], feeds_file)
        job = {"model": str(model_dir), "feeds": feeds_file, "ops": list(op_types)}
        return dict(run_worker("edge_shitu.converters.nb_mixed", job, stage=f"int8 sensitivity of {model_dir}",
                               timeout=timeout))


def ladder_sizes(n_ops: int, ks: Sequence[int] = LADDER_K) -> list[int]:
    """The k of each candidate: those of ``ks`` below the number of ops (all float is not int8)."""
    return sorted({k for k in ks if 0 < k < n_ops})


def mixed_details(skipped: Sequence[str], k: int, tried: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the artifact's details record (``convert.DETAIL_KEYS`` lets ``mixed_precision`` through)."""
    return {"skipped": list(skipped), "k": int(k), "candidates_tried": [dict(t) for t in tried],
            "ranked_by": RANKED_BY}


@dataclass
class LadderResult:
    """The first candidate that passed (``found``: its k, its skip list, the caller's artifact), or
    none, with every candidate's record in the order tried."""

    found: Any = None
    k: int = 0
    skipped: list[str] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)


def ladder(ranked: Sequence[str], try_k: Callable[[int, list[str]], tuple[Any, dict[str, Any]]],
           ks: Sequence[int] = LADDER_K) -> LadderResult:
    """Try ``try_k(k, ranked[:k])`` for each k of :func:`ladder_sizes`, fewest float ops first; stop
    at the first that returns an artifact (not None). ``try_k`` builds, verifies and gates one
    candidate and returns (artifact or None, a JSON-able record of what it measured)."""
    res = LadderResult()
    for k in ladder_sizes(len(ranked), ks):
        skip = list(ranked[:k])
        found, record = try_k(k, skip)
        res.tried.append({"k": k, **record})
        if found is not None:
            res.found, res.k, res.skipped = found, k, skip
            break
    return res


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    from edge_shitu.converters.child import load_feeds

    return score_model(job["model"], load_feeds(job["feeds"]), job["ops"])


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_worker)

