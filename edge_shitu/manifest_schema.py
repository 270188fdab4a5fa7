"""The manifest.json schema as data: every key the device runtime reads, its type and its range.

One table (:data:`MANIFEST`) checked by :func:`validate` when a bundle is opened
(``Bundle.open``) and before one is written (``write_manifest``): a hand-edited value that is
wrong gives ONE line naming the key path, e.g.
``manifest.json: runtime.threads must be an integer >= 1, got "four"``, never a traceback.
Unknown keys are ignored (minor versions add keys), except inside ``rec.preprocess`` where an
unknown key changes what the extractor is fed and is refused. docs/bundle-format.md lists the
same table for people.

Device-side module: standard library only (no jsonschema).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from edge_shitu import formats
from edge_shitu.errors import EdgeShituError


class ManifestError(EdgeShituError):
    """A manifest value of the wrong type or out of range (one line naming the key path)."""


def _show(value: Any) -> str:
    try:
        s = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        try:
            s = repr(value)
        except (ValueError, RecursionError):
            s = f"a {type(value).__name__}"
    return s if len(s) <= 60 else s[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# ----------------------------------------------------------------------------- nodes
class Node:
    """One value's rule. ``problem`` returns None when the value is fine, else what it must be
    (``describe``), or raises :class:`ManifestError` itself for a problem deeper down."""

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value: Any, path: str) -> Optional[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Node):
    lo: Optional[int] = None
    hi: Optional[int] = None
    multiple_of: Optional[int] = None

    def describe(self) -> str:
        d = "an integer"
        if self.lo is not None and self.hi is not None:
            d += f" in [{self.lo}, {self.hi}]"
        elif self.lo is not None:
            d += f" >= {self.lo}"
        elif self.hi is not None:
            d += f" <= {self.hi}"
        if self.multiple_of:
            d += f", a multiple of {self.multiple_of}"
        return d

    def problem(self, value: Any, path: str) -> Optional[str]:
        ok = (_is_int(value) and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
              and (not self.multiple_of or value % self.multiple_of == 0))
        return None if ok else self.describe()


@dataclass(frozen=True)
class Num(Node):
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False  # lo itself excluded

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"a number in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}]"
        if self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        return "a number"

    def problem(self, value: Any, path: str) -> Optional[str]:
        ok = _is_num(value) and (self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)) \
            and (self.hi is None or value <= self.hi)
        return None if ok else self.describe()


@dataclass(frozen=True)
class Bool(Node):
    def describe(self) -> str:
        return "true or false"

    def problem(self, value: Any, path: str) -> Optional[str]:
        return None if isinstance(value, bool) else self.describe()


@dataclass(frozen=True)
class Str(Node):
    """A string; ``choices`` (a tuple or a callable giving one) restricts it, ``pattern`` is a
    full-match regex described by ``what``, ``accept`` a predicate (e.g. an alias resolver)."""

    choices: Any = None
    pattern: Optional[str] = None
    what: str = "a string"
    accept: Optional[Callable[[str], bool]] = None

    def _choices(self) -> Optional[Sequence[str]]:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self) -> str:
        ch = self._choices()
        if ch is not None:
            return "one of " + ", ".join(json.dumps(c, ensure_ascii=False) for c in ch)
        return self.what

    def problem(self, value: Any, path: str) -> Optional[str]:
        if not isinstance(value, str):
            return self.describe()
        if self.accept is not None:
            return None if self.accept(value) else self.describe()
        ch = self._choices()
        if ch is not None and value not in ch:
            return self.describe()
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return self.describe()
        return None


@dataclass(frozen=True)
class RelPath(Node):
    """A path inside the bundle, as written in the manifest: relative, ``/``-separated, no ``..``
    (``lib``: inside the bundle's ``lib/`` folder). Symlinks are checked when the bundle is opened
    (``bundle.resolve_in_bundle``): this is the lexical half of the rule."""

    under: str = ""

    def describe(self) -> str:
        if self.under:
            return f"a relative path inside the bundle's {self.under}/ folder (no '..')"
        return "a relative path inside the bundle (no '..', not absolute)"

    def problem(self, value: Any, path: str) -> Optional[str]:
        return None if path_problem(value, self.under) is None else self.describe()


def path_problem(value: Any, under: str = "") -> Optional[str]:
    """Why ``value`` is not an acceptable manifest path (None when it is)."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        return "not a non-empty string"
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        return "absolute"
    parts = [p for p in re.split(r"[/\\]", value) if p not in ("", ".")]
    if not parts:
        return "names the bundle folder itself"
    if ".." in parts:
        return "contains '..'"
    if under and (len(parts) < 2 or parts[0] != under):
        return f"not inside {under}/"
    return None


@dataclass(frozen=True)
class ListOf(Node):
    item: Node
    length: Optional[int] = None
    min_len: int = 0

    def describe(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        what = f"a list of {n}{_plural(self.item.describe())}"
        if self.length is None and self.min_len:
            what = f"a non-empty list of {_plural(self.item.describe())}"
        return what

    def problem(self, value: Any, path: str) -> Optional[str]:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length) \
                or len(value) < self.min_len:
            return self.describe()
        for i, v in enumerate(value):
            check(v, self.item, f"{path}[{i}]")
        return None


def _plural(desc: str) -> str:
    for a, b in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                 ("an object", "objects"), ("a list", "lists")):
        if desc.startswith(a):
            return b + desc[len(a):]
    return desc


