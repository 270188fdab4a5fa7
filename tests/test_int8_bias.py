"""Empirical int8 bias correction (converters/int8_bias.py).

TensorFlow is never imported in the pytest process (Paddle Lite aborts the session after it): the
TFLite part runs in a child interpreter and prints its figures as JSON.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

from edge_shitu.converters.int8_bias import RELU6, channel_mean_error, unclipped
from tests.tflite_child import run_child


def test_unclipped_excludes_positions_either_side_clipped():
    ref = np.array([[-1.0, 0.5, 3.0, 6.0, 2.0]])
    art = np.array([[0.0, 0.6, 6.0, 6.0, 0.0]])
    assert unclipped(RELU6, ref, art).tolist() == [[False, True, False, False, False]]
    assert unclipped(0, ref, art).all()  # a linear layer: every position counts


def test_channel_mean_error_is_per_channel_over_unclipped_positions():
    ref = [np.array([[1.0, 2.0], [3.0, 7.0]], np.float32)]  # (positions, channels)
    art = [np.array([[1.5, 1.0], [3.5, 6.0]], np.float32)]  # channel 1's second value is clipped
    err = channel_mean_error(RELU6, ref, art)
    assert err.tolist() == pytest.approx([0.5, -1.0])


CHILD = """
    from edge_shitu.converters.int8_bias import correct_biases
    from edge_shitu.converters.int8_ranges import quantize_calibrated, refine_ranges

    rng = np.random.default_rng(0)
    inp = tf.keras.Input((16, 16, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation=tf.nn.relu6)(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation=tf.nn.relu6)(x)
    x = tf.keras.layers.Conv2D(8, 1)(x)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation=tf.nn.relu6)(x)
    out = tf.keras.layers.Conv2D(6, 1)(x)
    model = tf.keras.Model(inp, out)
    for w in model.weights:  # weights far from int8-friendly: a few large values per filter
        v = rng.standard_normal(w.shape).astype(np.float32) * (0.6 if len(w.shape) > 1 else 0.2)
        w.assign(v * np.where(rng.random(w.shape) < 0.05, 6.0, 1.0).astype(np.float32))
    images = [rng.standard_normal((1, 16, 16, 3)).astype(np.float32) * 1.5 for _ in range(24)]
    calibrated = calibrate_only(model, images[:16])
    calibrated, _ = refine_ranges(calibrated, images[:16])
    plain = quantize_calibrated(calibrated)
    fixed, layers = correct_biases(plain, calibrated, images[:16])

    def bias(m, ims):  # mean over channels of |mean output error per channel|
        ref = run(calibrated, ims)
        return float(np.abs((run(m, ims) - ref).reshape(-1, ref.shape[-1]).mean(0)).mean())
    def rmse(m, ims):
        return float(np.sqrt(((run(m, ims) - run(calibrated, ims)) ** 2).mean()))
    seen, held = images[:16], images[16:]
    from tensorflow.lite.tools import flatbuffer_utils
    m = flatbuffer_utils.read_model_from_bytearray(bytearray(plain))
    ops = m.subgraphs[0].operators
    bias_bytes = sum(len(m.buffers[m.subgraphs[0].tensors[op.inputs[2]].buffer].data)
                     for op in ops if len(op.inputs) >= 3 and op.inputs[2] >= 0)
    differ = int((np.frombuffer(plain, np.uint8) != np.frombuffer(fixed, np.uint8)).sum())
    print(json.dumps({"layers": layers, "size_plain": len(plain), "size_fixed": len(fixed),
                      "differ": differ, "bias_bytes": bias_bytes,
                      "bias_plain": bias(plain, seen), "bias_fixed": bias(fixed, seen),
                      "held_bias_plain": bias(plain, held), "held_bias_fixed": bias(fixed, held),
                      "rmse_plain": rmse(plain, held), "rmse_fixed": rmse(fixed, held)}))
"""


@pytest.mark.skipif(find_spec("tensorflow") is None, reason="TensorFlow (the conversion extra) is not installed")
def test_bias_correction_removes_channel_mean_error_at_the_same_size():
    r = run_child(CHILD)
    assert r["layers"] >= 1
    # only int32 bias values change, in place: same size, no byte outside the biases differs
    assert r["size_fixed"] == r["size_plain"] and 0 < r["differ"] <= r["bias_bytes"], r
    assert r["bias_fixed"] < 0.5 * r["bias_plain"], r  # on the images it measured: the mean shift is gone
    assert r["held_bias_fixed"] <= r["held_bias_plain"], r  # held-out images: not worse
    assert r["rmse_fixed"] <= r["rmse_plain"] * 1.02, r
