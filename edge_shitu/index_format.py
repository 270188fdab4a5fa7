"""Bytes on disk for the gallery index (spec: docs/index-format.md).

This module only knows the layout: it turns an :class:`IndexData` into bytes and back, checks
every CRC and bound, and maps the sections in place (``mmap``) so a 64 MB gallery opens in
microseconds on a Raspberry Pi. Hashing and search live elsewhere.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from edge_shitu.atomic import atomic_write
from edge_shitu.errors import CorruptFileError, EdgeShituError, VersionError

MAGIC = b"ESHIDX\r\n"
VERSION_MAJOR = 1
VERSION_MINOR = 2  # what this writer writes; 1.0 and 1.1 files still read
HEADER_BYTES = 128
ENTRY_BYTES = 32
ALIGN = 64
MAX_SECTIONS = 1024
MIN_BITS, MAX_BITS = 64, 4096
FLAG_L2_NORMALIZE = 1
KNOWN_FLAGS = FLAG_L2_NORMALIZE
SECTION_OPTIONAL = 1  # section entry flag (1.2): a reader that does not know the kind may skip it

# magic, major, minor, header_bytes, bits, code_bytes, count, live, next_id, method, dim,
# section_count, flags, table_offset, file_bytes, generation, table_crc32 (1.2; 0 before), reserved
_HEADER = struct.Struct("<8sHHIIIQQQIIIIQQQI32s")
# kind, crc32, offset, length, flags (1.2; 0 before), reserved
_ENTRY = struct.Struct("<IIQQII")
assert _HEADER.size == HEADER_BYTES - 4 and _ENTRY.size == ENTRY_BYTES


class Section(IntEnum):
    CODES = 1
    IDS = 2
    DELETED = 3
    LABEL_OF = 4
    LABELS = 5
    HASH_MEAN = 6
    HASH_PROJ = 7
    META = 8
    RERANK_VECTORS = 9  # since 1.1, optional


class Method(IntEnum):
    SIGN = 0
    ITQ = 1


def format_version(data: IndexData) -> tuple[int, int]:
    """The version ``data`` was read as (or will be written as, for a new or edited index)."""
    return data.version


def plane_stride(count: int) -> int:
    """Rows per plane: a multiple of 8 so each 8-byte-word plane starts 64-byte aligned."""
    return (count + 7) // 8 * 8


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass
class IndexData:
    """Everything one index file holds. Arrays may be read-only views into an mmap."""

    bits: int
    dim: int
    method: Method
    planes: np.ndarray  # uint64 (words, stride): word-planar codes
    ids: np.ndarray  # uint64 (count,)
    deleted: np.ndarray  # uint8 bitmap (ceil(count/8),), LSB first
    label_of: np.ndarray  # uint32 (count,)
    labels: list[str]
    mean: np.ndarray | None = None  # float32 (dim,)
    proj: np.ndarray | None = None  # float32 (dim, bits)
    normalize: bool = True
    next_id: int = 0
    generation: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    vectors: np.ndarray | None = None  # int8 (count, dim): re-rank features (since 1.1), optional
    version: tuple[int, int] = (VERSION_MAJOR, VERSION_MINOR)  # of the file it was read from / written to

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @property
    def words(self) -> int:
        return self.bits // 64

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    def deleted_mask(self) -> np.ndarray:
        """Bool per row: the bitmap unpacked (LSB first)."""
        return np.unpackbits(self.deleted, count=self.count, bitorder="little").astype(bool)

    @property
    def live_count(self) -> int:
        return self.count - int(np.unpackbits(self.deleted, count=self.count, bitorder="little").sum())


# ---------------------------------------------------------------- codes <-> planes
def rows_to_planes(codes: np.ndarray, stride: int | None = None) -> np.ndarray:
    """Row codes (n, code_bytes) uint8 -> word planes (words, stride) uint64 (same bytes)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    words = nbytes // 8
    stride = plane_stride(n) if stride is None else stride
    planes = np.zeros((words, stride), dtype=np.uint64)
    planes[:, :n] = codes.view(np.uint64).reshape(n, words).T
    return planes


