"""Run a Paddle inference model (``.pdmodel`` + ``.pdiparams``) with Paddle Inference.

This is the FP32 reference every artifact is verified against, and the speed baseline
(MKLDNN/oneDNN, a fixed number of CPU threads) the product targets are measured from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edge_shitu.errors import CorruptFileError, EdgeShituError
from edge_shitu.runtimes.backend import TensorSpec, match_feeds

_PD_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32",
              6: "float64", 20: "uint8", 21: "int8"}


MODEL_FILE = "inference.pdmodel"
PARAMS_FILE = "inference.pdiparams"
PIR_FILE = "inference.json"


@dataclass
class ModelFiles:
    """Where the parts of a Paddle model live (params is None for a graph-only model)."""

    model_dir: Path
    model_path: Path
    params_path: Optional[Path]


def find_model_files(model_dir: str | os.PathLike[str], need_params: bool = True) -> ModelFiles:
    """Locate ``.pdmodel``/``.pdiparams`` in a folder (or from a ``.pdmodel`` path).

    The one finder of the tool (the reference runner, every converter step): accepts
    ``inference.pdmodel`` or any single ``*.pdmodel`` with a same-stem ``.pdiparams``, since
    PaddleClas/PaddleOCR/PaddleDetection exports differ in file stems. Reads no file and
    imports nothing heavy, so that a wrong folder fails in one line before paddle loads.
    """
    p = Path(model_dir)
    if p.is_file() and p.suffix == ".pdmodel":
        p, stem = p.parent, p.stem
    elif not p.exists():
        raise EdgeShituError(f"model directory {p} does not exist: pass the folder holding {MODEL_FILE}")
    elif not p.is_dir():
        raise EdgeShituError(f"{p} is not a model directory: pass the folder holding {MODEL_FILE}")
    else:
        stem = None
    if stem is None:
        if (p / MODEL_FILE).is_file():
            stem = "inference"
        else:
            candidates = sorted(p.glob("*.pdmodel"))
            if len(candidates) == 1:
                stem = candidates[0].stem
            elif len(candidates) > 1:
                raise EdgeShituError(f"{p} holds several .pdmodel files ({', '.join(c.name for c in candidates)}): "
                                     "pass the .pdmodel path itself")
            elif (p / PIR_FILE).is_file():
                raise EdgeShituError(
                    f"{p} has only {PIR_FILE} (Paddle 3 PIR format), which is not supported yet: re-export "
                    "with FLAGS_enable_pir_api=0 set before importing paddle (or with paddle 2.x) to get "
                    f"{MODEL_FILE} + {PARAMS_FILE}")
            else:
                raise EdgeShituError(f"{p} has no {MODEL_FILE}: pass a Paddle inference model folder "
                                     "(exported with paddle.jit.save / export_model.py)")
    model_path = p / f"{stem}.pdmodel"
    params_path: Optional[Path] = p / f"{stem}.pdiparams"
    if not params_path.is_file():
        if need_params:
            hint = (" (graph only: synthesize test weights with edge_shitu.converters.synth_weights)"
                    if (p / f"{stem}.pdiparams.info").is_file() else "")
            raise EdgeShituError(f"{p} has {model_path.name} but no {params_path.name} (the weights){hint}: "
                                 "copy the weights next to the graph")
        params_path = None
    return ModelFiles(p, model_path, params_path)


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """Paddle errors are multi-line C++ dumps; keep the line that says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if ("error" in low or "enforce" in low or "not" in low) and not ln.startswith(("---", "C++", "[")):
            return ln[:limit]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def program_io(pdmodel: str | os.PathLike[str]) -> tuple[list[TensorSpec], list[str]]:
    """Feed specs (in feed-column order) and fetch names of a ProgramDesc, read from the protobuf.

    Paddle Inference reports input shapes only after a reshape, so the declared shapes
    (-1 for open dimensions) come from the program itself.
    """
    from paddle.base.proto import framework_pb2

    prog = framework_pb2.ProgramDesc()
    prog.ParseFromString(Path(pdmodel).read_bytes())
    block = prog.blocks[0]
    vars_ = {v.name: v for v in block.vars}
    feeds: list[tuple[int, str]] = []
    fetches: list[tuple[int, str]] = []
    for op in block.ops:
        col = next((a.i for a in op.attrs if a.name == "col"), 0)
        if op.type == "feed":
            feeds += [(col, a) for o in op.outputs if o.parameter == "Out" for a in o.arguments]
        elif op.type == "fetch":
            fetches += [(col, a) for i in op.inputs if i.parameter == "X" for a in i.arguments]
    specs = []
    for _, name in sorted(feeds):
        t = vars_[name].type.lod_tensor.tensor if name in vars_ else None
        shape = tuple(int(d) for d in t.dims) if t is not None else ()
        dtype = _PD_DTYPES.get(int(t.data_type), "float32") if t is not None else "float32"
        specs.append(TensorSpec(name, shape, dtype, "NCHW" if len(shape) == 4 else ""))
    return specs, [n for _, n in sorted(fetches)]


class PaddleBackend:
    """Paddle Inference predictor, as PaddleClas/PaddleDetection deploy it: the production
    predictor with IR passes on and, with ``mkldnn=True``, oneDNN. Every converted artifact is
    judged against this one runner (the converter has no other)."""

    kind = "paddle"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, mkldnn: bool = True) -> None:
        files = find_model_files(path, need_params=True)
        model, params = files.model_path, files.params_path
        try:
            import paddle.inference as pi
        except ImportError as e:
            raise EdgeShituError("paddlepaddle is not installed: use the conversion environment") from e
        self.path = model
        self.model_dir = files.model_dir
        self.name = f"paddle:{model.parent.name}/{model.name}"
        self.threads = threads
        cfg = pi.Config(str(model), str(params))
        cfg.disable_gpu()
        if mkldnn:
            cfg.enable_mkldnn()
        cfg.set_cpu_math_library_num_threads(int(threads))
        cfg.switch_ir_optim(True)
        cfg.disable_glog_info()
        try:
            self._predictor = pi.create_predictor(cfg)
        except Exception as e:  # Paddle raises its own C++ error types, many lines long
            raise CorruptFileError(f"Paddle Inference cannot load {files.model_dir}: {_first_line(e)}") from None
        self.inputs, _ = program_io(model)
        names = list(self._predictor.get_input_names())
        order = {n: i for i, n in enumerate(names)}
        self.inputs = sorted(self.inputs, key=lambda s: order.get(s.name, len(order)))
        self.outputs = [TensorSpec(n, (), "float32") for n in self._predictor.get_output_names()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = match_feeds(self.inputs, feeds, self.name)
        for spec, arr in zip(self.inputs, arrays):
            h = self._predictor.get_input_handle(spec.name)
            arr = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
            h.reshape(list(arr.shape))
            h.copy_from_cpu(arr)
        self._predictor.run()
        return [self._predictor.get_output_handle(o.name).copy_to_cpu() for o in self.outputs]
