"""The C kernel (every path this CPU has) returns exactly what the numpy path returns."""

from __future__ import annotations

import numpy as np
import pytest

from edge_shitu import hamming
from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import rows_to_planes
from edge_shitu.runtimes import native_kernel

KERNELS = ["portable", "popcnt", "avx2", "neon"]


@pytest.fixture(scope="module")
def native() -> native_kernel.NativeHamming:
    lib = native_kernel.load()
    if lib is None:
        pytest.skip("C kernel not built: run 'make native' (make test does)")
    yield lib
    lib.force("auto")


@pytest.mark.parametrize("n", [0, 1, 3, 255, 256, 257, 5000, 40_001])
@pytest.mark.parametrize("words", [1, 2, 3, 4, 8, 16, 32])
def test_topk_matches_numpy(native: native_kernel.NativeHamming, n: int, words: int) -> None:
    """Every kernel this CPU can run (portable always; popcnt/avx2 on x86, neon on ARM)."""
    ran = [kernel for kernel in KERNELS if native.force(kernel) and _check_kernel(native, kernel, n, words)]
    native.force("auto")
    assert "portable" in ran and len(ran) >= 2, ran


def _check_kernel(native: native_kernel.NativeHamming, kernel: str, n: int, words: int) -> bool:
    rng = np.random.default_rng(n * 100 + words)
    codes = rng.integers(0, 256, size=(n, words * 8), dtype=np.uint8)
    if n > 50:
        codes[10:40] = codes[3]  # ties
        codes[41] = ~codes[0]  # maximal distance
    queries = np.vstack([codes[:2], rng.integers(0, 256, size=(2, words * 8), dtype=np.uint8)]) if n >= 2 \
        else rng.integers(0, 256, size=(3, words * 8), dtype=np.uint8)
    planes = rows_to_planes(codes)
    qw = queries.view(np.uint64)
    deleted = rng.random(n) < 0.3
    bitmap = np.packbits(deleted, bitorder="little") if n else np.zeros(0, np.uint8)
    for k in (1, 7, 100):
        for dmask, dbits in ((None, None), (deleted, bitmap)):
            want = hamming.topk(planes, n, qw, k, dmask)
            got = native.topk_planar(planes, n, qw, k, dbits)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (kernel, n, words, k)
    if n:
        assert native.distances(planes, n, qw[0]).tolist() == hamming.distances(planes, n, qw[0]).tolist()
    return True


def test_gallery_index_uses_the_kernel_and_agrees(native: native_kernel.NativeHamming, monkeypatch) -> None:
    x = np.random.default_rng(0).standard_normal((3000, 256)).astype(np.float32)
    labels = [f"p{i % 50}" for i in range(3000)]
    monkeypatch.setenv("EDGE_SHITU_KERNEL", "native")
    idx = GalleryIndex.build(x, labels, bits=128)
    idx.remove(list(range(0, 3000, 7)))
    assert idx.kernel.startswith("native-")
    monkeypatch.setenv("EDGE_SHITU_KERNEL", "numpy")
    ref = GalleryIndex(idx.data)
    assert ref.kernel.startswith("numpy")
    for a, b in zip(idx.search(x[:40], k=10), ref.search(x[:40], k=10)):
        assert np.array_equal(a, b)


def test_explicit_bad_library_is_one_clear_error(tmp_path, monkeypatch) -> None:
    bogus = tmp_path / "libeshamming.so"
    bogus.write_bytes(b"\x7fELF not really")
    native_kernel._cache.clear()
    with pytest.raises(EdgeShituError, match="cannot load the native Hamming kernel"):
        native_kernel.load(bogus)
    with pytest.raises(EdgeShituError, match="no such native kernel"):
        native_kernel.load(tmp_path / "missing.so")
    native_kernel._cache.clear()
