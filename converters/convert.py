"""`edge-shitu convert`: from Paddle inference models + a labelled gallery to one verified bundle.

The stages (each a module of its own) are composed here and nothing else: load -> prune
(PaddleSlim, measured sensitivity) -> int8 PTQ (calibrated on the user's photos) -> artifacts
the board asks for (.nb arm/x86, TFLite fp32/fp16/int8) -> every artifact verified against the
FP32 Paddle Inference reference on held-out photos -> gallery embedded with the board's own
artifact -> binary index -> manifest, report. The bundle is assembled in a temporary directory
and renamed into place only at the end: a failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_shitu import __version__
from edge_shitu.atomic import atomic_dir
from edge_shitu.boards import Board, load_board
from edge_shitu.bundle import FORMAT, FORMAT_VERSION, artifact_entry, sha256_file, write_manifest
from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import Artifact, artifact_format, is_image_file, kind_for
from edge_shitu.gallery import Gallery, read_gallery
from edge_shitu.gallery_build_embed import embed_images, rec_preprocess_for  # noqa: F401 (benchmarks import it here)
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.hashing import l2_normalize
from edge_shitu.preprocess import DetPreprocess, RecPreprocess, load_image

Feeds = dict[str, np.ndarray]
Progress = Callable[[str], None]


@dataclass
class ConvertOptions:
    prune: bool = True
    prune_ratio: float | None = None
    # "sensitivity" (prune.py: L1 norm, cosine budget) | "reconstruct" (prune_reconstruct.py: the
    # extractor's inverted-residual hidden channels + least squares, the largest MAC cut whose
    # gallery recall@1 drop stays within prune_recall_budget points; elsewhere it falls back)
    prune_method: str = "sensitivity"
    prune_recall_budget: float = 1.0
    prune_gallery: Any = None  # (decoded gallery images, labels) for the reconstruct budget; convert() sets it
    fidelity_budget: float = 0.99
    calib_dir: Path | None = None
    n_calib: int = 32
    n_verify: int = 16
    n_agree: int = 400  # gallery photos the top-1 agreement of every runnable extractor is measured on
    # the extractor's task gate (converters/task_gate.py): leave-one-out recall@1 on the gallery,
    # searched as the board searches, may drop at most this many points below FP32 float search;
    # at most recall_sample photos (whole classes) are embedded per artifact. convert() turns
    # task_gate on when its gallery has enough same-class pairs; convert-model has no labels.
    recall_budget: float = 1.0
    recall_sample: int = 2000
    task_gate: bool = False
    allow_degraded: bool = False
    # extractors' int8 TFLite: a bias-corrected twin (converters/int8_bias.py) is made, verified
    # beside the plain file and kept only where its cosine to FP32 measures higher
    bias_correction: bool = True
    # extractors' int8 TFLite: a twin with output-aware weight rounding (converters/int8_rounding.py,
    # AdaRound's objective), verified beside the others and kept only where it measures higher
    weight_rounding: bool = False
    # extractors: residual-stream channel ranges equalized before int8 (converters/equalize.py; the
    # FP32 function unchanged): MobileNetV2 int8 TFLite cosine 0.9888 -> 0.9924; a no-op elsewhere
    equalize: bool = True
    # mixed-precision int8 TFLite (converters/int8_mixed.py), opt-in: the most int8-sensitive
    # activation tensors kept float, fewest first, the first file passing the default gate taken.
    # True: every model; or the model kinds it applies to (("rec",): `make demo`'s choice).
    # Extractors: the float layers keep int8 weights behind a DEQUANTIZE (int8_weight_only), so a
    # file is no larger than the int8 one. Measured on MobileNetV2 (equalized): cosine 0.9930 ->
    # 0.9961 with 11 float layers at 0.97x the int8 size (~70 s more). Raw-GFL detectors: before
    # 16x8; PicoDet-S COCO: none passes, box recall best 0.85 (~2 min more; docs/benchmarks.md)
    mixed_precision: Any = False
    latency_threads: tuple[int, ...] = (1, 2)
    latency_runs: int = 15
    bits: int | None = None
    # "reference": the gallery index holds FP32 Paddle features (the workstation's best view of the
    # gallery; the device's int8 queries then carry the only quantization noise: measured 0.8-1.7
    # recall point better with a 256-bit index than both sides int8, bench_accuracy); a pruned
    # extractor's gallery is embedded by its pruned FP32 program (the model the device runs).
    # "artifact": embedded by the board's primary artifact, exactly as `gallery add` on the device.
    gallery_features: str = "reference"
    work_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    # models other than Paddle legacy folders (docs/model-inputs.md): preprocessing specs by model
    # kind ("det"/"rec": a YAML path, a "k=v,..." string or a mapping), the detector's classes
    # (COCO names / ids, "agnostic"), where TFLite comes from ("onnx": the user's ONNX file)
    preprocess: dict[str, Any] = field(default_factory=dict)
    det_classes: Any = None
    tflite_route: str = "onnx"
    prepared: dict[str, Any] = field(default_factory=dict)  # kind -> PreparedModel made by convert()
    # the detector's input size (h, w), "HxW" or "model": overrides the board's det.input_size; an
    # ONNX detector of another fixed size is re-targeted to it (converters/onnx_resize.py)
    det_size: Any = None


# ---------------------------------------------------------------- inputs
def _kind_of(model_dir: Path) -> str:
    """'det' or 'rec' from the program's inputs (the detector takes image + im_shape + scale_factor)."""
    from edge_shitu.converters.paddle_model import load_program

    _, feeds, _ = load_program(model_dir)
    return "det" if {"im_shape", "scale_factor"} <= set(feeds) else "rec"


