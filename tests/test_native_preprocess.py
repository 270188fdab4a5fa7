"""The C preprocessing (runtimes/native/espreprocess.c) against the numpy path (and against Pillow
for resize="pil"), on every path:
portable and AVX2 here, NEON (aarch64, armhf) under qemu through a static driver, and the
Android x86_64 library (clang build) on this host.

The requirement is "within 1 LSB before normalisation"; the C code does the numpy path's float32
operations in its order, so the bytes are expected to be identical, and the message says so when
they are not."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_shitu import preprocess as pp
from edge_shitu.runtimes import native_preprocess as npre
from tests.conftest import require_asset
from tests.test_cross import BUILD, TARGETS, _built

PATHS = ["portable", "avx2", "neon"]
INTERPS = [pp.INTER_NEAREST, pp.INTER_LINEAR, pp.INTER_CUBIC, pp.INTER_AREA, pp.INTER_LANCZOS4]
# PP-ShiTu's mainbody detector (infer_cfg.yml) and the other Resize forms preprocess_spec writes
DET_OPS = [
    [{"type": "Resize", "target_size": [640, 640], "keep_ratio": False, "interp": 2},
     {"type": "NormalizeImage", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True},
     {"type": "Permute"}, {"type": "PadStride", "stride": 32}],
    [{"type": "Resize", "target_size": [320, 320], "keep_ratio": True, "interp": 1},
     {"type": "NormalizeImage", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "is_scale": True,
      "norm_type": "mean_std"}, {"type": "Permute"}, {"type": "PadStride", "stride": 320}],
    [{"type": "Resize", "target_size": [416, 416], "keep_ratio": True, "interp": 3},
     {"type": "NormalizeImage", "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4], "is_scale": False},
     {"type": "Permute"}],
]


@pytest.fixture(autouse=True)
def _numpy_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference is the numpy path (OpenCV, when installed, differs by up to one grey level)."""
    monkeypatch.setenv("EDGE_SHITU_RESIZE", "numpy")


@pytest.fixture(scope="module")
def native() -> Iterator[npre.NativePreprocess]:
    from edge_shitu.runtimes import native_kernel

    kernel = native_kernel.load()
    nat = npre.from_library(kernel.lib) if kernel is not None else None
    if nat is None:
        pytest.skip("native library (with preprocessing) not built: run 'make native'")
    yield nat
    nat.force("auto")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    d = require_asset("drink", "test_images")
    return [pp.load_image(p) for p in sorted(d.iterdir())]


def _paths(nat: npre.NativePreprocess) -> Iterator[str]:
    ran = []
    for path in PATHS:
        if nat.force(path):
            ran.append(path)
            yield path
    nat.force("auto")
    assert "portable" in ran
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx2" in cpuinfo.read_text():
        assert "avx2" in ran  # this CPU has it: its path must have run


def _within_1(got: np.ndarray, want: np.ndarray, what: object) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max(initial=0) <= 1, (what, int(diff.max()))
    assert np.array_equal(got, want), (what, f"{int((diff > 0).sum())} values off by 1 (allowed, not expected)")


