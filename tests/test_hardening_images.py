"""Issue 13: photos are decoded within a pixel budget (checked from the header, before any pixel
is decoded) and only regular files are opened (a FIFO would block forever). Normal photos decode
to the very same bytes as before."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image, ImageOps

from edge_shitu.errors import EdgeShituError
from edge_shitu.preprocess import DEFAULT_MAX_PIXELS, _to_rgb_array, decode_image, load_image


def png_bomb(path: Path, w: int, h: int) -> Path:
    """A valid 1-bit PNG of w x h white pixels, a few KB on disk (written without decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * ((w + 7) // 8)
    idat = b"".join(comp.compress(row * 500) for _ in range(h // 500)) + comp.compress(row * (h % 500))
    idat += comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def returns_within(fn: Callable[[], Any], seconds: float = 20) -> Any:
    """Run fn in a daemon thread: a hang fails the test instead of blocking the suite."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ============================================================================ the pixel budget
def test_decompression_bomb_is_refused_from_its_header_in_bounded_memory(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", 13000, 13000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(EdgeShituError) as e:
        load_image(bomb)
    msg = str(e.value)
    assert "\n" not in msg and "13000x13000" in msg and "169.0 megapixels" in msg and "40-megapixel" in msg, msg
    with pytest.raises(EdgeShituError, match="13000x13000"):
        decode_image(bomb.read_bytes(), name="bomb.png")
    # in a fresh process: the peak stays far below the 169 MB (1-bit) .. 507 MB (RGB) a decode needs
    code = "\n".join([
        "import resource, sys",
        "from edge_shitu.preprocess import load_image",
        "from edge_shitu.errors import EdgeShituError",
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "try:",
        "    load_image(sys.argv[1])",
        "except EdgeShituError as e:",
        "    print(str(e), file=sys.stderr)",
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)",
    ])
    proc = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "13000x13000" in proc.stderr, proc.stderr
    assert int(proc.stdout.strip()) < 60, f"decoding the bomb grew the process by {proc.stdout.strip()} MB"


def test_the_budget_is_a_parameter_and_the_limit_is_exact(tmp_path: Path) -> None:
    p = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(p)
    assert load_image(p, max_pixels=8000).shape == (80, 100, 3)
    assert decode_image(p.read_bytes(), max_pixels=8000).shape == (80, 100, 3)
    with pytest.raises(EdgeShituError, match=r"100x80 \(0\.0 megapixels\), above the 0\.007999-megapixel"):
        load_image(p, max_pixels=7999)
    for bad in (0, -5, "big", 1.5, True):
        with pytest.raises(EdgeShituError, match="max_pixels must be an integer >= 1"):
            load_image(p, max_pixels=bad)  # type: ignore[arg-type]
    assert DEFAULT_MAX_PIXELS == 40_000_000
    with pytest.raises(EdgeShituError, match="6400x6400"):  # 40.96 MP: over the default, from the header
        load_image(png_bomb(tmp_path / "big.png", 6400, 6400))


def test_above_pillows_own_limit_is_one_line_too(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "huge.png", 20000, 20000)  # 400 MP: Pillow itself refuses it in open()
    with pytest.raises(EdgeShituError) as e:
        load_image(bomb, max_pixels=10**9)
    assert "\n" not in str(e.value) and "too large to decode safely" in str(e.value)


def test_no_global_side_effect_leaks(tmp_path: Path) -> None:
    before_limit, before_filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    p = tmp_path / "ok.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(p)
    load_image(p, max_pixels=100)
    for size in (11, 13000):
        with pytest.raises(EdgeShituError):
            load_image(png_bomb(tmp_path / f"b{size}.png", size, size), max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == before_limit and list(warnings.filters) == before_filters


# ============================================================================ non-regular files
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(EdgeShituError, match="is a FIFO, not an image file") as e:
        returns_within(lambda: load_image(fifo))
    assert "\n" not in str(e.value)
    link = tmp_path / "link.jpg"
    link.symlink_to(fifo)
    with pytest.raises(EdgeShituError, match="is a FIFO"):
        returns_within(lambda: load_image(link))


def test_directory_device_and_socket_are_refused(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(EdgeShituError, match="is a directory, not an image file"):
        load_image(tmp_path / "folder.jpg")
    with pytest.raises(EdgeShituError, match="is a device, not an image file"):
        returns_within(lambda: load_image("/dev/zero"))  # reading it would never end
    sock_path = tmp_path / "s.png"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(sock_path))
        with pytest.raises(EdgeShituError, match="is a socket"):
            returns_within(lambda: load_image(sock_path))
    finally:
        s.close()
    with pytest.raises(EdgeShituError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(EdgeShituError, match="does not exist"):
        load_image(tmp_path / "folder.jpg" / "x" / "y.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(EdgeShituError, match=r"is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.png")


# ============================================================================ normal photos unchanged
def _reference_decode(data: bytes) -> np.ndarray:
    """What load_image did before the budget (Pillow from bytes, EXIF rotation, RGB)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb_array(img)


def test_normal_photos_decode_to_the_same_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    files = []
    for mode in ("RGB", "L", "RGBA", "P", "CMYK", "LA", "1"):
        for ext in ("png", "jpg", "tiff", "bmp", "webp", "gif"):
            p = tmp_path / f"{mode}.{ext}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    base.convert(mode).save(p)
                except (OSError, ValueError, KeyError):
                    continue
            files.append(p)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decoded upright
    base.save(tmp_path / "rotated.jpg", exif=exif)
    files.append(tmp_path / "rotated.jpg")
    g16 = tmp_path / "g16.png"
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(g16)
    files.append(g16)
    assert len(files) > 20
    for p in files:
        got = load_image(p)
        want = _reference_decode(p.read_bytes())
        assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want), p
    assert load_image(tmp_path / "rotated.jpg").shape == (53, 37, 3)


def test_real_photos_decode_to_the_same_bytes() -> None:
    from edge_shitu.assets import DRINK_GALLERY
    from tests.conftest import require_asset

    photos = sorted(require_asset(*DRINK_GALLERY).glob("*/*.jpg"))[::40]
    assert photos
    for p in photos:
        assert np.array_equal(load_image(p), _reference_decode(p.read_bytes())), p


# ============================================================================ through the CLI
@pytest.mark.integration
def test_recognize_refuses_bad_photos_one_line_each(rpi4_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The runtime passes the board's budget; each bad photo is one line, the others still run."""
    from tests.bundles import cli

    b = rpi4_bundle.copy(tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text("utf-8"))
    m["board"]["max_image_pixels"] = 1_000_000
    (b / "manifest.json").write_text(json.dumps(m, ensure_ascii=False), "utf-8")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(good)
    over = tmp_path / "over.png"
    Image.fromarray(np.full((1001, 1000, 3), 128, np.uint8)).save(over)  # 1.001 MP > the board's 1 MP
    bomb = png_bomb(tmp_path / "bomb.png", 13000, 13000)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    proc = cli("recognize", str(b), str(good), str(over), str(bomb), str(fifo), "--json", timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert {Path(f).name for f in doc["failed"]} == {"over.png", "bomb.png", "fifo.jpg"}
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("edge-shitu: error:")]
    assert any("1000x1001" in ln and "1-megapixel" in ln for ln in errs), errs
    assert any("FIFO" in ln for ln in errs), errs
