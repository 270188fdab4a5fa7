"""The C reader of the index format (runtimes/native/esindex.c) agrees with the Python reader."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from golden_files import write_golden

from edge_shitu.assets import PROJECT_ROOT
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import planes_to_rows

SRC = PROJECT_ROOT / "runtimes" / "native" / "esindex.c"


class View(ctypes.Structure):
    _fields_ = [
        ("version_major", ctypes.c_uint16), ("version_minor", ctypes.c_uint16),
        *[(n, ctypes.c_uint32) for n in ("bits", "code_bytes", "words", "method", "dim", "flags")],
        *[(n, ctypes.c_uint64) for n in ("count", "live_count", "next_id", "generation", "stride")],
        *[(n, ctypes.c_void_p) for n in ("codes", "ids", "deleted", "label_of")],
        ("n_labels", ctypes.c_uint32),
        *[(n, ctypes.c_void_p) for n in ("label_offsets", "label_bytes", "mean", "proj", "meta")],
        ("meta_len", ctypes.c_uint64),
    ]


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    out = tmp_path_factory.mktemp("c") / "libesindex.so"
    subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-o", str(out),
                    str(SRC)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.es_index_parse.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(View)]
    lib.es_index_strerror.restype = ctypes.c_char_p
    lib.es_crc32.restype = ctypes.c_uint32
    lib.es_crc32.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
    lib.es_index_id.restype = ctypes.c_uint64
    lib.es_index_id.argtypes = [ctypes.POINTER(View), ctypes.c_uint64]
    lib.es_index_is_deleted.argtypes = [ctypes.POINTER(View), ctypes.c_uint64]
    lib.es_index_label.argtypes = [ctypes.POINTER(View), ctypes.c_uint64, ctypes.POINTER(ctypes.c_void_p),
                                   ctypes.POINTER(ctypes.c_uint32)]
    lib.es_index_code.argtypes = [ctypes.POINTER(View), ctypes.c_uint64, ctypes.c_char_p]
    return lib


def parse(lib: ctypes.CDLL, raw: bytes, verify: int = 1) -> tuple[int, View, ctypes.Array]:
    buf = ctypes.create_string_buffer(raw, len(raw))
    view = View()
    return lib.es_index_parse(buf, len(raw), verify, ctypes.byref(view)), view, buf


def test_crc32_matches_zlib(lib: ctypes.CDLL) -> None:
    import zlib
    assert lib.es_crc32(b"123456789", 9) == 0xCBF43926
    data = np.random.default_rng(0).integers(0, 256, 10000, dtype=np.uint8).tobytes()
    assert lib.es_crc32(data, len(data)) == zlib.crc32(data)


@pytest.mark.parametrize("name", ["sign512.esidx", "itq128.esidx", "itq128_rerank.esidx"])
def test_c_reader_agrees_with_python_on_golden_files(lib: ctypes.CDLL, tmp_path: Path, name: str) -> None:
    write_golden(tmp_path)
    raw = (tmp_path / name).read_bytes()
    status, v, _buf = parse(lib, raw)  # _buf keeps the memory the view points into alive
    assert status == 0, lib.es_index_strerror(status)
    py = GalleryIndex.open(tmp_path / name).data
    assert (v.bits, v.dim, v.count, v.live_count, v.next_id, v.generation, v.method) == \
        (py.bits, py.dim, py.count, py.live_count, py.next_id, py.generation, int(py.method))
    codes = planes_to_rows(py.planes[:, : py.count])
    out = ctypes.create_string_buffer(py.code_bytes)
    for r in range(py.count):
        assert lib.es_index_id(ctypes.byref(v), r) == int(py.ids[r])
        assert bool(lib.es_index_is_deleted(ctypes.byref(v), r)) == bool(py.deleted_mask()[r])
        ptr, n = ctypes.c_void_p(), ctypes.c_uint32()
        assert lib.es_index_label(ctypes.byref(v), r, ctypes.byref(ptr), ctypes.byref(n)) == 0
        assert ctypes.string_at(ptr, n.value).decode() == py.labels[int(py.label_of[r])]
        assert lib.es_index_code(ctypes.byref(v), r, out) == 0 and out.raw == codes[r].tobytes()
    assert (v.proj is None) == (py.proj is None)


def test_c_reader_rejects_damage(lib: ctypes.CDLL, tmp_path: Path) -> None:
    write_golden(tmp_path)
    raw = (tmp_path / "itq128.esidx").read_bytes()
    assert parse(lib, raw[:-1])[0] == -2  # truncated
    assert parse(lib, b"X" + raw[1:])[0] == -3  # magic
    bad = bytearray(raw)
    bad[9] = 7  # major version 0x0701
    assert parse(lib, bytes(bad))[0] == -4
    bad = bytearray(raw)
    bad[20] ^= 1
    assert parse(lib, bytes(bad))[0] == -5  # header CRC
    bad = bytearray(raw)
    bad[len(raw) - 100] ^= 0x40  # inside HASH_PROJ
    assert parse(lib, bytes(bad))[0] == -8
    assert parse(lib, bytes(bad), verify=0)[0] == 0  # CRC skipped on request
