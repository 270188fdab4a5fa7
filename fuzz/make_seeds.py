"""Write the fuzzing seed corpus: every golden index file plus a few tiny ones.

Seeds are generated, never committed (the golden files are defined in tests/golden_files.py).
Small seeds keep the fuzzers fast: an executed input costs time in proportion to its size.
Usage: python fuzz/make_seeds.py OUT_DIR
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from golden_files import SECTION_OPTIONAL, write_golden  # noqa: E402

from edge_shitu.index_format import IndexData, Method, rows_to_planes, write_to  # noqa: E402


def tiny(count: int, *, itq: bool, vectors: bool, meta: bool, deleted_rows: tuple[int, ...] = ()) -> IndexData:
    """A few rows of 64-bit codes: sign (dim 64) or itq with dim 4 (a 1 KB projection)."""
    rng = np.random.default_rng(count * 10 + itq)
    dim = 4 if itq else 64
    deleted = np.zeros((count + 7) // 8, np.uint8)
    for r in deleted_rows:
        deleted[r >> 3] |= 1 << (r & 7)
    return IndexData(
        bits=64, dim=dim, method=Method.ITQ if itq else Method.SIGN,
        planes=rows_to_planes(rng.integers(0, 256, (count, 8), dtype=np.uint8)),
        ids=np.arange(count, dtype=np.uint64) * 3, deleted=deleted,
        label_of=(np.arange(count) % 2).astype(np.uint32), labels=["a", "标签"],
        mean=(rng.integers(-4, 4, dim) / 8).astype(np.float32) if itq else None,
        proj=(rng.integers(-4, 4, (dim, 64)) / 8).astype(np.float32) if itq else None,
        next_id=3 * count, generation=1,
        meta={"cosine_of_distance": [round(1 - d / 64, 4) for d in range(65)]} if meta else {},
        vectors=rng.integers(-127, 128, (count, dim), dtype=np.int8) if vectors else None,
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_golden(out)
    (out / "expected.json").unlink()
    variants = {
        "tiny_sign.esidx": (tiny(5, itq=False, vectors=False, meta=True, deleted_rows=(1,)), ()),
        "tiny_itq_vectors.esidx": (tiny(9, itq=True, vectors=True, meta=True, deleted_rows=(0, 8)), ()),
        "empty_sign.esidx": (tiny(0, itq=False, vectors=False, meta=False), ()),
        "tiny_optional.esidx": (tiny(3, itq=False, vectors=False, meta=False), [(77, b"opt", SECTION_OPTIONAL)]),
    }
    for name, (data, extra) in variants.items():
        buf = io.BytesIO()
        write_to(buf, data, extra=extra)
        (out / name).write_bytes(buf.getvalue())
    buf = io.BytesIO()
    write_to(buf, tiny(4, itq=False, vectors=False, meta=True), minor=0)
    (out / "tiny_sign_v1.0.esidx").write_bytes(buf.getvalue())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python fuzz/make_seeds.py OUT_DIR")
    main(Path(sys.argv[1]))
