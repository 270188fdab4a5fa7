"""Artifact exporters and backends: .nb (arm/x86), ONNX, TFLite, and the verifier that gates them.

Fast tier: the XShape ProgramDesc fix on a tiny program (and opt no longer crashing on it), the
structural check of arm ``.nb`` files, the refusal to run arm files on x86, feed matching, and
the box matcher / NMS / gate of ``converters/verify.py`` on synthetic data.

Integration tier (``-m integration``): the real-weight ch_ppocr_mobile_v2_cls (its pooled
200-d feature) through every artifact, and the PP-ShiTu v1 extractor graph with synthetic
weights. Figures are printed (run with ``-s``) so the report can quote them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_asset

from edge_shitu.converters.verify import (
    BoxFidelity,
    Fidelity,
    OutputFidelity,
    check,
    compare_boxes,
    compare_tensors,
    match_boxes,
    nms,
    thresholds_for,
)
from edge_shitu.errors import CorruptFileError, EdgeShituError
from edge_shitu.runtimes.backend import TensorSpec, infer_kind, match_feeds

ROOT = Path(__file__).resolve().parent.parent


# ============================================================================ helpers
def _save_tiny(dst: Path, seed: int = 0) -> Path:
    """A tiny program saved by paddle.jit.save 2.6 (transpose2 + flatten WITHOUT XShape)."""
    code = f"""
import paddle
class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.act = paddle.nn.Hardswish()
        self.fc = paddle.nn.Linear(8 * 4 * 4, 10)
    def forward(self, x):
        y = self.act(self.conv(x))
        y = paddle.transpose(y, [0, 1, 3, 2])
        return self.fc(paddle.flatten(y, 1))
paddle.seed({seed})
net = Net(); net.eval()
paddle.jit.save(net, r"{dst / 'inference'}",
                input_spec=[paddle.static.InputSpec([1, 3, 4, 4], "float32", "x")])
