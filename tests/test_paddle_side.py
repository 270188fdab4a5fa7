"""Fast tier for the Paddle side: image decoding, preprocessing, model loading errors, weight
synthesis on the real PP-ShiTu graphs, params/FLOPs counting.

Odd images are generated in tmp_path; models go to tmp_path; real assets come only through
conftest's ``require_asset``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_shitu.assets import DRINK_GALLERY, REAL_WEIGHTS, SHITU_GRAPHS
from edge_shitu.errors import EdgeShituError
from edge_shitu.preprocess import DetPreprocess, RecPreprocess, cv2_resize, decode_image, load_image
from tests.conftest import require_asset

V1 = "general_PPLCNet_x2_5_lite_v1.0_infer"
V2 = "general_PPLCNetV2_base_pretrained_v1.0_infer"
DET = "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"


def _gallery_images(n: int, start: int = 0, step: int = 97) -> list[np.ndarray]:
    root = require_asset(*DRINK_GALLERY)
    files = sorted(root.glob("*/*.jpg"))[start::step][:n]
    assert len(files) == n
    return [load_image(f) for f in files]


# ----------------------------------------------------------------------------- decoding

def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_common_modes(tmp_path: Path) -> None:
    arr = _rgb()
    cases = {
        "gray.png": Image.fromarray(arr[:, :, 0], "L"),
        "bilevel.png": Image.fromarray(arr[:, :, 0] > 128),
        "rgb.jpg": Image.fromarray(arr),
        "cmyk.jpg": Image.fromarray(arr).convert("CMYK"),
        "palette.gif": Image.fromarray(arr).convert("P"),
        "la.png": Image.fromarray(arr).convert("LA"),
        "rgb16.tif": Image.fromarray(arr),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8, name
    g = load_image(tmp_path / "gray.png")
    assert (g[:, :, 0] == arr[:, :, 0]).all() and (g[:, :, 0] == g[:, :, 2]).all()


def test_alpha_is_flattened_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert (out[:4] == [200, 0, 0]).all()
    assert (out[4:] == [255, 255, 255]).all()
    # a palette image with a transparent index behaves the same
    p = Image.fromarray(rgba, "RGBA").convert("P")
    p.info["transparency"] = p.getpixel((0, 7))
    p.save(tmp_path / "p.png", transparency=p.getpixel((0, 7)))
    assert (load_image(tmp_path / "p.png")[7, 0] == [255, 255, 255]).all()


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # mode I;16
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 100 < out[4, 0, 0] < 160  # mid-grey stays mid-grey (Pillow's convert would give 255)


def test_exif_orientation(tmp_path: Path) -> None:
    arr = np.zeros((10, 40, 3), np.uint8)
    arr[:, :5] = 255  # white band on the left
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # left band is now on top


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "directory"])
def test_bad_images_raise_one_line(tmp_path: Path, kind: str) -> None:
    p = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(_rgb(200, 200)).save(buf, "JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    elif kind == "garbage":
        p.write_bytes(b"this is not an image at all" * 10)
    elif kind == "directory":
        p.mkdir()
    with pytest.raises(EdgeShituError) as ei:
        load_image(p)
    msg = str(ei.value)
    assert "\n" not in msg and p.name in msg


def test_decode_bytes_matches_file(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "x.png")
    assert (decode_image((tmp_path / "x.png").read_bytes()) == load_image(tmp_path / "x.png")).all()


# ----------------------------------------------------------------------------- resizing

@pytest.mark.parametrize("interp", [0, 1, 2, 3, 4])
def test_cv2_resize_matches_opencv(interp: int) -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(interp)
    img = rng.integers(0, 256, (57, 83, 3), dtype=np.uint8)
    for size in [(224, 224), (31, 17), (83, 200), (7, 57)]:
        ours = cv2_resize(img, size, interp=interp, impl="numpy")
        ref = cv2.resize(img, size, interpolation=interp)
        assert ours.shape == ref.shape
        assert np.abs(ours.astype(int) - ref).max() <= 1, (interp, size)
    for fx, fy in [(0.37, 0.37), (2.3, 0.4), (640 / 83, 640 / 57)]:
        ours = cv2_resize(img, None, fx=fx, fy=fy, interp=interp, impl="numpy")
        ref = cv2.resize(img, None, fx=fx, fy=fy, interpolation=interp)
        assert ours.shape == ref.shape
        assert np.abs(ours.astype(int) - ref).max() <= 1, (interp, fx, fy)
    big = rng.integers(0, 256, (601, 899, 3), dtype=np.uint8)  # strong downscales read a subset of pixels
    for size in [(224, 224), (64, 37), (899, 100)]:
        ours = cv2_resize(big, size, interp=interp, impl="numpy")
        assert np.abs(ours.astype(int) - cv2.resize(big, size, interpolation=interp)).max() <= 1, (interp, size)


# ----------------------------------------------------------------------------- model preprocess

def _det_cfg() -> Path:
    return require_asset(*SHITU_GRAPHS, DET, "infer_cfg.yml")


def test_det_preprocess_from_real_cfg() -> None:
    det = DetPreprocess.from_infer_cfg(_det_cfg())
    assert det.input_size == (640, 640)
    img = _rgb(300, 500)
    f = det(img)
    assert f["image"].shape == (1, 3, 640, 640) and f["image"].dtype == np.float32
    np.testing.assert_allclose(f["im_shape"], [[640, 640]])
    np.testing.assert_allclose(f["scale_factor"], [[640 / 300, 640 / 500]], rtol=1e-6)
    assert DetPreprocess.from_dict(det.to_dict()).ops == det.ops


def test_det_preprocess_matches_paddledetection_semantics() -> None:
    """The same ops written with cv2 as PaddleDetection's deploy/python/preprocess.py does."""
    cv2 = pytest.importorskip("cv2")
    img = _rgb(123, 77)
    det = DetPreprocess.from_infer_cfg(_det_cfg())
    ref = cv2.resize(img, None, None, fx=640 / 77, fy=640 / 123, interpolation=2).astype(np.float32) / 255.0
    ref = (ref - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    ref = ref.transpose(2, 0, 1)[None]
    assert np.abs(det(img)["image"] - ref).max() < 1.01 / 255 / 0.224


def test_det_keep_ratio_and_pad_stride() -> None:
    det = DetPreprocess([
        {"type": "Resize", "target_size": [320, 480], "keep_ratio": True, "interp": 1},
        {"type": "NormalizeImage", "is_scale": True, "mean": [0, 0, 0], "std": [1, 1, 1]},
        {"type": "Permute"},
        {"type": "PadStride", "stride": 32},
    ])
    f = det(_rgb(100, 250))
    # short side 100 -> 320 would make the long side 800 > 480: scale by the long side instead
    np.testing.assert_allclose(f["scale_factor"], [[480 / 250, 480 / 250]], rtol=1e-6)
    np.testing.assert_allclose(f["im_shape"], [[192, 480]])
    assert f["image"].shape == (1, 3, 192, 480)  # 192 and 480 are already multiples of 32
    f = det(_rgb(101, 250))
    assert f["image"].shape[2] % 32 == 0 and f["image"][0, :, int(f["im_shape"][0, 0]):].max() == 0


def test_det_preprocess_rejects_unknown_ops(tmp_path: Path) -> None:
    with pytest.raises(EdgeShituError, match="LetterBoxResize"):
        DetPreprocess.from_infer_cfg({"Preprocess": [{"type": "LetterBoxResize", "target_size": 640}]})
    with pytest.raises(EdgeShituError, match="does not exist"):
        DetPreprocess.from_infer_cfg(tmp_path / "nope.yml")


def test_rec_preprocess_matches_paddleclas() -> None:
    cv2 = pytest.importorskip("cv2")
    img = _rgb(300, 200)
    rec = RecPreprocess()
    x = rec(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    ref = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    ref = ((ref - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])).transpose(2, 0, 1)
    assert np.abs(x[0] - ref).max() < 1.01 / 255 / 0.224
    back = RecPreprocess.from_dict(rec.to_dict())
    assert back == rec and (back(img) == x).all()
    with pytest.raises(EdgeShituError):
        RecPreprocess.from_dict({"kind": "rec", "size": [224, 224], "bogus": 1})
    assert RecPreprocess(resize="pil")(img).shape == (1, 3, 224, 224)


# ----------------------------------------------------------------------------- loading

def test_load_errors(tmp_path: Path) -> None:
    from edge_shitu.converters.paddle_model import load_model

    with pytest.raises(EdgeShituError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeShituError, match=r"no inference\.pdmodel"):
        load_model(tmp_path / "empty")
    pir = tmp_path / "pir"
    pir.mkdir()
    (pir / "inference.json").write_text("{}")
    (pir / "inference.pdiparams").write_bytes(b"x")
    with pytest.raises(EdgeShituError, match="PIR") as ei:
        load_model(pir)
    assert "FLAGS_enable_pir_api=0" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(EdgeShituError, match="synthesize"):
        load_model(require_asset(*SHITU_GRAPHS, V1))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "inference.pdmodel").write_bytes(os.urandom(64))
    (bad / "inference.pdiparams").write_bytes(b"x")
    with pytest.raises(EdgeShituError, match=r"ProgramDesc|feed/fetch"):
        load_model(bad)


