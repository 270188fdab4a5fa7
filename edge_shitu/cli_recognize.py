"""``edge-shitu recognize | camera | gallery …``: the device side of a bundle.

Nothing here needs the conversion stack: numpy, Pillow and a TFLite runtime (or Paddle Lite)
are enough. Batches carry on past a bad image and say at the end which ones failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional  # List: typer evaluates command annotations (Python 3.8)

import typer

from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery import expand_images

gallery_app = typer.Typer(
    help="Edit a bundle's gallery on the device: add photos of a new product, remove items; or build a "
    "whole gallery index on a workstation or a Ray cluster ('gallery build').\n\n"
    "add / remove / list: the bundle's own detector and extractor embed the photos; the index file is "
    "changed in place, atomically and under a lock. No conversion stack needed.",
    no_args_is_help=True,
)

BACKEND_HELP = "Inference engine: 'tflite' (ai-edge-litert / tflite-runtime) or 'nb' (Paddle Lite). " \
               "Default: the bundle's board config."
PRECISION_HELP = "Artifact precision: int8, fp16 or fp32 (default: the board config's)."
THREADS_HELP = "Inference threads (default: the board config's)."


def _err(msg: str) -> None:
    typer.echo(f"edge-shitu: {msg}", err=True)


def _open(bundle: Path, backend: Optional[str], precision: Optional[str], threads: Optional[int],
          **settings: Any) -> Any:
    from edge_shitu.recognizer import Recognizer

    return Recognizer.open(bundle, backend=backend, precision=precision, threads=threads, **settings)


def register(app: typer.Typer) -> None:
    from edge_shitu.cli_gallery_build import register as register_gallery_build

    register_gallery_build(gallery_app)
    app.command("recognize")(recognize)
    app.command("camera")(camera)
    app.add_typer(gallery_app, name="gallery")


# ----------------------------------------------------------------------------- recognize
def recognize(
    bundle: Path = typer.Argument(..., help="The bundle folder written by 'edge-shitu convert'."),
    images: List[Path] = typer.Argument(..., help="Photos (JPEG/PNG/...) or folders of photos."),  # noqa: UP006
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (per image: boxes, labels, "
                                  "scores, gallery ids, stage timings in ms)."),
    save_vis: Optional[Path] = typer.Option(None, "--save-vis", help="Folder for annotated copies of the "
                                            "photos (boxes + labels, Chinese labels included)."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, min=1, help=THREADS_HELP),
    det_precision: Optional[str] = typer.Option(None, help="Another precision for the detector alone "
                                                "(e.g. fp32 detector + int8 extractor)."),
    threshold: Optional[float] = typer.Option(None, help="Recognition score needed to report a label "
                                              "(cosine; default: the board config's)."),
    det_threshold: Optional[float] = typer.Option(None, help="Detector score needed to keep a box."),
    max_det: Optional[int] = typer.Option(None, min=0, help="Most detections recognized per photo."),
    rerank: Optional[int] = typer.Option(None, min=0, help="Re-rank this many Hamming candidates with the "
                                         "float query (default: the bundle's)."),
    font: Optional[str] = typer.Option(None, help="TrueType/OpenType font for --save-vis labels (default: "
                                       "the first installed font that draws them)."),
) -> None:
    """Recognize the products in photos: detect, embed each object, search the gallery.

    PP-ShiTu's steps: the detector's boxes plus the whole photo are each embedded and searched;
    a box is reported with its top-1 gallery label when the score passes the threshold, and
    overlapping results are merged by NMS. A photo that cannot be read is reported and skipped;
    the exit code is 1 when any photo failed.

    Example: edge-shitu recognize bundle/ shelf.jpg more_photos/ --save-vis out/ --json
    """
    pipe = _open(bundle, backend, precision, threads, rec_score_threshold=threshold, det_threshold=det_threshold,
                 max_det=max_det, rerank=rerank, det_precision=det_precision)
    files = list(expand_images(images))
    if not files:
        raise EdgeShituError(f"no images found in {', '.join(map(str, images))}: pass photos or folders of photos")
    if save_vis is not None:
        save_vis.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    used_names: set[str] = set()
    for f in files:
        try:
            img = pipe.load(f)
            res = pipe.recognize(img)
        except EdgeShituError as e:
            failed.append(str(f))
            _err(f"error: {e}")
            results.append({"image": str(f), "error": str(e)})
            continue
        entry: dict[str, Any] = {"image": str(f), **res.to_dict()}
        if save_vis is not None:
            from edge_shitu.visualize import draw_results

            out = draw_results(img, res.objects, save_vis / _vis_name(f, used_names), font=font,
                               warn=lambda m: _err(f"warning: {m}"))
            entry["visualization"] = str(out)
        results.append(entry)
        if not json_out:
            _print_result(entry)
    if json_out:
        typer.echo(json.dumps({"bundle": str(bundle), "artifact": pipe.artifact_kind,
                               "kernel": pipe.searcher.index.kernel, "images": results,
                               "failed": failed}, ensure_ascii=False, indent=1))
    if failed:
        _err(f"error: {len(failed)} of {len(files)} image(s) failed: {', '.join(failed)}")
        raise typer.Exit(1)


def _vis_name(f: Path, used: set[str]) -> str:
    """A unique file name per photo: gallery folders reuse names (0.jpg in every class folder)."""
    name = f"{f.stem}.jpg"
    parts = [p for p in f.parent.parts if p not in ("/", "")]
    while name in used and parts:
        name = f"{parts.pop()}_{name}"
    n = 1
    base = name
    while name in used:
        name, n = f"{Path(base).stem}-{n}.jpg", n + 1
    used.add(name)
    return name


def _print_result(entry: dict[str, Any]) -> None:
    t = entry["timings_ms"]
    objs = entry["objects"]
    typer.echo(f"{entry['image']}: {len(objs)} object(s) in {t.get('total', 0):.1f} ms "
               f"(det {t.get('det_infer', 0):.1f}, rec {t.get('rec_infer', 0):.1f}, search {t.get('search', 0):.2f})"
               + (f" -> {entry['visualization']}" if "visualization" in entry else ""))
    for o in objs:
        typer.echo(f"  {o['label']}  score {o['score']:.3f}  id {o['id']}  box {o['box']}  ({o['source']})")


# ----------------------------------------------------------------------------- camera
def camera(
    bundle: Path = typer.Argument(..., help="The bundle folder."),
    device: str = typer.Option("0", "--device", help="Camera index (/dev/videoN) or a video file / stream URL."),
    frames: int = typer.Option(0, min=0, help="Stop after this many frames (0: until Ctrl-C / end of video)."),
    every: int = typer.Option(30, min=1, help="Print fps and the latest labels every N frames."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, min=1, help=THREADS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON line per report instead of text."),
) -> None:
    """Recognize products live from a USB/CSI camera (needs OpenCV: pip install opencv-python-headless).

    On a Raspberry Pi CSI camera, use the V4L2 device the libcamera stack exposes (--device 0) or a
    GStreamer pipeline string. Prints frames per second and what is in view.
    """
    import time

    try:
        import cv2
    except ImportError:
        raise EdgeShituError("the camera command needs OpenCV: pip install opencv-python-headless "
                             "(or apt install python3-opencv)") from None
    pipe = _open(bundle, backend, precision, threads)
    src: Any = int(device) if device.isdigit() else device
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise EdgeShituError(f"cannot open camera/video {device!r}: check the device number (ls /dev/video*) "
                             "or the file path")
    n, t0, last = 0, time.perf_counter(), None
    try:
        while frames == 0 or n < frames:
            ok, frame = cap.read()
            if not ok:
                break
            last = pipe.recognize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            n += 1
            if n % every == 0 or n == frames:
                _camera_report(n, time.perf_counter() - t0, last, json_out)
    except KeyboardInterrupt:
        pass
    finally:
        cap.release()
    if n == 0:
        raise EdgeShituError(f"no frame could be read from {device!r}")
    if n % every != 0 and n != frames:
        _camera_report(n, time.perf_counter() - t0, last, json_out)


def _camera_report(n: int, seconds: float, last: Any, json_out: bool) -> None:
    fps = n / seconds if seconds > 0 else 0.0
    labels = [o.label for o in last.objects] if last is not None else []
    if json_out:
        typer.echo(json.dumps({"frames": n, "fps": round(fps, 2), "labels": labels,
                               "last_ms": round(last.timings_ms.get("total", 0), 2) if last else None},
                              ensure_ascii=False))
    else:
        typer.echo(f"{n} frames, {fps:.2f} fps; in view: {', '.join(labels) or 'nothing recognized'}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- gallery
@gallery_app.command("add")
def gallery_add(
    bundle: Path = typer.Argument(..., help="The bundle folder."),
    images: List[Path] = typer.Argument(..., help="Photos of the product (or folders of photos)."),  # noqa: UP006
    label: str = typer.Option(..., "--label", "-l", help="The product's label (any UTF-8 text)."),
    whole_image: bool = typer.Option(False, "--whole-image", help="Embed the whole photo instead of the "
                                     "detector's main object (the convert gallery is embedded whole)."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the new ids as JSON."),
) -> None:
    """Add photos of a product to the bundle's gallery (detect the main object, embed, append).

    The new items are searchable at once; nothing is rebuilt. Unreadable photos are reported and
    skipped (exit code 1), the others are still added.
    """
    if not label.strip():
        raise EdgeShituError("--label must not be empty")
    res = _open(bundle, backend, precision, 1).add_to_gallery(images, label, whole_image=whole_image)
    for _, why in res.failed:
        _err(f"error: {why}")
    if json_out:
        typer.echo(json.dumps(res.to_dict(), ensure_ascii=False))
    else:
        for a in res.added:
            typer.echo(f"added id {a['id']} '{label}' from {a['image']} (box {a['box']})")
        typer.echo(f"gallery now has {res.items} items")
    if res.failed:
        n = len(res.failed) + len(res.added)
        _err(f"error: {len(res.failed)} of {n} photo(s) failed: {', '.join(f for f, _ in res.failed)}")
        raise typer.Exit(1)


@gallery_app.command("remove")
def gallery_remove(
    bundle: Path = typer.Argument(..., help="The bundle folder."),
    ids: Optional[List[int]] = typer.Argument(None, help="Gallery ids to remove (see 'gallery list')."),  # noqa: UP006
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Remove every item with this label."),
    json_out: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Remove gallery items by id or by label; they stop matching at once."""
    from edge_shitu.gallery_ops import remove_items

    if not ids and label is None:
        raise EdgeShituError("say what to remove: gallery ids, or --label L")
    res = remove_items(bundle, ids or [], label)
    if json_out:
        typer.echo(json.dumps(res.to_dict()))
    else:
        typer.echo(f"removed {res.removed} item(s); gallery now has {res.items} items")


@gallery_app.command("list")
def gallery_list(
    bundle: Path = typer.Argument(..., help="The bundle folder."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Only this label."),
    json_out: bool = typer.Option(False, "--json", help="Print {label: [ids]} as JSON."),
) -> None:
    """List the gallery's labels with their item ids."""
    from edge_shitu.gallery_ops import list_items

    by_label = list_items(bundle, label)
    if json_out:
        typer.echo(json.dumps(by_label, ensure_ascii=False))
        return
    for lab, idl in by_label.items():
        typer.echo(f"{lab}\t{len(idl)}\t{' '.join(map(str, idl))}")
