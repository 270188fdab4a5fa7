"""Post-training int8 quantization with PaddleSlim, calibrated on real images.

Defaults and their reasons (measured, see the project notes):
- only ``conv2d``/``depthwise_conv2d`` are quantized: a quantized ``matmul_v2``/FC produces NaN
  in Paddle Lite x86, and the FC is a negligible share of PP-LCNet's cost;
- ``onnx_format=False`` (fake quant-dequant ops, fp32 weights): the classic Paddle Lite path.
  ``onnx_format=True`` writes quantize_linear/dequantize_linear with int8 weights instead;
- the calibration data goes through a real ``paddle.io.DataLoader`` with
  ``feed_list=[paddle.static.data(...)]`` and ``return_list=False``: PaddleSlim 2.6 rejects
  generators;
- detectors are fed all of their inputs (image, im_shape, scale_factor), with the model's own
  preprocessing, so the calibration ranges are the deployed ones.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.atomic import atomic_dir
from edge_shitu.errors import EdgeShituError

from .paddle_model import (
    MODEL_FILE,
    PARAMS_FILE,
    _first_line,
    _paddle,
    copy_side_files,
    find_model_files,
    load_program,
)

DEFAULT_OPS = ("conv2d", "depthwise_conv2d")
ALGOS = ("hist", "KL", "avg", "abs_max", "mse", "emd", "min_max")


@dataclass
class QuantReport:
    out_dir: Path
    algo: str
    onnx_format: bool
    quantizable_op_type: list[str]
    n_calib: int
    n_quant_ops: int
    seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)


def _executor_class() -> type:
    paddle = _paddle()

    class _LoopSafeExecutor(paddle.static.Executor):
        """Executor that rebuilds its interpreter for graphs with a ``while`` loop.

        PaddleSlim runs the calibration program once per batch (twice for hist/KL). On
        PP-PicoDet, whose NMS post-process is a ``while`` loop, the second run of a cached
        interpreter fails with "Tensor holds no memory" (paddle 2.6); a fresh executor per run
        does not.
        """

        def run(self, program: Any = None, *args: Any, **kwargs: Any) -> Any:
            if program is not None and hasattr(program, "global_block") and any(
                    op.type == "while" for op in program.global_block().ops):
                return paddle.static.Executor(self.place).run(program, *args, **kwargs)
            return super().run(program, *args, **kwargs)

    return _LoopSafeExecutor


def _make_loader(feeds: Sequence[Mapping[str, np.ndarray]], feed_names: Sequence[str],
                 batch_size: int) -> Any:
    """A real paddle.io.DataLoader over per-image feed dicts (each with a batch dim of 1)."""
    paddle = _paddle()

    samples = [tuple(np.asarray(f[n])[0] for n in feed_names) for f in feeds]

    class _Feeds(paddle.io.Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
            return samples[i]

    prog = paddle.static.Program()
    with paddle.static.program_guard(prog, paddle.static.Program()):
        feed_list = [paddle.static.data(name=n, shape=[None, *s.shape], dtype=str(s.dtype))
                     for n, s in zip(feed_names, samples[0])]
    return paddle.io.DataLoader(_Feeds(), feed_list=feed_list, places=[paddle.CPUPlace()],
                                return_list=False, batch_size=batch_size, shuffle=False, drop_last=False)


def quantize(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             calib_feeds: Sequence[Mapping[str, np.ndarray]], *, algo: str = "hist",
             quantizable_op_type: Sequence[str] = DEFAULT_OPS, onnx_format: bool = False,
             batch_size: int = 4, hist_percent: float = 0.9999, bias_correction: bool = False,
             weight_quantize_type: str = "channel_wise_abs_max",
             skip_tensor_list: Sequence[str] | None = None) -> QuantReport:
    """PTQ of a Paddle inference model; writes ``inference.pdmodel/.pdiparams`` in ``out_dir``.

    ``calib_feeds`` are per-image feed dicts (what :mod:`edge_shitu.preprocess` returns for
    real photos); every model input must be present. Returns a report; the model directory is
    ``report.out_dir``.
    """
    paddle = _paddle()
    from paddleslim.quant import quant_post_static

    if algo not in ALGOS:
        raise EdgeShituError(f"unknown PTQ algo {algo!r}: use one of {', '.join(ALGOS)}")
    if len(calib_feeds) == 0:
        raise EdgeShituError("PTQ needs calibration images: pass at least one (typically 16-64 real photos)")
    files = find_model_files(model_dir, need_params=True)
    _, feed_names, _ = load_program(files.model_path)
    for i, f in enumerate(calib_feeds):
        missing = set(feed_names) - set(f)
        if missing:
            raise EdgeShituError(f"calibration sample {i} lacks model inputs {sorted(missing)} "
                                 f"(the model needs {feed_names})")
    # every batch the same size: a short last batch crashes (SIGSEGV) PaddleSlim's calibration
    # run through PP-PicoDet's NMS while-loop (paddle 2.6), so use the largest divisor <= batch_size
    n = len(calib_feeds)
    batch_size = max(d for d in range(1, max(1, min(batch_size, n)) + 1) if n % d == 0)
    loader = _make_loader(calib_feeds, feed_names, batch_size)
    exe = _executor_class()(paddle.CPUPlace())
    scope = paddle.static.Scope()
    out = Path(out_dir)
    t0 = time.perf_counter()
    with _quiet(), _block0_only(), atomic_dir(out) as tmp, \
            tempfile.TemporaryDirectory(prefix=".ptq-", dir=tmp.parent) as work:
        try:
            with paddle.static.scope_guard(scope):
                quant_post_static(
                    executor=exe, model_dir=str(files.model_dir), quantize_model_path=work,
                    data_loader=loader, model_filename=files.model_path.name,
                    params_filename=files.params_path.name if files.params_path else None,
                    save_model_filename=MODEL_FILE, save_params_filename=PARAMS_FILE,
                    batch_size=batch_size, batch_nums=-(-len(calib_feeds) // batch_size), scope=scope,
                    algo=algo, hist_percent=hist_percent, bias_correction=bias_correction,
                    quantizable_op_type=list(quantizable_op_type), onnx_format=onnx_format,
                    weight_quantize_type=weight_quantize_type,
                    skip_tensor_list=list(skip_tensor_list) if skip_tensor_list else None)
        except EdgeShituError:
            raise
        except Exception as e:
            raise EdgeShituError(f"PTQ of {files.model_dir} failed: {_first_line(e)}") from e
        for name in (MODEL_FILE, PARAMS_FILE):
            shutil.move(os.path.join(work, name), tmp / name)
        copy_side_files(files.model_dir, tmp)
    program, _, _ = load_program(out)
    return QuantReport(out, algo, onnx_format, list(quantizable_op_type), len(calib_feeds),
                       _count_quantized(program, quantizable_op_type), time.perf_counter() - t0,
                       _quant_op_counts(program))


def quantized_op_weights(model_dir: str | os.PathLike[str], op_types: Sequence[str] = DEFAULT_OPS) -> dict[str, bool]:
    """{weight name: quantized?} for every op of ``op_types`` with a persistable weight in a
    (quantized or not) program: what checks that a ``skip_tensor_list`` left exactly the named
    ops float (an op is quantized when it reads a quantized tensor or feeds a dequantize op)."""
    program, _, _ = load_program(model_dir)
    blk = program.global_block()
    out: dict[str, bool] = {}
    for op, quantized in _ops_quantized(program, op_types):
        weight = next((op.input(s)[0] for s in ("Filter", "Y") if s in op.input_names and op.input(s)
                       and blk.has_var(op.input(s)[0]) and blk.var(op.input(s)[0]).persistable), None)
        if weight is not None:
            out[weight] = quantized
    return out


def _quant_op_counts(program: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for blk in program.blocks:
        for op in blk.ops:
            if "quant" in op.type:
                counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def _ops_quantized(program: Any, op_types: Sequence[str]) -> list[tuple[Any, bool]]:
    """(op, quantized?) for every op of ``op_types`` in block 0: quantized when it reads a
    (de)quantized tensor or feeds a dequantize op."""
    blk = program.global_block()
    producer = {o: op.type for op in blk.ops for o in op.output_arg_names}
    consumers: dict[str, list[str]] = {}
    for op in blk.ops:
        for a in op.input_arg_names:
            consumers.setdefault(a, []).append(op.type)
    out = []
    for op in blk.ops:
        if op.type not in op_types:
            continue
        ins = any("quant" in producer.get(a, "") for a in op.input_arg_names)
        outs = any("dequant" in t for o in op.output_arg_names for t in consumers.get(o, []))
        out.append((op, bool(ins or outs)))
    return out


def _count_quantized(program: Any, op_types: Sequence[str]) -> int:
    """Ops of ``op_types`` that read a (de)quantized tensor or feed a dequantize op."""
    return sum(q for _, q in _ops_quantized(program, op_types))


class _block0_only:
    """Calibrate only tensors of the main block (patch of PostTrainingQuantization, undone on exit).

    Paddle 2.6's PTQ also samples outputs of "observer" ops inside sub-blocks, e.g. the
    ``gather`` ops of PP-PicoDet's NMS ``while`` loop. Those tensors live in the loop's step
    scopes, so sampling asserts "Cannot find gather_10.tmp_0 in scope". Post-processing is never
    quantized anyway: such tensors are declared uncalibrated (PaddleSlim then skips them).
    """

    def __enter__(self) -> None:
        from paddle.static.quantization import post_training_quantization as ptq

        cls = ptq.PostTrainingQuantization
        self._cls, self._orig = cls, cls._collect_target_varnames
        orig = self._orig

        def collect(this: Any) -> None:
            orig(this)
            main = this._program.global_block().vars
            # Also skip scalars / int tensors of the post-process in the main block (loop
            # counters, shapes): PaddleSlim's samplers reshape by shape[0] and fail on them.
            outside = {n for n in this._quantized_act_var_name
                       if n not in main or len(main[n].shape) < 2 or str(main[n].dtype) != "paddle.float32"}
            this._quantized_act_var_name -= outside
            this._zero_size_var_names |= outside

        cls._collect_target_varnames = collect

    def __exit__(self, *exc: object) -> None:
        self._cls._collect_target_varnames = self._orig


class _quiet:
    """Silence PaddleSlim's INFO logs and tqdm bars for the duration; errors still propagate.

    tqdm reads TQDM_DISABLE only at import, so the bars are switched off by swapping the
    ``tqdm`` name inside Paddle's quantization modules.
    """

    _MODULES = ("paddle.static.quantization.post_training_quantization",
                "paddle.static.quantization.quantization_pass")

    def __enter__(self) -> None:
        import functools
        import importlib

        import tqdm as _tqdm

        self._patched = []
        for name in self._MODULES:
            mod = importlib.import_module(name)
            if hasattr(mod, "tqdm"):
                self._patched.append((mod, mod.tqdm))
                mod.tqdm = functools.partial(_tqdm.tqdm, disable=True)
        self._levels = {}
        for mod, _ in self._patched:
            lg = getattr(mod, "_logger", None)
            if isinstance(lg, logging.Logger):
                self._levels[lg] = lg.level
                lg.setLevel(logging.ERROR)  # its warnings are about the skipped post-process tensors
        for name in ("paddleslim", "paddle"):
            lg = logging.getLogger(name)
            self._levels[lg] = lg.level
            lg.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        for mod, orig in self._patched:
            mod.tqdm = orig
        for lg, level in self._levels.items():
            lg.setLevel(level)


def quantize_in_subprocess(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                           calib_feeds: Sequence[Mapping[str, np.ndarray]], timeout: float = 3600,
                           **kwargs: Any) -> QuantReport:
    """:func:`quantize` in a child process: Paddle's executor can SIGSEGV inside PaddleSlim's
    calibration (seen on detectors' NMS loops), which must become an error naming the stage, not
    a converter that dies without a word."""
    from edge_shitu.converters.child import run_worker, save_feeds

    with tempfile.TemporaryDirectory(prefix="es-ptq-") as tmp:
        feeds_file = os.path.join(tmp, "feeds.npz")
        save_feeds(calib_feeds, feeds_file)
        job = {"model": str(model_dir), "out": str(out_dir), "feeds": feeds_file, "kw": kwargs}
        r = run_worker("edge_shitu.converters.quantize", job, stage=f"PTQ of {model_dir}", timeout=timeout)
    return QuantReport(Path(r["out_dir"]), r["algo"], r["onnx_format"], r["quantizable_op_type"], r["n_calib"],
                       r["n_quant_ops"], r["seconds"], r["op_counts"])


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    from edge_shitu.converters.child import load_feeds

    rep = quantize(job["model"], job["out"], load_feeds(job["feeds"]), **job["kw"])
    return {**asdict(rep), "out_dir": str(rep.out_dir)}


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_worker)