def check_kind(model_dir: Path, expected: str) -> None:
    kind = _kind_of(model_dir)
    if kind != expected:
        what = {"det": "a detector (inputs image, im_shape, scale_factor)",
                "rec": "a feature extractor (one image input)"}
        raise EdgeShituError(f"{model_dir} looks like {what[kind]}, but was given as --{expected}; "
                             "swap --det and --rec")


def check_input(path: Path, kind: str, opts: ConvertOptions) -> None:
    """A model given as --det / --rec: recognised by content, of the right kind, with a usable
    preprocessing; one line otherwise (before anything is decoded or written)."""
    from edge_shitu.converters.model_input import inspect_model

    p = Path(path)
    if p.is_dir() and any(p.glob("*.pdmodel")):  # a Paddle legacy folder: checked as it always was
        check_kind(p, kind)
        if kind == "det" and opts.preprocess.get("det") is None:
            det_preprocess_for(p)
        return
    try:
        info = inspect_model(p, kind)
    except EdgeShituError as e:
        raise EdgeShituError(f"--{kind} {e}") from None
    from edge_shitu.converters.model_source import spec_for

    spec_for(info, kind, opts.preprocess.get(kind))


def det_preprocess_for(model_dir: Path) -> DetPreprocess:
    cfg = model_dir / "infer_cfg.yml"
    if not cfg.is_file():
        raise EdgeShituError(f"{model_dir}: no infer_cfg.yml; the detector's preprocessing is read from it "
                             "(PaddleDetection exports it next to inference.pdmodel)")
    return DetPreprocess.from_infer_cfg(cfg)


def mixed_for(opts: ConvertOptions, kind: str) -> bool:
    """Whether ``kind``'s ("det" / "rec") int8 TFLite gets the mixed-precision ladder:
    ``opts.mixed_precision`` is a bool (every model) or the kinds it is asked for."""
    m = opts.mixed_precision
    return bool(m) if isinstance(m, bool) or m is None else kind in set(m)


def split_images(images: Sequence[np.ndarray], n_calib: int, n_verify: int) -> tuple[list, list]:
    """Deterministic, disjoint calibration and verification subsets, spread over the gallery."""
    n = len(images)
    if n < 2:
        raise EdgeShituError(f"need at least 2 readable images for calibration and verification, got {n}")
    order = np.linspace(0, n - 1, num=min(n, n_calib + n_verify)).round().astype(int)
    order = list(dict.fromkeys(order.tolist()))
    if n_calib <= 0 or n_verify <= 0:  # one subset only (a --calib folder: the gallery only verifies)
        verify = order[:n_verify] if n_verify > 0 else []
    else:
        verify = order[1::2][:n_verify] if len(order) > 2 else order[1:]
    calib = [i for i in order if i not in set(verify)][:n_calib]
    return [images[i] for i in calib], [images[i] for i in verify]


def load_calib_dir(path: Path, warn: Callable[[str], None]) -> list[np.ndarray]:
    files = sorted(p for p in Path(path).rglob("*") if is_image_file(p))
    images = []
    for f in files:
        try:
            images.append(load_image(f))
        except EdgeShituError as e:
            warn(f"skipping calibration image: {e}")
    if not images:
        raise EdgeShituError(f"--calib {path}: no readable images found")
    return images


# ---------------------------------------------------------------- one model
@dataclass
class ModelResult:
    kind: str
    preprocess: dict[str, Any]
    entries: list[dict[str, Any]]
    reference: dict[str, Any]
    pruning: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    runnable: dict[str, Path] = field(default_factory=dict)  # artifact kind -> a host-runnable file
    prepared: Any = None  # converters/model_source.PreparedModel
    pruned_dir: Path | None = None  # the pruned FP32 Paddle program, when pruning removed anything
    equalization: dict[str, Any] | None = None  # converters/equalize.py's report, when it ran


def _latency(path: Path, backend: str, feeds: Feeds, opts: ConvertOptions) -> dict[str, Any]:
    """Median ms of a file (``backend``: a backend name, or "paddle" for the FP32 reference dir)
    at each of ``opts.latency_threads``."""
    from edge_shitu.converters.verify import measure_latency
    from edge_shitu.runtimes.backend import open_backend

    out: dict[str, float] = {}
    for t in opts.latency_threads:
        runner = open_backend(path, backend, threads=t)
        out[str(t)] = round(measure_latency(runner, feeds, runs=opts.latency_runs)["median_ms"], 3)
    return {"threads": out}


