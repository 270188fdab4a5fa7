"""ctypes binding of the C preprocessing (runtimes/native/espreprocess.c) in libeshamming.so.

Why: on a board without OpenCV the numpy preprocessing (a cv2-exact resize, the channel tables, the
CHW transpose) costs more per photo than the Hamming search, and as much as a small extractor.
The C code does the same float32 arithmetic in the same order in one pass per output row, so its
output is the numpy path's, byte for byte (tests/test_native_preprocess.py checks every path).
Extractors preprocessed with Pillow's resize (``resize: "pil"``, the demo bundle) get Pillow's
fixed-point resampling instead, with the coefficients and the pass order of the installed Pillow.

Python keeps the decisions: the taps come from :func:`edge_shitu.preprocess.resize_taps`, the
tables from the preprocess objects, the geometry from the same helpers as the numpy path; C only
sums. The library is the Hamming kernel's (same lookup: ``EDGE_SHITU_HAMMING_LIB``, then
``runtimes/lib/``); an older library without these symbols means numpy, silently.
``EDGE_SHITU_NATIVE_PREPROCESS``: ``auto`` (default), ``0`` / ``numpy`` (off), or a path name
(``portable``, ``avx2``, ``neon``) to force one.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edge_shitu import preprocess as pp
from edge_shitu.errors import EdgeShituError

ABI = 1
ENV = "EDGE_SHITU_NATIVE_PREPROCESS"
_OFF = ("0", "off", "no", "false", "numpy")
_vp, _u64, _u32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32
# The detector op lists fused here (what DetPreprocess's numpy loop does for them, in one pass).
_DET_PATTERNS = (("Resize", "NormalizeImage", "Permute"), ("Resize", "NormalizeImage", "Permute", "PadStride"))


def _addr(a: Optional[np.ndarray]) -> Optional[int]:
    return None if a is None else a.__array_interface__["data"][0]


@dataclass(frozen=True)
class Plan:
    """One resize's taps in the layout the C code reads: per output row / column, its taps."""

    oh: int
    ow: int
    iy: np.ndarray  # (oh, ty) int32
    wy: np.ndarray  # (oh, ty) float32
    cols: Optional[np.ndarray]  # (ncols,) int32 source columns the horizontal taps read, or None: all
    ncols: int
    ix: np.ndarray  # (ow, tx) int32, into cols
    wx: np.ndarray  # (ow, tx) float32


@functools.lru_cache(maxsize=64)
def plan(h: int, w: int, size: Optional[tuple[int, int]], fx: Optional[float], fy: Optional[float],
         interp: int) -> Plan:
    """Taps of ``cv2_resize(img (h, w), size, fx, fy, interp)``; cached: a camera or a shelf of
    same-size photos reuses them (the area taps are a Python loop)."""
    ow, oh, iy, wy, ix, wx = pp.resize_taps(h, w, size, fx, fy, interp)
    ux = np.unique(ix)
    cols: Optional[np.ndarray] = None
    if ux.size * 2 <= w:  # the numpy path's rule: a big downscale reads few columns
        cols = ux.astype(np.int32)
        ix = np.searchsorted(ux, ix)
    c = np.ascontiguousarray
    return Plan(oh, ow, c(iy.T, np.int32), c(wy.T, np.float32), cols, w if cols is None else int(cols.size),
                c(ix.T, np.int32), c(wx.T, np.float32))


@dataclass(frozen=True)
class PilPlan:
    """Pillow's resize (Image.resize, 8-bit RGB) as taps: int32 22-bit coefficients per output
    column / row, the horizontal pass over source rows [y0, y0 + rows), None for a skipped pass."""

    oh: int
    ow: int
    y0: int
    rows: int
    ix: Optional[np.ndarray]  # (ow, tx) int32 source columns
    kx: Optional[np.ndarray]  # (ow, tx) int32
    iy: Optional[np.ndarray]  # (oh, ty) int32 rows relative to y0
    ky: Optional[np.ndarray]  # (oh, ty) int32
    vertical_first: bool


