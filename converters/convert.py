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
import json
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
from edge_shitu.gallery import Gallery, read_gallery
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.preprocess import DetPreprocess, RecPreprocess, load_image

PREPROCESS_FILE = "preprocess.json"  # optional, next to a rec model: RecPreprocess.to_dict()
Feeds = dict[str, np.ndarray]
Progress = Callable[[str], None]


@dataclass
class ConvertOptions:
    prune: bool = True
    prune_ratio: float | None = None
    fidelity_budget: float = 0.99
    calib_dir: Path | None = None
    n_calib: int = 32
    n_verify: int = 16
    n_agree: int = 400  # gallery photos the top-1 agreement of every runnable extractor is measured on
    allow_degraded: bool = False
    latency_threads: tuple[int, ...] = (1, 2)
    latency_runs: int = 15
    bits: int | None = None
    # "reference": the gallery index holds FP32 Paddle features (the workstation's best view of the
    # gallery; the device's int8 queries then carry the only quantization noise: measured 0.8-1.7
    # recall point better with a 256-bit index than both sides int8, bench_accuracy).
    # "artifact": embedded by the board's primary artifact, exactly as `gallery add` on the device.
    gallery_features: str = "reference"
    work_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)


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


def rec_preprocess_for(model_dir: Path) -> RecPreprocess:
    p = model_dir / PREPROCESS_FILE
    if p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            # either the preprocess dict itself, or a model description with a "preprocess" key
            return RecPreprocess.from_dict(d.get("preprocess", d) if isinstance(d, dict) else d)
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise EdgeShituError(f"{p}: not a valid preprocessing description ({e})") from None
    return RecPreprocess()


def det_preprocess_for(model_dir: Path) -> DetPreprocess:
    cfg = model_dir / "infer_cfg.yml"
    if not cfg.is_file():
        raise EdgeShituError(f"{model_dir}: no infer_cfg.yml; the detector's preprocessing is read from it "
                             "(PaddleDetection exports it next to inference.pdmodel)")
    return DetPreprocess.from_infer_cfg(cfg)


def split_images(images: Sequence[np.ndarray], n_calib: int, n_verify: int) -> tuple[list, list]:
    """Deterministic, disjoint calibration and verification subsets, spread over the gallery."""
    n = len(images)
    if n < 2:
        raise EdgeShituError(f"need at least 2 readable images for calibration and verification, got {n}")
    order = np.linspace(0, n - 1, num=min(n, n_calib + n_verify)).round().astype(int)
    order = list(dict.fromkeys(order.tolist()))
    verify = order[1::2][:n_verify] if len(order) > 2 else order[1:]
    calib = [i for i in order if i not in set(verify)][:n_calib]
    return [images[i] for i in calib], [images[i] for i in verify]


def load_calib_dir(path: Path, warn: Callable[[str], None]) -> list[np.ndarray]:
    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"})
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


def _latency(path: Path, kind: str | None, feeds: Feeds, opts: ConvertOptions) -> dict[str, Any]:
    from edge_shitu.converters.verify import measure_latency
    from edge_shitu.runtimes.backend import open_backend

    out: dict[str, float] = {}
    for t in opts.latency_threads:
        backend = open_backend(path, kind, threads=t)
        out[str(t)] = round(measure_latency(backend, feeds, runs=opts.latency_runs)["median_ms"], 3)
    return {"threads": out}


def _ref_latency(model_dir: Path, feeds: Feeds, opts: ConvertOptions) -> dict[str, Any]:
    from edge_shitu.converters.paddle_model import PaddleInferenceRunner
    from edge_shitu.converters.verify import measure_latency

    out = {}
    for t in opts.latency_threads:
        out[str(t)] = round(measure_latency(PaddleInferenceRunner(model_dir, threads=t), feeds,
                                            runs=opts.latency_runs)["median_ms"], 3)
    return {"threads": out}


def _gate(art: Any, precision: str, stage: str, opts: ConvertOptions) -> dict[str, Any]:
    """Fidelity dict of an artifact; with --allow-degraded a miss becomes a warning."""
    from edge_shitu.converters.verify import check, thresholds_for

    fid = art.fidelity.to_dict() if art.fidelity is not None else {}
    if opts.allow_degraded and art.fidelity is not None:
        try:
            check(art.fidelity, thresholds_for(precision))
        except EdgeShituError as e:
            why = str(e).replace("; the artifact was not written", "")
            opts.warnings.append(f"{stage}: below threshold, kept because of --allow-degraded: {why}")
            fid["degraded"] = True
    return fid


