"""Pruning and post-training quantization on real graphs and real photos (integration tier).

- PP-ShiTu v1 extractor (real graph, synthesized weights calibrated on drink photos): pruning
  under a fidelity budget, uniform pruning, PTQ; fidelity against FP32 on held-out photos.
- PP-PicoDet mainbody detector (real graph, synthesized weights): PTQ and pruning run through
  its NMS while-loop and three inputs; fidelity on the raw head outputs.
- PP-OCRv4 text detector with REAL weights: PTQ calibrated on real drink shelf photos, cosine
  of its probability map against FP32 (the figure that says what int8 does to trained weights).

Every figure is printed (run with -s) and asserted against a floor set a bit below what was
measured on a 2-core VM, so a regression, not noise, fails the test.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_shitu.assets import DRINK_GALLERY, DRINK_TEST_IMAGES, REAL_WEIGHTS, SHITU_GRAPHS
from edge_shitu.preprocess import cv2_resize, load_image
from tests.conftest import require_asset

pytestmark = pytest.mark.integration

V1 = "general_PPLCNet_x2_5_lite_v1.0_infer"
DET = "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"


def _photos(n: int, start: int, step: int) -> list[np.ndarray]:
    files = sorted(require_asset(*DRINK_GALLERY).glob("*/*.jpg"))[start::step][:n]
    assert len(files) == n
    return [load_image(f) for f in files]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edge_shitu.converters.synth_weights import synthesize

    out = tmp_path_factory.mktemp("synth")
    calib = _photos(6, 0, 150)
    return {
        V1: synthesize(require_asset(*SHITU_GRAPHS, V1), out / V1, calib_images=calib).out_dir,
        DET: synthesize(require_asset(*SHITU_GRAPHS, DET), out / DET, calib_images=calib[:3]).out_dir,
    }


def _feeds(model_dir: Path, imgs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    from edge_shitu.converters.synth_weights import default_feeds

    return default_feeds(model_dir, imgs)


def _extractor_cosine(ref_dir: Path, test_dir: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    from edge_shitu.converters.paddle_model import mean_row_cosine
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    a = PaddleBackend(ref_dir, threads=2)
    b = PaddleBackend(test_dir, threads=2)
    fa = np.concatenate([a.run(f)[0] for f in feeds])
    fb = np.concatenate([b.run(f)[0] for f in feeds])
    assert fa.shape == fb.shape and np.isfinite(fb).all()
    return mean_row_cosine(fa, fb)


# ----------------------------------------------------------------------------- PTQ

def test_ptq_extractor(models: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.paddle_model import load_program
    from edge_shitu.converters.quantize import quantize

    src = models[V1]
    calib = _feeds(src, _photos(16, 3, 53))
    held_out = _feeds(src, _photos(10, 11, 89))
    t = time.perf_counter()
    rep = quantize(src, tmp_path / "int8", calib, algo="avg")
    secs = time.perf_counter() - t
    cos = _extractor_cosine(src, rep.out_dir, held_out)
    print(f"\nPTQ v1 extractor (synthetic weights, 16 calib photos, avg): cosine {cos:.4f} on 10 held-out "
          f"photos, {rep.n_quant_ops} ops quantized, {secs:.1f} s")
    assert rep.n_quant_ops == 32  # 19 conv2d + 13 depthwise_conv2d
    prog, _, _ = load_program(rep.out_dir)
    mm = next(op for op in prog.global_block().ops if op.type == "matmul")
    assert not any("quant" in a for a in mm.input_arg_names)  # the FC stays float (Lite x86 NaN)
    assert cos > 0.94


def test_ptq_extractor_onnx_format(models: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.quantize import quantize

    src = models[V1]
    rep = quantize(src, tmp_path / "int8", _feeds(src, _photos(8, 3, 53)), algo="avg", onnx_format=True)
    assert rep.op_counts.get("quantize_linear", 0) > 0 and rep.n_quant_ops == 32
    cos = _extractor_cosine(src, rep.out_dir, _feeds(src, _photos(6, 11, 89)))
    print(f"\nPTQ v1 extractor, onnx_format: cosine {cos:.4f}")
    assert cos > 0.9


def test_ptq_detector_three_inputs(models: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.paddle_model import cosine, head_outputs, load_model
    from edge_shitu.converters.quantize import quantize
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    src = models[DET]
    calib = _feeds(src, _photos(3, 3, 53))
    assert set(calib[0]) == {"image", "im_shape", "scale_factor"}
    t = time.perf_counter()
    rep = quantize(src, tmp_path / "int8", calib, algo="avg")
    secs = time.perf_counter() - t
    assert rep.n_quant_ops == 57 + 29 and (rep.out_dir / "infer_cfg.yml").is_file()
    feeds = _feeds(src, _photos(2, 11, 89))
    boxes, num = PaddleBackend(rep.out_dir, threads=2).run(feeds[0])
    assert int(num[0]) == len(boxes) > 0 and np.isfinite(boxes).all()
    ref, q = load_model(src), load_model(rep.out_dir)
    heads = head_outputs(ref.program)
    cos = float(np.mean([np.mean([cosine(a, b) for a, b in zip(ref.run(f, fetch=heads), q.run(f, fetch=heads))])
                         for f in feeds]))
    print(f"\nPTQ detector (synthetic weights, 3 calib photos, avg): head-output cosine {cos:.4f}, {secs:.1f} s")
    assert cos > 0.5  # synthetic random weights amplify perturbations: see the report


def _ocr_feed(img: np.ndarray, side: int = 640) -> dict[str, np.ndarray]:
    """PaddleOCR det preprocessing at a fixed size: BGR, x/255, ImageNet mean/std, CHW."""
    x = cv2_resize(img, (side, side), interp=1)[:, :, ::-1].astype(np.float32) / 255.0
    x = (x - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    return {"x": np.ascontiguousarray(x.transpose(2, 0, 1))[None]}


def test_ptq_real_weights_ocr_detector(tmp_path: Path) -> None:
    from edge_shitu.converters.paddle_model import cosine
    from edge_shitu.converters.quantize import quantize
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    src = require_asset(*REAL_WEIGHTS, "ch_PP-OCRv4_det_infer")
    shelf = sorted(require_asset(*DRINK_TEST_IMAGES).glob("*"))
    assert len(shelf) >= 12
    calib = [_ocr_feed(load_image(p)) for p in shelf[6:]]
    held_out = [_ocr_feed(load_image(p)) for p in shelf[:6]]
    t = time.perf_counter()
    rep = quantize(src, tmp_path / "int8", calib, algo="avg")
    secs = time.perf_counter() - t
    ref = PaddleBackend(src, threads=2)
    q = PaddleBackend(rep.out_dir, threads=2)
    cos, iou = [], []
    for f in held_out:
        a, b = ref.run(f)[0], q.run(f)[0]
        cos.append(cosine(a, b))
        ma, mb = a > 0.3, b > 0.3  # DB post-processing threshold
        iou.append((ma & mb).sum() / max((ma | mb).sum(), 1))
    print(f"\nPTQ PP-OCRv4 det (REAL weights, {len(calib)} shelf photos, avg): prob-map cosine "
          f"{np.mean(cos):.4f} (min {np.min(cos):.4f}), text-mask IoU {np.mean(iou):.4f}, "
          f"{rep.n_quant_ops} ops quantized, {secs:.1f} s")
    assert np.mean(cos) > 0.95 and np.mean(iou) > 0.85


# ----------------------------------------------------------------------------- pruning

def test_prune_extractor_within_budget(models: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.prune import prune
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    src = models[V1]
    calib = _feeds(src, _photos(4, 5, 61))
    held_out = _feeds(src, _photos(8, 17, 83))
    rep = prune(src, tmp_path / "pruned", calib, eval_feeds=held_out, budget=0.99)
    print(f"\nprune v1 extractor (synthetic weights, budget 0.99 on 4 photos): fidelity {rep.fidelity:.4f}, "
          f"held-out {rep.eval_fidelity:.4f}; MACs {rep.macs_before / 1e6:.0f}M -> {rep.macs_after / 1e6:.0f}M, "
          f"params {rep.params_before / 1e6:.2f}M -> {rep.params_after / 1e6:.2f}M; ratios {rep.ratios}; "
          f"{len(rep.sensitivities)} layers measured in {rep.n_evals} evals, {rep.seconds:.1f} s")
    assert rep.mode == "sensitivity" and rep.fidelity >= 0.99
    assert rep.macs_after <= rep.macs_before and rep.params_after <= rep.params_before
    assert rep.sensitivities and all(s.loss for s in rep.sensitivities)
    assert rep.seconds < 150
    out = PaddleBackend(rep.out_dir).run(held_out[0])[0]
    assert out.shape == (1, 512) and np.isfinite(out).all()


def test_prune_extractor_uniform_and_none(models: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.prune import prune

    src = models[V1]
    calib = _feeds(src, _photos(3, 5, 61))
    rep = prune(src, tmp_path / "u", calib, prune_ratio=0.2)
    cos = _extractor_cosine(src, rep.out_dir, calib)
    print(f"\nuniform 0.2 prune of v1 extractor: fidelity {rep.fidelity:.4f} (re-measured {cos:.4f}), "
          f"MACs -{rep.macs_reduction:.1%}, params -{rep.params_reduction:.1%}, skipped {rep.skipped}")
    assert rep.mode == "uniform" and len(rep.ratios) >= 15
    assert 0.25 < rep.macs_reduction < 0.5 and rep.params_reduction > 0.2
    assert abs(cos - rep.fidelity) < 1e-3 and cos < 0.999
    none = prune(src, tmp_path / "n", calib, no_prune=True)
    assert none.mode == "none" and none.macs_after == none.macs_before and none.fidelity > 0.9999


def test_prune_detector_runs_through_nms_loop(models: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.prune import prune
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    src = models[DET]
    calib = _feeds(src, _photos(2, 5, 61))
    rep = prune(src, tmp_path / "p", calib, prune_ratio=0.1)
    print(f"\nuniform 0.1 prune of the detector: head fidelity {rep.fidelity:.4f}, MACs -{rep.macs_reduction:.1%}, "
          f"{len(rep.ratios)} convs pruned, {len(rep.skipped)} not prunable, {rep.seconds:.1f} s")
    assert rep.macs_reduction > 0.05 and len(rep.skipped) >= 4  # the 4 head convs feed split/NMS
    boxes, num = PaddleBackend(rep.out_dir, threads=2).run(calib[0])
    assert int(num[0]) == len(boxes) > 0 and np.isfinite(boxes).all()
    assert (rep.out_dir / "infer_cfg.yml").is_file()