def _default_gate(kind: str, precision: str, opts: ConvertOptions) -> dict[str, float] | None:
    """The exporters' gate for an int8 extractor under the task gate: a sanity floor only (the
    user's recall decides after export); None: the product gate by precision."""
    from edge_shitu.converters.verify import INT8_SANITY

    return dict(INT8_SANITY) if kind == "rec" and opts.task_gate and precision == "int8" else None


def _gate(art: Any, precision: str, stage: str, opts: ConvertOptions) -> dict[str, Any]:
    """Fidelity dict of an artifact; with --allow-degraded a miss becomes a warning."""
    from edge_shitu.converters.verify import check, thresholds_for

    fid = art.fidelity.to_dict() if art.fidelity is not None else {}
    if opts.allow_degraded and art.fidelity is not None:
        gfl = (art.details or {}).get("gfl_head")
        gate = _default_gate(art.model, precision, opts) or thresholds_for(precision, gfl)
        try:
            check(art.fidelity, gate)
        except EdgeShituError as e:
            why = str(e).replace("; the artifact was not written", "")
            opts.warnings.append(f"{stage}: below threshold, kept because of --allow-degraded: {why}")
            fid["degraded"] = True
    return fid


DETAIL_KEYS = ("int8_mode", "float_ops", "converter", "calibration_samples", "head", "cut_before_nms", "verified_by",
               "route", "x86_twin_fidelity", "program_fixes", "onnx_rewrites", "bias_correction",
               "weight_rounding", "mixed_precision")


def _details(art: Any) -> dict[str, Any]:
    """What the device runtime (head decode for a detector cut before NMS) and a reader of the
    report need from an exporter's details; the rest stays in the work directory."""
    return {k: art.details[k] for k in DETAIL_KEYS if k in (art.details or {})}


def _summary(fid: dict[str, Any], verified: str) -> dict[str, Any]:
    """The manifest's fidelity block: headline figures + everything measured."""
    outs = fid.get("outputs") or []
    cos = [o.get("cosine_mean") for o in outs if o.get("cosine_mean") is not None]
    mins = [o.get("cosine_min") for o in outs if o.get("cosine_min") is not None]
    out = {"verified": verified, "detail": fid}
    if cos:
        out["cosine_mean"] = float(min(cos))
    if mins:
        out["cosine_min"] = float(min(mins))
    boxes = fid.get("boxes")
    if boxes:
        out["box_recall_iou50"] = boxes.get("matched_frac")
    if fid.get("degraded"):
        out["degraded"] = True
    return out


def _entry(art: Artifact, root: Path, pruned: bool, latency_feed: Feeds, opts: ConvertOptions,
           progress_stage: str) -> dict[str, Any]:
    """The manifest entry of one exported artifact: gated fidelity, latency where the file runs
    on this host (arm kernels do not, and an x86 twin's time says nothing about them: its int8
    kernels can even crash), what the runtime needs from the exporter's details."""
    fmt = art.spec
    here = fmt.runs_here()
    fid = _summary(_gate(art, fmt.precision, progress_stage, opts), "run" if here else "twin")
    extra: dict[str, Any] = {}
    lat = None
    if here:
        feed = latency_feed
        if art.details.get("cut_before_nms"):  # a detector cut before NMS takes the image alone
            from edge_shitu.converters.exporter import image_input

            name = image_input(latency_feed)
            feed = {name: latency_feed[name]}
        lat = _latency(art.path, fmt.backend, feed, opts)
    else:
        extra["latency_note"] = f"{fmt.cpu}: not runnable on this host"
    if art.details.get("cut_before_nms"):
        extra["outputs_cut_before_nms"] = True
    return artifact_entry(root, art.path, art.kind, precision=fmt.precision, pruned=pruned, fidelity=fid,
                          latency_ms=lat, details=_details(art), **extra)


