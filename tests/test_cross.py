"""Cross builds: the aarch64 / armhf kernels under qemu and the Android x86_64 library on the host
return exactly what the numpy path returns (make cross builds them; make test runs this)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_shitu import hamming
from edge_shitu.assets import PROJECT_ROOT
from edge_shitu.index_format import rows_to_planes
from edge_shitu.runtimes.native_kernel import NativeHamming

BUILD = PROJECT_ROOT / "build"
TARGETS = {  # triple: (qemu, cpu, expected default kernel)
    "aarch64-linux-gnu": ("qemu-aarch64-static", "cortex-a72", "neon"),
    "arm-linux-gnueabihf": ("qemu-arm-static", "cortex-a7", "neon"),
}


def _built(path: Path, make_target: str) -> Path:
    if not path.exists():
        if shutil.which("make") is None:
            pytest.skip("make not available")
        r = subprocess.run(["make", "-C", str(PROJECT_ROOT), make_target], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"'make {make_target}' failed (cross compilers missing? run 'make native-deps'): "
                        f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return path


def _case(seed: int, n: int, words: int, nq: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, words * 8), dtype=np.uint8)
    codes[5:25] = codes[1]  # ties
    codes[30] = ~codes[0]
    queries = np.vstack([codes[:2], rng.integers(0, 256, size=(nq - 2, words * 8), dtype=np.uint8)])
    deleted = rng.random(n) < 0.25
    return codes, queries, deleted


def _write_input(path: Path, planes: np.ndarray, count: int, qwords: np.ndarray, k: int,
                 bitmap: np.ndarray | None) -> None:
    words, stride = planes.shape
    head = b"ESHTEST1" + struct.pack("<IIQQQII", words, k, count, stride, qwords.shape[0], bitmap is not None, 0)
    body = planes.astype("<u8").tobytes() + qwords.astype("<u8").tobytes()
    path.write_bytes(head + body + (bitmap.tobytes() if bitmap is not None else b""))


def _read_output(path: Path, nq: int, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw, pos, out = path.read_bytes(), 0, {}
    while pos < len(raw):
        n = raw[pos]
        name = raw[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        dist = np.frombuffer(raw, "<i4", nq * k, pos).reshape(nq, k)
        pos += 4 * nq * k
        rows = np.frombuffer(raw, "<i8", nq * k, pos).reshape(nq, k)
        pos += 8 * nq * k
        out[name] = (dist, rows)
    return out


@pytest.mark.parametrize("triple", list(TARGETS))
@pytest.mark.parametrize(("n", "words"), [(1000, 4), (777, 8), (300, 2), (2049, 1), (100, 16)])
def test_cross_kernel_under_qemu_matches_numpy(tmp_path: Path, triple: str, n: int, words: int) -> None:
    qemu, cpu, expected = TARGETS[triple]
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} not installed (run 'make native-deps')")
    driver = _built(BUILD / triple / "eshamming_driver", "cross-aarch64" if "aarch64" in triple else "cross-armhf")
    codes, queries, deleted = _case(n + words, n, words)
    planes, qwords = rows_to_planes(codes), queries.view(np.uint64)
    for k, dmask in ((5, None), (40, deleted)):
        bitmap = np.packbits(dmask, bitorder="little") if dmask is not None else None
        _write_input(tmp_path / "in.bin", planes, n, qwords, k, bitmap)
        r = subprocess.run([qemu, "-cpu", cpu, str(driver), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expected
        want = hamming.topk(planes, n, qwords, k, dmask)
        results = _read_output(tmp_path / "out.bin", len(queries), k)
        assert set(results) == {"portable", expected}
        for name, (dist, rows) in results.items():
            assert np.array_equal(dist, want[0]) and np.array_equal(rows, want[1]), (triple, name, k)


def test_linux_libraries_need_no_libc(tmp_path: Path) -> None:
    """No NEEDED entries and no GLIBC symbol versions: loads on JetPack 4/5's old glibc too."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf not installed")
    for triple in TARGETS:
        lib = _built(BUILD / triple / "libeshamming.so", "cross-aarch64" if "aarch64" in triple else "cross-armhf")
        dyn = subprocess.run(["readelf", "-d", "-V", str(lib)], capture_output=True, text=True).stdout
        assert "NEEDED" not in dyn and "GLIBC" not in dyn, dyn


def test_android_x86_64_library_loads_and_agrees_on_host() -> None:
    lib = _built(BUILD / "android" / "x86_64" / "libeshamming.so", "android-libs")
    for abi in ("arm64-v8a", "armeabi-v7a"):
        assert (BUILD / "android" / abi / "libeshamming.so").stat().st_size > 1000
    native = NativeHamming(lib)
    codes, queries, deleted = _case(3, 5000, 4)
    planes, qwords = rows_to_planes(codes), queries.view(np.uint64)
    want = hamming.topk(planes, 5000, qwords, 10, deleted)
    got = native.topk_planar(planes, 5000, qwords, 10, np.packbits(deleted, bitorder="little"))
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
