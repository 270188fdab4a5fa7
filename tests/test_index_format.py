"""The file format contract: layout, alignment, CRCs, versions, mmap, golden files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from golden_files import PINNED_SHA256, golden_itq128, golden_sign512, write_golden

from edge_shitu.errors import CorruptFileError, EdgeShituError, VersionError
from edge_shitu.index_format import (
    ALIGN,
    ENTRY_BYTES,
    HEADER_BYTES,
    MAGIC,
    Section,
    planes_to_rows,
    read_index,
    rows_to_planes,
    write_index,
)


@pytest.fixture
def sign_file(tmp_path: Path) -> Path:
    p = tmp_path / "g.esidx"
    write_index(p, golden_sign512())
    return p


def _table(raw: bytes) -> dict[int, tuple[int, int, int]]:
    (nsec,) = struct.unpack_from("<I", raw, 56)
    out = {}
    for i in range(nsec):
        kind, crc, off, length, _ = struct.unpack_from("<IIQQQ", raw, HEADER_BYTES + i * ENTRY_BYTES)
        out[kind] = (crc, off, length)
    return out


def test_golden_files_are_byte_stable(tmp_path: Path) -> None:
    hashes = write_golden(tmp_path)
    assert hashes == PINNED_SHA256, "the byte layout changed: bump the format version and the pinned hashes"


def test_roundtrip_preserves_everything(sign_file: Path) -> None:
    src = golden_sign512()
    got = read_index(sign_file)
    assert (got.bits, got.dim, got.method, got.next_id, got.generation) == (512, 512, src.method, 1091, 3)
    assert np.array_equal(planes_to_rows(got.planes[:, : got.count]), planes_to_rows(src.planes[:, :13]))
    assert got.ids.tolist() == src.ids.tolist()
    assert got.labels == src.labels and got.label_of.tolist() == src.label_of.tolist()
    assert got.deleted_mask().nonzero()[0].tolist() == [2, 7, 12]
    assert got.live_count == 10 and got.meta == {"golden": "sign512"}


def test_itq_parameters_roundtrip(tmp_path: Path) -> None:
    src = golden_itq128()
    write_index(tmp_path / "i.esidx", src)
    got = read_index(tmp_path / "i.esidx")
    assert np.array_equal(got.mean, src.mean) and np.array_equal(got.proj, src.proj)


def test_header_and_sections_follow_the_spec(sign_file: Path) -> None:
    raw = sign_file.read_bytes()
    assert raw[:8] == MAGIC == b"ESHIDX\r\n"
    major, minor, hbytes, bits, code_bytes, count, live = struct.unpack_from("<HHIIIQQ", raw, 8)
    assert (major, minor, hbytes, bits, code_bytes, count, live) == (1, 0, 128, 512, 64, 13, 10)
    assert struct.unpack_from("<Q", raw, 72)[0] == len(raw)
    assert struct.unpack_from("<I", raw, 124)[0] == zlib.crc32(raw[:124])
    table = _table(raw)
    for kind, (crc, off, length) in table.items():
        assert off % ALIGN == 0, f"section {kind} not 64-byte aligned"
        assert zlib.crc32(raw[off : off + length]) == crc
    # CODES: 8 planes of stride 16 rows; plane w row r = bytes [8w, 8w+8) of code r
    crc, off, length = table[Section.CODES]
    assert length == 8 * 16 * 8
    codes = planes_to_rows(golden_sign512().planes[:, :13])
    assert raw[off + (3 * 16 + 5) * 8 : off + (3 * 16 + 6) * 8] == codes[5, 24:32].tobytes()
    assert table[Section.IDS][2] == 13 * 8 and table[Section.DELETED][2] == 2


def test_sections_are_mmapped_not_copied(sign_file: Path) -> None:
    got = read_index(sign_file)
    assert not got.planes.flags.owndata and not got.planes.flags.writeable
    assert got.planes.ctypes.data % 8 == 0


@pytest.mark.parametrize("cut", [0, 7, 127, 200, -1])
def test_truncated_file_is_refused(sign_file: Path, cut: int) -> None:
    raw = sign_file.read_bytes()
    sign_file.write_bytes(raw[:cut] if cut >= 0 else raw[:-1])
    with pytest.raises(CorruptFileError):
        read_index(sign_file)


@pytest.mark.parametrize("kind", list(Section)[:5])
def test_flipped_bit_in_any_section_is_caught(sign_file: Path, kind: Section) -> None:
    raw = bytearray(sign_file.read_bytes())
    _, off, length = _table(bytes(raw))[kind]
    raw[off + length // 2] ^= 0x10
    sign_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="CRC mismatch"):
        read_index(sign_file)


def test_flipped_bit_in_header_is_caught(sign_file: Path) -> None:
    raw = bytearray(sign_file.read_bytes())
    raw[30] ^= 1  # inside count
    sign_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="header CRC"):
        read_index(sign_file)


def test_newer_major_version_is_refused_with_advice(sign_file: Path) -> None:
    raw = bytearray(sign_file.read_bytes())
    raw[8:10] = struct.pack("<H", 2)
    raw[124:128] = struct.pack("<I", zlib.crc32(bytes(raw[:124])))
    sign_file.write_bytes(bytes(raw))
    with pytest.raises(VersionError, match="upgrade edge-shitu"):
        read_index(sign_file)


def test_not_an_index(tmp_path: Path) -> None:
    p = tmp_path / "x.esidx"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 300)
    with pytest.raises(CorruptFileError, match="bad magic"):
        read_index(p)
    with pytest.raises(EdgeShituError, match="no such index"):
        read_index(tmp_path / "missing.esidx")


def test_planes_roundtrip_any_size() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 100):
        codes = rng.integers(0, 256, size=(n, 24), dtype=np.uint8)
        planes = rows_to_planes(codes)
        assert planes.shape == (3, (n + 7) // 8 * 8)
        assert np.array_equal(planes_to_rows(planes[:, :n]), codes)
