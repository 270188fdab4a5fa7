"""Run an ``.onnx`` file with ONNX Runtime (the check of the ONNX artifact and of onnx2tf's input).

ONNX is an intermediate artifact here (Paddle -> ONNX -> TFLite), but it is also shipped, so it
is verified like the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.runtimes.backend import TensorSpec, match_feeds

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
               "tensor(bool)": "bool", "tensor(double)": "float64"}


def _shape(dims: list) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in dims)


class OnnxBackend:
    kind = "onnx"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EdgeShituError("onnxruntime is not installed: use the conversion environment") from e
        self.path = Path(path)
        self.name = f"{self.kind}:{self.path.name}"
        self.threads = threads
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # no busy-waiting after a run: on a 2-core board its spinning threads would take the CPU
        # from whatever runs next (the next stage, or the other side of an interleaved benchmark)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise EdgeShituError(f"ONNX Runtime cannot load {self.path}: {e}") from e
        self.inputs = [
            TensorSpec(i.name, _shape(i.shape), _ORT_DTYPES.get(i.type, "float32"),
                       "NCHW" if len(i.shape) == 4 else "")
            for i in self._sess.get_inputs()
        ]
        self.outputs = [TensorSpec(o.name, _shape(o.shape), _ORT_DTYPES.get(o.type, "float32"))
                        for o in self._sess.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = match_feeds(self.inputs, feeds, self.name)
        feed = {s.name: np.ascontiguousarray(a, dtype=np.dtype(s.dtype)) for s, a in zip(self.inputs, arrays)}
        return [np.asarray(o) for o in self._sess.run(None, feed)]
