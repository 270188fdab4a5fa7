"""Mixed-precision int8: the fewest tensors kept float so that a detector passes its box gate.

Why: a raw-GFL detector whose all-int8 file misses the box gate used to fall back straight to
16x8 (int16 activations), which runs on TFLite's reference kernels, ~6x slower than FP32. This is
the rung in between: int8 files with a few of the most int8-sensitive activation tensors float,
verified fewest-first by the caller (``export_tflite._take_mixed``); 16x8 only when none passes.

What is ranked: activation TENSORS, not ops. Keeping only an op float does not help: the quantizer
re-quantizes the float op's output for its int8 consumers at the same calibrated range (PicoDet-S:
the 1-32 ops with the worst per-op error kept float left box recall at 0.35-0.39, all-int8 0.37).
A tensor is kept float by keeping its producer AND all its consumers float
(:func:`float_nodes_for`). Multi-output ops (the channel shuffles' SPLIT_V) are never matched by
TF 2.19's ``denylisted_nodes``; they are kept float by op type when they sit next to a float op
(:func:`float_op_types`; without it even a file with every other op float kept 0.05 raw-output
error, box recall 0.94).

How a tensor is scored (:func:`channel_nsr`): its float activations on a few calibration images
(the calibrate-only model run with every tensor kept), quantize-dequantized at the calibrated
per-tensor range as int8 would, and the noise-to-signal ratio (rms error / rms value) taken PER
CHANNEL and averaged over the channels. A tensor-wide ratio hides the typical failure (one channel
+-580, the others +-1: the large channel dominates both sums); per channel, a channel rounded to
zero scores 1. Ranking needs one float pass and numpy, no quantized model.

The ladder (:func:`ladder`): files with the k worst tensors float for increasing k
(:data:`LADDER_K`), each with its raw-output error vs the float model on the ranking images
(:func:`output_error`; the caller's gate decides). :func:`best_of` picks per k between ladders of
differently calibrated models (min/max vs MSE ranges).

Measured on PicoDet-S COCO 416 (docs/model-inputs.md): its int8 error is spread over the whole
backbone, not concentrated in a few layers: box recall on the 13 shelf photos climbs from 0.37
(all int8) to 0.98 only with ~130-170 of its ~410 ops float, and on the converter's own
held-out gallery photos no candidate up to 304 float ops reached the 0.95 gate (best 0.852).

An extractor's ladder is capped in bytes (``max_bytes``). With ``weight_only`` its float layers read
int8 weights through a DEQUANTIZE (``int8_weight_only``): what int8 costs these layers is their
activations' single range, not their weights, so they cost no size and the ladder can go to
dozens of tensors (MobileNetV2 passes 0.995 with 6 tensors, 11 layers, at 0.97x the int8 size).

Runs inside the TFLite conversion child process (needs TensorFlow) except the pure parts
(:func:`fake_quant`, :func:`channel_nsr`, :func:`rank`, :func:`float_nodes_for`,
:func:`float_op_types`, :func:`ladder_sizes`, :func:`output_error`, :func:`best_of`), unit-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

RANKED_BY = "per-channel int8 noise-to-signal ratio of each activation tensor at its calibrated range"
# how many of the worst tensors each candidate keeps float (PicoDet-S COCO needs about a hundred of
# its 420: its int8 error is spread over the backbone, not in a few layers)
LADDER_K = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256)
RANK_IMAGES = 4  # calibration images the activations are read on
ROWS_PER_IMAGE = 4096  # positions (rows of C channel values) kept per tensor and image
NSR_CAP = 1.0  # a channel rounded to zero scores 1; a noisier one (sign flips) counts no more


def fake_quant(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Asymmetric int8 quantize-dequantize over [lo, hi] widened to hold 0 (TFLite's activations)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return np.zeros_like(values)
    zero = np.round(-128 - lo / scale)
    q = np.clip(np.round(values / scale) + zero, -128, 127)
    return ((q - zero) * scale).astype(values.dtype)


def channel_nsr(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean over channels (the last axis) of rms int8 error / rms value, each capped at NSR_CAP.

    Channels that are all zero carry nothing to lose and are skipped; 0.0 when none is left.
    """
    v = np.asarray(values, np.float64).reshape(-1, values.shape[-1] if values.ndim else 1)
    err = fake_quant(v, lo, hi) - v
    sig = np.sqrt(np.mean(v ** 2, axis=0))
    live = sig > 0
    if not live.any():
        return 0.0
    nsr = np.sqrt(np.mean(err ** 2, axis=0))[live] / sig[live]
    return float(np.mean(np.minimum(nsr, NSR_CAP)))