"""
    dst.mkdir(parents=True, exist_ok=True)
    script = dst / "make_tiny.py"  # jit.save needs the Layer's source file (no `python -c`)
    script.write_text(code)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=300)
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("paddle")
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_nb(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("paddlelite")
    from edge_shitu.converters.export_nb import to_nb

    out = tmp_path_factory.mktemp("nb")
    feeds = [{"x": np.random.default_rng(i).random((1, 3, 4, 4), dtype=np.float32)} for i in range(3)]
    to_nb(tiny, out / "arm.nb", "arm", verify_feeds=feeds, twin_out=out / "twin_x86.nb")
    to_nb(tiny, out / "x86.nb", "x86", verify_feeds=feeds)
    return {"arm": out / "arm.nb", "x86": out / "x86.nb", "twin": out / "twin_x86.nb"}


def _ops_without_xshape(pdmodel: Path) -> list[str]:
    from paddle.base.proto import framework_pb2

    prog = framework_pb2.ProgramDesc()
    prog.ParseFromString(pdmodel.read_bytes())
    return [op.type for op in prog.blocks[0].ops if op.type in ("transpose2", "flatten_contiguous_range")
            and not any(o.parameter == "XShape" and len(o.arguments) for o in op.outputs)]


# ============================================================================ fast: backend plumbing
def test_backend_module_is_light() -> None:
    """The device runtime imports the interface with numpy only: no paddle/tf/onnx at import."""
    code = ("import sys, edge_shitu.runtimes.backend as b; "
            "bad = [m for m in ('paddle', 'tensorflow', 'onnxruntime', 'paddlelite', 'onnx') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_match_feeds_by_name_norm_shape_and_position() -> None:
    a = np.zeros((1, 3, 8, 8), np.float32)
    b = np.ones((1, 2), np.float32)
    specs = [TensorSpec("serving_default_image:0", (1, 8, 8, 3), "float32", "NHWC"),
             TensorSpec("im_shape", (1, 2), "float32")]
    got = match_feeds(specs, {"im_shape": b, "image": a})
    assert got[0] is not None and got[0].shape == (1, 3, 8, 8) and got[1].shape == (1, 2)
    # renamed beyond recognition: matched by (NCHW) shape
    got = match_feeds([TensorSpec("input_1", (1, 8, 8, 3), "float32", "NHWC")], {"x": a})
    assert got[0].shape == (1, 3, 8, 8)
    with pytest.raises(EdgeShituError, match="input"):
        match_feeds(specs, {"image": a})


def test_pooling_block_finds_the_global_pooling_head() -> None:
    """int8 keeps exactly these ops float: GeM's clamp/cube/mean, an average pool, nothing in a detector."""
    from edge_shitu.converters.export_tflite import pooling_block

    conv = [("CONV_2D", "c1", [1, 10, 10, 1280], [[1, 10, 10, 320]])]
    gem = [*conv, ("MINIMUM", "min", [1, 10, 10, 1280], [[1, 10, 10, 1280]]),
                  ("MAXIMUM", "max", [1, 10, 10, 1280], [[1, 10, 10, 1280]]),
                  ("MUL", "sq", [1, 10, 10, 1280], [[1, 10, 10, 1280]] * 2),
                  ("MUL", "cube", [1, 10, 10, 1280], [[1, 10, 10, 1280]] * 2),
                  ("MEAN", "gem", [1, 1280], [[1, 10, 10, 1280], [2]]),
                  ("DEQUANTIZE", "dq", [1, 1280], [[1, 1280]]), ("POW", "root", [1, 1280], [[1, 1280], []])]
    assert pooling_block(gem) == [("MINIMUM", "min"), ("MAXIMUM", "max"), ("MUL", "sq"), ("MUL", "cube"),
                                  ("MEAN", "gem")]
    lcnet = [*conv, ("AVERAGE_POOL_2D", "gap", [1, 1, 1, 1280], [[1, 10, 10, 1280]]),
                    ("CONV_2D", "last", [1, 1, 1, 1280], [[1, 1, 1, 1280]]),
                    ("FULLY_CONNECTED", "fc", [1, 512], [[1, 1280]])]
    assert pooling_block(lcnet) == [("AVERAGE_POOL_2D", "gap")]  # weights after it stay int8
    detector = [*conv, ("MAX_POOL_2D", "mp", [1, 5, 5, 1280], [[1, 10, 10, 1280]]),
                       ("MEAN", "channel_mean", [1, 5, 5, 1], [[1, 5, 5, 1280]])]
    assert pooling_block(detector) == []  # spatial pooling is not a global one


def test_mse_range_ignores_rare_outliers() -> None:
    """A rare huge activation (in the calibrator's min/max, not in the sampled values) must not set
    the int8 step for all others; a range the values fill stays as it is."""
    from edge_shitu.converters.int8_ranges import mse_range, quant_mse

    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, 20000).astype(np.float32)
    lo, hi, kept = mse_range(v, -4.5, 40.0)  # one value of 40 somewhere in the calibration set
    assert hi <= 12.0 and -4.5 <= lo < 0 and kept < 0.5
    assert quant_mse(v, lo, hi) < quant_mse(v, -4.5, 40.0) / 4
    u = rng.uniform(0, 6, 20000).astype(np.float32)  # a ReLU6 output that fills its range
    assert mse_range(u, 0.0, 6.0)[2] >= 0.95
    assert quant_mse(u, 0.0, 6.0) < (6 / 255) ** 2 / 10  # ~ step^2 / 12


def test_infer_kind(tmp_path: Path) -> None:
    assert infer_kind("m.tflite") == "tflite" and infer_kind("m.nb") == "nb" and infer_kind("m.onnx") == "onnx"
    (tmp_path / "inference.pdmodel").write_bytes(b"")
    assert infer_kind(tmp_path) == "paddle"
    with pytest.raises(EdgeShituError, match="kind"):
        infer_kind(tmp_path / "x.bin")


