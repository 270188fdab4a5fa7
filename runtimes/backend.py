"""One small interface over every inference engine an artifact can be run with.

The device runtime and the converter's verifier both talk to models through :class:`Backend`, so
the code that checks an artifact before it is written is the same code that later runs it.
Conventions every implementation keeps:

- ``run`` takes feeds in NCHW (the Paddle layout the whole toolchain reasons in) whatever the
  artifact wants; a TFLite model written by onnx2tf is NHWC, and its backend transposes itself.
- feeds are matched to model inputs by name, robustly (onnx2tf renames inputs), then by shape,
  then by position when there is only one input.
- outputs come back as a list of float/int numpy arrays in the order of ``outputs``.

Only numpy is imported here: the device runtime has numpy and ai-edge-litert and nothing else,
so each engine is imported lazily by its own module.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import BACKENDS

KINDS: tuple[str, ...] = tuple(BACKENDS)  # backend names, as open_backend's ``kind`` takes them


@dataclass(frozen=True)
class TensorSpec:
    """What one model input or output looks like, in the model's OWN layout.

    ``shape`` uses -1 for dimensions the model leaves open. ``layout`` is "NCHW" or "NHWC" for
    4-D image tensors and "" for anything else (features, boxes, scalars).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str = ""

    def nchw_shape(self) -> tuple[int, ...]:
        """The shape a caller must feed (feeds are always NCHW)."""
        if self.layout == "NHWC" and len(self.shape) == 4:
            n, h, w, c = self.shape
            return (n, c, h, w)
        return self.shape


@runtime_checkable
class Backend(Protocol):
    """A loaded model that maps NCHW feeds to a list of outputs."""

    name: str
    kind: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


def normalize_name(name: str) -> str:
    """Normalise a tensor name for matching: onnx2tf/TF add prefixes, ':0' and change case.

    The one rule for the tool: feeds are matched to inputs with it here, and the TFLite exporter
    matches calibration data to SavedModel inputs with it."""
    n = name.lower()
    n = re.sub(r":\d+$", "", n)
    for prefix in ("serving_default_", "input_"):
        if n.startswith(prefix) and len(n) > len(prefix):
            n = n[len(prefix):]
    return re.sub(r"[^0-9a-z]", "", n)


def match_feeds(
    specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray], backend_name: str = "model"
) -> list[np.ndarray]:
    """Order ``feeds`` (NCHW) like ``specs``: by exact name, normalised name, NCHW shape, position.

    Why so lenient: the same feed dict (named after the Paddle program's inputs) must drive the
    Paddle reference, the ONNX file and a TFLite file whose inputs onnx2tf renamed.
    """
    if len(feeds) != len(specs):
        raise EdgeShituError(
            f"{backend_name} has {len(specs)} input(s) {[s.name for s in specs]} but "
            f"{len(feeds)} feed(s) {list(feeds)} were given: pass one array per input"
        )
    remaining = dict(feeds)
    chosen: list[Optional[np.ndarray]] = [None] * len(specs)
    # 1) exact, 2) normalised names.
    for how in ("exact", "norm"):
        for i, spec in enumerate(specs):
            if chosen[i] is not None:
                continue
            for key in list(remaining):
                if (key == spec.name) if how == "exact" else (normalize_name(key) == normalize_name(spec.name)):
                    chosen[i] = remaining.pop(key)
                    break
    # 3) unique shape match (NCHW shapes; -1 matches anything).
    for i, spec in enumerate(specs):
        if chosen[i] is not None:
            continue
        want = spec.nchw_shape()
        hits = [
            k for k, v in remaining.items()
            if np.ndim(v) == len(want) and all(w in (-1, s) for w, s in zip(want, np.shape(v)))
        ]
        if len(hits) == 1:
            chosen[i] = remaining.pop(hits[0])
    # 4) a single leftover pair.
    left = [i for i, c in enumerate(chosen) if c is None]
    if len(left) == 1 and len(remaining) == 1:
        chosen[left[0]] = remaining.popitem()[1]
        left = []
    if left:
        raise EdgeShituError(
            f"cannot match feeds {list(feeds)} to the inputs {[s.name for s in specs]} of "
            f"{backend_name}: name the feeds after the model inputs"
        )
    return [np.asarray(c) for c in chosen]  # type: ignore[misc]


def infer_kind(path: str | os.PathLike[str]) -> str:
    """Guess the engine from the file name (each backend's suffix in ``edge_shitu.formats.BACKENDS``):
    .tflite, .nb, .onnx, or a Paddle model directory / .pdmodel."""
    p = Path(path)
    suffix = p.suffix.lower()
    for name, info in BACKENDS.items():
        if info.suffix and suffix == info.suffix:
            return name
    if suffix == ".pdmodel" or (p.is_dir() and any(p.glob("*.pdmodel"))):
        return "paddle"
    raise EdgeShituError(
        f"cannot tell the model type of {p}: expected a .tflite, .nb, .onnx file or a Paddle "
        "model directory (with a .pdmodel); pass kind= explicitly"
    )


def open_backend(path: str | os.PathLike[str], kind: Optional[str] = None, threads: int = 1) -> Backend:
    """Load ``path`` with the engine for ``kind`` (a backend name of ``edge_shitu.formats.BACKENDS``;
    inferred from the suffix when None).

    ``threads`` is honoured where the engine allows it (TFLite, Paddle Inference, ONNX Runtime);
    a Paddle Lite ``.nb`` runs on one thread on x86.
    """
    p = Path(path)
    if not p.exists():
        raise EdgeShituError(f"model file {p} does not exist")
    if threads < 1:
        raise EdgeShituError(f"threads must be >= 1, got {threads}")
    kind = kind or infer_kind(p)
    info = BACKENDS.get(kind)
    if info is None:
        raise EdgeShituError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
    cls = getattr(importlib.import_module(info.module), info.cls)  # each engine imported only when used
    return cls(p, threads=threads)
