"""Board configurations: which artifacts a bundle carries and how the runtime uses them.

Stored as JSON in board_configs/ (no YAML parser on devices). A config is validated when it
is loaded, so a typo fails at ``convert`` time on the workstation, not on the shop floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_shitu import formats
from edge_shitu.errors import EdgeShituError

# What a board may name: the device runtime's backends and the deployable artifact kinds
# (edge_shitu/formats.py is the one table of both).
BACKENDS = tuple(name for name, info in formats.BACKENDS.items() if info.device)


def boards_dir() -> Path:
    from edge_shitu import board_configs

    return Path(board_configs.__file__).resolve().parent


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str
    backend: str
    precision: str
    threads: int
    artifacts: tuple[str, ...]
    native: str
    det: dict[str, Any] = field(default_factory=dict)
    rec: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    # the device runtime and the oldest version of it the board must support ("name", "min_version");
    # `convert` refuses a TFLite artifact that runtime cannot load (converters/board_runtime.py)
    runtime: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def det_size(self) -> tuple[int, int] | None:
        """The detector's network input (h, w) on this board (``det.input_size``; ONNX detectors are
        re-targeted to it, converters/onnx_resize.py), or None: the model's own size ("model")."""
        ds = self.det.get("input_size", "model")
        return None if ds == "model" else (int(ds[0]), int(ds[1]))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def list_boards() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.json"))


def _check(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise EdgeShituError(f"board config {path.name}: {what}; fix the file in board_configs/")


def load_board(name_or_path: str | Path) -> Board:
    """A board by name (board_configs/NAME.json) or by path to a JSON file."""
    p = Path(name_or_path)
    if p.suffix != ".json":
        p = boards_dir() / f"{name_or_path}.json"
        if not p.exists():
            raise EdgeShituError(f"unknown board '{name_or_path}'; valid boards: {', '.join(list_boards())}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeShituError(f"board config {p} not found; valid boards: {', '.join(list_boards())}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeShituError(f"board config {p.name} is not valid JSON ({e}); fix it") from None
    _check(isinstance(raw, dict) and raw.get("schema") == 1, p, "needs \"schema\": 1")
    for key, typ in (("name", str), ("description", str), ("arch", str), ("backend", str), ("precision", str),
                     ("threads", int), ("artifacts", list), ("native", str), ("det", dict), ("rec", dict),
                     ("index", dict)):
        _check(isinstance(raw.get(key), typ), p, f"field '{key}' missing or not a {typ.__name__}")
    backend = formats.BACKEND_ALIASES.get(raw["backend"], raw["backend"])
    _check(backend in BACKENDS, p, f"backend must be one of {', '.join(BACKENDS)}")
    _check(raw["precision"] in ("fp32", "fp16", "int8"), p, "precision must be fp32, fp16 or int8")
    _check(raw["threads"] >= 1, p, "threads must be >= 1")
    bad = [a for a in raw["artifacts"] if a not in formats.DEPLOYABLE_KINDS]
    _check(not bad, p, f"unknown artifact kind(s) {bad}; known: {', '.join(formats.DEPLOYABLE_KINDS)}")
    _check(any(formats.artifact_format(a).backend == backend and formats.artifact_format(a).precision
               == raw["precision"] for a in raw["artifacts"]), p,
           f"no {backend} artifact of precision {raw['precision']} in 'artifacts': the runtime would have "
           "nothing to load")
    mp = raw.get("max_image_pixels", 1)
    _check(isinstance(mp, int) and not isinstance(mp, bool) and mp >= 1, p,
           "max_image_pixels must be an integer >= 1")
    _check(raw["index"].get("bits", 256) % 64 == 0, p, "index.bits must be a multiple of 64")
    ds = raw["det"].get("input_size", "model")
    _check(ds == "model" or (isinstance(ds, list) and len(ds) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ds)), p,
        'det.input_size must be "model" (the detector\'s own size) or [h, w] (positive integers)')
    _check_runtime(raw.get("runtime"), backend, p)
    return Board(name=raw["name"], description=raw["description"], arch=raw["arch"], backend=backend,
                 precision=raw["precision"], threads=raw["threads"], artifacts=tuple(raw["artifacts"]),
                 native=raw["native"], det=raw["det"], rec=raw["rec"], index=raw["index"],
                 runtime=dict(raw["runtime"]), raw=raw)


def _check_runtime(rt: Any, backend: str, p: Path) -> None:
    """'runtime': {"name": a runtime of the board's backend, "min_version": "X.Y[.Z]"} (+ optional
    claims shown in docs/support-matrix.md: "python", "glibc", "os", "tested")."""
    from edge_shitu import tflite_ops

    _check(isinstance(rt, dict), p, 'needs "runtime": {"name": ..., "min_version": ...} (the device runtime '
           f"and the oldest version the board must support; names: {', '.join(tflite_ops.RUNTIME_NAMES)})")
    name = rt.get("name")
    for_backend = tflite_ops.TFLITE_RUNTIMES if backend == "tflite" else (tflite_ops.PADDLELITE,)
    _check(name in for_backend, p, f"runtime.name must be one of {', '.join(for_backend)} for backend "
           f"'{backend}', got {name!r}")
    mv = rt.get("min_version")
    try:
        ok = isinstance(mv, str) and len(tflite_ops.parse_version(mv)) >= 2
    except ValueError:
        ok = False
    _check(ok, p, f"runtime.min_version must be a version string like \"2.13.0\", got {mv!r}")
    for key in ("python", "glibc", "os", "tested"):
        _check(key not in rt or isinstance(rt[key], str), p, f"runtime.{key} must be a string")
