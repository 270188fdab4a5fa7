"""The one table of artifact kinds, runtime backends and native build targets.

Every part of the tool that has to know what an artifact kind *is* (boards, the bundle reader,
the device pipeline, the converter, the CLI, the benchmarks) asks this module instead of
spelling ``"nb:arm:int8"`` out or splitting it on ``":"``. Adding an artifact format is one row
in :data:`ARTIFACT_FORMATS`, one exporter module (``converters/export_*.py``, the contract in
``docs/architecture.md``) and, if no existing backend runs it, one backend row + module.

Device-side module: standard library only (no numpy, no conversion stack).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edge_shitu.errors import EdgeShituError

PRECISIONS = ("fp32", "fp16", "int8")
CPU_FAMILIES = ("arm", "x86")


@dataclass(frozen=True)
class BackendInfo:
    """A runtime engine: what it is called in board configs / manifests / ``--backend`` and the
    module and class that load it (``runtimes/*_backend.py``)."""

    name: str
    module: str
    cls: str
    suffix: str  # the model file suffix it opens ("" for a Paddle model folder)
    device: bool  # usable by the device runtime (a bundle's board may name it)


BACKENDS: dict[str, BackendInfo] = {
    b.name: b
    for b in (
        BackendInfo("tflite", "edge_shitu.runtimes.tflite_backend", "TFLiteBackend", ".tflite", True),
        BackendInfo("nb", "edge_shitu.runtimes.paddlelite_backend", "PaddleLiteBackend", ".nb", True),
        BackendInfo("onnx", "edge_shitu.runtimes.onnx_backend", "OnnxBackend", ".onnx", False),
        BackendInfo("paddle", "edge_shitu.runtimes.paddle_backend", "PaddleBackend", "", False),
    )
}
# Names older board configs / manifests used for a backend.
BACKEND_ALIASES = {"paddlelite": "nb", "paddle-lite": "nb", "litert": "tflite"}


@dataclass(frozen=True)
class ArtifactFormat:
    """One artifact kind. ``cpu`` is the CPU family whose kernels the file holds (None: any);
    ``exporter`` the module under ``converters/`` that writes it; ``source`` what that exporter
    consumes: ``"onnx"`` (the fp32/pruned ONNX export), ``"paddle"`` (the pruned Paddle program)
    or ``"paddle-int8"`` (PaddleSlim's quantized program)."""

    kind: str
    family: str  # file format: "tflite" | "nb" | "onnx"
    suffix: str
    precision: str
    backend: str
    exporter: str
    source: str
    cpu: Optional[str] = None
    deployable: bool = True  # may appear in a board config / bundle

    @property
    def target(self) -> str:
        """The CPU family for ``.nb`` files, "" for portable formats (kept for manifests)."""
        return self.cpu or ""

    def filename(self, model: str) -> str:
        """The file name of this kind inside a bundle's model folder: ``rec_int8.tflite``,
        ``det_arm_fp32.nb``."""
        parts = [model] + ([self.cpu] if self.cpu else []) + [self.precision]
        return "_".join(parts) + self.suffix

    def runs_here(self, machine: Optional[str] = None) -> bool:
        """Whether this host's CPU can execute the file (arm ``.nb`` kernels cannot run on x86:
        loading one there returns garbage without an error)."""
        return self.cpu is None or self.cpu == cpu_family(machine)


def _rows() -> list[ArtifactFormat]:
    rows = [ArtifactFormat(f"tflite:{p}", "tflite", ".tflite", p, "tflite", "export_tflite", "onnx")
            for p in PRECISIONS]
    for cpu in CPU_FAMILIES:
        for p in ("fp32", "int8"):
            rows.append(ArtifactFormat(f"nb:{cpu}:{p}", "nb", ".nb", p, "nb", "export_nb",
                                       "paddle-int8" if p == "int8" else "paddle", cpu=cpu))
    # The ONNX export is an intermediate (TFLite is converted from it; the verifier runs it); it
    # is never a bundle artifact.
    rows.append(ArtifactFormat("onnx:fp32", "onnx", ".onnx", "fp32", "onnx", "export_onnx", "paddle",
                               deployable=False))
    rows.append(ArtifactFormat("onnx:int8", "onnx", ".onnx", "int8", "onnx", "export_onnx", "paddle-int8",
                               deployable=False))
    return rows


ARTIFACT_FORMATS: dict[str, ArtifactFormat] = {f.kind: f for f in _rows()}
DEPLOYABLE_KINDS: tuple[str, ...] = tuple(k for k, f in ARTIFACT_FORMATS.items() if f.deployable)


def artifact_format(kind: str) -> ArtifactFormat:
    """The row of ``kind``, or one line naming the known kinds."""
    try:
        return ARTIFACT_FORMATS[kind]
    except (KeyError, TypeError):
        raise EdgeShituError(f"unknown artifact kind {kind!r}; known: {', '.join(DEPLOYABLE_KINDS)}") from None


def kinds(*, family: Optional[str] = None, backend: Optional[str] = None, precision: Optional[str] = None,
          cpu: Optional[str] = None, deployable: Optional[bool] = True) -> list[str]:
    """Kinds matching every filter given (in table order)."""
    return [f.kind for f in ARTIFACT_FORMATS.values()
            if (family is None or f.family == family) and (backend is None or f.backend == backend)
            and (precision is None or f.precision == precision) and (cpu is None or f.cpu in (None, cpu))
            and (deployable is None or f.deployable == deployable)]


def backend_name(name: str) -> str:
    """The canonical backend name (old aliases such as ``paddlelite`` accepted), or one line."""
    n = BACKEND_ALIASES.get(str(name).lower(), str(name).lower())
    if n not in BACKENDS:
        raise EdgeShituError(f"unknown backend {name!r}: use one of "
                             f"{', '.join(b for b, i in BACKENDS.items() if i.device)}")
    return n


# ----------------------------------------------------------------------------- CPUs and native builds
# platform.machine() spellings per CPU family, and per native build target (board configs' "native").
_MACHINES = {"arm": ("aarch64", "arm64", "armv7l", "armv8l", "armv7"), "x86": ("x86_64", "amd64", "i686", "i386")}
NATIVE_TARGETS: dict[str, tuple[str, ...]] = {
    "aarch64-linux-gnu": ("aarch64", "arm64"),
    "arm-linux-gnueabihf": ("armv7l", "armv8l"),
    "x86_64-linux-gnu": ("x86_64", "amd64"),
}


def cpu_family(machine: Optional[str] = None) -> str:
    """"arm" or "x86" for ``machine`` (default: this host's ``platform.machine()``)."""
    m = (machine or platform.machine()).lower()
    return "arm" if m in _MACHINES["arm"] or m.startswith("arm") else "x86"


def native_target_runs_here(target: str, machine: Optional[str] = None) -> bool:
    """Whether a native library built for ``target`` (a board's ``native``) loads on this CPU."""
    return (machine or platform.machine()).lower() in NATIVE_TARGETS.get(target, ())


def kind_for(backend: str, precision: str, machine: Optional[str] = None) -> str:
    """The artifact a runtime backend loads at ``precision`` on this CPU: TFLite by precision,
    ``.nb`` for this CPU's family."""
    b = backend_name(backend)
    if precision not in PRECISIONS:
        raise EdgeShituError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    fam = cpu_family(machine)
    found = [f.kind for f in ARTIFACT_FORMATS.values()
             if f.deployable and f.backend == b and f.precision == precision and f.cpu in (None, fam)]
    if not found:
        raise EdgeShituError(f"no {b} artifact kind has precision {precision} for {fam} CPUs; "
                             f"{b} kinds: {', '.join(kinds(backend=b))}")
    return found[0]


def alternatives_here(available: list[str], machine: Optional[str] = None) -> list[str]:
    """The kinds among ``available`` that this host can execute, fastest-first (int8, fp16, fp32)."""
    order = {p: i for i, p in enumerate(("int8", "fp16", "fp32"))}
    ok = [k for k in available if k in ARTIFACT_FORMATS and ARTIFACT_FORMATS[k].runs_here(machine)]
    return sorted(ok, key=lambda k: order[ARTIFACT_FORMATS[k].precision])


# ----------------------------------------------------------------------------- the artifact type
@dataclass
class Artifact:
    """One model file and what is known of it: written by an exporter (``fidelity``, ``details``),
    recorded in a manifest (``sha256``, ``info``: the whole manifest entry), or both.

    ``fidelity`` is the converter's ``Fidelity`` object (or its dict) and stays ``None`` on the
    device; ``model`` is "det" or "rec" once the artifact belongs to a bundle."""

    kind: str
    path: Path
    bytes: int = 0
    sha256: str = ""
    model: str = ""
    fidelity: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def spec(self) -> ArtifactFormat:
        return artifact_format(self.kind)

    # Everything else is the kind's row: file format family, precision, CPU family, backend.
    format = property(lambda self: self.spec.family, doc="file format family: tflite | nb | onnx")
    precision = property(lambda self: self.spec.precision)
    target = property(lambda self: self.spec.target, doc='"arm" / "x86" for .nb files, "" otherwise')
    backend = property(lambda self: self.spec.backend)

    def to_dict(self) -> dict[str, Any]:
        fid = self.fidelity.to_dict() if hasattr(self.fidelity, "to_dict") else self.fidelity
        return {"kind": self.kind, "path": str(self.path), "format": self.format, "precision": self.precision,
                "target": self.target, "bytes": self.bytes, "fidelity": fid, "details": dict(self.details)}


# ----------------------------------------------------------------------------- images
# Photo suffixes the tool reads (gallery folders, `recognize DIR`, calibration folders).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES
