"""ONNX -> TFLite fp32 / fp16 / int8 through onnx2tf and the TF converter, each file verified.

Every onnx2tf trap met with the pinned toolchain (docs/toolchain.md) is handled here:

- onnx2tf OVERWRITES its input with the simplified graph: it gets a copy.
- it tries to DOWNLOAD a calibration sample for any 3-channel NCHW input (even with -cind) and
  fails offline: a local ``calibration_image_sample_data_20x128x128x3_float32.npy`` is put in
  its working directory (it is never used for calibration: the user's images are).
- it calls the ``onnxsim`` EXECUTABLE and only warns when it is missing, after which some graphs
  convert WRONG: the environment's bin directory is put first on PATH and the log is checked.
- ``-rtpo HardSwish`` (``replace_to_pseudo_operators=["hardswish"]``: the Python API matches the
  LOWER-CASE name, the CLI lower-cases it; "HardSwish" is silently ignored) rewrites HardSwish as
  ``x * relu6(x + 3) / 6``: int8 HARD_SWISH is not delegated to XNNPACK and splits the graph
  into many partitions (10x slower); the pseudo-op form runs fully in XNNPACK.
- int8: TF's own converter on the SavedModel onnx2tf writes, with a ``representative_dataset``
  of the user's preprocessed images and ``TFLITE_BUILTINS_INT8``: FULL-INTEGER ops, FLOAT32
  input and output (quantize/dequantize at the edges). Never quantize from PaddleSlim's QDQ
  ONNX (onnx2tf turns it into garbage): the input here must be the fp32 (or pruned) ONNX.
- an extractor's global pooling block (GeM's clamp and cube, the mean) stays FLOAT in int8: the
  cube of an int8 activation, requantized at the scale its largest value needs, sends most values
  to zero, and the pooled feature IS the output (MobileNetV2 + GeM: cosine 0.972 -> 0.981). The
  block has no weights, so size is unchanged and speed is not worse (``pooling_block``; TF's
  quantizer with ``denylisted_nodes``).
- extractors get MSE-optimal activation ranges instead of TF's min/max (``int8_ranges``): cosine
  0.981 -> 0.988 on MobileNetV2. Detectors keep min/max: no real-weight detector to measure it on.
- a raw-GFL detector whose all-int8 file misses its box gate can get (opt-in) a ladder of mixed-precision
  int8 files (``int8_mixed``: the k activation tensors with the worst per-channel int8 noise
  kept float, k = 1 .. 256), verified fewest-float-first; 16x8 (reference kernels, slower than
  fp32) only when none passes. PicoDet-S COCO: none passes (its error is spread over the backbone).
- an extractor (opt-in, ``_extractor_mixed_ladder``): the same ranking beside the float pooling
  block, bias-corrected like its int8 file, k = 1 .. 64 tensors; the float layers keep int8
  weights behind a DEQUANTIZE (``int8_weight_only``: float activations at int8's size; with float32
  weights only ~7 layers fitted in 1.1x the size). MobileNetV2, its streams equalized first
  (``equalize``), on bench_accuracy's split: cosine 0.9930 -> 0.9961 with 11 float layers at 0.97x
  the int8 size (float32 weights: 0.9933 at best within 1.1x, none passing).
- onnx2tf/TF keep global state between conversions and take seconds to import: the whole
  conversion runs in one child process per ONNX file.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from edge_shitu.atomic import atomic_write
from edge_shitu.converters.child import run_worker
from edge_shitu.converters.exporter import ExportJob, image_input, kind_named
from edge_shitu.converters.verify import Feeds, thresholds_for, verify_in_process
from edge_shitu.detection import PicoDetHead
from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import PRECISIONS, Artifact, artifact_format
from edge_shitu.runtimes.backend import normalize_name

CONVERT_TIMEOUT_S = 1800
CALIB_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
Calibration = Union[np.ndarray, Mapping[str, np.ndarray]]


# ----------------------------------------------------------------------------- child process
def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """Child process: onnx2tf (fp32/fp16 + SavedModel), then the TF converter for int8; returns
    {precision: file} plus what the int8 conversion did."""
    work = Path(job["work"])
    os.chdir(work)
    np.save(work / CALIB_SAMPLE, np.zeros((20, 128, 128, 3), np.float32))
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=job["onnx"],
        output_folder_path=str(work / "saved_model"),
        replace_to_pseudo_operators=job["rtpo"],
        output_signaturedefs=True,
        non_verbose=True,
    )
    stem = Path(job["onnx"]).stem
    produced = {"fp32": work / "saved_model" / f"{stem}_float32.tflite",
                "fp16": work / "saved_model" / f"{stem}_float16.tflite"}
    result: dict[str, Any] = {}
    for p in ("fp32", "fp16"):
        if p in job["precisions"]:
            if not produced[p].exists():
                raise RuntimeError(f"onnx2tf wrote no {produced[p].name}")
            result[p] = str(produced[p])
    if "int8" in job["precisions"]:
        import tensorflow as tf

        calib = {k: np.load(v) for k, v in job["calib"].items()}  # NHWC/as the model wants
        loaded = tf.saved_model.load(str(work / "saved_model"))
        sig = loaded.signatures["serving_default"]
        sig_inputs = [k for k in sig.structured_input_signature[1]]
        by_norm = {normalize_name(k): k for k in calib}
        mapping: dict[str, str] = {}
        for s in sig_inputs:
            key = by_norm.get(normalize_name(s))
            if key is None and len(sig_inputs) == 1 and len(calib) == 1:
                key = next(iter(calib))
            if key is None:
                raise RuntimeError(f"no calibration data for SavedModel input {s}; have {list(calib)}")
            mapping[s] = key
        n = min(len(v) for v in calib.values())

        def representative_dataset():
            for i in range(n):
                yield {s: calib[k][i:i + 1].astype(np.float32) for s, k in mapping.items()}

        def converter(ops: list[Any]) -> Any:
            c = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = representative_dataset
            c.target_spec.supported_ops = ops
            return c

        if job.get("float_pooling") or job.get("mse_ranges"):
            try:  # a refinement: any failure falls back to TF's plain int8 conversion, and says why
                data, mode, block, calibrated = _refined_int8(converter, representative_dataset, job)
                result["int8_mode"] = mode
                if block:
                    result["float_ops"] = [o for o, _ in block]
                if job.get("bias_correction"):  # a twin; the parent keeps it only where it measures better
                    result.update(_bias_corrected_twin(data, calibrated, representative_dataset, work))
                if job.get("weight_rounding"):  # another twin, kept only where it measures better still
                    result.update(_rounded_twin(data, calibrated, representative_dataset, work,
                                                bool(job.get("bias_correction"))))
                if job.get("mixed_int8"):  # an extractor's ladder: pooling block float, size-capped
                    best = Path(result.get("int8_bias_corrected") or "")
                    result.update(_extractor_mixed_ladder(
                        best.read_bytes() if best.is_file() else data, calibrated, [n for _, n in block],
                        representative_dataset, work, bool(job.get("bias_correction"))))
            except Exception as e:
                data, mode = _plain_int8(converter)
                result["int8_mode"] = f"{mode}; min/max ranges (refinement failed: {type(e).__name__}: {str(e)[:120]})"
        else:
            data, result["int8_mode"] = _plain_int8(converter)
        out = work / "model_int8.tflite"
        out.write_bytes(data)
        result["int8"] = str(out)
        if job.get("mixed_int8") and not job.get("float_pooling"):  # detectors: the rung before 16x8
            result.update(_mixed_ladder(converter, representative_dataset, work))
        if job.get("a16w8"):  # the next rung, used only when int8 activations miss the gate
            result["int8_a16w8"] = str(_a16w8(work / "saved_model" / f"{stem}_float32.tflite",
                                               representative_dataset, work / "model_a16w8.tflite"))
    return result


MIXED_RANGE_IMAGES = 8  # calibration images the ladder's MSE ranges are fitted on (all 16: same ranking, 2x time)


def _mixed_ladder(converter: Any, representative_dataset: Any, work: Path) -> dict[str, Any]:
    """The mixed-precision candidates (``int8_mixed``): one calibration, its min/max ranges and
    MSE ranges (PicoDet-S: all-int8 box recall 0.37 -> 0.53, better at small k; min/max is better
    at large k), a ladder from each, and per k the candidate with the lower raw-output error
    (``best_of``), fewest float layers first. Any failure leaves no candidate and says why (the
    16x8 rung still stands)."""
    import tensorflow as tf

    from edge_shitu.converters.int8_mixed import RANK_IMAGES, RANKED_BY, best_of, ladder
    from edge_shitu.converters.int8_ranges import refine_ranges

    try:
        c = converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8])
        c._experimental_calibrate_only = True
        calibrated = c.convert()
        images = list(_first_input(representative_dataset()))
        mse, _ = refine_ranges(calibrated, images[:MIXED_RANGE_IMAGES])
        ladders, bases = {}, {}
        for label, model in (("min/max ranges", calibrated), ("MSE ranges", mse)):
            ladders[label], _, bases[label] = ladder(model, images[:RANK_IMAGES])
        chosen = best_of(ladders)
    except Exception as e:  # an optional rung: the manifest says why there is none
        return {"int8_mixed_error": f"{type(e).__name__}: {str(e)[:160]}"}
    out = []
    for label, cand in chosen:
        f = work / f"model_int8_mixed_{cand.k}.tflite"
        f.write_bytes(cand.model)
        out.append({"file": str(f), "k": cand.k, "ranges": label, "tensors": cand.tensors,
                    "float_layers": cand.float_nodes, "float_op_types": cand.float_types,
                    "output_error": round(cand.output_error, 5)})
    return {"int8_mixed": out,
            "int8_mixed_ranked_by": f"{RANKED_BY}; per k, min/max or MSE ranges, whichever gives the lower raw-output "
                                    f"error ({min(len(images), RANK_IMAGES)} calibration images)",
            "int8_mixed_base_error": {k: round(v, 5) for k, v in bases.items()}}


# an extractor's mixed-precision candidates: at most this much larger than its int8 file (the
# accuracy issue's budget; the float layers keep int8 weights, so MobileNetV2's files stay at
# 0.97-0.99x), k = the tensors kept float
EXTRACTOR_MIXED_SIZE_CAP = 1.10
EXTRACTOR_LADDER_K = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
WEIGHT_ONLY = "int8 per channel behind a DEQUANTIZE (float activations at int8's weight size)"
# int8 this close to float on the ranking images (calibration images: they flatter it, MobileNetV2
# 0.992 there vs 0.988 held out): no ladder is built
EXTRACTOR_SKIP_COSINE = 0.999


def _extractor_mixed_ladder(int8: bytes, calibrated: bytes, block: Sequence[str], representative_dataset: Any,
                            work: Path, bias_correction: bool) -> dict[str, Any]:
    """An extractor's mixed-precision candidates (``int8_mixed``), fewest float tensors first: the
    worst-ranked activation tensors kept float beside the pooling block, on the MSE-ranged
    calibrated model the int8 file came from, each bias-corrected like the int8 file, none more
    than ``EXTRACTOR_MIXED_SIZE_CAP`` x the int8 file's size. None when the int8 file already
    matches float closely on the ranking images (the parent gates; this only saves the time).
    ``block``: the pooling block's node names, as the int8 file kept them float."""
    from edge_shitu.converters.int8_bias import correct_biases
    from edge_shitu.converters.int8_mixed import RANK_IMAGES, RANKED_BY, ladder, run_model

    try:
        images = list(_first_input(representative_dataset()))
        probe = images[:RANK_IMAGES]
        refs = run_model(calibrated, probe)  # the float outputs every figure here is measured against
        cos = _mean_cosine(run_model(int8, probe), refs)
        if cos >= EXTRACTOR_SKIP_COSINE:
            return {"int8_mixed_skipped": f"int8 cosine {cos:.4f} to float on {len(probe)} calibration images"}
        cands, _, base = ladder(calibrated, probe, EXTRACTOR_LADDER_K, always_float=block,
                                max_bytes=int(len(int8) * EXTRACTOR_MIXED_SIZE_CAP), weight_only=True)
        out = []
        for cand in cands:
            model, note = cand.model, ""
            if bias_correction:
                model, n = correct_biases(model, calibrated, images[:BIAS_CORRECTION_IMAGES])
                note = f"; biases corrected ({n} layers)"
            f = work / f"model_int8_mixed_{cand.k}.tflite"
            f.write_bytes(model)
            out.append({"file": str(f), "k": cand.k, "ranges": f"MSE ranges{note}", "tensors": cand.tensors,
                        "float_weights": WEIGHT_ONLY,
                        "float_layers": [n for n in cand.float_nodes if n not in block],
                        "float_op_types": cand.float_types, "output_error": round(cand.output_error, 5),
                        "probe_cosine": round(_mean_cosine(run_model(model, probe), refs), 5)})
    except Exception as e:  # an optional rung: the manifest says why there is none
        return {"int8_mixed_error": f"{type(e).__name__}: {str(e)[:160]}"}
    return {"int8_mixed": out,
            "int8_mixed_ranked_by": f"{RANKED_BY} ({len(probe)} calibration images); pooling block float; at most "
                                    f"{EXTRACTOR_MIXED_SIZE_CAP:.2f}x the int8 file's size",
            "int8_mixed_base_error": {"MSE ranges": round(base, 5)}, "int8_mixed_probe_cosine": round(cos, 5)}


