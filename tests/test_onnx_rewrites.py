"""The exact pre-onnx2tf rewrite of padded MaxPools (converters/onnx_rewrites.py): same outputs
bit for bit under onnxruntime, and only where it is exact (pads below the kernel, opset >= 11)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_shitu.converters.onnx_rewrites import edge_pad_max_pools  # noqa: E402


def _model(pads: list[int], kernel: int = 3, stride: int = 2, opset: int = 11) -> onnx.ModelProto:
    """conv -> hard-swish-like clip -> padded max pool, the stem of PicoDet / OSNet."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                              pads=pads, name="pool")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 37, 29])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 1, 0], [2, 2, 2, 2]])
def test_padded_max_pool_becomes_edge_pad_with_the_same_outputs(pads: list[int]) -> None:
    x = np.random.default_rng(1).normal(size=(1, 3, 37, 29)).astype(np.float32) - 0.5  # negatives near borders
    kernel = 5 if max(pads) >= 2 else 3
    model = _model(pads, kernel=kernel)
    before = _run(model, x)
    assert edge_pad_max_pools(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Relu", "Pad", "MaxPool"]
    pool = model.graph.node[-1]
    assert not [a for a in pool.attribute if a.name == "pads"]
    np.testing.assert_array_equal(_run(model, x), before)  # bit for bit


def test_left_alone_where_not_exact_or_not_expressible() -> None:
    wide = _model([3, 3, 3, 3], kernel=3)  # pad >= kernel: a window may hold only padding
    assert edge_pad_max_pools(wide) == 0
    old = _model([1, 1, 1, 1], opset=10)  # Pad takes its pads as an input only from opset 11
    assert edge_pad_max_pools(old) == 0
    plain = _model([0, 0, 0, 0])  # nothing to rewrite
    assert edge_pad_max_pools(plain) == 0
    assert [n.op_type for n in plain.graph.node] == ["Conv", "Relu", "MaxPool"]
