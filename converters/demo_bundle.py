"""The README demo (`make demo`): name every product on real shelf photos, end to end.

PP-ShiTu exists to name several products in one photo. The demo uses real weights on both sides:
the PP-PicoDet-S COCO detector (ONNX, raw GFL head; its product-like classes, one NMS across
them, stand in for PP-ShiTu's mainbody detector) and torchvision's ImageNet MobileNetV2 ported to
Paddle as the extractor (PP-ShiTu's trained weights cannot be downloaded here). `edge-shitu
convert` makes one bundle for the board (its TFLite artifacts) with EVERY gate passing (no
--allow-degraded): the detector on its boxes, the extractor on leave-one-out recall@1 of the
gallery (its int8 file through the mixed-precision ladder: the few layers int8 hurts most compute
in float at int8's size, cosine 0.993 -> 0.996, so near-tied products keep their FP32 labels);
the whole labelled gallery is indexed and the recognition threshold is chosen on held-out gallery
photos (never on the shelf photos). Then the device runtime (``Recognizer``: what `edge-shitu
recognize` runs) recognizes each shelf photo: detector candidates + the whole photo, NMS across
recognized boxes, and an annotated image with every product boxed and labelled in Chinese (a CJK
font is required: `make demo` installs one on Debian). Everything goes through the public API
(``edge_shitu.convert``, ``edge_shitu.Recognizer``), the calls the CLI makes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from edge_shitu.errors import EdgeShituError

LABEL_FILES = ("drink_label_all.txt", "drink_label.txt", "labels.txt")
# COCO classes a drink / grocery shelf's products are detected as; one NMS across them
PRODUCT_CLASSES = "bottle,wine glass,cup,bowl,vase,agnostic"


def _label_lines(gallery: Path) -> list[tuple[str, str]]:
    lf = next((gallery / n for n in LABEL_FILES if (gallery / n).exists()), None)
    if lf is not None:
        rows = [ln.split("\t") for ln in lf.read_text(encoding="utf-8").splitlines() if "\t" in ln]
        return [(r[0], r[-1]) for r in rows]
    from edge_shitu.gallery import read_gallery

    g = read_gallery(gallery, None)
    return [(str(it.path.relative_to(gallery)), it.label) for it in g.items]


def link_gallery(gallery: Path, work: Path, limit: Optional[int]) -> Path:
    """The gallery as a folder of links + labels.txt (the first ``limit`` photos: whole classes)."""
    rows = _label_lines(gallery)[: limit or None]
    if not rows:
        raise EdgeShituError(f"{gallery}: no labelled photos (class folders, or a 'path<TAB>label' labels file)")
    g = work / "gallery"
    if g.exists():
        shutil.rmtree(g)
    g.mkdir(parents=True)
    for rel, _ in rows:
        dst = g / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((gallery / rel).resolve(), dst)
    (g / "labels.txt").write_text("".join(f"{rel}\t{lab}\n" for rel, lab in rows), encoding="utf-8")
    return g


def shelf_photos(folder: Path) -> list[Path]:
    from edge_shitu.formats import IMAGE_SUFFIXES

    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise EdgeShituError(f"--photos {folder}: no images in it")
    return photos


def run_demo(gallery: Path, out: Path, *, photos: Path, det: Path, board: str = "rpi4", limit: Optional[int] = None,
             calib_images: int = 16, classes: str = PRODUCT_CLASSES, json_out: bool = False) -> dict[str, Any]:
    from edge_shitu import Recognizer, convert
    from edge_shitu.boards import load_board
    from edge_shitu.converters import mobilenet_v2
    from edge_shitu.formats import kinds
    from edge_shitu.visualize import draw_results, find_font

    t0 = time.perf_counter()
    shots = shelf_photos(photos)
    out.mkdir(parents=True, exist_ok=True)
    b = load_board(board).to_dict()
    tfl = [a for a in b["artifacts"] if a in kinds(backend="tflite")] or kinds(backend="tflite", precision="int8")
    b.update(name=f"{b['name']}-tflite", artifacts=tfl, backend="tflite")
    board_json = out / f"{b['name']}.json"
    board_json.write_text(json.dumps(b, indent=1), encoding="utf-8")
    rec = out / "mobilenet_v2_extractor"
    if not (rec / "inference.pdiparams").exists():
        print(f"demo: exporting the MobileNetV2 extractor to {rec}", file=sys.stderr)
        mobilenet_v2.export_extractor(None, rec)
    gal = link_gallery(gallery, out, limit)
    bundle = out / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    print(f"demo: converting {det.name} + MobileNetV2 for {b['name']} ({', '.join(tfl)}); gallery {gallery}",
          file=sys.stderr)
    manifest = convert(rec, gal, str(board_json), bundle, det=det, det_classes=classes, labels=gal / "labels.txt",
                       prune=False, n_calib=calib_images, calib_dir=photos, mixed_precision=("rec",))
    for w in manifest.get("warnings", []):
        print(f"edge-shitu: warning: {w}", file=sys.stderr)
    vis = out / "annotated"
    if vis.exists():
        shutil.rmtree(vis)
    vis.mkdir(parents=True)
    recognizer = Recognizer.open(bundle)
    labels = sorted({lab for _, lab in _label_lines(gal)})
    font = find_font(labels)
    if font is None:
        raise EdgeShituError("no installed font draws the gallery's Chinese labels: install one (Debian / Raspberry "
                             "Pi OS: sudo apt install fonts-wqy-microhei) or set EDGE_SHITU_FONT")
    results = []
    for p in shots:
        img = recognizer.load(p)
        res = recognizer.recognize(img)
        shot = draw_results(img, res.objects, vis / f"{p.stem}.jpg", font=font,
                            warn=lambda m: print(f"edge-shitu: warning: {m}", file=sys.stderr))
        results.append({"image": p.name, "visualization": str(shot), "ms": res.timings_ms.get("total"),
                        "detections": len(res.detections),
                        "objects": [o.to_dict() for o in res.objects]})
    summary = _summary(manifest, bundle, b["name"], results, vis, font, time.perf_counter() - t0)
    if json_out:
        print(json.dumps(summary, ensure_ascii=False, indent=1))
    else:
        _print(summary)
    return summary


def _summary(manifest: dict[str, Any], bundle: Path, board: str, results: list[dict[str, Any]], vis: Path,
             font: str, seconds: float) -> dict[str, Any]:
    def arts(part: str) -> dict[str, Any]:
        return {a["kind"]: {"bytes": a["bytes"], "cosine_mean": a["fidelity"].get("cosine_mean"),
                            "box_recall": a["fidelity"].get("box_recall_iou50"), "task": a["fidelity"].get("task"),
                            "mode": (a.get("details") or {}).get("int8_mode"),
                            "float_layers": len(((a.get("details") or {}).get("mixed_precision") or {}).get(
                                "float_layers") or []),
                            "degraded": bool(a["fidelity"].get("degraded"))} for a in manifest[part]["artifacts"]}

    return {"bundle": str(bundle), "board": board, "gallery_items": manifest["index"]["items"],
            "gallery_labels": manifest["index"]["labels"], "det": arts("det"), "rec": arts("rec"),
            "threshold": manifest.get("threshold_calibration"), "photos": results,
            "products": sum(len(r["objects"]) for r in results), "annotated": str(vis), "font": font,
            "seconds": round(seconds, 1)}


def _print(s: dict[str, Any]) -> None:
    print(f"\nbundle: {s['bundle']} (board {s['board']}; {s['gallery_items']} gallery photos, "
          f"{s['gallery_labels']} products)")
    for part in ("det", "rec"):
        for k, a in s[part].items():
            t = a["task"] or {}
            fig = (f"recall@1 {100 * t['recall_at_1']:.2f}% vs FP32 float {100 * t['reference_recall_at_1']:.2f}%"
                   if t else f"box recall {a['box_recall']:.3f}" if a["box_recall"] is not None
                   else f"cosine {a['cosine_mean']:.4f}")
            mode = ("  [16x8]" if a["mode"] and a["mode"].startswith("16x8")
                    else f"  [{a['float_layers']} float layers]" if a["float_layers"] else "")
            print(f"  {part} {k:<12} {a['bytes'] / 1e6:6.2f} MB  {fig}{mode}")
    th = s["threshold"] or {}
    print(f"  recognition threshold {th.get('threshold')}: {th.get('chosen_by')}")
    print(f"\n{s['products']} products recognized on {len(s['photos'])} shelf photos:")
    for r in s["photos"]:
        names = ", ".join(f"{o['label']} {o['score']:.2f}" for o in r["objects"]) or "-"
        print(f"  {r['image']:<10} {len(r['objects'])} ({r['detections']} detections, {r['ms'] or 0:.0f} ms): {names}")
    print(f"\nannotated images in {s['annotated']}/ (font {Path(s['font']).name}); took {s['seconds']:.0f} s")