# ============================================================================ fast: XShape + .nb
def test_xshape_fix_makes_opt_work(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("paddlelite")
    from edge_shitu.converters.export_nb import _run_opt, add_missing_xshape, prepare_program

    pdmodel = tiny / "inference.pdmodel"
    assert sorted(_ops_without_xshape(pdmodel)) == ["flatten_contiguous_range", "transpose2"]
    # unfixed: opt crashes (segfault in the child) -> a clean one-line EdgeShituError naming the
    # stage and the signal, not a dead process
    with pytest.raises(EdgeShituError, match=r"Paddle Lite opt \(x86\) on .* failed \(signal SIG") as e:
        _run_opt(pdmodel, tiny / "inference.pdiparams", tmp_path / "bad", "x86", False)
    assert "\n" not in str(e.value)
    m, p, fixed = prepare_program(tiny, tmp_path / "fixed")
    assert fixed == 2 and _ops_without_xshape(m) == []
    data, again = add_missing_xshape(m.read_bytes())
    assert again == 0 and data == m.read_bytes()  # idempotent
    # the added variable is [0] + input dims, like paddle < 2.6 wrote it
    from paddle.base.proto import framework_pb2

    prog = framework_pb2.ProgramDesc()
    prog.ParseFromString(m.read_bytes())
    vs = {v.name: list(v.type.lod_tensor.tensor.dims) for v in prog.blocks[0].vars}
    for op in prog.blocks[0].ops:
        if op.type == "transpose2":
            xs = next(o.arguments[0] for o in op.outputs if o.parameter == "XShape")
            assert vs[xs] == [0, *vs[op.inputs[0].arguments[0]]]
    assert tiny.joinpath("inference.pdmodel").read_bytes() != m.read_bytes()  # user files untouched
    assert _run_opt(m, p, tmp_path / "good", "x86", False).exists()


def test_nb_exports_run_and_verify(tiny_nb: dict[str, Path], tiny: Path) -> None:
    from edge_shitu.converters.verify import compare
    from edge_shitu.runtimes.backend import open_backend

    feeds = [{"x": np.random.default_rng(9).random((1, 3, 4, 4), dtype=np.float32)}]
    fid = compare(open_backend(tiny, "paddle"), open_backend(tiny_nb["x86"]), feeds, stage="nb-x86")
    assert fid.cosine_min > 0.9999 and fid.max_abs < 1e-4


def test_arm_nb_structure(tiny_nb: dict[str, Path], tiny: Path, tmp_path: Path) -> None:
    from edge_shitu.converters.export_nb import check_nb_structure
    from edge_shitu.runtimes.nb_format import read_nb

    arm = tiny_nb["arm"]
    rep = check_nb_structure(arm, target="arm", int8=False, source_params=tiny / "inference.pdiparams",
                             expect_inputs=["x"], twin=tiny_nb["twin"])
    assert rep.ok and rep.target == "arm" and rep.meta_version == 2 and rep.opt_version.startswith("v2.13")
    assert rep.twin is not None and rep.twin["n_differ"] == 0 and rep.params == rep.twin["params_b"]
    assert 0.4 <= (rep.size_ratio or 0) <= 1.1
    m = read_nb(arm)
    assert m.inputs == ["x"] and len(m.outputs) == 1 and m.param_bytes <= m.file_bytes
    assert {op.target for op in m.ops} <= {"arm", "host", "any"}
    # wrong target, wrong precision and a twin from other weights are all reported
    bad = check_nb_structure(arm, target="x86", int8=True, raise_on_error=False)
    assert not bad.ok and any("expected x86" in p for p in bad.problems) and any("int8" in p for p in bad.problems)
    with pytest.raises(EdgeShituError, match="structural check"):
        check_nb_structure(arm, target="x86")
    # corruption: truncated file, and a parameter length that disagrees with its shape
    data = arm.read_bytes()
    (tmp_path / "trunc.nb").write_bytes(data[: len(data) - 7])
    with pytest.raises(CorruptFileError):
        read_nb(tmp_path / "trunc.nb")
    (tmp_path / "junk.nb").write_bytes(data + b"\0" * 8)
    with pytest.raises(CorruptFileError, match="trailing"):
        read_nb(tmp_path / "junk.nb")
    (tmp_path / "magic.nb").write_bytes(b"\x07\x00" + data[2:])
    with pytest.raises(CorruptFileError, match="meta_version"):
        read_nb(tmp_path / "magic.nb")


def test_arm_nb_twin_with_other_weights_is_rejected(tiny_nb: dict[str, Path], tmp_path: Path) -> None:
    from edge_shitu.converters.export_nb import _run_opt, check_nb_structure, prepare_program

    other = _save_tiny(tmp_path / "other", seed=1)
    m, p, _ = prepare_program(other, tmp_path / "fixed")
    twin = _run_opt(m, p, tmp_path / "twin", "x86", False)
    rep = check_nb_structure(tiny_nb["arm"], target="arm", twin=twin, raise_on_error=False)
    assert not rep.ok and rep.twin and rep.twin["n_differ"] > 0


def test_arm_nb_is_never_run_on_x86(tiny_nb: dict[str, Path]) -> None:
    import platform

    from edge_shitu.runtimes.backend import open_backend

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-only check")
    with pytest.raises(EdgeShituError, match="cannot run on this x86"):
        open_backend(tiny_nb["arm"])


# ============================================================================ fast: verifier
def _det(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 6)


def test_box_matcher_on_synthetic_boxes() -> None:
    ref = _det([[0, 0.9, 10, 10, 50, 50], [0, 0.8, 100, 100, 150, 160], [1, 0.7, 0, 0, 20, 20]])
    # same boxes, slightly moved, other order -> all matched
    art = _det([[1, 0.69, 1, 0, 21, 20], [0, 0.88, 12, 10, 52, 50], [0, 0.81, 100, 102, 150, 160]])
    pairs, ious = match_boxes(ref, art)
    assert len(pairs) == 3 and min(p[2] for p in pairs) > 0.8 and ious.shape == (3, 3)
    b = compare_boxes([ref], [art])
    assert b.matched_frac == 1.0 and not b.degenerate and b.score_diff_max < 0.03
    # IoU below 0.5, wrong class, or missing -> unmatched
    art2 = _det([[0, 0.9, 40, 40, 80, 80], [1, 0.8, 100, 100, 150, 160]])
    b2 = compare_boxes([ref], [art2])
    assert b2.matched == 0 and b2.matched_frac == 0.0
    # one artifact box can match only one reference box
    dup = _det([[0, 0.9, 10, 10, 50, 50], [0, 0.89, 10, 10, 50, 50]])
    assert compare_boxes([dup], [dup[:1]]).matched == 1
    # degenerate references (nothing detected / zero-area boxes) are flagged, not failed
    assert compare_boxes([_det([])], [_det([])]).degenerate
    flat = _det([[0, 0.5, 5, 5, 5, 5]] * 3)
    fid = Fidelity("det", "a", "r", 1, boxes=compare_boxes([flat], [_det([])]))
    assert fid.boxes is not None and fid.boxes.degenerate
    check(fid, {"box_match": 0.9})  # skipped: raw outputs decide


def test_nms_matches_expectations() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.01], [0.1, 0.0, 0.95, 0.5]], np.float32)
    out = nms(boxes, scores, score_threshold=0.05, iou_threshold=0.5, keep_top_k=10)
    assert out[:, 1].tolist() == sorted(out[:, 1].tolist(), reverse=True)
    got = {(int(r[0]), round(float(r[1]), 2)) for r in out}
    assert got == {(0, 0.9), (0, 0.7), (1, 0.95), (1, 0.5)}  # (1, 0.1) is box 3 again: suppressed
    assert nms(boxes, scores, score_threshold=0.99).shape == (0, 6)