@dataclass(frozen=True)
class AnyOf(Node):
    options: tuple[Node, ...]

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def problem(self, value: Any, path: str) -> Optional[str]:
        for o in self.options:
            try:
                if o.problem(value, path) is None:
                    return None
            except ManifestError:
                continue
        return self.describe()


@dataclass(frozen=True)
class Key:
    node: Node
    required: bool = False
    nullable: bool = False  # null allowed (same as absent)


@dataclass(frozen=True)
class Obj(Node):
    """An object; ``keys`` are checked, others ignored unless ``closed`` (then refused with
    ``closed_hint``); ``tag`` picks extra keys by the value of one key (detector ops by "type");
    ``rule`` is a cross-key check returning (key, message) or None."""

    keys: Mapping[str, Key] = field(default_factory=dict)
    closed: bool = False
    closed_hint: str = ""
    tag: Optional[str] = None
    variants: Mapping[str, Mapping[str, Key]] = field(default_factory=dict)
    rule: Optional[Callable[[Mapping[str, Any]], Optional[tuple[str, str]]]] = None

    def describe(self) -> str:
        return "an object"

    def problem(self, value: Any, path: str) -> Optional[str]:
        if not isinstance(value, dict):
            return self.describe()
        keys = dict(self.keys)
        if self.tag is not None:
            tag = value.get(self.tag)
            if not isinstance(tag, str) or tag not in self.variants:  # a list / dict tag is unhashable
                check(tag, Str(tuple(self.variants)), _join(path, self.tag), missing=self.tag not in value)
            keys.update(self.variants[tag])
        for name, k in keys.items():
            kp = _join(path, name)
            if name not in value or (value[name] is None and k.nullable):
                if k.required and name not in value:
                    raise ManifestError(f"{kp} is missing (must be {k.node.describe()})")
                continue
            check(value[name], k.node, kp)
        if self.closed:
            unknown = sorted(set(value) - set(keys))
            if unknown:
                raise ManifestError(f"{_join(path, unknown[0])}: unknown key{self.closed_hint}")
        if self.rule is not None:
            bad = self.rule(value)
            if bad is not None:
                raise ManifestError(f"{_join(path, bad[0])} {bad[1]}")
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check(value: Any, node: Node, path: str, missing: bool = False) -> None:
    """Raise ManifestError('<path> must be <what>, got <value>') when ``value`` breaks ``node``."""
    if missing:
        raise ManifestError(f"{path} is missing (must be {node.describe()})")
    why = node.problem(value, path)
    if why is not None:
        raise ManifestError(f"{path} must be {why}, got {_show(value)}")


