"""Re-targeting a fixed-size ONNX detector to another input size (converters/onnx_resize.py):
identity is bit-identical, a new size gives the graph exported natively at that size, and what
cannot be re-derived is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_shitu.converters.onnx_resize import parse_size, retarget_onnx  # noqa: E402
from edge_shitu.errors import EdgeShituError  # noqa: E402
from tests.conftest import require_asset  # noqa: E402

PICODET_416 = ("models", "real_weights", "picodet_s_coco", "picodet_s_416_coco.onnx")


def _model(h: int, w: int, extra: str = "") -> onnx.ModelProto:
    """A PicoDet-like graph exported at h x w: stride-2 conv, a channel shuffle whose Reshape
    constants carry the spatial dims ([1, 2, 4, H/2, W/2]), a full-width Slice, a stride-2 conv +
    nearest x2 Resize (an FPN level) added back, and a head Reshape [1, 8, -1]. ``extra``: "pos"
    adds a baked [1, 8, H/2, W/2] positional term, "unflatten" reshapes a flattened H*W back."""
    rng = np.random.default_rng(0)
    gh, gw = h // 2, w // 2
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 2, 4, gh, gw], np.int64), "shuffle_shape"),
             numpy_helper.from_array(np.array([1, 8, gh, gw], np.int64), "unshuffle_shape"),
             numpy_helper.from_array(np.array([0], np.int64), "s_start"),
             numpy_helper.from_array(np.array([gw], np.int64), "s_end"),
             numpy_helper.from_array(np.array([3], np.int64), "s_axis"),
             numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([1, 8, -1], np.int64), "head_shape")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "shuffle_shape"], ["s1"], name="shuffle"),
             helper.make_node("Transpose", ["s1"], ["s2"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["s2", "unshuffle_shape"], ["s3"], name="unshuffle"),
             helper.make_node("Slice", ["s3", "s_start", "s_end", "s_axis"], ["s4"], name="full_slice"),
             helper.make_node("Conv", ["s4", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
             helper.make_node("Resize", ["c2", "roi", "scales"], ["up"], mode="nearest", name="up"),
             helper.make_node("Add", ["s4", "up"], ["fused"], name="fuse")]
    last = "fused"
    if extra == "pos":
        inits.append(numpy_helper.from_array(rng.normal(size=(1, 8, gh, gw)).astype(np.float32), "pos"))
        nodes.append(helper.make_node("Add", ["fused", "pos"], ["with_pos"], name="add_pos"))
        last = "with_pos"
    if extra == "unflatten":
        inits += [numpy_helper.from_array(np.array([1, 8, -1], np.int64), "flat"),
                  numpy_helper.from_array(np.array([1, 8, gh, gw], np.int64), "unflat")]
        nodes += [helper.make_node("Reshape", ["fused", "flat"], ["f1"], name="flatten"),
                  helper.make_node("Reshape", ["f1", "unflat"], ["f2"], name="unflatten")]
        last = "f2"
    nodes.append(helper.make_node("Reshape", [last, "head_shape"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, gh * gw])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _run(path, x: np.ndarray) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})


def test_identity_retarget_is_bit_identical(tmp_path) -> None:
    src = _save(_model(64, 64), tmp_path / "m.onnx")
    r = retarget_onnx(src, (64, 64), tmp_path / "same.onnx")
    assert r.identity and r.rewritten == [] and r.old_size == (64, 64)
    x = np.random.default_rng(1).normal(size=(1, 3, 64, 64)).astype(np.float32)
    for a, b in zip(_run(src, x), _run(r.path, x)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(32, 32), (32, 96), (128, 64)])
def test_retarget_equals_the_graph_exported_at_that_size(tmp_path, size) -> None:
    h, w = size
    src = _save(_model(64, 64), tmp_path / "m.onnx")
    r = retarget_onnx(src, size, tmp_path / "new.onnx")
    m = onnx.load(str(r.path))
    consts = {i.name: numpy_helper.to_array(i).tolist() for i in m.graph.initializer}
    shapes = {n.name: consts[n.input[1]] for n in m.graph.node if n.op_type == "Reshape"}
    assert shapes == {"shuffle": [1, 2, 4, h // 2, w // 2], "unshuffle": [1, 8, h // 2, w // 2], "head": [1, 8, -1]}
    assert "shuffle_shape" not in consts and "unshuffle_shape" not in consts  # replaced, not left dangling
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [1, 8, h // 2 * w // 2]
    assert any(s.startswith("shuffle (Reshape)") for s in r.rewritten), r.rewritten
    x = np.random.default_rng(2).normal(size=(1, 3, h, w)).astype(np.float32)
    native = _save(_model(h, w), tmp_path / "native.onnx")
    for a, b in zip(_run(native, x), _run(r.path, x)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size,why", [((48, 64), "not a multiple of 32"), ((0, 64), "not a multiple of 32")])
def test_bad_size_is_one_line(tmp_path, size, why) -> None:
    src = _save(_model(64, 64), tmp_path / "m.onnx")
    with pytest.raises(EdgeShituError, match=why) as e:
        retarget_onnx(src, size, tmp_path / "out.onnx")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("extra,why", [("pos", "add_pos"), ("unflatten", "unflatten.*splits size-dependent")])
def test_unexplained_spatial_constant_is_refused_in_one_line(tmp_path, extra, why) -> None:
    src = _save(_model(64, 64, extra), tmp_path / "m.onnx")
    retarget_onnx(src, (64, 64))  # its own size is fine
    with pytest.raises(EdgeShituError, match=why) as e:
        retarget_onnx(src, (32, 32), tmp_path / "out.onnx")
    msg = str(e.value)
    assert "\n" not in msg and "cannot run m.onnx at 32x32" in msg and "export the model at 32x32" in msg
    assert not (tmp_path / "out.onnx").exists()


def test_dynamic_input_is_refused(tmp_path) -> None:
    m = _model(64, 64)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    src = _save(m, tmp_path / "m.onnx")
    with pytest.raises(EdgeShituError, match="dynamic size"):
        retarget_onnx(src, (32, 32))


def test_parse_size() -> None:
    assert parse_size(None) is None and parse_size("model") is None
    assert parse_size(320) == (320, 320) and parse_size("320") == (320, 320)
    assert parse_size("320x416") == (320, 416) and parse_size([320, 416]) == (320, 416)
    for bad in ("big", [0, 320], [320, 416, 3], "320x", True):
        with pytest.raises(EdgeShituError, match="is not a size"):
            parse_size(bad)


def test_real_picodet_416(tmp_path) -> None:
    """The real PicoDet-S 416: identity bit-identical; at 320 its 20 shuffle constants are
    re-derived, it runs, and its outputs are a raw GFL head of a 320x320 input."""
    from edge_shitu.gfl_head import GFLHead

    src = require_asset(*PICODET_416)
    same = retarget_onnx(src, (416, 416), tmp_path / "416.onnx")
    x = np.random.default_rng(3).normal(size=(1, 3, 416, 416)).astype(np.float32)
    for a, b in zip(_run(src, x), _run(same.path, x)):
        np.testing.assert_array_equal(a, b)
    r = retarget_onnx(src, (320, 320), tmp_path / "320.onnx")
    assert len(r.rewritten) == 20 and all("(Reshape)" in s for s in r.rewritten)
    m = onnx.load(str(r.path))
    outs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in m.graph.output]
    head = GFLHead.from_output_shapes((320, 320), outs)
    assert head.grids == [(40, 40), (20, 20), (10, 10), (5, 5)]
    got = _run(r.path, np.zeros((1, 3, 320, 320), np.float32))
    assert [g.shape[1] for g in got] == [1600, 400, 100, 25] * 2
    assert all(np.isfinite(g).all() for g in got)


# ----------------------------------------------------------------------------- the board setting
def test_board_det_size_setting(tmp_path) -> None:
    import json

    from edge_shitu.boards import load_board
    from edge_shitu.converters.onnx_resize import detector_size

    rpi4 = load_board("rpi4")
    assert rpi4.det_size is None and detector_size(rpi4) == (None, "board rpi4 det.input_size")
    assert detector_size(rpi4, "320")[0] == (320, 320) and detector_size(rpi4, "model")[0] is None
    raw = rpi4.to_dict()
    raw["det"] = {**raw["det"], "input_size": [320, 416]}
    (tmp_path / "b.json").write_text(json.dumps(raw))
    b = load_board(tmp_path / "b.json")
    assert b.det_size == (320, 416) and detector_size(b) == ((320, 416), "board rpi4 det.input_size")
    with pytest.raises(EdgeShituError, match=r"--det-size 300x300 is not a multiple of 32 .*: use e.g. 288x288"):
        detector_size(b, 300)
    for bad in ([320], "big", [320, 0], [320.0, 320]):
        raw["det"]["input_size"] = bad
        (tmp_path / "b.json").write_text(json.dumps(raw))
        with pytest.raises(EdgeShituError, match=r'det.input_size must be "model"'):
            load_board(tmp_path / "b.json")


def test_detector_at_size(tmp_path) -> None:
    """convert's choice: the ONNX itself at its own size, a re-targeted copy at another, a warning
    (board) or a refusal (--det-size) for a model that cannot be re-targeted."""
    from types import SimpleNamespace

    from edge_shitu.converters.onnx_resize import detector_at_size

    src = tmp_path / "m.onnx"
    _save(_model(64, 64), src)
    board = SimpleNamespace(name="tiny", det_size=(32, 32))
    warnings: list[str] = []
    path, sizes = detector_at_size(src, board, None, tmp_path / "work", warnings)
    assert path != src and path.is_file() and sizes is not None and warnings == []
    assert sizes["model"] == [64, 64] and sizes["input"] == [32, 32] and sizes["from"] == "board tiny det.input_size"
    assert sizes["retarget"]["constants_rewritten"] == 3  # shuffle, unshuffle, the full-width Slice
    assert detector_at_size(src, board, "64", tmp_path / "work", warnings) == (src, None)
    assert detector_at_size(src, SimpleNamespace(name="own", det_size=None), None, tmp_path, warnings) == (src, None)
    m = _model(64, 64)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    dyn = tmp_path / "dyn.onnx"
    _save(m, dyn)
    assert detector_at_size(dyn, board, None, tmp_path, warnings) == (dyn, None)
    assert len(warnings) == 1 and "board tiny det.input_size 32x32 not applied to dyn.onnx" in warnings[0]
    with pytest.raises(EdgeShituError, match="--det-size 32x32 applies to fixed-size ONNX detectors"):
        detector_at_size(dyn, board, "32", tmp_path, warnings)


def test_native_size_recall_on_real_picodet(tmp_path) -> None:
    """What convert records for a board size: the re-targeted 416 model at 320 against onnxruntime
    at 416 on shelf photos, boxes in photo pixels (the reference-level figure; TFLite entries get
    the same measurement)."""
    from types import SimpleNamespace

    from edge_shitu.converters.model_input import inspect_model
    from edge_shitu.converters.onnx_resize import detector_at_size, record_native_size_recall
    from edge_shitu.converters.preprocess_spec import parse_spec
    from edge_shitu.gfl_head import GFLHead
    from edge_shitu.preprocess import load_image

    src = require_asset(*PICODET_416)
    shelf = require_asset("drink", "test_images")
    photos = [load_image(p) for p in sorted(shelf.iterdir())[:4]]
    path, sizes = detector_at_size(src, SimpleNamespace(name="small", det_size=(320, 320)), None, tmp_path, [])
    info = inspect_model(path)
    head = GFLHead.from_output_shapes((320, 320), [(t.name, t.shape) for t in info.outputs], classes=["bottle"],
                                      class_agnostic=True)
    prepared = SimpleNamespace(head=head.to_dict(), pre=parse_spec(None, "det", model_size=(320, 320)).det_preprocess(),
                               reference=path)
    result = SimpleNamespace(prepared=prepared, reference={}, entries=[], runnable={})
    record_native_size_recall(result, sizes, photos)
    ns = result.reference["native_size"]
    assert ns["model_size"] == [416, 416] and ns["size"] == [320, 320] and ns["photos"] == 4
    assert ns["ref_boxes"] >= 4 and result.reference["box_recall_vs_native_size"] >= 0.75, result.reference


def test_manifest_schema_det_input_size() -> None:
    from edge_shitu.manifest_schema import MANIFEST, ManifestError, check

    det = MANIFEST.keys["det"].node
    block = {"preprocess": {"kind": "det", "ops": [{"type": "Resize", "target_size": [320, 320], "keep_ratio": False}]},
             "artifacts": [{"kind": "tflite:fp32", "file": "det/det_fp32.tflite", "sha256": "0" * 64, "bytes": 1}],
             "input_size": [320, 320]}
    check(block, det, "det")
    for bad in ([320], [320, 0], "320"):
        with pytest.raises(ManifestError, match=r"det\.input_size"):
            check({**block, "input_size": bad}, det, "det")
