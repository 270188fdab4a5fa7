"""Deterministic stand-in weights for graph-only Paddle models.

The real PP-ShiTu ``.pdiparams`` are not available offline, but the graphs are. Filling every
persistable variable with well-scaled random values gives runnable models that exercise every
real op of the real architectures through pruning, PTQ and each converter, so converted
outputs can be compared with the FP32 reference. They say nothing about recognition accuracy.

"Well-scaled" matters: with naive N(0, 1) weights activations overflow within a few of the
100+ layers, and with a trained-like detector head prior (bias -4.6) every score falls under
the NMS threshold; either makes fidelity numbers meaningless. So: He-normal conv/FC weights
(variance 2/fan_in keeps the activation scale through ReLU/hard-swish stacks), batch-norm
scale ~1, bias ~0, running mean ~0 and running variance ~1 (strictly positive: a zero or
negative variance gives NaN/inf after the rsqrt), conv/FC biases 0.

Each tensor is drawn from its own generator seeded by (seed, crc32(name)), so a value only
depends on the seed and the variable's name/shape, never on iteration order.
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.atomic import atomic_dir
from edge_shitu.errors import EdgeShituError

from .paddle_model import (
    MODEL_FILE,
    PARAMS_FILE,
    PaddleModel,
    _paddle,
    find_model_files,
    load_model,
    load_program,
    persistable_vars,
    save_model,
)

COPIED_FILES = ("infer_cfg.yml", "inference.yml")
VAR_FLOOR = float(os.environ.get("ES_VAR_FLOOR", "0.1"))



@dataclass
class SynthReport:
    out_dir: Path
    n_vars: int
    n_params: int
    by_role: dict[str, int]
    n_bn_calibrated: int = 0
    centered_biases: list[str] = field(default_factory=list)


_CONTROL_FLOW = frozenset({"while", "conditional_block", "recurrent"})


def _roles(program: Any, names: set[str]) -> dict[str, tuple[str, Any]]:
    """How each weight is used: (role, op) from the first real op that reads it, in any block.

    Control-flow ops are skipped: they only list a sub-block's inputs (PicoDet's post-process
    runs inside a ``while``), the real consumer is inside.
    """
    roles: dict[str, tuple[str, Any]] = {}
    for blk in program.blocks:
        producer = {out: op.type for op in blk.ops for out in op.output_arg_names}
        for op in blk.ops:
            if op.type in _CONTROL_FLOW:
                continue
            for slot in op.input_names:
                for arg in op.input(slot):
                    if arg in names and arg not in roles:
                        role = f"{op.type}.{slot}"
                        if op.type in ("matmul", "matmul_v2") and slot == "Y" and \
                                producer.get(op.input("X")[0]) == "softmax":
                            role = "dfl.project"  # GFL/PicoDet: softmax over bins @ [0, 1, ..., n-1]
                        roles[arg] = (role, op)
    return roles


def _value(name: str, shape: tuple[int, ...], role: str, op: Any, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    shape = tuple(max(int(d), 1) for d in shape)
    kind, _, slot = role.partition(".")
    if role == "dfl.project":
        # Not a learned weight: the bin values of the distance distribution. Random values here
        # give negative box sizes.
        return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    if slot == "Filter" and kind in ("conv2d", "depthwise_conv2d", "conv2d_transpose"):
        fan_in = int(np.prod(shape[1:])) if kind != "conv2d_transpose" else int(np.prod(shape)) // shape[1]
        return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
    if kind in ("batch_norm", "sync_batch_norm"):
        if slot == "Scale":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        if slot == "Bias":
            return 0.1 * rng.standard_normal(shape)
        if slot == "Mean":
            return 0.1 * rng.standard_normal(shape)
        if slot == "Variance":
            return rng.uniform(0.8, 1.25, shape)  # > 0 always
    if kind in ("layer_norm", "instance_norm", "group_norm"):
        return np.ones(shape) if slot == "Scale" else np.zeros(shape)
    if kind in ("matmul", "matmul_v2", "mul") and slot == "Y":
        trans = op.attr("transpose_Y") if op.has_attr("transpose_Y") else (
            op.attr("trans_y") if op.has_attr("trans_y") else False)
        fan_in = shape[-1] if trans else (int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0])
        return rng.normal(0.0, np.sqrt(1.0 / max(fan_in, 1)), shape)
    if kind in ("elementwise_add", "elementwise_sub") and slot == "Y":
        return np.zeros(shape)  # conv / FC bias
    if kind in ("elementwise_mul", "elementwise_div") and slot == "Y":
        return np.ones(shape)  # learnable scales
    if kind == "prelu":
        return np.full(shape, 0.25)
    return 0.01 * rng.standard_normal(shape)


def synth_arrays(program: Any, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """{name: array} for every persistable variable, with the declared dtype and shape."""
    from paddle.base import core

    pers = persistable_vars(program)
    roles = _roles(program, {v.name for v in pers})
    arrays: dict[str, np.ndarray] = {}
    by_role: dict[str, int] = {}
    for v in pers:
        role, op = roles.get(v.name, ("unused", None))
        shape = tuple(v.shape)
        if any(int(d) < 0 for d in shape):
            raise EdgeShituError(f"weight {v.name} has a dynamic shape {shape}: cannot synthesize it")
        dtype = core.VarDesc.VarType
        np_dtype = {dtype.FP32: np.float32, dtype.FP64: np.float64, dtype.FP16: np.float16,
                    dtype.INT32: np.int32, dtype.INT64: np.int64, dtype.INT8: np.int8}.get(v.dtype)
        if np_dtype is None:
            raise EdgeShituError(f"weight {v.name} has unsupported dtype {v.dtype}")
        val = _value(v.name, shape, role, op, seed) if role != "unused" else np.zeros(shape)
        arrays[v.name] = np.ascontiguousarray(val.reshape(shape).astype(np_dtype))
        by_role[role] = by_role.get(role, 0) + 1
    return arrays, by_role


def write_params(program: Any, arrays: Mapping[str, np.ndarray], params_path: Path) -> None:
    """Write a combined ``.pdiparams`` in the order Paddle's loader expects (sorted names)."""
    paddle = _paddle()
    scope = paddle.static.Scope()
    place = paddle.CPUPlace()
    exe = paddle.static.Executor(place)
    pers = persistable_vars(program)
    with paddle.static.scope_guard(scope):
        for v in pers:
            scope.var(v.name).get_tensor().set(arrays[v.name], place)
        paddle.static.save_vars(exe, dirname=str(params_path.parent), main_program=program, vars=pers,
                                filename=params_path.name)


