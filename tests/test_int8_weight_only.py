"""int8 weights behind a DEQUANTIZE for the layers a mixed-precision file keeps float
(converters/int8_weight_only.py).

The per-channel quantizer is checked in numpy; the TFLite rewrite runs in a child interpreter
(TensorFlow is never imported in the pytest process) on a tiny Keras model with every filter
layout TFLite has (conv, depthwise, fully connected), and prints its figures as JSON.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

from edge_shitu.converters.int8_weight_only import quantize_filter
from tests.tflite_child import run_child


@pytest.mark.parametrize("axis", [0, 3])
def test_quantize_filter_is_symmetric_per_channel_within_half_a_step(axis: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 5)).astype(np.float32) * rng.uniform(0.01, 3, 6 if axis == 0 else 5).reshape(
        (-1, 1, 1, 1) if axis == 0 else (1, 1, 1, -1))
    zero = [slice(None)] * 4
    zero[axis] = 1
    w[tuple(zero)] = 0.0  # an all-zero channel
    q, scale = quantize_filter(w, axis)
    assert q.dtype == np.int8 and scale.shape == (w.shape[axis],) and np.abs(q).max() == 127
    shape = [1] * 4
    shape[axis] = -1
    back = q.astype(np.float32) * scale.reshape(shape)
    assert np.all(np.abs(back - w) <= scale.reshape(shape) / 2 + 1e-7)
    assert scale[1] == 1.0 and not q[tuple(zero)].any()


CHILD = """
    from tensorflow.lite.tools import flatbuffer_utils
    from edge_shitu.converters.int8_mixed import ladder, read_graph
    from edge_shitu.converters.int8_weight_only import int8_weights_for_float_ops

    rng = np.random.default_rng(0)
    inp = tf.keras.Input((12, 12, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation=tf.nn.relu6, name="stem")(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation=tf.nn.relu6, name="dw")(x)
    x = tf.keras.layers.Conv2D(24, 1, name="pw")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(10, name="fc")(x)
    model = tf.keras.Model(inp, out)
    images = [rng.standard_normal((1, 12, 12, 3)).astype(np.float32) for _ in range(8)]
    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    new, changed = int8_weights_for_float_ops(float_model)
    m = flatbuffer_utils.read_model_from_bytearray(bytearray(new))
    sg = m.subgraphs[0]
    ops = [tf.lite.Interpreter(model_content=new)._get_ops_details()[i]["op_name"] for i in range(len(sg.operators))]
    filters = []
    for op in sg.operators:
        if len(op.inputs) > 1 and op.inputs[1] >= 0:
            src = [p for p in sg.operators if op.inputs[1] in list(p.outputs)]
            if src:
                t = sg.tensors[src[0].inputs[0]]
                filters.append({"type": int(t.type), "axis": int(t.quantization.quantizedDimension),
                                "scales": len(t.quantization.scale), "shape": [int(s) for s in t.shape]})
    a, b = run(float_model, images), run(new, images)
    cos = float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    only_pw, changed_pw = int8_weights_for_float_ops(float_model, only=[n for n in changed if "pw" in n])
    same, none = int8_weights_for_float_ops(new)  # nothing float is left to change
    versions = sorted({(int(c.builtinCode), int(c.version)) for c in m.operatorCodes if c.builtinCode == 6})
    # the extractor ladder's way: its float layers' weights int8 behind a DEQUANTIZE
    calibrated = calibrate_only(model, images)
    stem = next(op for op in read_graph(calibrated).types if "stem" in op)
    full, _, _ = ladder(calibrated, images[:4], ks=(1, 2), always_float=[stem])
    light, _, _ = ladder(calibrated, images[:4], ks=(1, 2), always_float=[stem], weight_only=True)
    # an int8 model already holds a (version 2) DEQUANTIZE at its output: a per-channel one is another entry
    from edge_shitu.converters.int8_mixed import quantize
    mixed = quantize(calibrated, [n for n in read_graph(calibrated).types if "pw" in n])
    mixed_new, mixed_changed = int8_weights_for_float_ops(mixed)
    mm = flatbuffer_utils.read_model_from_bytearray(bytearray(mixed_new))
    mixed_versions = sorted(int(c.version) for c in mm.operatorCodes if c.builtinCode == 6)
    print(json.dumps({"versions": versions, "mixed_versions": mixed_versions, "mixed_changed": mixed_changed,
                      "changed": changed, "changed_pw": changed_pw, "ops": ops, "filters": filters, "cos": cos,
                      "float_bytes": len(float_model), "new_bytes": len(new), "only_pw_bytes": len(only_pw),
                      "unchanged": same == new and none == [],
                      "full": [[c.k, len(c.model), c.output_error] for c in full],
                      "light": [[c.k, len(c.model), c.output_error] for c in light]}))
"""


@pytest.mark.skipif(find_spec("tensorflow") is None, reason="TensorFlow (the conversion extra) is not installed")
def test_float_layers_read_int8_weights_through_a_dequantize_at_a_quarter_of_the_bytes() -> None:
    r = run_child(CHILD)
    print(r)
    assert len(r["changed"]) == 4 and r["ops"].count("DEQUANTIZE") == 4, r["ops"]
    # every filter is int8, one scale per output channel, on TFLite's channel axis per layout
    axes = sorted((f["axis"], f["scales"]) for f in r["filters"])
    assert all(f["type"] == 9 for f in r["filters"]) and axes == [(0, 10), (0, 16), (0, 24), (3, 16)], r["filters"]
    assert r["cos"] > 0.999, r["cos"]
    weights = 16 * 27 + 16 * 9 + 24 * 16 + 24 * 10
    # 3 of 4 bytes saved per weight, less a scale and a zero point per channel and the new tensors
    # and ops (MobileNetV2: 8.85 MB -> 2.49 MB)
    assert r["float_bytes"] - r["new_bytes"] >= 1.5 * weights, (r["float_bytes"], r["new_bytes"])
    assert len(r["changed_pw"]) == 1 and r["new_bytes"] < r["only_pw_bytes"] < r["float_bytes"]
    assert r["unchanged"]
    # per-channel int8 DEQUANTIZE is op version 5 (TFLite 2.7+), whatever DEQUANTIZE the model had
    assert r["versions"] == [[6, 5]], r["versions"]
    assert len(r["mixed_changed"]) == 1 and r["mixed_versions"] == [2, 5], r["mixed_versions"]
    # the same ladder rungs, smaller files, output error of the same order
    assert [k for k, *_ in r["light"]] == [k for k, *_ in r["full"]] and r["light"], r
    for (_, lb, le), (_, fb, fe) in zip(r["light"], r["full"]):
        assert lb <= fb and le <= max(4 * fe, 1e-3), (r["light"], r["full"])
