"""The device runtime: PP-ShiTu recognition from a bundle, its CLI, gallery edits, bad input.

Fast tier (runs in the device venv too: numpy + Pillow only): NMS over recognized boxes with
PaddleClas's semantics, the searchers, Chinese labels drawn with a font that really has the
glyphs.

Integration tier: the session's rpi4 bundle (tests/bundles.py: real PP-ShiTu detector + v1
extractor graphs with synthesized weights, TFLite int8/fp32, real drink photos) recognized
through `edge-shitu recognize`, edited with `edge-shitu gallery add/remove`, and fed every kind
of bad input a shop will produce.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_shitu.pipeline import FloatSearcher, HammingSearcher, Recognized, Settings, nms_recognized


def _obj(box: list[int], score: float, label: str = "x", gid: int = 0) -> Recognized:
    return Recognized(box, label, score, gid, None, "det")


# ============================================================================ fast tier
def test_nms_over_recognized_boxes_keeps_best_and_disjoint() -> None:
    a = _obj([0, 0, 100, 100], 0.9, "a")
    b = _obj([10, 10, 110, 110], 0.95, "b")  # overlaps a a lot: a goes
    c = _obj([200, 200, 260, 260], 0.6, "c")
    d = _obj([150, 150, 500, 500], 0.7, "whole")  # contains c: IoU 61^2 / 351^2 = 0.030 <= 0.05, both stay
    kept = nms_recognized([a, b, c, d], 0.05)
    assert [o.label for o in kept] == ["b", "whole", "c"]
    # PaddleClas's +1 pixel areas: boxes sharing one pixel column overlap, IoU 10 / 190 = 0.053
    e, f = _obj([0, 0, 9, 9], 0.9), _obj([9, 0, 18, 9], 0.8)
    assert len(nms_recognized([e, f], 0.05)) == 1
    assert len(nms_recognized([e, f], 0.06)) == 2
    assert nms_recognized([], 0.5) == []


def test_float_searcher_is_cosine_top1() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((50, 16)).astype(np.float32)
    s = FloatSearcher(g * 7.0, [f"l{i}" for i in range(50)], list(range(100, 150)))
    hits = s.top1(g[[3, 17]] * 0.5)
    assert [(h[0], h[1]) for h in hits] == [(103, "l3"), (117, "l17")]
    assert all(abs(h[2] - 1.0) < 1e-5 for h in hits)


def test_hamming_searcher_scores_are_the_simhash_cosine() -> None:
    from edge_shitu.gallery_index import GalleryIndex

    rng = np.random.default_rng(1)
    g = rng.standard_normal((40, 64)).astype(np.float32)
    index = GalleryIndex.build(g, [f"l{i}" for i in range(40)], bits=64, method="sign", score_table=False)
    s = HammingSearcher(index, k=3)
    (gid, label, score), = s.top1(g[5])
    assert (gid, label, score) == (5, "l5", 1.0)
    q = g[5].copy()
    q[:8] = -q[:8]  # flip 8 sign bits
    (_, _, score), = s.top1(q)
    d = 8
    assert score == pytest.approx(np.cos(np.pi * d / 64), abs=1e-9)


def test_hamming_scores_track_the_float_cosine_on_real_embeddings() -> None:
    """ITQ centres the data, so cos(pi d / bits) would sit far below the raw cosine the board's
    threshold is written for; the index's distance -> cosine table keeps them on one scale."""
    from edge_shitu.assets import DRINK_EMBEDDINGS
    from edge_shitu.gallery_index import GalleryIndex
    from tests.conftest import require_asset

    x = np.load(require_asset(*DRINK_EMBEDDINGS)).astype(np.float32)
    # as they are (centred-ish), and all-positive like a ReLU/GeM extractor's (MobileNetV2 here)
    for feats, simhash_off in ((x, -0.1), (np.abs(x), 0.08)):
        gal, q = feats[1::2], feats[0::2][:200]
        labels = [str(i) for i in range(len(gal))]
        index = GalleryIndex.build(gal, labels, bits=256, method="itq")
        table = index.data.meta["cosine_of_distance"]
        assert len(table) == 257 and table[0] == 1.0 and all(a >= b for a, b in zip(table, table[1:]))
        ham = np.array([h[2] for h in HammingSearcher(index, k=5).top1(q)])
        flt = np.array([h[2] for h in FloatSearcher(gal, labels).top1(q)])
        assert np.abs(ham - flt).mean() < 0.06, np.abs(ham - flt).mean()
        raw = GalleryIndex.build(gal, labels, bits=256, method="itq", score_table=False)
        simhash = np.array([h[2] for h in HammingSearcher(raw, k=5).top1(q)])
        assert np.mean(flt - simhash) >= simhash_off
        # re-ranked with the index's int8 vectors, a match's score is its cosine with them: where
        # the top-1 is the float search's, it is the float cosine to int8 rounding (the table only
        # gives the mean of all pairs at that distance)
        vec = GalleryIndex.build(gal, labels, bits=256, method="itq", rerank_vectors=True)
        top_v = HammingSearcher(vec, k=5, rerank=50).top1(q)
        top_f = FloatSearcher(gal, labels).top1(q)
        same = np.array([a[0] == b[0] for a, b in zip(top_v, top_f)])
        err = np.abs(np.array([h[2] for h in top_v]) - flt)[same]
        assert same.mean() > 0.9 and err.max() < 0.01 and err.mean() < 0.6 * np.abs(ham - flt)[same].mean(), \
            (same.mean(), err.max(), err.mean())