def planes_to_rows(planes: np.ndarray, rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Word planes -> row codes (m, code_bytes) uint8, optionally only some rows."""
    sel = planes if rows is None else planes[:, rows]
    return np.ascontiguousarray(sel.T).view(np.uint8)


# ---------------------------------------------------------------- labels
def encode_labels(labels: list[str]) -> bytes:
    blobs = [s.encode("utf-8") for s in labels]
    offsets = np.zeros(len(blobs) + 1, dtype="<u4")
    if blobs:
        offsets[1:] = np.cumsum([len(b) for b in blobs])
    return struct.pack("<I", len(blobs)) + offsets.tobytes() + b"".join(blobs)


def decode_labels(buf: memoryview, where: str) -> list[str]:
    if len(buf) < 4:
        raise CorruptFileError(f"{where}: LABELS section too short; the index is corrupt, rebuild it")
    (n,) = struct.unpack_from("<I", buf, 0)
    need = 4 + 4 * (n + 1)
    if len(buf) < need:
        raise CorruptFileError(f"{where}: LABELS offsets truncated; the index is corrupt, rebuild it")
    offsets = np.frombuffer(buf, dtype="<u4", count=n + 1, offset=4).astype(np.int64)
    blob = bytes(buf[need:])
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(blob):
        raise CorruptFileError(f"{where}: LABELS offsets inconsistent; the index is corrupt, rebuild it")
    try:
        return [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{where}: a label is not UTF-8 ({e.reason}); rebuild the index") from None


# ---------------------------------------------------------------- writing
Payload = Union[bytes, memoryview]  # not `bytes | memoryview`: evaluated at import, 3.10+ only


def _sections(data: IndexData) -> list[tuple[int, Payload]]:
    count = data.count
    stride = plane_stride(count)
    planes = data.planes
    if planes.shape != (data.words, stride):
        planes_fixed = np.zeros((data.words, stride), dtype=np.uint64)
        m = min(planes.shape[1], count)
        planes_fixed[:, :m] = planes[:, :m]
        planes = planes_fixed
    secs: list[tuple[int, Payload]] = [
        # a view, not a copy, of large code blocks (memoryview cannot cast an empty one)
        (Section.CODES, memoryview(np.ascontiguousarray(planes, dtype="<u8")).cast("B") if planes.size else b""),
        (Section.IDS, np.ascontiguousarray(data.ids, dtype="<u8").tobytes()),
        (Section.DELETED, np.ascontiguousarray(data.deleted, dtype=np.uint8).tobytes()),
        (Section.LABEL_OF, np.ascontiguousarray(data.label_of, dtype="<u4").tobytes()),
        (Section.LABELS, encode_labels(data.labels)),
    ]
    if data.method == Method.ITQ:
        assert data.mean is not None and data.proj is not None
        secs.append((Section.HASH_MEAN, np.ascontiguousarray(data.mean, dtype="<f4").tobytes()))
        secs.append((Section.HASH_PROJ, np.ascontiguousarray(data.proj, dtype="<f4").tobytes()))
    if data.vectors is not None:
        if data.vectors.shape != (count, data.dim):
            raise ValueError(f"re-rank vectors {data.vectors.shape} do not match {count} rows of {data.dim}")
        secs.append((Section.RERANK_VECTORS, np.ascontiguousarray(data.vectors, dtype=np.int8).tobytes()))
    if data.meta:
        secs.append((Section.META, json.dumps(data.meta, ensure_ascii=False, sort_keys=True).encode()))
    return secs


def write_to(f: BinaryIO, data: IndexData, *, minor: int = VERSION_MINOR,
             extra: Sequence[tuple[int, Payload, int]] = ()) -> int:
    """Serialise ``data`` to an open binary file; returns the number of bytes written.

    ``minor`` < 2 writes the legacy 1.0 / 1.1 layout (no table CRC, no entry flags) byte for
    byte as those writers did: only the golden files of tests/golden_files.py need it, so that
    the readers keep being tested against old files. ``extra`` appends (kind, payload, flags)
    sections this writer does not know (tests of the unknown-kind rules; since 1.2 only).
    """
    if minor not in (0, 1, VERSION_MINOR):
        raise ValueError(f"cannot write index format {VERSION_MAJOR}.{minor}")
    if minor < 2 and (extra or (data.vectors is not None) != (minor == 1)):
        raise ValueError("format 1.0 has no RERANK_VECTORS, 1.1 always has it; neither has extra sections")
    secs: list[tuple[int, Payload, int]] = [(k, p, 0) for k, p in _sections(data)] + list(extra)
    table_end = HEADER_BYTES + ENTRY_BYTES * len(secs)
    offset = _align(table_end)
    table = bytearray()
    offsets = []
    for kind, payload, flags in secs:
        table += _ENTRY.pack(int(kind), _crc(payload), offset, len(payload), flags, 0)
        offsets.append(offset)
        offset = _align(offset + len(payload))
    file_bytes = offsets[-1] + len(secs[-1][1])
    head = _HEADER.pack(
        MAGIC, VERSION_MAJOR, minor, HEADER_BYTES, data.bits, data.code_bytes, data.count, data.live_count,
        data.next_id, int(data.method), data.dim, len(secs), FLAG_L2_NORMALIZE if data.normalize else 0,
        HEADER_BYTES, file_bytes, data.generation, _crc(table) if minor >= 2 else 0, bytes(32),
    )
    f.write(head + struct.pack("<I", _crc(head)))
    f.write(table)
    pos = table_end
    for (_, payload, _), off in zip(secs, offsets):
        f.write(bytes(off - pos))
        f.write(payload)
        pos = off + len(payload)
    return pos


def write_index(path: str | os.PathLike[str], data: IndexData, *, minor: int = VERSION_MINOR) -> None:
    """Write atomically: readers see the old file or the new one, never a mix. Always the
    current version unless ``minor`` says otherwise (golden files), so an edit upgrades a file."""
    with atomic_write(path) as f:
        write_to(f, data, minor=minor)
        if os.environ.get("EDGE_SHITU_CRASH_BEFORE_RENAME"):
            # Test hook: die with the new file complete but not yet renamed.
            f.flush()
            os._exit(77)
    data.version = (VERSION_MAJOR, minor)


# ---------------------------------------------------------------- reading
def _view(buf: memoryview, dtype: str, count: int, offset: int) -> np.ndarray:
    # np.frombuffer keeps a reference to the memoryview, which keeps the mmap alive.
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset)


def _kind_name(kind: int) -> str:
    return Section(kind).name if kind in Section._value2member_map_ else f"kind {kind}"


@dataclass(frozen=True)
class _Header:
    """The header fields, believed only once its CRC (and the table's) matched."""

    major: int
    minor: int
    bits: int
    code_bytes: int
    count: int
    live: int
    next_id: int
    method: int
    dim: int
    nsec: int
    flags: int
    generation: int

    @property
    def newer(self) -> bool:
        """Written by a newer minor version: what this reader does not know may be legitimate."""
        return self.minor > VERSION_MINOR


class _Reader:
    """One parse of one buffer; every check raises a one-line CorruptFileError/VersionError.

    Order matters (docs/index-format.md, "Reading"): magic, header CRC, then the version,
    then the table CRC, and only then any field is used.
    """

    def __init__(self, buf: memoryview, where: str, verify: bool) -> None:
        self.buf, self.where, self.verify, self.size = buf, where, verify, len(buf)

    def corrupt(self, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.where}: {what}; the index is corrupt, restore or rebuild it")

    def unknown(self, h: _Header, what: str) -> EdgeShituError:
        """Something this reader does not know: a newer writer's (upgrade) or damage."""
        if h.newer:
            return VersionError(f"{self.where}: index format {h.major}.{h.minor} uses {what}, which this "
                                f"edge-shitu (format {VERSION_MAJOR}.{VERSION_MINOR}) does not know: upgrade "
                                "edge-shitu or rebuild the index")
        return self.corrupt(f"{what} in a format {h.major}.{h.minor} file")

    def header(self) -> _Header:
        buf, size = self.buf, self.size
        if size < HEADER_BYTES or bytes(buf[:8]) != MAGIC:
            if bytes(buf[: min(size, 8)]) == MAGIC[: min(size, 8)]:
                raise CorruptFileError(f"{self.where}: {size} bytes, shorter than an index header; the file "
                                       "is truncated: restore or rebuild it")
            raise CorruptFileError(f"{self.where}: not an edge-shitu index (bad magic); pass a file written by "
                                   "'edge-shitu index build'")
        head = bytes(buf[:HEADER_BYTES])
        if _crc(head[: HEADER_BYTES - 4]) != struct.unpack_from("<I", head, HEADER_BYTES - 4)[0]:
            raise self.corrupt("header CRC mismatch")
        (_m, major, minor, header_bytes, bits, code_bytes, count, live, next_id, method, dim, nsec, flags,
         table_off, file_bytes, generation, table_crc, reserved) = _HEADER.unpack_from(head, 0)
        if major != VERSION_MAJOR:
            raise VersionError(f"{self.where}: index format version {major}.{minor}; this edge-shitu reads "
                               f"{VERSION_MAJOR}.x: upgrade edge-shitu or rebuild the index")
        h = _Header(major, minor, bits, code_bytes, count, live, next_id, method, dim, nsec, flags, generation)
        if header_bytes != HEADER_BYTES or table_off != HEADER_BYTES:
            raise self.corrupt(f"header size {header_bytes} / table offset {table_off}, expected {HEADER_BYTES}")
        if (not h.newer and any(reserved)) or (minor < 2 and table_crc):
            raise self.corrupt("reserved header bytes are not zero")
        if file_bytes != size:
            raise CorruptFileError(f"{self.where}: file is {size} bytes but its header says {file_bytes}; the "
                                   "file is truncated or was altered: restore or rebuild it")
        if nsec > MAX_SECTIONS or HEADER_BYTES + nsec * ENTRY_BYTES > size:
            raise self.corrupt(f"section table of {nsec} entries does not fit the file")
        if minor >= 2 and _crc(buf[HEADER_BYTES : HEADER_BYTES + nsec * ENTRY_BYTES]) != table_crc:
            raise self.corrupt("section table CRC mismatch")
        if flags & ~KNOWN_FLAGS:
            raise self.unknown(h, f"header flags 0x{flags:x}")
        if (bits % 64 or not MIN_BITS <= bits <= MAX_BITS or code_bytes * 8 != bits or method not in (0, 1)
                or dim == 0 or live > count or (method == Method.SIGN and dim != bits)):
            raise self.corrupt(f"inconsistent header (bits={bits}, method={method}, dim={dim}, count={count}, "
                               f"live={live})")
        return h

    def table(self, h: _Header) -> dict[int, memoryview]:
        """Sections by kind. They follow the table in table order, each at the next multiple of
        64, the gaps zero and the file ending with the last one: so every byte is checked."""
        buf, pos = self.buf, HEADER_BYTES + h.nsec * ENTRY_BYTES
        sections: dict[int, memoryview] = {}
        seen: set[int] = set()
        for i in range(h.nsec):
            kind, crc, off, length, flags, reserved = _ENTRY.unpack_from(buf, HEADER_BYTES + i * ENTRY_BYTES)
            name = _kind_name(kind)
            if (h.minor < 2 and flags) or (not h.newer and reserved):
                raise self.corrupt(f"reserved bytes of section {name}'s table entry are not zero")
            if flags & ~SECTION_OPTIONAL:
                raise self.unknown(h, f"section flags 0x{flags:x}")
            if off != _align(pos) or length > self.size - off:
                raise self.corrupt(f"section {name} out of place (offset {off}, length {length})")
            if self.verify and any(buf[pos:off]):
                raise self.corrupt(f"non-zero padding before section {name}")
            if self.verify and _crc(buf[off : off + length]) != crc:
                raise self.corrupt(f"CRC mismatch in section {name}")
            pos = off + length
            if kind in seen:
                raise self.corrupt(f"section {name} appears twice")
            seen.add(kind)
            if kind in Section._value2member_map_:
                sections[kind] = buf[off:pos]
            elif not flags & SECTION_OPTIONAL:  # an optional unknown kind is skipped (its CRC was checked)
                raise self.unknown(h, f"section kind {kind} (not marked optional)")
        if pos != self.size:
            raise self.corrupt(f"{self.size - pos} bytes after the last section")
        return sections

    def need(self, sections: dict[int, memoryview], kind: Section, length: int) -> memoryview:
        sec = sections.get(kind)
        if sec is None:
            raise self.corrupt(f"required section {kind.name} missing")
        if length >= 0 and len(sec) != length:
            raise self.corrupt(f"section {kind.name} is {len(sec)} bytes, expected {length}")
        return sec

    def data(self, h: _Header, sections: dict[int, memoryview]) -> IndexData:
        count, dim, bits = h.count, h.dim, h.bits
        words, stride = bits // 64, plane_stride(count)
        has_hash = Section.HASH_MEAN in sections or Section.HASH_PROJ in sections
        if h.method == Method.SIGN and has_hash:
            raise self.corrupt("a sign-hashed index with ITQ parameters")
        has_vectors = Section.RERANK_VECTORS in sections
        if (h.minor == 0 and has_vectors) or (h.minor == 1 and not has_vectors):
            raise self.corrupt(f"format 1.{h.minor} {'with' if has_vectors else 'without'} RERANK_VECTORS")
        need = self.need
        planes = _view(need(sections, Section.CODES, words * stride * 8), "<u8", words * stride, 0)
        ids = _view(need(sections, Section.IDS, count * 8), "<u8", count, 0)
        deleted = _view(need(sections, Section.DELETED, (count + 7) // 8), "u1", (count + 7) // 8, 0)
        label_of = _view(need(sections, Section.LABEL_OF, count * 4), "<u4", count, 0)
        labels = decode_labels(need(sections, Section.LABELS, -1), self.where)
        if count % 8 and int(deleted[-1]) >> (count % 8):
            raise self.corrupt("deletion marks set past the last row")
        if count and int(label_of.max()) >= len(labels):
            raise self.corrupt("a row points at a missing label")
        mean = proj = None
        if h.method == Method.ITQ:
            mean = _view(need(sections, Section.HASH_MEAN, dim * 4), "<f4", dim, 0)
            proj = _view(need(sections, Section.HASH_PROJ, dim * bits * 4), "<f4", dim * bits, 0).reshape(dim, bits)
            if not (np.isfinite(mean).all() and np.isfinite(proj).all()):
                raise self.corrupt("hashing parameters are not finite")
        vectors = None
        if has_vectors:
            vectors = _view(need(sections, Section.RERANK_VECTORS, count * dim), "i1", count * dim, 0)
            vectors = vectors.reshape(count, dim)
        meta = self.meta(sections.get(Section.META), bits)
        data = IndexData(
            bits=bits, dim=dim, method=Method(h.method), planes=planes.reshape(words, stride), ids=ids,
            deleted=deleted, label_of=label_of, labels=labels, mean=mean, proj=proj,
            normalize=bool(h.flags & FLAG_L2_NORMALIZE), next_id=h.next_id, generation=h.generation, meta=meta,
            vectors=vectors, version=(h.major, h.minor),
        )
        if data.live_count != h.live:
            raise self.corrupt(f"live count {h.live} disagrees with the deletion marks")
        return data

    def meta(self, sec: memoryview | None, bits: int) -> dict[str, Any]:
        """META is informative, except its score table (match scores are read off it): a JSON
        object, and the table, when present, ``bits + 1`` finite numbers in [-1, 1]."""
        if sec is None:
            return {}
        try:
            meta = json.loads(bytes(sec).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise self.corrupt("META section is not JSON") from None
        if not isinstance(meta, dict):
            raise self.corrupt("META section is not a JSON object")
        table = meta.get("cosine_of_distance")  # scores.TABLE_KEY (scores imports this module)
        if table is not None and not (
                isinstance(table, list) and len(table) == bits + 1
                and all(type(v) in (int, float) and -1.0 <= v <= 1.0 for v in table)):
            raise self.corrupt("META's cosine_of_distance is not bits + 1 numbers in [-1, 1]")
        return meta


def parse_index(buf: memoryview | bytes, where: str = "index", *, verify: bool = True) -> IndexData:
    """Check and view an index held in memory (the arrays are views into ``buf``)."""
    r = _Reader(memoryview(buf), where, verify)
    h = r.header()
    return r.data(h, r.table(h))


def read_index(path: str | os.PathLike[str], *, verify: bool = True, use_mmap: bool = True) -> IndexData:
    """Open an index file. ``verify`` also checks every section CRC and the zero padding (a full
    read of the file); the header and the section table are checked always."""
    path = Path(path)
    where = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EdgeShituError(f"{where}: no such index file; build one with 'edge-shitu index build'") from None
    except OSError as e:
        raise EdgeShituError(f"{where}: cannot read the index ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise EdgeShituError(f"{where}: is a directory, not an index file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise EdgeShituError(f"{where}: not a regular file; pass an index file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise EdgeShituError(f"{where}: cannot read the index ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if use_mmap and size >= HEADER_BYTES:
            mm: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            mm = f.read()
    return parse_index(mm, where, verify=verify)