def rank(scores: Mapping[str, float]) -> list[str]:
    """Tensor names, worst (highest score) first; ties keep graph order (dicts keep insertion order)."""
    order = {n: i for i, n in enumerate(scores)}
    return sorted(scores, key=lambda n: (-scores[n], order[n]))


@dataclass
class Graph:
    """What the ladder needs of a TFLite model: each op's output tensor name (the name the
    quantizer's ``denylisted_nodes`` takes) and, per tensor, the ops reading it."""

    producer: dict[str, str] = field(default_factory=dict)  # tensor -> op (named by its first output)
    consumers: dict[str, list[str]] = field(default_factory=dict)  # tensor -> ops reading it
    types: dict[str, str] = field(default_factory=dict)  # op -> its type (CONV_2D, SPLIT_V, ...)


# Ops the quantizer keeps int8 whatever node name is denylisted (multi-output ops: TF 2.19's
# ``denylisted_nodes`` never matches them); only denylisting their TYPE keeps them float. On
# PicoDet-S the 10 channel-shuffle SPLIT_Vs requantize their float input: with every op named
# float, box recall was 0.94 and output error 0.09 until they were denylisted by type (then 0).
BY_TYPE_ONLY = frozenset({"SPLIT", "SPLIT_V", "UNPACK"})


def float_op_types(nodes: Sequence[str], graph: Graph) -> list[str]:
    """Op types to denylist as a whole (sorted): those of :data:`BY_TYPE_ONLY` among ``nodes`` or
    reading a tensor one of ``nodes`` produces (an int8 op there would requantize the float
    tensor: the error the float node was meant to avoid)."""
    kept = set(nodes)
    near = set(kept)
    for t, op in graph.producer.items():
        if op in kept:
            near.update(graph.consumers.get(t, []))
    return sorted({graph.types[n] for n in near if graph.types.get(n) in BY_TYPE_ONLY})


def float_nodes_for(tensors: Sequence[str], graph: Graph) -> list[str]:
    """Ops to keep float so that none of ``tensors`` is quantized: each one's producer and all its
    consumers, in first-seen order, without repeats."""
    out: dict[str, None] = {}
    for t in tensors:
        for op in [graph.producer.get(t), *graph.consumers.get(t, [])]:
            if op:
                out.setdefault(op, None)
    return list(out)


FLOAT_EXTRA_BYTES = 3  # a weight kept float: 4 bytes instead of int8's 1 (int32 biases stay 4)


def fitting(ranked: Sequence[str], graph: Graph, weights: Mapping[str, int], budget: int,
            already_float: Sequence[str] = (), extra_bytes: int = FLOAT_EXTRA_BYTES) -> list[str]:
    """The tensors of ``ranked`` (worst first) kept in order while the float weights of the ops
    they add (:func:`float_nodes_for`, ``extra_bytes`` more per weight than int8) fit in
    ``budget`` bytes; a tensor that does not fit is skipped, a cheaper one after it may still fit
    (greedy, in rank order)."""
    kept: list[str] = []
    floated = set(already_float)
    spent = 0
    for t in ranked:
        new = [op for op in float_nodes_for([t], graph) if op not in floated]
        cost = extra_bytes * sum(weights.get(op, 0) for op in new)
        if spent + cost > budget:
            continue
        kept.append(t)
        floated.update(new)
        spent += cost
    return kept


