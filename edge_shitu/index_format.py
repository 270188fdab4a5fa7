"""Bytes on disk for the gallery index (spec: docs/index-format.md).

This module only knows the layout: it turns an :class:`IndexData` into bytes and back, checks
every CRC and bound, and maps the sections in place (``mmap``) so a 64 MB gallery opens in
microseconds on a Raspberry Pi. Hashing and search live elsewhere.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edge_shitu.atomic import atomic_write
from edge_shitu.errors import CorruptFileError, EdgeShituError, VersionError

MAGIC = b"ESHIDX\r\n"
VERSION_MAJOR = 1
VERSION_MINOR = 0
HEADER_BYTES = 128
ENTRY_BYTES = 32
ALIGN = 64
FLAG_L2_NORMALIZE = 1

# magic, major, minor, header_bytes, bits, code_bytes, count, live, next_id, method, dim,
# section_count, flags, table_offset, file_bytes, generation, reserved
_HEADER = struct.Struct("<8sHHIIIQQQIIIIQQQ36s")
_ENTRY = struct.Struct("<IIQQQ")
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
    """The lowest version that holds ``data``: 1.1 only with re-rank vectors, so files without
    them stay byte-identical to 1.0 writers' output."""
    return VERSION_MAJOR, VERSION_MINOR if data.vectors is None else 1


def plane_stride(count: int) -> int:
    """Rows per plane: a multiple of 8 so each 8-byte-word plane starts 64-byte aligned."""
    return (count + 7) // 8 * 8


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


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
    vectors: np.ndarray | None = None  # int8 (count, dim): re-rank features (format 1.1), optional

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
        return self.count - int(np.unpackbits(self.deleted, bitorder="little").sum())


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
def _sections(data: IndexData) -> list[tuple[Section, bytes | memoryview]]:
    count = data.count
    stride = plane_stride(count)
    planes = data.planes
    if planes.shape != (data.words, stride):
        planes_fixed = np.zeros((data.words, stride), dtype=np.uint64)
        m = min(planes.shape[1], count)
        planes_fixed[:, :m] = planes[:, :m]
        planes = planes_fixed
    secs: list[tuple[Section, bytes | memoryview]] = [
        (Section.CODES, memoryview(np.ascontiguousarray(planes, dtype="<u8")).cast("B")),
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


def write_to(f: BinaryIO, data: IndexData) -> int:
    """Serialise ``data`` to an open binary file; returns the number of bytes written."""
    secs = _sections(data)
    table_end = HEADER_BYTES + ENTRY_BYTES * len(secs)
    offset = _align(table_end)
    entries = []
    for kind, payload in secs:
        entries.append((kind, zlib.crc32(payload) & 0xFFFFFFFF, offset, len(payload)))
        offset = _align(offset + len(payload))
    _last_kind, last_payload = secs[-1]
    file_bytes = entries[-1][2] + len(last_payload)
    flags = FLAG_L2_NORMALIZE if data.normalize else 0
    live = data.live_count
    head = _HEADER.pack(
        MAGIC, *format_version(data), HEADER_BYTES, data.bits,
        data.code_bytes, data.count, live, data.next_id, int(data.method), data.dim, len(secs), flags,
        HEADER_BYTES, file_bytes, data.generation, b"\0" * 36,
    )
    f.write(head + struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF))
    for kind, crc, off, length in entries:
        f.write(_ENTRY.pack(int(kind), crc, off, length, 0))
    pos = table_end
    for (_, payload), (_, _, off, _) in zip(secs, entries):
        f.write(b"\0" * (off - pos))
        f.write(payload)
        pos = off + len(payload)
    return pos


def write_index(path: str | os.PathLike[str], data: IndexData) -> None:
    """Write atomically: readers see the old file or the new one, never a mix."""
    with atomic_write(path) as f:
        write_to(f, data)
        if os.environ.get("EDGE_SHITU_CRASH_BEFORE_RENAME"):
            # Test hook: die with the new file complete but not yet renamed.
            f.flush()
            os._exit(77)


# ---------------------------------------------------------------- reading
def _view(buf: memoryview, dtype: str, count: int, offset: int) -> np.ndarray:
    # np.frombuffer keeps a reference to the memoryview, which keeps the mmap alive.
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset)


