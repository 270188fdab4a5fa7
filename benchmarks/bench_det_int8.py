"""The detector's int8 rungs: FP32 vs mixed-precision int8 vs 16x8 TFLite, speed and boxes.

Takes the output of one ``edge-shitu convert-model`` run of a raw-GFL-head detector (PicoDet-S
COCO 416 by default) and times, on the same shelf photos, interleaved (each photo: every file,
``--repeats`` times, median kept), with the project's TFLite backend:

- ``tflite:fp32`` as shipped;
- ``tflite:int8`` as shipped (the rung ``to_tflite`` chose: mixed-precision int8 when one of its
  candidates passed the box gate, see its ``details["mixed_precision"]``);
- the 16x8 file (int16 activations, int8 weights) the previous rung would ship, built here from
  the FP32 file with the same calibrator ``export_tflite._a16w8`` uses (in a child process:
  TensorFlow), on the first ``--calib-images`` photos of ``--calib``; cached.

Box recall: each file's boxes (scoring >= 0.25, as the GFL gate counts them) matched at IoU 0.5 in
photo pixels against FP32 onnxruntime's (scoring >= 0.3).

    edge-shitu convert-model picodet_s_416_coco.onnx --kind det --det-classes agnostic \\
        --calib CALIB --calib-images 16 --verify-images 8 --no-prune --board rpi4 -o OUT --json
    python benchmarks/bench_det_int8.py --artifacts OUT --calib CALIB

Writes benchmarks/results/bench_det_int8.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_shitu.assets import DRINK_TEST_IMAGES, PICODET_S_416, asset  # noqa: E402
from edge_shitu.timing import interleaved, median_ms  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "det_int8"
A16W8_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from edge_shitu.converters.export_tflite import _a16w8
    calib = np.load(sys.argv[2])

    def rep():
        for i in range(len(calib)):
            yield {"image": calib[i:i + 1]}

    _a16w8(Path(sys.argv[1]), rep, Path(sys.argv[3]))
""")


