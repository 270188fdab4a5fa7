"""Preprocessing for models that do not carry it (ONNX files; Paddle 3 folders without a config).

A PaddleDetection export ships ``infer_cfg.yml`` and the converter reads it; an ONNX file or a
bare PIR folder says nothing about how a photo becomes its input tensor, and a wrong guess does
not fail, it just makes every artifact (and the FP32 reference) see the wrong colours or aspect.
So the user states it, by flags (``--rec-preprocess "size=256x128,mean=..."``) or a small YAML
file, and what is stated becomes the SAME manifest dicts the device runtime already reads
(:meth:`edge_shitu.preprocess.RecPreprocess.from_dict` / :meth:`DetPreprocess.from_dict`): the
device needs nothing new. Keys (all optional; defaults in :data:`DEFAULTS`, documented in
docs/model-inputs.md):

``size``      ``H`` or ``HxW`` / ``[h, w]``: the network input; default: the model's fixed input
              size, else 224 (rec) / 416 (det)
``fit``       ``stretch`` (resize to HxW, aspect not kept; PaddleClas and PicoDet's deploy),
              ``letterbox`` (aspect kept, padded to a square), ``keep-ratio`` (det only:
              PaddleDetection's keep_ratio resize, for models with a dynamic input)
``mean`` / ``std``  three values each, in the MODEL's channel order; default ImageNet's (per colour)
``scale``     multiplies the 0-255 pixel before mean/std; default 1/255 (``1`` for 0-255 models)
``channel_order``  ``rgb`` (default) or ``bgr``: the order the MODEL expects
``interp``    nearest / bilinear (default) / bicubic / area / lanczos (OpenCV's sampling)
``pad_value`` letterbox padding grey level (rec; default 255, PP-ShiTu's white studio shots)

The runtime always decodes RGB. ``channel_order: bgr`` cannot be done by the runtime's
preprocessing, so :class:`PreprocessSpec` says so (``needs_bgr_input``) for the converter to flip
the model's input channels (exact, e.g. by reversing the first conv's input channels), and
stores mean/std in RGB order in the runtime dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from edge_shitu.errors import EdgeShituError
from edge_shitu.preprocess import IMAGENET_MEAN, IMAGENET_STD, DetPreprocess, RecPreprocess

FITS = ("stretch", "letterbox", "keep-ratio")
DEFAULTS: dict[str, Any] = {
    "fit": "stretch", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1.0 / 255.0,
    "channel_order": "rgb", "interp": "bilinear", "pad_value": 255,
}
DEFAULT_SIZE = {"rec": (224, 224), "det": (416, 416)}
KEYS = ("size", "fit", "mean", "std", "scale", "channel_order", "interp", "pad_value")
_INTERP_CODES = {"nearest": 0, "linear": 1, "bilinear": 1, "cubic": 2, "bicubic": 2, "area": 3, "lanczos": 4,
                 "lanczos4": 4}


@dataclass(frozen=True)
class PreprocessSpec:
    """A validated preprocessing statement for one model. ``size`` is (h, w)."""

    kind: str
    size: tuple[int, int]
    fit: str = "stretch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    channel_order: str = "rgb"
    interp: str = "bilinear"
    pad_value: int = 255

    @property
    def needs_bgr_input(self) -> bool:
        """The model wants BGR: the converter must flip its input channels (the runtime feeds RGB)."""
        return self.channel_order == "bgr"

    def _rgb(self, v: Sequence[float]) -> list[float]:
        return [float(x) for x in (v[::-1] if self.needs_bgr_input else v)]

    def runtime_dict(self) -> dict[str, Any]:
        """The manifest's ``preprocess`` dict (what ``RecPreprocess`` / ``DetPreprocess.from_dict``
        read), mean/std in the runtime's RGB order. Round-tripped through the runtime class, so an
        impossible combination fails here, at conversion time, not on the device."""
        return self.rec_preprocess().to_dict() if self.kind == "rec" else self.det_preprocess().to_dict()

    def rec_preprocess(self) -> RecPreprocess:
        if self.kind != "rec":
            raise EdgeShituError("a detector preprocessing spec is not a recognition one")
        if self.fit == "keep-ratio":
            raise EdgeShituError("fit keep-ratio is for detectors: an extractor needs a fixed input; use stretch or "
                                 "letterbox")
        h, w = self.size
        return RecPreprocess(size=(w, h), interp=self.interp, scale=self.scale, mean=tuple(self._rgb(self.mean)),
                             std=tuple(self._rgb(self.std)), fit=self.fit, pad_value=self.pad_value)

    def det_preprocess(self) -> DetPreprocess:
        """PaddleDetection's op list. ``NormalizeImage`` only knows x/255 (``is_scale``) or x, so
        another ``scale`` is folded into mean/std: (x*s - m)/d == (x/255 - m/(255 s)) / (d/(255 s))."""
        if self.kind != "det":
            raise EdgeShituError("a recognition preprocessing spec is not a detector one")
        h, w = self.size
        k = 255.0 * self.scale
        mean, std = self._rgb(self.mean), self._rgb(self.std)
        if abs(k - 1.0) < 1e-9:
            norm = {"type": "NormalizeImage", "mean": mean, "std": std, "is_scale": True}
        elif abs(self.scale - 1.0) < 1e-12:
            norm = {"type": "NormalizeImage", "mean": mean, "std": std, "is_scale": False}
        else:
            norm = {"type": "NormalizeImage", "mean": [m / k for m in mean], "std": [d / k for d in std],
                    "is_scale": True}
        norm["norm_type"] = "mean_std"
        interp = _INTERP_CODES[self.interp]
        if self.fit == "stretch":
            ops = [{"type": "Resize", "target_size": [h, w], "keep_ratio": False, "interp": interp}, norm,
                   {"type": "Permute"}]
        elif self.fit == "letterbox":
            if h != w:
                raise EdgeShituError(f"a detector letterbox needs a square size, got {h}x{w}: use stretch")
            # keep_ratio scales the long side to the target; padding to a multiple of the target
            # then pads the short side to it, at the bottom / right (boxes map back by the scale alone)
            ops = [{"type": "Resize", "target_size": [h, w], "keep_ratio": True, "interp": interp}, norm,
                   {"type": "Permute"}, {"type": "PadStride", "stride": h}]
        else:
            ops = [{"type": "Resize", "target_size": [h, w], "keep_ratio": True, "interp": interp}, norm,
                   {"type": "Permute"}, {"type": "PadStride", "stride": 32}]
        return DetPreprocess(ops)

    def to_dict(self) -> dict[str, Any]:
        """The spec as the user could have written it (for reports and the manifest's provenance)."""
        return {"size": list(self.size), "fit": self.fit, "mean": list(self.mean), "std": list(self.std),
                "scale": self.scale, "channel_order": self.channel_order, "interp": self.interp,
                "pad_value": self.pad_value}


SpecSource = Union[None, str, "os.PathLike[str]", Mapping[str, Any]]


def parse_spec(source: SpecSource, kind: str, *, model_size: Optional[tuple[int, int]] = None,
               **overrides: Any) -> PreprocessSpec:
    """``source``: None (defaults), a YAML file path, a flag string ``key=value,key=value``
    (lists with ``/`` or spaces: ``mean=0.5/0.5/0.5``), or a mapping. ``overrides``: individual
    flags, applied last (None values ignored). ``model_size``: the model's fixed input (h, w),
    the default ``size``; a stated size that contradicts it is an error (the model would refuse)."""
    if kind not in ("rec", "det"):
        raise EdgeShituError(f"preprocess kind {kind!r} is unknown: use rec or det")
    raw = dict(_read_source(source))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise EdgeShituError(f"unknown preprocess keys {unknown}: use {', '.join(KEYS)}")
    d = {**DEFAULTS, **raw}
    size = _size(d.get("size")) if d.get("size") is not None else (model_size or DEFAULT_SIZE[kind])
    if model_size is not None and tuple(size) != tuple(model_size):
        raise EdgeShituError(f"preprocess size {size[0]}x{size[1]} does not match the model's fixed input "
                             f"{model_size[0]}x{model_size[1]}: drop size= or re-export the model")
    fit = str(d["fit"]).strip().lower().replace("_", "-")
    if fit in ("keep_ratio", "keepratio"):
        fit = "keep-ratio"
    if fit not in FITS:
        raise EdgeShituError(f"preprocess fit {d['fit']!r} is unknown: use {', '.join(FITS)}")
    order = str(d["channel_order"]).strip().lower()
    if order not in ("rgb", "bgr"):
        raise EdgeShituError(f"preprocess channel_order {d['channel_order']!r} is unknown: use rgb or bgr")
    interp = str(d["interp"]).strip().lower()
    if interp not in _INTERP_CODES:
        raise EdgeShituError(f"preprocess interp {d['interp']!r} is unknown: use {', '.join(sorted(_INTERP_CODES))}")
    for k in ("mean", "std"):  # the ImageNet defaults are per colour: in a BGR model's order when bgr
        if k not in raw and order == "bgr":
            d[k] = list(DEFAULTS[k])[::-1]
    mean, std = _triple(d["mean"], "mean"), _triple(d["std"], "std")
    if min(std) <= 0:
        raise EdgeShituError(f"preprocess std {list(std)} must be positive")
    scale = _number(d["scale"], "scale")
    if scale <= 0:
        raise EdgeShituError(f"preprocess scale {scale} must be positive (1/255 for 0-1 models, 1 for 0-255)")
    pad = int(_number(d["pad_value"], "pad_value"))
    if not 0 <= pad <= 255:
        raise EdgeShituError(f"preprocess pad_value {pad} must be a grey level 0..255")
    spec = PreprocessSpec(kind, size, fit, mean, std, scale, order, interp, pad)
    spec.runtime_dict()  # fails now on a combination the runtime cannot run
    return spec


def spec_from_paddleclas_yml(path: Union[str, os.PathLike[str]]) -> Optional[dict[str, Any]]:
    """A PaddleX / PaddleClas 3 ``inference.yml`` (``PreProcess.transform_ops``: ResizeImage,
    NormalizeImage, ToCHWImage) -> spec keys, or None when it has no such list. PaddleClas's
    ``ResizeImage.size`` is (w, h); ``NormalizeImage.order`` is about the tensor, not channels."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise EdgeShituError(f"model config {path} cannot be read ({e})") from None
    ops = (cfg.get("PreProcess") or {}).get("transform_ops") if isinstance(cfg, Mapping) else None
    if not isinstance(ops, list):
        return None
    out: dict[str, Any] = {}
    for op in ops:
        if not isinstance(op, Mapping) or len(op) != 1:
            continue
        (name, args), = op.items()
        args = args or {}
        if name == "ResizeImage" and "size" in args:
            s = args["size"]
            out["size"] = [int(s), int(s)] if isinstance(s, int) else [int(s[1]), int(s[0])]
        elif name == "NormalizeImage":
            for k in ("mean", "std", "scale"):
                if k in args:
                    out[k] = _number(args[k], k) if k == "scale" else list(args[k])
    return out


# ----------------------------------------------------------------------------- parsing helpers
def _read_source(source: SpecSource) -> Mapping[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return source
    text = str(source)
    p = Path(text).expanduser()
    if "=" not in text and (p.suffix.lower() in (".yml", ".yaml") or p.is_file()):
        if not p.is_file():
            raise EdgeShituError(f"preprocess file {p} does not exist: pass a YAML file or key=value flags")
        import yaml

        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise EdgeShituError(f"preprocess file {p} is not valid YAML ({type(e).__name__}): see "
                                 "docs/model-inputs.md") from None
        if not isinstance(data, Mapping):
            raise EdgeShituError(f"preprocess file {p} must be a mapping of keys ({', '.join(KEYS)})")
        return data
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise EdgeShituError(f"preprocess flag {item!r} is not key=value (e.g. size=256x128,fit=letterbox)")
        k, v = (x.strip() for x in item.split("=", 1))
        out[k] = v
    return out


def _size(v: Any) -> tuple[int, int]:
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            h = w = int(v)
        elif isinstance(v, str):
            parts = [p for p in v.lower().replace("*", "x").replace("/", "x").replace(" ", "x").split("x") if p]
            h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
            if len(parts) > 2:
                raise ValueError
        else:
            h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise EdgeShituError(f"preprocess size {v!r} must be H or HxW (e.g. 224 or 256x128)") from None
    if h <= 0 or w <= 0:
        raise EdgeShituError(f"preprocess size {v!r} must be positive")
    return h, w


def _number(v: Any, key: str) -> float:
    try:
        if isinstance(v, str) and "/" in v:
            a, b = v.split("/", 1)
            return float(a) / float(b)
        return float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        raise EdgeShituError(f"preprocess {key} {v!r} is not a number (e.g. 0.00392 or 1/255)") from None


def _triple(v: Any, key: str) -> tuple[float, float, float]:
    items = [x for x in v.replace("/", " ").replace(";", " ").split()] if isinstance(v, str) else list(v)
    if len(items) != 3:
        raise EdgeShituError(f"preprocess {key} {v!r} must have 3 values (one per channel)")
    a, b, c = (_number(x, key) for x in items)
    return a, b, c
