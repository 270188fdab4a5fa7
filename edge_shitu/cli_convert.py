"""``edge-shitu convert``, ``convert-model`` and ``synth-weights``: the workstation side.

These need the conversion stack (``pip install edge-shitu[convert]`` on Python 3.10); on a
device without it they say so in one line instead of failing on an import.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer

from edge_shitu.errors import EdgeShituError


def _need_stack() -> None:
    try:
        importlib.import_module("edge_shitu.converters.paddle_model")  # sets Paddle's environment first
        importlib.import_module("paddle")
    except ImportError:
        raise EdgeShituError("the conversion stack is not installed here: run 'make setup' (or pip install "
                             "'edge-shitu[convert]' on Python 3.10) on a workstation; devices only need the "
                             "runtime") from None


def count_stages(artifacts: tuple[str, ...] | list[str], prune: bool, models: int = 1, gallery: bool = False) -> int:
    """How many stage messages a conversion emits (one per long step), for the progress bar."""
    from edge_shitu.formats import artifact_format

    fmts = [artifact_format(a) for a in artifacts]
    nb = [f for f in fmts if f.family == "nb"]
    tfl = [f for f in fmts if f.family == "tflite"]
    per_model = int(prune) + int(any(f.source == "paddle-int8" for f in fmts)) + len(nb) + (2 if tfl else 0) + 1
    n = models * per_model
    if gallery:  # photo count, reference features, embedding, agreement per runnable artifact, done
        n += 4 + len(tfl) + sum(f.runs_here() for f in nb)
    return n


@contextlib.contextmanager
def _progress(enabled: bool, total: int | None = None) -> Iterator:
    """A rich progress bar over the conversion's stages, each stage logged with its time (stderr,
    so --json output on stdout stays clean). Stages are minutes long, so the bar counts stages."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not enabled:
        yield lambda msg: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=total)

        def say(msg: str) -> None:
            bar.console.log(msg)
            if not msg.startswith(("warning", "skipping")):
                bar.update(task, description=msg[:60], advance=1)

        yield say
        bar.update(task, completed=total)


PRE_HELP = ("Preprocessing of a model that does not carry it (ONNX, Paddle 3 without a config): a YAML file "
            "or 'size=320,fit=stretch,mean=0.485/0.456/0.406,...' (docs/model-inputs.md).")
CLASSES_HELP = ("Detector classes kept from a general (COCO) detector: names or 0-based ids, comma-separated "
                "(e.g. 'bottle,cup,wine glass'), or 'agnostic' (one NMS over all classes).")


