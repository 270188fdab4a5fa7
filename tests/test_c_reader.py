"""The C reader of the index format (runtimes/native/esindex.c) agrees with the Python reader."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from golden_files import PINNED_SHA256, PINNED_SHA256_OLD, SAME_AS, fix_crcs, golden_sign512, write_golden

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
        ("meta_len", ctypes.c_uint64), ("vectors", ctypes.c_void_p),
    ]


def build_c_reader(folder: Path) -> ctypes.CDLL | None:
    """esindex.c compiled on its own (the current source, whatever libeshamming.so holds) and
    bound with ctypes; None without a C compiler. Shared with tests/test_fuzz_index.py."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = folder / "libesindex.so"
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


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    built = build_c_reader(tmp_path_factory.mktemp("c"))
    if built is None:
        pytest.skip("no C compiler (cc) on this machine")
    return built


def parse(lib: ctypes.CDLL, raw: bytes, verify: int = 1) -> tuple[int, View, ctypes.Array]:
    buf = ctypes.create_string_buffer(raw, len(raw))
    view = View()
    return lib.es_index_parse(buf, len(raw), verify, ctypes.byref(view)), view, buf


def test_crc32_matches_zlib(lib: ctypes.CDLL) -> None:
    import zlib
    assert lib.es_crc32(b"123456789", 9) == 0xCBF43926
    data = np.random.default_rng(0).integers(0, 256, 10000, dtype=np.uint8).tobytes()
    assert lib.es_crc32(data, len(data)) == zlib.crc32(data)


@pytest.mark.parametrize("name", [*PINNED_SHA256, *PINNED_SHA256_OLD, "future1.3_optional.esidx"])
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
    assert (v.proj is None) == (py.proj is None) and (v.vectors is None) == (py.vectors is None)
    assert (v.version_major, v.version_minor) == py.version
    if py.vectors is not None:
        assert ctypes.string_at(v.vectors, py.vectors.size) == py.vectors.tobytes()
    assert SAME_AS[name] in PINNED_SHA256


def test_c_reader_refuses_a_newer_required_section(lib: ctypes.CDLL, tmp_path: Path) -> None:
    write_golden(tmp_path)
    assert parse(lib, (tmp_path / "future1.3_required.esidx").read_bytes())[0] == -4


def test_c_reader_rejects_damage(lib: ctypes.CDLL, tmp_path: Path) -> None:
    write_golden(tmp_path)
    raw = (tmp_path / "itq128.esidx").read_bytes()
    assert parse(lib, raw[:-1])[0] == -2  # truncated
    assert parse(lib, b"X" + raw[1:])[0] == -3  # magic
    bad = bytearray(raw)
    bad[9] = 7  # major version 0x0701: a flipped byte is corruption (header CRC) ...
    assert parse(lib, bytes(bad))[0] == -5
    assert parse(lib, fix_crcs(bad))[0] == -4  # ... a real 7.1 file (CRC right) asks for an upgrade
    bad = bytearray(raw)
    bad[20] ^= 1
    assert parse(lib, bytes(bad))[0] == -5  # header CRC
    bad = bytearray(raw)
    bad[len(raw) - 100] ^= 0x40  # inside HASH_PROJ
    assert parse(lib, bytes(bad))[0] == -8
    assert parse(lib, bytes(bad), verify=0)[0] == 0  # CRC skipped on request


def test_c_reader_checks_the_table_and_every_byte(lib: ctypes.CDLL, tmp_path: Path) -> None:
    """The issue's cases (a flipped META / RERANK_VECTORS entry) and the other new rules, in C."""
    write_golden(tmp_path)
    raw = (tmp_path / "itq128_rerank.esidx").read_bytes()
    (nsec,) = struct.unpack_from("<I", raw, 56)
    for pos in range(128, 128 + 32 * nsec):  # every bit of the table
        for bit in range(8):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            assert parse(lib, bytes(bad))[0] == -10, (pos, bit)
    old = (tmp_path / "itq128_rerank_v1.1.esidx").read_bytes()  # no table CRC: the strict rules catch it all
    for pos in range(128, 128 + 32 * nsec):
        for bit in range(8):
            bad = bytearray(old)
            bad[pos] ^= 1 << bit
            assert parse(lib, bytes(bad))[0] < 0, (pos, bit)
    sign = (tmp_path / "sign512.esidx").read_bytes()
    ids_end = struct.unpack_from("<QQ", sign, 128 + 32 + 8)  # IDS: the second entry's offset, length
    padded = bytearray(sign)
    padded[sum(ids_end)] = 1  # the gap after IDS
    assert parse(lib, fix_crcs(padded))[0] == -11
    assert parse(lib, fix_crcs(sign + b"\0"))[0] == -2  # header says shorter
    d = golden_sign512()
    d.deleted = d.deleted | np.array([0, 0x80], np.uint8)  # a mark past the last row
    from edge_shitu.index_format import write_index
    write_index(tmp_path / "marks.esidx", d)
    assert parse(lib, (tmp_path / "marks.esidx").read_bytes())[0] == -7