# ----------------------------------------------------------------------------- the manifest
def _backend_ok(name: str) -> bool:
    try:
        formats.backend_name(name)
    except EdgeShituError:
        return False
    return True


def _backend_names() -> list[str]:
    return [*formats.BACKENDS, *formats.BACKEND_ALIASES]


def _interp_names() -> tuple[str, ...]:
    from edge_shitu.preprocess import _INTERP_BY_NAME  # numpy + Pillow: on every device anyway

    return tuple(sorted(_INTERP_BY_NAME))


SHA256 = Str(pattern=r"[0-9a-fA-F]{64}", what="a sha256 (64 hex digits)")
INTERP = AnyOf((Str(_interp_names), Int(0, 4)))
THREE = ListOf(Num(), length=3)
THREE_POS = ListOf(Num(0, lo_open=True), length=3)
SIZE2 = ListOf(Int(1), length=2)


def _rec_rule(d: Mapping[str, Any]) -> Optional[tuple[str, str]]:
    if d.get("fit") == "letterbox":
        size = d.get("size", [224, 224])
        if size[0] != size[1]:
            return "size", f"must be square for fit \"letterbox\", got {_show(size)}"
        if d.get("interp", "bilinear") != "bilinear":
            return "interp", f"must be \"bilinear\" for fit \"letterbox\", got {_show(d.get('interp'))}"
    return None


REC_PREPROCESS = Obj({
    "kind": Key(Str(("rec",))),
    "size": Key(SIZE2),  # (w, h), PaddleClas's ResizeImage.size
    "interp": Key(INTERP),
    "resize": Key(Str(("cv2", "pil"))),
    "scale": Key(Num(0, lo_open=True)),
    "mean": Key(THREE),
    "std": Key(THREE_POS),
    "fit": Key(Str(("stretch", "letterbox"))),
    "pad_value": Key(Int(0, 255)),
}, closed=True, closed_hint=" (not a recognition preprocess setting: written by a newer edge-shitu? upgrade)",
    rule=_rec_rule)

DET_PREPROCESS = Obj({
    "kind": Key(Str(("det",))),
    "ops": Key(ListOf(Obj(tag="type", variants={
        "Resize": {"target_size": Key(AnyOf((Int(1), SIZE2)), required=True), "keep_ratio": Key(Bool()),
                   "interp": Key(INTERP)},
        "NormalizeImage": {"mean": Key(THREE), "std": Key(THREE_POS), "is_scale": Key(Bool()),
                           "norm_type": Key(Str(("mean_std", "none")))},
        "Permute": {},
        "PadStride": {"stride": Key(Int(0))},
    })), required=True),
})

DET_HEAD = Obj({
    "image": Key(Str(), required=True),
    "scores": Key(ListOf(Str()), required=True),
    "dists": Key(ListOf(Str()), required=True),
    "strides": Key(ListOf(Int(1)), required=True),
    "grids": Key(ListOf(SIZE2), required=True),
    "num_classes": Key(Int(1), required=True),
    "reg_max": Key(Int(0), required=True),
    "cell_offset": Key(Num(), required=True),
    "nms": Key(Obj({
        "score_threshold": Key(Num()),
        "nms_threshold": Key(Num(0, 1)),
        "nms_top_k": Key(Int(-1)),
        "keep_top_k": Key(Int(-1)),
    })),
})

# a raw GFL head decoded on the device (edge_shitu/gfl_head.py: PicoDet ONNX without NMS)
GFL_HEAD = Obj({
    "type": Key(Str(("gfl",)), required=True),
    "input_size": Key(SIZE2, required=True),
    "num_classes": Key(Int(1), required=True),
    "strides": Key(ListOf(Int(1))),
    "reg_max": Key(Int(0)),
    "cell_offset": Key(Num()),
    "outputs": Key(ListOf(Str())),
    "image": Key(Str()),
    "classes": Key(ListOf(Int(0)), nullable=True),
    "class_agnostic": Key(Bool()),
    "nms": Key(Obj({
        "score_threshold": Key(Num()),
        "nms_threshold": Key(Num(0, 1)),
        "nms_top_k": Key(Int(-1)),
        "keep_top_k": Key(Int(-1)),
    })),
})

