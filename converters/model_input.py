"""Recognise a model given to ``convert`` / ``convert-model`` by its CONTENT, not its name.

Three inputs are accepted (docs/model-inputs.md):

- a Paddle legacy inference folder (``*.pdmodel`` + ``*.pdiparams``: PaddleClas 2 / PaddleDetection
  2 exports), the format the rest of the converter reads directly;
- a Paddle 3 / PIR folder (``inference.json`` + ``inference.pdiparams``: PaddleX 3, PaddleClas 3),
  which Paddle Lite's ``opt`` cannot read: it goes through :mod:`.from_pir` (paddle2onnx 2.x in its
  own environment) to ONNX first;
- an ONNX file (``.onnx``, or any file whose bytes parse as an ONNX ModelProto with a graph), which
  goes through :mod:`.from_onnx` (x2paddle) for the Paddle-side stages.

Anything else is one EdgeShituError line naming the path and what is accepted. Nothing here
writes a file. The kind guess (``det`` / ``rec``) lets ``convert-model`` work without ``--kind``
and lets ``convert`` catch swapped ``--det`` / ``--rec`` arguments; it reads only the graph's
inputs and outputs: a detector takes an image (plus ``im_shape`` / ``scale_factor`` for PP-ShiTu's
own detector) and returns raw head maps or boxes; an extractor takes one image and returns one
feature (or logits) vector.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from edge_shitu.errors import EdgeShituError

PathLike = Union[str, "os.PathLike[str]"]

ACCEPTED = ("a Paddle inference folder (inference.pdmodel + inference.pdiparams), a Paddle 3 folder "
            "(inference.json + inference.pdiparams) or an .onnx file")
FORMATS = ("paddle", "pir", "onnx")
DET_FEEDS = ("im_shape", "scale_factor")
Dim = Union[int, str]  # a fixed size, or the name of a dynamic dimension ("?" when unnamed)


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, shape (ints, or a name for a dynamic dimension), dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)

    @property
    def image_like(self) -> bool:
        """4-D with 1 or 3 channels, NCHW or NHWC: what a photo becomes."""
        if len(self.shape) != 4:
            return False
        return self.shape[1] in (1, 3) or self.shape[3] in (1, 3)


@dataclass(frozen=True)
class ModelInput:
    """What :func:`inspect_model` found. ``path``: what the user gave (folder or file);
    ``model_file`` / ``params_file``: the files a loader opens (``params_file`` None for ONNX);
    ``kind``: ``det`` / ``rec`` / None (cannot tell), ``kind_reason``: why, for messages;
    ``config``: the model's own preprocessing file when it ships one (``infer_cfg.yml``,
    ``inference.yml``)."""

    format: str
    path: Path
    model_file: Path
    params_file: Optional[Path]
    kind: Optional[str]
    kind_reason: str
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    config: Optional[Path] = None
    opset: Optional[int] = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def image_input(self) -> Optional[TensorInfo]:
        return next((t for t in self.inputs if t.image_like), None)

    def input_size(self) -> Optional[tuple[int, int]]:
        """(h, w) of the image input when it is fixed (NCHW or NHWC), else None."""
        t = self.image_input
        if t is None:
            return None
        h, w = (t.shape[2], t.shape[3]) if t.shape[1] in (1, 3) else (t.shape[1], t.shape[2])
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def inspect_model(path: PathLike, kind: Optional[str] = None) -> ModelInput:
    """Recognise ``path`` by content; ``kind`` (``det``/``rec``), when the user gave one, is
    checked against the graph only where the graph is unambiguous (an ONNX detector head passed
    as ``rec`` is refused; an unknown guess is not)."""
    p = Path(path).expanduser()
    if kind not in (None, "det", "rec"):
        raise EdgeShituError(f"model kind {kind!r} is unknown: use det or rec")
    if not p.exists():
        raise EdgeShituError(f"model {p} does not exist: pass {ACCEPTED}")
    if p.is_dir():
        info = _inspect_folder(p)
    elif p.is_file():
        info = _inspect_file(p)
    else:
        raise EdgeShituError(f"model {p} is not a regular file or folder: pass {ACCEPTED}")
    if kind is not None and info.kind is not None and info.kind != kind:
        raise EdgeShituError(f"model {p} looks like a {_KIND_NAME[info.kind]} ({info.kind_reason}), not a "
                             f"{_KIND_NAME[kind]}: check --det / --rec (or --kind)")
    return info


_KIND_NAME = {"det": "detector", "rec": "feature extractor"}


# ----------------------------------------------------------------------------- folders
def _inspect_folder(p: Path) -> ModelInput:
    files = {f.name: f for f in p.iterdir() if f.is_file()}
    if not files:
        raise EdgeShituError(f"model folder {p} is empty: pass {ACCEPTED}")
    jsons = sorted(n for n in files if n.endswith(".json") and _is_pir_json(files[n]))
    pdmodels = sorted(n for n in files if n.endswith(".pdmodel"))
    if pdmodels:
        stem = "inference" if "inference.pdmodel" in pdmodels else pdmodels[0][: -len(".pdmodel")]
        if len(pdmodels) > 1 and "inference.pdmodel" not in pdmodels:
            raise EdgeShituError(f"model folder {p} holds several .pdmodel files ({', '.join(pdmodels)}): keep one "
                                 "(or name it inference.pdmodel)")
        model, params = p / f"{stem}.pdmodel", p / f"{stem}.pdiparams"
        if not params.is_file():
            raise EdgeShituError(f"model folder {p} has {model.name} but no {params.name}: copy the weights file "
                                 "next to it (a graph without weights cannot be converted; see "
                                 "'edge-shitu synth-weights' for tests)")
        cfg = p / "infer_cfg.yml"
        kind, why = _guess_legacy_kind(model, cfg)
        return ModelInput("paddle", p, model, params, kind, why, config=cfg if cfg.is_file() else None)
    if jsons:
        stem = "inference" if "inference.json" in jsons else jsons[0][: -len(".json")]
        model, params = p / f"{stem}.json", p / f"{stem}.pdiparams"
        if not params.is_file():
            raise EdgeShituError(f"Paddle 3 model folder {p} has {model.name} but no {params.name}: copy the "
                                 "weights file next to it (export it again with PaddleX / paddle.jit.save)")
        inputs, outputs = _pir_io(model)
        cfg = next((p / n for n in ("inference.yml", "infer_cfg.yml") if (p / n).is_file()), None)
        kind, why = _guess_kind(inputs, outputs)
        if kind is None and cfg is not None:
            kind, why = _kind_from_config(cfg)
        return ModelInput("pir", p, model, params, kind, why, inputs, outputs, config=cfg)
    onnx_files = sorted(n for n in files if n.endswith(".onnx"))
    if len(onnx_files) == 1:
        return _inspect_file(p / onnx_files[0])
    if "inference.pdiparams" in files or "model.pdiparams" in files:
        raise EdgeShituError(f"model folder {p} has weights but no inference.pdmodel or inference.json graph: "
                             "copy the graph file next to them")
    what = f"several .onnx files ({', '.join(onnx_files)}): pass one of them" if onnx_files else f"pass {ACCEPTED}"
    raise EdgeShituError(f"model folder {p} holds no model edge-shitu can read: {what}")


def _is_pir_json(f: Path) -> bool:
    """A PIR program's JSON starts with ``{"base_code":{"magic":"pir"`` (read the head only)."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    return b'"magic"' in head and b'"pir"' in head


def _pir_io(model: Path) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Inputs (``pd_op.data``) and outputs (``pd_op.fetch``) of a PIR program's JSON."""
    try:
        prog = json.loads(model.read_text(encoding="utf-8"))
        ops = [op for region in prog["program"]["regions"] for block in region["blocks"] for op in block["ops"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgeShituError(f"Paddle 3 model {model} is not a readable PIR program ({type(e).__name__}): "
                             "export it again") from None
    inputs, outputs = [], []
    for op in ops:
        name = str(op.get("#", ""))
        if not (name.endswith(".data") or name.endswith(".fetch")):
            continue
        attrs = {a.get("N"): a.get("AT", {}).get("D") for a in op.get("A", []) if isinstance(a, dict)}
        try:
            shape = op["O"][0]["TT"]["D"][1]
        except (KeyError, IndexError, TypeError):
            shape = attrs.get("shape") or []
        dims = tuple(int(d) if int(d) > 0 else "?" for d in shape)
        info = TensorInfo(str(attrs.get("name", "")), dims, str(attrs.get("dtype", "float32")))
        (inputs if name.endswith(".data") else outputs).append(info)
    if not inputs or not outputs:
        raise EdgeShituError(f"Paddle 3 model {model} has no data / fetch ops: export it as an inference model")
    return tuple(inputs), tuple(outputs)


def _guess_legacy_kind(model: Path, cfg: Path) -> tuple[Optional[str], str]:
    """A ProgramDesc names its feed variables and ops as plain strings: enough to tell a
    PaddleDetection export (im_shape / scale_factor feeds, an NMS op) without importing paddle."""
    if cfg.is_file():
        return "det", "infer_cfg.yml beside it (PaddleDetection export)"
    try:
        data = model.read_bytes()
    except OSError as e:
        raise EdgeShituError(f"model {model} cannot be read ({e.strerror or e}): check permissions") from None
    if b"multiclass_nms" in data or (b"im_shape" in data and b"scale_factor" in data):
        return "det", "im_shape / scale_factor feeds or an NMS op"
    return None, "a Paddle program without detector feeds (give --kind)"


def _kind_from_config(cfg: Path) -> tuple[Optional[str], str]:
    try:
        text = cfg.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, "unreadable config"
    if "Preprocess:" in text and ("arch:" in text or "NormalizeImage" in text) and "transform_ops" not in text:
        return "det", f"{cfg.name} is a PaddleDetection config"
    if "transform_ops" in text:
        return "rec", f"{cfg.name} is a PaddleClas / PaddleX classification config"
    return None, f"{cfg.name} does not say"


# ----------------------------------------------------------------------------- ONNX
def _inspect_file(p: Path) -> ModelInput:
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise EdgeShituError(f"model {p} cannot be read ({e.strerror or e}): check permissions") from None
    if not head:
        raise EdgeShituError(f"model {p} is empty (0 bytes): pass {ACCEPTED}")
    if p.suffix == ".pdmodel" or (p.suffix == ".json" and _is_pir_json(p)):
        raise EdgeShituError(f"model {p} is one file of a Paddle model: pass its folder ({p.parent})")
    model = _load_onnx(p)
    if model is None:
        if p.suffix.lower() == ".onnx":
            raise EdgeShituError(f"model {p} is not an ONNX model (its bytes do not parse as one): re-export or "
                                 "re-download it")
        raise EdgeShituError(f"model {p} is not a model edge-shitu can read: pass {ACCEPTED}")
    inputs, outputs, opset = _onnx_io(model)
    dyn = [(t.name, i, d) for t in inputs for i, d in enumerate(t.shape) if not isinstance(d, int)]
    batch = [x for x in dyn if x[1] == 0]
    if batch:
        name, _, dim = batch[0]
        raise EdgeShituError(
            f"ONNX model {p} has a dynamic batch dimension ({name!r} dim 0 is {dim!r}): fix it to 1, e.g. "
            f"'python -m onnxruntime.tools.make_dynamic_shape_fixed --dim_param {dim} --dim_value 1 "
            f"{p.name} fixed.onnx'"
            if dim != "?" else
            f"ONNX model {p} has a dynamic batch dimension ({name!r} dim 0 is unnamed): re-export it with batch 1")
    notes = tuple(f"input {n!r} dim {i} is dynamic ({d}): the preprocessing size fixes it" for n, i, d in dyn)
    kind, why = _guess_kind(inputs, outputs)
    return ModelInput("onnx", p, p, None, kind, why, inputs, outputs, opset=opset, notes=notes)


def _load_onnx(p: Path) -> Any:
    """The ModelProto, or None when the bytes are not an ONNX model with a graph. External
    weights are not loaded (only the graph's interface is read here)."""
    try:
        import onnx
    except ImportError:
        raise EdgeShituError("reading ONNX models needs the onnx package: pip install 'edge-shitu[convert]'") from None
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:  # DecodeError, ValueError, RuntimeWarning-as-error...: the bytes are not ONNX
        return None
    if not m.HasField("graph") or not m.graph.node or not m.graph.output or m.ir_version <= 0:
        return None
    return m


def _onnx_io(m: Any) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...], Optional[int]]:
    import onnx

    inits = {i.name for i in m.graph.initializer}  # old exporters list weights as inputs too

    def info(v: Any) -> TensorInfo:
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                     for d in tt.shape.dim)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        except Exception:
            dtype = str(tt.elem_type)
        return TensorInfo(v.name, dims, dtype)

    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return (tuple(info(v) for v in m.graph.input if v.name not in inits),
            tuple(info(v) for v in m.graph.output), opset)