def test_gate_names_stage_and_figure_and_json_roundtrip() -> None:
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(4)]
    art = [r + 0.3 * rng.standard_normal(r.shape).astype(np.float32) for r in ref]
    out = compare_tensors("feat", ref, art)
    assert 0.9 < out.cosine_mean < 0.99 and out.max_abs > 0.1
    fid = Fidelity("tflite-int8", "m_int8.tflite", "paddle:ref", 4, [out],
                   BoxFidelity(3, 3, 3, 1.0, 0.9, 0.01, 0.02, False, "", 1.0))
    with pytest.raises(EdgeShituError) as e:
        check(fid, thresholds_for("int8"))
    msg = str(e.value)
    assert "tflite-int8" in msg and f"{out.cosine_mean:.5f}" in msg and "\n" not in msg
    check(fid, {"cosine_mean": 0.9})
    back = Fidelity.from_json(fid.to_json())
    assert back == fid and json.loads(fid.to_json())["summary"]["cosine_mean"] == out.cosine_mean
    # layouts: an NHWC artifact output is compared after transposing back, NaN fails the gate
    r4 = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
    assert compare_tensors("m", [r4], [r4.transpose(0, 2, 3, 1)]).cosine_min > 0.99999
    bad = compare_tensors("m", [r4], [np.full((1, 3, 5, 7), np.nan, np.float32)])
    with pytest.raises(EdgeShituError):
        check(Fidelity("s", "a", "r", 1, [bad]), {"cosine_mean": 0.5})
    with pytest.raises(EdgeShituError, match="unknown"):
        check(Fidelity("s", "a", "r", 1, [OutputFidelity("o", [1], 1, 1, 0, 0, 0)]), {"cosine": 1.0})


