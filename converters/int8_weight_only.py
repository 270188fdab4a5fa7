"""int8 weights for the layers a mixed-precision file keeps float: a float layer at int8's size.

Why: a mixed-precision int8 file keeps the activation tensors most sensitive to int8 float, and TF's
quantizer then keeps their producer and consumer ops entirely float: float32 weights, 4x the bytes
of int8. Under the accuracy issue's size budget (1.1x the int8 file) that allowed about 7 of
MobileNetV2's layers, not enough on every photo set (ladder best 0.9933 < 0.995 on
bench_accuracy's split). What these layers need float is their ACTIVATIONS (one range per tensor
is what int8 loses); their weights lose little to int8 (MobileNetV2 with every weight int8 and every
activation float: cosine 0.996). So each such layer's float32 weight tensor is replaced by an int8
tensor (symmetric, per output channel, like the int8 ops' weights) read through a DEQUANTIZE op:
the layer computes in float at int8's size. TFLite's DEQUANTIZE of a constant runs once (its
output is cached); XNNPACK unpacks such weights when it builds its graph.

Per-channel axis (TFLite's layouts): CONV_2D [O, H, W, I] and FULLY_CONNECTED [O, I] on axis 0,
DEPTHWISE_CONV_2D [1, H, W, O] on axis 3. The float bias stays float32 (same size as int8's int32).

Runs where TensorFlow is importable (the TFLite conversion child, tests); :func:`quantize_filter`
is pure numpy.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Optional

import numpy as np

# op -> the axis of its filter's output channels
FILTER_AXIS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3}


def quantize_filter(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per channel along ``axis``: (int8 values, float32 scales); an all-zero
    channel gets scale 1 (any scale represents it exactly)."""
    w = np.asarray(w, np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def dequantize_version(channels: int) -> int:
    """DEQUANTIZE's op version for an int8 input (TFLite's op_version.cc): 5 when it is quantized per
    channel (more than one scale: runtimes from 2.7 on), else 2. A runtime refuses a model whose op
    version it does not know, rather than dequantizing per channel with one scale: the version
    must be the true one (``edge_shitu.tflite_ops`` reads it for the board's runtime check)."""
    return 5 if channels > 1 else 2


def int8_weights_for_float_ops(model: bytes, only: Optional[Collection[str]] = None) -> tuple[bytes, list[str]]:
    """``model`` with every float conv / depthwise / FC filter (a float32 constant) stored int8 and
    read through a DEQUANTIZE op; ``only``: restrict to these ops (named by their first output
    tensor). Returns (new model, the ops changed, in graph order). Nothing to change: ``model``."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = m.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(code: schema.OperatorCodeT) -> str:
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")

    deq = {c.version: i for i, c in enumerate(m.operatorCodes) if op_name(c) == "DEQUANTIZE"}  # version -> code
    changed: list[str] = []
    new_ops: list[schema.OperatorT] = []
    done: dict[int, int] = {}  # float filter tensor -> its dequantized twin (a filter read by two ops)
    for op in sg.operators:
        kind = op_name(m.operatorCodes[op.opcodeIndex])
        out_name = sg.tensors[op.outputs[0]].name.decode() if len(op.outputs) else ""
        axis = FILTER_AXIS.get(kind)
        fi = int(op.inputs[1]) if axis is not None and len(op.inputs) > 1 else -1
        t = sg.tensors[fi] if fi >= 0 else None
        buf = m.buffers[t.buffer].data if t is not None and t.buffer < len(m.buffers) else None
        if (t is None or t.type != schema.TensorType.FLOAT32 or buf is None or not len(buf)
                or (only is not None and out_name not in only)):
            new_ops.append(op)
            continue
        if fi not in done:
            w = np.frombuffer(bytes(buf), np.float32).reshape(t.shape)
            q, scale = quantize_filter(w, axis)
            version = dequantize_version(len(scale))
            if version not in deq:
                code = schema.OperatorCodeT()
                code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
                code.version = version
                m.operatorCodes.append(code)
                deq[version] = len(m.operatorCodes) - 1
            m.buffers[t.buffer].data = np.frombuffer(q.tobytes(), np.uint8)
            float_twin = schema.TensorT()
            float_twin.shape, float_twin.type = np.array(t.shape, np.int32), schema.TensorType.FLOAT32
            float_twin.name = t.name + b"/dequantized"
            float_twin.buffer = 0  # the empty buffer: an activation
            t.type = schema.TensorType.INT8
            qp = schema.QuantizationParametersT()
            qp.scale, qp.zeroPoint = scale.astype(np.float32), np.zeros(len(scale), np.int64)
            qp.quantizedDimension = axis
            t.quantization = qp
            sg.tensors.append(float_twin)
            done[fi] = len(sg.tensors) - 1
            d = schema.OperatorT()
            d.opcodeIndex, d.inputs, d.outputs = deq[version], np.array([fi], np.int32), np.array([done[fi]], np.int32)
            new_ops.append(d)
        op.inputs = np.array([done[fi] if j == 1 else int(i) for j, i in enumerate(op.inputs)], np.int32)
        new_ops.append(op)
        changed.append(out_name)
    if not changed:
        return model, []
    sg.operators = new_ops
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m)), changed