class DetHead(Node):
    """A detector head: the GFL form when ``type`` is "gfl", else the cut-PicoDet form (errors
    name the exact key of whichever form the value claims to be)."""

    def describe(self) -> str:
        return "a detector head description"

    def problem(self, value: Any, path: str) -> Optional[str]:
        node = GFL_HEAD if isinstance(value, dict) and value.get("type") == "gfl" else DET_HEAD
        return node.problem(value, path)


ARTIFACT = Obj({
    "kind": Key(Str(lambda: formats.DEPLOYABLE_KINDS), required=True),
    "file": Key(RelPath(), required=True),
    "sha256": Key(SHA256, required=True),
    "bytes": Key(Int(0), required=True),
    "details": Key(Obj({"cut_before_nms": Key(Bool()),
                        "head": Key(DetHead(), nullable=True)}), nullable=True),
    "inputs": Key(ListOf(Obj())),
    "outputs": Key(ListOf(Obj())),
})

MANIFEST = Obj({
    "format": Key(Str(("edge-shitu-bundle",)), required=True),
    "format_version": Key(ListOf(Int(0), length=2), required=True),
    "board": Key(Obj({
        "name": Key(Str()),
        "max_image_pixels": Key(Int(1)),
    }), required=True),
    "det": Key(Obj({
        "preprocess": Key(DET_PREPROCESS, required=True),
        "postprocess": Key(Obj()),
        "artifacts": Key(ListOf(ARTIFACT, min_len=1), required=True),
        "input_size": Key(SIZE2),  # (h, w) the artifacts take: the board's det.input_size or the model's own
    }), nullable=True),
    "rec": Key(Obj({
        "preprocess": Key(REC_PREPROCESS, required=True),
        "feature_dim": Key(Int(1), required=True),
        "artifacts": Key(ListOf(ARTIFACT, min_len=1), required=True),
    }), required=True),
    "index": Key(Obj({
        "file": Key(RelPath(), required=True),
        "bits": Key(Int(64, multiple_of=64)),
        "method": Key(Str(("itq", "sign"))),
        "items": Key(Int(0)),
        "labels": Key(Int(0)),
        "rerank": Key(Int(0)),
        "rerank_vectors": Key(Bool()),
    }), required=True),
    "runtime": Key(Obj({
        "backend": Key(Str(_backend_names, accept=_backend_ok)),
        "precision": Key(Str(formats.PRECISIONS)),
        "det_precision": Key(Str(formats.PRECISIONS)),
        "det_precision_reason": Key(Str()),
        "threads": Key(Int(1, 1024)),
        "det_threshold": Key(Num(0, 1)),
        "max_det": Key(Int(0)),
        "rec_score_threshold": Key(Num(-1, 1)),
        "rec_nms_iou": Key(Num(0, 1)),
        "top_k": Key(Int(1)),
        "rerank": Key(Int(0)),
    }), nullable=True),
    "native_lib": Key(Obj({
        "file": Key(RelPath("lib"), required=True),
        "sha256": Key(SHA256, required=True),
        "target": Key(Str()),
    }), nullable=True),
})


def validate(manifest: Any, where: str) -> None:
    """Check a parsed manifest against :data:`MANIFEST`; one line ``<where>: <key> ...`` if not."""
    try:
        check(manifest, MANIFEST, "")
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}; fix the file or rebuild the bundle with 'edge-shitu convert'") from None


def manifest_paths(manifest: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Every path a (validated) manifest names, as (key path, value, required folder or "")."""
    out = [("index.file", manifest["index"]["file"], "")]
    for which in ("det", "rec"):
        model = manifest.get(which)
        if model:
            out += [(f"{which}.artifacts[{i}].file", a["file"], "") for i, a in enumerate(model["artifacts"])]
    lib = manifest.get("native_lib")
    if lib:
        out.append(("native_lib.file", lib["file"], "lib"))
    return out
