"""The file format contract: layout, alignment, CRCs, versions, mmap, golden files."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from golden_files import (
    PINNED_SHA256,
    PINNED_SHA256_FUTURE,
    PINNED_SHA256_OLD,
    SAME_AS,
    fix_crcs,
    golden_itq128,
    golden_itq128_rerank,
    golden_sign512,
    write_golden,
)

from edge_shitu.errors import CorruptFileError, EdgeShituError, VersionError
from edge_shitu.gallery_index import GalleryIndex, edit_index_file
from edge_shitu.index_format import (
    ALIGN,
    ENTRY_BYTES,
    HEADER_BYTES,
    MAGIC,
    SECTION_OPTIONAL,
    Section,
    parse_index,
    planes_to_rows,
    read_index,
    rows_to_planes,
    write_index,
    write_to,
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


def _entry_pos(raw: bytes, kind: int) -> int:
    """Byte offset of the table entry of ``kind``."""
    (nsec,) = struct.unpack_from("<I", raw, 56)
    for i in range(nsec):
        if struct.unpack_from("<I", raw, HEADER_BYTES + i * ENTRY_BYTES)[0] == kind:
            return HEADER_BYTES + i * ENTRY_BYTES
    raise KeyError(kind)


def _bytes(data, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    write_to(buf, data, **kw)
    return buf.getvalue()


def test_golden_files_are_byte_stable(tmp_path: Path) -> None:
    hashes = write_golden(tmp_path)
    assert hashes == {**PINNED_SHA256, **PINNED_SHA256_OLD, **PINNED_SHA256_FUTURE}, \
        "the byte layout changed: bump the format version and the pinned hashes"


def test_old_and_future_golden_files_read_with_the_same_results(tmp_path: Path) -> None:
    """1.0 / 1.1 files (and a 1.3 file whose unknown section is optional) give exactly the
    results of the 1.2 file; a 1.3 file with an unknown required section asks for an upgrade."""
    write_golden(tmp_path)
    expected = json.loads((tmp_path / "expected.json").read_text())
    for name, same in SAME_AS.items():
        assert expected[name] == expected[same], name
        got = GalleryIndex.open(tmp_path / name)
        version = name.split("_v")[-1][: -len(".esidx")] if "_v1" in name else "1.3" if "1.3" in name else "1.2"
        assert got.info()["format"] == f"edge-shitu index {version}"
        ref = GalleryIndex.open(tmp_path / same)
        for key in ("bits", "dim", "method", "count", "live", "next_id", "generation", "meta", "rerank_vectors"):
            assert got.info()[key] == ref.info()[key], (name, key)
    with pytest.raises(VersionError, match=r"section kind 4097 .not marked optional.*upgrade edge-shitu"):
        read_index(tmp_path / "future1.3_required.esidx")


def test_a_newer_minor_file_is_not_rewritten(tmp_path: Path) -> None:
    """An edit would drop the sections this version does not know: refused, file untouched."""
    write_golden(tmp_path)
    path = tmp_path / "future1.3_optional.esidx"
    before = path.read_bytes()
    with pytest.raises(VersionError, match=r"format 1\.3 was written by a newer edge-shitu"), \
            edit_index_file(path) as idx:
        idx.remove([int(idx.ids()[0])])
    assert path.read_bytes() == before


@pytest.mark.parametrize("edit", ["add", "remove", "compact", "save"])
@pytest.mark.parametrize("name", ["sign512_v1.0.esidx", "itq128_rerank_v1.1.esidx"])
def test_an_edit_rewrites_an_old_file_in_the_current_version(tmp_path: Path, name: str, edit: str) -> None:
    write_golden(tmp_path)
    path = tmp_path / name
    with edit_index_file(path) as idx:
        assert idx.info()["format"] == f"edge-shitu index 1.{1 if 'v1.1' in name else 0}"
        if edit == "add":
            idx.add(np.ones((1, idx.dim), np.float32), ["new"])
        elif edit == "remove":
            idx.remove([int(idx.ids()[0])])
        elif edit == "compact":
            idx.remove([int(idx.ids()[0])])
            idx.compact()
    raw = path.read_bytes()
    assert struct.unpack_from("<HH", raw, 8) == (1, 2)
    (nsec,) = struct.unpack_from("<I", raw, 56)
    assert struct.unpack_from("<I", raw, 88)[0] == zlib.crc32(raw[HEADER_BYTES : HEADER_BYTES + nsec * ENTRY_BYTES])
    assert GalleryIndex.open(path).info()["format"] == "edge-shitu index 1.2"


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
    assert (major, minor, hbytes, bits, code_bytes, count, live) == (1, 2, 128, 512, 64, 13, 10)
    assert struct.unpack_from("<Q", raw, 72)[0] == len(raw)
    (nsec,) = struct.unpack_from("<I", raw, 56)
    table_bytes = raw[HEADER_BYTES : HEADER_BYTES + nsec * ENTRY_BYTES]
    assert struct.unpack_from("<I", raw, 88)[0] == zlib.crc32(table_bytes)  # table CRC
    assert raw[92:124] == bytes(32)  # reserved
    assert struct.unpack_from("<I", raw, 124)[0] == zlib.crc32(raw[:124])  # header CRC, covers the table CRC
    table = _table(raw)
    pos = HEADER_BYTES + nsec * ENTRY_BYTES
    for i, (kind, (crc, off, length)) in enumerate(table.items()):
        assert off % ALIGN == 0, f"section {kind} not 64-byte aligned"
        assert off == (pos + ALIGN - 1) // ALIGN * ALIGN and raw[pos:off] == bytes(off - pos)  # packed, zero gaps
        assert zlib.crc32(raw[off : off + length]) == crc
        assert raw[HEADER_BYTES + i * ENTRY_BYTES + 24 : HEADER_BYTES + (i + 1) * ENTRY_BYTES] == bytes(8)  # flags
        pos = off + length
    assert pos == len(raw)  # the file ends with the last section
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


@pytest.mark.parametrize("byte", [8, 9, 10, 11])
def test_flipped_version_byte_says_corrupt_not_upgrade(sign_file: Path, byte: int) -> None:
    """The header CRC is checked before the version is believed."""
    raw = bytearray(sign_file.read_bytes())
    raw[byte] ^= 0x02
    with pytest.raises(CorruptFileError, match="header CRC mismatch"):
        parse_index(bytes(raw))


@pytest.mark.parametrize("data", [golden_sign512, golden_itq128_rerank])
@pytest.mark.parametrize("minor", [2, "old"])
def test_every_bit_of_the_section_table_is_checked(data, minor) -> None:  # type: ignore[no-untyped-def]
    """The issue's cases: b[384] ^= 8 turned META into an unknown kind that was skipped, and a
    flipped RERANK_VECTORS entry read the file as 1.0. Every single-bit flip of every entry
    (1.2: table CRC; 1.0/1.1: no table CRC, so strict kinds, packed offsets, zero reserved bits)."""
    d = data()
    raw = _bytes(d, minor=(1 if d.vectors is not None else 0) if minor == "old" else 2)
    (nsec,) = struct.unpack_from("<I", raw, 56)
    for pos in range(HEADER_BYTES, HEADER_BYTES + nsec * ENTRY_BYTES):
        for bit in range(8):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            with pytest.raises(CorruptFileError):
                parse_index(bytes(bad))


def test_issue_cases_on_a_rerank_file(tmp_path: Path) -> None:
    raw = _bytes(golden_itq128_rerank())
    for kind, mask in ((Section.META, 8), (Section.RERANK_VECTORS, 2)):
        bad = bytearray(raw)
        bad[_entry_pos(raw, kind)] ^= mask
        with pytest.raises(CorruptFileError, match="section table CRC mismatch"):
            parse_index(bytes(bad))
        # even with every CRC recomputed (a deliberate edit), the kind change is refused
        with pytest.raises(CorruptFileError):
            parse_index(fix_crcs(bad))


def test_unknown_section_kinds(tmp_path: Path) -> None:
    d = golden_sign512()
    ok = parse_index(_bytes(d, extra=[(300, b"x" * 70, SECTION_OPTIONAL)]))
    assert ok.labels == d.labels and ok.version == (1, 2)
    with pytest.raises(CorruptFileError, match=r"section kind 300 .not marked optional. in a format 1\.2 file"):
        parse_index(_bytes(d, extra=[(300, b"x" * 70, 0)]))
    with pytest.raises(CorruptFileError, match=r"section flags 0x2 in a format 1\.2 file"):
        parse_index(_bytes(d, extra=[(300, b"x", 2)]))
    newer = bytearray(_bytes(d, extra=[(300, b"x", 2)]))
    newer[10] = 3  # the same from a 1.3 writer: an unknown flag means "upgrade"
    with pytest.raises(VersionError, match="section flags 0x2"):
        parse_index(fix_crcs(newer))


@pytest.mark.parametrize(("damage", "match"), [
    (lambda r: r.__setitem__(sum(_table(bytes(r))[Section.IDS][1:]), 1), "non-zero padding"),  # after IDS
    (lambda r: r.extend(b"\0"), "header says"),
    (lambda r: r.__setitem__(slice(92, 93), b"\1"), "reserved header bytes"),
    (lambda r: r.__setitem__(slice(60, 61), b"\3"), "header flags 0x3"),
])
def test_every_other_byte_is_checked_too(damage, match: str) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(_bytes(golden_sign512()))
    damage(raw)
    with pytest.raises(CorruptFileError, match=match):
        parse_index(fix_crcs(raw))


def test_semantic_checks_behind_the_crcs() -> None:
    """Files whose CRCs all match but whose contents a writer never produces."""
    d = golden_sign512()
    d.meta = ["not", "an", "object"]  # type: ignore[assignment]
    with pytest.raises(CorruptFileError, match="not a JSON object"):
        parse_index(_bytes(d))
    d.meta = {"cosine_of_distance": [0.5] * 10}
    with pytest.raises(CorruptFileError, match="cosine_of_distance"):
        parse_index(_bytes(d))
    d = golden_sign512()
    d.deleted = d.deleted | np.array([0, 0x80], np.uint8)  # row 15 of 13
    with pytest.raises(CorruptFileError, match="past the last row"):
        parse_index(_bytes(d))
    raw = bytearray(_bytes(golden_itq128()))
    raw[_entry_pos(raw, Section.META if Section.META in _table(bytes(raw)) else Section.HASH_PROJ)] = 1  # 2 CODES
    with pytest.raises(CorruptFileError, match="appears twice"):
        parse_index(fix_crcs(raw))
    old = bytearray(_bytes(golden_sign512(), minor=0))
    old[10] = 1  # a "1.1" file without re-rank vectors
    with pytest.raises(CorruptFileError, match=r"format 1\.1 without RERANK_VECTORS"):
        parse_index(fix_crcs(old))


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "g.esidx"
    os.mkfifo(fifo)
    with pytest.raises(EdgeShituError, match="not a regular file"):
        read_index(fifo)


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