DETAIL_KEYS = ("int8_mode", "float_ops", "converter", "calibration_samples", "head", "cut_before_nms", "verified_by",
               "route", "x86_twin_fidelity", "program_fixes")


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
        out["box_recall_iou50"] = boxes.get("match_rate", boxes.get("recall"))
    if fid.get("degraded"):
        out["degraded"] = True
    return out


def convert_model(model_dir: Path, kind: str, calib_images: Sequence[np.ndarray], verify_images: Sequence[np.ndarray],
                  artifacts: Sequence[str], out_dir: Path, work: Path, opts: ConvertOptions,
                  progress: Progress) -> ModelResult:
    """Prune, quantize, export and verify one model; writes artifacts into out_dir."""
    from edge_shitu.converters import export_nb, export_onnx, export_tflite, prune, quantize
    from edge_shitu.converters.paddle_model import count_params

    model_dir = Path(model_dir)
    check_kind(model_dir, kind)
    if kind == "rec":
        pre = rec_preprocess_for(model_dir)

        def feed(img: np.ndarray, name: str) -> Feeds:
            return {name: pre.batch([img])}

        pre_dict = pre.to_dict()
    else:
        dpre = det_preprocess_for(model_dir)

        def feed(img: np.ndarray, name: str) -> Feeds:  # the detector feeds all three inputs
            return dpre(img)

        pre_dict = dpre.to_dict()
    from edge_shitu.converters.paddle_model import load_program

    _, feed_names, _ = load_program(model_dir)
    calib = [feed(im, feed_names[0]) for im in calib_images]
    verify = [feed(im, feed_names[0]) for im in verify_images]
    out_dir.mkdir(parents=True, exist_ok=True)

    # ---- prune
    pruned_dir, pruning = model_dir, None
    if opts.prune:
        progress(f"{kind}: pruning (sensitivity on {len(calib)} images, budget {opts.fidelity_budget})")
        report = prune.prune(model_dir, work / f"{kind}_pruned", calib[: max(4, len(calib) // 4)],
                             eval_feeds=verify[:8], budget=opts.fidelity_budget, prune_ratio=opts.prune_ratio)
        pruned_dir = Path(report.out_dir)
        pruning = report.to_dict()
    # ---- quantize (Paddle side: for .nb int8)
    int8_dir = None
    if any(a.startswith("nb:") and a.endswith(":int8") for a in artifacts):
        progress(f"{kind}: int8 post-training quantization ({len(calib)} calibration images)")
        int8_dir = Path(quantize.quantize_in_subprocess(pruned_dir, work / f"{kind}_int8", calib).out_dir)

    from edge_shitu.converters.verify import PERMISSIVE

    thresholds = PERMISSIVE if opts.allow_degraded else None  # --allow-degraded: measured, gated in _gate
    entries: list[dict[str, Any]] = []
    runnable: dict[str, Path] = {}
    latency_feed = verify[0]
    pruned_flag = pruned_dir != model_dir
    # ---- .nb
    for art_kind in [a for a in artifacts if a.startswith("nb:")]:
        _, target, precision = art_kind.split(":")
        src = int8_dir if precision == "int8" else pruned_dir
        progress(f"{kind}: Paddle Lite .nb {target} {precision}")
        path = out_dir / f"{kind}_{target}_{precision}.nb"
        twin = work / f"{kind}_{target}_{precision}_x86twin.nb" if target == "arm" else None
        art = export_nb.to_nb(src, path, target=target, int8=precision == "int8", verify_feeds=verify,
                              reference=model_dir, thresholds=thresholds, twin_out=twin)
        fid = _summary(_gate(art, precision, f"{kind} {art_kind}", opts), "twin" if target == "arm" else "run")
        # arm kernels do not run here and an x86 twin's time says nothing about them (its int8
        # kernels can even crash): only files that run here as themselves are timed
        lat = _latency(path, "nb", latency_feed, opts) if target == "x86" else None
        if target == "x86":
            runnable[art_kind] = path
        entries.append(artifact_entry(out_dir.parent, path, art_kind, precision=precision, pruned=pruned_flag,
                                      fidelity=fid, latency_ms=lat, details=_details(art),
                                      **({"latency_note": "arm: not runnable on this host"} if target == "arm"
                                                                       else {})))
    # ---- TFLite (from the fp32 or pruned ONNX; never from PaddleSlim's QDQ ONNX)
    tfl = [a.split(":")[1] for a in artifacts if a.startswith("tflite:")]
    if tfl:
        progress(f"{kind}: ONNX export")
        onnx = export_onnx.to_onnx(pruned_dir, work / f"{kind}.onnx", cut_before_nms=kind == "det",
                                   verify_feeds=verify, reference=model_dir if kind == "rec" else None,
                                   thresholds=thresholds)
        progress(f"{kind}: TFLite {', '.join(tfl)} (onnx2tf, int8 calibrated on {len(calib)} images)")
        # the image input (a detector also takes im_shape and scale_factor, in any order; its
        # ONNX is cut to the image alone)
        image_name = next(n for n in feed_names if np.asarray(calib[0][n]).ndim == 4)
        calib_arr = np.concatenate([c[image_name] for c in calib], axis=0)
        extra_kw: dict[str, Any] = {}
        if kind == "det":
            extra_kw = {"detector_head": onnx.details.get("head")}  # the FP32 program is cut to match
        else:
            extra_kw = {"float_pooling": True, "mse_ranges": True}
        arts = export_tflite.to_tflite(onnx.path, out_dir, name=kind, precisions=tfl, calibration=calib_arr,
                                       verify_feeds=verify, reference=model_dir, thresholds=None if
                                       thresholds is None else {p: thresholds for p in tfl}, **extra_kw)
        for precision, art in arts.items():
            path = Path(art.path)
            fid = _summary(_gate(art, precision, f"{kind} tflite:{precision}", opts), "run")
            runnable[f"tflite:{precision}"] = path
            entries.append(artifact_entry(out_dir.parent, path, f"tflite:{precision}", precision=precision,
                                          pruned=pruned_flag, fidelity=fid,
                                          latency_ms=_latency(path, "tflite", {image_name: latency_feed[image_name]}
                                                              if kind == "det" else latency_feed, opts),
                                          details=_details(art),
                                          **({"outputs_cut_before_nms": True} if kind == "det" else {})))
    progress(f"{kind}: FP32 Paddle Inference reference latency")
    from edge_shitu.converters.paddle_model import find_model_files, load_model

    files = find_model_files(model_dir)
    reference = {"bytes": files.params_path.stat().st_size + files.model_path.stat().st_size,
                 "params": count_params(load_model(model_dir)),
                 "latency_ms": _ref_latency(model_dir, latency_feed, opts)}
    return ModelResult(kind, pre_dict, entries, reference, pruning, runnable=runnable)


# ---------------------------------------------------------------- gallery
def embed(path: Path | None, kind: str | None, model_dir: Path, pre: RecPreprocess, images: Sequence[np.ndarray],
          threads: int = 2) -> np.ndarray:
    """Features of images from an artifact (or the FP32 reference when path is None)."""
    from edge_shitu.converters.paddle_model import PaddleInferenceRunner
    from edge_shitu.runtimes.backend import open_backend

    runner: Any = PaddleInferenceRunner(model_dir, threads=threads) if path is None else open_backend(path, kind,
                                                                                                        threads)
    name = runner.input_names[0] if path is None else runner.inputs[0].name
    feats = [np.asarray(runner.run({name: pre.batch([im])})[0], dtype=np.float32).reshape(-1) for im in images]
    return np.stack(feats)


def _loo_top1(feats: np.ndarray) -> np.ndarray:
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
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


AGREEMENT_GATES = {"fp32": 0.99, "fp16": 0.99, "int8": 0.97}


def _gate_agreement(entry: dict[str, Any], ref: np.ndarray, art: np.ndarray, opts: ConvertOptions) -> None:
    """Record (and gate) the retrieval-level fidelity of one extractor artifact."""
    from edge_shitu.converters.paddle_model import mean_row_cosine

    fid = entry["fidelity"]
    agree = top1_agreement(ref, art)
    fid.update(top1_agreement=round(agree, 4), gallery_cosine_mean=round(mean_row_cosine(ref, art), 6),
               agreement_images=len(ref))
    need = AGREEMENT_GATES.get(entry.get("precision", "fp32"), 0.97)
    if agree >= need:
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
    for d, what in ((rec_dir, "--rec"), (det_dir, "--det")):
        if d is not None and not Path(d).is_dir():
            raise EdgeShituError(f"{what} {d}: not a directory (pass the folder with inference.pdmodel)")
    check_kind(Path(rec_dir), "rec")  # before the gallery is decoded: a swapped pair fails in a second
    if det_dir is not None:
        check_kind(Path(det_dir), "det")
        det_preprocess_for(Path(det_dir))
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
    calib_imgs, verify_imgs = split_images(calib_pool, opts.n_calib, opts.n_verify)
    if opts.calib_dir:  # held-out verification photos come from the gallery
        _, verify_imgs = split_images(images, 0, opts.n_verify)
    with _workdir(opts) as work, atomic_dir(out) as root:
        models: dict[str, ModelResult] = {}
        if det_dir is not None:
            models["det"] = convert_model(Path(det_dir), "det", calib_imgs, verify_imgs, board.artifacts, root / "det",
                                          work, opts, say)
        models["rec"] = rec = convert_model(Path(rec_dir), "rec", calib_imgs, verify_imgs, board.artifacts,
                                            root / "rec", work, opts, say)
        pre = rec_preprocess_for(Path(rec_dir))
        # ---- the gallery: FP32 reference features (default) or the device's primary artifact's
        say(f"gallery: FP32 reference features of {len(images)} photos")
        ref_feats = embed(None, None, Path(rec_dir), pre, images)
        primary = f"tflite:{board.precision}" if board.backend == "tflite" else f"nb:x86:{board.precision}"
        primary_art = rec.runnable.get(primary) or next(iter(rec.runnable.values()), None)
        rows = spread_rows(len(images), opts.n_agree)
        feats, embedded_by = ref_feats, "paddle:fp32 reference"
        if opts.gallery_features == "artifact" and primary_art is not None:
            say(f"gallery: embedding {len(images)} photos with {primary_art.name}")
            feats, embedded_by = embed(primary_art, None, Path(rec_dir), pre, images), primary_art.name
        for entry in rec.entries:  # top-1 gallery-neighbour agreement of every runnable artifact
            path = rec.runnable.get(entry["kind"])
            if path is None:
                continue
            say(f"rec: top-1 neighbour agreement of {entry['kind']} on {len(rows)} gallery photos")
            art = feats[rows] if embedded_by == path.name else embed(path, None, Path(rec_dir), pre,
                                                                     [images[i] for i in rows])
            _gate_agreement(entry, ref_feats[rows], art, opts)
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
        manifest = _manifest(board, models, index, gallery, det_dir, Path(rec_dir), native, opts)
        write_manifest(root, manifest)
        from edge_shitu.converters.report import write_report

        write_report(root, manifest)
        say(f"bundle written: {out}")
    return manifest


def _manifest(board: Board, models: dict[str, ModelResult], index: GalleryIndex, gallery: Gallery,
              det_dir: Path | None, rec_dir: Path, native: dict[str, Any] | None,
              opts: ConvertOptions) -> dict[str, Any]:
    def model_block(m: ModelResult) -> dict[str, Any]:
        block = {"preprocess": m.preprocess, "artifacts": m.entries, "reference": m.reference}
        if m.pruning:
            block["pruning"] = m.pruning
        return block

    rec_block = model_block(models["rec"])
    rec_block["feature_dim"] = index.dim
    det_block = None
    if "det" in models:
        det_block = model_block(models["det"])
        det_block["postprocess"] = {"type": "picodet", "nms": "in-graph (.nb) / runtime (tflite)",
                                    "score_threshold": board.det.get("threshold", 0.2),
                                    "keep_top_k": board.det.get("max_det", 5)}
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
                    "rec_score_threshold": board.rec.get("score_threshold", 0.5),
                    "rec_nms_iou": board.rec.get("nms_iou", 0.05), "top_k": board.rec.get("top_k", 5)},
        "skipped_images": len(gallery.skipped),
        "warnings": opts.warnings,
    }
    if native:
        m["native_lib"] = native
    return m
