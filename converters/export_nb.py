"""Paddle inference model -> Paddle Lite ``.nb`` (arm or x86, fp32 or int8), checked before it lands.

Sharp edges handled here (measured on the pinned toolchain, docs/toolchain.md):

- ``opt`` SEGFAULTS on programs saved by paddle >= 2.6 because ``flatten_contiguous_range`` /
  ``transpose2`` (and friends) lost their ``XShape`` output. :func:`add_missing_xshape` adds the
  output and its variable by editing the ProgramDesc protobuf directly (re-saving through paddle
  drops it again). opt also runs in a child process, so a crash becomes an error, not a dead
  converter.
- int8 (a PaddleSlim quantized program) is built through ``CxxConfig`` with
  ``lite_conv_activation_fuse_pass`` discarded, then ``save_optimized_model``: that pass fuses
  int8 conv + hardswish wrongly on x86. The arm file is built the same way so that its x86
  twin exercises the same graph.
- an arm ``.nb`` cannot be executed on x86 (it loads and returns garbage). It is validated
  STRUCTURALLY (:func:`check_nb_structure`: the whole file parses, meta/opt version, every
  kernel is an arm or host kernel, int8 kernels present iff int8, every persistable variable
  has data of the right size, plausible size against the source weights) and against its x86
  TWIN built from the same program: same parameter names, byte-identical parameter data. For
  fp32 the twin is run and compared with the FP32 Paddle reference.
- Lite's x86 int8 kernels are NOT a faithful stand-in for the arm ones: on the real-weight
  ch_ppocr_mobile_v2_cls they return features at cosine 0.2-0.5 whatever the route (Opt or
  CxxConfig, fuse pass discarded or not, per-channel or per-tensor weights, BN pre-folded,
  ONNX-format quant, static shapes). So an x86 int8 ``.nb`` is gated on its own execution
  (and rejected when wrong), while an arm int8 ``.nb`` is gated on the quantized Paddle program
  it was built from (Paddle Inference) plus the structure/twin checks; the x86 twin's figure is
  recorded in ``details["x86_twin_fidelity"]``.
- the real PP-ShiTu mainbody detector makes its anchor offset an FP64 ``fill_constant``: Lite
  2.13 has no such kernel and ABORTS the process at the first run. :func:`demote_fp64_constants`
  makes it fp32 (0.5 is exact). Because Lite aborts instead of raising, ``.nb`` files are run
  for verification in a child process (``converters/verify.py``).
- a detector ending in NMS is verified by its boxes (matched at IoU 0.5) and, since synthetic or
  tied scores make NMS outputs unstable, by its head tensors through an x86 ``.nb`` of the
  program cut before the decode loop.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edge_shitu.atomic import atomic_write
from edge_shitu.converters.child import run_worker
from edge_shitu.converters.exporter import ExportJob, kind_named
from edge_shitu.converters.verify import Feeds, Fidelity, verify_nb
from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import CPU_FAMILIES, Artifact, artifact_format
from edge_shitu.runtimes.nb_format import NbModel, read_nb
from edge_shitu.runtimes.paddle_backend import find_model_files

# Ops whose second output is the "XShape" bookkeeping tensor Paddle Lite's opt still expects.
XSHAPE_OPS = frozenset({"flatten_contiguous_range", "transpose2", "reshape2", "squeeze2",
                        "unsqueeze2", "flatten2"})
TARGETS = CPU_FAMILIES  # the CPU families Paddle Lite builds kernels for
_FUSE_PASS = "lite_conv_activation_fuse_pass"
OPT_TIMEOUT_S = 900


# ----------------------------------------------------------------------------- ProgramDesc
def _pb():
    from paddle.base.proto import framework_pb2

    return framework_pb2


def _find_var(prog: Any, block_idx: int, name: str) -> Any:
    while block_idx >= 0:
        block = prog.blocks[block_idx]
        for v in block.vars:
            if v.name == name:
                return v
        block_idx = block.parent_idx
    return None


def add_missing_xshape(program: bytes) -> tuple[bytes, int]:
    """Give every reshape-like op without an ``XShape`` output one; return (bytes, ops fixed).

    The new variable mimics what paddle < 2.6 wrote: a non-persistable LOD_TENSOR of the input's
    dtype with dims ``[0] + input dims``. Programs that already have XShape come back unchanged.
    """
    fpb = _pb()
    prog = fpb.ProgramDesc()
    prog.ParseFromString(program)
    fixed = 0
    for bi, block in enumerate(prog.blocks):
        names = {v.name for v in block.vars}
        for op in block.ops:
            if op.type not in XSHAPE_OPS:
                continue
            slot = next((o for o in op.outputs if o.parameter == "XShape"), None)
            if slot is not None and len(slot.arguments):
                continue
            x = next((list(i.arguments) for i in op.inputs if i.parameter == "X"), [])
            out = next((list(o.arguments) for o in op.outputs if o.parameter == "Out"), [])
            if not x or not out:
                continue
            name = f"{out[0]}.xshape"
            k = 0
            while name in names:
                k += 1
                name = f"{out[0]}.xshape{k}"
            names.add(name)
            src = _find_var(prog, bi, x[0])
            var = block.vars.add()
            var.name = name
            var.persistable = False
            var.type.type = fpb.VarType.LOD_TENSOR
            tensor = var.type.lod_tensor.tensor
            if src is not None and src.type.HasField("lod_tensor"):
                tensor.data_type = src.type.lod_tensor.tensor.data_type
                tensor.dims.extend([0, *src.type.lod_tensor.tensor.dims])
            else:
                tensor.data_type = fpb.VarType.FP32
                tensor.dims.extend([0])
            var.type.lod_tensor.lod_level = 0
            if slot is None:
                slot = op.outputs.add()
                slot.parameter = "XShape"
            slot.arguments.append(name)
            fixed += 1
    return (prog.SerializeToString() if fixed else program), fixed


def demote_fp64_constants(program: bytes) -> tuple[bytes, int]:
    """Turn float64 ``fill_constant`` ops (and the casts reading them) into float32.

    The real PP-ShiTu mainbody detector builds its anchor-centre offset (0.5) as an FP64
    constant; Paddle Lite 2.13 has no fp64 fill_constant kernel and ABORTS the process at the
    first run ("not supported dtype 6"), on x86 and on the device alike. 0.5 is exact in fp32.
    """
    fpb = _pb()
    prog = fpb.ProgramDesc()
    prog.ParseFromString(program)
    fp64, fp32 = fpb.VarType.FP64, fpb.VarType.FP32
    demoted: set[str] = set()
    for bi, block in enumerate(prog.blocks):
        for op in block.ops:
            if op.type != "fill_constant":
                continue
            attr = next((a for a in op.attrs if a.name == "dtype"), None)
            if attr is None or attr.i != fp64:
                continue
            attr.i = fp32
            for o in op.outputs:
                for name in o.arguments:
                    var = _find_var(prog, bi, name)
                    if var is not None and var.type.lod_tensor.tensor.data_type == fp64:
                        var.type.lod_tensor.tensor.data_type = fp32
                    demoted.add(name)
    if not demoted:
        return program, 0
    for block in prog.blocks:
        for op in block.ops:
            if op.type == "cast" and any(a in demoted for i in op.inputs for a in i.arguments):
                for a in op.attrs:
                    if a.name == "in_dtype" and a.i == fp64:
                        a.i = fp32
    return prog.SerializeToString(), len(demoted)


def set_feed_shapes(program: bytes, shapes: Mapping[str, Sequence[int]]) -> bytes:
    """Declare static input shapes in the ProgramDesc (paddle2onnx takes shapes from here)."""
    fpb = _pb()
    prog = fpb.ProgramDesc()
    prog.ParseFromString(program)
    found = set()
    for v in prog.blocks[0].vars:
        if v.name in shapes:
            dims = v.type.lod_tensor.tensor.dims
            want = [int(d) for d in shapes[v.name]]
            if len(dims) and len(dims) != len(want):
                raise EdgeShituError(f"input {v.name} has rank {len(dims)}, a shape of rank {len(want)} was given")
            del dims[:]
            dims.extend(want)
            found.add(v.name)
    missing = set(shapes) - found
    if missing:
        raise EdgeShituError(f"the model has no input named {sorted(missing)}: check the input names")
    return prog.SerializeToString()


def prepare_program(
    model_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    demote_fp64: bool = False,
) -> tuple[Path, Path, int]:
    """Copy a model into ``work_dir`` as ``inference.pdmodel/.pdiparams`` with XShape fixed
    (and, with ``demote_fp64``, fp64 constants made fp32 for Paddle Lite).

    Returns (pdmodel, pdiparams, number of ops fixed). The user's files are never modified.
    """
    files = find_model_files(model_dir, need_params=True)
    model, params = files.model_path, files.params_path
    assert params is not None
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data, fixed = add_missing_xshape(model.read_bytes())
    if demote_fp64:
        data, n64 = demote_fp64_constants(data)
        fixed += n64
    if input_shapes:
        data = set_feed_shapes(data, input_shapes)
    out_model = work / "inference.pdmodel"
    out_params = work / "inference.pdiparams"
    out_model.write_bytes(data)
    shutil.copyfile(params, out_params)
    return out_model, out_params, fixed


def program_is_quantized(pdmodel: str | os.PathLike[str]) -> bool:
    """True when the program carries PaddleSlim fake-quant or quantize_linear ops."""
    fpb = _pb()
    prog = fpb.ProgramDesc()
    prog.ParseFromString(Path(pdmodel).read_bytes())
    return any(op.type.startswith(("fake_quantize", "fake_channel_wise", "quantize_linear",
                                   "dequantize_linear", "fake_dequantize"))
               for b in prog.blocks for op in b.ops)


def source_param_bytes(pdiparams: str | os.PathLike[str]) -> int:
    return Path(pdiparams).stat().st_size


# ----------------------------------------------------------------------------- opt worker
def _worker(job: dict[str, Any]) -> None:
    """Runs in a child process: opt can segfault or abort, which must not kill the converter."""
    from paddlelite import lite

    if not job["int8"]:
        opt = lite.Opt()
        opt.set_model_file(job["model"])
        opt.set_param_file(job["params"])
        opt.set_valid_places(job["target"])
        opt.set_model_type("naive_buffer")
        opt.set_optimize_out(job["out"])
        opt.run()
        return
    target = lite.TargetType.ARM if job["target"] == "arm" else lite.TargetType.X86
    cfg = lite.CxxConfig()
    cfg.set_model_file(job["model"])
    cfg.set_param_file(job["params"])
    cfg.set_valid_places([
        lite.Place(target, lite.PrecisionType.INT8),
        lite.Place(target, lite.PrecisionType.FP32),
        lite.Place(lite.TargetType.Host, lite.PrecisionType.FP32),
    ])
    for p in job["discard"]:
        cfg.add_discarded_pass(p)
    predictor = lite.create_paddle_predictor(cfg)
    predictor.save_optimized_model(job["out"])


def _run_opt(model: Path, params: Path, out_prefix: Path, target: str, int8: bool) -> Path:
    job = {"model": str(model), "params": str(params), "out": str(out_prefix), "target": target,
           "int8": int8, "discard": [_FUSE_PASS] if int8 else []}
    stage = f"Paddle Lite opt ({target}{' int8' if int8 else ''}) on {model}"
    run_worker("edge_shitu.converters.export_nb", job, stage=stage, timeout=OPT_TIMEOUT_S)
    nb = out_prefix.with_name(out_prefix.name + ".nb")
    if not nb.exists():
        raise EdgeShituError(f"{stage} failed: it wrote no {nb.name}")
    return nb


# ----------------------------------------------------------------------------- structure
@dataclass
class NbStructure:
    """The structural facts checked on a ``.nb`` (serialisable; stored with the artifact)."""

    path: str
    ok: bool
    meta_version: int
    opt_version: str
    target: str
    file_bytes: int
    param_bytes: int
    params: int
    ops: int
    op_counts: dict[str, int]
    int8_kernels: int
    inputs: list[str]
    outputs: list[str]
    size_ratio: Optional[float] = None  # param bytes / source .pdiparams bytes
    twin: Optional[dict[str, Any]] = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_twins(a: NbModel, b: NbModel) -> dict[str, Any]:
    """Parameters of two ``.nb`` built from the same program: names and bytes must agree.

    opt folds batch norm etc. identically for arm and x86, so an arm file whose weights equal
    those of its (executed and verified) x86 twin carries the same numbers.
    """
    names_a, names_b = set(a.params), set(b.params)
    common = sorted(names_a & names_b)
    differ = [n for n in common if a.params[n].nbytes != b.params[n].nbytes
              or not np.array_equal(a.read_param(n), b.read_param(n))]
    conv = ("conv2d", "depthwise_conv2d")
    return {
        "params_a": len(names_a), "params_b": len(names_b), "common": len(common),
        "only_a": sorted(names_a - names_b)[:10], "only_b": sorted(names_b - names_a)[:10],
        "differ": differ[:10], "n_differ": len(differ),
        "convs_a": sum(a.op_counts.get(t, 0) for t in conv),
        "convs_b": sum(b.op_counts.get(t, 0) for t in conv),
        "int8_a": len(a.int8_kernels()), "int8_b": len(b.int8_kernels()),
        "inputs_equal": a.inputs == b.inputs, "outputs_equal": a.outputs == b.outputs,
    }


def check_nb_structure(
    path: str | os.PathLike[str],
    *,
    target: str,
    int8: Optional[bool] = None,
    source_params: Optional[str | os.PathLike[str]] = None,
    expect_inputs: Optional[Sequence[str]] = None,
    twin: Optional[str | os.PathLike[str]] = None,
    raise_on_error: bool = True,
) -> NbStructure:
    """Validate a ``.nb`` without executing it; raise (or report) every problem found.

    ``source_params`` (the ``.pdiparams`` it was built from) enables the size check: fp32 files
    hold 0.4-1.1x the source bytes (batch norm folded), int8 files at most 0.6x. ``twin`` is a
    ``.nb`` for the other target built from the same program.
    """
    if target not in TARGETS:
        raise EdgeShituError(f"unknown Paddle Lite target {target!r}: use arm or x86")
    m = read_nb(path)  # raises CorruptFileError on anything unparsable
    problems: list[str] = []
    built = m.compute_target
    if built != target:
        problems.append(f"kernels are for {built or 'no device'}, expected {target}")
    odd = [op.type for op in m.ops if op.type not in ("feed", "fetch") and not op.kernel]
    if odd:
        problems.append(f"{len(odd)} ops without a selected kernel, e.g. {odd[:3]}")
    if not m.inputs or not m.outputs:
        problems.append("no feed or no fetch op")
    if expect_inputs is not None and list(expect_inputs) != m.inputs:
        problems.append(f"inputs {m.inputs} differ from the source program's {list(expect_inputs)}")
    n_int8 = len(m.int8_kernels())
    if int8 is True and n_int8 == 0:
        problems.append("int8 was requested but no int8 kernel was selected (is the program quantized?)")
    if int8 is False and n_int8:
        problems.append(f"{n_int8} int8 kernels in a float model")
    ratio = None
    if source_params is not None:
        src = source_param_bytes(source_params)
        ratio = m.param_bytes / src if src else None
        if ratio is not None:
            lo, hi = (0.05, 0.6) if n_int8 else (0.4, 1.1)
            if not lo <= ratio <= hi:
                problems.append(f"weights are {ratio:.2f}x the source .pdiparams (expected {lo}-{hi}x)")
    twin_info = None
    if twin is not None:
        t = read_nb(twin)
        twin_info = compare_twins(m, t)
        if twin_info["n_differ"] or twin_info["only_a"] or twin_info["only_b"]:
            problems.append(
                f"parameters differ from the twin {Path(twin).name}: {twin_info['n_differ']} differ, "
                f"only here {twin_info['only_a'][:3]}, only in twin {twin_info['only_b'][:3]}")
        if twin_info["int8_a"] != twin_info["int8_b"] or twin_info["convs_a"] != twin_info["convs_b"]:
            problems.append("conv / int8 kernel counts differ from the twin")
        if not (twin_info["inputs_equal"] and twin_info["outputs_equal"]):
            problems.append("inputs/outputs differ from the twin")
    rep = NbStructure(
        path=str(path), ok=not problems, meta_version=m.meta_version, opt_version=m.opt_version,
        target=built, file_bytes=m.file_bytes, param_bytes=m.param_bytes, params=len(m.params),
        ops=len(m.ops), op_counts=m.op_counts, int8_kernels=n_int8, inputs=m.inputs,
        outputs=m.outputs, size_ratio=ratio, twin=twin_info, problems=problems,
    )
    if problems and raise_on_error:
        raise EdgeShituError(f"structural check of {Path(path).name} failed: {'; '.join(problems)}")
    return rep


# ----------------------------------------------------------------------------- export
def to_nb(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    target: str = "arm",
    int8: bool = False,
    *,
    verify_feeds: Optional[Sequence[Feeds]] = None,
    reference: Optional[str | os.PathLike[str]] = None,
    thresholds: Optional[Mapping[str, float]] = None,
    twin_out: Optional[str | os.PathLike[str]] = None,
) -> Artifact:
    """Convert a Paddle inference model to ``out_path`` (a ``.nb``), check it, then write it.

    ``int8=True`` expects a PaddleSlim quantized program (conv2d/depthwise_conv2d only).
    With ``verify_feeds`` the file (x86) or its x86 twin (arm) is run on those NCHW inputs and
    compared with ``reference`` (the FP32 Paddle model dir; defaults to ``model_dir``) under
    ``thresholds`` (defaults by precision). ``twin_out`` keeps the x86 twin of an arm file.
    Nothing is written at ``out_path`` unless every check passed.
    """
    if target not in TARGETS:
        raise EdgeShituError(f"unknown Paddle Lite target {target!r}: use arm or x86")
    out_path = Path(out_path)
    if out_path.suffix != ".nb":
        raise EdgeShituError(f"{out_path} must end in .nb (Paddle Lite appends it otherwise)")
    precision = "int8" if int8 else "fp32"
    with tempfile.TemporaryDirectory(prefix="es-nb-") as tmp:
        tmpd = Path(tmp)
        model, params, fixed = prepare_program(model_dir, tmpd / "src", demote_fp64=True)
        quantized = program_is_quantized(model)
        if int8 and not quantized:
            raise EdgeShituError(
                f"{model_dir} is not a quantized program: quantize it first (converters/quantize.py) "
                "or export with int8=False")
        if quantized and not int8:
            raise EdgeShituError(f"{model_dir} is a quantized program: export it with int8=True")
        src_inputs = _feed_names(model)
        nb = _run_opt(model, params, tmpd / "model", target, int8)
        twin_path: Optional[Path] = None
        if target == "arm":
            twin_path = _run_opt(model, params, tmpd / "twin_x86", "x86", int8)
            check_nb_structure(twin_path, target="x86", int8=int8, source_params=params,
                               expect_inputs=src_inputs)
        structure = check_nb_structure(nb, target=target, int8=int8, source_params=params,
                                       expect_inputs=src_inputs, twin=twin_path)
        fidelity: Optional[Fidelity] = None
        extra: dict[str, Any] = {}
        if verify_feeds is not None:
            def build_x86(src: Path, name: str) -> Path:
                return _run_opt(src / "inference.pdmodel", src / "inference.pdiparams", tmpd / name, "x86", int8)

            fidelity, extra = verify_nb(nb, twin_path, model, Path(reference or model_dir), verify_feeds, cpu=target,
                                        int8=int8, thresholds=thresholds, work=tmpd, build_x86=build_x86)
            if twin_path is None or not int8:
                fidelity.artifact = Path(out_path if twin_path is None else (twin_out or twin_path)).name
        with atomic_write(out_path) as f, open(nb, "rb") as src:
            shutil.copyfileobj(src, f)
        if twin_path is not None and twin_out is not None:
            with atomic_write(twin_out) as f, open(twin_path, "rb") as src:
                shutil.copyfileobj(src, f)
    structure.path = str(out_path)
    return Artifact(
        kind_named("nb", precision, target), out_path, bytes=out_path.stat().st_size, fidelity=fidelity,
        details={"structure": structure.to_dict(), "program_fixes": fixed,
                 "verified_by": _verified_by(target, int8, fidelity), **extra,
                 "route": "CxxConfig, discarded " + _FUSE_PASS if int8 else "opt"},
    )


def _verified_by(target: str, int8: bool, fidelity: Optional[Fidelity]) -> str:
    if fidelity is None:
        return "structure only"
    if target == "x86":
        return "execution (x86)"
    if int8:
        return "structure + twin weights + quantized Paddle program (x86 int8 twin recorded, not gating)"
    return "structure + executed x86 twin with identical weights"


def _feed_names(pdmodel: Path) -> list[str]:
    from edge_shitu.runtimes.paddle_backend import program_io

    specs, _ = program_io(pdmodel)
    return [s.name for s in specs]


def export(job: ExportJob) -> list[Artifact]:
    """The exporter contract (``converters/exporter.py``) for ``nb:*`` kinds: one ``.nb`` per kind
    from the kind's source (the Paddle program, or PaddleSlim's quantized program for int8).
    An arm file's x86 twin is kept in ``job.work_dir`` as ``<file stem>_x86twin.nb``."""
    out = []
    for kind in job.kinds:
        fmt = artifact_format(kind)
        job.progress(f"{job.model}: Paddle Lite .nb {fmt.cpu} {fmt.precision}")
        dest = job.dest(kind)
        twin = (Path(job.work_dir) / f"{dest.stem}_x86twin.nb"
                if fmt.cpu == "arm" and job.work_dir is not None else None)
        try:
            art = to_nb(job.source_for(kind), dest, target=fmt.cpu or "", int8=fmt.precision == "int8",
                        verify_feeds=job.verify_feeds, reference=job.reference,
                        thresholds=job.gate_for(fmt.precision), twin_out=twin)
        except EdgeShituError as e:
            if not _mixed_applies(job, fmt.precision, e):
                raise
            art = _mixed_int8(job, kind, dest, twin, e)
        art.model = job.model
        out.append(art)
    return out


