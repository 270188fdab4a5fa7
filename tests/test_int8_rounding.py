"""Output-aware int8 weight rounding (converters/int8_rounding.py).

The numpy parts are checked here against brute force and a naive convolution; the TFLite part
runs in a child interpreter (TensorFlow is never imported in the pytest process) on a tiny Keras
model, as test_int8_bias.py does, and prints its figures as JSON.
"""

from __future__ import annotations

import itertools
from importlib.util import find_spec

import numpy as np
import pytest

from edge_shitu.converters.int8_rounding import flip_rounding, output_error, patches
from tests.tflite_child import run_child


def _layer(rng: np.random.Generator, rows: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weights, per-row scales, TFLite's nearest rounding and a correlated H (real activations are)."""
    x = rng.standard_normal((2000, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.8
    w = rng.standard_normal((rows, d)) * 0.1
    s = np.abs(w).max(1) / 127
    return w, s, np.round(w / s[:, None]).astype(np.int8), x.T @ x


def test_flip_rounding_lowers_the_output_error_and_stays_on_the_two_nearest_steps() -> None:
    rng = np.random.default_rng(0)
    w, s, q, h = _layer(rng, 24, 48)
    new = flip_rounding(w, s, q, h)
    assert output_error(w, s, new, h) < 0.8 * output_error(w, s, q, h)
    steps = w / s[:, None]
    assert np.all((new == np.floor(steps)) | (new == np.ceil(steps)))
    peak = np.abs(q) == 127  # the largest weight of each row keeps +-127: its scale still fits
    assert np.array_equal(new[peak], q[peak]) and np.abs(new).max() <= 127


def test_short_rows_are_solved_exactly() -> None:
    rng = np.random.default_rng(1)
    w, s, q, h = _layer(rng, 6, 9)
    hh = np.stack([h * (1 + r) for r in range(6)])  # a depthwise layer: one H per channel
    new = flip_rounding(w, s, q, hh)
    lo, hi = np.floor(w / s[:, None]), np.ceil(w / s[:, None])
    for r in range(6):
        best = min(float(d @ hh[r] @ d) for bits in itertools.product((0, 1), repeat=9)
                   for d in [np.where(bits, hi[r], lo[r]) * s[r] - w[r]])
        d = new[r] * s[r] - w[r]
        assert float(d @ hh[r] @ d) == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("stride,same", [(1, True), (2, True), (2, False), (1, False)])
def test_patches_match_a_naive_convolution(stride: int, same: bool) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 7, 6, 3))
    k = rng.standard_normal((4, 3, 3, 3))  # [O, kh, kw, I], TFLite's CONV_2D layout
    got = patches(x, 3, 3, (stride, stride), (1, 1), same).reshape(-1, 27) @ k.reshape(4, -1).T
    if same:  # TensorFlow's SAME: the extra padding row / column goes after
        oh, ow = -(-7 // stride), -(-6 // stride)
        ph, pw = max((oh - 1) * stride + 3 - 7, 0), max((ow - 1) * stride + 3 - 6, 0)
        xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow, xp = (7 - 3) // stride + 1, (6 - 3) // stride + 1, x
    want = np.array([[np.sum(xp[0, i * stride:i * stride + 3, j * stride:j * stride + 3, :] * k[o])
                      for o in range(4)] for i in range(oh) for j in range(ow)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


CHILD = """
    from edge_shitu.converters.int8_ranges import quantize_calibrated
    from edge_shitu.converters.int8_rounding import round_weights

    rng = np.random.default_rng(0)
    inp = tf.keras.Input((16, 16, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", activation=tf.nn.relu6)(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation=tf.nn.relu6)(x)
    x = tf.keras.layers.Conv2D(24, 1, activation=tf.nn.relu6)(x)
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation=tf.nn.relu6)(x)
    out = tf.keras.layers.Conv2D(8, 1)(x)
    model = tf.keras.Model(inp, out)
    images = [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(24)]
    calibrated = calibrate_only(model, images[:16])
    plain = quantize_calibrated(calibrated)
    fixed, figures = round_weights(plain, calibrated, images[:16])

    from tensorflow.lite.tools import flatbuffer_utils
    m = flatbuffer_utils.read_model_from_bytearray(bytearray(plain))
    sg = m.subgraphs[0]
    weight_bytes = sum(len(m.buffers[sg.tensors[op.inputs[1]].buffer].data) for op in sg.operators
                       if len(op.inputs) >= 3 and op.inputs[2] >= 0)
    differ = int((np.frombuffer(plain, np.uint8) != np.frombuffer(fixed, np.uint8)).sum())
    ref = run(calibrated, images[16:])
    rmse = {k: float(np.sqrt(((run(v, images[16:]) - ref) ** 2).mean())) for k, v in
            (("plain", plain), ("rounded", fixed))}
    print(json.dumps({**figures, "size_plain": len(plain), "size_rounded": len(fixed), "differ": differ,
                      "weight_bytes": weight_bytes, "rmse_plain": rmse["plain"], "rmse_rounded": rmse["rounded"]}))
"""


@pytest.mark.skipif(find_spec("tensorflow") is None, reason="TensorFlow (the conversion extra) is not installed")
def test_round_weights_rewrites_only_int8_weights_and_lowers_the_layer_error() -> None:
    r = run_child(CHILD)
    print(r)
    assert r["layers"] == 5 and r["images"] == 16
    # only int8 weight values change, in place: same size, no byte outside the weights differs
    assert r["size_rounded"] == r["size_plain"] and 0 < r["differ"] <= r["weight_bytes"], r
    assert 0 < r["flipped"] == r["differ"] < r["weights"], r
    assert r["error_after"] < r["error_before"], r  # on the images it measured
    assert r["rmse_rounded"] <= r["rmse_plain"] * 1.05, r  # held-out images: not (much) worse