def synthetic_images(n: int = 6, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Deterministic stand-ins for photos when no calibration images are given.

    Pink (1/f amplitude) noise, with colour correlation and a random contrast: natural images
    have that spectrum, and batch-norm statistics fitted on flat or white-noise images are far
    off on real photos (saturated detector scores, features 100x too large).
    """
    rng = np.random.default_rng([seed, 7])
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size)
    out = []
    for _ in range(n):
        chans = []
        base = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(size, size))
        for _c in range(3):
            own = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(size, size))
            chans.append(0.8 * base + 0.2 * own)
        img = np.stack(chans, axis=2)
        img = (img - img.mean()) / (img.std() + 1e-12)
        img = 128.0 + rng.uniform(30.0, 70.0) * img + rng.uniform(-40.0, 40.0, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def default_feeds(model_dir: Path, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per-image feeds with the preprocessing the model is deployed with (detector or extractor)."""
    from edge_shitu.preprocess import DetPreprocess, RecPreprocess

    program, feeds, _ = load_program(model_dir)
    blk = program.global_block()
    if (model_dir / "infer_cfg.yml").is_file() and "image" in feeds:
        det = DetPreprocess.from_infer_cfg(model_dir / "infer_cfg.yml")
        out = [det(im) for im in images]
        return [{k: v for k, v in f.items() if k in feeds} for f in out]
    if len(feeds) != 1 or len(blk.var(feeds[0]).shape) != 4:
        raise EdgeShituError(f"{model_dir}: cannot guess how to feed inputs {feeds}; pass feeds explicitly")
    h, w = (int(d) if int(d) > 0 else 224 for d in blk.var(feeds[0]).shape[2:])
    rec = RecPreprocess(size=(w, h))
    return [{feeds[0]: rec(im)} for im in images]


def _stack(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([f[k] for f in feeds], axis=0) for k in feeds[0]}


def calibrate_bn(model: PaddleModel, feeds: Sequence[Mapping[str, np.ndarray]]) -> int:
    """Set every batch-norm's running mean/variance to the statistics of ``feeds``.

    Random He-init nets with fixed BN statistics collapse: every image maps to nearly the same
    feature (pairwise cosine 0.99999 on the real PP-LCNet graphs), so any fidelity number would
    be meaningless. One forward pass with BN in training mode (batch statistics, momentum 0)
    re-centres each channel on the data, which keeps the representations of different images
    apart. Returns the number of batch-norm ops calibrated.
    """
    prog = model.program.clone()
    n = 0
    for blk in prog.blocks:
        for op in blk.ops:
            if op.type == "batch_norm":
                op._set_attr("is_test", False)
                op._set_attr("use_global_stats", False)
                op._set_attr("trainable_statistics", False)
                op._set_attr("momentum", 0.0)  # MeanOut/VarianceOut (same vars) := batch stats
                if not op.output("ReserveSpace") if "ReserveSpace" in op.output_names else True:
                    # Exported inference graphs drop this output; the training kernel needs it.
                    name = op.output("Y")[0] + ".reserve_space"
                    blk.create_var(name=name, dtype="float32", stop_gradient=True)
                    op.desc.set_output("ReserveSpace", [name])
                n += 1
    model.run(_stack(feeds), program=prog)
    # Channels that (almost) never fire on the calibration images get a near-zero variance, and
    # BN would then multiply any later perturbation of them by up to 1/sqrt(eps): measured, a
    # 10 % prune of one conv of PP-LCNetV2 dropped the output cosine to 0.5. A trained network
    # shrinks such channels' scale instead; a variance floor at a fraction of the layer's median
    # has the same effect.
    for op in (op for blk in model.program.blocks for op in blk.ops if op.type == "batch_norm"):
        name = op.input("Variance")[0]
        var = model.get_param(name)
        floor = VAR_FLOOR * float(np.median(var))
        if floor > 0:
            model.set_param(name, np.maximum(var, floor).astype(var.dtype))
    return n


def _fetch(model: PaddleModel, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    return model.run(feeds, fetch=names)


def _bias_through(cur: str, producer: Mapping[str, Any], pers: set[str]) -> tuple[str, int, int] | None:
    """Follow scale/transpose/reshape/split back from ``cur`` to ``x + bias``.

    Returns (bias name, first channel, channel count or -1 for all) or None.
    """
    first, count = 0, -1
    op = producer.get(cur)
    while op is not None:
        if op.type == "elementwise_add" and op.input("Y")[0] in pers:
            return op.input("Y")[0], first, count
        if op.type == "split" and op.attr("axis") == 1 and op.attr("sections"):
            k = op.output("Out").index(cur)
            first, count = first + sum(op.attr("sections")[:k]), op.attr("sections")[k]
        elif op.type == "scale" and float(op.attr("bias")) != 0.0:
            return None
        elif op.type not in ("scale", "transpose2", "reshape2", "split", "flatten_contiguous_range"):
            return None
        cur = op.input("X")[0]
        op = producer.get(cur)
    return None


def center_output_bias(model: PaddleModel, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """Subtract the data mean from an output that ends in ``+ bias`` (PP-LCNet v1's FC head).

    Global pooling of positive (hard-swish) activations gives every image a large shared
    component; a trained FC learns to cancel it, a random one does not.
    """
    blk = model.program.global_block()
    producer = {out: op for op in blk.ops for out in op.output_arg_names}
    pers = {v.name for v in persistable_vars(model.program)}
    todo = []
    for var in model.fetch_targets:
        gain, op = 1.0, producer.get(var.name)
        while op is not None and op.type == "scale" and float(op.attr("bias")) == 0.0:
            gain *= float(op.attr("scale"))
            op = producer.get(op.input("X")[0])
        if op is not None and op.type == "elementwise_add" and op.input("Y")[0] in pers and gain != 0.0:
            todo.append((var.name, op.input("Y")[0], gain))
    if not todo:
        return []
    outs = _fetch(model, _stack(feeds), [t[0] for t in todo])
    changed = []
    for (_, bias_name, gain), out in zip(todo, outs):
        bias = model.get_param(bias_name)
        if out.ndim != 2 or bias.shape != (out.shape[1],):
            continue
        model.set_param(bias_name, (bias - out.mean(axis=0) / gain).astype(bias.dtype))
        changed.append(bias_name)
    return changed


_POSTPROCESS = frozenset({"while", "conditional_block", "multiclass_nms", "multiclass_nms3", "matrix_nms", "fetch"})


def calibrate_score_bias(model: PaddleModel, feeds: Sequence[Mapping[str, np.ndarray]],
                         positive_frac: float = 0.01) -> list[str]:
    """Shift detector class logits so that about ``positive_frac`` of anchors score above 0.5.

    With zero bias every one of PicoDet's 8500 anchors scores ~0.75, so NMS keeps 100
    near-identical boxes; a trained detector is confident on a few anchors only. Only sigmoids
    that feed the post-processing (NMS / its while loop) are touched, not SE-block gates.
    """
    blk = model.program.global_block()
    producer = {out: op for op in blk.ops for out in op.output_arg_names}
    consumers: dict[str, set[str]] = {}
    for op in blk.ops:
        for a in op.input_arg_names:
            consumers.setdefault(a, set()).add(op.type)
    pers = {v.name for v in persistable_vars(model.program)}
    todo = []
    for op in blk.ops:
        if op.type == "sigmoid" and consumers.get(op.output("Out")[0], set()) & _POSTPROCESS:
            hit = _bias_through(op.input("X")[0], producer, pers)
            if hit is not None:
                todo.append((op.input("X")[0], *hit))
    if not todo:
        return []
    # One shift for all pyramid levels: the median over images of each image's quantile (the
    # logit range varies a lot between images; a pooled quantile follows the extreme one).
    shifts = []
    for f in feeds:
        logits = _fetch(model, f, [t[0] for t in todo])
        shifts.append(float(np.quantile(np.concatenate([x.ravel() for x in logits]), 1.0 - positive_frac)))
    shift = float(np.median(shifts))
    for bias_name, first, count in {(t[1], t[2], t[3]) for t in todo}:
        bias = model.get_param(bias_name).copy()
        stop = bias.shape[0] if count < 0 else first + count
        bias[first:stop] -= shift
        model.set_param(bias_name, bias)
    return sorted({t[1] for t in todo})


def synthesize(graph_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], seed: int = 0,
               calib_images: Sequence[np.ndarray] | None = None, calibrate: bool = True) -> SynthReport:
    """Graph-only model folder -> runnable model folder with deterministic synthetic weights.

    The ``.pdmodel`` bytes are copied verbatim (not re-serialized), so the synthetic model has
    exactly the real graph. With ``calibrate`` (default), batch-norm statistics and an output
    bias are fitted on ``calib_images`` (RGB uint8; deterministic synthetic images if None) so
    that outputs differ between images; see :func:`calibrate_bn`.
    """
    files = find_model_files(graph_dir, need_params=False)
    program, _, _ = load_program(files.model_path)
    arrays, by_role = synth_arrays(program, seed)
    out = Path(out_dir)
    n_bn, centered = 0, []
    with atomic_dir(out) as tmp:
        (tmp / MODEL_FILE).write_bytes(files.model_path.read_bytes())
        for name in COPIED_FILES:
            src = files.model_dir / name
            if src.is_file():
                (tmp / name).write_bytes(src.read_bytes())
        write_params(program, arrays, tmp / PARAMS_FILE)
        if calibrate:
            images = list(calib_images) if calib_images is not None else synthetic_images(seed=seed)
            if len(images) < 2:
                raise EdgeShituError("batch-norm calibration needs at least 2 images (got "
                                     f"{len(images)}): pass more calib_images or calibrate=False")
            feeds = default_feeds(tmp, images)
            model = load_model(tmp)
            n_bn = calibrate_bn(model, feeds)
            centered = center_output_bias(model, feeds) + calibrate_score_bias(model, feeds)
            save_model(model, tmp / "calibrated")
            for name in (MODEL_FILE, PARAMS_FILE):
                os.replace(tmp / "calibrated" / name, tmp / name)
            shutil.rmtree(tmp / "calibrated")
            # save_model re-serializes the desc; keep the original graph bytes verbatim.
            (tmp / MODEL_FILE).write_bytes(files.model_path.read_bytes())
    return SynthReport(out, len(arrays), int(sum(a.size for a in arrays.values())), by_role, n_bn, centered)
