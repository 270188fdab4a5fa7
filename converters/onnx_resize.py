"""Re-target a fixed-size ONNX detector to another input size (the board's detector size).

Setting the image input's dims is not enough: exporters bake the spatial sizes of the export
into shape constants. PicoDet's channel shuffles reshape ``[1, 96, 52, 52]`` to the constant
``[1, 2, 48, 52, 52]`` and back, so a 320x320 input (40x40 at stride 8) would be reshaped into
the 416 layout. This module rewrites those constants from the graph's own shapes, not from
guessed values:

1. ONNX shape inference on the ORIGINAL model gives every tensor's shape at the old size;
2. the image input gets the new size and the nodes are walked in (topological) order; for each
   node whose constant input encodes a shape, shape inference on the model as rewritten so far
   gives its input's shape at the new size, and the constant is re-derived:

   - ``Reshape``: the old input and output shapes are split into the groups of axes a reshape
     maps onto each other (equal products); a group whose input dims did not change keeps its
     output dims, a group that became a single output axis takes the new product, one output
     axis per input axis takes the new dim. A group that SPLITS a size-dependent axis (e.g. a
     flattened H*W back to H, W) cannot be re-derived: refused. ``-1`` / ``0`` entries stay;
   - ``Resize`` with ``sizes``: each axis keeps its old output/input ratio (refused if the new size
     is not a whole multiple); ``scales`` need nothing;
   - ``Slice`` on an axis whose size changed: a slice that took the whole axis keeps taking it
     (its end becomes INT64_MAX); a real crop is refused;
   - ``Split`` with explicit sizes on an axis whose size changed: equal parts are re-split, others
     refused;

3. the result must pass ``onnx.checker``, STRICT shape inference at the new size (a baked-in
   spatial tensor, e.g. an anchor grid or a positional term, no longer broadcasts: refused naming
   the node), element-count agreement of every Reshape, static outputs, and (``check_run``) one
   onnxruntime run on a zero image.

Any refusal is one :class:`EdgeShituError` line saying what to do (export the model at the
wanted size, or keep its own). Re-targeting to the model's own size changes no constant: the
outputs are bit-identical (tests/test_onnx_resize.py). Note that PaddleDetection's
picodet_s_320_coco and picodet_s_416_coco are two separately trained models: the 416 model
re-targeted to 320 is the 416 weights run at 320, not the 320 file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from edge_shitu.atomic import atomic_write
from edge_shitu.errors import EdgeShituError

PathLike = Union[str, "os.PathLike[str]"]
# PicoDet (and most FPN detectors): the backbone's largest stride; the FPN's upsampled levels
# only line up again when the input is a multiple of it (PicoDet's extra stride-64 level is a
# strided conv: ceil(H / 64) cells, which GFLHead.grids also uses).
MULTIPLE = 32
INT64_MAX = np.iinfo(np.int64).max


@dataclass
class Retarget:
    """What :func:`retarget_onnx` did: ``rewritten`` lists each constant changed, as
    ``"Reshape_4 (Reshape): [1, 2, 48, 52, 52] -> [1, 2, 48, 40, 40]"``."""

    path: Optional[Path]
    old_size: tuple[int, int]
    new_size: tuple[int, int]
    rewritten: list[str] = field(default_factory=list)

    @property
    def identity(self) -> bool:
        return self.old_size == self.new_size

    def to_dict(self) -> dict[str, Any]:
        return {"from": list(self.old_size), "to": list(self.new_size), "constants_rewritten": len(self.rewritten),
                "rewritten": list(self.rewritten)}


def parse_size(value: Any, what: str = "detector input size") -> Optional[tuple[int, int]]:
    """``320``, ``"320"``, ``"320x416"`` (h x w), ``[h, w]`` -> (h, w); None / "model" -> None (the
    model's own size). Anything else: one line."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "model")):
        return None
    try:
        if isinstance(value, str):
            parts = value.lower().replace(" ", "").split("x")
            dims = [int(p) for p in parts]
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            dims = [int(value)]
        else:
            dims = [int(v) if not isinstance(v, bool) and float(v) == int(v) else -1 for v in value]
    except (TypeError, ValueError):
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise EdgeShituError(f"{what} {value!r} is not a size: use H, HxW (e.g. 320 or 320x416) or 'model'")
    return dims[0], dims[1]


def image_input(model: Any) -> tuple[Any, int]:
    """The graph's 4-D image input (weights listed as inputs are skipped) and its H axis (2 for
    NCHW, 1 for NHWC)."""
    inits = {i.name for i in model.graph.initializer}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4:
            c1 = dims[1].dim_value if dims[1].HasField("dim_value") else 0
            c3 = dims[3].dim_value if dims[3].HasField("dim_value") else 0
            if c1 in (1, 3) or c3 in (1, 3):
                return v, (2 if c1 in (1, 3) else 1)
    raise EdgeShituError("the model has no 4-D image input (1 or 3 channels, NCHW or NHWC) to re-target")


def model_size(model: Any) -> Optional[tuple[int, int]]:
    """(h, w) of the image input when fixed, else None."""
    v, ax = image_input(model)
    dims = v.type.tensor_type.shape.dim
    hw = [dims[ax].dim_value if dims[ax].HasField("dim_value") else 0,
          dims[ax + 1].dim_value if dims[ax + 1].HasField("dim_value") else 0]
    return (hw[0], hw[1]) if min(hw) > 0 else None


# ----------------------------------------------------------------------------- shapes
def _infer(model: Any, strict: bool = False) -> Any:
    import onnx

    return onnx.shape_inference.infer_shapes(model, strict_mode=strict)


def _shape_table(model: Any) -> dict[str, Optional[tuple[int, ...]]]:
    """name -> static shape (None when any dim is unknown) for every value the model declares."""
    out: dict[str, Optional[tuple[int, ...]]] = {}
    g = model.graph
    for v in [*g.input, *g.value_info, *g.output]:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            out[v.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        out[v.name] = None if -1 in dims else tuple(dims)
    for i in g.initializer:
        out[i.name] = tuple(int(d) for d in i.dims)
    return out


def _constants(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _groups(a: Sequence[int], b: Sequence[int]) -> Optional[list[tuple[list[int], list[int]]]]:
    """Split the axes of two shapes of equal size into the groups a reshape maps onto each other
    (equal products, as small as possible); None when the sizes differ."""
    if math.prod(a) != math.prod(b):
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        xs, ys = [], []
        pa = pb = 1
        if i < len(a):
            xs.append(i)
            pa = a[i]
            i += 1
        if j < len(b):
            ys.append(j)
            pb = b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                xs.append(i)
                pa *= a[i]
                i += 1
            elif j < len(b):
                ys.append(j)
                pb *= b[j]
                j += 1
            else:
                return None
        groups.append((xs, ys))
    return groups


def _new_reshape_shape(xo: Sequence[int], yo: Sequence[int], xn: Sequence[int]) -> tuple[Optional[list[int]], str]:
    """The reshape target at the new size, or (None, why)."""
    groups = _groups(xo, yo)
    if groups is None:
        return None, f"its old shapes {list(xo)} -> {list(yo)} do not have the same size"
    yn = list(yo)
    for xs, ys in groups:
        old, new = [xo[i] for i in xs], [xn[i] for i in xs]
        if old == new:
            continue
        if len(ys) == 1:
            yn[ys[0]] = math.prod(new)
        elif len(xs) == len(ys) and [yo[j] for j in ys] == old:
            for i, j in zip(xs, ys):
                yn[j] = xn[i]
        else:
            return None, (f"it splits size-dependent dims {old} of {list(xo)} into {[yo[j] for j in ys]} "
                          "(which part scales with the input cannot be told)")
    return yn, ""


# ----------------------------------------------------------------------------- the rewrite
class _Refuse(Exception):
    pass


def retarget_model(model: Any, size: Sequence[int], *, multiple: int = MULTIPLE) -> tuple[Any, tuple[int, int],
                                                                                          list[str]]:
    """A copy of ``model`` (an ``onnx.ModelProto``) whose image input is ``size`` (h, w), its shape
    constants re-derived; returns (model, old size, rewritten constants). Raises _Refuse(why) or
    EdgeShituError (bad size, dynamic input)."""
    import onnx
    from onnx import numpy_helper

    h, w = int(size[0]), int(size[1])
    old_size = model_size(model)
    if old_size is None:
        raise EdgeShituError("its image input has a dynamic size: there is no own size to re-target from; set the "
                             "size in the preprocessing instead (--det-preprocess size=HxW)")
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise EdgeShituError(f"detector input size {h}x{w} is not a multiple of {multiple} (the detector's largest "
                             f"backbone stride): use e.g. {max(multiple, round(h / multiple) * multiple)}x"
                             f"{max(multiple, round(w / multiple) * multiple)}")
    base = onnx.ModelProto()
    base.CopyFrom(model)
    del base.graph.value_info[:]  # the export's own shape annotations are re-inferred
    old_shapes = _shape_table(_infer(base))
    new = onnx.ModelProto()
    new.CopyFrom(base)
    img, ax = image_input(new)
    dims = img.type.tensor_type.shape.dim
    dims[ax].dim_value, dims[ax + 1].dim_value = h, w
    for o in new.graph.output:  # declared at the old size
        o.type.tensor_type.ClearField("shape")
    if (h, w) == old_size:
        return _finish(new, old_size), old_size, []

    consts = _constants(new)
    rewritten: list[str] = []
    cur: Optional[dict[str, Optional[tuple[int, ...]]]] = None
    uses: dict[str, int] = {}
    for n in new.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1

    def shapes() -> dict[str, Optional[tuple[int, ...]]]:
        nonlocal cur
        if cur is None:
            cur = _shape_table(_infer(new))
        return cur

    def label(node: Any) -> str:
        return f"{node.name or node.output[0]} ({node.op_type})"

    made: dict[tuple[str, tuple[int, ...]], str] = {}  # a shared constant is re-derived once per value

    def replace(node: Any, slot: int, value: np.ndarray) -> None:
        nonlocal cur
        old = consts[node.input[slot]]
        key = (node.input[slot], tuple(int(v) for v in np.asarray(value).reshape(-1)))
        name = made.get(key) or f"{node.input[slot]}__{h}x{w}"
        if key not in made:
            made[key] = name = name if name not in consts else f"{name}_{len(made)}"
            new.graph.initializer.append(numpy_helper.from_array(np.asarray(value, old.dtype), name))
            consts[name] = np.asarray(value, old.dtype)
        rewritten.append(f"{label(node)} input {slot}: {old.tolist()} -> {np.asarray(value).tolist()}")
        node.input[slot] = name
        cur = None

    def io(node: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        xo, yo = old_shapes.get(node.input[0]), old_shapes.get(node.output[0])
        if xo is None or yo is None:
            raise _Refuse(f"{label(node)} has no static shape at the model's own size")
        xn = shapes().get(node.input[0])
        if xn is None:
            try:  # strict inference names the node that broke (e.g. a baked-in spatial tensor)
                _infer(new, strict=True)
            except Exception as e:
                raise _Refuse(_first_error(e)) from None
            raise _Refuse(f"the input of {label(node)} has no static shape at {h}x{w}")
        return xo, yo, xn

    for node in new.graph.node:
        op = node.op_type
        if op == "Reshape" and len(node.input) > 1 and node.input[1] in consts:
            xo, yo, xn = io(node)
            if xo == xn:
                continue
            c = consts[node.input[1]].astype(np.int64)
            allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
            yn, why = _new_reshape_shape(xo, yo, xn)
            if yn is None:
                raise _Refuse(f"{label(node)}: {why}")
            value = np.array([v if v == -1 or (v == 0 and not allowzero) else yn[k] for k, v in enumerate(c)],
                             np.int64)
            if not np.array_equal(value, c):
                replace(node, 1, value)
        elif op == "Resize" and len(node.input) > 3 and node.input[3] and node.input[3] in consts:
            xo, yo, xn = io(node)
            if xo == xn:
                continue
            sizes = []
            for a in range(len(xo)):
                if xo[a] == xn[a]:
                    sizes.append(yo[a])
                elif (yo[a] * xn[a]) % xo[a]:
                    raise _Refuse(f"{label(node)} resizes axis {a} from {xo[a]} to {yo[a]}: {xn[a]} does not scale "
                                  "to a whole size")
                else:
                    sizes.append(yo[a] * xn[a] // xo[a])
            if sizes != [int(v) for v in consts[node.input[3]]]:
                replace(node, 3, np.array(sizes, np.int64))
        elif op == "Slice" and len(node.input) >= 3:
            xo, yo, xn = io(node)
            if xo == xn:
                continue
            if not all(i in consts for i in node.input[1:] if i):
                raise _Refuse(f"{label(node)} slices with computed bounds")
            starts, ends = consts[node.input[1]].astype(np.int64), consts[node.input[2]].astype(np.int64)
            axes = consts[node.input[3]].astype(np.int64) if len(node.input) > 3 and node.input[3] else \
                np.arange(len(starts))
            steps = consts[node.input[4]].astype(np.int64) if len(node.input) > 4 and node.input[4] else \
                np.ones(len(starts), np.int64)
            new_ends = ends.copy()
            for k, a in enumerate(int(a) % len(xo) for a in axes):
                if xo[a] == xn[a]:
                    continue
                if steps[k] == 1 and starts[k] in (0, -xo[a]) and ends[k] >= xo[a]:
                    new_ends[k] = INT64_MAX  # the whole axis, whatever its size
                else:
                    raise _Refuse(f"{label(node)} crops size-dependent axis {a} ({xo[a]} -> {yo[a]})")
            if not np.array_equal(new_ends, ends):
                replace(node, 2, new_ends)
        elif op == "Split":
            xo, yo, xn = io(node)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(xo)
            if xo[axis] == xn[axis]:
                continue
            attr = next((a for a in node.attribute if a.name == "split"), None)
            parts = list(attr.ints) if attr is not None else (
                [int(v) for v in consts[node.input[1]]] if len(node.input) > 1 and node.input[1] in consts else None)
            if parts is None:
                continue  # equal parts by the output count
            n = len(parts)
            if len(set(parts)) != 1 or xn[axis] % n:
                raise _Refuse(f"{label(node)} splits size-dependent axis {axis} into {parts}")
            if attr is not None:
                del attr.ints[:]
                attr.ints.extend([xn[axis] // n] * n)
                rewritten.append(f"{label(node)} split: {parts} -> {[xn[axis] // n] * n}")
                cur = None
            else:
                replace(node, 1, np.array([xn[axis] // n] * n, np.int64))
    _drop_unused(new, uses)
    return _finish(new, old_size), old_size, rewritten


def _drop_unused(model: Any, uses_before: dict[str, int]) -> None:
    """Constants nothing reads any more (replaced by re-derived copies) are removed, with their
    graph-input entries (old exporters list every initializer as an input too)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    gone = {i.name for i in model.graph.initializer if i.name not in used and i.name in uses_before}
    if gone:
        keep = [i for i in model.graph.initializer if i.name not in gone]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        inputs = [v for v in model.graph.input if v.name not in gone]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    dead = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used
            and n.output[0] in uses_before]
    for n in dead:
        model.graph.node.remove(n)


def _first_error(e: Exception) -> str:
    """One line of an onnx checker / shape inference error (it lists every failing node)."""
    text = " ".join(ln.strip() for ln in str(e).strip().splitlines() if ln.strip()) or type(e).__name__
    text = text.replace("[ShapeInferenceError] Inference error(s): ", "")
    parts = text.split("(op_type:")
    if len(parts) > 2:  # the first failing node; the rest follow from it
        text = parts[0] + "(op_type:" + parts[1].strip()
    return f"shape inference at the new size fails: {text[:300]}"


def _finish(model: Any, old_size: tuple[int, int]) -> Any:
    """Checker, strict shape inference (the inferred shapes are kept), element counts of every
    Reshape, static outputs."""
    import onnx

    try:
        out = _infer(model, strict=True)
        onnx.checker.check_model(out)
    except Exception as e:  # checker / inference errors: their first line says which node
        raise _Refuse(_first_error(e)) from None
    table = _shape_table(out)
    for n in out.graph.node:
        if n.op_type == "Reshape":
            a, b = table.get(n.input[0]), table.get(n.output[0])
            if a is not None and b is not None and math.prod(a) != math.prod(b):
                raise _Refuse(f"{n.name or n.output[0]} (Reshape) turns {list(a)} into {list(b)}: a shape constant "
                              "still holds the old size")
    loose = [o.name for o in out.graph.output if table.get(o.name) is None]
    if loose:
        raise _Refuse(f"outputs {loose} have no static shape at the new size")
    return out


def retarget_onnx(src: PathLike, size: Sequence[int], dst: Optional[PathLike] = None, *,
                  multiple: int = MULTIPLE, check_run: bool = True) -> Retarget:
    """Re-target the ONNX file ``src`` to ``size`` (h, w) and write it to ``dst`` (atomically;
    None: check only). ``check_run``: run onnxruntime once on a zero image at the new size.
    One EdgeShituError line when it cannot be done (see the module docstring)."""
    import onnx

    src = Path(src)
    h, w = int(size[0]), int(size[1])
    model = onnx.load(str(src))
    old = model_size(model)
    what = f"cannot run {src.name} at {h}x{w}"
    hint = (f"export the model at {h}x{w} (PaddleDetection: tools/export_model.py with "
            f"TestReader.inputs_def.image_shape=[3,{h},{w}]) or keep its own size"
            f"{f' ({old[0]}x{old[1]})' if old else ''} (board det.input_size \"model\")")
    try:
        new, old_size, rewritten = retarget_model(model, (h, w), multiple=multiple)
    except _Refuse as e:
        raise EdgeShituError(f"{what}: {e}; {hint}") from None
    except EdgeShituError as e:
        raise EdgeShituError(f"{what}: {e}") from None
    if check_run:
        import onnxruntime as ort

        v, _ = image_input(new)
        shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        try:
            sess = ort.InferenceSession(new.SerializeToString(), so, providers=["CPUExecutionProvider"])
            sess.run(None, {v.name: np.zeros(shape, np.float32)})
        except Exception as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise EdgeShituError(f"{what}: onnxruntime cannot run the re-targeted model ({first}); {hint}") from None
    out = None
    if dst is not None:
        out = Path(dst)
        with atomic_write(out) as f:
            f.write(new.SerializeToString())  # onnx.save wants a named file; the bytes are the same
    return Retarget(out, old_size, (h, w), rewritten)


# ----------------------------------------------------------------------------- in `convert`
def detector_size(board: Any, override: Any = None) -> tuple[Optional[tuple[int, int]], str]:
    """The detector input size ``convert`` targets: ``--det-size`` (``ConvertOptions.det_size``)
    when given, else the board's ``det.input_size``; None: the model's own size. Also says where
    it came from (for messages and the manifest)."""
    size, origin = ((parse_size(override, "--det-size"), "--det-size") if override is not None
                    else (board.det_size, f"board {board.name} det.input_size"))
    if size is not None and (size[0] % MULTIPLE or size[1] % MULTIPLE):
        raise EdgeShituError(f"{origin} {size[0]}x{size[1]} is not a multiple of {MULTIPLE} (the detector's largest "
                             f"backbone stride): use e.g. {max(MULTIPLE, round(size[0] / MULTIPLE) * MULTIPLE)}x"
                             f"{max(MULTIPLE, round(size[1] / MULTIPLE) * MULTIPLE)}")
    return size, origin


def detector_at_size(det: Path, board: Any, override: Any, work: Path, warnings: list[str],
                     progress: Any = lambda m: None) -> tuple[Path, Optional[dict[str, Any]]]:
    """The detector file ``convert`` converts: ``det`` itself, or (an ONNX detector whose fixed
    size is not the board's) its re-targeted copy in ``work``. Returns (path, sizes) where
    ``sizes`` is None when nothing changed, else ``{"model": [h, w], "input": [h, w], "from": ...,
    "retarget": Retarget.to_dict(), "native": the original file}``. A Paddle detector keeps its
    own size: refused in one line for ``--det-size``, a warning for a board setting."""
    from edge_shitu.converters.model_input import inspect_model

    size, origin = detector_size(board, override)
    if size is None:
        return det, None
    info = inspect_model(det, "det")
    own = info.input_size() if info.format == "onnx" else None
    if info.format != "onnx" or own is None:
        why = ("a Paddle detector runs at its own preprocessing size" if info.format != "onnx" else
               "its ONNX input has a dynamic size (the preprocessing size fixes it: --det-preprocess size=HxW)")
        if override is not None:
            raise EdgeShituError(f"--det-size {size[0]}x{size[1]} applies to fixed-size ONNX detectors; {det.name}: "
                                 f"{why}")
        warnings.append(f"{origin} {size[0]}x{size[1]} not applied to {det.name}: {why}")
        return det, None
    if tuple(own) == tuple(size):
        return det, None
    progress(f"det: re-targeting {det.name} from {own[0]}x{own[1]} to {size[0]}x{size[1]} ({origin})")
    r = retarget_onnx(det, size, Path(work) / f"{det.stem}_{size[0]}x{size[1]}.onnx")
    assert r.path is not None
    return r.path, {"model": list(own), "input": list(size), "from": origin, "retarget": r.to_dict(),
                    "native": det}


def record_native_size_recall(result: Any, sizes: dict[str, Any], images: Sequence[np.ndarray],
                              progress: Any = lambda m: None) -> None:
    """Informational (the gates stay at the same size): box recall at IoU 0.5 of every detector
    artifact that runs here, AT THE BOARD'S SIZE, against the FP32 reference (onnxruntime on the
    original file) AT THE MODEL'S OWN SIZE, on the same held-out photos, boxes in photo pixels.
    Written to each entry's ``fidelity.box_recall_vs_native_size`` (+ ``fidelity.native_size``)
    and, for the FP32 reference at the board's size itself, to the model's ``reference``."""
    from edge_shitu.converters.verify import gfl_recall_across_sizes, reference_backend
    from edge_shitu.formats import artifact_format
    from edge_shitu.gfl_head import GFLHead
    from edge_shitu.preprocess import DetPreprocess
    from edge_shitu.runtimes.backend import open_backend

    prepared = result.prepared
    if prepared is None or prepared.head is None:
        return
    own = tuple(sizes["model"])
    art_head = GFLHead.from_dict(prepared.head)
    ref_head = GFLHead.from_dict({**prepared.head, "input_size": list(own)})
    ops = [dict(o, target_size=list(own)) if o.get("type") == "Resize" else dict(o) for o in prepared.pre.ops]
    ref_pre = DetPreprocess(ops)
    ref = open_backend(sizes["native"], "onnx", 1)
    progress(f"det: box recall at {sizes['input'][0]}x{sizes['input'][1]} vs the FP32 reference at its own "
             f"{own[0]}x{own[1]} ({len(images)} photos)")

    def measure(backend: Any) -> dict[str, Any]:
        b = gfl_recall_across_sizes(ref, ref_pre, ref_head, backend, prepared.pre, art_head, images)
        return {"box_recall_vs_native_size": round(b.matched_frac, 4),
                "native_size": {"model_size": list(own), "size": list(sizes["input"]), "photos": len(images),
                                "ref_boxes": b.ref_boxes, "art_boxes": b.art_boxes, "matched": b.matched,
                                "iou_mean": None if b.iou_mean != b.iou_mean else round(b.iou_mean, 4)}}

    result.reference.update(measure(open_backend(prepared.reference, reference_backend(prepared.reference), 1)))
    for entry in result.entries:
        path = result.runnable.get(entry["kind"])
        backend = artifact_format(entry["kind"]).backend
        if path is None or backend not in ("tflite", "onnx"):  # Paddle Lite runs in a child process: skipped
            continue
        entry["fidelity"].update(measure(open_backend(path, backend, 1)))
