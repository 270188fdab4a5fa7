"""Run a Paddle inference model (``.pdmodel`` + ``.pdiparams``) with Paddle Inference.

This is the FP32 reference every artifact is verified against, and the speed baseline
(MKLDNN/oneDNN, a fixed number of CPU threads) the product targets are measured from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.runtimes.backend import TensorSpec, match_feeds

_PD_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32",
              6: "float64", 20: "uint8", 21: "int8"}


def find_model_files(path: str | os.PathLike[str]) -> tuple[Path, Optional[Path]]:
    """(``.pdmodel``, ``.pdiparams`` or None) for a model directory or a ``.pdmodel`` path.

    Prefers ``inference.*`` then ``model.*`` when a directory holds several programs.
    """
    p = Path(path)
    if p.is_dir():
        cands = sorted(p.glob("*.pdmodel"))
        if not cands:
            if (p / "inference.json").exists():
                raise EdgeShituError(
                    f"{p} holds a Paddle 3 PIR model (inference.json), which Paddle Lite and "
                    "paddle2onnx 1.x cannot read: re-export it with FLAGS_enable_pir_api=0"
                )
            raise EdgeShituError(f"no .pdmodel file in {p}: point to a Paddle inference model directory")
        by_stem = {c.stem: c for c in cands}
        model = by_stem.get("inference") or by_stem.get("model") or cands[0]
    else:
        model = p
        if model.suffix != ".pdmodel":
            raise EdgeShituError(f"{p} is not a .pdmodel file")
    params = model.with_suffix(".pdiparams")
    return model, (params if params.exists() else None)


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
    """Paddle Inference predictor; ``mkldnn=True`` is the production CPU configuration."""

    kind = "paddle"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, mkldnn: bool = True) -> None:
        model, params = find_model_files(path)
        if params is None:
            raise EdgeShituError(
                f"{model} has no .pdiparams beside it: the model has no weights (synthesize them "
                "with converters/synth_weights.py)"
            )
        try:
            import paddle.inference as pi
        except ImportError as e:
            raise EdgeShituError("paddlepaddle is not installed: use the conversion environment") from e
        self.path = model
        self.name = f"paddle:{model.parent.name}/{model.name}"
        self.threads = threads
        cfg = pi.Config(str(model), str(params))
        cfg.disable_gpu()
        if mkldnn:
            cfg.enable_mkldnn()
        cfg.set_cpu_math_library_num_threads(threads)
        cfg.disable_glog_info()
        self._predictor = pi.create_predictor(cfg)
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
