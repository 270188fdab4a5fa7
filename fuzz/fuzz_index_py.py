"""atheris (coverage-guided, libFuzzer) harness for the Python index reader and the numpy search.

Each input is parsed as given and with every CRC recomputed (tests/golden_files.py:fix_crcs),
so that mutations reach the checks behind the CRCs. A file must either raise ONE line of
EdgeShituError or open; an opened file is searched (plain, capped k, re-ranked) and described
(info as JSON). Any other exception is a crash: atheris saves the input (-artifact_prefix).

Usage (libFuzzer flags): python fuzz/fuzz_index_py.py CORPUS_DIR SEED_DIR -max_total_time=60
Run by `make fuzz` / `make fuzz-long` (make test runs make fuzz).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["EDGE_SHITU_KERNEL"] = "numpy"  # the C kernel is fuzzed by fuzz/esindex_fuzz.c

with atheris.instrument_imports(include=["edge_shitu"]):
    import numpy as np
    from golden_files import fix_crcs

    from edge_shitu.errors import EdgeShituError
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.index_format import parse_index


def check(buf: bytes) -> None:
    try:
        data = parse_index(buf, "fuzz")
    except EdgeShituError as e:
        if "\n" in str(e) or not str(e):
            raise AssertionError(f"not one line: {e!r}") from e
        return
    idx = GalleryIndex(data)
    if data.dim > 1 << 16:
        # An empty sign index may declare any dim (= bits; no section's size depends on it): the reader
        # allocates nothing for it, but this harness's own queries would (2 x dim floats, GBs), and
        # libFuzzer then reports an out-of-memory that is the harness's. Queries always come from an
        # extractor whose dim is checked against the index's before any search (Bundle.check_index).
        json.dumps(idx.info(), ensure_ascii=False)
        return
    x = np.random.default_rng(0).standard_normal((2, data.dim)).astype(np.float32)
    for k in (1, 5, 1 << 40):
        dist, ids = idx.search(x, k=k)
        assert dist.shape == ids.shape == (2, min(k, data.live_count))
        assert ((dist >= 0) & (dist <= data.bits)).all()
    idx.query(x, k=3, rerank=8)
    json.dumps(idx.info(), ensure_ascii=False)


def test_one_input(buf: bytes) -> None:
    check(buf)
    fixed = fix_crcs(buf)
    if fixed != buf:
        check(fixed)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
