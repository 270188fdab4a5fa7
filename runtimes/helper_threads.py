"""Keep numpy's BLAS and OpenCV to one thread on the device path.

Why: the runtime's own numpy and OpenCV work per photo is small (resizing a crop, decoding a GFL
head, normalising features), but OpenBLAS and OpenCV run it on worker threads that then BUSY-WAIT
for a while (OpenBLAS ~0.1 s by default). On a 2-4 core board those spinning workers take the
cores from the TFLite interpreter that runs next. Measured on this 2-core host, `make demo`'s
bundle over the 13 shelf photos: detector inference 51.8 ms per photo with both libraries
threaded, 41.2 ms with OpenCV on one thread, 30.3 ms with OpenBLAS too (the interpreter alone:
28-32 ms); end to end 103 -> 82 ms (docs/benchmarks.md).

OpenBLAS is reached through its C API in the already-loaded library (the way threadpoolctl does
it, without the dependency): numpy's wheels bundle it under a suffixed name.
"""

from __future__ import annotations

import ctypes
import sys

# numpy < 2 wheels: libopenblas64_ with a 64_ symbol suffix; numpy >= 2: scipy_openblas; distro builds: plain
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads")
_GETTERS = ("openblas_get_num_threads", "openblas_get_num_threads64_", "scipy_openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads")


def _openblas_libs() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux / Android: /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _call(lib: ctypes.CDLL, names: tuple, *args: int) -> int | None:
    """The first of ``names`` the library exports, called with ``args``; None when it has none."""
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_int
            return fn(*args)
    return None


def blas_threads() -> dict[str, int]:
    """{library path: its thread count} for each loaded OpenBLAS."""
    out: dict[str, int] = {}
    for path in _openblas_libs():
        try:
            n = _call(ctypes.CDLL(path), _GETTERS)
        except OSError:
            continue
        if n is not None:
            out[path] = int(n)
    return out


def limit_helper_threads(n: int = 1) -> dict[str, int]:
    """Set every loaded OpenBLAS and (when imported) OpenCV to ``n`` threads; returns what was set.

    Only libraries already loaded are touched (numpy is, by the time a bundle is open); a process
    that needs threaded BLAS afterwards can set it back. Never raises: this is a speed setting.
    """
    done: dict[str, int] = {}
    for path in _openblas_libs():
        try:
            if _call(ctypes.CDLL(path), _SETTERS, n) is not None:
                done[path] = n
        except OSError:
            continue
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setNumThreads"):
        try:
            cv2.setNumThreads(n)
            done["opencv"] = n
        except Exception:  # a headless or stub build: nothing to set
            pass
    return done