def ladder_sizes(n_ranked: int, ks: Sequence[int] = LADDER_K) -> list[int]:
    """The k of each candidate, increasing, none larger than what was ranked (no duplicates)."""
    return sorted({min(k, n_ranked) for k in ks if k > 0 and n_ranked > 0})


# ----------------------------------------------------------------------------- TensorFlow parts
def read_graph(model: bytes) -> Graph:
    """The producer/consumer map of a TFLite model (calibrate-only or float)."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    g = Graph()
    for op in interp._get_ops_details():  # no public API lists a model's ops with their tensors
        outs = [names[i] for i in op["outputs"] if i >= 0 and i in names]
        if not outs:
            continue
        g.types[outs[0]] = op["op_name"]
        for t in outs:
            g.producer[t] = outs[0]
        for i in op["inputs"]:
            if i >= 0 and i in names:
                g.consumers.setdefault(names[i], []).append(outs[0])
    return g


def op_weights(model: bytes) -> dict[str, int]:
    """Per op (named by its first output tensor), how many weight values (constant non-bias
    inputs: the ones int8 stores in one byte) it reads."""
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = m.subgraphs[0]
    out: dict[str, int] = {}
    for op in sg.operators:
        if not len(op.outputs):
            continue
        n = 0
        for j, i in enumerate(op.inputs):
            if i < 0 or j == 2:  # the bias (third input of conv / FC) stays 32-bit in int8
                continue
            t = sg.tensors[i]
            buf = m.buffers[t.buffer].data if t.buffer < len(m.buffers) else None
            if buf is not None and len(buf) and t.shape is not None:
                n += int(np.prod(t.shape))
        out[sg.tensors[op.outputs[0]].name.decode()] = n
    return out


def tensor_scores(calibrated: bytes, images: Iterable[np.ndarray], seed: int = 0) -> dict[str, float]:
    """:func:`channel_nsr` of every activation tensor with a calibrated per-tensor range, in graph
    order, read on ``images`` (as fed to the model) through the calibrate-only model."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edge_shitu.converters.int8_ranges import _ranged_tensors, tensor_values

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    sg = model.subgraphs[0]
    ranged = _ranged_tensors(sg)
    produced = {i for op in sg.operators for i in op.outputs}
    ranged = {i: t for i, t in ranged.items() if i in produced}  # activations, not the input or constants
    rng = np.random.default_rng(seed)
    rows: dict[int, list[np.ndarray]] = {i: [] for i in ranged}
    for values in tensor_values(calibrated, images, list(ranged)):
        for i, v in values.items():
            v = v.reshape(-1, v.shape[-1] if v.ndim else 1)
            rows[i].append(v if len(v) <= ROWS_PER_IMAGE else v[rng.choice(len(v), ROWS_PER_IMAGE, replace=False)])
    out: dict[str, float] = {}
    for i, t in ranged.items():
        if rows[i]:
            q = t.quantization
            out[t.name.decode()] = channel_nsr(np.concatenate(rows[i]), np.ravel(q.min)[0], np.ravel(q.max)[0])
    return out


