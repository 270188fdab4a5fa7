"""Empirical bias correction of an int8 TFLite model, layer by layer (no retraining).

Why: int8 rounding of weights and activations is not zero-mean per output channel. Clipped
activation ranges (``int8_ranges`` pulls outliers in) and rounded weights shift every channel's
mean a little, and over ~50 layers these shifts add up. The mean shift of a conv's output channel
is exactly what its int32 bias can absorb, so each bias is moved by the measured mean error
(Nagel et al. 2019, "Data-Free Quantization", section 4.2, the empirical variant; Finkelstein et
al. 2019). Only int32 bias values are rewritten, in place: every other byte of the file is the quantizer's.

How: layers are corrected IN ORDER, each measured with the layers before it already corrected.
Correcting all layers from one measurement over-corrects: a layer's error is mostly inherited
from above, and every layer below would subtract the same inherited shift again (MobileNetV2:
cosine 0.988 -> 0.62 that way; 0.988 -> 0.990 in order).

The error of a conv with a fused ReLU/ReLU6 is measured where neither the float nor the int8
output is clipped: only there does the output difference equal the pre-activation difference the
bias moves. The float reference is the calibrate-only model the quantizer started from: the same
graph with its operators in the same order, in float.

Runs inside the TFLite conversion child process (needs TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

# TFLite builtin operator codes (schema.fbs) of the ops whose int32 bias is corrected
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED = 3, 4, 9
RELU, RELU6 = 1, 3  # fused activation codes
INT32 = 2
UNCLIPPED_MARGIN = 1e-3  # an int8 output this close to 6 counts as clipped


def _biased_ops(model: Any) -> list[Any]:
    """The conv / depthwise / fully-connected operators with a bias input, in graph order."""
    ops = []
    for op in model.subgraphs[0].operators:
        oc = model.operatorCodes[op.opcodeIndex]
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        if code in (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) and len(op.inputs) >= 3 and op.inputs[2] >= 0:
            ops.append(op)
    return ops


def _targets(model: Any, float_model: Any) -> list[tuple[int, int, int, int]]:
    """(int8 output tensor, float output tensor, bias tensor, fused activation) per biased layer.

    The quantizer keeps the float model's operators in order but may rename a tensor (the model's
    output gets a suffix beside its DEQUANTIZE), so the layers are paired by position and the
    pairing is checked on output shapes.
    """
    sg, fsg = model.subgraphs[0], float_model.subgraphs[0]
    ops, fops = _biased_ops(model), _biased_ops(float_model)
    if len(ops) != len(fops):
        raise ValueError(f"the int8 model has {len(ops)} biased layers, its float model {len(fops)}")
    out = []
    for op, fop in zip(ops, fops):
        t, ft = sg.tensors[op.outputs[0]], fsg.tensors[fop.outputs[0]]
        if list(t.shape) != list(ft.shape):
            raise ValueError(f"layer {t.name.decode()}: int8 shape {list(t.shape)} != float {list(ft.shape)}")
        bias = sg.tensors[op.inputs[2]]
        if bias.type != INT32 or bias.quantization is None:
            continue
        act = int(getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0)
        out.append((op.outputs[0], fop.outputs[0], op.inputs[2], act))
    return out


def unclipped(act: int, ref: np.ndarray, art: np.ndarray) -> np.ndarray:
    """Where the output difference is the pre-activation difference (both outputs unclipped)."""
    if act == RELU6:
        return (ref > 0) & (ref < 6) & (art > 0) & (art < 6 - UNCLIPPED_MARGIN)
    if act == RELU:
        return (ref > 0) & (art > 0)
    return np.ones(ref.shape, bool)


def channel_mean_error(act: int, ref: Sequence[np.ndarray], art: Sequence[np.ndarray]) -> np.ndarray:
    """Per output channel (last axis): the mean of art - ref over the unclipped positions."""
    sums: Any = 0.0
    counts: Any = 0.0
    for r, a in zip(ref, art):
        c = r.shape[-1]
        r2, a2 = r.reshape(-1, c), a.reshape(-1, c)
        m = unclipped(act, r2, a2)
        sums = sums + ((a2 - r2) * m).sum(0)
        counts = counts + m.sum(0)
    return np.asarray(sums, np.float64) / np.maximum(counts, 1)


def correct_biases(quantized: bytes, calibrated: bytes, images: Sequence[np.ndarray],
                   progress: Optional[Callable[[int, int], None]] = None) -> tuple[bytes, int]:
    """The int8 model with each conv / FC bias moved by its measured mean output error.

    ``calibrated``: the float calibrate-only model ``quantized`` was made from; ``images``: model
    inputs (NHWC float32, batch 1 each), a few calibration images. Returns (model bytes, how many
    layers had a bias changed).
    """
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(quantized))
    sg = model.subgraphs[0]
    targets = _targets(model, flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated)))
    ref_interp = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    ref_interp.allocate_tensors()
    feed = ref_interp.get_input_details()[0]["index"]
    refs: dict[int, list[np.ndarray]] = {t[1]: [] for t in targets}
    for x in images:
        ref_interp.set_tensor(feed, np.asarray(x, np.float32))
        ref_interp.invoke()
        for t in targets:
            refs[t[1]].append(ref_interp.get_tensor(t[1]).copy())
    del ref_interp
    # the biases are patched in place in the flatbuffer's bytes: re-serializing the whole model
    # after every layer (the object API) cost more than measuring the layer, and the bytes outside
    # the biases stay exactly the quantizer's
    work = bytearray(quantized)
    interp, changed = None, 0
    for j, (out, ref_t, bias_t, act) in enumerate(targets):
        if interp is None:  # rebuilt only after a bias changed
            interp = tf.lite.Interpreter(model_content=bytes(work), experimental_preserve_all_tensors=True)
            interp.allocate_tensors()
            feed = interp.get_input_details()[0]["index"]
            quant = {d["index"]: d["quantization"] for d in interp.get_tensor_details()}
        scale, zero = quant[out]
        arts = []
        for x in images:
            interp.set_tensor(feed, np.asarray(x, np.float32))
            interp.invoke()
            arts.append((interp.get_tensor(out).astype(np.float32) - zero) * scale)
        err = channel_mean_error(act, refs[ref_t], arts)
        bias = sg.tensors[bias_t]
        step = np.asarray(bias.quantization.scale, np.float64)  # input scale x weight scale
        delta = np.round(err / step).astype(np.int64)
        if np.any(delta):
            values = bias_view(work, bias.buffer)
            values[:] = np.clip(values.astype(np.int64) - delta, -2**31, 2**31 - 1).astype(np.int32)
            interp, changed = None, changed + 1
        if progress is not None:
            progress(j + 1, len(targets))
    return bytes(work), changed


def bias_view(model_bytes: bytearray, buffer_index: int, dtype: Any = np.int32) -> np.ndarray:
    """A writable view of one buffer's data inside a TFLite flatbuffer (int32 biases; int8
    weights for ``int8_rounding``)."""
    from tensorflow.lite.python import schema_py_generated as schema_fb

    size = np.dtype(dtype).itemsize
    buf = schema_fb.Model.GetRootAs(model_bytes, 0).Buffers(buffer_index)
    n = buf.DataLength()
    if n == 0 or n % size:
        raise ValueError(f"buffer {buffer_index} holds {n} bytes, not {np.dtype(dtype).name} values inside the "
                         "flatbuffer")
    start = buf._tab.Vector(buf._tab.Offset(4))  # Buffer.data is field 0 (vtable slot 4)
    return np.frombuffer(model_bytes, dtype, n // size, start)