def _pil_bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _pil_bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


_PIL_FILTERS = {pp.INTER_LINEAR: (_pil_bilinear, 1.0), pp.INTER_CUBIC: (_pil_bicubic, 2.0)}


def _pil_axis(in_size: int, out_size: int, interp: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc (libImaging/Resample.c) for the box
    (0, in_size): the same double operations in the same order, the weight sum accumulated
    sequentially as its loop does. Returns (indices, coefficients) (out, ksize) and the first /
    end source index read."""
    filt, base_support = _PIL_FILTERS[interp]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    k = np.arange(ksize)
    pos = xmin[:, None] + k[None, :]
    w = np.where(k[None, :] < count[:, None], filt((pos - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    ww = np.add.accumulate(w, axis=1)[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(ww != 0.0, w / ww, w)
    fixed = np.trunc(np.where(w < 0, -0.5 + w * (1 << 22), 0.5 + w * (1 << 22))).astype(np.int32)
    taps = int(count.max())  # Pillow's ksize leaves trailing zero coefficients: no need to sum them
    idx = np.ascontiguousarray(np.clip(pos[:, :taps], 0, in_size - 1), np.int32)
    return idx, np.ascontiguousarray(fixed[:, :taps]), int(xmin[0]), int(xmin[-1] + count[-1])


def _pillow_vertical_first(h: int, w: int, oh: int, ow: int) -> bool:
    """Whether the installed Pillow resizes vertically first (the uint8 rounding between the passes
    makes the order visible): 13.0 does when the height shrinks by more than twice what the width
    does (Resample.c, ImagingResampleInner); 12.2 and 12.3 when the image is over 100x taller than
    wide and the height shrinks (Image.resize); earlier versions never."""
    import PIL

    major, minor = (int(v) for v in PIL.__version__.split(".")[:2])
    if major >= 13:
        return h - oh > 0 and h - oh > (w - ow) * 2
    if (major, minor) >= (12, 2):
        return h > w * 100 and oh < h
    return False


@functools.lru_cache(maxsize=64)
def pil_plan(h: int, w: int, size: tuple[int, int], interp: int) -> PilPlan:
    """Taps of ``Image.fromarray(img (h, w)).resize(size, BILINEAR | BICUBIC)``."""
    ow, oh = size
    iy, ky, y0, y1 = _pil_axis(h, oh, interp)
    ix, kx = _pil_axis(w, ow, interp)[:2] if ow != w else (None, None)
    if oh == h:  # Pillow skips the vertical pass (the horizontal one, if any, covers every row)
        return PilPlan(oh, ow, 0, h, ix, kx, None, None, False)
    if ix is not None and _pillow_vertical_first(h, w, oh, ow):  # the vertical pass reads every row
        return PilPlan(oh, ow, 0, h, ix, kx, iy, ky, True)
    return PilPlan(oh, ow, y0, y1 - y0, ix, kx, np.ascontiguousarray(iy - y0, np.int32), ky, False)


class NativePreprocess:
    """The C preprocessing of a loaded libeshamming.so."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.es_pre_abi.restype = ctypes.c_int
        abi = lib.es_pre_abi()
        if abi != ABI:
            raise EdgeShituError(f"native preprocessing ABI {abi}, this edge-shitu needs {ABI}: rebuild with "
                                 "'make native'")
        lib.es_pre_kernel.restype = ctypes.c_char_p
        lib.es_pre_force.argtypes = [ctypes.c_char_p]
        for f in (lib.es_pre_scratch_floats, lib.es_pre_scratch_bytes):
            f.restype, f.argtypes = _u64, [_u32, _u32]
        lib.es_pre_resize.argtypes = [_vp, _u32, _u32, _u64, _u32, _u32, _u32, _vp, _vp, _u32, _vp, _u32, _vp, _vp,
                                      _vp, _vp, _u64, _u64, _vp, _vp]
        lib.es_pre_pil_scratch_bytes.restype = _u64
        lib.es_pre_pil_scratch_bytes.argtypes = [_u32, _u32, _u32, _u32, ctypes.c_int]
        lib.es_pre_pil_scratch_ints.restype, lib.es_pre_pil_scratch_ints.argtypes = _u64, [_u32, _u32]
        lib.es_pre_resize_pil.argtypes = [_vp, _u32, _u32, _u64, _u32, _u32, _u32, _u32, _u32, _vp, _vp, _u32, _vp,
                                          _vp, ctypes.c_int, _vp, _vp, _u64, _u64, _vp, _vp]
        self.lib = lib

    @property
    def kernel(self) -> str:
        return self.lib.es_pre_kernel().decode()

    def force(self, name: str) -> bool:
        """Run a given path ("portable", "avx2", "neon"; "auto"): tests and benchmarks."""
        return self.lib.es_pre_force(name.encode()) == 0

    # ------------------------------------------------------------------ the C entry points
    @staticmethod
    def _check(img: np.ndarray, oh: int, ow: int, luts: Optional[np.ndarray],
               out: np.ndarray) -> tuple[np.ndarray, int, int]:
        """The image as C reads it (rows of packed RGB pixels) and the output's strides in elements."""
        if img.strides[1] != 3 or img.strides[2] != 1 or img.strides[0] < 3 * img.shape[1]:
            img = np.ascontiguousarray(img)
        if luts is None:
            if out.dtype != np.uint8 or out.shape != (oh, ow, 3) or out.strides[1:] != (3, 1):
                raise ValueError("out must be (oh, ow, 3) uint8 with contiguous pixels")
            return img, out.strides[0], 0
        if (out.dtype != np.float32 or out.shape != (3, oh, ow) or out.strides[2] != 4 or luts.shape != (3, 256)
                or luts.dtype != np.float32 or not luts.flags.c_contiguous):
            raise ValueError("out must be (3, oh, ow) float32 with contiguous rows, luts (3, 256) float32")
        return img, out.strides[1] // 4, out.strides[0] // 4

    def run(self, img: np.ndarray, p: Plan, luts: Optional[np.ndarray], out: np.ndarray) -> None:
        """Resize ``img`` (H, W, 3) uint8 by plan ``p`` into ``out``: uint8 (oh, ow, 3) rows when
        ``luts`` is None, else float32 planes (3, oh, ow) through the (3, 256) tables. ``out`` may
        be a strided view (a region of a padded canvas); ``img`` a crop of a larger photo."""
        img, row, plane = self._check(img, p.oh, p.ow, luts, out)
        lib = self.lib
        scratch = np.empty(lib.es_pre_scratch_floats(p.ncols, p.ow), np.float32)
        scratch_b = np.empty(lib.es_pre_scratch_bytes(p.ncols, p.ow), np.uint8)
        h, w = img.shape[:2]
        rc = lib.es_pre_resize(_addr(img), h, w, img.strides[0], p.oh, p.ow, p.iy.shape[1], _addr(p.iy),
                               _addr(p.wy), p.ncols, _addr(p.cols), p.ix.shape[1], _addr(p.ix), _addr(p.wx),
                               _addr(luts), _addr(out), row, plane, _addr(scratch), _addr(scratch_b))
        if rc != 0:
            raise ValueError(f"es_pre_resize rejected its arguments ({h}x{w} -> {p.oh}x{p.ow})")

    def run_pil(self, img: np.ndarray, p: PilPlan, luts: Optional[np.ndarray], out: np.ndarray) -> None:
        """:meth:`run` for a Pillow plan: Pillow's bytes, then the same output choices."""
        img, row, plane = self._check(img, p.oh, p.ow, luts, out)
        lib = self.lib
        h, w = img.shape[:2]
        scratch_b = np.empty(lib.es_pre_pil_scratch_bytes(w, p.oh, p.ow, p.rows, p.vertical_first), np.uint8)
        scratch_i = np.empty(lib.es_pre_pil_scratch_ints(w, p.ow), np.int32)
        rc = lib.es_pre_resize_pil(_addr(img), h, w, img.strides[0], p.oh, p.ow, p.y0, p.rows,
                                   0 if p.ix is None else p.ix.shape[1], _addr(p.ix), _addr(p.kx),
                                   0 if p.iy is None else p.iy.shape[1], _addr(p.iy), _addr(p.ky), p.vertical_first,
                                   _addr(luts), _addr(out), row, plane, _addr(scratch_b), _addr(scratch_i))
        if rc != 0:
            raise ValueError(f"es_pre_resize_pil rejected its arguments ({h}x{w} -> {p.oh}x{p.ow})")

    def resize_pil(self, img: np.ndarray, size: tuple[int, int], interp: int = pp.INTER_LINEAR) -> np.ndarray:
        """``np.asarray(Image.fromarray(img).resize(size, BILINEAR | BICUBIC))`` in C."""
        p = pil_plan(img.shape[0], img.shape[1], _size(size), interp)
        out = np.empty((p.oh, p.ow, 3), np.uint8)
        self.run_pil(img, p, None, out)
        return out

    def resize(self, img: np.ndarray, size: Optional[tuple[int, int]] = None, fx: Optional[float] = None,
               fy: Optional[float] = None, interp: int = pp.INTER_LINEAR) -> np.ndarray:
        """``cv2_resize(img, size, fx, fy, interp, impl="numpy")`` in C (uint8 HWC RGB only)."""
        p = plan(img.shape[0], img.shape[1], _size(size), fx, fy, interp)
        out = np.empty((p.oh, p.ow, 3), np.uint8)
        self.run(img, p, None, out)
        return out

    # ------------------------------------------------------------------ the model inputs
    def det_feeds(self, ops: Sequence[Mapping[str, Any]], img: np.ndarray) -> Optional[dict[str, np.ndarray]]:
        """DetPreprocess's feeds, or None when its op list is not Resize, NormalizeImage, Permute
        [, PadStride] (numpy then)."""
        if not _rgb8(img) or tuple(op.get("type") for op in ops) not in _DET_PATTERNS:
            return None
        h, w = img.shape[:2]
        sy, sx = pp._det_scales(h, w, ops[0])
        p = plan(h, w, None, sx, sy, pp._interp_code(ops[0].get("interp", pp.INTER_LINEAR)))
        ph, pw = p.oh, p.ow
        stride = int(ops[3].get("stride", 0)) if len(ops) == 4 else 0
        if stride > 0:
            ph, pw = -(-p.oh // stride) * stride, -(-p.ow // stride) * stride
        image = (np.zeros if (ph, pw) != (p.oh, p.ow) else np.empty)((1, 3, ph, pw), np.float32)
        self.run(img, p, _det_luts(_norm_key(ops[1])), image[0, :, :p.oh, :p.ow])
        return {"image": image, "im_shape": np.array([[p.oh, p.ow]], np.float32),
                "scale_factor": np.array([[sy, sx]], np.float32)}

    def rec_input(self, pre: pp.RecPreprocess, img: np.ndarray) -> Optional[np.ndarray]:
        """RecPreprocess's [1, 3, h, w] input, or None for a Pillow filter other than bilinear /
        bicubic (numpy + Pillow then)."""
        interp = pp._interp_code(pre.interp)
        if not _rgb8(img) or (pre.resize == "pil" and interp not in _PIL_FILTERS):
            return None
        h, w = img.shape[:2]
        luts = _rec_luts(pre.scale, pre.mean, pre.std)
        if pre.fit == "letterbox":
            s = pre.size[0]
            nw, nh, x0, y0 = pp.letterbox_geometry(h, w, s)
            out = np.empty((1, 3, s, s), np.float32)
            out[0] = luts[:, int(pre.pad_value), None, None]
            self._resize_into(img, (nw, nh), pp.INTER_LINEAR, pre.resize, luts, out[0, :, y0:y0 + nh, x0:x0 + nw])
            return out
        out = np.empty((1, 3, pre.size[1], pre.size[0]), np.float32)
        self._resize_into(img, pre.size, interp, pre.resize, luts, out[0])
        return out

    def _resize_into(self, img: np.ndarray, size: tuple[int, int], interp: int, impl: str, luts: np.ndarray,
                     out: np.ndarray) -> None:
        h, w = img.shape[:2]
        if impl == "pil":
            self.run_pil(img, pil_plan(h, w, size, interp), luts, out)
        else:
            self.run(img, plan(h, w, size, None, None, interp), luts, out)


def _size(size: Optional[Sequence[int]]) -> Optional[tuple[int, int]]:
    return None if size is None else (int(size[0]), int(size[1]))


def _rgb8(img: np.ndarray) -> bool:
    return img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0


def _norm_key(op: Mapping[str, Any]) -> tuple[Any, ...]:
    return (bool(op.get("is_scale", True)), str(op.get("norm_type", "mean_std")),
            tuple(float(v) for v in op.get("mean", pp.IMAGENET_MEAN)),
            tuple(float(v) for v in op.get("std", pp.IMAGENET_STD)))


@functools.lru_cache(maxsize=16)
def _det_luts(key: tuple[Any, ...]) -> np.ndarray:
    is_scale, norm_type, mean, std = key
    return np.ascontiguousarray(pp._det_luts({"is_scale": is_scale, "norm_type": norm_type, "mean": mean,
                                              "std": std}), np.float32)


@functools.lru_cache(maxsize=16)
def _rec_luts(scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    return np.ascontiguousarray(pp.RecPreprocess(scale=scale, mean=mean, std=std).luts(), np.float32)


# ---------------------------------------------------------------------- loading
_cache: dict[tuple[str, str], Optional[NativePreprocess]] = {}


def get() -> Optional[NativePreprocess]:
    """The native preprocessing, or None (no library, an older one, or ``EDGE_SHITU_NATIVE_PREPROCESS=0``).

    The library is the Hamming kernel's (native_kernel.load): an unloadable library is reported by
    the index, which needs it; preprocessing just uses numpy. Only a path forced by name that this
    CPU lacks is an error (the caller asked for it)."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    key = (mode, os.environ.get("EDGE_SHITU_HAMMING_LIB", ""))
    if key in _cache:
        return _cache[key]
    result: Optional[NativePreprocess] = None
    if mode not in _OFF:
        from edge_shitu.runtimes import native_kernel

        try:
            kernel = native_kernel.load()
            result = from_library(kernel.lib) if kernel is not None else None
        except EdgeShituError:  # unloadable, or another preprocessing ABI: numpy
            result = None
        if result is not None and mode not in ("auto", "1", "on", "native") and not result.force(mode):
            raise EdgeShituError(f"{ENV}={mode}: no such preprocessing path on this CPU (auto, 0, portable, avx2, "
                                 "neon)")
    _cache[key] = result
    return result


def from_library(lib: ctypes.CDLL | str | os.PathLike[str]) -> Optional[NativePreprocess]:
    """A library's preprocessing, or None when it predates it (no ``es_pre_*`` symbols)."""
    if not isinstance(lib, ctypes.CDLL):
        lib = ctypes.CDLL(str(Path(lib)))
    try:
        lib.es_pre_abi  # noqa: B018 - dlsym: an older library has the Hamming kernel only
    except AttributeError:
        return None
    return NativePreprocess(lib)
