"""The Android demo (issue 17, android_demo/): its Java core on the host JVM against the Python runtime.

- JUnit (scripts/android_junit.sh): the golden index files of tests/golden_files.py searched bit for
  bit like Python (C kernel through JNI and pure Java), 1.2 files written back byte for byte,
  manifest checks, index edits;
- Java and Python read each other's index edits;
- ``java -jar build/android/edge-shitu-android.jar recognize`` (LiteRT through the project's JNI
  engine on the wheel's libLiteRt.so) equals ``edge-shitu recognize`` on the session's rpi4 bundle;
- bad input: one line, nothing written;
- ``make android-apk``: the APK assembled offline verifies.

Needs a JDK and Debian's junit4 (``make android-deps``); skips, saying so, without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "android"
JAR = OUT / "edge-shitu-android.jar"
JUNIT = Path(os.environ.get("JUNIT_JAR", "/usr/share/java/junit4.jar"))


def _need_jdk() -> None:
    for tool in ("javac", "java", "jar"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the Android checks need a JDK (make android-deps installs one)")


@pytest.fixture(scope="module")
def jar() -> Path:
    _need_jdk()
    proc = subprocess.run(["make", "-s", "android-jar", f"PY={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return JAR


def java(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-jar", str(JAR), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-shitu: error:")]


# ----------------------------------------------------------------------------- JUnit + golden files
def test_junit_core_and_golden_files(jar: Path, tmp_path: Path) -> None:
    if not JUNIT.is_file():
        pytest.skip(f"{JUNIT} not found: install Debian's junit4 (make android-deps)")
    from tests.golden_files import write_golden

    write_golden(tmp_path / "golden")
    proc = subprocess.run(["bash", "scripts/android_junit.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ANDROID_GOLDEN": str(tmp_path / "golden")})
    assert proc.returncode == 0 and "OK (" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def _mutations(golden: Path, out: Path, seed: int = 17) -> int:
    """Mutated golden files with the Python reader's verdict (verdicts.json), for FuzzParityTest."""
    from edge_shitu.errors import EdgeShituError
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.index_format import parse_index
    from tests.golden_files import fix_crcs

    rng = np.random.default_rng(seed)
    out.mkdir()
    verdicts: dict[str, dict] = {}
    for name in ("sign512.esidx", "itq128_rerank.esidx", "itq128_rerank_v1.1.esidx", "future1.3_optional.esidx"):
        raw = (golden / name).read_bytes()
        variants = []
        for pos in sorted(set(rng.integers(0, len(raw), 150).tolist()) | set(range(0, 384, 3))):
            b = bytearray(raw)
            b[pos] ^= 1 << int(rng.integers(0, 8))
            variants += [bytes(b), fix_crcs(b)]
        for pos in rng.integers(0, len(raw), 40).tolist():
            b = bytearray(raw)
            b[pos:pos + 4] = bytes(rng.integers(0, 256, 4, dtype=np.uint8))[: len(b[pos:pos + 4])]
            variants.append(fix_crcs(b))
        variants += [raw[:n] for n in rng.integers(0, len(raw), 20).tolist()]
        for i, data in enumerate(variants):
            fname = f"{name}.{i}"
            (out / fname).write_bytes(data)
            try:
                d = parse_index(data, fname)
                index = GalleryIndex(d)  # ids: u64 as Java reads them (signed longs)
                verdicts[fname] = {"ok": True, "live": index.ntotal, "ids": d.ids.astype(np.int64).tolist(),
                                   "labels": index.labels_of_rows(np.arange(d.count))}
            except EdgeShituError as e:
                verdicts[fname] = {"ok": False, "error": str(e)}
    (out / "verdicts.json").write_text(json.dumps(verdicts, ensure_ascii=False), encoding="utf-8")
    return len(verdicts)


def test_java_reader_accepts_exactly_what_python_accepts(jar: Path, tmp_path: Path) -> None:
    if not JUNIT.is_file():
        pytest.skip(f"{JUNIT} not found: install Debian's junit4 (make android-deps)")
    from tests.golden_files import write_golden

    write_golden(tmp_path / "golden")
    n = _mutations(tmp_path / "golden", tmp_path / "fuzz")
    assert n > 1500
    proc = subprocess.run(["bash", "scripts/android_junit.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ANDROID_GOLDEN": str(tmp_path / "golden"),
                               "ANDROID_FUZZ": str(tmp_path / "fuzz")})
    assert proc.returncode == 0 and "OK (" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


