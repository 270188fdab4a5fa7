"""Image decoding and model preprocessing for PP-ShiTu, with numpy and Pillow only.

This module runs on devices (no cv2, no paddle), yet the reference models were trained and their
galleries embedded with OpenCV preprocessing (PaddleDetection / PaddleClas ``deploy/python``).
A Pillow resize is NOT a drop-in for ``cv2.resize``: Pillow's BILINEAR/BICUBIC filters
antialias when downscaling (their support grows with the scale), while OpenCV samples a fixed
2x2 / 4x4 neighbourhood at half-pixel centres. Measured on drink photos going to 224x224: a
mean difference of 1.5-5.4 grey levels and up to 96 on edges; on the real-weight PP-LCNet x1.0
orientation classifier the output cosine between the two falls to 0.955 on some photos. So the
resizes below re-implement
OpenCV's sampling in numpy (same coordinate mapping, same edge clamping, same cubic A=-0.75, same
Lanczos-4 window); outputs match ``cv2.resize`` on uint8 images to within one grey level (OpenCV
uses 11-bit fixed-point weights, we use float32 and round). ``RecPreprocess(resize="pil")`` is
kept for callers that prefer Pillow's antialiased resize (it is measurably off the reference).
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_shitu.errors import EdgeShituError

PathLike = Union[str, "os.PathLike[str]"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# OpenCV interpolation codes, as written in PaddleDetection's infer_cfg.yml (``interp: 2``).
INTER_NEAREST, INTER_LINEAR, INTER_CUBIC, INTER_AREA, INTER_LANCZOS4 = 0, 1, 2, 3, 4
_INTERP_BY_NAME = {
    "nearest": INTER_NEAREST,
    "bilinear": INTER_LINEAR,
    "linear": INTER_LINEAR,
    "bicubic": INTER_CUBIC,
    "cubic": INTER_CUBIC,
    "area": INTER_AREA,
    "lanczos": INTER_LANCZOS4,
    "lanczos4": INTER_LANCZOS4,
}


# ----------------------------------------------------------------------------- decoding

# Decoding budget: a photo whose header declares more pixels is refused before it is decoded
# (a 46 KB PNG can declare 13000x13000 and take 2 GB to decode). The device runtime passes the
# board's ``max_image_pixels`` (manifest ``board``) instead when the bundle has one.
DEFAULT_MAX_PIXELS = 40_000_000


def load_image(path: PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode any common image file to an (H, W, 3) uint8 RGB array, upright.

    Camera JPEGs carry their rotation in EXIF; ignoring it feeds the models sideways products.
    Every failure a user can cause (missing, empty, truncated, not an image, not a regular file,
    more pixels than ``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`) becomes one
    EdgeShituError line naming the file, so a bad gallery photo does not kill a batch job
    with a Pillow traceback. A FIFO, device or directory is refused before it is opened
    (reading a FIFO would block forever).
    """
    return decode_image(read_image_file(path), str(path), max_pixels)


def read_image_file(path: PathLike) -> bytes:
    """A photo file's bytes, with :func:`load_image`'s refusals (missing, unreadable, not a regular
    file, empty) as one line naming the file. Shared by the decoder and ``gallery build``, which
    hashes the bytes it embeds."""
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise EdgeShituError(f"image {p} does not exist: check the path") from None
    except OSError as e:
        raise EdgeShituError(f"image {p} cannot be read ({e.strerror or e}): check permissions") from None
    _need_regular(st.st_mode, p)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, open() does not block
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise EdgeShituError(f"image {p} does not exist: check the path") from None
    except OSError as e:
        raise EdgeShituError(f"image {p} cannot be read ({e.strerror or e}): check permissions") from None
    with os.fdopen(fd, "rb") as f:
        _need_regular(os.fstat(f.fileno()).st_mode, p)
        try:
            data = f.read()
        except OSError as e:
            raise EdgeShituError(f"image {p} cannot be read ({e.strerror or e}): check permissions") from None
    if not data:
        raise EdgeShituError(f"image {p} is empty (0 bytes): re-copy or remove it")
    return data


