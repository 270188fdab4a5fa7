"""Loading, saving and measuring Paddle (legacy ProgramDesc) inference models.

Every other converter step (synthetic weights, pruning, PTQ, Paddle Lite, ONNX) starts from the
object returned by :func:`load_model`, so this is where user mistakes in a model folder are
turned into one actionable line instead of a 60-line C++ stack from Paddle.

Each model gets its OWN ``paddle.static.Scope``: PP-ShiTu's detector and extractor both name
their weights ``conv2d_0.w_0`` etc., and loading both into the global scope would silently mix
them.
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")  # must precede the paddle import to take effect
# Paddle's OpenMP threads busy-wait ~200 ms after each run by default. A conversion alternates
# Paddle runs with TFLite / Paddle Lite runs in one process (verification, latency), and on a
# 2-core board those spinning threads take the CPU from whatever runs next: measured, int8
# TFLite at 2 threads right after a Paddle run was 2x slower than alone. Passive waiting costs
# Paddle nothing here (PP-LCNet v1, 1 thread: 38 ms busy-waiting, 28 ms passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

import contextlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.atomic import atomic_dir
from edge_shitu.errors import CorruptFileError, EdgeShituError
from edge_shitu.runtimes.paddle_backend import MODEL_FILE, PARAMS_FILE, _first_line, find_model_files

# Files that travel with a model folder and must survive prune/quantize/save.
SIDE_FILES = ("infer_cfg.yml", "inference.yml", "inference.pdiparams.info")

# Ops whose weights are (input-)channel dense and dominate the cost of a CNN.
CONV_OPS = ("conv2d", "depthwise_conv2d", "conv2d_transpose")
MATMUL_OPS = ("matmul", "matmul_v2", "mul")
# Control-flow / post-processing ops: infer_shape on them needs their sub-blocks' runtime state.
_SKIP_INFER = frozenset({"feed", "fetch", "while", "conditional_block", "select_input", "select_output"})


def _paddle() -> Any:
    """Import paddle in static mode; deferred so that importing this module stays cheap."""
    import paddle

    paddle.enable_static()
    return paddle


def load_program(model_dir: str | os.PathLike[str]) -> tuple[Any, list[str], list[str]]:
    """Parse only the graph: (program, feed names, fetch names). Needs no weights."""
    paddle = _paddle()
    files = find_model_files(model_dir, need_params=False)
    data = files.model_path.read_bytes()
    if not data:
        raise CorruptFileError(f"{files.model_path} is empty: re-export the model")
    try:
        program = paddle.static.Program.parse_from_string(data)
    except Exception as e:
        raise CorruptFileError(f"{files.model_path} is not a Paddle ProgramDesc (corrupt or truncated?): "
                               f"{_first_line(e)}") from None
    feeds = list(program.desc.get_feed_target_names())
    fetches = list(program.desc.get_fetch_target_names())
    if not program.global_block().ops or not feeds or not fetches:
        raise CorruptFileError(f"{files.model_path} parses but has no feed/fetch ops: it is not an inference "
                               "model (export with paddle.jit.save or save_inference_model)")
    return program, feeds, fetches


@dataclass
class PaddleModel:
    """A loaded static inference program with its own scope and executor."""

    program: Any
    feed_names: list[str]
    fetch_targets: list[Any]
    scope: Any
    exe: Any
    model_dir: Path
    model_path: Path
    params_path: Path
    side_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def fetch_names(self) -> list[str]:
        return [v.name for v in self.fetch_targets]

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Make this model's scope current (Pruner/Executor read the current scope)."""
        paddle = _paddle()
        with paddle.static.scope_guard(self.scope):
            yield

    def feed_shapes(self) -> dict[str, tuple[int, ...]]:
        blk = self.program.global_block()
        return {n: tuple(blk.var(n).shape) for n in self.feed_names}

    def run(self, feeds: Mapping[str, np.ndarray], program: Any = None,
            fetch: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run with the static Executor (pruning sensitivity, calibration: no Predictor rebuild).

        ``fetch`` names intermediate tensors; the graph is then cut to what they need, which also
        skips the detector's NMS loop. A full run of a graph with a ``while`` loop uses a fresh
        Executor: the cached interpreter keeps the loop's tensor arrays, and a second run then
        fails with "Tensor holds no memory" (paddle 2.6; erasing the arrays from the scope does
        not help, and running in child scopes that are dropped segfaults later).
        """
        paddle = _paddle()
        names = list(self.feed_names) if fetch is None else [n for n in self.feed_names if n in feeds]
        missing = set(names) - set(feeds)
        if missing:
            raise EdgeShituError(f"missing model inputs {sorted(missing)}: the model needs {self.feed_names}")
        prog = program or self.program
        exe = self.exe
        if fetch is None and any(op.type == "while" for op in prog.global_block().ops):
            exe = paddle.static.Executor(paddle.CPUPlace())  # see docstring: no cached interpreter
        with paddle.static.scope_guard(self.scope):
            out = exe.run(prog, feed={k: feeds[k] for k in names},
                          fetch_list=list(fetch) if fetch is not None else self.fetch_targets,
                          return_numpy=False, use_prune=fetch is not None)
        return [np.array(o) for o in out]

    def get_param(self, name: str) -> np.ndarray:
        return np.array(self.scope.find_var(name).get_tensor())

    def set_param(self, name: str, value: np.ndarray) -> None:
        paddle = _paddle()
        self.scope.find_var(name).get_tensor().set(np.ascontiguousarray(value), paddle.CPUPlace())


def load_model(model_dir: str | os.PathLike[str]) -> PaddleModel:
    """Load a Paddle inference model (legacy ``.pdmodel`` + ``.pdiparams``) into a fresh scope."""
    paddle = _paddle()
    files = find_model_files(model_dir, need_params=True)
    load_program(files.model_path)  # clear errors for a bad graph before Paddle's own
    assert files.params_path is not None
    if files.params_path.stat().st_size == 0:
        raise CorruptFileError(f"{files.params_path} is empty: re-copy the weights")
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(paddle.CPUPlace())
    prefix = str(files.model_dir / files.model_path.stem)
    try:
        with paddle.static.scope_guard(scope):
            program, feeds, fetch_targets = paddle.static.load_inference_model(prefix, exe)
    except Exception as e:
        raise CorruptFileError(
            f"{files.params_path} does not match {files.model_path.name} (truncated, corrupt or from another "
            f"model): {_first_line(e)}") from None
    side = {n: (files.model_dir / n).read_bytes() for n in SIDE_FILES if (files.model_dir / n).is_file()}
    return PaddleModel(program, list(feeds), list(fetch_targets), scope, exe, files.model_dir,
                       files.model_path, files.params_path, side)


def persistable_vars(program: Any) -> list[Any]:
    """Weights of an inference program: persistable LoD tensors, excluding feed/fetch holders.

    ``program.all_parameters()`` is empty for a loaded inference program, hence this walk.
    """
    from paddle.base import core

    seen: dict[str, Any] = {}
    for v in program.list_vars():
        if v.persistable and v.name not in seen and v.type == core.VarDesc.VarType.LOD_TENSOR \
                and v.name not in ("feed", "fetch"):
            seen[v.name] = v
    return [seen[n] for n in sorted(seen)]


def save_model(model: PaddleModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``inference.pdmodel``/``.pdiparams`` (+ side files) atomically.

    The program desc is serialized as is rather than through ``save_inference_model``, which
    would re-normalize the graph (append another scale op per output, renaming the outputs).
    """
    paddle = _paddle()
    out = Path(out_dir)
    pers = persistable_vars(model.program)
    with atomic_dir(out) as tmp:
        (tmp / MODEL_FILE).write_bytes(model.program.desc.serialize_to_string())
        with model.guard():
            paddle.static.save_vars(model.exe, dirname=str(tmp), main_program=model.program, vars=pers,
                                    filename=PARAMS_FILE)
        for name, data in model.side_files.items():
            if name != "inference.pdiparams.info":  # shapes there would be stale after pruning
                (tmp / name).write_bytes(data)
    return out


def count_params(model: PaddleModel | Any) -> int:
    """Number of weight scalars (persistable tensors), from the scope when loaded, else the desc."""
    program = model.program if isinstance(model, PaddleModel) else model
    total = 0
    for v in persistable_vars(program):
        shape = None
        if isinstance(model, PaddleModel):
            var = model.scope.find_var(v.name)
            if var is not None and var.get_tensor()._is_initialized():
                shape = var.get_tensor().shape()
        if shape is None:
            shape = v.shape
        total += int(np.prod([max(int(d), 1) for d in shape])) if len(shape) else 1
    return total


@dataclass
class FlopCount:
    """Multiply-accumulates of the dense ops. Paddle's model zoo quotes MACs as "FLOPs"."""

    macs: int
    by_type: dict[str, int]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _infer_shapes(program: Any, input_shapes: Mapping[str, Sequence[int]]) -> Any:
    """Clone and propagate concrete input shapes through the desc (no execution, no weights)."""
    prog = program.clone()
    blk = prog.global_block()
    for name, shape in input_shapes.items():
        if not blk.has_var(name):
            raise EdgeShituError(f"input {name!r} is not in the model (inputs: "
                                 f"{list(prog.desc.get_feed_target_names())})")
        blk.var(name).desc.set_shape([int(d) for d in shape])
    for op in blk.ops:
        if op.type in _SKIP_INFER:
            continue
        with contextlib.suppress(Exception):  # post-processing ops may need runtime values
            op.desc.infer_shape(blk.desc)
    return prog


def count_flops(model: PaddleModel | Any, input_shapes: Mapping[str, Sequence[int]] | None = None) -> FlopCount:
    """MACs of conv2d / depthwise_conv2d / conv2d_transpose / matmul(_v2) / mul for given inputs.

    ``input_shapes`` defaults to the declared feed shapes with -1 read as 1 (batch) — pass the
    real spatial size for models exported with dynamic H/W.
    """
    program = model.program if isinstance(model, PaddleModel) else model
    blk0 = program.global_block()
    if input_shapes is None:
        input_shapes = {n: [d if d > 0 else 1 for d in blk0.var(n).shape]
                        for n in program.desc.get_feed_target_names()}
    prog = _infer_shapes(program, input_shapes)
    blk = prog.global_block()

    def shape(name: str) -> list[int]:
        s = list(blk.var(name).shape)
        return [d if d > 0 else 1 for d in s]

    by_type: dict[str, int] = {}
    for op in blk.ops:
        macs = 0
        if op.type in ("conv2d", "depthwise_conv2d"):
            w = shape(op.input("Filter")[0])  # [Cout, Cin/groups, kh, kw]
            o = shape(op.output("Output")[0])  # [N, Cout, H, W]
            macs = int(np.prod(o)) * int(np.prod(w[1:]))
        elif op.type == "conv2d_transpose":
            w = shape(op.input("Filter")[0])  # [Cin, Cout/groups, kh, kw]
            x = shape(op.input("Input")[0])
            macs = int(np.prod(x)) * int(np.prod(w[1:]))
        elif op.type in MATMUL_OPS:
            x, y = shape(op.input("X")[0]), shape(op.input("Y")[0])
            o = shape(op.output("Out")[0])
            if op.type == "mul":
                k = int(np.prod(x[op.attr("x_num_col_dims"):]))
            else:
                tx = op.attr("transpose_X") if op.has_attr("transpose_X") else op.attr("trans_x")
                k = x[-2] if tx else x[-1]
            macs = int(np.prod(o)) * int(k)
            del y
        if macs:
            by_type[op.type] = by_type.get(op.type, 0) + macs
    return FlopCount(sum(by_type.values()), by_type)


def copy_side_files(src_dir: str | os.PathLike[str], dst_dir: str | os.PathLike[str]) -> None:
    """Carry infer_cfg.yml & co. to a derived model folder (PTQ writes its own folder)."""
    for name in SIDE_FILES:
        if name == "inference.pdiparams.info":
            continue
        src = Path(src_dir) / name
        if src.is_file():
            shutil.copyfile(src, Path(dst_dir) / name)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flattened tensors (1.0 for two all-zero tensors, which agree)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0 or not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return float(a @ b / (na * nb))


def mean_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows (images) of the per-row cosine: the extractor fidelity figure."""
    a = np.asarray(a).reshape(len(a), -1)
    b = np.asarray(b).reshape(len(b), -1)
    return float(np.mean([cosine(x, y) for x, y in zip(a, b)]))


_POSTPROCESS_OPS = frozenset({"while", "conditional_block", "multiclass_nms", "multiclass_nms2", "multiclass_nms3",
                              "matrix_nms", "yolo_box", "prior_box", "distribute_fpn_proposals"})
_NOT_HEAD = frozenset({"fill_constant", "shape", "slice", "cast", "less_than", "assign", "range",
                       "write_to_array", "lod_array_length", "increment", "tensor_array_to_tensor",
                       "read_from_array"})


def head_outputs(program: Any) -> list[str]:
    """The raw network outputs: tensors entering the post-processing (NMS, decode loops).

    For a detector these are the class-score and box-distribution maps before NMS: they vary
    smoothly with the weights, unlike the NMS'ed boxes (a tiny score change reorders or drops
    a box), so they are what pruning sensitivity and int8 fidelity are measured on. For a model
    without post-processing the fetch targets are returned.
    """
    from paddle.base import core

    blk = program.global_block()
    producer: dict[str, Any] = {}
    for op in blk.ops:  # first writer: a while op also lists its loop-carried inputs as outputs
        for out in op.output_arg_names:
            producer.setdefault(out, op)
    feeds = set(program.desc.get_feed_target_names())
    names: list[str] = []
    for op in blk.ops:
        if op.type not in _POSTPROCESS_OPS:
            continue
        for arg in op.input_arg_names:
            if arg in feeds or arg in names or not blk.has_var(arg):
                continue
            v = blk.var(arg)
            src = producer.get(arg)
            if v.persistable or v.type != core.VarDesc.VarType.LOD_TENSOR or src is None \
                    or src.type in _NOT_HEAD or src.type in _POSTPROCESS_OPS or len(v.shape) < 2:
                continue
            names.append(arg)
    return names or list(program.desc.get_fetch_target_names())