def _mean_cosine(outs: Sequence[Sequence[np.ndarray]], refs: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean over images of the cosine of the first output (an extractor's embedding) to the reference's."""
    from edge_shitu.converters.paddle_model import mean_row_cosine

    return mean_row_cosine(np.stack([o[0] for o in outs]), np.stack([r[0] for r in refs]))


A16W8 = "16x8: int16 activations, int8 weights (TFLite reference kernels), float32 input/output"


def _a16w8(float_model: Path, representative_dataset: Any, out: Path) -> Path:
    """int8 weights with int16 activations, from the fp32 TFLite file: 256x finer activation steps
    for models whose activations span hundreds (PicoDet-S COCO: +-580 after its stem) at int8's
    weight size. TF's older calibrator does this (the MLIR quantizer refuses int16 with float
    fallback); ops without an int16 kernel (HARD_SWISH) stay float."""
    import tensorflow as tf
    from tensorflow.lite.python.optimize import calibrator

    def gen() -> Any:
        for item in representative_dataset():
            yield list(item.values())

    data = calibrator.Calibrator(float_model.read_bytes()).calibrate_and_quantize(
        gen, tf.float32, tf.float32, True, tf.int16, tf.int64)
    out.write_bytes(data)
    return out


def _rewrite_for_tflite(onnx_file: Path) -> int:
    """The exact pre-onnx2tf rewrites of ``onnx_rewrites`` on the working copy; returns how many
    max pools were re-padded."""
    import onnx

    from edge_shitu.converters.onnx_rewrites import edge_pad_max_pools

    model = onnx.load(str(onnx_file))
    n = edge_pad_max_pools(model)
    if n:
        onnx.save(model, str(onnx_file))
    return n


FULL_INT8 = "full-integer ops, float32 input/output"


def _plain_int8(converter: Any) -> tuple[bytes, str]:
    """TF's own int8 conversion: full-integer, or with float fallback where an op has no int8 kernel."""
    import tensorflow as tf

    try:
        return converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert(), FULL_INT8
    except Exception as e:  # an op with no int8 kernel: keep it float, say so
        data = converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]).convert()
        return data, f"int8 ops with float fallback ({type(e).__name__}), float32 input/output"


