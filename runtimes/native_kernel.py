"""ctypes binding of the C Hamming kernel (runtimes/native/eshamming.c) and index reader.

Optional: when the shared library is not built (``make native``) or cannot be loaded, callers
fall back to the numpy path, which returns identical results. The library is looked up in
``EDGE_SHITU_HAMMING_LIB``, then next to this module (``runtimes/lib/``); a bundle may also
carry one for its board (``lib/libeshamming.so``).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from edge_shitu.errors import EdgeShituError

ABI = 2
LIB_NAME = "libeshamming.so"
_vp, _u64, _u32 = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32


def _addr(a: np.ndarray) -> int:
    """Buffer address; ~20x cheaper than ``a.ctypes.data`` or ndpointer argtypes, which cost
    several microseconds each and dominated small-gallery searches."""
    return a.__array_interface__["data"][0]


def default_paths() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here / "lib" / LIB_NAME]


class NativeHamming:
    """The loaded kernel. Same results as edge_shitu.hamming.topk, bit for bit."""

    def __init__(self, path: Path) -> None:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise EdgeShituError(f"{path}: cannot load the native Hamming kernel ({e}); rebuild it with "
                                 "'make native' for this machine or unset EDGE_SHITU_HAMMING_LIB") from None
        try:
            lib.es_hamming_abi.restype = ctypes.c_int
            abi = lib.es_hamming_abi()
        except AttributeError:
            raise EdgeShituError(f"{path}: not an edge-shitu Hamming kernel; rebuild it with 'make native'") from None
        if abi != ABI:
            raise EdgeShituError(f"{path}: kernel ABI {abi}, this edge-shitu needs {ABI}; rebuild with 'make native'")
        lib.es_hamming_kernel.restype = ctypes.c_char_p
        lib.es_hamming_force.argtypes = [ctypes.c_char_p]
        lib.es_hamming_topk.argtypes = [_vp, _u64, _u64, _u32, _vp, _u64, _vp, _u32, _vp, _vp]
        lib.es_hamming_distances.argtypes = [_vp, _u64, _u64, _u32, _vp, _vp]
        self.lib = lib
        self.path = path

    @property
    def kernel(self) -> str:
        return self.lib.es_hamming_kernel().decode()

    def force(self, name: str) -> bool:
        """Tests: run a given path ("portable", "popcnt", "avx2", "neon", "auto")."""
        return self.lib.es_hamming_force(name.encode()) == 0

    @staticmethod
    def _planes(planes: np.ndarray) -> np.ndarray:
        if planes.dtype != np.uint64 or planes.ndim != 2 or not planes.flags.c_contiguous:
            planes = np.ascontiguousarray(planes, dtype=np.uint64)
        return planes

    def topk_planar(self, planes: np.ndarray, count: int, qwords: np.ndarray, k: int,
                    deleted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """planes (words, stride) uint64; qwords (nq, words); deleted: packed bitmap (LSB first) or None."""
        planes = self._planes(planes)
        words, stride = planes.shape
        q = np.ascontiguousarray(qwords, dtype=np.uint64).reshape(-1, words)
        if count > stride:
            raise ValueError(f"count {count} exceeds the plane stride {stride}")
        nq = q.shape[0]
        dist = np.empty((nq, k), dtype=np.int32)
        rows = np.empty((nq, k), dtype=np.int64)
        dele = None
        if deleted is not None:
            dele = np.ascontiguousarray(deleted, dtype=np.uint8)
            if dele.size * 8 < count:
                raise ValueError("deleted bitmap shorter than the row count")
        rc = self.lib.es_hamming_topk(_addr(planes), count, stride, words, _addr(q), nq,
                                      None if dele is None else _addr(dele), k, _addr(dist), _addr(rows))
        if rc != 0:
            raise ValueError(f"es_hamming_topk rejected its arguments (count={count}, words={words}, k={k})")
        return dist, rows

    def distances(self, planes: np.ndarray, count: int, q: np.ndarray) -> np.ndarray:
        planes = self._planes(planes)
        words, stride = planes.shape
        qq = np.ascontiguousarray(q, dtype=np.uint64)
        out = np.empty(count, dtype=np.uint32)
        if self.lib.es_hamming_distances(_addr(planes), count, stride, words, _addr(qq), _addr(out)) != 0:
            raise ValueError("es_hamming_distances rejected its arguments")
        return out


_cache: dict[str, NativeHamming | None] = {}


def load(path: str | os.PathLike[str] | None = None) -> NativeHamming | None:
    """The kernel, or None when none is built. An explicitly named library that fails is an error."""
    explicit = path or os.environ.get("EDGE_SHITU_HAMMING_LIB")
    key = str(explicit or "")
    if key in _cache:
        return _cache[key]
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise EdgeShituError(f"{p}: no such native kernel (EDGE_SHITU_HAMMING_LIB); build it with 'make native'")
        result: NativeHamming | None = NativeHamming(p)
    else:
        result = next((NativeHamming(p) for p in default_paths() if p.is_file()), None)
    _cache[key] = result
    return result
