"""Model inputs other than Paddle legacy folders (issue 14): recognition by content, ONNX -> Paddle
(x2paddle, checked against onnxruntime), Paddle 3 / PIR -> ONNX (paddle2onnx 2.x in .venv-paddle3,
checked against Paddle 3 inference), preprocessing specs, and the one-line refusals.

Real weights and real photos only. Each real model is converted ONCE per session (session-scoped
fixtures) and shared: x2paddle on PicoDet-S ~20 s, paddle2onnx on PP-LCNet ~5 s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_shitu.errors import EdgeShituError
from tests.conftest import require_asset

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_shitu.converters.model_input import ACCEPTED, inspect_model
from edge_shitu.converters.preprocess_spec import parse_spec, spec_from_paddleclas_yml

PHOTOS = ("100.jpeg", "001.jpeg", "110.jpeg", "99.jpg")
PICODET = ("models", "real_weights", "picodet_s_coco", "picodet_s_416_coco.onnx")
OSNET = ("models", "real_weights", "osnet_x0_25_msmt17", "osnet_x0_25_msmt17.onnx")
PIR = ("models", "real_weights", "PP-LCNet_x0_25_textline_ori_infer")


def _photos() -> list[np.ndarray]:
    from edge_shitu.preprocess import load_image

    return [load_image(require_asset("drink", "test_images", n)) for n in PHOTOS]


def _need_x2paddle() -> None:
    from edge_shitu.converters.from_onnx import x2paddle_dir

    try:
        x2paddle_dir()
    except EdgeShituError as e:
        pytest.skip(str(e))


def _need_paddle3() -> None:
    from edge_shitu.converters.from_pir import paddle3_python

    try:
        paddle3_python()
    except EdgeShituError as e:
        pytest.skip(str(e))


# ----------------------------------------------------------------------------- session conversions
@pytest.fixture(scope="session")
def picodet_x2paddle(tmp_path_factory: pytest.TempPathFactory):
    """PicoDet-S 416 COCO ONNX -> Paddle program through x2paddle, checked on 4 real photos."""
    _need_x2paddle()
    from edge_shitu.converters.from_onnx import onnx_to_paddle

    model = inspect_model(require_asset(*PICODET))
    pre = parse_spec(None, "det", model_size=model.input_size()).det_preprocess()
    feeds = [{"image": pre(img)["image"]} for img in _photos()]
    return onnx_to_paddle(model.path, tmp_path_factory.mktemp("x2p") / "picodet_paddle", feeds)


@pytest.fixture(scope="session")
def textline_pir(tmp_path_factory: pytest.TempPathFactory):
    """PP-LCNet x0.25 text-line orientation (Paddle 3 folder) -> ONNX, checked on 4 real photos."""
    _need_paddle3()
    from edge_shitu.converters.from_pir import pir_to_onnx

    model = inspect_model(require_asset(*PIR))
    spec = parse_spec(spec_from_paddleclas_yml(model.config), "rec", model_size=model.input_size())
    pre = spec.rec_preprocess()
    feeds = [{"x": pre(img)} for img in _photos()]
    return pir_to_onnx(model.path, tmp_path_factory.mktemp("pir") / "textline.onnx", feeds), feeds


# ----------------------------------------------------------------------------- recognition by content
def test_picodet_onnx_is_a_detector():
    m = inspect_model(require_asset(*PICODET))
    assert (m.format, m.kind, m.params_file) == ("onnx", "det", None)
    assert m.input_size() == (416, 416) and m.inputs[0].name == "image"  # weights listed as inputs are skipped
    assert len(m.outputs) == 8 and "raw detector head" in m.kind_reason
    with pytest.raises(EdgeShituError, match="looks like a detector"):
        inspect_model(m.path, kind="rec")


def test_osnet_onnx_is_an_extractor():
    m = inspect_model(require_asset(*OSNET))
    assert (m.format, m.kind) == ("onnx", "rec")
    assert [(t.name, t.shape) for t in m.inputs] == [("images", (1, 3, 256, 128))]
    assert m.outputs[0].shape == (1, 512) and m.input_size() == (256, 128)
    # the folder holding one .onnx (and a LICENSE) is the same model
    assert inspect_model(m.path.parent).model_file == m.path


def test_paddle3_folder_and_legacy_folder():
    m = inspect_model(require_asset(*PIR))
    assert (m.format, m.kind) == ("pir", "rec")
    assert m.model_file.name == "inference.json" and m.params_file.name == "inference.pdiparams"
    assert m.inputs[0].name == "x" and m.input_size() == (80, 160) and m.config.name == "inference.yml"
    legacy = inspect_model(require_asset("models", "real_weights", "ch_ppocr_mobile_v2_cls_infer"))
    assert legacy.format == "paddle" and legacy.model_file.name == "inference.pdmodel"


def test_pp_shitu_style_detector_inputs_mean_det(tmp_path):
    """image + im_shape + scale_factor (PaddleDetection's export, PP-ShiTu's detector) -> det."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64]),
           helper.make_tensor_value_info("im_shape", TensorProto.FLOAT, [1, 2]),
           helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, [1, 2])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    g = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g", ins, [out])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "det.onnx")
    assert inspect_model(tmp_path / "det.onnx").kind == "det"