def convert_model(model_dir: Path, kind: str, calib_images: Sequence[np.ndarray], verify_images: Sequence[np.ndarray],
                  artifacts: Sequence[str], out_dir: Path, work: Path, opts: ConvertOptions,
                  progress: Progress) -> ModelResult:
    """Prune, quantize, export and verify one model; writes artifacts into out_dir.

    The kinds are handed, grouped by exporter, to each exporter's ``export(ExportJob)``
    (``converters/exporter.py``); the models they consume (the format rows' ``source``) are
    made once, when first needed: PTQ for the quantized program, the ONNX export for TFLite.
    """
    from edge_shitu.converters import exporter, model_source, prune
    from edge_shitu.converters.paddle_model import count_params

    prepared = opts.prepared.get(kind) or model_source.prepare(
        Path(model_dir), kind, list(verify_images[:4]) or list(calib_images[:4]), work,
        preprocess=opts.preprocess.get(kind), classes=opts.det_classes if kind == "det" else None,
        tflite_route=opts.tflite_route, progress=progress)
    model_dir = prepared.paddle_dir  # the Paddle program PaddleSlim and Paddle Lite take
    reference_path = prepared.reference  # the FP32 reference: the folder, or an .onnx run by onnxruntime
    pre_dict = prepared.pre.to_dict()
    calib = [prepared.feed(im) for im in calib_images]
    verify = [prepared.feed(im) for im in verify_images]
    out_dir.mkdir(parents=True, exist_ok=True)
    for a in artifacts:
        artifact_format(a)  # an unknown kind fails before any work

    # ---- prune
    pruned_dir, pruning, verify_ref = model_dir, None, reference_path
    if opts.prune:
        report: Any = None
        if opts.prune_method not in ("sensitivity", "reconstruct"):
            raise EdgeShituError(f"prune method {opts.prune_method!r}: use 'sensitivity' or 'reconstruct'")
        if opts.prune_method == "reconstruct":
            from edge_shitu.converters.prune_reconstruct import for_convert

            report = for_convert(model_dir, kind, calib, work, opts, progress, prepared.pre)  # None: falls back
        if report is None:
            progress(f"{kind}: pruning (sensitivity on {len(calib)} images, budget {opts.fidelity_budget})")
            report = prune.prune(model_dir, work / f"{kind}_pruned", calib[: max(4, len(calib) // 4)],
                                 eval_feeds=verify[:8], budget=opts.fidelity_budget, prune_ratio=opts.prune_ratio)
        pruned_dir = Path(report.out_dir)
        pruning = report.to_dict()
    if pruning is not None and pruning.get("method") == "reconstruct" and pruned_dir != model_dir:
        # a recall-budgeted cut moves the features on purpose (cosine ~0.98 vs the user's model): the
        # artifacts are checked against the pruned FP32 program (is each conversion faithful?), and the
        # cut plus the conversion are gated together by the task gate, against the user's FP32 model
        verify_ref = pruned_dir
        pruning["artifacts_verified_against"] = "the pruned FP32 program (the task gate: the user's FP32 model)"

    from edge_shitu.converters.verify import PERMISSIVE

    thresholds = PERMISSIVE if opts.allow_degraded else None  # --allow-degraded: measured, gated in _gate
    # per-model-kind exporter options: a detector's ONNX is cut before NMS (TFLite then carries its
    # head); an extractor's int8 TFLite keeps its global pooling float, with MSE activation ranges
    options: dict[str, Any] = {"cut_before_nms": True} if kind == "det" else {
        "float_pooling": True, "mse_ranges": True, "bias_correction": opts.bias_correction,
        "weight_rounding": opts.weight_rounding,
        "mixed_precision": mixed_for(opts, kind)}
    if prepared.head is not None:  # a raw GFL head: no NMS in the graph, nothing to cut; gated on its boxes
        options = {"gfl_head": prepared.head, "mixed_precision": mixed_for(opts, kind)}
    # an extractor's .nb int8 that misses its gate: a mixed-precision ladder (converters/nb_mixed.py)
    # instead of failing; not under --allow-degraded (the plain file is kept, CI time stays flat)
    options["nb_mixed"] = not opts.allow_degraded
    options["ptq"] = {} if prepared.legacy else {"batch_size": 1}  # PTQ as below, for its re-runs
    # ---- equalize: an extractor's residual-stream channel ranges, before its int8 files (converters/
    # equalize.py; the FP32 function is unchanged, so the references and the gallery stay as they are)
    source_dir, equalization = pruned_dir, None
    direct_onnx = prepared.onnx is not None and pruned_dir == model_dir  # TFLite straight from the user's ONNX
    if opts.equalize and kind == "rec" and not direct_onnx:
        from edge_shitu.converters.equalize import equalize

        try:
            eq = equalize(pruned_dir, work / f"{kind}_equalized", calib[:EQUALIZE_IMAGES])
        except Exception as e:  # an optimization: a graph it cannot read converts as it is, and says why
            eq, equalization = None, {"error": f"{type(e).__name__}: {str(e)[:160]}"}
            progress(f"{kind}: residual-stream equalization skipped ({equalization['error']})")
        if eq is not None:
            source_dir, equalization = eq.out_dir, eq.to_dict()
            progress(f"{kind}: {eq.streams} residual streams equalized ({eq.channels} channels, range spread "
                     f"{eq.spread_before:.1f}x -> {eq.spread_after:.1f}x)")
    sources: dict[str, Path] = {"paddle": source_dir}
    if direct_onnx:
        sources["onnx"] = prepared.onnx

    def job(kinds: Sequence[str], dest: Path, reference: Path | None) -> exporter.ExportJob:
        return exporter.ExportJob(model=kind, kinds=list(kinds), sources=sources, out_dir=dest, reference=reference,
                                  verify_feeds=verify, calibration=calib, thresholds=thresholds, work_dir=work,
                                  int8_gate=_default_gate(kind, "int8", opts), options=options, progress=progress)

    def need(source: str) -> None:
        """Make the model a format row consumes, once."""
        if source in sources:
            return
        if source == "paddle-int8":  # PaddleSlim PTQ (for .nb int8)
            progress(f"{kind}: int8 post-training quantization ({len(calib)} calibration images)")
            from edge_shitu.converters import quantize

            # x2paddle's programs are batch-1 (fixed reshapes): calibrate image by image
            qkw: dict[str, Any] = dict(options["ptq"])
            sources[source] = Path(quantize.quantize_in_subprocess(source_dir, work / f"{kind}_int8", calib,
                                                                   **qkw).out_dir)
        else:  # an intermediate export (the fp32 or pruned ONNX; never PaddleSlim's QDQ ONNX)
            inter = exporter.kind_named(source, "fp32")
            need(artifact_format(inter).source)
            # a cut detector's ONNX is checked against its pruned program, cut the same way
            cut_ref = None if kind == "det" and prepared.head is None else verify_ref
            art = exporter.export(job([inter], work, cut_ref))[0]
            sources[source] = art.path
            if art.details.get("head") is not None:
                options["detector_head"] = art.details["head"]  # the FP32 program is cut to match

    entries: list[dict[str, Any]] = []
    runnable: dict[str, Path] = {}
    pruned_flag = pruned_dir != model_dir
    for group in exporter.groups(artifacts):
        for k in group:
            need(artifact_format(k).source)
        for art in exporter.export(job(group, out_dir, verify_ref)):
            entry = _entry(art, out_dir.parent, pruned_flag, verify[0], opts, f"{kind} {art.kind}")
            if prepared.head is not None:  # decoded on the device by edge_shitu/gfl_head.py
                entry["details"] = {**(entry.get("details") or {}), "head": prepared.head}
            if not prepared.legacy and art.spec.family == "tflite":
                entry["details"] = {**(entry.get("details") or {}),
                                    "tflite_source": "onnx file" if "onnx" in sources and sources["onnx"] ==
                                    prepared.onnx else "paddle program (x2paddle)"}
            entries.append(entry)
            if art.spec.runs_here():
                runnable[art.kind] = art.path
    from edge_shitu.converters.paddle_model import load_model
    from edge_shitu.runtimes.paddle_backend import find_model_files

    if prepared.legacy:
        progress(f"{kind}: FP32 Paddle Inference reference latency")
        files = find_model_files(model_dir)
        assert files.params_path is not None
        reference = {"bytes": files.params_path.stat().st_size + files.model_path.stat().st_size,
                     "params": count_params(load_model(model_dir)),
                     "latency_ms": _latency(model_dir, "paddle", verify[0], opts)}
    else:
        progress(f"{kind}: FP32 onnxruntime reference latency")
        reference = {"bytes": Path(reference_path).stat().st_size, "params": count_params(load_model(model_dir)),
                     "engine": "onnxruntime", "input_format": prepared.format,
                     "latency_ms": _latency(Path(reference_path), "onnx", verify[0], opts), **prepared.details}
    return ModelResult(kind, pre_dict, entries, reference, pruning, runnable=runnable, prepared=prepared,
                       pruned_dir=pruned_dir if pruned_flag else None, equalization=equalization)


# ---------------------------------------------------------------- gallery
def embed(path: Path | None, kind: str | None, model_dir: Path, pre: RecPreprocess, images: Sequence[np.ndarray],
          threads: int = 2) -> np.ndarray:
    """Features of images from an artifact (or the FP32 reference when path is None), through the
    one feature computation that `gallery build` also uses (edge_shitu/gallery_build_embed.py)."""
    return embed_images(model_dir if path is None else path, "paddle" if path is None else kind, pre, images,
                        threads)


def _loo_top1(feats: np.ndarray) -> np.ndarray:
    x = l2_normalize(feats)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


def top1_agreement(ref_feats: np.ndarray, art_feats: np.ndarray) -> float:
    """How often a gallery photo's nearest other photo is the same under the artifact as under
    the FP32 reference, both sides embedded by the model under test (what the device sees)."""
    return float((_loo_top1(ref_feats) == _loo_top1(art_feats)).mean())


def spread_rows(n: int, k: int) -> list[int]:
    """k row numbers spread evenly over n (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, num=k).round().astype(int).tolist()))


EQUALIZE_IMAGES = 16  # calibration images the stream ranges are measured on
PRUNED_GALLERY = "paddle:fp32 pruned"  # gallery.esidx META extractor_artifact of a pruned bundle
AGREEMENT_GATES = {"fp32": 0.99, "fp16": 0.99, "int8": 0.97}


def _gate_task(entry: dict[str, Any], figures: Any, opts: ConvertOptions) -> None:
    """Record and gate an extractor artifact's recall on the user's gallery (task_gate.py)."""
    entry["fidelity"]["task"] = figures.to_dict()
    if figures.passed:
        return
    msg = (f"rec {entry['kind']}: leave-one-out recall@1 {100 * figures.recall_at_1:.2f}% is "
           f"{figures.drop_points:.2f} points below FP32 float search ({100 * figures.reference_recall_at_1:.2f}%) "
           f"on {figures.queries} gallery queries ({figures.search}); the budget is {figures.budget_points} "
           f"(--recall-budget; at least one query, {figures.resolution_points} points, unless 0)")
    if not opts.allow_degraded:
        raise EdgeShituError(msg + "; no bundle was written (--allow-degraded keeps it with a warning)")
    opts.warnings.append(msg + ", kept because of --allow-degraded")
    entry["fidelity"]["degraded"] = True


def _gate_agreement(entry: dict[str, Any], ref: np.ndarray, art: np.ndarray, opts: ConvertOptions,
                    gated: bool = True) -> None:
    """Record (and, without the recall gate, gate) the retrieval-level fidelity of one extractor
    artifact."""
    from edge_shitu.converters.paddle_model import mean_row_cosine

    fid = entry["fidelity"]
    agree = top1_agreement(ref, art)
    fid.update(top1_agreement=round(agree, 4), gallery_cosine_mean=round(mean_row_cosine(ref, art), 6),
               agreement_images=len(ref))
    need = AGREEMENT_GATES.get(entry.get("precision", "fp32"), 0.97)
    if agree >= need or not gated:
        return
    msg = (f"rec {entry['kind']}: top-1 gallery-neighbour agreement {agree:.4f} < {need} vs the FP32 Paddle "
           f"reference on {len(ref)} gallery photos")
    if not opts.allow_degraded:
        raise EdgeShituError(msg + "; no bundle was written (--allow-degraded keeps it with a warning)")
    opts.warnings.append(msg + ", kept because of --allow-degraded")
    fid["degraded"] = True


def _native_lib(board: Board) -> Path | None:
    from edge_shitu.assets import PROJECT_ROOT

    if board.native == "host":
        p = PROJECT_ROOT / "runtimes" / "lib" / "libeshamming.so"
    else:
        p = PROJECT_ROOT / "build" / board.native / "libeshamming.so"
    return p if p.is_file() else None


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"edge-shitu": __version__}
    for dist in ("paddlepaddle", "paddleslim", "paddlelite", "paddle2onnx", "onnx", "onnxruntime", "onnx2tf",
                 "tensorflow-cpu", "ai-edge-litert", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _model_hashes(model_dir: Path) -> dict[str, Any]:
    if model_dir.is_file():  # an .onnx file
        return {"file": str(model_dir), "sha256": sha256_file(model_dir)}
    files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file()}
    return {"dir": str(model_dir), "files": files}


@contextlib.contextmanager
def _workdir(opts: ConvertOptions) -> Iterator[Path]:
    if opts.work_dir is not None:
        opts.work_dir.mkdir(parents=True, exist_ok=True)
        yield opts.work_dir
        return
    tmp = Path(tempfile.mkdtemp(prefix="edge-shitu-convert-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(rec_dir: Path, gallery_dir: Path, board_name: str, out: Path, *, det_dir: Path | None = None,
            labels: Path | None = None, opts: ConvertOptions | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """The whole job; returns the manifest written to out/manifest.json."""
    opts = opts or ConvertOptions()
    say: Progress = progress or (lambda msg: print(f"edge-shitu: {msg}", file=sys.stderr))
    board = load_board(board_name)  # fail fast on a bad board name
    check_input(Path(rec_dir), "rec", opts)  # before the gallery is decoded: a swapped pair fails in a second
    if det_dir is not None:
        check_input(Path(det_dir), "det", opts)
        from edge_shitu.converters.onnx_resize import detector_size

        detector_size(board, opts.det_size)  # a malformed --det-size / board size fails before the gallery
    gallery = read_gallery(gallery_dir, labels)
    say(f"gallery: {len(gallery)} photos, {len(set(gallery.labels))} labels")
    decoded: list[tuple[Any, np.ndarray]] = list(gallery.images())
    if gallery.skipped:
        msg = f"skipped {len(gallery.skipped)} unreadable gallery image(s)"
        opts.warnings.append(msg)
        say(f"warning: {msg}")
    if not decoded:
        raise EdgeShituError(f"gallery {gallery_dir}: none of the {len(gallery)} images could be read")
    images = [im for _, im in decoded]
    calib_pool = load_calib_dir(opts.calib_dir, say) if opts.calib_dir else images
    if opts.calib_dir:  # all of --calib for calibration; held-out verification photos come from the gallery
        calib_imgs, _ = split_images(calib_pool, opts.n_calib, 0)
        _, verify_imgs = split_images(images, 0, opts.n_verify)
    else:
        calib_imgs, verify_imgs = split_images(calib_pool, opts.n_calib, opts.n_verify)
    labels_all = [it.label for it, _ in decoded]
    from edge_shitu.converters.task_gate import sample_rows, usable

    task_rows = sample_rows(labels_all, opts.recall_sample)
    if opts.prune_method == "reconstruct":  # its recall budget is measured on the gallery
        opts.prune_gallery = (images, labels_all)
    opts.task_gate = usable([labels_all[i] for i in task_rows])
    if not opts.task_gate:
        say("gallery: too few classes with 2+ photos for the recall gate; extractors are gated on "
            "cosine and neighbour agreement")
    with _workdir(opts) as work, atomic_dir(out) as root:
        models: dict[str, ModelResult] = {}
        if det_dir is not None:
            from edge_shitu.converters.onnx_resize import detector_at_size, record_native_size_recall

            det_src, det_sizes = detector_at_size(Path(det_dir), board, opts.det_size, work, opts.warnings, say)
            models["det"] = convert_model(det_src, "det", calib_imgs, verify_imgs, board.artifacts, root / "det",
                                          work, opts, say)
            if det_sizes is not None:  # the board's size vs the model's own: informational, the gates stay
                record_native_size_recall(models["det"], det_sizes, verify_imgs, say)
                models["det"].reference["input_size"] = {k: v for k, v in det_sizes.items() if k != "native"}
        models["rec"] = rec = convert_model(Path(rec_dir), "rec", calib_imgs, verify_imgs, board.artifacts,
                                            root / "rec", work, opts, say)
        from edge_shitu.converters.board_runtime import check_bundle_dir  # issue 19: the board's oldest runtime

        check_bundle_dir(board, root)  # must load every TFLite artifact (op versions), else one line, nothing written
        prepared = rec.prepared
        pre = prepared.pre
        ref_model = Path(prepared.reference)
        # ---- the gallery: FP32 reference features (default; the pruned FP32 program's when pruned) or the
        # device's primary artifact's
        say(f"gallery: FP32 reference features of {len(images)} photos")
        ref_feats = embed(None if prepared.legacy else ref_model, None if prepared.legacy else "onnx", ref_model,
                          pre, images)
        try:  # the board's artifact as this host runs it
            primary: str | None = kind_for(board.backend, board.precision)
        except EdgeShituError:
            primary = None
        primary_art = (rec.runnable.get(primary) if primary else None) or next(iter(rec.runnable.values()), None)
        rows = spread_rows(len(images), opts.n_agree)
        feats, embedded_by = ref_feats, "paddle:fp32 reference"
        if rec.pruned_dir is not None and opts.gallery_features == "reference":
            # the device runs (and adds gallery photos with) the pruned model: its FP32 program embeds
            # the gallery; the task gate still measures against the user's FP32 model (ref_feats)
            say(f"gallery: FP32 features of the pruned extractor for {len(images)} photos")
            feats, embedded_by = embed(None, None, rec.pruned_dir, pre, images), PRUNED_GALLERY
        if opts.gallery_features == "artifact" and primary_art is not None:
            say(f"gallery: embedding {len(images)} photos with {primary_art.name}")
            feats, embedded_by = embed(primary_art, None, ref_model, pre, images), primary_art.name
        gate, primary_feats = None, None
        if opts.task_gate:
            from edge_shitu.converters.task_gate import TaskGate

            rows = task_rows
            gate = TaskGate(ref_feats[rows], feats[rows], [labels_all[i] for i in rows], board.index,
                            budget_points=opts.recall_budget)
        for entry in rec.entries:  # every runnable artifact: recall gate (or neighbour agreement)
            path = rec.runnable.get(entry["kind"])
            if path is None:
                continue
            what = "leave-one-out recall@1" if gate is not None else "top-1 neighbour agreement"
            say(f"rec: {what} of {entry['kind']} on {len(rows)} gallery photos")
            art = feats[rows] if embedded_by == path.name else embed(path, None, ref_model, pre,
                                                                     [images[i] for i in rows])
            _gate_agreement(entry, ref_feats[rows], art, opts, gated=gate is None)
            if gate is not None:
                _gate_task(entry, gate.measure(art), opts)
                if entry["kind"] == primary or primary_feats is None:
                    primary_feats = art
        threshold: dict[str, Any] = {}
        if gate is not None and primary_feats is not None:  # the recognition threshold, from the gallery
            from edge_shitu.converters.task_gate import choose_threshold

            threshold = choose_threshold(gate.index, primary_feats, gate.labels, k=int(board.rec.get("top_k", 5)),
                                         rerank=gate.rerank)
            if threshold:
                say(f"rec: recognition threshold {threshold['threshold']:.4f} (accepts "
                    f"{threshold['right_accepted']:.0%} of right, {threshold['wrong_accepted']:.0%} of wrong "
                    "held-out gallery matches)")
        bits = opts.bits or int(board.index.get("bits", 256))
        method = board.index.get("method", "itq")
        sources = [str(it.path.relative_to(gallery.root)) for it, _ in decoded]
        # int8 features for re-ranking (format 1.1) where the board re-ranks: dim bytes per item buy
        # float-search quality for the shortlist (bench_accuracy)
        rerank = int(board.index.get("rerank", 0))
        index = GalleryIndex.build(feats, [it.label for it, _ in decoded], bits=bits, method=method,
                                   rerank_vectors=bool(board.index.get("rerank_vectors", rerank > 0)),
                                   meta={"extractor_artifact": embedded_by,
                                         "source_images": sources})
        index.save(root / "gallery.esidx")
        lib = _native_lib(board)
        native = None
        if lib is not None:
            (root / "lib").mkdir()
            shutil.copy2(lib, root / "lib" / "libeshamming.so")
            native = {"file": "lib/libeshamming.so", "sha256": sha256_file(root / "lib" / "libeshamming.so"),
                      "target": board.native}
        else:
            opts.warnings.append(f"native kernel for {board.native} not built (make cross): the device uses numpy")
        manifest = _manifest(board, models, index, gallery, det_dir, Path(rec_dir), native, opts, threshold)
        write_manifest(root, manifest)
        from edge_shitu.converters.report import write_report

        write_report(root, manifest)
        say(f"bundle written: {out}")
    return manifest


def det_runtime_precision(entries: Sequence[dict[str, Any]], backend: str, precision: str) -> dict[str, str]:
    """``runtime.det_precision``: fp32 when the board's int8 detector is a 16x8 file (int16
    activations run on TFLite's reference kernels, slower than fp32 on every CPU: PicoDet-S 0.11-0.13x
    on this host, docs/benchmarks.md) and the bundle has the fp32 file; else nothing (the board's)."""
    by_kind = {e["kind"]: e for e in entries}
    own, fp32 = by_kind.get(kind_for(backend, precision)), by_kind.get(kind_for(backend, "fp32"))
    mode = str(((own or {}).get("details") or {}).get("int8_mode") or "")
    if precision != "int8" or fp32 is None or not mode.startswith("16x8"):
        return {}
    return {"det_precision": "fp32", "det_precision_reason": f"the int8 detector is 16x8 ({mode.split(':')[0]}: "
            "reference kernels, slower than fp32); the fp32 file runs instead"}


def _manifest(board: Board, models: dict[str, ModelResult], index: GalleryIndex, gallery: Gallery,
              det_dir: Path | None, rec_dir: Path, native: dict[str, Any] | None,
              opts: ConvertOptions, threshold: dict[str, Any] | None = None) -> dict[str, Any]:
    threshold = threshold or {}
    def model_block(m: ModelResult) -> dict[str, Any]:
        block = {"preprocess": m.preprocess, "artifacts": m.entries, "reference": m.reference}
        if m.pruning:
            block["pruning"] = m.pruning
        if m.equalization:
            block["equalization"] = m.equalization
        return block

    rec_block = model_block(models["rec"])
    rec_block["feature_dim"] = index.dim
    det_block = None
    if "det" in models:
        det_block = model_block(models["det"])
        det_block["postprocess"] = {"type": "picodet", "nms": "in-graph (.nb) / runtime (tflite)",
                                    "score_threshold": board.det.get("threshold", 0.2),
                                    "keep_top_k": board.det.get("max_det", 5)}
        head = getattr(models["det"].prepared, "head", None)
        if head is not None:  # a raw GFL head, decoded on the device (edge_shitu/gfl_head.py)
            det_block["postprocess"] = {"type": "gfl", "nms": head["nms"], "classes": head["classes"],
                                        "class_agnostic": head["class_agnostic"],
                                        "score_threshold": board.det.get("threshold", 0.2),
                                        "keep_top_k": board.det.get("max_det", 5)}
        # the network input the artifacts take (the board's det.input_size / --det-size, else the model's)
        det_size = head["input_size"] if head is not None else \
            DetPreprocess.from_dict(models["det"].preprocess).input_size
        if det_size:
            det_block["input_size"] = [int(v) for v in det_size]
    info = index.info()
    m: dict[str, Any] = {
        "format": FORMAT, "format_version": list(FORMAT_VERSION), "created_by": f"edge-shitu {__version__}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "board": board.to_dict(), "tools": _tool_versions(),
        "source_models": {"rec": _model_hashes(rec_dir), **({"det": _model_hashes(det_dir)} if det_dir else {})},
        "det": det_block, "rec": rec_block,
        "index": {"file": "gallery.esidx", "bits": info["bits"], "method": info["method"], "items": info["live"],
                  "labels": info["labels"], "rerank": board.index.get("rerank", 0),
                  "rerank_vectors": info["rerank_vectors"]},
        "runtime": {"backend": board.backend, "precision": board.precision, "threads": board.threads,
                    "det_threshold": board.det.get("threshold", 0.2), "max_det": board.det.get("max_det", 5),
                    "rec_score_threshold": threshold.get("threshold", board.rec.get("score_threshold", 0.5)),
                    "rec_nms_iou": board.rec.get("nms_iou", 0.05), "top_k": board.rec.get("top_k", 5)},
        "skipped_images": len(gallery.skipped),
        "warnings": opts.warnings,
    }
    if det_block is not None:
        m["runtime"].update(det_runtime_precision(det_block["artifacts"], board.backend, board.precision))
    if native:
        m["native_lib"] = native
    m["threshold_calibration"] = ({**threshold, "board_default": board.rec.get("score_threshold", 0.5)} if threshold
                                  else {"chosen_by": "the board's default (too few same-label gallery pairs to "
                                        "calibrate)", "threshold": board.rec.get("score_threshold", 0.5)})
    return m