def quantize(calibrated: bytes, float_nodes: Sequence[str] = (), float_types: Sequence[str] = ()) -> bytes:
    """int8 ops, float32 input/output; ``float_nodes`` (op output tensor names) and every op of
    ``float_types`` left float (``int8_ranges.quantize_calibrated`` plus op types)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(calibrated, input_data_type=tf.float32, output_data_type=tf.float32,
                                 denylisted_nodes=list(float_nodes) or None, denylisted_ops=list(float_types) or None)


@dataclass
class Candidate:
    """One rung of the ladder: the ``k`` worst tensors kept float by keeping ``float_nodes``
    float; ``output_error`` (:func:`output_error`) vs the calibrate-only float model on the
    ranking images (informative: the caller's gate decides)."""

    k: int
    tensors: list[str]
    float_nodes: list[str]
    float_types: list[str]
    model: bytes
    output_error: float


def ladder(calibrated: bytes, images: Sequence[np.ndarray], ks: Sequence[int] = LADDER_K,
           always_float: Sequence[str] = (), max_bytes: Optional[int] = None, weight_only: bool = False
           ) -> tuple[list[Candidate], dict[str, float], float]:
    """The candidate files, fewest float ops first, the scores they were ranked by and the
    all-int8 file's output error (on the same images).

    ``always_float``: ops every candidate (and the all-int8 base) keeps float, e.g. an
    extractor's pooling block; tensors they produce are not ranked. ``max_bytes``: the ladder
    stops at the first candidate larger than this (float weights are 4x int8: an extractor's
    size budget), which is not returned. ``weight_only``: the float layers' weights are stored
    int8 behind a DEQUANTIZE (``int8_weight_only``): float activations at int8's size.
    """
    from edge_shitu.converters.int8_weight_only import int8_weights_for_float_ops

    scores = tensor_scores(calibrated, images)
    graph = read_graph(calibrated)
    fixed = list(always_float)
    ranked = [t for t in rank(scores) if t in graph.producer and graph.producer[t] not in fixed]
    refs = run_model(calibrated, images)
    base_model = quantize(calibrated, fixed)
    base = output_error(run_model(base_model, images), refs)
    if max_bytes is not None:  # only tensors whose float weights still fit, worst first
        ranked = fitting(ranked, graph, op_weights(calibrated), max_bytes - len(base_model), fixed,
                         0 if weight_only else FLOAT_EXTRA_BYTES)
    cands: list[Candidate] = []
    seen: set[tuple[str, ...]] = set()
    for k in ladder_sizes(len(ranked), ks):
        nodes = list(dict.fromkeys(fixed + float_nodes_for(ranked[:k], graph)))
        if tuple(nodes) in seen:
            continue
        seen.add(tuple(nodes))
        types = float_op_types(nodes, graph)
        model = quantize(calibrated, nodes, types)
        if weight_only:
            model = int8_weights_for_float_ops(model)[0]
        if max_bytes is not None and len(model) > max_bytes:
            break
        cands.append(Candidate(k, ranked[:k], nodes, types, model, output_error(run_model(model, images), refs)))
    return cands, scores, base


def output_error(outs: Sequence[Sequence[np.ndarray]], refs: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean over images and outputs of the squared error relative to the reference output's
    mean square (each raw head map counts the same, whatever its scale). Outputs are paired by
    shape: the quantizer and onnx2tf may list a model's outputs in different orders."""
    errs = []
    for o, r in zip(outs, refs):
        for a, b in zip(sorted(o, key=lambda x: tuple(np.shape(x))), sorted(r, key=lambda x: tuple(np.shape(x)))):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            errs.append(float(np.mean((a - b) ** 2) / max(float(np.mean(b ** 2)), 1e-12)))
    return float(np.mean(errs)) if errs else 0.0


def run_model(model: bytes, images: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Every output of ``model`` (in its output order) per image."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    interp.allocate_tensors()
    feed = interp.get_input_details()[0]["index"]
    outs = []
    for x in images:
        interp.set_tensor(feed, np.asarray(x, np.float32))
        interp.invoke()
        outs.append([interp.get_tensor(o["index"]).copy() for o in interp.get_output_details()])
    return outs



def best_of(ladders: Mapping[str, Sequence[Candidate]]) -> list[tuple[str, Candidate]]:
    """Per k, the candidate with the lowest output error among ladders built from differently
    calibrated models (e.g. min/max and MSE ranges: MSE wins at small k, where rounding noise
    dominates, min/max at large k, where the few int8 tensors left are clipped by MSE ranges);
    (ladder label, candidate), increasing k."""
    best: dict[int, tuple[str, Candidate]] = {}
    for label, cands in ladders.items():
        for c in cands:
            if c.k not in best or c.output_error < best[c.k][1].output_error:
                best[c.k] = (label, c)
    return [best[k] for k in sorted(best)]