# ----------------------------------------------------------------------------- conversions
def test_x2paddle_program_matches_onnxruntime_on_real_photos(picodet_x2paddle):
    r = picodet_x2paddle
    assert r.samples >= 4 and len(r.max_abs) == 8
    assert r.worst <= 1e-4, r.max_abs
    assert r.model_file.is_file() and r.params_file.is_file()
    assert sorted(p.name for p in r.paddle_dir.iterdir()) == ["inference.pdiparams", "inference.pdmodel"]
    assert r.input_map == {"image": "x2paddle_image"}
    assert list(r.output_map) == [o.name for o in inspect_model(require_asset(*PICODET)).outputs]
    # the converted folder is itself an accepted input: a Paddle legacy folder
    assert inspect_model(r.paddle_dir).format == "paddle"
    assert not [p for p in r.paddle_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_pir_onnx_matches_paddle3_inference_on_real_photos(textline_pir):
    r, feeds = textline_pir
    assert r.samples >= 4 and r.worst <= 1e-4, r.max_abs
    assert r.versions["paddle"].startswith("3.")
    m = inspect_model(r.onnx_path)  # static batch 1 now, and still an extractor
    assert (m.format, m.kind) == ("onnx", "rec") and m.inputs[0].shape == (1, 3, 80, 160)
    # the reference is Paddle 3's own output: a real 2-way softmax per photo
    probs = np.concatenate([o[0] for o in r.reference])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    from edge_shitu.converters.from_onnx import onnxruntime_outputs

    _, again = onnxruntime_outputs(r.onnx_path, feeds[:1])
    np.testing.assert_allclose(again[0][0], r.reference[0][0], atol=1e-4)


# ----------------------------------------------------------------------------- bad inputs
def _one_line(e: pytest.ExceptionInfo, name: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and name in msg, msg
    return msg


def test_bad_inputs_are_one_line_naming_the_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    fake = tmp_path / "model.onnx"
    fake.write_bytes(os.urandom(4096))
    with pytest.raises(EdgeShituError) as e:
        inspect_model(fake)
    assert "not an ONNX model" in _one_line(e, "model.onnx")

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 32, 32])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "dyn.onnx")
    with pytest.raises(EdgeShituError) as e:
        inspect_model(tmp_path / "dyn.onnx")
    assert "dynamic batch" in _one_line(e, "dyn.onnx") and "--dim_value 1" in str(e.value)

    pir = tmp_path / "pir_no_params"
    pir.mkdir()
    shutil.copy(require_asset(*PIR, "inference.json"), pir / "inference.json")
    with pytest.raises(EdgeShituError) as e:
        inspect_model(pir)
    assert "no inference.pdiparams" in _one_line(e, "pir_no_params")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeShituError) as e:
        inspect_model(empty)
    assert ACCEPTED in _one_line(e, "empty")

    rnd = tmp_path / "weights.bin"
    rnd.write_bytes(os.urandom(1000))
    with pytest.raises(EdgeShituError) as e:
        inspect_model(rnd)
    assert ACCEPTED in _one_line(e, "weights.bin")

    with pytest.raises(EdgeShituError) as e:
        inspect_model(tmp_path / "missing.onnx")
    _one_line(e, "missing.onnx")


