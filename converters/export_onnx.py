"""Paddle inference model -> static-shape ONNX (paddle2onnx 1.3.1, opset 13), verified.

- Shapes are made static in the ProgramDesc before export (paddle2onnx takes them from the
  feed variables; onnx2tf and mobile runtimes need static shapes), then onnxsim folds the
  shape arithmetic left in the graph.
- paddle2onnx raises the opset to 14 by itself for HardSwish; that is expected.
- paddle2onnx runs in a child process: its C++ core aborts on unsupported programs.
- A detector that ends in control flow + ``multiclass_nms3`` (PP-PicoDet) can be CUT before its
  NMS (``cut_before_nms=True``): the program is pruned to its head outputs, and ONNX nodes that
  decode them (distribution focal loss bins -> distances -> boxes around the anchor centres) are
  appended. The ONNX then outputs ``boxes`` [1, N, 4] (x1, y1, x2, y2 in input-image pixels,
  neither clipped nor divided by scale_factor) and ``scores`` [1, N, C]; the runtime clips,
  rescales and runs NMS with the parameters returned in ``details["postprocess"]``.
- Never feed a PaddleSlim quantized (QDQ) program to onnx2tf afterwards: the result is garbage.
  ONNX export of quantized programs works (onnxruntime runs the QDQ graph) but is only for ONNX
  consumers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edge_shitu.atomic import atomic_write
from edge_shitu.converters.child import run_worker
from edge_shitu.converters.export_nb import prepare_program, program_is_quantized
from edge_shitu.converters.exporter import ExportJob, kind_named
from edge_shitu.converters.verify import Feeds, Fidelity, thresholds_for, verify_in_process
from edge_shitu.detection import PicoDetHead, anchor_centers
from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import Artifact
from edge_shitu.runtimes.paddle_backend import ModelFiles, find_model_files, program_io

OPSET = 13
EXPORT_TIMEOUT_S = 600
NMS_OPS = ("multiclass_nms3", "multiclass_nms2", "multiclass_nms", "matrix_nms")


# ----------------------------------------------------------------------------- inspection
def _program(pdmodel: Path) -> Any:
    from paddle.base.proto import framework_pb2

    prog = framework_pb2.ProgramDesc()
    prog.ParseFromString(Path(pdmodel).read_bytes())
    return prog


def _attr(op: Any, name: str, default: Any = None) -> Any:
    """Value of an OpDesc attribute by its declared type (framework.proto AttrType)."""
    getters = {0: lambda a: a.i, 1: lambda a: a.f, 2: lambda a: a.s, 3: lambda a: list(a.ints),
               4: lambda a: list(a.floats), 6: lambda a: a.b, 9: lambda a: a.l, 11: lambda a: list(a.longs)}
    for a in op.attrs:
        if a.name == name:
            get = getters.get(int(a.type))
            return get(a) if get else default
    return default


def has_nms(pdmodel: str | os.PathLike[str]) -> bool:
    return any(op.type in NMS_OPS for b in _program(Path(pdmodel)).blocks for op in b.ops)


def find_picodet_head(pdmodel: str | os.PathLike[str]) -> PicoDetHead:
    """Locate the per-level score/distribution tensors a PicoDet program feeds into its
    decode loop, and the decode constants (strides, bins, cell offset) and NMS attributes.

    Raises EdgeShituError when the program does not look like PP-PicoDet (then it cannot be
    cut automatically).
    """
    prog = _program(Path(pdmodel))
    b0 = prog.blocks[0]
    vars0 = {v.name: v for v in b0.vars}

    def dims(n: str) -> list[int]:
        return list(vars0[n].type.lod_tensor.tensor.dims) if n in vars0 else []

    producer: dict[str, Any] = {}
    for op in b0.ops:
        for o in op.outputs:
            for a in o.arguments:
                producer.setdefault(a, op)  # the while loop re-lists its inputs as outputs
    nms_op = next((op for b in prog.blocks for op in b.ops if op.type in NMS_OPS), None)
    if nms_op is None:
        raise EdgeShituError(f"{pdmodel} has no NMS op: there is nothing to cut")
    feeds, _ = program_io(pdmodel)
    image = next((s.name for s in feeds if len(s.shape) == 4), None)
    if image is None:
        raise EdgeShituError(f"{pdmodel}: no 4-D image input found")
    scores, dists = [], []
    for name, v in vars0.items():
        d = dims(name)
        op = producer.get(name)
        if op is None or len(d) != 4 or v.persistable:
            continue
        if op.type == "sigmoid":
            src = producer.get(next(iter(op.inputs[0].arguments)))
            if src is not None and src.type == "transpose2":
                scores.append(name)
        elif op.type == "transpose2" and _attr(op, "axis") == [0, 2, 3, 1]:
            consumers = [o for o in b0.ops if name in [a for i in o.inputs for a in i.arguments]]
            if consumers and all(c.type in ("while", "assign") for c in consumers) and d[3] % 4 == 0 and d[3] > 4:
                dists.append(name)
    scores.sort(key=lambda n: -dims(n)[1])
    dists.sort(key=lambda n: -dims(n)[1])
    if not scores or len(scores) != len(dists):
        raise EdgeShituError(
            f"{pdmodel} does not look like PP-PicoDet ({len(scores)} score maps, {len(dists)} box "
            "maps): cut it by hand or export it without cut_before_nms")
    img_hw = dims(image)[2:]
    grids = [(dims(s)[1], dims(s)[2]) for s in scores]
    strides = [round(img_hw[0] / g[0]) for g in grids]
    reg_max = dims(dists[0])[3] // 4 - 1
    num_classes = dims(scores[0])[3]
    # cell offset: the float fill_constant added to the grid indices inside the decode loop
    cell_offset = 0.0
    loop = next((op for op in b0.ops if op.type == "while"), None)
    if loop is not None:
        for op in b0.ops:
            # float32/float64 constant (the loop counter is int64)
            if op.type == "fill_constant" and int(_attr(op, "dtype", 3)) in (5, 6):
                out = op.outputs[0].arguments[0]
                if out in [a for i in loop.inputs for a in i.arguments]:
                    cell_offset = float(_attr(op, "value", 0.0))
                    break
    nms_attrs = {k: _attr(nms_op, k) for k in ("score_threshold", "nms_threshold", "nms_top_k",
                                                "keep_top_k", "background_label", "normalized")}
    return PicoDetHead(image=image, scores=scores, dists=dists, strides=strides, grids=grids,
                       num_classes=num_classes, reg_max=reg_max, cell_offset=cell_offset,
                       nms={k: (float(v) if isinstance(v, float) else v) for k, v in nms_attrs.items()})


# ----------------------------------------------------------------------------- workers
def _worker(job: dict[str, Any]) -> None:
    """Child process: paddle2onnx export, or pruning a program to new fetch targets."""
    if job["op"] == "export":
        import paddle2onnx

        paddle2onnx.export(job["model"], job["params"], job["out"], job["opset"], verbose=False,
                           enable_onnx_checker=True, auto_upgrade_opset=True)
        return
    if job["op"] == "prune":
        import paddle

        paddle.enable_static()
        exe = paddle.static.Executor(paddle.CPUPlace())
        model = Path(job["model"])
        prog, _feeds, _fetch = paddle.static.load_inference_model(
            str(model.parent), exe, model_filename=model.name, params_filename=Path(job["params"]).name)
        block = prog.global_block()
        feed_vars = [block.var(n) for n in job["feeds"]]
        fetch_vars = [block.var(n) for n in job["fetches"]]
        paddle.static.save_inference_model(str(Path(job["out"]) / "inference"), feed_vars, fetch_vars,
                                           exe, program=prog)
        return
    raise ValueError(job["op"])


def _child(job: dict[str, Any], stage: str) -> None:
    # paddle2onnx 1.x reads the legacy ProgramDesc only
    env = dict(os.environ, FLAGS_enable_pir_api="0")
    run_worker("edge_shitu.converters.export_onnx", job, stage=stage, timeout=EXPORT_TIMEOUT_S, env=env)


def _weights_and_out(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> tuple[ModelFiles, Path]:
    """The model's files (weights required) and the created output folder."""
    files = find_model_files(model_dir, need_params=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return files, out


def prune_program(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  feeds: Sequence[str], fetches: Sequence[str]) -> Path:
    """Save a copy of a program keeping only what ``fetches`` need (paddle prunes the rest)."""
    files, out = _weights_and_out(model_dir, out_dir)
    _child({"op": "prune", "model": str(files.model_path), "params": str(files.params_path), "out": str(out),
            "feeds": list(feeds), "fetches": list(fetches)}, f"pruning {files.model_path}")
    return out


def cut_program(program: bytes, feeds: Sequence[str], fetches: Sequence[str]) -> bytes:
    """Cut a ProgramDesc after the ops that first produce ``fetches``; feed only ``feeds``.

    Paddle's own pruning (``save_inference_model`` with new fetch targets) cannot do this for
    PicoDet: its decode ``while`` loop re-lists the head tensors as its outputs, so the loop and
    the NMS are kept. Editing the protobuf keeps every persistable variable (the ``.pdiparams``
    stays valid as is) and drops the sub-blocks.
    """
    from paddle.base.proto import framework_pb2

    prog = framework_pb2.ProgramDesc()
    prog.ParseFromString(program)
    b0 = prog.blocks[0]
    first_producer: dict[str, int] = {}
    for i, op in enumerate(b0.ops):
        for o in op.outputs:
            for a in o.arguments:
                first_producer.setdefault(a, i)
    missing = [f for f in fetches if f not in first_producer]
    if missing:
        raise EdgeShituError(f"cannot cut the program at {missing}: no op produces them")
    last = max(first_producer[f] for f in fetches)
    kept = []
    for i, op in enumerate(b0.ops):
        if i > last or op.type == "fetch":
            continue
        if op.type == "feed" and op.outputs[0].arguments[0] not in feeds:
            continue
        if op.type in ("while", "conditional_block"):
            raise EdgeShituError(f"control flow ({op.type}) before the cut point {fetches}: cut later")
        kept.append(op)
    used = {a for op in kept for i in op.inputs for a in i.arguments}
    dropped_feeds = set(n for n in first_producer if n not in feeds) & {
        op.outputs[0].arguments[0] for op in b0.ops if op.type == "feed"}
    if used & dropped_feeds:
        raise EdgeShituError(f"inputs {sorted(used & dropped_feeds)} are still needed before the cut point")
    template_fetch = next(op for op in b0.ops if op.type == "fetch")
    new_ops = []
    col = 0
    for op in kept:
        c = framework_pb2.OpDesc()
        c.CopyFrom(op)
        if c.type == "feed":
            for a in c.attrs:
                if a.name == "col":
                    a.i = col
            col += 1
        new_ops.append(c)
    for j, name in enumerate(fetches):
        f = framework_pb2.OpDesc()
        f.CopyFrom(template_fetch)
        del f.inputs[:]
        x = f.inputs.add()
        x.parameter = "X"
        x.arguments.append(name)
        for a in f.attrs:
            if a.name == "col":
                a.i = j
        new_ops.append(f)
    del b0.ops[:]
    b0.ops.extend(new_ops)
    while len(prog.blocks) > 1:
        del prog.blocks[-1]
    return prog.SerializeToString()


def write_cut_model(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    feeds: Sequence[str], fetches: Sequence[str]) -> Path:
    """:func:`cut_program` on a model directory; the weights file is copied unchanged."""
    files, out = _weights_and_out(model_dir, out_dir)
    assert files.params_path is not None
    (out / "inference.pdmodel").write_bytes(cut_program(files.model_path.read_bytes(), feeds, fetches))
    (out / "inference.pdiparams").write_bytes(files.params_path.read_bytes())
    return out


# ----------------------------------------------------------------------------- decode
def append_picodet_decode(model: Any, head: PicoDetHead) -> Any:
    """Append ONNX nodes that turn the head maps (graph outputs, head order) into ``boxes``
    [1,N,4] and ``scores`` [1,N,C]; the old outputs are removed.

    Plain Reshape/Softmax/MatMul/Mul/Sub/Add/Concat: every mobile converter and runtime has them.
    """
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    outs = [o.name for o in g.output]
    n = len(head.scores)
    if len(outs) != 2 * n:
        raise EdgeShituError(f"expected {2 * n} head outputs in the cut ONNX graph, found {len(outs)}")
    bins = head.reg_max + 1
    nodes, inits = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    proj = const("dfl_project", np.arange(bins, dtype=np.float32).reshape(bins, 1))
    box_parts, score_parts = [], []
    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> None:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))

    def i64(name: str, *values: int) -> str:
        return const(name, np.array(values, np.int64))

    for lvl, centre in enumerate(anchor_centers(head)):
        hw = centre.shape[0]
        p = f"lvl{lvl}"
        node("Reshape", [outs[lvl], i64(f"{p}_sshape", 1, hw, head.num_classes)], f"{p}_scores")
        node("Reshape", [outs[n + lvl], i64(f"{p}_dshape", 1, hw, 4, bins)], f"{p}_d4")
        node("Softmax", [f"{p}_d4"], f"{p}_prob", axis=-1)
        node("MatMul", [f"{p}_prob", proj], f"{p}_dist1")
        node("Reshape", [f"{p}_dist1", i64(f"{p}_bshape", 1, hw, 4)], f"{p}_dist")
        stride = const(f"{p}_stride", np.array(head.strides[lvl], np.float32))
        node("Mul", [f"{p}_dist", stride], f"{p}_ltrb")
        ax, s0, s2, s4 = i64(f"{p}_ax", 2), i64(f"{p}_s0", 0), i64(f"{p}_s2", 2), i64(f"{p}_s4", 4)
        node("Slice", [f"{p}_ltrb", s0, s2, ax], f"{p}_lt")
        node("Slice", [f"{p}_ltrb", s2, s4, ax], f"{p}_rb")
        c = const(f"{p}_centre", centre.reshape(1, hw, 2))
        node("Sub", [c, f"{p}_lt"], f"{p}_x1y1")
        node("Add", [c, f"{p}_rb"], f"{p}_x2y2")
        node("Concat", [f"{p}_x1y1", f"{p}_x2y2"], f"{p}_boxes", axis=2)
        box_parts.append(f"{p}_boxes")
        score_parts.append(f"{p}_scores")
    nodes.append(helper.make_node("Concat", box_parts, ["boxes"], axis=1))
    nodes.append(helper.make_node("Concat", score_parts, ["scores"], axis=1))
    total = sum(h * w for h, w in head.grids)
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, [1, total, 4]),
        helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, total, head.num_classes]),
    ])
    return model