def register(app: typer.Typer) -> None:
    @app.command()
    def convert(
        rec: Path = typer.Option(..., "--rec", help="Feature extractor: Paddle inference model folder "
                                 "(inference.pdmodel + inference.pdiparams), Paddle 3 folder (inference.json) "
                                 "or .onnx file."),
        gallery: Path = typer.Option(..., "--gallery", help="Gallery image root (PaddleClas layout)."),
        board: str = typer.Option(..., "--board", help="Target board (see 'edge-shitu boards')."),
        out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (replaced atomically)."),
        det: Optional[Path] = typer.Option(None, "--det", help="Mainbody detector: model folder (with infer_cfg.yml) "
                                           "or .onnx with a raw PicoDet/GFL head; omit for whole-image "
                                           "recognition."),
        det_preprocess: Optional[str] = typer.Option(None, "--det-preprocess", help=PRE_HELP),
        rec_preprocess: Optional[str] = typer.Option(None, "--rec-preprocess", help=PRE_HELP),
        det_classes: Optional[str] = typer.Option(None, "--det-classes", help=CLASSES_HELP),
        det_size: Optional[str] = typer.Option(None, "--det-size", help="Detector input size, H or HxW (a multiple "
                                               "of 32) or 'model': overrides the board's det.input_size; an ONNX "
                                               "detector of another fixed size is re-targeted to it."),
        labels: Optional[Path] = typer.Option(None, "--labels", help="'path<TAB>label' file (default: the one in the "
                                              "gallery root, or one sub-folder per label)."),
        calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images (default: the gallery)."),
        no_prune: bool = typer.Option(False, "--no-prune", help="Skip structured pruning."),
        prune_ratio: Optional[float] = typer.Option(None, "--prune-ratio", help="Uniform pruning ratio instead of the "
                                                    "sensitivity-driven one."),
        prune_method: str = typer.Option("sensitivity", "--prune-method", help="'sensitivity' (L1 norm under the "
                                         "cosine --fidelity-budget) or 'reconstruct' (the extractor's inverted-"
                                         "residual hidden channels, projections re-fitted by least squares, the "
                                         "largest cut within --prune-recall-budget; other models fall back)."),
        prune_recall_budget: float = typer.Option(1.0, "--prune-recall-budget", min=0.0, help="'reconstruct': "
                                                  "recall@1 points on your gallery that pruning may cost."),
        budget: float = typer.Option(0.99, "--fidelity-budget", help="Pruning keeps the mean cosine vs FP32 >= this."),
        allow_degraded: bool = typer.Option(False, "--allow-degraded", help="Keep artifacts that miss their fidelity "
                                            "threshold (with a warning) instead of failing."),
        bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="Extractor int8 "
                                             "TFLite: also make a twin with each conv's bias corrected by its "
                                             "measured mean error (layer by layer), verify both, keep the one closer "
                                             "to FP32 (about 50 s more for MobileNetV2 on 2 cores)."),
        equalize: bool = typer.Option(True, "--equalize/--no-equalize", help="Extractor: equalize the channel "
                                      "ranges of its linear residual streams before int8 (the FP32 function is "
                                      "unchanged; MobileNetV2 int8 cosine 0.989 -> 0.992). No-op without them."),
        weight_rounding: bool = typer.Option(False, "--weight-rounding/--no-weight-rounding", help="Extractor int8 "
                                             "TFLite: also make a twin whose int8 weights are re-rounded to lower "
                                             "each layer's output error (AdaRound's objective), verify it, keep it "
                                             "where it is closer to FP32."),
        mixed_precision: bool = typer.Option(False, "--mixed-precision", help="int8 TFLite that misses its "
                                             "default gate: try files with the most int8-sensitive layers kept "
                                             "float, fewest first, and keep the first that passes. Extractors: the "
                                             "float layers keep int8 weights (behind a DEQUANTIZE), so the file is "
                                             "no larger; MobileNetV2: cosine 0.993 -> 0.996 at 0.97x the int8 "
                                             "size, about 70 s more. Raw-GFL detectors: before the 16x8 fallback, "
                                             "about 2 min more; PicoDet-S COCO does not pass (docs/benchmarks.md). "
                                             "The manifest names the float layers, the size and the latency."),
        bits: Optional[int] = typer.Option(None, "--bits", help="Index code width (default: the board's)."),
        calib_images: int = typer.Option(32, "--calib-images", min=1, help="How many photos calibrate int8 PTQ."),
        verify_images: int = typer.Option(16, "--verify-images", min=1, help="How many held-out photos every "
                                          "artifact is compared with the FP32 reference on."),
        agree_images: int = typer.Option(400, "--agree-images", min=2, help="How many gallery photos the top-1 "
                                         "neighbour agreement of each extractor artifact is measured on (the "
                                         "gate only when the gallery has too few same-label pairs)."),
        recall_budget: float = typer.Option(1.0, "--recall-budget", min=0.0, help="How many points of "
                                            "leave-one-out recall@1 on your gallery an extractor artifact may "
                                            "lose against FP32 float search, searched as the board searches "
                                            "(hash index, re-rank). This is the extractor's gate; cosine is only "
                                            "a sanity floor. Never finer than one query (100/queries points) "
                                            "unless 0."),
        recall_sample: int = typer.Option(2000, "--recall-sample", min=20, help="At most this many gallery photos "
                                          "(whole labels, seeded) are embedded per artifact for the recall gate."),
        gallery_features: str = typer.Option(
            "reference", "--gallery-features", help="What embeds the gallery index: 'reference' (FP32 Paddle on "
            "this machine: the cleanest gallery, the device's queries carry the only quantization noise; the "
            "pruned FP32 program when pruning removed channels) or "
            "'artifact' (the board's primary artifact, as 'gallery add' on the device does)."),
        json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    ) -> None:
        """Prune, int8-quantize, export and verify the models; embed the gallery; write one bundle.

        Every artifact is checked against the FP32 reference on held-out gallery photos; an
        extractor is gated on your gallery's leave-one-out recall@1 (--recall-budget), a detector
        on its boxes. One that misses its gate stops the run (nothing is written) unless
        --allow-degraded.
        """
        from edge_shitu.boards import load_board

        load_board(board)  # a wrong board name fails before anything heavy
        if gallery_features not in ("reference", "artifact"):
            raise EdgeShituError(f"--gallery-features {gallery_features}: use 'reference' or 'artifact'")
        if prune_method not in ("sensitivity", "reconstruct"):
            raise EdgeShituError(f"--prune-method {prune_method}: use 'sensitivity' or 'reconstruct'")
        if det_size is not None:  # a malformed size fails before anything heavy
            from edge_shitu.converters.onnx_resize import detector_size

            detector_size(load_board(board), det_size)
        _need_stack()
        from edge_shitu import convert as run

        b = load_board(board)
        total = count_stages(b.artifacts, not no_prune, models=2 if det else 1, gallery=True)
        with _progress(not json_out, total) as say:
            manifest = run(rec, gallery, board, out, det=det, labels=labels, progress=say, prune=not no_prune,
                           prune_ratio=prune_ratio, prune_method=prune_method,
                           prune_recall_budget=prune_recall_budget, fidelity_budget=budget, calib_dir=calib,
                           allow_degraded=allow_degraded, bias_correction=bias_correction,
                           weight_rounding=weight_rounding, equalize=equalize,
                           mixed_precision=mixed_precision, bits=bits,
                           n_calib=calib_images, n_verify=verify_images,
                           n_agree=agree_images, gallery_features=gallery_features, det_preprocess=det_preprocess,
                           recall_budget=recall_budget, recall_sample=recall_sample,
                           rec_preprocess=rec_preprocess, det_classes=det_classes, det_size=det_size)
        if json_out:
            typer.echo(json.dumps(manifest, ensure_ascii=False, indent=1))
        else:
            typer.echo(f"bundle: {out} (see {out / 'report.md'})")
        for w in manifest.get("warnings", []):  # stderr in both modes: --json keeps stdout parseable
            typer.echo(f"warning: {w}", err=True)

    @app.command("convert-model")
    def convert_model(
        model: Path = typer.Argument(..., help="Paddle inference model folder, Paddle 3 folder (inference.json) or "
                                     ".onnx file."),
        kind: Optional[str] = typer.Option(None, "--kind", help="'det' (mainbody detector) or 'rec' (feature "
                                           "extractor); default: recognised from the model's interface."),
        preprocess: Optional[str] = typer.Option(None, "--preprocess", help=PRE_HELP),
        det_classes: Optional[str] = typer.Option(None, "--det-classes", help=CLASSES_HELP),
        det_size: Optional[str] = typer.Option(None, "--det-size", help="Detector input size, H or HxW or 'model' "
                                               "(default: the board's det.input_size); as for 'convert'."),
        calib: Path = typer.Option(..., "--calib", help="Folder of calibration images."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the artifacts."),
        board: str = typer.Option("x86-64", "--board", help="Which artifacts to emit (a board's list)."),
        no_prune: bool = typer.Option(False, "--no-prune", help="Skip structured pruning."),
        allow_degraded: bool = typer.Option(False, "--allow-degraded", help="Keep artifacts below threshold."),
        mixed_precision: bool = typer.Option(False, "--mixed-precision", help="As for 'convert': the "
                                             "mixed-precision int8 ladder."),
        bias_correction: bool = typer.Option(True, "--bias-correction/--no-bias-correction", help="As for "
                                             "'convert': an extractor's int8 TFLite twin with corrected biases."),
        equalize: bool = typer.Option(True, "--equalize/--no-equalize", help="As for 'convert': residual-stream "
                                      "channel equalization before int8."),
        weight_rounding: bool = typer.Option(False, "--weight-rounding/--no-weight-rounding", help="As for "
                                             "'convert': an int8 TFLite twin with output-aware weight rounding."),
        calib_images: int = typer.Option(32, "--calib-images", min=1, help="How many photos calibrate int8 PTQ."),
        verify_images: int = typer.Option(16, "--verify-images", min=1, help="How many held-out photos every "
                                          "artifact is compared with the FP32 reference on."),
        json_out: bool = typer.Option(False, "--json", help="Print the artifact list as JSON."),
    ) -> None:
        """Convert and verify one model (no gallery, no bundle).

        The photos in --calib are split into calibration and held-out verification sets; the
        artifacts of the board's list land in OUT/KIND/ with OUT/artifacts.json describing them.
        """
        from edge_shitu.boards import load_board
        from edge_shitu.converters.model_input import inspect_model

        if kind not in (None, "det", "rec"):
            raise EdgeShituError(f"--kind {kind}: use 'det' or 'rec'")
        if kind is None:  # recognised from the interface; anything but a model fails here, in one line
            info = inspect_model(model)
            kind = info.kind
        if kind is None:
            raise EdgeShituError(f"{model}: cannot tell a detector from an extractor ({info.kind_reason}): pass --kind")
        b = load_board(board)
        if kind == "det":  # a malformed --det-size fails before anything heavy
            from edge_shitu.converters.onnx_resize import detector_at_size, detector_size, record_native_size_recall

            detector_size(b, det_size)
        _need_stack()
        import tempfile

        from edge_shitu.atomic import atomic_dir
        from edge_shitu.converters.convert import ConvertOptions, check_input, load_calib_dir, split_images
        from edge_shitu.converters.convert import convert_model as run

        opts = ConvertOptions(prune=not no_prune, allow_degraded=allow_degraded, mixed_precision=mixed_precision,
                              bias_correction=bias_correction, weight_rounding=weight_rounding, equalize=equalize,
                              n_calib=calib_images,
                              n_verify=verify_images, preprocess={kind: preprocess} if preprocess else {},
                              det_classes=det_classes)
        check_input(model, kind, opts)  # a model of the wrong kind fails before any photo is decoded
        with _progress(not json_out, count_stages(b.artifacts, not no_prune)) as say:
            images = load_calib_dir(calib, say)
            cal, ver = split_images(images, opts.n_calib, opts.n_verify)
            with tempfile.TemporaryDirectory(prefix="edge-shitu-") as work, atomic_dir(out) as root:
                src, sizes = detector_at_size(model, b, det_size, Path(work), opts.warnings, say) if kind == "det" \
                    else (model, None)
                result = run(src, kind, cal, ver, b.artifacts, root / kind, Path(work), opts, say)
                if sizes is not None:  # the board's size vs the model's own (informational)
                    record_native_size_recall(result, sizes, ver, say)
                (root / "artifacts.json").write_text(json.dumps(result.entries, indent=1, ensure_ascii=False))
        if json_out:
            typer.echo(json.dumps(result.entries, ensure_ascii=False, indent=1))
        else:
            for e in result.entries:
                typer.echo(f"{e['kind']:<12} {e['bytes']:>10} bytes  {e['file']}")
        for w in opts.warnings:
            typer.echo(f"warning: {w}", err=True)

    @app.command("synth-weights")
    def synth_weights(
        graph: Path = typer.Argument(..., help="Folder with inference.pdmodel (weights absent)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the runnable model."),
        seed: int = typer.Option(0, help="Random seed (the weights are deterministic per seed)."),
        calib: Optional[Path] = typer.Option(None, "--calib", help="Photos to set batch-norm statistics from "
                                             "(default: statistics of random inputs)."),
    ) -> None:
        """Give a graph-only Paddle model deterministic, well-conditioned weights (for tests/benchmarks).

        Every persistable variable of the program gets its declared shape; batch-norm statistics
        are measured (on --calib photos when given), so activations stay in a sane range.
        """
        _need_stack()
        from edge_shitu.converters.synth_weights import synthesize

        kw = {}
        if calib is not None:
            from edge_shitu.converters.convert import load_calib_dir

            kw["calib_images"] = load_calib_dir(calib, lambda m: typer.echo(m, err=True))[:8]
        report = synthesize(graph, out, seed=seed, **kw)
        typer.echo(f"wrote {out}: {report}")

    @app.command("demo-bundle")
    def demo_bundle(
        gallery: Optional[Path] = typer.Option(None, "--gallery", help="A labelled gallery (class folders, or "
                                               "'path<TAB>label' lines); default: ../shared/assets/drink/gallery "
                                               "with drink_label_all.txt (212 products)."),
        photos: Optional[Path] = typer.Option(None, "--photos", help="Shelf photos to recognize; default: "
                                              "../shared/assets/drink/test_images (13 photos)."),
        det: Optional[Path] = typer.Option(None, "--det", help="Detector ONNX with a raw PicoDet/GFL head; default: "
                                           "the real PP-PicoDet-S COCO 416 of ../shared/assets."),
        out: Path = typer.Option(Path("build/demo"), "--out", "-o", help="Working folder: extractor, bundle "
                                 "(out/bundle), annotated photos (out/annotated)."),
        board: str = typer.Option("rpi4", help="Board to convert for (its TFLite artifacts)."),
        limit: Optional[int] = typer.Option(None, min=10, help="Use only the first N gallery photos (quicker)."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """The README demo: name every product on real shelf photos with real weights end to end.

        The real PP-PicoDet-S COCO detector (product-like classes) and torchvision's ImageNet
        MobileNetV2 extractor are converted with 'edge-shitu convert' for the board, every gate
        passing; the whole gallery is indexed and the recognition threshold chosen on held-out
        gallery photos; then the device runtime recognizes every shelf photo and writes it annotated,
        each product boxed and labelled (in Chinese: a CJK font is needed).
        """
        _need_stack()
        from edge_shitu.assets import DRINK_GALLERY, DRINK_TEST_IMAGES, PICODET_S_416, asset
        from edge_shitu.converters.demo_bundle import run_demo

        hint = "or put the shared assets at ../shared/assets (EDGE_SHITU_ASSETS)"
        defaults = {"--gallery": (gallery, DRINK_GALLERY), "--photos": (photos, DRINK_TEST_IMAGES),
                    "--det": (det, PICODET_S_416)}
        chosen: dict[str, Path] = {}
        for opt, (given, parts) in defaults.items():
            path = given if given is not None else asset(*parts)
            if path is None:
                raise EdgeShituError(f"no {opt[2:]}: pass {opt} PATH, {hint}")
            if not Path(path).exists() or (opt != "--det" and not Path(path).is_dir()):
                raise EdgeShituError(f"{opt} {path}: not {'a file' if opt == '--det' else 'a directory'}")
            chosen[opt] = Path(path)
        run_demo(chosen["--gallery"], out, photos=chosen["--photos"], det=chosen["--det"], board=board, limit=limit,
                 json_out=json_out)