def test_runtime_imports_nothing_heavy() -> None:
    """The device footprint: the CLI and the pipeline load without Paddle, TensorFlow, OpenCV,
    ONNX or torch (they may be installed here; they must not be imported)."""
    code = ("import sys, edge_shitu.cli, edge_shitu.pipeline, edge_shitu.visualize, edge_shitu.cli_recognize; "
            "from edge_shitu import GalleryIndex, Recognizer, convert, Bundle; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('paddle', 'tensorflow', 'cv2', 'onnx', 'onnxruntime', 'torch', 'yaml', 'paddlelite', 'ray')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_settings_from_runtime_and_overrides() -> None:
    s = Settings.from_runtime({"det_threshold": 0.3, "max_det": 7, "top_k": 9}, max_det=2, rec_score_threshold=None)
    assert (s.det_threshold, s.max_det, s.top_k, s.rec_score_threshold) == (0.3, 2, 9, 0.5)


def test_chinese_labels_are_drawn_with_real_glyphs(tmp_path: Path) -> None:
    from edge_shitu.visualize import covers, draw_results, font_for

    label = "农夫山泉_饮用天然水"
    f = font_for(label, 24)
    if f is None:
        msg = "no CJK font installed (apt install fonts-wqy-microhei; scripts/install_native_deps.sh does)"
        if "CI" in __import__("os").environ:
            pytest.fail(msg)
        pytest.skip(msg)
    assert covers(f, label)
    from PIL import ImageFont

    latin = ImageFont.load_default()
    assert not covers(latin, "农") or latin is f  # the built-in font really lacks CJK glyphs
    img = np.full((200, 300, 3), 255, np.uint8)
    out = draw_results(img, [Recognized([20, 60, 280, 190], label, 0.87, 3, 0.9, "det")], tmp_path / "v.png")
    drawn = np.asarray(Image.open(out).convert("RGB"))
    assert drawn.shape == img.shape
    # the label band above the box holds white glyph pixels on the box colour, not empty boxes
    band = drawn[20:60, 20:280]
    assert (band.min(axis=2) > 200).sum() > 150 and (band.max(axis=2) < 250).sum() > 500
    notdef = draw_results(img, [Recognized([20, 60, 280, 190], "\ue000" * 9, 0.87, 3, 0.9, "det")],
                          tmp_path / "n.png", warn=lambda m: None)
    assert not np.array_equal(drawn, np.asarray(Image.open(notdef).convert("RGB")))


# ============================================================================ integration tier
def es(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_shitu.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _gallery_photos(run) -> list[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    lines = (run.gallery / "labels.txt").read_text(encoding="utf-8").splitlines()
    return [(run.gallery / ln.split("\t")[0], ln.split("\t")[1]) for ln in lines if not ln.startswith("broken")]


@pytest.mark.integration
def test_recognize_gallery_photos_finds_themselves(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edge_shitu.gallery_index import GalleryIndex

    photos = _gallery_photos(rpi4_bundle)[:3]
    index = GalleryIndex.open(rpi4_bundle.path / "gallery.esidx")
    id_of = {src: i for (i, _), src in zip(index.items(), index.data.meta["source_images"])}
    proc = es("recognize", str(rpi4_bundle.path), *[str(p) for p, _ in photos], "--json", "--save-vis",
              str(tmp_path / "vis"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["artifact"] == "tflite:int8" and doc["failed"] == []
    for (p, label), res in zip(photos, doc["images"]):
        whole = [o for o in res["objects"] if o["source"] == "image"]
        assert whole, res  # the whole photo is always a candidate, and it is in the gallery
        assert whole[0]["label"] == label and whole[0]["id"] == id_of[str(p.relative_to(rpi4_bundle.gallery))]
        assert whole[0]["score"] > 0.9 and whole[0]["box"] == [0, 0, *res["image_size"]]
        t = res["timings_ms"]
        assert set(t) >= {"det_pre", "det_infer", "det_post", "rec_pre", "rec_infer", "search", "nms", "total"}
        assert t["total"] >= t["det_infer"] + t["rec_infer"] > 0
        for row in res["detections"]:  # [class, score, x1, y1, x2, y2], best max_det above the threshold
            assert row[1] >= 0.2
        assert len(res["detections"]) <= 5
        vis = Image.open(res["visualization"])
        assert vis.size == tuple(res["image_size"])


@pytest.mark.integration
def test_recognize_api_matches_cli_and_other_precisions_load(rpi4_bundle) -> None:  # type: ignore[no-untyped-def]
    """The Python API gives what the CLI prints; --precision / --det-precision pick other artifacts."""
    from edge_shitu import Recognizer
    from edge_shitu.preprocess import load_image

    p, label = _gallery_photos(rpi4_bundle)[5]
    img = load_image(p)
    i8 = Recognizer.open(rpi4_bundle.path).recognize(img)
    cli_doc = json.loads(es("recognize", str(rpi4_bundle.path), str(p), "--json").stdout)["images"][0]
    assert [o.to_dict()["id"] for o in i8.objects] == [o["id"] for o in cli_doc["objects"]]
    assert [o.box for o in i8.objects] == [o["box"] for o in cli_doc["objects"]]
    whole = next(o for o in i8.candidates if o.source == "image")
    assert whole.label == label and whole.score > 0.9
    mixed = Recognizer.open(rpi4_bundle.path, det_precision="fp32")
    assert mixed.artifact_kind == "tflite:int8 (det fp32)"
    f32 = Recognizer.open(rpi4_bundle.path, precision="fp32")
    assert f32.artifact_kind == "tflite:fp32"
    # the same detector weights: fp32 and int8 find boxes, and every candidate gets a gallery item
    for pipe in (mixed, f32):
        res = pipe.recognize(img)
        assert res.candidates and all(c.id >= 0 for c in res.candidates)


def _odd_images(d: Path) -> dict[str, Path]:
    """Real photo turned into every awkward variant a shop produces."""
    from tests.conftest import require_asset

    src = sorted(require_asset("drink", "test_images").glob("*"))[0]
    rgb = Image.open(src).convert("RGB")
    d.mkdir()
    out = {"gray": d / "gray.png", "cmyk": d / "cmyk.jpg", "16bit": d / "sixteen.png", "tiny": d / "tiny.png",
           "huge": d / "huge.jpg", "rgba": d / "alpha.png"}
    rgb.convert("L").save(out["gray"])
    rgb.convert("CMYK").save(out["cmyk"])
    Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)).save(out["16bit"])
    rgb.resize((3, 2)).save(out["tiny"])
    rgb.resize((6000, 4500)).save(out["huge"], quality=60)
    rgb.convert("RGBA").save(out["rgba"])
    good = src.read_bytes()
    out["truncated"] = d / "truncated.jpg"
    out["truncated"].write_bytes(good[: len(good) // 3])
    out["text"] = d / "notes.jpg"
    out["text"].write_text("not an image", encoding="utf-8")
    out["empty"] = d / "empty.png"
    out["empty"].write_bytes(b"")
    return out


@pytest.mark.integration
def test_batch_with_bad_and_odd_images_carries_on(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    imgs = _odd_images(tmp_path / "imgs")
    missing = tmp_path / "imgs" / "missing.jpg"
    proc = es("recognize", str(rpi4_bundle.path), *[str(p) for p in imgs.values()], str(missing), "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    by_name = {Path(r["image"]).name: r for r in doc["images"]}
    bad = {"truncated.jpg", "notes.jpg", "empty.png", "missing.jpg"}
    assert {Path(f).name for f in doc["failed"]} == bad
    for name, r in by_name.items():
        if name in bad:
            assert "error" in r and "\n" not in r["error"]
        else:  # odd but valid: recognized like any photo, the whole image is a candidate
            assert "error" not in r, r
            assert r["image_size"][0] > 0
    assert by_name["huge.jpg"]["image_size"] == [6000, 4500] and by_name["tiny.png"]["image_size"] == [3, 2]
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-shitu: error:")]
    assert len(errs) == len(bad) + 1 and "4 of 10 image(s) failed" in errs[-1]


@pytest.mark.integration
def test_bad_bundles_fail_in_one_line(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    photo = str(_gallery_photos(rpi4_bundle)[0][0])
    tampered = rpi4_bundle.copy(tmp_path / "tampered")
    arts = json.loads((tampered / "manifest.json").read_text("utf-8"))["rec"]["artifacts"]
    art = tampered / next(a["file"] for a in arts if a["kind"] == "tflite:int8")  # the one recognize loads
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    newer = rpi4_bundle.copy(tmp_path / "newer")
    m = json.loads((newer / "manifest.json").read_text("utf-8"))
    m["format_version"] = [2, 0]
    (newer / "manifest.json").write_text(json.dumps(m), "utf-8")
    truncated = rpi4_bundle.copy(tmp_path / "truncated")
    idx = truncated / "gallery.esidx"
    idx.write_bytes(idx.read_bytes()[:-100])
    cases = {
        "tampered": (tampered, ["sha256", "re-copy"]),
        "newer": (newer, ["2.0", "upgrade"]),
        "truncated index": (truncated, ["gallery.esidx"]),
        "not a bundle": (tmp_path, ["manifest.json"]),
    }
    for what, (b, words) in cases.items():
        proc = es("recognize", str(b), photo)
        assert proc.returncode == 2, (what, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-shitu: error:")]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (what, proc.stderr[-1500:])
        assert all(w in lines[0] for w in words), (what, lines[0])
    proc = es("recognize", str(rpi4_bundle.path), photo, "--backend", "nb")
    assert proc.returncode == 2 and "nb:arm:int8" in proc.stderr and "--backend tflite" in proc.stderr, proc.stderr


@pytest.mark.integration
def test_gallery_add_then_remove_on_the_device(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import require_asset

    b = rpi4_bundle.copy(tmp_path / "b")
    gallery = require_asset("drink", "gallery")
    in_bundle = {p.name for p, _ in _gallery_photos(rpi4_bundle)}
    new = next(p for p in sorted(gallery.glob("*/*.jpg"))[500:] if p.name not in in_bundle)
    before = json.loads(es("recognize", str(b), str(new), "--json").stdout)["images"][0]
    label = "新品_柠檬茶 500ml"
    proc = es("gallery", "add", str(b), str(new), "--label", label, "--json")
    assert proc.returncode == 0, proc.stderr
    added = json.loads(proc.stdout)
    assert added["items"] == 15 and len(added["added"]) == 1
    new_id = added["added"][0]["id"]
    after = json.loads(es("recognize", str(b), str(new), "--json").stdout)["images"][0]
    hit = [o for o in after["objects"] if o["id"] == new_id]
    assert hit and hit[0]["label"] == label and hit[0]["score"] > 0.9, (before, after)
    assert hit[0]["box"] == added["added"][0]["box"]  # the main object it was added from
    listed = json.loads(es("gallery", "list", str(b), "--json").stdout)
    assert listed[label] == [new_id]
    proc = es("gallery", "remove", str(b), "--label", label, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["removed"] == 1
    gone = json.loads(es("recognize", str(b), str(new), "--json").stdout)["images"][0]
    assert all(o["id"] != new_id for o in gone["objects"])
    assert gone["objects"] == before["objects"]
    err = es("gallery", "remove", str(b), "--label", "no such product")
    assert err.returncode == 2 and "no gallery item" in err.stderr


@pytest.mark.integration
def test_camera_reads_a_video_and_prints_fps(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the camera command's optional dependency")
    frame = cv2.imread(str(_gallery_photos(rpi4_bundle)[0][0]))
    frame = cv2.resize(frame, (320, 240))
    video = tmp_path / "shelf.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(4):
        w.write(frame)
    w.release()
    proc = es("camera", str(rpi4_bundle.path), "--device", str(video), "--every", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [r["frames"] for r in reports] == [2, 4] and all(r["fps"] > 0 for r in reports)
    no_cv2 = subprocess.run([sys.executable, "-c", "import sys; sys.modules['cv2'] = None; sys.argv = ['edge-shitu', "
                             f"'camera', {str(rpi4_bundle.path)!r}]; from edge_shitu.cli import main; main()"],
                            capture_output=True, text=True, timeout=120)
    assert no_cv2.returncode == 2 and "opencv" in no_cv2.stderr.lower()
    bad = es("camera", str(rpi4_bundle.path), "--device", str(tmp_path / "nope.avi"))
    assert bad.returncode == 2 and "cannot open" in bad.stderr


def _as_board(src: Path, dst: Path, board: str) -> Path:
    """A copy of a bundle as `convert --board BOARD` writes it for the same models: the board's
    config, its runtime block, and only the artifacts the board lists (the rpi4 test bundle holds
    a superset of android-arm64's: nb:arm:int8, nb:arm:fp32, tflite:int8)."""
    import shutil

    from edge_shitu.boards import load_board

    shutil.copytree(src, dst)
    b = load_board(board)
    m = json.loads((dst / "manifest.json").read_text("utf-8"))
    for which in ("det", "rec"):
        keep = [a for a in m[which]["artifacts"] if a["kind"] in b.artifacts]
        for a in m[which]["artifacts"]:
            if a not in keep:
                (dst / a["file"]).unlink()
        m[which]["artifacts"] = keep
    assert {a["kind"] for a in m["rec"]["artifacts"]} == set(b.artifacts)
    m["board"] = b.to_dict()
    m["runtime"].update(backend=b.backend, precision=b.precision, threads=b.threads)
    (dst / "manifest.json").write_text(json.dumps(m, ensure_ascii=False), "utf-8")
    return dst


@pytest.mark.integration
def test_android_bundle_names_why_arm_nb_cannot_run_here_and_tflite_recognizes(rpi4_bundle,  # type: ignore[no-untyped-def]
                                                                               tmp_path: Path) -> None:
    """Board configs and the runtime share backend names (formats.py): an android-arm64 bundle
    (backend nb) opens; on x86 the arm .nb is refused in one line naming the TFLite alternative,
    before Paddle Lite is even loaded, and backend="tflite" recognizes."""
    import platform

    from edge_shitu import Recognizer
    from edge_shitu.errors import EdgeShituError

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("checks the x86 refusal of arm .nb files; on arm the .nb would be loaded")
    b = _as_board(rpi4_bundle.path, tmp_path / "android", "android-arm64")
    assert json.loads((b / "manifest.json").read_text("utf-8"))["runtime"]["backend"] == "nb"
    with pytest.raises(EdgeShituError) as e:
        Recognizer.open(b)
    msg = str(e.value)
    assert "\n" not in msg and "nb:arm:int8" in msg and "arm kernels" in msg and "--backend tflite" in msg
    assert "tflite:int8" in msg and "android-arm64" in msg
    proc = es("recognize", str(b), str(_gallery_photos(rpi4_bundle)[0][0]))
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-shitu: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    rec = Recognizer.open(b, backend="tflite")
    assert rec.artifact_kind == "tflite:int8" and rec.bundle.root == b
    p, label = _gallery_photos(rpi4_bundle)[3]
    whole = next(o for o in rec.recognize_file(p).candidates if o.source == "image")
    assert whole.label == label and whole.score > 0.9


@pytest.mark.integration
def test_gallery_edits_are_library_calls(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What `gallery add | remove | list` print comes from edge_shitu.gallery_ops / Recognizer."""
    from edge_shitu import Recognizer
    from edge_shitu.gallery_ops import list_items

    b = rpi4_bundle.copy(tmp_path / "b")
    rec = Recognizer.open(b)
    photo = _gallery_photos(rpi4_bundle)[2][0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    res = rec.add_to_gallery([photo, bad], "新品")
    assert [a["image"] for a in res.added] == [str(photo)] and res.items == 15
    assert [f for f, _ in res.failed] == [str(bad)] and "\n" not in res.failed[0][1]
    assert list_items(b, "新品") == {"新品": [res.added[0]["id"]]}
    gone = rec.remove_from_gallery(label="新品")
    assert gone.removed == 1 and gone.items == 14 and list_items(b, "新品") == {}


def test_fast_detector_postprocess_equals_full_nms_top_rows() -> None:
    """Pre-filtering by the caller's threshold and stopping at max_det gives the full NMS's top rows."""
    from edge_shitu.detection import PicoDetHead, postprocess_detections

    rng = np.random.default_rng(3)
    n = 3000
    xy = rng.uniform(0, 600, (n, 2)).astype(np.float32)
    wh = rng.uniform(10, 200, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)[None]
    for classes in (1, 3):
        scores = rng.uniform(0, 1, (1, n, classes)).astype(np.float32) ** 3
        head = PicoDetHead("image", [], [], [8], [(1, 1)], classes, 7, 0.5,
                           {"score_threshold": 0.025, "nms_threshold": 0.6, "nms_top_k": 1000, "keep_top_k": 100})
        full = postprocess_detections(boxes, scores, head, (640, 640), (1.0, 1.25))
        for thr, k in ((0.2, 5), (0.5, 3), (0.0, 100), (0.9, 50)):
            want = full[full[:, 1] >= thr][:k]
            got = postprocess_detections(boxes, scores, head, (640, 640), (1.0, 1.25), min_score=thr, max_keep=k)
            got = got[got[:, 1] >= thr][:k]
            np.testing.assert_array_equal(got, want)


def test_detector_postprocess_with_nothing_above_threshold_is_empty() -> None:
    """A photo where the detector finds nothing: [0, 6], not a crash (the whole image still goes on)."""
    from edge_shitu.detection import PicoDetHead, nms, postprocess_detections

    head = PicoDetHead(image="image", scores=["s"], dists=["d"], strides=[8], grids=[(2, 2)], num_classes=3,
                       reg_max=7, cell_offset=0.5, nms={"score_threshold": 0.3, "keep_top_k": 5})
    boxes = np.tile(np.array([[1, 1, 5, 5]], np.float32), (4, 1))[None]
    out = postprocess_detections(boxes, np.full((1, 4, 3), 0.1, np.float32), head, (16, 16), (1.0, 1.0),
                                 min_score=0.2, max_keep=5)
    assert out.shape == (0, 6)
    assert nms(np.zeros((0, 4)), np.zeros((3, 0))).shape == (0, 6)