def _need_regular(mode: int, p: Path) -> None:
    if stat.S_ISDIR(mode):
        raise EdgeShituError(f"image {p} is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise EdgeShituError(f"image {p} is {kind}, not an image file: pass a photo file")


def _pixel_budget(max_pixels: int | None) -> int:
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise EdgeShituError(f"max_pixels must be an integer >= 1, got {max_pixels!r}")
    return max_pixels


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (see :func:`load_image`); ``name`` is only used in errors."""
    budget = _pixel_budget(max_pixels)
    if not data:
        raise EdgeShituError(f"image {name} is empty (0 bytes): re-copy or remove it")
    return _decode(io.BytesIO(data), name, budget)


def _over_budget(name: str, w: int, h: int, budget: int) -> EdgeShituError:
    return EdgeShituError(f"image {name} is {w}x{h} ({w * h / 1e6:.1f} megapixels), above the "
                          f"{budget / 1e6:g}-megapixel decoding budget: downscale it (the budget: the board's "
                          f"max_image_pixels, default {DEFAULT_MAX_PIXELS / 1e6:g} megapixels)")


def _decode(fp: Any, name: str, budget: int) -> np.ndarray:
    """Pillow decode of an open binary file, the size read from the header checked first."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (instead of failing) on some corrupt EXIF blocks; that is not our user's
            # problem and must not spam the console. (Its decompression-bomb warning is moot: the
            # budget below is checked before any pixel is decoded.)
            warnings.simplefilter("ignore")
            with Image.open(fp) as img:  # lazy: reads the header only
                w, h = img.size
                if w * h > budget:
                    raise _over_budget(name, w, h, budget)
                img.load()  # truncation only shows up here
                if img.size[0] * img.size[1] > budget:  # formats whose size is only final once loaded
                    raise _over_budget(name, img.size[0], img.size[1], budget)
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb_array(img)
    except EdgeShituError:
        raise
    except UnidentifiedImageError:
        raise EdgeShituError(f"image {name} is not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:  # above Pillow's own hard limit (2x MAX_IMAGE_PIXELS)
        raise EdgeShituError(f"image {name} is too large to decode safely ({e}); the decoding budget is "
                             f"{budget / 1e6:g} megapixels: downscale it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise EdgeShituError(f"image {name} is truncated or corrupt ({e}): re-copy or remove it") from None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Map every Pillow mode to 8-bit RGB without silently clipping high-bit-depth data."""
    if img.width == 0 or img.height == 0:
        raise EdgeShituError("image has zero width or height")
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit PNG/TIFF greyscale arrives as I;16 or I. Pillow's convert("L") CLIPS at 255
        # instead of scaling, which turns most photos white: scale by the type's range instead.
        a = np.asarray(img).astype(np.float64)
        if mode == "F":
            hi = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0 if np.nanmax(a) <= 255.0 else 65535.0
        else:
            hi = 255.0 if a.size and a.max() <= 255 else 65535.0
        g = np.clip(np.nan_to_num(a / hi * 255.0), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Product cut-outs are usually transparent PNGs: flatten on white (what a viewer shows)
        # rather than exposing whatever colour hides under alpha=0 (what cv2.imread does).
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


# ----------------------------------------------------------------------------- resizing

def _taps(dst: int, src: int, inv_scale: float, interp: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, shape (taps, dst), reproducing cv2.resize's sampling.

    ``inv_scale`` is destination/source, exactly what OpenCV gets from fx/fy or dsize; the
    arithmetic below follows imgproc/src/resize.cpp so that edge pixels and rounding agree.
    """
    scale = 1.0 / inv_scale
    d = np.arange(dst, dtype=np.float64)
    if interp == INTER_NEAREST:
        idx = np.minimum(np.floor(d * scale).astype(np.int64), src - 1)
        return idx[None, :], np.ones((1, dst), np.float32)
    if interp == INTER_AREA:
        if scale >= 1.0:
            return _area_taps(dst, src, scale)
        return _area_as_linear(dst, src, inv_scale)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    t = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    if interp == INTER_LINEAR:
        # OpenCV pins samples left of the first / right of the last centre to the edge pixel.
        low, high = s < 0, s >= src - 1
        s[low], t[low] = 0, 0.0
        s[high], t[high] = src - 1, 0.0
        idx = np.stack([s, s + 1])
        w = np.stack([1.0 - t, t])
    elif interp == INTER_CUBIC:
        a = -0.75
        x0, x1, x2 = t + 1.0, t, 1.0 - t
        w0 = ((a * x0 - 5 * a) * x0 + 8 * a) * x0 - 4 * a
        w1 = ((a + 2) * x1 - (a + 3)) * x1 * x1 + 1
        w2 = ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1
        idx = np.stack([s - 1, s, s + 1, s + 2])
        w = np.stack([w0, w1, w2, 1.0 - w0 - w1 - w2])
    elif interp == INTER_LANCZOS4:
        k = np.arange(8, dtype=np.float64)[:, None]
        x = (t.astype(np.float64)[None, :] + 3.0 - k) * (math.pi / 4)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.abs(x) < 1e-9, 1.0, np.sin(4 * x) * np.sin(x) / (4 * x * x))
        w = w / w.sum(axis=0, keepdims=True)
        idx = s[None, :] + np.arange(-3, 5)[:, None]
    else:
        raise ValueError(f"interpolation {interp}")
    return np.clip(idx, 0, src - 1), w.astype(np.float32)


def _area_taps(dst: int, src: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's true area average for downscaling: each source pixel weighs by its covered part."""
    n = math.ceil(scale) + 2
    idx = np.zeros((n, dst), np.int64)
    w = np.zeros((n, dst), np.float32)
    for dx in range(dst):
        fs1 = dx * scale
        fs2 = fs1 + scale
        cell = min(scale, src - fs1)
        s1, s2 = math.ceil(fs1), math.floor(fs2)
        s2 = min(s2, src - 1)
        s1 = min(s1, s2)
        taps: list[tuple[int, float]] = []
        if s1 - fs1 > 1e-3:
            taps.append((s1 - 1, (s1 - fs1) / cell))
        taps.extend((sx, 1.0 / cell) for sx in range(s1, s2))
        if fs2 - s2 > 1e-3:
            taps.append((s2, min(min(fs2 - s2, 1.0), cell) / cell))
        for k, (sx, wt) in enumerate(taps):
            idx[k, dx], w[k, dx] = sx, wt
    return idx, w


def _opencv() -> Any:
    """OpenCV when installed and not disabled (EDGE_SHITU_RESIZE=numpy), else None."""
    if os.environ.get("EDGE_SHITU_RESIZE", "auto").lower() == "numpy":
        return None
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def cv2_resize(img: np.ndarray, size: tuple[int, int] | None = None, fx: float | None = None,
               fy: float | None = None, interp: int = INTER_LINEAR, impl: str = "auto") -> np.ndarray:
    """``cv2.resize(img, size, fx=fx, fy=fy, interpolation=interp)`` for uint8 HWC images.

    Follows OpenCV's argument rules: ``size`` is (width, height); without it the output size
    is round(w*fx), round(h*fy) and the coordinate mapping uses fx/fy themselves (not the
    rounded size), as PaddleDetection's ``Resize`` relies on. ``impl="auto"`` hands the work
    to OpenCV where it is installed (the optional fast path on a device: ~50x faster, same
    result within one grey level), ``"numpy"`` always uses the numpy implementation.
    """
    cv2 = _opencv() if impl == "auto" else None
    if cv2 is not None:
        return cv2.resize(img, size, fx=fx or 0, fy=fy or 0, interpolation=interp)
    h, w = img.shape[:2]
    ow, oh, iy, wy, ix, wx = resize_taps(h, w, size, fx, fy, interp)
    squeeze = img.ndim == 2
    a = img[:, :, None] if squeeze else img
    # A big downscale reads only a few source columns per output pixel (1200 -> 224 bilinear:
    # 448 of 1200): gather just those first, then remap the taps. The values summed and their
    # order are unchanged, so the bytes are too.
    # The row pass below already gathers only the rows it reads; columns are cut here, when
    # that saves enough to pay for the copy.
    ux = np.unique(ix)
    if ux.size * 2 <= w:
        a = a.take(ux, axis=1)
        ix, w = np.searchsorted(ux, ix), ux.size
    # Separable taps, gathered along axis 0 both times (contiguous row copies; the horizontal
    # pass runs on the transposed image) and accumulated in place: 2x faster than gathering
    # columns, which matters on a Raspberry Pi without OpenCV. Same arithmetic, same bytes.
    c = a.shape[2]
    rows = np.zeros((oh, w, c), np.float32)
    tmp = np.empty((oh, w, c), np.float32)
    for k in range(iy.shape[0]):
        np.multiply(a[iy[k]], wy[k][:, None, None], out=tmp)
        rows += tmp
    cols = np.ascontiguousarray(rows.transpose(1, 0, 2))  # (w, oh, c)
    out = np.zeros((ow, oh, c), np.float32)
    tmp = np.empty((ow, oh, c), np.float32)
    for k in range(ix.shape[0]):
        np.multiply(cols[ix[k]], wx[k][:, None, None], out=tmp)
        out += tmp
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    res = np.ascontiguousarray(out.astype(np.uint8).transpose(1, 0, 2))
    return res[:, :, 0] if squeeze else res


def resize_taps(h: int, w: int, size: tuple[int, int] | None, fx: float | None, fy: float | None,
                interp: int) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ow, oh, iy, wy, ix, wx): :func:`cv2_resize`'s output size and separable taps (indices and
    float32 weights, shape (taps, out)). One function for both the numpy path and the native one
    (runtimes/native_preprocess.py), which must sum the very same weights to give the same bytes."""
    if size is None:
        if not fx or not fy:
            raise ValueError("give size or fx and fy")
        size = (int(np.rint(w * fx)), int(np.rint(h * fy)))
        ix_scale, iy_scale = float(fx), float(fy)
    else:
        ix_scale, iy_scale = size[0] / w, size[1] / h
    ow, oh = int(size[0]), int(size[1])
    if ow <= 0 or oh <= 0:
        raise ValueError(f"resize of a {w}x{h} image gives an empty {ow}x{oh} image")
    if interp == INTER_AREA and not (ix_scale <= 1.0 and iy_scale <= 1.0):
        # OpenCV only area-averages when BOTH axes shrink; otherwise it uses its "area-mode"
        # bilinear variant on both axes.
        iy, wy = _area_as_linear(oh, h, iy_scale)
        ix, wx = _area_as_linear(ow, w, ix_scale)
    else:
        iy, wy = _taps(oh, h, iy_scale, interp)
        ix, wx = _taps(ow, w, ix_scale, interp)
    return ow, oh, iy, wy, ix, wx


def _area_as_linear(dst: int, src: int, inv_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's bilinear stand-in for INTER_AREA when an axis is enlarged (applied to both axes)."""
    scale = 1.0 / inv_scale
    d = np.arange(dst, dtype=np.float64)
    s = np.floor(d * scale)
    f = ((d + 1) - (s + 1) * inv_scale).astype(np.float32)
    t = np.where(f <= 0, np.float32(0), f - np.floor(f)).astype(np.float32)
    s = s.astype(np.int64)
    high = s >= src - 1
    s[high], t[high] = src - 1, 0.0
    return np.clip(np.stack([s, s + 1]), 0, src - 1), np.stack([1.0 - t, t]).astype(np.float32)


def _interp_code(value: Any) -> int:
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in _INTERP_BY_NAME:
            raise EdgeShituError(f"unknown interpolation {value!r}: use one of {sorted(_INTERP_BY_NAME)}")
        return _INTERP_BY_NAME[key]
    code = int(value)
    if code not in (0, 1, 2, 3, 4):
        raise EdgeShituError(f"unsupported OpenCV interpolation code {value}: use 0..4")
    return code


# ----------------------------------------------------------------------------- native hook
# Issue 16 item 4. DetPreprocess / RecPreprocess first ask the C preprocessing
# (runtimes/native_preprocess.py, in the Hamming kernel's library) for their whole output: resize,
# tables and layout in one pass, byte-identical to the numpy code in this module (and to Pillow for
# resize="pil"), which stays the reference and the fallback (no library, an older one,
# EDGE_SHITU_NATIVE_PREPROCESS=0, Pillow filters other than bilinear / bicubic, op lists it does
# not fuse). It is preferred to OpenCV too: numpy's bytes, and faster (benchmarks/bench_preprocess.py).

def _native() -> Any:
    """The native preprocessing, or None (numpy)."""
    try:
        from edge_shitu.runtimes import native_preprocess
    except ImportError:  # an install without the runtimes package
        return None
    return native_preprocess.get()
# ----------------------------------------------------------------------------- end of native hook


# ----------------------------------------------------------------------------- detector

_DET_OPS = ("Resize", "NormalizeImage", "Permute", "PadStride")


@dataclass
class DetPreprocess:
    """PaddleDetection's deploy preprocessing (Resize, NormalizeImage, Permute, PadStride).

    Built from the ``Preprocess`` list of the model's ``infer_cfg.yml`` so that a re-exported
    detector with another input size or normalisation needs no code change. ``ops`` keeps the
    list verbatim, which is also what the bundle manifest stores.
    """

    ops: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for op in self.ops:
            kind = op.get("type")
            if kind not in _DET_OPS:
                raise EdgeShituError(
                    f"detector preprocess op {kind!r} is not supported (supported: {', '.join(_DET_OPS)}); "
                    "export the detector with one of these in infer_cfg.yml")
            if kind == "Resize":
                ts = op.get("target_size")
                if isinstance(ts, int):
                    op["target_size"] = [ts, ts]
                elif not (isinstance(ts, (list, tuple)) and len(ts) == 2 and min(ts) > 0):
                    raise EdgeShituError(f"Resize.target_size must be [h, w] > 0, got {ts!r} in infer_cfg.yml")
                _interp_code(op.get("interp", INTER_LINEAR))

    @classmethod
    def from_infer_cfg(cls, cfg: PathLike | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> DetPreprocess:
        """Accept the path of ``infer_cfg.yml``, its parsed dict, or its ``Preprocess`` list."""
        if isinstance(cfg, (str, os.PathLike)):
            p = Path(cfg)
            if p.is_dir():
                p = p / "infer_cfg.yml"
            try:
                import yaml  # not a device dependency: devices load the manifest dict instead
            except ImportError:
                raise EdgeShituError(
                    f"reading {p} needs pyyaml: pip install pyyaml, or pass the parsed dict") from None
            try:
                cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise EdgeShituError(f"detector config {p} does not exist: export infer_cfg.yml with "
                                     "the model") from None
            except yaml.YAMLError as e:
                raise EdgeShituError(f"detector config {p} is not valid YAML ({e})") from None
        if isinstance(cfg, Mapping):
            if "Preprocess" not in cfg:
                raise EdgeShituError("detector config has no 'Preprocess' list (is this a PaddleDetection "
                                     "infer_cfg.yml?)")
            cfg = cfg["Preprocess"]
        if not isinstance(cfg, Sequence) or not all(isinstance(o, Mapping) for o in cfg):
            raise EdgeShituError("detector 'Preprocess' must be a list of {type: ..., ...} entries")
        return cls([dict(o) for o in cfg])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "det", "ops": [dict(o) for o in self.ops]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetPreprocess:
        if d.get("kind", "det") != "det":
            raise EdgeShituError(f"preprocess kind {d.get('kind')!r} is not a detector preprocess")
        return cls([dict(o) for o in d.get("ops", [])])

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(h, w) of a fixed-size Resize without keep_ratio, else None (dynamic size)."""
        for op in self.ops:
            if op["type"] == "Resize" and not op.get("keep_ratio", True):
                return int(op["target_size"][0]), int(op["target_size"][1])
        return None

    def __call__(self, img: np.ndarray) -> dict[str, np.ndarray]:
        """RGB uint8 (H, W, 3) -> the three detector feeds, batch of one."""
        nat = _native()  # native hook (see _native)
        feeds = nat.det_feeds(self.ops, img) if nat is not None else None
        if feeds is not None:
            return feeds
        im: np.ndarray = img
        im_shape = np.array(img.shape[:2], np.float32)
        scale_factor = np.array([1.0, 1.0], np.float32)
        chw = False
        for op in self.ops:
            kind = op["type"]
            if kind == "Resize":
                im, sy, sx = _det_resize(im, op)
                im_shape = np.array(im.shape[:2], np.float32)
                scale_factor = np.array([sy, sx], np.float32)
            elif kind == "NormalizeImage":
                im = _det_normalize(im, op, chw)
            elif kind == "Permute":
                im = im.transpose(2, 0, 1)
                chw = True
            elif kind == "PadStride":
                im = _pad_stride(im, int(op.get("stride", 0)), chw)
        if not chw:
            im = im.transpose(2, 0, 1)
        return {
            "image": np.ascontiguousarray(im, dtype=np.float32)[None],
            "im_shape": im_shape[None],
            "scale_factor": scale_factor[None],
        }


def _det_scales(h: int, w: int, op: Mapping[str, Any]) -> tuple[float, float]:
    """(sy, sx) of a Resize op for an h x w photo (also used by the native path)."""
    th, tw = (int(v) for v in op["target_size"])
    if op.get("keep_ratio", True):
        # PaddleDetection: scale the short side to the short target unless the long side overflows.
        scale = min(th, tw) / min(h, w)
        if np.round(scale * max(h, w)) > max(th, tw):
            scale = max(th, tw) / max(h, w)
        return scale, scale
    return th / h, tw / w


def _det_resize(im: np.ndarray, op: Mapping[str, Any]) -> tuple[np.ndarray, float, float]:
    sy, sx = _det_scales(im.shape[0], im.shape[1], op)
    out = cv2_resize(im, None, fx=sx, fy=sy, interp=_interp_code(op.get("interp", INTER_LINEAR)))
    return out, sy, sx


def apply_channel_luts(im: np.ndarray, luts: np.ndarray, chw_in: bool, chw_out: bool) -> np.ndarray:
    """Normalize a 3-channel uint8 image through per-channel 256-entry float32 tables.

    A uint8 pixel has 256 possible values, so any per-value float formula can be computed once
    per value and looked up: one gather per pixel instead of a cast and three full-image passes
    (4x faster on a 320x320 crop), and the very same float32 results as the formula itself,
    since each table entry is the formula evaluated with the same float32 operations.
    """
    cs = (lambda c: im[c]) if chw_in else (lambda c: im[:, :, c])
    h, w = (im.shape[1], im.shape[2]) if chw_in else (im.shape[0], im.shape[1])
    if chw_out:
        out = np.empty((3, h, w), np.float32)
        for c in range(3):
            np.take(luts[c], cs(c), out=out[c])
    else:
        out = np.empty((h, w, 3), np.float32)
        for c in range(3):
            out[:, :, c] = luts[c][cs(c)]
    return out


def _det_luts(op: Mapping[str, Any]) -> np.ndarray:
    """(3, 256) tables of :func:`_det_normalize`'s formula, same float32 operations."""
    x = np.arange(256, dtype=np.float32)
    if op.get("is_scale", True):
        x = x / np.float32(255.0)
    x = np.repeat(x[None, :], 3, axis=0)
    if op.get("norm_type", "mean_std") == "mean_std":
        mean = np.asarray(op.get("mean", IMAGENET_MEAN), np.float32).reshape(3, 1)
        std = np.asarray(op.get("std", IMAGENET_STD), np.float32).reshape(3, 1)
        x = (x - mean) / std
    return x


def _det_normalize(im: np.ndarray, op: Mapping[str, Any], chw: bool) -> np.ndarray:
    if im.dtype == np.uint8 and im.ndim == 3 and im.shape[0 if chw else 2] == 3:
        return apply_channel_luts(im, _det_luts(op), chw, chw)
    x = im.astype(np.float32)
    if op.get("is_scale", True):
        x = x / np.float32(255.0)
    if op.get("norm_type", "mean_std") == "mean_std":
        shape = (3, 1, 1) if chw else (1, 1, 3)
        mean = np.asarray(op.get("mean", IMAGENET_MEAN), np.float32).reshape(shape)
        std = np.asarray(op.get("std", IMAGENET_STD), np.float32).reshape(shape)
        x = (x - mean) / std
    return x


def _pad_stride(im: np.ndarray, stride: int, chw: bool) -> np.ndarray:
    if stride <= 0:
        return im
    h, w = (im.shape[1], im.shape[2]) if chw else (im.shape[0], im.shape[1])
    ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
    if (ph, pw) == (h, w):
        return im
    if chw:
        out = np.zeros((im.shape[0], ph, pw), np.float32)
        out[:, :h, :w] = im
    else:
        out = np.zeros((ph, pw, im.shape[2]), np.float32)
        out[:h, :w] = im
    return out


# ----------------------------------------------------------------------------- recognition

def letterbox(img: np.ndarray, size: int = 320, pad_value: int = 255, resize: str = "pil") -> np.ndarray:
    """Fit an RGB uint8 (H, W, 3) image into a ``size`` square, aspect kept, centred on a
    ``pad_value`` canvas. Squashing tall bottles to a square loses the label detail retrieval
    needs; white padding matches studio-style gallery photos. Bilinear: ``resize="pil"``
    antialiases on downscale, ``"cv2"`` samples like ``cv2.resize``."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise EdgeShituError(f"letterbox needs an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    nw, nh, x0, y0 = letterbox_geometry(h, w, size)
    if (nw, nh) == (w, h):
        small = img
    elif resize == "pil":
        small = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    elif resize == "cv2":
        small = cv2_resize(img, (nw, nh), interp=INTER_LINEAR)
    else:
        raise EdgeShituError(f"resize must be 'pil' or 'cv2', got {resize!r}")
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[y0:y0 + nh, x0:x0 + nw] = small
    return canvas


def letterbox_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(nw, nh, x0, y0): the resized photo's size and its offset on the ``size`` square
    (also used by the native path)."""
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


@dataclass
class RecPreprocess:
    """PaddleClas recognition preprocessing for the feature extractor.

    Defaults are PP-ShiTu's ``inference_general.yaml``: resize to 224x224 (OpenCV bilinear,
    aspect ratio NOT kept), x/255, ImageNet mean/std, CHW. ``resize="pil"`` switches to
    Pillow's antialiased bilinear (smoother on big downscales but off the reference gallery).
    """

    size: tuple[int, int] = (224, 224)  # (w, h), as PaddleClas's ResizeImage.size
    interp: str = "bilinear"
    resize: str = "cv2"  # "cv2" (numpy re-implementation, default) or "pil"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fit: str = "stretch"  # "stretch" (PaddleClas: aspect not kept) or "letterbox" (square, padded)
    pad_value: int = 255

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if self.resize not in ("cv2", "pil"):
            raise EdgeShituError(f"RecPreprocess.resize must be 'cv2' or 'pil', got {self.resize!r}")
        if min(self.size) <= 0 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise EdgeShituError("RecPreprocess needs size > 0, 3 means and 3 positive stds")
        _interp_code(self.interp)
        if self.fit not in ("stretch", "letterbox"):
            raise EdgeShituError(f"RecPreprocess.fit must be 'stretch' or 'letterbox', got {self.fit!r}")
        if self.fit == "letterbox" and (self.size[0] != self.size[1] or self.interp != "bilinear"):
            raise EdgeShituError("a letterbox preprocess needs a square size and bilinear resizing")

    def resize_image(self, img: np.ndarray) -> np.ndarray:
        if self.fit == "letterbox":
            return letterbox(img, self.size[0], int(self.pad_value), self.resize)
        if self.resize == "pil":
            pil = {
                INTER_NEAREST: Image.Resampling.NEAREST, INTER_LINEAR: Image.Resampling.BILINEAR,
                INTER_CUBIC: Image.Resampling.BICUBIC, INTER_AREA: Image.Resampling.BOX,
                INTER_LANCZOS4: Image.Resampling.LANCZOS,
            }[_interp_code(self.interp)]
            return np.asarray(Image.fromarray(img).resize(self.size, pil))
        return cv2_resize(img, self.size, interp=_interp_code(self.interp))

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> float32 [1, 3, h, w]."""
        nat = _native()  # native hook (see _native)
        x = nat.rec_input(self, img) if nat is not None else None
        if x is not None:
            return x
        return apply_channel_luts(self.resize_image(img), self.luts(), chw_in=False, chw_out=True)[None]

    def luts(self) -> np.ndarray:
        """(3, 256): (v * scale - mean) / std for every uint8 value v, in float32 as the model sees it."""
        x = np.arange(256, dtype=np.float32)[None, :] * np.float32(self.scale)
        return (x - np.asarray(self.mean, np.float32)[:, None]) / np.asarray(self.std, np.float32)[:, None]

    def batch(self, imgs: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([self(i) for i in imgs], axis=0)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "rec", "size": list(self.size), "interp": self.interp, "resize": self.resize,
             "scale": self.scale, "mean": list(self.mean), "std": list(self.std), "fit": self.fit}
        if self.fit == "letterbox":
            d["pad_value"] = int(self.pad_value)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecPreprocess:
        if d.get("kind", "rec") != "rec":
            raise EdgeShituError(f"preprocess kind {d.get('kind')!r} is not a recognition preprocess")
        known = {"size", "interp", "resize", "scale", "mean", "std", "fit", "pad_value"}
        unknown = set(d) - known - {"kind"}
        if unknown:
            raise EdgeShituError(f"unknown recognition preprocess keys {sorted(unknown)}: written by a newer "
                                 "edge-shitu? upgrade")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})
