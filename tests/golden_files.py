"""Golden index files: written deterministically by the Python writer, read by every reader.

The C reader (runtimes/native) and the Java reader (android_demo) are tested against the same
files; the SHA-256 of each is pinned here, so any change to the byte layout fails the tests
until the format version and these hashes are changed on purpose.

Three kinds: the current version (1.2, what every writer writes); the same indexes as the 1.0 /
1.1 writers wrote them (their hashes are the ones pinned before 1.2: old files must keep
reading); and two files of a hypothetical 1.3 that test the forward-compatibility rules (an
unknown section marked optional is skipped; one not marked optional refuses the file).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import (
    HEADER_BYTES,
    SECTION_OPTIONAL,
    IndexData,
    Method,
    rows_to_planes,
    write_index,
    write_to,
)

# Update together with docs/index-format.md when the layout changes on purpose.
PINNED_SHA256 = {  # format 1.2
    "sign512.esidx": "ce9fdc195e15601cf92db57ca359d113a2b0ce680188b25e443a4ab03edb275f",
    "itq128.esidx": "2077e6ba78ada968c9f6d3b470b4b453bc083018cf7ac4c4c4fe0cbdac03d10b",
    "itq128_rerank.esidx": "93a394d570f73790564dd134bec519b731e512116ad36d2b8a7b7033b5bd5115",
}
# The same indexes as the 1.0 / 1.1 writers wrote them (these hashes were pinned before 1.2).
PINNED_SHA256_OLD = {
    "sign512_v1.0.esidx": "0f3d75d994635145ea6b2a8835a5ee3f2c322ff3f1f878bcaf7740502cdffa83",
    "itq128_v1.0.esidx": "395201b2c260359ceec1c59a3dad0b5486bd310512b3221cd8e26bbcc5b36f9d",
    "itq128_rerank_v1.1.esidx": "891f1bff827b5db1d1eb151421be2f42e81f81c36288e50082c8c9ef80aeaa5d",
}
# Format "1.3" files: sign512 plus a section of kind 4097 (b"future" x 10), marked optional
# (readers skip it, same results) or not (readers refuse the file: a newer version is needed).
PINNED_SHA256_FUTURE = {
    "future1.3_optional.esidx": "f30665b27a6ed3f3d95bb4c05c56d958433921b93c0ceb898d97ab81da853f7e",
    "future1.3_required.esidx": "61a270e411e741640de6818d6757e5a40a55d6ada7065e9cb444bfba18029bae",
}
FUTURE_KIND = 4097
# Every golden index file, with the 1.2 file whose search results it must give.
SAME_AS = {**{n: n for n in PINNED_SHA256},
           "sign512_v1.0.esidx": "sign512.esidx", "itq128_v1.0.esidx": "itq128.esidx",
           "itq128_rerank_v1.1.esidx": "itq128_rerank.esidx", "future1.3_optional.esidx": "sign512.esidx"}


def _codes(n: int, nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, nbytes), dtype=np.uint8)


def golden_sign512() -> IndexData:
    """13 items, ids not 0..n-1, Chinese labels, 3 deleted, one duplicate code (a tie)."""
    codes = _codes(13, 64, 1)
    codes[9] = codes[4]
    labels_text = ["脉动", "农夫山泉", "可口可乐", "new\tproduct", "雪碧"]
    label_of = np.array([i % 5 for i in range(13)], dtype=np.uint32)
    deleted = np.zeros(2, dtype=np.uint8)
    for r in (2, 7, 12):
        deleted[r >> 3] |= 1 << (r & 7)
    return IndexData(bits=512, dim=512, method=Method.SIGN, planes=rows_to_planes(codes),
                     ids=np.array([1000 + 7 * i for i in range(13)], dtype=np.uint64), deleted=deleted,
                     label_of=label_of, labels=labels_text, normalize=True, next_id=1091, generation=3,
                     meta={"golden": "sign512"})


def golden_itq128() -> IndexData:
    """ITQ parameters with exactly representable values, so every reader hashes identically."""
    dim, bits = 32, 128
    rng = np.random.default_rng(2)
    mean = (rng.integers(-8, 8, size=dim) / 64).astype(np.float32)
    proj = (rng.integers(-16, 16, size=(dim, bits)) / 32).astype(np.float32)
    feats = (rng.integers(-32, 32, size=(20, dim)) / 16).astype(np.float32)
    z = (feats / np.linalg.norm(feats, axis=1, keepdims=True) - mean) @ proj
    codes = np.packbits(z > 0, axis=1)
    return IndexData(bits=bits, dim=dim, method=Method.ITQ, planes=rows_to_planes(codes),
                     ids=np.arange(20, dtype=np.uint64), deleted=np.zeros(3, dtype=np.uint8),
                     label_of=np.arange(20, dtype=np.uint32) % 4, labels=["a", "b", "c", "d"],
                     mean=mean, proj=proj, normalize=True, next_id=20, generation=0, meta={})


def golden_itq128_rerank() -> IndexData:
    """itq128 plus format 1.1's RERANK_VECTORS section (the same features as int8)."""
    from edge_shitu.gallery_index import quantize_rows

    d = golden_itq128()
    rng = np.random.default_rng(2)
    rng.integers(-8, 8, size=32), rng.integers(-16, 16, size=(32, 128))  # the same draws as golden_itq128
    feats = (rng.integers(-32, 32, size=(20, 32)) / 16).astype(np.float32)
    d.vectors = quantize_rows(feats)
    d.meta = {"golden": "itq128_rerank"}
    return d


