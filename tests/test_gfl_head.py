"""edge_shitu/gfl_head.py: numpy decoding of PicoDet's raw GFL heads, on the real PicoDet-S COCO ONNX.

onnxruntime runs the user's file (the FP32 reference of an ONNX detector); the decoding + NMS here
is what the device runs on a TFLite / .nb artifact's raw maps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_shitu.detection import postprocess_detections
from edge_shitu.errors import EdgeShituError
from edge_shitu.gfl_head import COCO80, GFLHead, resolve_classes
from tests.conftest import require_asset

BOTTLE = COCO80.index("bottle")


@pytest.fixture(scope="module")
def picodet_raw() -> tuple[GFLHead, list[np.ndarray], dict[str, np.ndarray], tuple[int, int]]:
    """onnxruntime's raw head maps for drink/test_images/100.jpeg through PicoDet-S 416 COCO."""
    ort = pytest.importorskip("onnxruntime")
    from edge_shitu.converters.preprocess_spec import parse_spec
    from edge_shitu.preprocess import load_image

    onnx_path = require_asset("models", "real_weights", "picodet_s_coco", "picodet_s_416_coco.onnx")
    photo = require_asset("drink", "test_images", "100.jpeg")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    head = GFLHead.from_output_shapes((416, 416), [(o.name, o.shape) for o in sess.get_outputs()])
    img = load_image(photo)
    feeds = parse_spec(None, "det", model_size=(416, 416)).det_preprocess()(img)
    raw = sess.run(None, {"image": feeds["image"]})
    return head, raw, feeds, img.shape[:2]


def test_head_is_recognised_from_the_output_shapes(picodet_raw):
    head = picodet_raw[0]
    assert head.num_classes == 80 and head.reg_max == 7 and head.strides == [8, 16, 32, 64]
    assert head.grids == [(52, 52), (26, 26), (13, 13), (7, 7)]


def test_finds_the_bottles_on_a_real_shelf_photo(picodet_raw):
    head, raw, feeds, (h, w) = picodet_raw
    rows = head.postprocess(raw, feeds["im_shape"][0], feeds["scale_factor"][0])
    bottles = rows[(rows[:, 0] == BOTTLE) & (rows[:, 1] > 0.5)]
    assert len(bottles) >= 2, rows[:5]
    assert bottles[:, 1].max() > 0.8  # README: 3 bottles at 0.87-0.90
    assert (rows[:, 2:] >= 0).all() and (rows[:, [2, 4]] <= w).all() and (rows[:, [3, 5]] <= h).all()
    assert np.all(np.diff(rows[:, 1]) <= 0)  # sorted by score
    # the rows are the ones edge_shitu.detection's PicoDet post-processing gives on the same maps
    boxes, scores = head.decode(raw)
    same = postprocess_detections(boxes, scores, head.picodet_head(), feeds["im_shape"][0], feeds["scale_factor"][0])
    np.testing.assert_array_equal(rows, same)


def test_class_filter_and_class_agnostic(picodet_raw):
    head, raw, feeds, _ = picodet_raw
    args = (raw, feeds["im_shape"][0], feeds["scale_factor"][0])
    only = GFLHead.from_dict({**head.to_dict(), "classes": ["bottle", "cup"]}).postprocess(*args, min_score=0.5)
    assert len(only) >= 2 and set(only[:, 0].astype(int)) <= {BOTTLE, COCO80.index("cup")}
    person = GFLHead.from_dict({**head.to_dict(), "classes": [0]}).postprocess(*args, min_score=0.5)
    assert BOTTLE not in set(person[:, 0].astype(int))
    agn = GFLHead.from_dict({**head.to_dict(), "classes": "bottle,cup,bowl,vase", "class_agnostic": True})
    rows = agn.postprocess(*args, min_score=0.3)
    assert (rows[rows[:, 1] > 0.5, 0] == BOTTLE).sum() >= 2
    # class-agnostic NMS: no two kept boxes overlap beyond the NMS IoU, whatever their classes
    from edge_shitu.detection import iou_matrix

    iou = iou_matrix(rows[:, 2:], rows[:, 2:])
    np.fill_diagonal(iou, 0)
    assert iou.max() <= agn.nms["nms_threshold"] + 1e-6


def test_manifest_round_trip(picodet_raw):
    head = GFLHead.from_dict({**picodet_raw[0].to_dict(), "classes": ["bottle"], "class_agnostic": True,
                              "nms": {"nms_threshold": 0.5}})
    d = json.loads(json.dumps(head.to_dict()))
    again = GFLHead.from_dict(d)
    assert again == head and again.classes == [BOTTLE] and again.nms["nms_threshold"] == 0.5
    assert again.nms["keep_top_k"] == 100  # defaults filled in