# ----------------------------------------------------------------------------- edits both ways
def test_java_and_python_read_each_others_edits(jar: Path, tmp_path: Path) -> None:
    from edge_shitu.gallery_index import GalleryIndex, edit_index_file

    rng = np.random.default_rng(7)
    feats = rng.standard_normal((40, 64)).astype(np.float32)
    labels = [f"商品_{i % 6}" for i in range(40)]
    path = tmp_path / "g.esidx"
    GalleryIndex.build(feats[:30], labels[:30], bits=64, rerank_vectors=True).save(path)

    # Java adds, Python finds
    np.save(tmp_path / "new.npy", feats[30:35])
    (tmp_path / "new.txt").write_text("\n".join(labels[30:35]) + "\n", encoding="utf-8")
    proc = java("index", "add", path, tmp_path / "new.npy", "--labels", tmp_path / "new.txt")
    assert proc.returncode == 0, proc.stderr
    java_ids = json.loads(proc.stdout)["ids"]
    assert java_ids == [30, 31, 32, 33, 34]
    index = GalleryIndex.open(path)  # every CRC checked
    assert index.ntotal == 35
    d, ids = index.search(feats[30:35], k=1)
    assert ids[:, 0].tolist() == java_ids and d[:, 0].tolist() == [0] * 5
    assert [m[0].label for m in index.query(feats[30:35], k=1)] == labels[30:35]
    # a Java-written file is what Python itself would write (META included)
    index.save(tmp_path / "resaved.esidx")
    assert (tmp_path / "resaved.esidx").read_bytes() == path.read_bytes()

    # Python adds, Java finds
    with edit_index_file(path) as idx:
        py_ids = idx.add(feats[35:40], labels[35:40]).tolist()
    np.save(tmp_path / "all.npy", feats)
    for kernel in ("native", "java"):
        proc = java("index", "search", path, tmp_path / "all.npy", "--k", "5", env={"EDGE_SHITU_KERNEL": kernel})
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["kernel"].startswith(kernel)
        d, ids = GalleryIndex.open(path).search(feats, k=5)
        assert [[m["id"] for m in r] for r in res["results"]] == ids.tolist()
        assert [[m["distance"] for m in r] for r in res["results"]] == d.tolist()
        assert [r[0]["id"] for r in res["results"][35:]] == py_ids
    # re-ranked by the int8 vectors: same rows, same scores
    proc = java("index", "search", path, tmp_path / "all.npy", "--k", "3", "--rerank", "12")
    res = json.loads(proc.stdout)
    py = GalleryIndex.open(path).query(feats, k=3, rerank=12)
    assert [[m["id"] for m in r] for r in res["results"]] == [[m.id for m in r] for r in py]
    assert np.allclose([[m["score"] for m in r] for r in res["results"]], [[m.score for m in r] for r in py], atol=2e-6)

    # Java removes a Python item, Python no longer finds it; compact keeps ids
    assert java("index", "remove", path, str(py_ids[0])).returncode == 0
    index = GalleryIndex.open(path)
    assert py_ids[0] not in index.ids().tolist() and index.ntotal == 39
    assert java("index", "compact", path).returncode == 0
    assert GalleryIndex.open(path).ids().tolist() == [i for i in range(40) if i != py_ids[0]]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".g.esidx")) == [".g.esidx.lock"]