def test_load_real_pir_folder_message() -> None:
    from edge_shitu.converters.paddle_model import load_model

    with pytest.raises(EdgeShituError, match="Paddle 3 PIR"):
        load_model(require_asset(*REAL_WEIGHTS, "PP-LCNet_x0_25_textline_ori_infer"))


def test_truncated_params(tmp_path: Path) -> None:
    from edge_shitu.converters.paddle_model import load_model

    src = require_asset(*REAL_WEIGHTS, "ch_ppocr_mobile_v2_cls_infer")
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    data = (dst / "inference.pdiparams").read_bytes()
    (dst / "inference.pdiparams").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeShituError, match="does not match") as ei:
        load_model(dst)
    assert "\n" not in str(ei.value)


def test_real_model_roundtrip(tmp_path: Path) -> None:
    """load -> save -> Paddle Inference gives the same outputs as the original files."""
    from edge_shitu.converters.paddle_model import load_model, save_model
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    src = require_asset(*REAL_WEIGHTS, "ch_ppocr_mobile_v2_cls_infer")
    m = load_model(src)
    save_model(m, tmp_path / "copy")
    x = {"x": np.random.default_rng(0).standard_normal((1, 3, 48, 192)).astype(np.float32)}
    a = PaddleBackend(src).run(x)[0]
    b = PaddleBackend(tmp_path / "copy").run(x)[0]
    c = m.run(x)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-4)