def golden_queries_itq128() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.integers(-32, 32, size=(4, 32)) / 16).astype(np.float32)


def future_file(optional: bool) -> bytes:
    """sign512 with an unknown section, relabelled format 1.3 (header CRC recomputed)."""
    import io

    buf = io.BytesIO()
    write_to(buf, golden_sign512(), extra=[(FUTURE_KIND, b"future" * 10, SECTION_OPTIONAL if optional else 0)])
    raw = bytearray(buf.getvalue())
    raw[10:12] = (3).to_bytes(2, "little")
    crc = zlib.crc32(bytes(raw[: HEADER_BYTES - 4])) & 0xFFFFFFFF
    raw[HEADER_BYTES - 4 : HEADER_BYTES] = crc.to_bytes(4, "little")
    return bytes(raw)


def _expected(index: GalleryIndex, data: IndexData, name: str) -> dict:
    if name.startswith("sign512"):
        codes = np.ascontiguousarray(data.planes[:, : data.count].T).view(np.uint8)[[0, 4, 5]]
        dist, rows = index.search_codes(codes, k=5)
        return {"query_codes_hex": [c.tobytes().hex() for c in codes], "k": 5, "distances": dist.tolist(),
                "rows": rows.tolist()}
    q = golden_queries_itq128()
    codes = index.hasher.encode(q)
    dist, rows = index.search_codes(codes, k=5)
    out = {"queries": q.tolist(), "query_codes_hex": [c.tobytes().hex() for c in codes],
           "k": 5, "distances": dist.tolist(), "rows": rows.tolist()}
    if data.vectors is not None:  # re-ranked: every row a candidate, cosine with the int8 vectors
        _, rr_rows, rr_scores = index.search_rows(q, k=5, rerank=data.count)
        out.update(rerank=data.count, rerank_rows=rr_rows.tolist(), rerank_scores=np.round(rr_scores, 6).tolist())
    return out


def write_golden(folder: Path) -> dict[str, str]:
    """Write every golden file plus the expected search results of the readable ones
    (expected.json, keyed by file name); returns name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    expected = {}
    for name, data, minor in (("sign512.esidx", golden_sign512(), 2), ("itq128.esidx", golden_itq128(), 2),
                              ("itq128_rerank.esidx", golden_itq128_rerank(), 2),
                              ("sign512_v1.0.esidx", golden_sign512(), 0), ("itq128_v1.0.esidx", golden_itq128(), 0),
                              ("itq128_rerank_v1.1.esidx", golden_itq128_rerank(), 1)):
        path = folder / name
        write_index(path, data, minor=minor)
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        expected[name] = _expected(GalleryIndex.open(path), data, name)
    for optional in (True, False):
        name = f"future1.3_{'optional' if optional else 'required'}.esidx"
        (folder / name).write_bytes(future_file(optional))
        out[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    expected["future1.3_optional.esidx"] = expected["sign512.esidx"]
    (folder / "expected.json").write_text(json.dumps(expected, indent=1))
    return out


def fix_crcs(raw: bytes | bytearray) -> bytes:
    """Recompute every CRC of a (possibly damaged or hand-crafted) index: the section CRCs of
    the entries that lie inside the file, the table CRC (1.2+), then the header CRC. Tests use
    it to reach the checks that sit behind the CRCs (a fuzzer's mutations would otherwise
    almost all stop at the first CRC)."""
    b = bytearray(raw)
    if len(b) < HEADER_BYTES:
        return bytes(b)
    nsec = min(int.from_bytes(b[56:60], "little"), (len(b) - HEADER_BYTES) // 32)
    for i in range(nsec):
        e = HEADER_BYTES + 32 * i
        off, length = int.from_bytes(b[e + 8 : e + 16], "little"), int.from_bytes(b[e + 16 : e + 24], "little")
        if off + length <= len(b):
            b[e + 4 : e + 8] = (zlib.crc32(bytes(b[off : off + length])) & 0xFFFFFFFF).to_bytes(4, "little")
    if int.from_bytes(b[10:12], "little") >= 2:
        table = bytes(b[HEADER_BYTES : HEADER_BYTES + 32 * nsec])
        b[88:92] = (zlib.crc32(table) & 0xFFFFFFFF).to_bytes(4, "little")
    b[HEADER_BYTES - 4 : HEADER_BYTES] = (zlib.crc32(bytes(b[: HEADER_BYTES - 4])) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(b)