def test_tflite_backend_feeds_nchw_and_orders_outputs(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from edge_shitu.runtimes.backend import open_backend

    w = np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 6, 8, 3], tf.float32, name="x")])
    def f(x):
        y = tf.nn.conv2d(x, w, 1, "SAME")
        return {"Identity": tf.reduce_mean(y, [1, 2]), "Identity_1": tf.reduce_max(y, [1, 2, 3])}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    path = tmp_path / "m.tflite"
    path.write_bytes(conv.convert())
    b = open_backend(path)
    assert b.inputs[0].layout == "NHWC" and b.inputs[0].nchw_shape() == (1, 3, 6, 8)
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 8)).astype(np.float32)
    out = b.run({"image": x})
    y = tf.nn.conv2d(x.transpose(0, 2, 3, 1), w, 1, "SAME").numpy()
    assert np.allclose(out[0], y.mean((1, 2)), atol=1e-4) and np.allclose(out[1], y.max((1, 2, 3)), atol=1e-4)


# ============================================================================ integration
CLS = ("models", "real_weights", "ch_ppocr_mobile_v2_cls_infer")
FIGURES: dict[str, dict] = {}


def _drink_images(n: int, offset: int) -> list[np.ndarray]:
    from edge_shitu.preprocess import load_image

    gallery = require_asset("drink", "gallery")
    files = sorted(gallery.glob("*/*.jpg"))
    idx = np.random.default_rng(0).permutation(len(files))[offset:offset + n]
    return [load_image(files[i]) for i in idx]


def _report(name: str, arts: dict, ref_dir: Path, feed: dict, budget: dict) -> None:
    """Print size / cosine / 1-thread latency next to Paddle Inference FP32 + MKLDNN."""
    from edge_shitu.converters.verify import measure_latency
    from edge_shitu.runtimes.backend import open_backend

    ref = open_backend(ref_dir, "paddle", threads=1)
    rows = [("paddle-fp32-mkldnn", (ref_dir / "inference.pdiparams").stat().st_size, 1.0, 1.0,
             measure_latency(ref, feed, runs=20)["median_ms"])]
    for k, a in arts.items():
        ms = float("nan")
        if not (a.format == "nb" and a.target == "arm"):
            ms = measure_latency(open_backend(a.path, threads=1), feed, runs=20)["median_ms"]
        f = a.fidelity
        rows.append((k, a.bytes, f.cosine_mean if f else float("nan"), f.cosine_min if f else float("nan"), ms))
    FIGURES[name] = {"rows": rows, "seconds": budget}
    print(f"\n== {name} (durations s: {budget})")
    for r in rows:
        print(f"  {r[0]:22s} {r[1]:10d} B  cos mean {r[2]:.6f}  min {r[3]:.6f}  {r[4]:8.2f} ms")