def test_centre_and_distance_convention():
    """One peaked cell: (row 2, col 3) at stride 8 has its centre at (28, 20) (PaddleDetection's
    (col + 0.5) * stride); every side's distribution peaked on bin 2 -> 2 * 8 = 16 pixels."""
    head = GFLHead(input_size=(64, 64), num_classes=2, strides=[8, 16, 32, 64])
    grids = head.grids
    scores = [np.zeros((1, gh * gw, 2), np.float32) for gh, gw in grids]
    dists = [np.zeros((1, gh * gw, 32), np.float32) for gh, gw in grids]
    cell = 2 * grids[0][1] + 3
    scores[0][0, cell, 1] = 0.9
    d = np.full((4, 8), -50.0, np.float32)
    d[:, 2] = 50.0
    dists[0][0, cell] = d.ravel()
    rows = head.postprocess(scores + dists, (64, 64), (1.0, 1.0))
    assert rows.shape == (1, 6)
    np.testing.assert_allclose(rows[0], [1, 0.9, 12, 4, 44, 36], atol=1e-4)
    # scale_factor maps back to the photo: half-size network input -> coordinates doubled
    rows2 = head.postprocess(scores + dists, (64, 64), (0.5, 0.5))
    np.testing.assert_allclose(rows2[0, 2:], [24, 8, 88, 72], atol=1e-3)


def test_bad_heads_and_classes_are_one_line_errors():
    with pytest.raises(EdgeShituError, match="cells per level"):
        GFLHead.from_output_shapes((320, 320), [(f"s{i}", (1, n, 80)) for i, n in enumerate([2704, 676, 169, 49])]
                                   + [(f"d{i}", (1, n, 32)) for i, n in enumerate([2704, 676, 169, 49])])
    with pytest.raises(EdgeShituError, match="score"):
        GFLHead.from_output_shapes((416, 416), [("out", (1, 512))])
    with pytest.raises(EdgeShituError, match="unknown"):
        resolve_classes(["bottel"], 80)
    with pytest.raises(EdgeShituError, match="out of range"):
        resolve_classes([80], 80)
    assert resolve_classes("bottle, 41,motorbike", 80) == [3, BOTTLE, 41]
    assert resolve_classes(None, 80) is None


def test_non_square_layout_detector_head():
    """PicoDet-LCNet layout (800x608, 10 classes): ceil grids, e.g. 13x10 cells at stride 64."""
    pytest.importorskip("onnx", reason="reading the ONNX file's outputs needs the onnx package (convert extra)")
    from edge_shitu.converters.model_input import inspect_model

    m = inspect_model(require_asset("models", "real_weights", "PicoDet-LCNet_layout_cdla.onnx"))
    head = GFLHead.from_output_shapes(m.input_size(), [(t.name, t.shape) for t in m.outputs], image=m.inputs[0].name)
    assert (head.num_classes, head.reg_max, head.grids[-1]) == (10, 7, (13, 10))
    assert head.outputs[:4] == [t.name for t in m.outputs[:4]]


# ----------------------------------------------------------------------------- the device runtime
def test_pipeline_detector_decodes_gfl_in_any_output_order(picodet_raw) -> None:
    """pipeline.Detector with a GFL head: the same rows as GFLHead.postprocess, whatever order the
    engine returns the maps in (onnx2tf / Paddle Lite may permute outputs)."""
    from edge_shitu.pipeline import Detector, order_gfl_outputs

    head, raw, feeds, _ = picodet_raw
    im_shape, sf = feeds["im_shape"][0], feeds["scale_factor"][0]
    want = head.postprocess(raw, im_shape, sf, min_score=0.3)
    det = Detector.__new__(Detector)
    det.head = head
    rng = np.random.default_rng(0)
    for _ in range(3):
        perm = [raw[i] for i in rng.permutation(len(raw))]
        np.testing.assert_array_equal(det.postprocess(perm, im_shape, sf, 0.3), want)
    with pytest.raises(EdgeShituError, match="GFL head"):
        order_gfl_outputs(raw[:-1], head)


def test_manifest_schema_accepts_gfl_head() -> None:
    from edge_shitu.manifest_schema import ARTIFACT, ManifestError, check

    head = GFLHead(input_size=(320, 320), num_classes=80, classes=["bottle"], class_agnostic=True).to_dict()
    entry = {"kind": "tflite:int8", "file": "det/det_int8.tflite", "sha256": "0" * 64, "bytes": 1,
             "details": {"head": head}}
    check(json.loads(json.dumps(entry)), ARTIFACT, "det.artifacts[0]")
    bad = {**entry, "details": {"head": {**head, "num_classes": 0}}}
    with pytest.raises(ManifestError):
        check(bad, ARTIFACT, "det.artifacts[0]")