def read_index(path: str | os.PathLike[str], *, verify: bool = True, use_mmap: bool = True) -> IndexData:
    """Open an index file. ``verify`` checks every section CRC (a full read of the file)."""
    path = Path(path)
    where = str(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise EdgeShituError(f"{where}: no such index file; build one with 'edge-shitu index build'") from None
    except IsADirectoryError:
        raise EdgeShituError(f"{where}: is a directory, not an index file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER_BYTES:
            raise CorruptFileError(f"{where}: {size} bytes, shorter than an index header; the file is "
                                   "truncated or not an edge-shitu index")
        if use_mmap:
            mm: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            mm = f.read()
    buf = memoryview(mm)
    head = bytes(buf[:HEADER_BYTES])
    if head[:8] != MAGIC:
        raise CorruptFileError(f"{where}: not an edge-shitu index (bad magic); pass a file written by "
                               "'edge-shitu index build'")
    (_magic, major, minor, _header_bytes, bits, code_bytes, count, live, next_id, method, dim, nsec, flags,
     table_off, file_bytes, generation, _reserved) = _HEADER.unpack_from(head, 0)
    if major != VERSION_MAJOR:
        raise VersionError(f"{where}: index format version {major}.{minor}; this edge-shitu reads "
                           f"{VERSION_MAJOR}.x: upgrade edge-shitu or rebuild the index")
    (hcrc,) = struct.unpack_from("<I", head, HEADER_BYTES - 4)
    if zlib.crc32(head[: HEADER_BYTES - 4]) & 0xFFFFFFFF != hcrc:
        raise CorruptFileError(f"{where}: header CRC mismatch; the index is corrupt, rebuild it")
    if file_bytes != size:
        raise CorruptFileError(f"{where}: file is {size} bytes but its header says {file_bytes}; the file "
                               "is truncated or was altered: restore or rebuild it")
    if bits == 0 or bits % 64 or code_bytes * 8 != bits or method not in (0, 1) or dim == 0:
        raise CorruptFileError(f"{where}: inconsistent header (bits={bits}, method={method}, dim={dim}); "
                               "rebuild the index")
    if table_off + nsec * ENTRY_BYTES > size:
        raise CorruptFileError(f"{where}: section table out of bounds; the index is corrupt, rebuild it")
    sections: dict[int, memoryview] = {}
    for i in range(nsec):
        kind, crc, off, length, _ = _ENTRY.unpack_from(buf, table_off + i * ENTRY_BYTES)
        if off % ALIGN or off + length > size:
            raise CorruptFileError(f"{where}: section {kind} out of bounds; the index is corrupt, rebuild it")
        sec = buf[off : off + length]
        if verify and zlib.crc32(sec) & 0xFFFFFFFF != crc:
            name = Section(kind).name if kind in Section._value2member_map_ else str(kind)
            raise CorruptFileError(f"{where}: CRC mismatch in section {name}; the index is corrupt, rebuild it")
        sections[kind] = sec

    def need(kind: Section, length: int) -> memoryview:
        sec = sections.get(kind)
        if sec is None:
            raise CorruptFileError(f"{where}: required section {kind.name} missing; rebuild the index")
        if len(sec) != length:
            raise CorruptFileError(f"{where}: section {kind.name} is {len(sec)} bytes, expected {length}; "
                                   "the index is corrupt, rebuild it")
        return sec

    words = bits // 64
    stride = plane_stride(count)
    planes = _view(need(Section.CODES, words * stride * 8), "<u8", words * stride, 0).reshape(words, stride)
    ids = _view(need(Section.IDS, count * 8), "<u8", count, 0)
    deleted = _view(need(Section.DELETED, (count + 7) // 8), "u1", (count + 7) // 8, 0)
    label_of = _view(need(Section.LABEL_OF, count * 4), "<u4", count, 0)
    labels = decode_labels(sections.get(Section.LABELS) or need(Section.LABELS, -1), where)
    mean = proj = None
    if method == Method.ITQ:
        mean = _view(need(Section.HASH_MEAN, dim * 4), "<f4", dim, 0)
        proj = _view(need(Section.HASH_PROJ, dim * bits * 4), "<f4", dim * bits, 0).reshape(dim, bits)
    elif dim != bits:
        raise CorruptFileError(f"{where}: sign hashing needs dim == bits (dim={dim}, bits={bits}); rebuild it")
    vectors = None
    if Section.RERANK_VECTORS in sections:
        vectors = _view(need(Section.RERANK_VECTORS, count * dim), "i1", count * dim, 0).reshape(count, dim)
    meta: dict[str, Any] = {}
    if Section.META in sections:
        try:
            meta = json.loads(bytes(sections[Section.META]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptFileError(f"{where}: META section is not JSON; rebuild the index") from None
    if count and int(label_of.max()) >= len(labels):
        raise CorruptFileError(f"{where}: a row points at a missing label; the index is corrupt, rebuild it")
    data = IndexData(
        bits=bits, dim=dim, method=Method(method), planes=planes, ids=ids, deleted=deleted, label_of=label_of,
        labels=labels, mean=mean, proj=proj, normalize=bool(flags & FLAG_L2_NORMALIZE), next_id=next_id,
        generation=generation, meta=meta, vectors=vectors,
    )
    if data.live_count != live:
        raise CorruptFileError(f"{where}: live count {live} disagrees with the deletion marks; rebuild it")
    return data