# ----------------------------------------------------------------------------- counting

def test_params_and_flops_of_real_graphs() -> None:
    from edge_shitu.converters.paddle_model import count_flops, count_params, load_program

    v1, _, _ = load_program(require_asset(*SHITU_GRAPHS, V1))
    # PaddleClas: PP-LCNet x2.5 = 9.04M params / 906M FLOPs(=MACs) with a 1280x1000 classifier;
    # the v1 extractor has a 1280x512 FC instead.
    assert count_params(v1) == 8_419_792
    fl = count_flops(v1, {"x": [1, 3, 224, 224]})
    assert fl.by_type["matmul"] == 1280 * 512
    assert 0.97 < fl.macs / (906e6 - 1280 * 1000 + 1280 * 512) < 1.01
    assert fl.flops == 2 * fl.macs
    # MACs scale with the pixel count (all convs, no global ops before the FC)
    fl2 = count_flops(v1, {"x": [1, 3, 448, 448]})
    assert abs((fl2.macs - fl.by_type["matmul"]) / (fl.macs - fl.by_type["matmul"]) - 4) < 0.01
    det, _, _ = load_program(require_asset(*SHITU_GRAPHS, DET))
    d = count_flops(det, {"image": [1, 3, 640, 640], "im_shape": [1, 2], "scale_factor": [1, 2]})
    assert d.by_type["conv2d"] > 7e9 and d.by_type["depthwise_conv2d"] > 3e8


# ----------------------------------------------------------------------------- synthesis