def test_bad_inputs_write_nothing(tmp_path):
    """The converters refuse before writing: no output, no temporary left behind."""
    from edge_shitu.converters.from_onnx import onnx_to_paddle
    from edge_shitu.converters.from_pir import pir_to_onnx

    fake = tmp_path / "in" / "broken.onnx"
    fake.parent.mkdir()
    fake.write_bytes(b"not a model at all" * 50)
    out = tmp_path / "out"
    out.mkdir()
    feeds = [{"image": np.zeros((1, 3, 416, 416), np.float32)}]
    with pytest.raises(EdgeShituError) as e:
        onnx_to_paddle(fake, out / "paddle", feeds)
    _one_line(e, "broken.onnx")
    pir = tmp_path / "in" / "pir"
    pir.mkdir()
    shutil.copy(require_asset(*PIR, "inference.json"), pir / "inference.json")
    with pytest.raises(EdgeShituError) as e:
        pir_to_onnx(pir, out / "m.onnx", [{"x": np.zeros((1, 3, 80, 160), np.float32)}])
    _one_line(e, "pir")
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- preprocessing specs
def test_preprocess_defaults_match_picodet_s_deploy():
    """Defaults: stretch to the model's input, x/255, ImageNet mean/std, RGB, bilinear."""
    spec = parse_spec(None, "det", model_size=(416, 416))
    ops = spec.runtime_dict()["ops"]
    assert ops[0] == {"type": "Resize", "target_size": [416, 416], "keep_ratio": False, "interp": 1}
    assert ops[1]["mean"] == [0.485, 0.456, 0.406] and ops[1]["is_scale"] is True
    rec = parse_spec(None, "rec", model_size=(256, 128)).runtime_dict()
    assert rec["size"] == [128, 256] and rec["fit"] == "stretch"  # RecPreprocess size is (w, h)


def test_preprocess_flags_yaml_and_round_trip(tmp_path):
    from edge_shitu.preprocess import DetPreprocess, RecPreprocess

    y = tmp_path / "pre.yml"
    y.write_text("size: 224\nfit: letterbox\nmean: [0.5, 0.5, 0.5]\nstd: [0.5, 0.5, 0.5]\npad_value: 114\n")
    a = parse_spec(str(y), "rec")
    b = parse_spec("size=224x224,fit=letterbox,mean=0.5/0.5/0.5,std=0.5 0.5 0.5,pad_value=114", "rec")
    assert a == b
    rp = RecPreprocess.from_dict(a.runtime_dict())
    assert rp.fit == "letterbox" and rp.pad_value == 114 and rp.mean == (0.5, 0.5, 0.5)
    # bgr: mean/std given in the model's order are stored in the runtime's RGB order
    bgr = parse_spec("channel_order=bgr,mean=0.1/0.2/0.3", "rec")
    assert bgr.needs_bgr_input and bgr.runtime_dict()["mean"] == [0.3, 0.2, 0.1]
    assert parse_spec("channel_order=bgr", "rec").runtime_dict()["mean"] == [0.485, 0.456, 0.406]
    # a 0-255 model (scale 1) gives the same detector tensor as the folded x/255 form
    img = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    d255 = parse_spec("scale=1,mean=123.675/116.28/103.53,std=58.395/57.12/57.375,fit=letterbox", "det",
                      model_size=(64, 64))
    d1 = parse_spec("fit=letterbox", "det", model_size=(64, 64))
    t255 = DetPreprocess.from_dict(d255.runtime_dict())(img)
    t1 = DetPreprocess.from_dict(d1.runtime_dict())(img)
    assert t1["image"].shape == (1, 3, 64, 64)
    np.testing.assert_allclose(t255["image"], t1["image"], atol=1e-5)
    # any scale folds exactly: x / 127.5 - 1 maps 0 -> -1 and 255 -> 1
    half = parse_spec("scale=1/127.5,mean=1/1/1,std=1/1/1", "det", model_size=(32, 32)).det_preprocess()
    flat = np.zeros((40, 40, 3), np.uint8)
    flat[:, 20:] = 255
    t = half(flat)["image"]
    np.testing.assert_allclose([t.min(), t.max()], [-1.0, 1.0], atol=1e-5)


