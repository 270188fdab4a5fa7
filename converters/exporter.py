"""The one contract every ``converters/export_*.py`` keeps: ``export(job: ExportJob) -> list[Artifact]``.

Why one shape: ``convert_model`` loops over the artifact kinds a board asks for and hands each
group of kinds to the exporter ``edge_shitu.formats`` names for them, without knowing what a
``.nb`` or a ``.tflite`` is. Adding an artifact format is one row in ``formats.ARTIFACT_FORMATS``
plus one module here with an ``export`` function.

An exporter writes every requested kind to ``job.dest(kind)`` (the bundle file name from
``ArtifactFormat.filename``), runs it against ``job.reference`` on ``job.verify_feeds``
(``converters/verify.py``), writes nothing unless the gate passes, and returns one
:class:`~edge_shitu.formats.Artifact` per kind, in the order of ``job.kinds``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import ARTIFACT_FORMATS, Artifact, artifact_format

Feeds = Mapping[str, np.ndarray]
# What the exporters consume, in the order a conversion can produce them: the (pruned) Paddle
# program, PaddleSlim's quantized program (needs PTQ), the ONNX export (needs an exporter run).
SOURCES = ("paddle", "paddle-int8", "onnx")


@dataclass
class ExportJob:
    """Everything an exporter needs for some kinds of one model.

    ``sources`` maps a format row's ``source`` ("paddle", "paddle-int8", "onnx") to the model
    directory or file holding it; ``reference`` is the FP32 Paddle model directory the artifacts
    are verified against (None: the exporter's own default, usually its Paddle source).
    ``thresholds`` is one gate for every kind (None: the product gate by precision);
    ``int8_gate`` replaces the product gate for int8 kinds only (an extractor whose int8 files
    are judged by the user's own recall after export keeps just a sanity floor here).
    ``calibration`` holds per-image feed dicts (what the verifier feeds too); ``work_dir`` keeps
    intermediates worth keeping (an arm ``.nb``'s x86 twin). ``options`` are per-format, named
    in each exporter's ``export`` docstring.
    """

    model: str  # "det" | "rec": names the files
    kinds: Sequence[str]
    sources: Mapping[str, Path]
    out_dir: Path
    reference: Optional[Path] = None
    verify_feeds: Optional[Sequence[Feeds]] = None
    calibration: Optional[Sequence[Feeds]] = None
    thresholds: Optional[Mapping[str, float]] = None
    int8_gate: Optional[Mapping[str, float]] = None
    work_dir: Optional[Path] = None
    options: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = field(default=lambda msg: None, repr=False)

    def gate_for(self, precision: str) -> Optional[Mapping[str, float]]:
        """The gate a file of ``precision`` is held to (None: the exporter's default for it)."""
        if self.thresholds is not None:
            return self.thresholds
        return self.int8_gate if precision == "int8" else None

    def dest(self, kind: str) -> Path:
        return Path(self.out_dir) / artifact_format(kind).filename(self.model)

    def source_for(self, kind: str) -> Path:
        src = artifact_format(kind).source
        if src not in self.sources:
            raise EdgeShituError(f"{kind} is exported from the {src} model, which this conversion did not produce")
        return Path(self.sources[src])


def kind_named(family: str, precision: str, cpu: Optional[str] = None) -> str:
    """The artifact kind of a file format at a precision (and CPU family for ``.nb``)."""
    for f in ARTIFACT_FORMATS.values():
        if f.family == family and f.precision == precision and f.cpu == cpu:
            return f.kind
    raise EdgeShituError(f"no {family} artifact kind has precision {precision}" + (f" for {cpu}" if cpu else ""))


def exporter_module(kind: str) -> Any:
    """The module that writes ``kind`` (its format row's ``exporter``)."""
    return importlib.import_module(f"edge_shitu.converters.{artifact_format(kind).exporter}")


def export(job: ExportJob) -> list[Artifact]:
    """Run the one exporter all of ``job.kinds`` belong to."""
    names = {artifact_format(k).exporter for k in job.kinds}
    if len(names) != 1:
        raise EdgeShituError(f"one export job takes kinds of one exporter, got {sorted(names)}")
    return exporter_module(job.kinds[0]).export(job)


def groups(kinds: Sequence[str]) -> list[list[str]]:
    """``kinds`` grouped by exporter, groups ordered by what their sources need (Paddle programs
    first, the ONNX export last), kinds in the given order within a group."""
    by: dict[str, list[str]] = {}
    for k in kinds:
        by.setdefault(artifact_format(k).exporter, []).append(k)
    return sorted(by.values(), key=lambda g: min(SOURCES.index(artifact_format(k).source) for k in g))


def image_input(feeds: Feeds) -> str:
    """The name of the image input of a feed dict (a detector also takes im_shape and
    scale_factor, in any order)."""
    return next(n for n, v in feeds.items() if np.asarray(v).ndim == 4)