def _mixed_applies(job: ExportJob, precision: str, miss: EdgeShituError) -> bool:
    """The mixed-precision ladder (``converters/nb_mixed.py``) runs for an extractor's int8 file
    that missed its gate (a measured miss, not a crash), when the conversion would otherwise fail:
    not under --allow-degraded (``convert`` then passes ``nb_mixed: False`` and its permissive
    thresholds keep the plain file), and only with the FP32 program and calibration at hand."""
    return (precision == "int8" and job.model == "rec" and getattr(miss, "fidelity", None) is not None
            and bool(job.options.get("nb_mixed", False)) and "paddle" in job.sources
            and bool(job.calibration) and job.verify_feeds is not None)


def _figures(fid: Optional[Fidelity]) -> dict[str, Any]:
    if fid is None:
        return {}
    return {"cosine_mean": round(float(fid.cosine_mean), 6), "cosine_min": round(float(fid.cosine_min), 6)}


def _mixed_int8(job: ExportJob, kind: str, dest: Path, twin: Optional[Path], miss: EdgeShituError) -> Artifact:
    """Re-quantize with the k most int8-sensitive ops float (k = ``nb_mixed.LADDER_K``), build and
    verify each file exactly as the plain one, keep the first that passes; else the plain miss,
    with what was tried."""
    import time

    from edge_shitu.converters import nb_mixed, quantize

    fmt = artifact_format(kind)
    t0 = time.perf_counter()
    fp32 = Path(job.sources["paddle"])
    calib = list(job.calibration or [])
    ptq_kw = dict(job.options.get("ptq") or {})
    plain = _figures(getattr(miss, "fidelity", None))
    job.progress(f"{job.model}: {kind} missed its gate (cosine {plain.get('cosine_mean')}); ranking ops by int8 "
                 "sensitivity for a mixed-precision file")
    scores = nb_mixed.rank_in_subprocess(fp32, calib, quantize.DEFAULT_OPS)
    ranked = nb_mixed.rank({n: s["score"] for n, s in scores.items()})
    already_float = {n for n, q in quantize.quantized_op_weights(job.source_for(kind)).items() if not q}

    with tempfile.TemporaryDirectory(prefix="es-nbmixed-", dir=job.work_dir) as tmp:
        def try_k(k: int, skip: list[str]) -> tuple[Optional[Artifact], dict[str, Any]]:
            job.progress(f"{job.model}: {kind} with the {k} most sensitive op(s) float")
            qdir = Path(tmp) / f"int8_float{k}"
            rep = quantize.quantize_in_subprocess(fp32, qdir, calib, skip_tensor_list=skip, **ptq_kw)
            floats = {n for n, q in quantize.quantized_op_weights(qdir).items() if not q}
            if floats != set(skip) | already_float:  # the skip list did not take as named
                raise EdgeShituError(f"PTQ with skip_tensor_list {skip[:3]}...: float ops {sorted(floats)[:5]} are "
                                     "not the ones named (a PaddleSlim change?)")
            rec: dict[str, Any] = {"quantized_ops": rep.n_quant_ops}
            try:
                art = to_nb(qdir, dest, target=fmt.cpu or "", int8=True, verify_feeds=job.verify_feeds,
                            reference=job.reference, thresholds=job.gate_for("int8"), twin_out=twin)
            except EdgeShituError as e:
                if getattr(e, "fidelity", None) is None:
                    raise
                fig = _figures(e.fidelity)  # type: ignore[attr-defined]
                job.progress(f"{job.model}: {kind} with {k} op(s) float: cosine {fig.get('cosine_mean')}, missed")
                return None, {**rec, **fig, "passed": False}
            twin_cos = ((art.details.get("x86_twin_fidelity") or {}).get("summary") or {}).get("cosine_mean")
            if twin_cos is not None:
                rec["x86_twin_cosine_mean"] = round(float(twin_cos), 6)
            return art, {**rec, **_figures(art.fidelity), "passed": True}

        res = nb_mixed.ladder(ranked, try_k)
    seconds = round(time.perf_counter() - t0, 1)
    if res.found is None:
        tried = ", ".join(f"{t['k']} float: {t.get('cosine_mean')}" for t in res.tried)
        raise EdgeShituError(f"{miss}; mixed precision ({len(ranked)} ops ranked, {seconds} s) did not pass either "
                             f"(cosine with k ops float: {tried or 'nothing to try'})") from miss
    art: Artifact = res.found
    art.details["mixed_precision"] = {**nb_mixed.mixed_details(res.skipped, res.k, res.tried), "plain": plain,
                                      "ops": len(ranked), "seconds": seconds,
                                      "scores": {n: round(scores[n]["score"], 5) for n in res.skipped}}
    return art


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_worker)