def _refined_int8(converter: Any, representative_dataset: Any,
                  job: Mapping[str, Any]) -> tuple[bytes, str, list[tuple[str, str]], bytes]:
    """One calibration pass, then MSE ranges and/or a float pooling block, then quantization.

    The pooling block and the fallback check both read the calibrated model itself, so the names
    handed to the quantizer are the very names it sees (and no second conversion is needed).
    Returns (model, int8_mode, the kept-float pooling block as (op type, node name) pairs, the
    calibrated float model).
    """
    import tensorflow as tf

    from edge_shitu.converters.int8_ranges import quantize_calibrated, refine_ranges

    c = converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8])
    c._experimental_calibrate_only = True  # the ranges, before quantization
    calibrated = c.convert()
    notes = []
    if job.get("mse_ranges"):
        calibrated, n = refine_ranges(calibrated, _first_input(representative_dataset()))
        notes.append(f"MSE activation ranges ({n} tightened)")
    block = pooling_block(_op_list(calibrated)) if job.get("float_pooling") else []
    if block:
        notes.append(f"global pooling block kept float ({', '.join(o for o, _ in block)})")
    data = quantize_calibrated(calibrated, [n for _, n in block])
    fallback = float_fallback_ops(_op_list(data, dtypes=True), {n for _, n in block})
    mode = FULL_INT8 if not fallback else \
        f"int8 ops with float fallback ({', '.join(sorted(set(fallback)))}), float32 input/output"
    return data, "; ".join([mode, *notes]), block, calibrated


