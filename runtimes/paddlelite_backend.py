"""Run a Paddle Lite ``.nb`` file with the ``paddlelite`` Python package (x86 hosts).

Why it refuses arm files on x86: Paddle Lite loads an arm ``.nb`` on x86 without any error and
returns garbage; a backend that ran it would make every check downstream meaningless. Arm files
are validated structurally (``converters/export_nb.py``) and through their x86 twin instead.

MobileConfig has no thread setting in the Python binding: the x86 ``.nb`` runs on one thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import cpu_family
from edge_shitu.runtimes.backend import TensorSpec, match_feeds
from edge_shitu.runtimes.nb_format import read_nb


class PaddleLiteBackend:
    """A ``.nb`` model in a Paddle Lite ``LightPredictor`` (MobileConfig)."""

    kind = "nb"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        self.path = Path(path)
        self.name = f"{self.kind}:{self.path.name}"
        self.model = read_nb(self.path)  # raises CorruptFileError on a damaged file
        built_for = self.model.compute_target
        here = cpu_family()
        if built_for and here not in built_for.split(","):
            raise EdgeShituError(
                f"{self.path} holds {built_for} kernels and cannot run on this {here} host "
                "(Paddle Lite would return garbage silently): check it structurally or run its "
                f"{here} twin"
            )
        try:
            from paddlelite import lite
        except ImportError as e:
            raise EdgeShituError(
                "paddlelite is not installed: run .nb files in the conversion environment "
                "(Python 3.10, `make setup`)"
            ) from e
        self.threads = 1  # MobileConfig exposes no thread count; documented above
        cfg = lite.MobileConfig()
        cfg.set_model_from_file(str(self.path))
        self._predictor = lite.create_paddle_predictor(cfg)
        names_in = list(self._predictor.get_input_names())
        names_out = list(self._predictor.get_output_names())
        self.inputs = [
            TensorSpec(n, tuple(self.model.var_dims.get(n, ())), "float32",
                       "NCHW" if len(self.model.var_dims.get(n, ())) == 4 else "")
            for n in names_in
        ]
        self.outputs = [
            TensorSpec(n, tuple(self.model.var_dims.get(n, ())), "float32") for n in names_out
        ]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = match_feeds(self.inputs, feeds, self.name)
        for i, arr in enumerate(arrays):
            dtype = np.float32 if arr.dtype.kind == "f" else arr.dtype
            self._predictor.get_input(i).from_numpy(np.ascontiguousarray(arr, dtype=dtype))
        self._predictor.run()
        return [np.array(self._predictor.get_output(i).numpy(), copy=True)
                for i in range(len(self.outputs))]