# ----------------------------------------------------------------------------- export
def _static_shapes(pdmodel: Path, given: Optional[Mapping[str, Sequence[int]]]) -> dict[str, list[int]]:
    specs, _ = program_io(pdmodel)
    shapes: dict[str, list[int]] = {}
    for s in specs:
        shape = list(given[s.name]) if given and s.name in given else list(s.shape)
        if shape and shape[0] == -1:
            shape[0] = 1
        if any(d < 1 for d in shape):
            raise EdgeShituError(
                f"input {s.name} has open dimensions {list(s.shape)}: pass input_shapes="
                f"{{'{s.name}': [1, ...]}} (ONNX/TFLite need static shapes)")
        shapes[s.name] = shape
    return shapes


def _simplify(path: Path) -> None:
    import onnx
    from onnxsim import simplify

    model = onnx.load(str(path))
    simplified, ok = simplify(model)
    if not ok:
        raise EdgeShituError(f"onnxsim could not validate the simplified graph of {path.name}")
    onnx.save(simplified, str(path))


def to_onnx(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    cut_before_nms: bool = False,
    opset: int = OPSET,
    verify_feeds: Optional[Sequence[Feeds]] = None,
    reference: Optional[str | os.PathLike[str]] = None,
    thresholds: Optional[Mapping[str, float]] = None,
    simplify: bool = True,
) -> Artifact:
    """Export ``model_dir`` to ``out_path`` (.onnx) with static shapes; verify; write atomically.

    With ``cut_before_nms`` a PicoDet detector is cut before its NMS (see the module doc);
    ``details`` then says so and carries the decode/NMS parameters. With ``verify_feeds``
    (NCHW, named after the Paddle inputs) the ONNX is run with onnxruntime and compared with
    ``reference`` (default ``model_dir``): raw outputs for ordinary models; for a cut detector the
    decoded boxes/scores against the decoded Paddle head, plus the boxes after NMS against the full
    Paddle program (matched at IoU 0.5).
    """
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise EdgeShituError(f"{out_path} must end in .onnx")
    model = find_model_files(model_dir, need_params=False).model_path
    quantized = program_is_quantized(model)
    details: dict[str, Any] = {"opset_requested": opset, "quantized_program": quantized, "cut_before_nms": False}
    head: Optional[PicoDetHead] = None
    with tempfile.TemporaryDirectory(prefix="es-onnx-") as tmp:
        tmpd = Path(tmp)
        src_dir: Path = Path(model_dir)
        if cut_before_nms:
            head = find_picodet_head(model)
            src_dir = write_cut_model(model_dir, tmpd / "cut", [head.image], head.scores + head.dists)
            details.update(cut_before_nms=True, head=head.to_dict(), outputs={
                "boxes": "[1, N, 4] x1,y1,x2,y2 in network-input pixels; clip to im_shape, divide by scale_factor",
                "scores": f"[1, N, {head.num_classes}] per-class sigmoid scores",
            }, postprocess={"nms": head.nms, "clip_to": "im_shape (h, w)", "divide_by": "scale_factor (sy, sx)"})
        elif has_nms(model):
            raise EdgeShituError(
                f"{model_dir} ends in NMS / control flow that ONNX export cannot carry: use cut_before_nms=True")
        shapes = _static_shapes(find_model_files(src_dir, need_params=False).model_path, input_shapes)
        pm, pp, _ = prepare_program(src_dir, tmpd / "src", input_shapes=shapes)
        raw = tmpd / "raw.onnx"
        _child({"op": "export", "model": str(pm), "params": str(pp), "out": str(raw), "opset": opset},
               f"paddle2onnx on {model_dir}")
        if simplify:
            _simplify(raw)
        import onnx

        m = onnx.load(str(raw))
        if head is not None:
            m = append_picodet_decode(m, head)
            onnx.checker.check_model(m)
        details["opset"] = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=opset)
        details["input_shapes"] = shapes
        details["outputs_names"] = [o.name for o in m.graph.output]
        final_tmp = tmpd / "model.onnx"
        onnx.save(m, str(final_tmp))

        fidelity: Optional[Fidelity] = None
        if verify_feeds is not None:
            fidelity = verify_in_process(final_tmp, "onnx", reference or model_dir, verify_feeds,
                                         stage="onnx-" + ("int8-qdq" if quantized else "fp32"),
                                         head=head, cut_dir=src_dir if head else None,
                                         thresholds=thresholds or thresholds_for("int8" if quantized else "fp32"))
            fidelity.artifact = out_path.name
        with atomic_write(out_path) as f:
            f.write(final_tmp.read_bytes())
    return Artifact(kind_named("onnx", "int8" if quantized else "fp32"), out_path, bytes=out_path.stat().st_size,
                    fidelity=fidelity, details=details)


def export(job: ExportJob) -> list[Artifact]:
    """The exporter contract (``converters/exporter.py``) for ``onnx:*`` kinds (intermediates:
    TFLite is converted from ONNX). Options: ``cut_before_nms`` (a PicoDet detector),
    ``input_shapes``; the precision follows the source program (quantized or not)."""
    out = []
    for kind in job.kinds:
        job.progress(f"{job.model}: ONNX export")
        art = to_onnx(job.source_for(kind), job.dest(kind), input_shapes=job.options.get("input_shapes"),
                      cut_before_nms=bool(job.options.get("cut_before_nms")), verify_feeds=job.verify_feeds,
                      reference=job.reference, thresholds=job.thresholds)
        if art.kind != kind:
            raise EdgeShituError(f"{kind} was asked for but {job.source_for(kind)} exports as {art.kind}")
        art.model = job.model
        out.append(art)
    return out


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_worker)