@pytest.fixture(scope="module")
def synth_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edge_shitu.converters.synth_weights import synthesize

    calib = _gallery_images(4, start=0, step=150)
    out = tmp_path_factory.mktemp("synth")
    res = {}
    for name in (V1, V2, DET):
        graph = require_asset(*SHITU_GRAPHS, name)
        res[name] = synthesize(graph, out / name, seed=0, calib_images=calib[:2] if name == DET else calib).out_dir
    return res


def test_synth_files_and_graph_verbatim(synth_models: dict[str, Path]) -> None:
    for name, d in synth_models.items():
        graph = require_asset(*SHITU_GRAPHS, name)
        assert (d / "inference.pdmodel").read_bytes() == (graph / "inference.pdmodel").read_bytes()
        assert (d / "inference.pdiparams").stat().st_size > 1e6
    assert (synth_models[DET] / "infer_cfg.yml").is_file()


def test_synth_is_deterministic(tmp_path: Path, synth_models: dict[str, Path]) -> None:
    from edge_shitu.converters.synth_weights import synthesize

    calib = _gallery_images(4, start=0, step=150)
    synthesize(require_asset(*SHITU_GRAPHS, V2), tmp_path / "again", seed=0, calib_images=calib)
    synthesize(require_asset(*SHITU_GRAPHS, V2), tmp_path / "seed1", seed=1, calib_images=calib)

    def digest(p: Path) -> str:
        return hashlib.sha256((p / "inference.pdiparams").read_bytes()).hexdigest()

    assert digest(tmp_path / "again") == digest(synth_models[V2])
    assert digest(tmp_path / "seed1") != digest(synth_models[V2])


def test_synth_params_match_declared_shapes(synth_models: dict[str, Path]) -> None:
    import pickle

    from edge_shitu.converters.paddle_model import count_params, load_model

    m = load_model(synth_models[V1])
    info = pickle.loads((require_asset(*SHITU_GRAPHS, V1) / "inference.pdiparams.info").read_bytes())
    blk = m.program.global_block()
    for name in info:
        assert tuple(m.get_param(name).shape) == tuple(blk.var(name).shape)
    assert count_params(m) == 8_419_792
    for name in info:  # batch-norm variances must stay positive
        if name.endswith(".w_2"):
            assert m.get_param(name).min() > 0


@pytest.mark.parametrize("name", [V1, V2])
def test_synth_extractor_outputs_are_sane(synth_models: dict[str, Path], name: str) -> None:
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    run = PaddleBackend(synth_models[name], threads=1)
    rec = RecPreprocess()
    feats = np.concatenate([run.run({"x": rec(im)})[0] for im in _gallery_images(6, start=7)])
    assert feats.shape == (6, 512) and np.isfinite(feats).all()
    assert 1e-2 < feats.std() < 1e3
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    off = (fn @ fn.T)[~np.eye(6, dtype=bool)]
    assert off.mean() < 0.9 and off.min() < 0.7  # different photos give different features


def test_synth_detector_outputs_are_sane(synth_models: dict[str, Path]) -> None:
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    run = PaddleBackend(synth_models[DET], threads=2)
    det = DetPreprocess.from_infer_cfg(synth_models[DET] / "infer_cfg.yml")
    img = _gallery_images(1, start=7)[0]
    boxes, num = run.run(det(img))
    assert int(num[0]) == len(boxes) > 0 and np.isfinite(boxes).all()
    scores = boxes[:, 1]
    assert 0.0 < scores.min() < scores.max() < 1.0 + 1e-6 and np.unique(scores.round(4)).size > 5
    h, w = img.shape[:2]
    assert (boxes[:, 4] >= boxes[:, 2]).all() and (boxes[:, 5] >= boxes[:, 3]).all()
    assert boxes[:, 2].min() >= 0 and boxes[:, 4].max() <= w + 1e-3 and boxes[:, 5].max() <= h + 1e-3
    assert ((boxes[:, 4] - boxes[:, 2]) * (boxes[:, 5] - boxes[:, 3]) > 1).mean() > 0.5  # not degenerate