BIAS_CORRECTION_IMAGES = 8  # calibration images the biases are measured on (each layer runs them all; 16: +0.0003)


def _rounded_twin(data: bytes, calibrated: bytes, representative_dataset: Any, work: Path,
                  bias_correction: bool) -> dict[str, Any]:
    """The int8 file with output-aware weight rounding (``int8_rounding``; then its biases
    corrected, with ``bias_correction``), or why there is none."""
    from edge_shitu.converters.int8_bias import correct_biases
    from edge_shitu.converters.int8_rounding import round_weights

    images = list(_first_input(representative_dataset()))[:BIAS_CORRECTION_IMAGES]
    try:
        fixed, figures = round_weights(data, calibrated, images)
        if bias_correction:
            fixed, figures["biases_corrected"] = correct_biases(fixed, calibrated, images)
    except Exception as e:  # an optional refinement: the other files stand, and the manifest says why
        return {"weight_rounding_error": f"{type(e).__name__}: {str(e)[:160]}"}
    out = work / "model_int8_rounded.tflite"
    out.write_bytes(fixed)
    return {"int8_rounded": str(out), "weight_rounding_figures": figures}


def _bias_corrected_twin(data: bytes, calibrated: bytes, representative_dataset: Any, work: Path) -> dict[str, Any]:
    """The int8 file with empirically corrected biases (``int8_bias``), or why there is none."""
    from edge_shitu.converters.int8_bias import correct_biases

    images = list(_first_input(representative_dataset()))[:BIAS_CORRECTION_IMAGES]
    try:
        fixed, n = correct_biases(data, calibrated, images)
    except Exception as e:  # an optional refinement: the plain file stands, and the manifest says why
        return {"bias_correction_error": f"{type(e).__name__}: {str(e)[:160]}"}
    out = work / "model_int8_bias_corrected.tflite"
    out.write_bytes(fixed)
    return {"int8_bias_corrected": str(out), "bias_corrected_layers": n, "bias_correction_images": len(images)}


def float_fallback_ops(ops: Sequence[tuple[Any, ...]], kept_float: set[str]) -> list[str]:
    """Ops of a quantized model that still compute in float, other than the ones asked for.

    ``ops`` as :func:`_op_list` with ``dtypes=True`` (the output dtype last). The DEQUANTIZE ops
    that hand float results out (and the float pooling block's own boundary) are not fallbacks.
    """
    return [op for op, name, *_, dtype in ops
            if dtype == "float32" and op not in ("DEQUANTIZE", "QUANTIZE") and name not in kept_float]


def _op_list(model: bytes, dtypes: bool = False) -> list[tuple[Any, ...]]:
    """(op, output tensor name, output shape, input shapes[, output dtype name]) per op of a
    TFLite model, in order."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out: list[tuple[Any, ...]] = []
    for op in interp._get_ops_details():  # no public API lists a model's ops with their tensors
        outs = [tensors[i] for i in op["outputs"] if i >= 0]
        ins = [list(tensors[i]["shape"]) for i in op["inputs"] if i >= 0 and i in tensors]
        if outs:
            row: tuple[Any, ...] = (op["op_name"], outs[0]["name"], list(outs[0]["shape"]), ins)
            out.append((*row, np.dtype(outs[0]["dtype"]).name) if dtypes else row)
    return out


def _first_input(batches: Any) -> Any:
    """The single image input of each representative-dataset item (a dict per input)."""
    for item in batches:
        yield next(iter(item.values()))


SPATIAL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
POOL_OPS = {"MEAN", "AVERAGE_POOL_2D", "SUM", "REDUCE_MAX", "MAX_POOL_2D"}


def pooling_block(ops: Sequence[tuple[str, str, list[int], list[list[int]]]]) -> list[tuple[str, str]]:
    """The ops of the LAST global pooling and the weightless ops feeding it after the last conv.

    Global pooling: a pooling/reduction whose input is NHWC with H*W > 1 and whose output has
    no spatial extent left (2-D, or H = W = 1). For GeM that is clamp, x*x, x*x*x and the mean;
    for average pooling the mean alone. Empty when there is none (a detector, a flatten head).
    """
    def spatial(shape: list[int]) -> bool:
        return len(shape) == 4 and shape[1] * shape[2] > 1

    pool = None
    for i, (op, _, shape, ins) in enumerate(ops):
        if op in POOL_OPS and ins and spatial(ins[0]) and not spatial(shape):
            pool = i
    if pool is None:
        return []
    start = pool
    while start > 0 and ops[start - 1][0] not in SPATIAL_OPS | POOL_OPS | {"QUANTIZE", "DEQUANTIZE"}:
        start -= 1
    return [(op, name) for op, name, _, _ in ops[start:pool + 1] if op not in ("QUANTIZE", "DEQUANTIZE")]


def _env_with_tools() -> dict[str, str]:
    """PATH with this interpreter's bin dir first: onnx2tf shells out to ``onnxsim``."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    return env