@pytest.fixture(scope="module")
def cls_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real classifier cut at its pooled 200-d feature (softmax over 2 classes says little),
    plus a PTQ copy; re-saving through paddle also drops XShape, so the fix is exercised."""
    pytest.importorskip("paddleslim")
    from edge_shitu.converters.export_onnx import prune_program
    from edge_shitu.converters.quantize import quantize
    from edge_shitu.preprocess import RecPreprocess

    src = require_asset(*CLS)
    tmp = tmp_path_factory.mktemp("cls")
    feat = prune_program(src, tmp / "feat", ["x"], ["reshape2_0.tmp_0"])
    pre = RecPreprocess(size=(192, 48), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    calib = [{"x": pre(im)} for im in _drink_images(32, 0)]
    held = [{"x": pre(im)} for im in _drink_images(12, 200)]
    t0 = time.time()
    q = quantize(feat, tmp / "q", calib).out_dir
    return {"fp32": feat, "int8": q, "calib": calib, "held": held, "tmp": tmp, "ptq_s": time.time() - t0}


@pytest.mark.integration
def test_cls_real_weights_every_artifact(cls_models: dict) -> None:
    from edge_shitu.converters.export_nb import to_nb
    from edge_shitu.converters.export_onnx import to_onnx
    from edge_shitu.converters.export_tflite import to_tflite

    fp32, q, held, out = cls_models["fp32"], cls_models["int8"], cls_models["held"], cls_models["tmp"] / "out"
    t: dict[str, float] = {"ptq": round(cls_models["ptq_s"], 1)}
    arts = {}
    t0 = time.time()
    arts["nb-x86-fp32"] = to_nb(fp32, out / "x86_fp32.nb", "x86", verify_feeds=held)
    arts["nb-arm-fp32"] = to_nb(fp32, out / "arm_fp32.nb", "arm", verify_feeds=held)
    assert arts["nb-arm-fp32"].details["structure"]["twin"]["n_differ"] == 0
    t["nb_fp32"] = round(time.time() - t0, 1)
    # Paddle Lite 2.13rc0 x86 int8 kernels return wrong features on this model even with the
    # CxxConfig + discarded-fuse-pass route: the gate must catch it (never write it silently).
    t0 = time.time()
    try:
        arts["nb-x86-int8"] = to_nb(q, out / "x86_int8.nb", "x86", int8=True, verify_feeds=held, reference=fp32)
        assert arts["nb-x86-int8"].fidelity.cosine_mean >= 0.995
    except EdgeShituError as e:
        assert "cosine mean" in str(e) and not (out / "x86_int8.nb").exists()
        print("\n  x86 int8 .nb rejected by the gate:", e)
    # the arm int8 file: structure + twin weights, gated on the quantized program (PaddleSlim PTQ of
    # this small OCR net on drink photos reaches ~0.986, under the 0.995 product gate)
    arts["nb-arm-int8"] = to_nb(q, out / "arm_int8.nb", "arm", int8=True, verify_feeds=held, reference=fp32,
                                thresholds={"cosine_mean": 0.97, "cosine_min": 0.9})
    s = arts["nb-arm-int8"].details["structure"]
    assert s["int8_kernels"] > 0 and s["twin"]["n_differ"] == 0 and s["size_ratio"] < 0.6
    assert "x86_twin_fidelity" in arts["nb-arm-int8"].details
    t["nb_int8"] = round(time.time() - t0, 1)
    t0 = time.time()
    arts["onnx-fp32"] = to_onnx(fp32, out / "cls.onnx", input_shapes={"x": [1, 3, 48, 192]}, verify_feeds=held)
    assert arts["onnx-fp32"].fidelity.cosine_min >= 0.9999
    t["onnx"] = round(time.time() - t0, 1)
    t0 = time.time()
    calib = np.concatenate([c["x"] for c in cls_models["calib"]])
    tfl = to_tflite(out / "cls.onnx", out, name="cls", calibration=calib, verify_feeds=held, reference=fp32,
                    thresholds={"int8": {"cosine_mean": 0.97, "cosine_min": 0.9}})
    t["tflite"] = round(time.time() - t0, 1)
    assert tfl["fp32"].fidelity.cosine_min >= 0.9999 and tfl["fp16"].fidelity.cosine_min >= 0.999
    assert tfl["int8"].bytes < tfl["fp32"].bytes / 1.9
    arts.update({f"tflite-{p}": a for p, a in tfl.items()})
    _report("ch_ppocr_mobile_v2_cls (real weights, 200-d pooled feature)", arts, fp32, held[0], t)