def _guess_kind(inputs: tuple[TensorInfo, ...], outputs: tuple[TensorInfo, ...]) -> tuple[Optional[str], str]:
    """det / rec / None from the graph's interface alone (see the module docstring)."""
    names = {t.name for t in inputs}
    images = [t for t in inputs if t.image_like]
    if not images:
        return None, "no image-like (4-D, 1 or 3 channels) input"
    if set(DET_FEEDS) <= names:
        return "det", "image + im_shape + scale_factor inputs (PaddleDetection export)"
    if len(inputs) != 1:
        return None, f"{len(inputs)} inputs ({', '.join(sorted(names))})"
    if len(outputs) >= 2 and len(outputs) % 2 == 0 and all(len(t.shape) == 3 for t in outputs):
        n = len(outputs) // 2
        cells = [t.shape[1] for t in outputs]
        if cells[:n] == cells[n:] and _decreasing(cells[:n]):
            return "det", f"{n} score + {n} box maps of a raw detector head"
    if any(t.shape and t.shape[-1] in (4, 6) and len(t.shape) in (2, 3) for t in outputs) and (
            len(outputs) >= 2 or any("box" in t.name.lower() for t in outputs)):
        return "det", "a boxes output"
    if len(outputs) == 1:
        o = outputs[0]
        flat = [d for d in o.shape[1:] if d != 1]
        if len(o.shape) >= 2 and len(flat) == 1:
            return "rec", f"one image input, one {flat[0]}-d vector output"
    return None, f"outputs {[list(t.shape) for t in outputs]} are neither a feature vector nor detector maps"


def _decreasing(cells: list[Dim]) -> bool:
    ints = [c for c in cells if isinstance(c, int)]
    return len(ints) == len(cells) and all(a > b for a, b in zip(ints, ints[1:])) and not math.isnan(sum(ints))
