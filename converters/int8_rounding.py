"""Output-aware rounding of an int8 TFLite model's weights (AdaRound's objective, no retraining).

Why: TFLite rounds every weight to its nearest int8 step. Rounding each weight on its own is not
what the layer needs: the errors of one filter's weights add up in its output, and choosing some
of them to round the other way can cancel most of that sum. On MobileNetV2 (real weights) weight
rounding alone costs cosine 0.996 vs FP32 (depthwise 0.998, 1x1 convs 0.999), a third of the int8
file's loss; the rest is activation rounding.

How (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization": the same
per-layer objective, solved by exact discrete coordinate descent instead of a relaxation): for
each conv / depthwise / fully-connected layer with int8 weights, ``H = X^T X`` of its FP32 inputs
(im2col patches of the float calibrate-only model the quantizer started from, on a few
calibration images) makes the layer's output error a quadratic form of the weight errors,
``e = d^T H d`` per output channel (per channel, with its own ``H``, for a depthwise conv). Each
weight may take the int8 step below or above its float value; starting from TFLite's nearest
rounding, a weight is flipped to the other step when that lowers ``e``, sweeping until no flip
helps (a 3x3 depthwise filter's 512 roundings are all tried: the exact optimum; single flips
stop at about twice its error). Only int8 weight bytes are rewritten, in place: scales, zero points and every other byte
stay the quantizer's (the largest weight of a channel is at +-127 and cannot flip, so its scale
still describes it). Biases are then corrected as before (``int8_bias``), and the parent keeps
the result only where it measures better.

Runs inside the TFLite conversion child process (needs TensorFlow).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .int8_bias import DEPTHWISE_CONV_2D, FULLY_CONNECTED, bias_view

INT8 = 9  # TFLite TensorType
SAME = 0  # Padding
MAX_POSITIONS = 1024  # output positions per image a layer's H is measured on (seeded sample)
SWEEPS = 3
EXHAUSTIVE_DIM = 9  # rows this short (3x3 depthwise filters) are solved exactly: 512 roundings each


def _code(model: Any, op: Any) -> int:
    oc = model.operatorCodes[op.opcodeIndex]
    return max(oc.builtinCode, oc.deprecatedBuiltinCode)


def patches(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int],
            same: bool) -> np.ndarray:
    """(positions, kh, kw, C) input patches of an NHWC batch-1 tensor, as TFLite's conv reads them."""
    _, h, w, c = x.shape
    sh, sw = stride
    dh, dw = dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if same:
        oh, ow = -(-h // sh), -(-w // sw)
        ph, pw = max((oh - 1) * sh + eh - h, 0), max((ow - 1) * sw + ew - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - eh) // sh + 1, (w - ew) // sw + 1
    cols = [x[0, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return np.stack(cols, axis=2).reshape(oh * ow, kh, kw, c)


def flip_rounding(w: np.ndarray, scale: np.ndarray, q: np.ndarray, h: np.ndarray,
                  sweeps: int = SWEEPS) -> np.ndarray:
    """Int8 rows (``q``, the nearest rounding of ``w / scale``) re-rounded to lower ``d^T H d``
    per row, ``d = q * scale - w``: each value stays at the step below or above ``w / scale``.

    ``w``, ``q``: (rows, d); ``scale``: (rows,); ``h``: (d, d) shared, or (rows, d, d) per row."""
    w = np.asarray(w, np.float64)
    s = np.asarray(scale, np.float64)[:, None]
    q = np.asarray(q, np.int64).copy()
    lo = np.floor(w / s).astype(np.int64)
    hi = np.ceil(w / s).astype(np.int64)  # == lo where w sits on a step (a row's peak): no choice there
    if w.shape[1] <= EXHAUSTIVE_DIM:  # a 3x3 depthwise filter: all 2^9 roundings, the exact optimum
        bits = ((np.arange(2 ** w.shape[1])[:, None] >> np.arange(w.shape[1])) & 1)  # (combos, d)
        cand = lo[:, None, :] + bits[None] * (hi - lo)[:, None, :]  # (rows, combos, d)
        dd = cand * s[:, :, None] - w[:, None, :]
        hh = h if h.ndim == 3 else np.broadcast_to(h, (w.shape[0], *h.shape))
        err = np.einsum("rcd,rde,rce->rc", dd, hh, dd)
        err[((cand < -127) | (cand > 127)).any(2)] = np.inf
        near = np.einsum("rd,rde,re->r", q * s - w, hh, q * s - w)
        best = err.argmin(1)
        better = err[np.arange(len(w)), best] < near  # else keep TFLite's own rounding
        q[better] = cand[np.arange(len(w)), best][better]
        return q.astype(np.int8)
    d = q * s - w
    per_row = h.ndim == 3
    g = np.einsum("rd,rde->re", d, h) if per_row else d @ h
    diag = np.einsum("rdd->rd", h) if per_row else np.broadcast_to(np.diag(h), d.shape)
    for _ in range(sweeps):
        flipped = 0
        for i in range(d.shape[1]):
            alt = np.where(q[:, i] == lo[:, i], hi[:, i], lo[:, i])
            ok = (alt != q[:, i]) & (alt >= -127) & (alt <= 127)
            dn = alt * s[:, 0] - w[:, i]
            do = d[:, i]
            hii = diag[:, i]
            gain = (dn * dn - do * do) * hii + 2.0 * (dn - do) * (g[:, i] - hii * do)
            take = ok & (gain < -1e-12 * np.maximum(hii, 1e-30))
            if not take.any():
                continue
            step = (dn - do)[take]
            g[take] += step[:, None] * (h[take, i, :] if per_row else h[i][None, :])
            d[take, i] = dn[take]
            q[take, i] = alt[take]
            flipped += int(take.sum())
        if not flipped:
            break
    return q.astype(np.int8)


def output_error(w: np.ndarray, scale: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """Sum over rows of ``d^T H d`` (the layer's squared output error from weight rounding)."""
    d = np.asarray(q, np.float64) * np.asarray(scale, np.float64)[:, None] - np.asarray(w, np.float64)
    if h.ndim == 3:
        return float(np.einsum("rd,rde,re->", d, h, d))
    return float(np.einsum("rd,de,re->", d, h, d))


def _layers(model: Any, float_model: Any) -> list[tuple[Any, Any, int]]:
    """(int8 op, float op, op code) of the layers whose weights are int8 with per-channel scales."""
    from .int8_bias import _biased_ops

    sg = model.subgraphs[0]
    ops, fops = _biased_ops(model), _biased_ops(float_model)
    if len(ops) != len(fops):
        raise ValueError(f"the int8 model has {len(ops)} biased layers, its float model {len(fops)}")
    out = []
    for op, fop in zip(ops, fops):
        t = sg.tensors[op.inputs[1]]
        if t.type != INT8 or t.quantization is None or t.quantization.scale is None:
            continue
        out.append((op, fop, _code(model, op)))
    return out


def round_weights(quantized: bytes, calibrated: bytes, images: Sequence[np.ndarray],
                  max_positions: int = MAX_POSITIONS, seed: int = 0) -> tuple[bytes, dict[str, Any]]:
    """The int8 model with every conv / depthwise / FC layer's weights re-rounded (module docstring).

    ``calibrated``: the float calibrate-only model ``quantized`` was made from; ``images``: model
    inputs (NHWC float32, batch 1 each). Returns (model bytes, figures: layers, flipped weights,
    summed output error before / after, seconds)."""
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    t0 = time.perf_counter()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(quantized))
    float_model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    sg, fsg = model.subgraphs[0], float_model.subgraphs[0]
    layers = _layers(model, float_model)
    interp = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    feed = interp.get_input_details()[0]["index"]
    inputs: dict[int, list[np.ndarray]] = {fop.inputs[0]: [] for _, fop, _ in layers}
    for x in images:
        interp.set_tensor(feed, np.asarray(x, np.float32))
        interp.invoke()
        for t in inputs:
            inputs[t].append(interp.get_tensor(t).copy())
    del interp
    rng = np.random.default_rng(seed)
    work = bytearray(quantized)
    figures = {"layers": 0, "weights": 0, "flipped": 0, "error_before": 0.0, "error_after": 0.0,
               "images": len(images)}
    for op, fop, code in layers:
        wt, fw = sg.tensors[op.inputs[1]], fsg.tensors[fop.inputs[1]]
        w = np.frombuffer(bytes(float_model.buffers[fw.buffer].data), np.float32).reshape(fw.shape)
        view = bias_view(work, wt.buffer, np.int8)
        q = view.reshape(wt.shape)
        scale = np.asarray(wt.quantization.scale, np.float64)
        opts = op.builtinOptions
        if code == FULLY_CONNECTED:
            rows = [x.reshape(-1, w.shape[1]) for x in inputs[fop.inputs[0]]]
            w2, q2 = w.reshape(w.shape[0], -1), q.reshape(q.shape[0], -1)
        else:
            _, kh, kw, _ = w.shape
            conf = ((opts.strideH, opts.strideW), (opts.dilationHFactor or 1, opts.dilationWFactor or 1),
                    opts.padding == SAME)
            rows = [patches(x, kh, kw, *conf) for x in inputs[fop.inputs[0]]]
            if code == DEPTHWISE_CONV_2D:  # [1, kh, kw, C]: one row of kh*kw per channel
                if w.shape[0] != 1 or scale.size != w.shape[3]:
                    continue
                w2, q2 = w.reshape(-1, w.shape[3]).T, q.reshape(-1, q.shape[3]).T
            else:  # [O, kh, kw, I]
                w2, q2 = w.reshape(w.shape[0], -1), q.reshape(q.shape[0], -1)
        if scale.size != w2.shape[0]:
            continue
        picked = []
        for r in rows:
            n = r.shape[0]
            idx = rng.choice(n, max_positions, replace=False) if n > max_positions else np.arange(n)
            picked.append(r[idx].astype(np.float64))
        p = np.concatenate(picked)
        if code == DEPTHWISE_CONV_2D:  # per channel: (C, kh*kw, kh*kw)
            pc = p.reshape(p.shape[0], -1, w.shape[3])
            h = np.einsum("nkc,nlc->ckl", pc, pc)
        else:
            p = p.reshape(p.shape[0], -1)
            h = p.T @ p
        new = flip_rounding(w2, scale, q2, h)
        figures["error_before"] += output_error(w2, scale, q2, h) / len(p)
        figures["error_after"] += output_error(w2, scale, new, h) / len(p)
        figures["flipped"] += int((new != q2).sum())
        figures["weights"] += int(q2.size)
        figures["layers"] += 1
        if code == DEPTHWISE_CONV_2D:
            view[:] = new.T.reshape(-1)
        else:
            view[:] = new.reshape(-1)
    figures["error_before"] = float(f"{figures['error_before']:.6g}")
    figures["error_after"] = float(f"{figures['error_after']:.6g}")
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    return bytes(work), figures


__all__ = ["flip_rounding", "output_error", "patches", "round_weights"]