def test_java_and_python_writers_exclude_each_other(jar: Path, tmp_path: Path) -> None:
    """Java takes the same flock on .NAME.lock as Python's writers (through the JNI library): an edit
    from Java waits for Python's, and neither is lost."""
    import time

    from edge_shitu.gallery_index import GalleryIndex, edit_index_file

    rng = np.random.default_rng(9)
    feats = rng.standard_normal((40, 64)).astype(np.float32)
    path = tmp_path / "g.esidx"
    GalleryIndex.build(feats[:30], ["a"] * 30, bits=64).save(path)
    np.save(tmp_path / "new.npy", feats[30:35])
    (tmp_path / "new.txt").write_text("java\n" * 5, encoding="utf-8")
    with edit_index_file(path) as idx:
        proc = subprocess.Popen(["java", "-jar", str(JAR), "index", "add", str(path), str(tmp_path / "new.npy"),
                                 "--labels", str(tmp_path / "new.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(2.5)
        assert proc.poll() is None, proc.communicate()  # waiting for Python's lock
        py_ids = idx.add(feats[35:40], ["python"] * 5).tolist()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    java_ids = json.loads(out)["ids"]
    index = GalleryIndex.open(path)
    assert index.ntotal == 40 and py_ids == [30, 31, 32, 33, 34] and java_ids == [35, 36, 37, 38, 39]
    d, ids = index.search(feats[30:40], k=1)  # Java added feats[30:35] after Python's feats[35:40]
    assert d[:, 0].tolist() == [0] * 10 and ids[:, 0].tolist() == java_ids + py_ids


# ----------------------------------------------------------------------------- preprocessing
def test_java_resize_is_byte_identical_to_the_numpy_cv2_resize(jar: Path, tmp_path: Path) -> None:
    """Every interpolation (nearest, bilinear, bicubic, area, Lanczos-4), up and down: the Java
    resize gives the bytes of edge_shitu.preprocess.cv2_resize's numpy path."""
    from PIL import Image

    from edge_shitu.preprocess import cv2_resize

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (53, 71, 3), dtype=np.uint8)
    img[:, :35] = np.linspace(0, 255, 35)[None, :, None].astype(np.uint8)  # smooth part + noise part
    Image.fromarray(img).save(tmp_path / "in.png")
    for interp in range(5):
        for w, h in ((224, 224), (30, 17), (100, 20)):
            proc = java("debug-resize", tmp_path / "in.png", tmp_path / "out.raw", w, h, interp)
            assert proc.returncode == 0, proc.stderr
            got = np.fromfile(tmp_path / "out.raw", np.uint8).reshape(h, w, 3)
            assert np.array_equal(got, cv2_resize(img, (w, h), interp=interp, impl="numpy")), (interp, w, h)


# ----------------------------------------------------------------------------- the pipeline
def _photos(assets: Path) -> tuple[list[Path], list[Path]]:
    """The shelf photos; WebP ones apart: the host JVM's ImageIO cannot decode WebP (Android can)."""
    photos = sorted((assets / "drink" / "test_images").iterdir())
    webp = [p for p in photos if p.read_bytes()[8:12] == b"WEBP"]
    return [p for p in photos if p not in webp], webp


def test_java_pipeline_equals_python_runtime(jar: Path, rpi4_bundle, assets: Path, tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    if not (OUT / "host" / "libLiteRt.so").exists():
        pytest.skip("ai-edge-litert's libLiteRt.so not found: pip install ai-edge-litert")
    photos, webp = _photos(assets)
    assert len(photos) >= 12
    from PIL import Image

    from edge_shitu.preprocess import load_image

    for p in webp:  # compared on the same pixels, as lossless PNG (a phone's BitmapFactory decodes WebP itself)
        png = tmp_path / f"{p.stem}_from_webp.png"
        Image.fromarray(load_image(p)).save(png)
        photos.append(png)
    proc = java("recognize", rpi4_bundle.path, *photos, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    # the Python runtime with its numpy resize (what Java implements; OpenCV's own differs by <= 1 grey level)
    py = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "recognize", str(rpi4_bundle.path), *map(str, photos),
                         "--json"], capture_output=True, text=True, timeout=600,
                        env={**os.environ, "EDGE_SHITU_RESIZE": "numpy"})
    assert py.returncode == 0, py.stderr[-3000:]
    want = json.loads(py.stdout)
    assert got["artifact"] == want["artifact"] and got["kernel"].startswith("native")
    assert len(got["images"]) == len(want["images"]) == len(photos)
    n_objects = 0
    for g, w in zip(got["images"], want["images"]):
        assert g["image"] == w["image"] and g["image_size"] == w["image_size"]
        assert [(o["label"], o["id"], o["source"]) for o in g["objects"]] == \
               [(o["label"], o["id"], o["source"]) for o in w["objects"]], g["image"]
        for a, b in zip(g["objects"], w["objects"]):
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 1, (g["image"], a, b)
            assert abs(a["score"] - b["score"]) <= 1e-3, (g["image"], a, b)
            assert (a["det_score"] is None) == (b["det_score"] is None)
        assert len(g["detections"]) == len(w["detections"])
        for a, b in zip(g["detections"], w["detections"]):
            assert a[0] == b[0] and np.allclose(a[1:], b[1:], atol=1.0), (g["image"], a, b)
        n_objects += len(g["objects"])
        assert set(g["timings_ms"]) == set(w["timings_ms"])
    assert n_objects >= len(photos)
    if webp:  # refused in one line on the host, the others unaffected
        proc = java("recognize", rpi4_bundle.path, webp[0], photos[0], "--json")
        assert proc.returncode == 1 and "WebP" in errors(proc)[0]


def test_manifest_det_precision_picks_the_same_detector_in_java_and_python(jar: Path, rpi4_bundle, assets: Path,
                                                                           tmp_path: Path) -> None:
    """runtime.det_precision (written when the int8 detector is a 16x8 file): both runtimes run the
    detector it names when no precision is asked for, and say so in the same words."""
    pytest.importorskip("ai_edge_litert")
    if not (OUT / "host" / "libLiteRt.so").exists():
        pytest.skip("ai-edge-litert's libLiteRt.so not found: pip install ai-edge-litert")
    b = _linked_bundle(rpi4_bundle.path, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
    if "tflite:fp32" not in {a["kind"] for a in m["det"]["artifacts"]} or m["runtime"]["precision"] != "int8":
        pytest.skip("the session bundle has no int8 board / fp32 detector pair")
    m["runtime"].update(det_precision="fp32", det_precision_reason="test")
    (b / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    photo = _photos(assets)[0][0]
    got = json.loads(java("recognize", b, photo, "--json").stdout)
    py = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "recognize", str(b), str(photo), "--json"],
                        capture_output=True, text=True, timeout=600, env={**os.environ, "EDGE_SHITU_RESIZE": "numpy"})
    assert py.returncode == 0, py.stderr[-2000:]
    want = json.loads(py.stdout)
    assert got["artifact"] == want["artifact"] == "tflite:int8 (det fp32)"
    assert [o["label"] for o in got["images"][0]["objects"]] == [o["label"] for o in want["images"][0]["objects"]]
    asked = json.loads(java("recognize", b, photo, "--precision", "int8", "--json").stdout)
    assert asked["artifact"] == "tflite:int8"  # a precision asked for wins over the manifest's choice


# ----------------------------------------------------------------------------- manifest checks
MANIFEST_KEYS = [
    "format", "format_version", "board", "board.name", "board.max_image_pixels", "runtime", "runtime.backend",
    "runtime.precision", "runtime.det_precision", "runtime.threads", "runtime.det_threshold", "runtime.max_det",
    "runtime.rec_score_threshold",
    "runtime.rec_nms_iou", "runtime.top_k", "runtime.rerank", "index", "index.file", "index.bits", "index.method",
    "index.items", "index.labels", "index.rerank", "index.rerank_vectors", "rec", "rec.feature_dim", "rec.preprocess",
    "rec.preprocess.size", "rec.preprocess.interp", "rec.preprocess.resize", "rec.preprocess.scale",
    "rec.preprocess.mean", "rec.preprocess.std", "rec.preprocess.fit", "rec.preprocess.kind",
    "rec.preprocess.pad_value", "rec.preprocess.extra", "rec.artifacts", "rec.artifacts.0.kind", "rec.artifacts.0.file",
    "rec.artifacts.0.sha256", "rec.artifacts.0.bytes", "rec.artifacts.0.details", "det", "det.preprocess",
    "det.preprocess.ops", "det.preprocess.ops.0.type", "det.preprocess.ops.0.target_size",
    "det.preprocess.ops.0.interp", "det.preprocess.ops.0.keep_ratio", "det.preprocess.ops.1.mean",
    "det.preprocess.ops.1.std", "det.preprocess.ops.1.is_scale", "det.preprocess.ops.3.stride", "det.artifacts",
    "native_lib"]
MANIFEST_VALUES = ["x", -1, 0, 1, 2.5, 2.0, True, None, [], {}, [1, 2], [224, 224], "tflite:int8", "0" * 64, "../x",
                   "lib/x.so", [0.5, 0.5, 0.5], 3, 300, "<delete>"]


def test_java_manifest_checks_refuse_what_python_refuses(jar: Path, rpi4_bundle, tmp_path: Path) -> None:
    """Every key the runtime reads set to wrong (and right) values, or deleted: Java's Bundle.open
    refuses exactly the manifests Python's refuses, each in one line naming the key."""
    import copy

    from edge_shitu.bundle import Bundle
    from edge_shitu.errors import EdgeShituError

    base = json.loads((rpi4_bundle.path / "manifest.json").read_text(encoding="utf-8"))
    head = next(i for i, a in enumerate(base["det"]["artifacts"]) if (a.get("details") or {}).get("head"))
    head_keys = ("head", "head.strides", "head.num_classes", "head.reg_max", "head.grids", "cut_before_nms")
    keys = MANIFEST_KEYS + [f"det.artifacts.{head}.details.{k}" for k in head_keys]
    cases: dict[str, str] = {}
    for key in keys:
        for value in MANIFEST_VALUES:
            m = copy.deepcopy(base)
            *parents, last = key.split(".")
            cur = m
            try:
                for k in parents:
                    cur = cur[int(k)] if isinstance(cur, list) else cur[k]
                name = int(last) if isinstance(cur, list) else last
                if value == "<delete>":
                    del cur[name]
                else:
                    cur[name] = value
            except (KeyError, IndexError, TypeError):
                continue
            d = tmp_path / f"m{len(cases)}"
            d.mkdir()
            (d / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
            cases[str(d)] = f"{key} = {value!r}"
    python: dict[str, str | None] = {}
    for d in cases:
        try:
            Bundle.open(d)
            python[d] = None
        except EdgeShituError as e:
            python[d] = str(e)
        except Exception as e:  # a Python-side bug (e.g. an unhashable op type) counts as a refusal here
            python[d] = f"{type(e).__name__}: {e}"
    proc = java("debug-bundle", *cases)
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdicts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(verdicts) == len(cases) > 1000
    wrong = [(cases[d], python[d], v.get("error")) for d, v in zip(cases, verdicts) if v["ok"] != (python[d] is None)]
    assert not wrong, wrong[:5]
    for d, v in zip(cases, verdicts):
        if not v["ok"]:
            assert v["error"].startswith(str(Path(d) / "manifest.json") + ": ") and "\n" not in v["error"], v
    assert sum(v["ok"] for v in verdicts) > 100  # the right values are accepted too


# ----------------------------------------------------------------------------- bad input
def _linked_bundle(src: Path, dst: Path) -> Path:
    """A cheap copy: hard links where the file system allows (the artifacts are never written)."""
    for p in src.rglob("*"):
        q = dst / p.relative_to(src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
            continue
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.name in ("manifest.json", "gallery.esidx"):
            shutil.copy2(p, q)
        elif p.suffix == ".tflite":
            try:
                os.link(p, q)
            except OSError:
                shutil.copy2(p, q)
    return dst


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_bad_input_one_line_nothing_written(jar: Path, rpi4_bundle, assets: Path, tmp_path: Path) -> None:
    if not (OUT / "host" / "libLiteRt.so").exists():
        pytest.skip("ai-edge-litert's libLiteRt.so not found: pip install ai-edge-litert")
    photo = _photos(assets)[0][0]
    cases = {
        "checksum": (lambda m, b: m["rec"]["artifacts"][[a["kind"] for a in m["rec"]["artifacts"]].index("tflite:int8")]
                     .update(sha256="0" * 64), "sha256 does not match"),
        "major": (lambda m, b: m.update(format_version=[2, 0]), "upgrade"),
        "index": (lambda m, b: (b / "gallery.esidx").unlink(), "no such index file"),
    }
    for name, (change, words) in cases.items():
        b = _linked_bundle(rpi4_bundle.path, tmp_path / name)
        m = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
        change(m, b)
        (b / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
        before = _snapshot(b)
        proc = java("recognize", b, photo, "--json")
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert proc.stdout == "" and len(errors(proc)) == 1 and words in errors(proc)[0], (name, proc.stderr)
        assert _snapshot(b) == before, name
    # an unreadable photo: one line for it, the other photos still recognized, nothing written
    b = _linked_bundle(rpi4_bundle.path, tmp_path / "photo")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    before = _snapshot(b)
    proc = java("recognize", b, broken, photo, "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["failed"] == [str(broken)] and "error" in out["images"][0] and out["images"][1]["objects"]
    assert len([e for e in errors(proc) if str(broken) in e and "of 2 image(s) failed" not in e]) == 1
    assert _snapshot(b) == before


# ----------------------------------------------------------------------------- the APK
def test_apk_assembled_offline_verifies(jar: Path) -> None:
    deps = OUT / "deps" / "usr" / "share" / "java"
    missing = [t for t in ("aapt", "apksigner", "zipalign", "keytool") if shutil.which(t) is None]
    if missing or not (deps / "com.android.dx-10.0.0.jar").exists():
        pytest.skip(f"offline APK tools missing ({', '.join(missing) or 'dx / android.jar'}): "
                    "run 'make android-deps' (root)")
    if shutil.which("clang") is None:
        pytest.skip("clang not found: the APK's native libraries need Debian's clang/lld (make native-deps)")
    proc = subprocess.run(["make", "-s", "android-apk", f"PY={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    apk = OUT / "edge-shitu-demo.apk"
    v = subprocess.run(["apksigner", "verify", "--verbose", str(apk)], capture_output=True, text=True)
    assert v.returncode == 0 and "Verifies" in v.stdout, v.stdout + v.stderr
    assert subprocess.run(["zipalign", "-c", "-p", "4", str(apk)]).returncode == 0
    badging = subprocess.run(["aapt", "dump", "badging", str(apk)], capture_output=True, text=True).stdout
    assert "package: name='com.edgeshitu.demo'" in badging and "sdkVersion:'23'" in badging, badging
    assert "native-code: 'arm64-v8a' 'armeabi-v7a' 'x86_64'" in badging, badging
    listing = subprocess.run(["aapt", "list", str(apk)], capture_output=True, text=True).stdout.split()
    for abi in ("arm64-v8a", "armeabi-v7a", "x86_64"):
        for lib in ("libesengine.so", "libeshamming_jni.so"):
            assert f"lib/{abi}/{lib}" in listing, listing
    assert "classes.dex" in listing


def test_android_built_kernel_loads_in_the_host_jvm(jar: Path, tmp_path: Path) -> None:
    """The x86_64 Android library (clang, no NDK, no libc) is loaded by the host JVM with System.load
    and gives the golden results: the JNI glue the phone runs, tested here."""
    lib = OUT / "jniLibs" / "x86_64" / "libeshamming_jni.so"
    if not JUNIT.is_file() or shutil.which("clang") is None:
        pytest.skip("needs junit4 (make android-deps) and clang (make native-deps)")
    proc = subprocess.run(["bash", "scripts/android_jni.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from tests.golden_files import write_golden

    write_golden(tmp_path / "golden")
    proc = subprocess.run(["bash", "scripts/android_junit.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ANDROID_GOLDEN": str(tmp_path / "golden"), "JNI_HAMMING": str(lib),
                               "JNI_REQUIRED": "1"})
    assert proc.returncode == 0 and "OK (" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_gallery_edits_on_a_bundle_both_ways(jar: Path, rpi4_bundle, assets: Path, tmp_path: Path) -> None:
    """Java `gallery add` embeds a photo on the "phone" side, Python recognizes it by that id; and
    the other way round with `edge-shitu gallery add`."""
    if not (OUT / "host" / "libLiteRt.so").exists():
        pytest.skip("ai-edge-litert's libLiteRt.so not found: pip install ai-edge-litert")
    photos = _photos(assets)[0]
    b = _linked_bundle(rpi4_bundle.path, tmp_path / "b")
    proc = java("gallery", "add", b, photos[0], "--label", "新品_java", "--whole-image", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (java_id,) = json.loads(proc.stdout)["ids"]
    py = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "gallery", "add", str(b), str(photos[1]), "--label",
                         "新品_python", "--whole-image", "--json"], capture_output=True, text=True, timeout=600,
                        env={**os.environ, "EDGE_SHITU_RESIZE": "numpy"})
    assert py.returncode == 0, py.stderr[-2000:]
    (py_id,) = [a["id"] for a in json.loads(py.stdout)["added"]]
    assert py_id == java_id + 1
    py = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "recognize", str(b), str(photos[0]), "--json"],
                        capture_output=True, text=True, timeout=600, env={**os.environ, "EDGE_SHITU_RESIZE": "numpy"})
    # the whole photo finds the item the other side added from it, at the top score (a detector crop
    # may tie with it at 1.0: synthesized weights give near-constant codes, so look the photo up by source)
    objs = json.loads(py.stdout)["images"][0]["objects"]
    whole = [o for o in objs if o["source"] == "image"]
    assert [(o["id"], o["label"]) for o in whole] == [(java_id, "新品_java")], objs
    assert whole[0]["score"] == max(o["score"] for o in objs), objs
    proc = java("recognize", b, photos[1], "--json")
    objs = json.loads(proc.stdout)["images"][0]["objects"]
    whole = [o for o in objs if o["source"] == "image"]
    assert [(o["id"], o["label"]) for o in whole] == [(py_id, "新品_python")], objs
    assert whole[0]["score"] == max(o["score"] for o in objs), objs
