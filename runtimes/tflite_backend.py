"""Run a ``.tflite`` file with LiteRT (``ai-edge-litert``), or ``tflite-runtime`` as a fallback.

Why the care around names, layout and order:

- onnx2tf writes NHWC models; callers always feed NCHW, so 4-D feeds are transposed here.
- onnx2tf renames inputs and names outputs ``Identity``, ``Identity_1``, ... in the ONNX output
  order, while the interpreter may list them in another order: outputs are re-sorted by that
  index so ``run`` returns them in the ONNX (and Paddle) order.
- a full-integer model may have int8/uint8 inputs/outputs: feeds are quantized and outputs
  dequantized with the tensor's own scale/zero point, so callers always see float.

tflite-runtime 2.14 cannot load models written by TF 2.19 (newer op versions); prefer
ai-edge-litert and fail with a clear message otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.runtimes.backend import TensorSpec, match_feeds
from edge_shitu.tflite_ops import check_installed


def _interpreter_class() -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as e:
        raise EdgeShituError(
            "no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime)"
        ) from e


def _layout(shape: tuple[int, ...]) -> str:
    """Guess the layout of a 4-D image tensor: channels are the small (1/3/4) axis."""
    if len(shape) != 4:
        return ""
    if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return "NCHW"
    return "NHWC"


_ORDER = re.compile(r"^(.*?)(?:[_:](\d+))?$")


def _output_order(names: list[str]) -> list[int]:
    """Indices that put ``Identity, Identity_1, ...`` (or ``X:0, X:1``) in numeric order."""
    keys = []
    for n in names:
        m = _ORDER.match(n)
        base, num = (m.group(1), m.group(2)) if m else (n, None)
        keys.append((base, int(num) if num is not None else -1))
    if len({k[0] for k in keys}) == 1:
        return sorted(range(len(names)), key=lambda i: keys[i][1])
    return list(range(len(names)))


class TFLiteBackend:
    kind = "tflite"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        interp_cls, self.engine = _interpreter_class()
        self.path = Path(path)
        check_installed(self.path, self.engine)  # ops too new for this runtime: one line now, not at inference
        self.name = f"{self.kind}:{self.path.name}"
        self.threads = threads
        self.delegate = "xnnpack"
        try:
            try:
                self._it = interp_cls(model_path=str(self.path), num_threads=threads)
                self._it.allocate_tensors()
            except RuntimeError as e:
                if "XNNPACK" not in str(e):
                    raise
                # XNNPACK claims some int8 graphs it then cannot prepare (onnx2tf's OSNet-x0.25:
                # "Node number N (TfLiteXNNPackDelegate) failed to prepare"): the builtin kernels run them
                import importlib

                resolver = importlib.import_module(interp_cls.__module__).OpResolverType
                self._it = interp_cls(model_path=str(self.path), num_threads=threads,
                                      experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
                self._it.allocate_tensors()
                self.delegate = "builtin (XNNPACK could not prepare the model)"
        except (ValueError, RuntimeError) as e:
            hint = (" (tflite-runtime is too old for this model: install ai-edge-litert)"
                    if self.engine == "tflite-runtime" else "")
            raise EdgeShituError(f"{self.engine} cannot load {self.path}: {e}{hint}") from e
        self._in = self._it.get_input_details()
        outs = self._it.get_output_details()
        self._out = [outs[i] for i in _output_order([d["name"] for d in outs])]
        self.inputs = [
            TensorSpec(d["name"], tuple(int(x) for x in d["shape_signature"]),
                       np.dtype(d["dtype"]).name, _layout(tuple(int(x) for x in d["shape"])))
            for d in self._in
        ]
        self.outputs = [TensorSpec(d["name"], tuple(int(x) for x in d["shape_signature"]),
                                   np.dtype(d["dtype"]).name) for d in self._out]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = match_feeds(self.inputs, feeds, self.name)
        resized = False
        prepared = []
        for spec, det, arr in zip(self.inputs, self._in, arrays):
            if spec.layout == "NHWC" and arr.ndim == 4:
                arr = arr.transpose(0, 2, 3, 1)
            dtype = np.dtype(det["dtype"])
            scale, zero = det.get("quantization", (0.0, 0))
            if dtype.kind in "iu" and scale:
                info = np.iinfo(dtype)
                arr = np.clip(np.round(arr / scale + zero), info.min, info.max)
            arr = np.ascontiguousarray(arr, dtype=dtype)
            if tuple(arr.shape) != tuple(det["shape"]):
                self._it.resize_tensor_input(det["index"], list(arr.shape))
                resized = True
            prepared.append((det["index"], arr))
        if resized:
            self._it.allocate_tensors()
            self._in = self._it.get_input_details()
        for index, arr in prepared:
            self._it.set_tensor(index, arr)
        self._it.invoke()
        results = []
        for det in self._out:
            out = np.array(self._it.get_tensor(det["index"]), copy=True)
            scale, zero = det.get("quantization", (0.0, 0))
            if out.dtype.kind in "iu" and scale:
                out = (out.astype(np.float32) - zero) * np.float32(scale)
            results.append(out)
        return results