def test_paddlex_inference_yml_gives_the_spec():
    m = inspect_model(require_asset(*PIR))
    keys = spec_from_paddleclas_yml(m.config)
    assert keys["size"] == [80, 160]  # ResizeImage size [160, 80] is (w, h)
    assert parse_spec(keys, "rec", model_size=m.input_size()).size == (80, 160)


@pytest.mark.parametrize("flags,match", [
    ("size=0", "positive"), ("fit=crop", "fit"), ("mean=1/2", "3 values"), ("std=1/0/1", "positive"),
    ("channel_order=gbr", "channel_order"), ("colour=red", "unknown preprocess keys"), ("size", "key=value"),
    ("fit=keep-ratio", "keep-ratio is for detectors"), ("size=100x50", "does not match"),
])
def test_bad_preprocess_flags(flags, match):
    with pytest.raises(EdgeShituError, match=match):
        parse_spec(flags, "rec", model_size=(224, 224) if "size=100" in flags else None)


def test_missing_preprocess_file(tmp_path: Path):
    with pytest.raises(EdgeShituError, match="does not exist"):
        parse_spec(str(tmp_path / "nope.yml"), "det")


def test_bgr_model_takes_rgb_after_the_input_flip(tmp_path):
    """channel_order bgr: the model gets a channel Gather, the runtime keeps feeding RGB; exact."""
    from edge_shitu.converters.from_onnx import onnxruntime_outputs, rgb_input_for_bgr_model

    src = require_asset(*OSNET)
    spec = parse_spec("channel_order=bgr", "rec", model_size=(256, 128))
    x = spec.rec_preprocess()(_photos()[0])  # RGB tensor, as the device makes it
    flipped = rgb_input_for_bgr_model(src, tmp_path / "osnet_rgb.onnx")
    (want,), = onnxruntime_outputs(src, [{"images": np.ascontiguousarray(x[:, ::-1])}])[1]
    (got,), = onnxruntime_outputs(flipped, [{"images": x}])[1]
    np.testing.assert_array_equal(got, want)
    assert inspect_model(flipped).kind == "rec" and [p.name for p in tmp_path.iterdir()] == ["osnet_rgb.onnx"]


def test_a_missed_gate_writes_nothing(tmp_path, textline_pir):
    """A conversion that misses its gate (here: a zero tolerance) leaves neither file nor temporary."""
    from edge_shitu.converters.from_pir import pir_to_onnx

    _, feeds = textline_pir
    with pytest.raises(EdgeShituError, match="differs from Paddle 3 inference") as e:
        pir_to_onnx(require_asset(*PIR), tmp_path / "m.onnx", feeds[:1], tolerance=0.0)
    _one_line(e, "PP-LCNet_x0_25_textline_ori_infer")
    assert list(tmp_path.iterdir()) == []