def _check_onnxsim_available(env: Mapping[str, str]) -> None:
    for d in env.get("PATH", "").split(os.pathsep):
        if d and (Path(d) / "onnxsim").exists():
            return
    raise EdgeShituError(
        "the onnxsim executable is not on PATH; onnx2tf would silently convert some graphs wrongly: "
        "install onnxsim in this environment")


# ----------------------------------------------------------------------------- public
def _calib_to_model_layout(calibration: Calibration, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """NCHW calibration arrays (one per model input) -> NHWC, the layout onnx2tf gives inputs."""
    if isinstance(calibration, np.ndarray):
        if len(input_names) != 1:
            raise EdgeShituError(
                f"the model has inputs {list(input_names)}: give calibration data as a dict per input")
        calibration = {input_names[0]: calibration}
    out = {}
    for k, v in calibration.items():
        v = np.asarray(v, dtype=np.float32)
        if v.ndim == 3:
            v = v[None]
        if len(v) < 1:
            raise EdgeShituError(f"calibration data for {k} is empty: give a few dozen preprocessed images")
        out[k] = v.transpose(0, 2, 3, 1) if v.ndim == 4 else v
    return out


def to_tflite(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str = "model",
    precisions: Sequence[str] = PRECISIONS,
    calibration: Optional[Calibration] = None,
    verify_feeds: Optional[Sequence[Feeds]] = None,
    reference: Optional[str | os.PathLike[str]] = None,
    thresholds: Optional[Mapping[str, Mapping[str, float]]] = None,
    detector_head: Optional[Union[PicoDetHead, Mapping[str, Any]]] = None,
    cut_reference: Optional[str | os.PathLike[str]] = None,
    replace_hardswish: bool = True,
    float_pooling: bool = False,
    mse_ranges: bool = False,
    gfl_head: Optional[Mapping[str, Any]] = None,
    bias_correction: bool = False,
    weight_rounding: bool = False,
    mixed_precision: bool = False,
    on_fail: str = "raise",
) -> dict[str, Artifact]:
    """Convert an fp32 ONNX file to ``out_dir/{name}_{fp32,fp16,int8}.tflite``.

    ``calibration`` (NCHW float32, preprocessed exactly like inference inputs; a dict per input
    for multi-input models) is required for int8: a few dozen real images from the user's
    gallery. With ``verify_feeds`` + ``reference`` (the FP32 Paddle model dir) each file is
    run with LiteRT and gated by ``thresholds[precision]`` (defaults: fp32 cos >= 0.9999,
    fp16 >= 0.999, int8 mean >= 0.995) before being renamed into place. A detector cut before
    NMS passes ``detector_head`` (``Artifact.details["head"]`` of the ONNX export) and
    ``cut_reference`` (the pruned Paddle program; built again when omitted).
    ``float_pooling`` (extractors): int8 keeps the global pooling block float (``pooling_block``);
    ``mse_ranges``: MSE-optimal activation ranges instead of min/max (``int8_ranges``).
    ``bias_correction`` (with either refinement): an int8 twin with empirically corrected biases
    (``int8_bias``) is verified beside the plain int8 file and replaces it when its cosine to the
    reference is higher and it passes the same gate (same size: only int32 biases differ).
    ``weight_rounding``: another twin whose int8 weights are re-rounded to lower each layer's output
    error (``int8_rounding``; biases then corrected with ``bias_correction``), kept the same way.
    ``gfl_head`` (a raw-GFL-head detector: the manifest's head dict): every precision is gated on
    its decoded boxes against the reference's; when int8 activations miss that gate the int8 file
    is replaced (``mixed_precision``, opt-in) by the first mixed-precision candidate that passes
    it (``int8_mixed``: the fewest activation tensors kept float, ``details["mixed_precision"]``),
    else by 16x8 (int16 activations, int8 weights).
    Returns {precision: Artifact}. ``on_fail="raise"`` (default) writes nothing when any
    precision misses its gate; ``"skip"`` writes the ones that pass and returns the others with
    ``path=""`` and ``details["rejected"]`` (so a pipeline can fall back, e.g. to fp32).
    """
    if on_fail not in ("raise", "skip"):
        raise EdgeShituError(f"on_fail must be 'raise' or 'skip', not {on_fail!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise EdgeShituError(f"ONNX file {onnx_path} does not exist")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise EdgeShituError(f"unknown TFLite precision {bad}: use {', '.join(PRECISIONS)}")
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise EdgeShituError(
            f"{onnx_path.name} is a quantized (QDQ) ONNX: onnx2tf turns it into garbage; convert the "
            "fp32 ONNX and let int8 calibration happen here")
    init_names = {i.name for i in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in init_names]
    for i in model.graph.input:
        if i.name in init_names:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
        if any(d < 1 for d in dims):
            raise EdgeShituError(f"ONNX input {i.name} has dynamic shape {dims}: export with static shapes")
    if "int8" in precisions and calibration is None:
        raise EdgeShituError("int8 TFLite needs calibration data: pass calibration= (preprocessed NCHW images)")
    head = PicoDetHead(**detector_head) if isinstance(detector_head, Mapping) else detector_head

    env = _env_with_tools()
    _check_onnxsim_available(env)
    out_dir = Path(out_dir)
    results: dict[str, Artifact] = {}
    with tempfile.TemporaryDirectory(prefix="es-tflite-") as tmp:
        work = Path(tmp)
        copy = work / "model.onnx"
        copy.write_bytes(onnx_path.read_bytes())  # onnx2tf overwrites its input
        edge_pads = _rewrite_for_tflite(copy)
        calib_files: dict[str, str] = {}
        if "int8" in precisions and calibration is not None:
            for k, v in _calib_to_model_layout(calibration, input_names).items():
                f = work / f"calib_{len(calib_files)}.npy"
                np.save(f, v)
                calib_files[k] = str(f)
        job = {"work": str(work), "onnx": str(copy), "precisions": list(precisions), "calib": calib_files,
               "rtpo": ["hardswish"] if replace_hardswish else [], "float_pooling": float_pooling,
               "mse_ranges": mse_ranges, "a16w8": gfl_head is not None and "int8" in precisions,
               "mixed_int8": mixed_precision and (gfl_head is not None or float_pooling) and "int8" in precisions,
               "bias_correction": bias_correction, "weight_rounding": weight_rounding}
        logs: list[str] = []
        produced = run_worker("edge_shitu.converters.export_tflite", job, timeout=CONVERT_TIMEOUT_S, env=env,
                              cwd=work, log=logs, stage=f"TFLite conversion of {onnx_path.name}")
        if re.search(r"onnxsim.*(not found|No such file)|Failed to optimize the onnx file", logs[0], re.I):
            raise EdgeShituError(f"onnx2tf could not run onnxsim on {onnx_path.name}; the TFLite graph may be wrong")

        cut_dir: Optional[Path] = None
        if head is not None and verify_feeds is not None:
            if cut_reference is None:
                from edge_shitu.converters.export_onnx import write_cut_model

                cut_reference = write_cut_model(reference, work / "cut", [head.image], head.scores + head.dists)
            cut_dir = Path(cut_reference)
        fidelities: dict[str, Any] = {}
        rejected: dict[str, str] = {}
        for p in precisions:  # verify everything first: nothing is written before all are measured
            if verify_feeds is None:
                fidelities[p] = None
                continue
            if reference is None:
                raise EdgeShituError("verify_feeds needs reference= (the FP32 Paddle model directory)")
            th = thresholds[p] if thresholds is not None and p in thresholds else thresholds_for(p, gfl_head)
            try:
                fidelities[p] = verify_in_process(Path(produced[p]), "tflite", reference, verify_feeds,
                                                  stage=f"tflite-{p}", thresholds=th, head=head, cut_dir=cut_dir,
                                                  gfl=gfl_head)
            except EdgeShituError as e:
                rejected[p] = str(e)
                fidelities[p] = getattr(e, "fidelity", None)
            if p == "int8" and produced.get("int8_bias_corrected"):
                _take_bias_corrected(produced, fidelities, rejected, reference, verify_feeds, th, head, cut_dir,
                                     gfl_head)
            if p == "int8" and (produced.get("int8_rounded") or produced.get("weight_rounding_error")):
                _take_rounded(produced, fidelities, rejected, reference, verify_feeds, th, head, cut_dir, gfl_head)
            if p == "int8" and produced.get("int8_mixed_skipped") and p in rejected:
                rejected[p] += f"; no mixed-precision ladder ({produced['int8_mixed_skipped']})"
            if p == "int8" and ("int8_mixed" in produced or "int8_mixed_error" in produced) \
                    and not _passes(fidelities[p], thresholds_for(p, gfl_head)):
                _take_mixed(produced, fidelities, rejected, reference, verify_feeds, thresholds_for(p, gfl_head),
                            gfl_head)
            if p == "int8" and produced.get("int8_a16w8") and not _passes(fidelities[p], thresholds_for(p, gfl_head)):
                # the 16x8 rung (same weight size, int16 activations), taken when it passes the
                # default gate that int8 activations missed (--allow-degraded or not)
                try:
                    fid16 = verify_in_process(Path(produced["int8_a16w8"]), "tflite", reference, verify_feeds,
                                              stage="tflite-int8 (16x8)", thresholds=thresholds_for(p, gfl_head),
                                              gfl=gfl_head)
                except EdgeShituError as e:
                    if p in rejected:
                        rejected[p] += f"; 16x8 fallback: {e}"
                else:
                    why = _fidelity_line(fidelities[p])
                    produced["int8"], fidelities[p] = produced["int8_a16w8"], fid16
                    produced["int8_mode"] = f"{A16W8} (int8 activations missed the gate: {why})"
                    rejected.pop(p, None)
        if rejected and on_fail == "raise":
            raise EdgeShituError("; ".join(rejected.values()))
        n_calib = 0
        if calibration is not None:
            n_calib = min(len(v) for v in _calib_to_model_layout(calibration, input_names).values())
        for p in precisions:
            kind = kind_named("tflite", p)
            dest = out_dir / artifact_format(kind).filename(name)
            if p in rejected:
                results[p] = Artifact(kind, Path(""), bytes=Path(produced[p]).stat().st_size,
                                      fidelity=fidelities[p], details={"rejected": rejected[p]})
                continue
            with atomic_write(dest) as f:
                f.write(Path(produced[p]).read_bytes())
            fid = fidelities[p]
            if fid is not None:
                fid.artifact = dest.name
            details: dict[str, Any] = {
                "converter": "onnx2tf" if p != "int8" else "onnx2tf SavedModel + TFLiteConverter",
                "hardswish": "pseudo-op (x*relu6(x+3)/6)" if replace_hardswish else "HARD_SWISH",
                "layout": "NHWC inputs (the backend transposes NCHW feeds)",
            }
            if edge_pads:
                details["onnx_rewrites"] = f"{edge_pads} padded MaxPool -> edge Pad + MaxPool (exact)"
            if p == "int8":
                details["int8_mode"] = produced.get("int8_mode", "")
                if produced.get("bias_correction"):
                    details["bias_correction"] = produced["bias_correction"]
                if produced.get("weight_rounding"):
                    details["weight_rounding"] = produced["weight_rounding"]
                details["calibration_samples"] = n_calib
                if produced.get("float_ops"):
                    details["float_ops"] = produced["float_ops"]
                if produced.get("mixed_precision"):
                    details["mixed_precision"] = produced["mixed_precision"]
            if gfl_head is not None:
                details["gfl_head"] = dict(gfl_head)  # gated on its boxes (verify.thresholds_for)
            if head is not None:
                details["cut_before_nms"] = True
                details["head"] = head.to_dict()
            results[p] = Artifact(kind, dest, bytes=dest.stat().st_size, fidelity=fid, details=details)
    return results


def _try_twin(produced: dict[str, Any], fidelities: dict[str, Any], rejected: dict[str, str], key: str,
              stage: str, mode: str, reference: Any, verify_feeds: Sequence[Feeds], gate: Mapping[str, float],
              head: Any, cut_dir: Optional[Path], gfl_head: Optional[Mapping[str, Any]]) -> tuple[Any, Any, bool]:
    """Verify the int8 twin ``produced[key]``; it replaces the int8 file chosen so far when it
    passes ``gate`` and its mean cosine is higher (or that file was rejected). Returns the mean
    cosines (so far, twin) and whether it was kept; ``mode`` is appended to ``int8_mode`` if so."""
    so_far = fidelities.get("int8")
    try:
        fid = verify_in_process(Path(produced[key]), "tflite", reference, verify_feeds, stage=stage, thresholds=gate,
                                head=head, cut_dir=cut_dir, gfl=gfl_head)
    except EdgeShituError as e:
        fid, why = getattr(e, "fidelity", None), str(e)
    else:
        why = ""
    before = None if so_far is None else round(float(so_far.cosine_mean), 6)
    after = None if fid is None else round(float(fid.cosine_mean), 6)
    kept = not why and after is not None and (before is None or "int8" in rejected or after > before)
    if kept:
        produced["int8"], fidelities["int8"] = produced[key], fid
        produced["int8_mode"] = f"{produced.get('int8_mode', '')}; {mode}"
        rejected.pop("int8", None)
    return before, after, kept


def _take_bias_corrected(produced: dict[str, Any], fidelities: dict[str, Any], rejected: dict[str, str],
                         *verify: Any) -> None:
    """The bias-corrected twin (``_try_twin``); ``produced["bias_correction"]`` records both figures."""
    layers = produced.get("bias_corrected_layers", 0)
    before, after, kept = _try_twin(produced, fidelities, rejected, "int8_bias_corrected",
                                    "tflite-int8 (bias-corrected)", f"biases corrected ({layers} layers)", *verify)
    produced["bias_correction"] = {"layers": layers, "images": produced.get("bias_correction_images", 0),
                                   "cosine_mean_plain": before, "cosine_mean_corrected": after, "kept": kept}


def _take_rounded(produced: dict[str, Any], fidelities: dict[str, Any], rejected: dict[str, str],
                  *verify: Any) -> None:
    """The re-rounded-weights twin (``_try_twin``), after the bias-corrected one;
    ``produced["weight_rounding"]`` records both figures, or why there is no twin."""
    if produced.get("weight_rounding_error"):
        produced["weight_rounding"] = {"error": produced["weight_rounding_error"], "kept": False}
        return
    before, after, kept = _try_twin(produced, fidelities, rejected, "int8_rounded", "tflite-int8 (weights re-rounded)",
                                    "weights re-rounded (output-aware)", *verify)
    produced["weight_rounding"] = {**produced.get("weight_rounding_figures", {}), "cosine_mean_before": before,
                                   "cosine_mean_rounded": after, "kept": kept}


def _take_mixed(produced: dict[str, Any], fidelities: dict[str, Any], rejected: dict[str, str], reference: Any,
                verify_feeds: Sequence[Feeds], gate: Mapping[str, float], gfl_head: Optional[Mapping[str, Any]]
                ) -> None:
    """The mixed-precision rung: verify the candidates fewest-float-layers first, take the first
    that passes ``gate`` (the default gate int8 activations missed). ``produced["mixed_precision"]``
    records what was tried either way (when none passes, the 16x8 rung comes next)."""
    why = _fidelity_line(fidelities.get("int8"))
    tried: list[dict[str, Any]] = []
    record: dict[str, Any] = {"ranked_by": produced.get("int8_mixed_ranked_by", ""), "candidates_tried": tried,
                              "float_layers": [], "chosen": None}
    if produced.get("int8_mixed_error"):
        record["error"] = produced["int8_mixed_error"]
    if produced.get("int8_mixed_base_error"):
        record["all_int8_output_error"] = produced["int8_mixed_base_error"]
    if produced.get("int8_mixed_probe_cosine") is not None:
        record["all_int8_probe_cosine"] = produced["int8_mixed_probe_cosine"]
    produced["mixed_precision"] = record
    for cand in produced.get("int8_mixed") or []:
        n = len(cand["float_layers"])
        row = {"k": cand["k"], "float_layers": n, "ranges": cand.get("ranges"),
               "bytes": Path(cand["file"]).stat().st_size, "output_error": cand.get("output_error")}
        if cand.get("probe_cosine") is not None:
            row["probe_cosine"] = cand["probe_cosine"]
        tried.append(row)
        try:
            fid = verify_in_process(Path(cand["file"]), "tflite", reference, verify_feeds,
                                    stage=f"tflite-int8 (mixed, {n} float layers)", thresholds=gate, gfl=gfl_head)
        except EdgeShituError as e:
            row["passed"], row["fidelity"] = False, _fidelity_line(getattr(e, "fidelity", None))
            continue
        row["passed"], row["fidelity"] = True, _fidelity_line(fid)
        plain = Path(produced["int8"])
        plain_bytes = plain.stat().st_size
        record.update(float_layers=list(cand["float_layers"]), float_tensors=list(cand["tensors"]), chosen=cand["k"],
                      float_op_types=list(cand.get("float_op_types") or []), ranges=cand.get("ranges"),
                      bytes=row["bytes"], all_int8_bytes=plain_bytes, size_ratio=round(row["bytes"] / plain_bytes, 4),
                      float_weights=cand.get("float_weights", "float32"),
                      latency_ms=_latency_pair(plain, Path(cand["file"]), verify_feeds))
        produced["int8"], fidelities["int8"] = cand["file"], fid
        types = cand.get("float_op_types") or []
        also = f" and every {', '.join(types)}" if types else ""
        wo = " (their weights int8 behind a DEQUANTIZE)" if cand.get("float_weights") == WEIGHT_ONLY else ""
        produced["int8_mode"] = (f"int8 with {n} layers kept float{wo}{also} (the {cand['k']} activation tensors most "
                                 f"sensitive to int8, {cand.get('ranges', '')}), float32 input/output (all-int8 "
                                 f"activations missed the gate: {why})")
        rejected.pop("int8", None)
        return
    if "int8" in rejected:  # the one-line error says what the ladder tried
        if record.get("error"):
            rejected["int8"] += f"; mixed-precision ladder failed: {record['error']}"
        else:
            last = f"; the largest, {tried[-1]['float_layers']} float layers: {tried[-1].get('fidelity')}" if tried \
                else " (none fits the size cap)"
            rejected["int8"] += f"; none of {len(tried)} mixed-precision candidates passed{last}"


MIXED_LATENCY_RUNS = 15  # per file, interleaved: what the mixed file's float layers cost on this host


def _latency_pair(plain: Path, mixed: Path, feeds: Sequence[Feeds]) -> dict[str, Any]:
    """Median ms per run of the all-int8 and the chosen mixed file, interleaved, one thread, on this
    host (an x86 build host prices float layers lower than an arm board, where int8 kernels gain most)."""
    import platform

    from edge_shitu.runtimes.backend import open_backend
    from edge_shitu.timing import interleaved, median_ms

    try:
        bes = {"all_int8": open_backend(plain, "tflite", 1), "mixed": open_backend(mixed, "tflite", 1)}
        image = next(iter(feeds[0].values()))
        ms = median_ms(interleaved({k: (lambda be=be: be.run({be.inputs[0].name: image})) for k, be in bes.items()},
                                   rounds=MIXED_LATENCY_RUNS))
    except Exception as e:  # informative only: never stops a conversion
        return {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    return {"all_int8": round(ms["all_int8"], 2), "mixed": round(ms["mixed"], 2),
            "ratio": round(ms["mixed"] / ms["all_int8"], 3), "threads": 1, "runs": MIXED_LATENCY_RUNS,
            "host": platform.machine()}


def _passes(fid: Any, gate: Mapping[str, float]) -> bool:
    """Whether measured figures pass ``gate`` (unmeasured ones do not)."""
    from edge_shitu.converters.verify import check

    if fid is None:
        return False
    try:
        check(fid, gate)
    except EdgeShituError:
        return False
    return True


def _fidelity_line(fid: Any) -> str:
    """The figures a rejected rung is remembered by in the manifest."""
    if fid is None:
        return "not measured"
    parts = [f"cosine {fid.cosine_mean:.4f}"]
    if fid.boxes is not None:
        parts.append(f"box match {fid.boxes.matched_frac:.3f} of {fid.boxes.ref_boxes}")
    return ", ".join(parts)


def export(job: ExportJob) -> list[Artifact]:
    """The exporter contract (``converters/exporter.py``) for ``tflite:*`` kinds: every precision
    from the fp32 ONNX source in one onnx2tf child process, int8 calibrated on the image input of
    ``job.calibration``. Options: ``detector_head`` (a detector cut before NMS: the ONNX export's
    ``details["head"]``), ``float_pooling``, ``mse_ranges``, ``bias_correction``, ``weight_rounding``,
    ``mixed_precision``, ``replace_hardswish``."""
    precisions = [artifact_format(k).precision for k in job.kinds]
    calib = None
    if job.calibration:
        image = image_input(job.calibration[0])
        calib = np.concatenate([c[image] for c in job.calibration], axis=0)
    job.progress(f"{job.model}: TFLite {', '.join(precisions)} (onnx2tf, int8 calibrated on "
                 f"{len(job.calibration or [])} images)")
    opts = {k: job.options[k] for k in ("detector_head", "float_pooling", "mse_ranges", "replace_hardswish", "gfl_head",
                                        "bias_correction", "weight_rounding", "mixed_precision")
            if k in job.options}
    arts = to_tflite(job.source_for(job.kinds[0]), job.out_dir, name=job.model, precisions=precisions,
                     calibration=calib, verify_feeds=job.verify_feeds, reference=job.reference,
                     thresholds={p: job.gate_for(p) for p in precisions if job.gate_for(p) is not None} or None,
                     **opts)
    for a in arts.values():
        a.model = job.model
    return [arts[p] for p in precisions]


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_worker)