def _a16w8_file(fp32: Path, calib: np.ndarray) -> Path:
    """The 16x8 file of ``fp32`` (cached by the FP32 file's size and mtime and the image count)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    st = fp32.stat()
    out = CACHE / f"{fp32.stem}_{st.st_size}_{int(st.st_mtime)}_{len(calib)}_a16w8.tflite"
    if out.exists():
        return out
    npy = CACHE / "calib.npy"
    np.save(npy, calib)
    tmp = out.with_suffix(".part")
    t0 = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run([sys.executable, "-c", A16W8_CHILD, str(fp32), str(npy), str(tmp)], capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"16x8 calibration failed: {proc.stderr[-1500:]}")
    os.replace(tmp, out)  # complete files only
    print(f"  16x8 file: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True, help="output folder of convert-model --kind det")
    ap.add_argument("--calib", type=Path, required=True, help="the photos convert-model calibrated on")
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--det", type=Path, default=None, help="the ONNX detector (default: PicoDet-S 416): the reference")
    ap.add_argument("--photos", type=Path, default=None, help="default: the 13 drink shelf photos")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--repeats", type=int, default=5, help="runs per photo and file (median kept)")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=FILE",
                    help="another TFLite file of the same detector to time (e.g. a mixed-precision candidate)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_det_int8.json")
    args = ap.parse_args()

    from edge_shitu.converters.model_input import inspect_model
    from edge_shitu.converters.preprocess_spec import parse_spec
    from edge_shitu.converters.verify import GFL_GATE_SCORE, GFL_SCORE_MARGIN, compare_boxes, gfl_photo_boxes
    from edge_shitu.gallery import expand_images
    from edge_shitu.gfl_head import GFLHead
    from edge_shitu.preprocess import load_image
    from edge_shitu.runtimes.backend import open_backend

    det = args.det or asset(*PICODET_S_416)
    photos_dir = args.photos or asset(*DRINK_TEST_IMAGES)
    if det is None or photos_dir is None:
        raise SystemExit("no detector / photos: pass --det and --photos (or put ../shared/assets beside the project)")
    entries = {e["kind"]: e for e in json.loads((args.artifacts / "artifacts.json").read_text(encoding="utf-8"))}
    fp32, int8 = entries["tflite:fp32"], entries["tflite:int8"]
    det_dir = args.artifacts  # entries name their files relative to the output folder (det/...)
    info = inspect_model(det)  # the head as convert-model recognised it (class-agnostic: a mainbody detector)
    size = info.input_size()
    assert size is not None
    head = GFLHead.from_output_shapes(size, [(t.name, t.shape) for t in info.outputs], image=info.image_input.name,
                                      class_agnostic=True)
    pre = parse_spec(None, "det", model_size=size).det_preprocess()
    calib = np.concatenate([pre(load_image(p))["image"] for p in list(expand_images([args.calib]))[:args.calib_images]])
    a16 = _a16w8_file(det_dir / fp32["file"], calib.transpose(0, 2, 3, 1).astype(np.float32))
    mixed = int8["details"].get("mixed_precision") or {}
    configs = [
        {"name": "fp32", "path": det_dir / fp32["file"], "mode": "fp32"},
        {"name": "int8 (shipped)", "path": det_dir / int8["file"], "mode": int8["details"].get("int8_mode", "")},
        {"name": "16x8", "path": a16, "mode": "int16 activations, int8 weights (reference kernels)"},
    ]
    for spec in args.extra:
        label, _, path = spec.partition("=")
        configs.append({"name": label, "path": Path(path), "mode": "extra file"})
    photos = [load_image(p) for p in expand_images([photos_dir])]
    ref = open_backend(det, "onnx", 1)
    ref_boxes = [gfl_photo_boxes(ref, pre, head, im, GFL_GATE_SCORE) for im in photos]
    for c in configs:
        be = open_backend(c["path"], "tflite", 1)
        c["bytes"] = Path(c["path"]).stat().st_size
        c["boxes"] = compare_boxes(ref_boxes, [gfl_photo_boxes(be, pre, head, im, GFL_GATE_SCORE - GFL_SCORE_MARGIN)
                                               for im in photos])

    threads = [int(t) for t in args.threads.split(",")]
    timing: dict[int, list[list[float]]] = {}
    for t in threads:  # interleaved: every file sees the same machine load, photo by photo
        runners = [open_backend(c["path"], "tflite", t) for c in configs]
        per: list[list[float]] = [[] for _ in configs]
        for im in photos:
            x = pre(im)["image"]
            runs = interleaved({i: partial(be.run, {be.inputs[0].name: x}) for i, be in enumerate(runners)},
                               args.repeats, warmup=1)
            for i, ms in median_ms(runs).items():
                per[i].append(ms)
        timing[t] = per

    print(f"\n{det.name}, {len(photos)} photos ({photos_dir.name}), TFLite backend, median of {args.repeats} runs per "
          f"photo, mean over photos; box recall at IoU 0.5 vs FP32 onnxruntime")
    cells = " ".join(f"{f'ms {t}t':>9} {f'x fp32 {t}t':>10}" for t in threads)
    print(f"{'file':<22} {'MB':>5} {cells} {'recall':>7} {'matched':>8}")
    rows = []
    for i, c in enumerate(configs):
        b = c["boxes"]
        ms = {t: float(np.mean(timing[t][i])) for t in threads}
        vs = {t: float(np.mean(timing[t][0])) / ms[t] for t in threads}
        print(f"{c['name']:<22} {c['bytes'] / 1e6:>5.2f} " + " ".join(f"{ms[t]:>9.1f} {vs[t]:>10.2f}" for t in threads)
              + f" {b.matched_frac:>7.3f} {f'{b.matched}/{b.ref_boxes}':>8}")
        rows.append({"name": c["name"], "file": Path(c["path"]).name, "bytes": c["bytes"], "mode": c["mode"],
                     "infer_ms": {str(t): round(ms[t], 2) for t in threads},
                     "speed_vs_fp32": {str(t): round(vs[t], 3) for t in threads},
                     "box_recall": round(b.matched_frac, 4), "matched": b.matched, "ref_boxes": b.ref_boxes,
                     "art_boxes": b.art_boxes})
    print(f"int8 mode: {int8['details'].get('int8_mode', '')}")
    if mixed:
        print(f"mixed precision: {len(mixed.get('float_layers', []))} float layers; tried "
              + ", ".join(f"k={r['k']} ({r['float_layers']} layers): {'pass' if r.get('passed') else 'miss'}"
                          for r in mixed.get("candidates_tried", [])))
    result = {"detector": str(det), "photos": len(photos), "photos_dir": str(photos_dir), "threads": threads,
              "repeats": args.repeats, "reference": f"onnxruntime FP32, boxes scoring >= {GFL_GATE_SCORE}",
              "candidate_min_score": GFL_GATE_SCORE - GFL_SCORE_MARGIN, "rows": rows,
              "int8_fidelity": int8.get("fidelity"), "mixed_precision": mixed,
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