def _unnormalise(x: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """(3, h, w) model input -> the uint8 values whose table entries they are (the tables increase)."""
    out = np.empty(x.shape, np.int16)
    for c in range(3):
        i = np.clip(np.searchsorted(luts[c], x[c]), 1, 255)
        out[c] = np.where(np.abs(luts[c][i - 1] - x[c]) <= np.abs(luts[c][i] - x[c]), i - 1, i)
    return out


# ---------------------------------------------------------------------- the resize itself
def test_real_photos_every_interpolation_every_path(native: npre.NativePreprocess, photos: list[np.ndarray]) -> None:
    for path in _paths(native):
        for i, img in enumerate(photos):
            for interp in INTERPS:
                for size in ((224, 224), (640, 640), (97, 311)):
                    want = pp.cv2_resize(img, size, interp=interp, impl="numpy")
                    _within_1(native.resize(img, size, interp=interp), want, (path, i, interp, size))


def test_crops_are_read_in_place(native: npre.NativePreprocess, photos: list[np.ndarray]) -> None:
    """A crop is a strided view of the photo: no copy, same bytes as the copied crop."""
    img = photos[0]
    h, w = img.shape[:2]
    boxes = [(0, 0, w, h), (10, 20, w // 2, h // 3), (w - 7, h - 3, w, h), (5, 5, 6, h), (3, 9, w - 1, 10)]
    for path in _paths(native):
        for x1, y1, x2, y2 in boxes:
            crop = img[y1:y2, x1:x2]
            for size in ((224, 224), (320, 160)):
                want = pp.cv2_resize(np.ascontiguousarray(crop), size, interp=pp.INTER_LINEAR, impl="numpy")
                _within_1(native.resize(crop, size), want, (path, (x1, y1, x2, y2), size))


@pytest.mark.parametrize(("src", "dst"), [
    ((1, 1), (1, 1)), ((1, 1), (640, 640)), ((1, 37), (224, 224)), ((53, 1), (5, 224)), ((2, 3), (640, 480)),
    ((1000, 3), (1, 1)), ((3, 2000), (224, 1)), ((4000, 30), (7, 11)), ((17, 19), (17, 19)), ((5, 700), (700, 5)),
])
def test_odd_sizes_and_extreme_ratios(native: npre.NativePreprocess, src: tuple[int, int],
                                      dst: tuple[int, int]) -> None:
    """1x1, 1xN, Nx1, huge up- and downscales (area with thousands of taps), identity."""
    img = np.random.default_rng(src[0] * 7 + src[1]).integers(0, 256, (*src, 3), dtype=np.uint8)
    img[0, 0] = (0, 255, 128)
    for path in _paths(native):
        for interp in INTERPS:
            want = pp.cv2_resize(img, dst, interp=interp, impl="numpy")
            _within_1(native.resize(img, dst, interp=interp), want, (path, interp, src, dst))


def test_fx_fy_scaling_like_paddledetection(native: npre.NativePreprocess, photos: list[np.ndarray]) -> None:
    img = photos[2]
    for path in _paths(native):
        for fx, fy in ((0.3, 0.3), (0.5333, 0.41), (1.7, 2.25)):
            for interp in (pp.INTER_LINEAR, pp.INTER_CUBIC, pp.INTER_AREA):
                want = pp.cv2_resize(img, None, fx=fx, fy=fy, interp=interp, impl="numpy")
                _within_1(native.resize(img, None, fx=fx, fy=fy, interp=interp), want, (path, fx, fy, interp))


PIL_SIZES = [(224, 224), (320, 213), (1, 1), (3000, 17), (13, 900), (97, 311)]


def _pillow(img: np.ndarray, size: tuple[int, int], interp: int) -> np.ndarray:
    from PIL import Image

    f = Image.Resampling.BILINEAR if interp == pp.INTER_LINEAR else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, f))


def test_pillow_resize_on_real_photos_every_path(native: npre.NativePreprocess, photos: list[np.ndarray]) -> None:
    """Pillow's own bytes (its fixed point, its pass order: 13.0 and 12.2 pick vertical first for some shapes)."""
    for path in _paths(native):
        for i, img in enumerate(photos):
            h, w = img.shape[:2]
            crop = img[h // 5:h // 5 + 300, w // 4:w // 4 + 200]
            for src in (img, crop):
                sh, sw = src.shape[:2]
                for interp in (pp.INTER_LINEAR, pp.INTER_CUBIC):
                    for size in (*PIL_SIZES, (sw, 50), (60, sh), (sw * 2, sh // 2)):
                        want = _pillow(src, size, interp)
                        _within_1(native.resize_pil(src, size, interp), want, (path, i, interp, size))


@pytest.mark.parametrize(("src", "dst"), [
    ((1, 1), (1, 1)), ((1, 1), (320, 320)), ((1, 37), (224, 224)), ((53, 1), (5, 224)), ((2000, 3), (224, 224)),
    ((2000, 3), (6, 1000)), ((400, 50), (100, 200)), ((300, 300), (301, 299)), ((5, 700), (700, 5)),
])
def test_pillow_resize_odd_sizes(native: npre.NativePreprocess, src: tuple[int, int], dst: tuple[int, int]) -> None:
    img = np.random.default_rng(src[0] * 13 + src[1]).integers(0, 256, (*src, 3), dtype=np.uint8)
    for path in _paths(native):
        for interp in (pp.INTER_LINEAR, pp.INTER_CUBIC):
            _within_1(native.resize_pil(img, dst, interp), _pillow(img, dst, interp), (path, interp, src, dst))


def test_bad_taps_are_refused(native: npre.NativePreprocess) -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    good = npre.plan(10, 10, (4, 4), None, None, pp.INTER_LINEAR)
    bad = npre.Plan(good.oh, good.ow, good.iy + 10, good.wy, good.cols, good.ncols, good.ix, good.wx)
    with pytest.raises(ValueError, match="rejected"):
        native.run(img, bad, None, np.empty((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        native.run(img, good, None, np.empty((4, 5, 3), np.uint8))


# ---------------------------------------------------------------------- the model inputs
def _det_numpy(ops: list[dict], img: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    monkeypatch.setenv(npre.ENV, "0")
    try:
        return pp.DetPreprocess([dict(o) for o in ops])(img)
    finally:
        monkeypatch.setenv(npre.ENV, "auto")


@pytest.mark.parametrize("k", range(len(DET_OPS)))
def test_detector_feeds_match_numpy(native: npre.NativePreprocess, photos: list[np.ndarray], k: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ops = DET_OPS[k]
    luts = pp._det_luts(ops[1])
    for path in _paths(native):
        for i, img in enumerate(photos[:6]):
            want = _det_numpy(ops, img, monkeypatch)
            got = native.det_feeds(ops, img)
            assert got is not None and set(got) == set(want)
            for key in ("im_shape", "scale_factor"):
                assert np.array_equal(got[key], want[key]) and got[key].dtype == want[key].dtype, key
            g, w = got["image"], want["image"]
            assert g.shape == w.shape and g.dtype == w.dtype == np.float32 and g.flags.c_contiguous
            oh, ow = (int(v) for v in want["im_shape"][0])
            _within_1(_unnormalise(g[0, :, :oh, :ow], luts), _unnormalise(w[0, :, :oh, :ow], luts), (path, k, i))
            assert np.array_equal(g, w), (path, k, i)  # padding zeros included


@pytest.mark.parametrize(("fit", "resize", "interp"), [
    ("stretch", "cv2", "bilinear"), ("letterbox", "cv2", "bilinear"), ("stretch", "cv2", "area"),
    ("letterbox", "pil", "bilinear"), ("stretch", "pil", "bilinear"), ("stretch", "pil", "bicubic")])
def test_extractor_input_matches_numpy(native: npre.NativePreprocess, photos: list[np.ndarray], fit: str,
                                       resize: str, interp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PP-ShiTu's extractor (stretch, cv2 bilinear) and the demo bundle's (letterbox, Pillow)."""
    pre = pp.RecPreprocess(size=(224, 224) if fit == "stretch" else (320, 320), fit=fit, resize=resize, interp=interp)
    luts = pre.luts()
    img = photos[7]
    h, w = img.shape[:2]
    crops = [img, img[h // 4:h // 2, w // 3:w - 5], img[:3, :], img[:, :2], img[10:11, 20:21]]
    for path in _paths(native):
        for j, crop in enumerate(crops):
            monkeypatch.setenv(npre.ENV, "0")
            want = pre(crop)
            monkeypatch.setenv(npre.ENV, "auto")
            got = native.rec_input(pre, crop)
            assert got is not None and got.shape == want.shape and got.dtype == want.dtype
            what = (path, fit, resize, interp, j)
            _within_1(_unnormalise(got[0], luts), _unnormalise(want[0], luts), what)
            assert np.array_equal(got, want), what


def test_preprocess_objects_use_native_and_fall_back(native: npre.NativePreprocess, photos: list[np.ndarray],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook in preprocess.py: native when present, numpy when disabled or not covered."""
    monkeypatch.setenv(npre.ENV, "auto")
    if npre.get() is None:
        pytest.skip("the default library lookup finds no native preprocessing")
    img = photos[1]
    det, rec = pp.DetPreprocess([dict(o) for o in DET_OPS[0]]), pp.RecPreprocess()
    on = det(img), rec(img)
    monkeypatch.setenv(npre.ENV, "0")
    assert npre.get() is None
    off = det(img), rec(img)
    assert all(np.array_equal(on[0][k], off[0][k]) for k in off[0]) and np.array_equal(on[1], off[1])
    # not fused -> None -> numpy: a Pillow filter other than bilinear / bicubic, an unusual op order, a grey image
    assert native.rec_input(pp.RecPreprocess(resize="pil", interp="lanczos"), img) is None
    assert native.det_feeds([DET_OPS[0][1], DET_OPS[0][0], DET_OPS[0][2]], img) is None
    assert native.rec_input(pp.RecPreprocess(), img[:, :, 0]) is None


def test_forced_path_by_environment(native: npre.NativePreprocess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(npre.ENV, "portable")
    nat = npre.get()
    assert nat is not None and nat.kernel == "portable"
    monkeypatch.setenv(npre.ENV, "no-such-path")
    with pytest.raises(pp.EdgeShituError, match="no such preprocessing path"):
        npre.get()
    native.force("auto")


def test_library_without_preprocessing_means_numpy() -> None:
    """An older libeshamming.so (Hamming kernel only) has no es_pre_* symbols: None, no error."""
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no libc to stand in for an old library")
    assert npre.from_library(libc) is None


# ---------------------------------------------------------------------- other builds
def _job(img: np.ndarray, size: tuple[int, int], interp: int, luts: np.ndarray | None) -> tuple[bytes, npre.Plan]:
    p = npre.plan(img.shape[0], img.shape[1], size, None, None, interp)
    head = b"ESPTEST1" + struct.pack("<8I", img.shape[0], img.shape[1], p.oh, p.ow, p.iy.shape[1], p.ix.shape[1],
                                     0 if p.cols is None else p.ncols, luts is not None)
    body = [np.ascontiguousarray(img).tobytes(), p.iy.astype("<i4").tobytes(), p.wy.astype("<f4").tobytes(),
            b"" if p.cols is None else p.cols.astype("<i4").tobytes(), p.ix.astype("<i4").tobytes(),
            p.wx.astype("<f4").tobytes(), b"" if luts is None else luts.astype("<f4").tobytes()]
    return head + b"".join(body), p


def _read(raw: bytes, p: npre.Plan | npre.PilPlan, float_out: bool) -> dict[str, np.ndarray]:
    n = p.oh * p.ow * 3
    pos, out = 0, {}
    while pos < len(raw):
        k = raw[pos]
        name = raw[pos + 1:pos + 1 + k].decode()
        pos += 1 + k
        if float_out:
            out[name] = np.frombuffer(raw, "<f4", n, pos).reshape(3, p.oh, p.ow)
            pos += 4 * n
        else:
            out[name] = np.frombuffer(raw, np.uint8, n, pos).reshape(p.oh, p.ow, 3)
            pos += n
    return out


def _pil_job(img: np.ndarray, size: tuple[int, int], interp: int,
             luts: np.ndarray | None) -> tuple[bytes, npre.PilPlan]:
    p = npre.pil_plan(img.shape[0], img.shape[1], size, interp)
    tx = 0 if p.ix is None else p.ix.shape[1]
    ty = 0 if p.iy is None else p.iy.shape[1]
    head = b"ESPTESTP" + struct.pack("<10I", img.shape[0], img.shape[1], p.oh, p.ow, p.y0, p.rows, tx, ty,
                                     p.vertical_first, luts is not None)
    body = [np.ascontiguousarray(img).tobytes()]
    body += [a.astype("<i4").tobytes() for a in (p.ix, p.kx, p.iy, p.ky) if a is not None]
    body.append(b"" if luts is None else luts.astype("<f4").tobytes())
    return head + b"".join(body), p


CROSS_CASES = [((224, 224), pp.INTER_LINEAR, False), ((640, 640), pp.INTER_CUBIC, True),
               ((61, 45), pp.INTER_AREA, False), ((150, 97), pp.INTER_LANCZOS4, False),
               ((320, 320), pp.INTER_LINEAR, True), ((3, 500), pp.INTER_NEAREST, False)]


# Pillow: horizontal first, vertical first (height shrinks far more), one pass only, identity
PIL_CROSS_CASES = [((320, 213), pp.INTER_LINEAR, True), ((224, 224), pp.INTER_CUBIC, False),
                   ((400, 20), pp.INTER_LINEAR, False), ((57, 3), pp.INTER_LINEAR, False)]


@pytest.mark.cross
@pytest.mark.parametrize("triple", list(TARGETS))
def test_neon_under_qemu_matches_numpy(tmp_path: Path, triple: str, photos: list[np.ndarray]) -> None:
    qemu, cpu, expected = TARGETS[triple]
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} not installed (run 'make native-deps')")
    driver = _built(BUILD / triple / "espreprocess_driver", "cross-aarch64" if "aarch64" in triple else "cross-armhf")
    rec = pp.RecPreprocess()
    luts = rec.luts()
    img = photos[5]
    h, w = img.shape[:2]
    sources = [img[h // 5:h // 5 + 300, w // 4:w // 4 + 200], photos[3], np.full((1, 1, 3), 200, np.uint8)]
    for s, src in enumerate(sources):
        for size, interp, with_luts in CROSS_CASES:
            job, p = _job(src, size, interp, luts if with_luts else None)
            (tmp_path / "in.bin").write_bytes(job)
            r = subprocess.run([qemu, "-cpu", cpu, str(driver), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == expected
            want = pp.cv2_resize(np.ascontiguousarray(src), size, interp=interp, impl="numpy")
            results = _read((tmp_path / "out.bin").read_bytes(), p, with_luts)
            assert set(results) == {"portable", expected}
            _check_cross(results, want, luts if with_luts else None, (triple, s, size, interp))
        for size, interp, with_luts in PIL_CROSS_CASES:
            job, pp_ = _pil_job(src, size, interp, luts if with_luts else None)
            (tmp_path / "in.bin").write_bytes(job)
            r = subprocess.run([qemu, "-cpu", cpu, str(driver), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            results = _read((tmp_path / "out.bin").read_bytes(), pp_, with_luts)
            assert set(results) == {"portable", expected}
            _check_cross(results, _pillow(src, size, interp), luts if with_luts else None, (triple, "pil", s, size))


def _check_cross(results: dict[str, np.ndarray], want: np.ndarray, luts: np.ndarray | None, what: tuple) -> None:
    for name, got in results.items():
        if luts is not None:
            want_u8 = want.transpose(2, 0, 1).astype(np.int16)
            _within_1(_unnormalise(got, luts), want_u8, (name, *what))
            assert np.array_equal(got, pp.apply_channel_luts(want, luts, False, True)), (name, *what)
        else:
            _within_1(got, want, (name, *what))


def test_android_x86_64_library_matches_numpy_on_host(photos: list[np.ndarray]) -> None:
    """The clang-built, freestanding Android library: its portable and AVX2 paths, on this host."""
    nat = npre.from_library(_built(BUILD / "android" / "x86_64" / "libeshamming.so", "android-libs"))
    assert nat is not None
    img = photos[4]
    for path in _paths(nat):
        for interp in INTERPS:
            want = pp.cv2_resize(img, (224, 224), interp=interp, impl="numpy")
            _within_1(nat.resize(img, (224, 224), interp=interp), want, ("android", path, interp))
        for size in ((320, 213), (img.shape[1] * 2, 40)):
            _within_1(nat.resize_pil(img, size), _pillow(img, size, pp.INTER_LINEAR), ("android pil", path, size))


def test_sanitized_driver_reads_and_writes_nothing_outside_its_buffers(tmp_path: Path) -> None:
    """The driver built here with AddressSanitizer + UBSan (its sections in exactly-sized
    allocations): the padded 4-lane loads, the last-pixel loads and the tails of every path stay
    inside the image, the taps, the output and the scratch buffers, on shapes that end on them."""
    cc = shutil.which("clang") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    native_dir = Path(npre.__file__).resolve().parent / "native"
    exe = tmp_path / "driver"
    build = subprocess.run([cc, "-g", "-O1", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                            "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-o", str(exe),
                            str(native_dir / "espreprocess_driver.c"), str(native_dir / "espreprocess.c")],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build with sanitizers: {build.stderr.strip().splitlines()[-1:]}")
    rng = np.random.default_rng(5)
    luts = pp.RecPreprocess().luts()
    env = {"ASAN_OPTIONS": "detect_leaks=0", "PATH": "/usr/bin:/bin"}
    for shape in ((1, 1), (1, 2), (3, 5), (37, 1), (7, 301), (300, 3)):
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        for size in ((1, 1), (3, 200), (150, 2), (shape[1], 9), (11, shape[0])):
            jobs = [(*_job(img, size, interp, lt), pp.cv2_resize(img, size, interp=interp, impl="numpy"), lt)
                    for interp in (pp.INTER_LINEAR, pp.INTER_CUBIC, pp.INTER_AREA) for lt in (None, luts)]
            jobs += [(*_pil_job(img, size, pp.INTER_LINEAR, lt), _pillow(img, size, pp.INTER_LINEAR), lt)
                     for lt in (None, luts)]
            for job, p, want, lt in jobs:
                (tmp_path / "in.bin").write_bytes(job)
                r = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], env=env,
                                   capture_output=True, text=True, timeout=60)
                assert r.returncode == 0, (shape, size, r.stderr[-3000:])
                for name, got in _read((tmp_path / "out.bin").read_bytes(), p, lt is not None).items():
                    expect = want if lt is None else pp.apply_channel_luts(want, lt, False, True)
                    assert np.array_equal(got, expect), (name, shape, size)
