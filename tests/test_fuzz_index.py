"""Seeded mutation fuzzing of the index readers and both search kernels (issue 13).

Every byte region of small golden files (header, section table, each section, each padding
gap) is bit-flipped, overwritten and truncated: thousands of files per run. Two oracles:

* raw mutations (what a bad disk, a torn copy or a stray write does): each file must either
  give byte-identical search results and info to the original, or raise ONE line of
  CorruptFileError / VersionError. Never different results, never another exception. The C
  reader (esindex.c) must accept exactly the files the Python reader accepts.
* mutations with every CRC recomputed afterwards (what a buggy writer or a deliberate edit
  does; it reaches the checks behind the CRCs): each file must either raise one
  EdgeShituError line or open, and then the numpy and the C kernel return the same results as
  a brute-force search of what was read, and the C reader accepts it and views the same rows.

Seeded (EDGE_SHITU_FUZZ_SEED, default 13) so a failure reproduces; EDGE_SHITU_FUZZ_SCALE
multiplies the number of random mutations. A failing input is saved and its path reported.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from golden_files import fix_crcs, write_golden
from test_c_reader import View, build_c_reader

from edge_shitu.errors import CorruptFileError, EdgeShituError, VersionError
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import HEADER_BYTES, Section, parse_index, planes_to_rows
from edge_shitu.runtimes import native_kernel

SEED = int(os.environ.get("EDGE_SHITU_FUZZ_SEED", "13"))
SCALE = float(os.environ.get("EDGE_SHITU_FUZZ_SCALE", "3"))
FILES = ["sign512.esidx", "itq128_rerank.esidx", "sign512_v1.0.esidx", "itq128_rerank_v1.1.esidx",
         "future1.3_optional.esidx"]
KERNELS = ("numpy", "native")
COUNTS: Counter[str] = Counter()  # mutated files per test, printed at the end of the module


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("golden")
    write_golden(folder)
    return folder


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL | None:
    return build_c_reader(tmp_path_factory.mktemp("c"))


@pytest.fixture(scope="module")
def kernels() -> tuple[str, ...]:
    """Both kernels where the C one is built (make native); numpy alone otherwise."""
    return KERNELS if native_kernel.load() is not None else ("numpy",)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nfuzz (seed {SEED}): " + ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items())) +
          f"; total {sum(v for k, v in COUNTS.items() if not k.endswith('opened'))} mutated files")


# ---------------------------------------------------------------- regions and mutations
def regions(raw: bytes) -> list[tuple[str, int, int]]:
    """(name, start, end) of the header, the table, every section and every padding gap."""
    (nsec,) = struct.unpack_from("<I", raw, 56)
    pos = HEADER_BYTES + 32 * nsec
    out = [("header", 0, HEADER_BYTES), ("table", HEADER_BYTES, pos)]
    for i in range(nsec):
        kind, _crc, off, length = struct.unpack_from("<IIQQ", raw, HEADER_BYTES + 32 * i)
        name = Section(kind).name if kind in Section._value2member_map_ else f"kind{kind}"
        if off > pos:
            out.append((f"padding-before-{name}", pos, off))
        if length:
            out.append((name, off, off + length))
        pos = off + length
    return out


def raw_mutations(raw: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """(region, mutated file): every bit of the header and table, sampled bits of sections,
    every byte of padding, random overwrites, truncations at every region's edges."""
    n_random = max(1, int(12 * SCALE))
    for name, start, end in regions(raw):
        size = end - start
        if name in ("header", "table"):
            positions = list(range(start, end))
            bits = [list(range(8))] * size
        else:
            sample = min(size, int(40 * SCALE))
            positions = sorted({start, end - 1, *rng.integers(start, end, sample).tolist()}) \
                if not name.startswith("padding") else list(range(start, end))
            bits = [[int(rng.integers(8))] for _ in positions]
        for pos, bs in zip(positions, bits):
            for bit in bs:
                b = bytearray(raw)
                b[pos] ^= 1 << bit
                yield name, bytes(b)
        for _ in range(n_random):  # 1-6 random bytes of the region overwritten
            b = bytearray(raw)
            for pos in rng.integers(start, end, int(rng.integers(1, 7))):
                b[pos] = int(rng.integers(256))
            yield name, bytes(b)
        for fill in (0x00, 0xFF):  # a run of the region zeroed / set
            a = int(rng.integers(start, end))
            z = min(end, a + int(rng.integers(1, 65)))
            b = bytearray(raw)
            b[a:z] = bytes([fill]) * (z - a)
            yield name, bytes(b)
        for cut in {start, start + 1, (start + end) // 2, end - 1}:  # truncations at the region's edges
            yield f"{name}-truncated", raw[:cut]
    for cut in rng.integers(0, len(raw), int(20 * SCALE)):
        yield "truncated", raw[: int(cut)]
    for extra in (b"\0", b"\0" * 64, b"ESHIDX\r\n"):
        yield "appended", raw + extra


# ---------------------------------------------------------------- running one file
@contextmanager
def kernel_env(kernel: str) -> Iterator[None]:
    old = os.environ.get("EDGE_SHITU_KERNEL")
    os.environ["EDGE_SHITU_KERNEL"] = kernel
    try:
        yield
    finally:
        if old is None:
            del os.environ["EDGE_SHITU_KERNEL"]
        else:
            os.environ["EDGE_SHITU_KERNEL"] = old


def queries(dim: int) -> np.ndarray:
    return np.random.default_rng(dim).standard_normal((3, dim)).astype(np.float32)


def results(data: Any, kernel: str, x: np.ndarray) -> bytes:
    """Everything a user sees, as bytes: search, re-ranked query, capped k, info."""
    with kernel_env(kernel):
        idx = GalleryIndex(data)
    d4, i4 = idx.search(x, k=4)
    dk, ik = idx.search(x, k=1000)
    q = idx.query(x, k=3, rerank=8)
    info = {k: v for k, v in idx.info().items() if k not in ("path", "file_bytes", "kernel")}
    return b"|".join([d4.tobytes(), i4.tobytes(), dk.tobytes(), ik.tobytes(),
                      json.dumps([[m.to_dict() for m in ms] for ms in q], ensure_ascii=False).encode(),
                      json.dumps(info, ensure_ascii=False, sort_keys=True).encode()])


def c_parse(lib: ctypes.CDLL, raw: bytes) -> tuple[int, View, Any]:
    buf = ctypes.create_string_buffer(raw, len(raw))
    view = View()
    return lib.es_index_parse(buf, len(raw), 1, ctypes.byref(view)), view, buf


def one_line(e: Exception) -> bool:
    msg = str(e)
    return bool(msg) and "\n" not in msg and "Traceback" not in msg


def save_failure(tmp: Path, raw: bytes, tag: str) -> Path:
    p = tmp / f"fail-{tag}.esidx"
    p.write_bytes(raw)
    return p


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", FILES)
def test_raw_mutations_give_the_same_results_or_one_line(golden: Path, c_reader: ctypes.CDLL | None,
                                                         kernels: tuple[str, ...], name: str,
                                                         tmp_path: Path) -> None:
    raw = (golden / name).read_bytes()
    ref_data = parse_index(raw, name)
    x = queries(ref_data.dim)
    expected = {k: results(ref_data, k, x) for k in kernels}
    assert len(set(expected.values())) == 1, "the kernels disagree on the golden file itself"
    rng = np.random.default_rng([SEED, FILES.index(name)])
    tally: Counter[str] = Counter()
    for i, (region, mutated) in enumerate(raw_mutations(raw, rng)):
        if mutated == raw:
            continue
        tally[region.split("-")[0]] += 1
        try:
            data = parse_index(mutated, name)
        except (CorruptFileError, VersionError) as e:
            assert one_line(e), save_failure(tmp_path, mutated, f"{i}")
            ok = False
        except Exception as e:  # the point: nothing else may escape
            raise AssertionError(f"{region}: {type(e).__name__}: {e} "
                                 f"({save_failure(tmp_path, mutated, str(i))})") from e
        else:
            ok = True
            for k in kernels:
                assert results(data, k, x) == expected[k], \
                    f"{region}: different results ({save_failure(tmp_path, mutated, str(i))})"
        if c_reader is not None:
            status = c_parse(c_reader, mutated)[0]
            assert (status == 0) == ok, f"{region}: C reader {status}, Python {'ok' if ok else 'refused'} " \
                                        f"({save_failure(tmp_path, mutated, str(i))})"
    total = sum(tally.values())
    COUNTS[f"raw {name}"] = total
    assert total >= 1000 * min(SCALE, 1) and set(tally) >= {"header", "table", "CODES", "IDS", "LABELS"}


def brute_force(data: Any, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest live rows by (distance, row): the reference both kernels must match."""
    idx = GalleryIndex(data)
    q = idx.hasher.encode(x)
    codes = planes_to_rows(np.asarray(data.planes)[:, : data.count])
    live = np.flatnonzero(~data.deleted_mask())
    k = min(k, live.size)
    dist, rows = np.zeros((len(x), k), np.int64), np.zeros((len(x), k), np.int64)
    for i in range(len(x)):
        d = np.unpackbits(codes[live] ^ q[i], axis=1).sum(axis=1)
        order = np.lexsort((live, d))[:k]
        dist[i], rows[i] = d[order], live[order]
    return dist, rows


def check_c_view(lib: ctypes.CDLL, raw: bytes, data: Any) -> None:
    status, v, _buf = c_parse(lib, raw)
    assert status == 0, f"C reader refuses ({lib.es_index_strerror(status).decode()}) what Python reads"
    assert (v.count, v.live_count, v.bits, v.dim, v.n_labels) == (data.count, data.live_count, data.bits, data.dim,
                                                                   len(data.labels))
    codes = planes_to_rows(np.asarray(data.planes)[:, : data.count])
    out = ctypes.create_string_buffer(data.code_bytes)
    deleted = data.deleted_mask()
    for r in range(data.count):
        assert lib.es_index_id(ctypes.byref(v), r) == int(data.ids[r])
        assert bool(lib.es_index_is_deleted(ctypes.byref(v), r)) == bool(deleted[r])
        ptr, n = ctypes.c_void_p(), ctypes.c_uint32()
        assert lib.es_index_label(ctypes.byref(v), r, ctypes.byref(ptr), ctypes.byref(n)) == 0
        assert ctypes.string_at(ptr, n.value).decode() == data.labels[int(data.label_of[r])]
        assert lib.es_index_code(ctypes.byref(v), r, out) == 0 and out.raw == codes[r].tobytes()


@pytest.mark.parametrize("name", FILES)
def test_mutations_behind_the_crcs_open_consistently_or_give_one_line(golden: Path, c_reader: ctypes.CDLL | None,
                                                                      kernels: tuple[str, ...], name: str,
                                                                      tmp_path: Path) -> None:
    raw = (golden / name).read_bytes()
    x = queries(parse_index(raw).dim)
    rng = np.random.default_rng([SEED, 100 + FILES.index(name)])
    tally: Counter[str] = Counter()
    opened = 0
    for i, (region, mutated) in enumerate(raw_mutations(raw, rng)):
        if region in ("header", "table") and rng.random() > 0.35 * SCALE:
            continue  # a third of the exhaustive header/table flips: enough to cover every field
        fixed = fix_crcs(mutated)
        if fixed == raw:
            continue
        tally[region.split("-")[0]] += 1
        try:
            data = parse_index(fixed, name)
            got = {}
            for k in kernels:
                with kernel_env(k):
                    idx = GalleryIndex(data)
                dist, rows, _ = idx.search_rows(x, k=6)
                got[k] = (dist.tolist(), rows.tolist())
                idx.query(x, k=3, rerank=8)
                json.dumps(idx.info(), ensure_ascii=False)
        except EdgeShituError as e:
            assert one_line(e), save_failure(tmp_path, fixed, f"fixed-{i}")
            if c_reader is not None and c_parse(c_reader, fixed)[0] == 0:
                # only the Python reader interprets META (JSON, score table), and a query of
                # the wrong width is refused before any search
                assert "META" in str(e) or "query features" in str(e), \
                    f"{region}: C reads what Python refuses: {e} ({save_failure(tmp_path, fixed, f'fixed-{i}')})"
            continue
        except Exception as e:
            raise AssertionError(f"{region}: {type(e).__name__}: {e} "
                                 f"({save_failure(tmp_path, fixed, f'fixed-{i}')})") from e
        opened += 1
        ref_d, ref_r = brute_force(data, x, 6)
        for k in kernels:
            assert got[k] == (ref_d.tolist(), ref_r.tolist()), \
                f"{region}: kernel {k} differs from brute force ({save_failure(tmp_path, fixed, f'fixed-{i}')})"
        if c_reader is not None:
            check_c_view(c_reader, fixed, data)
    total = sum(tally.values())
    COUNTS[f"crc-fixed {name}"] = total
    COUNTS[f"crc-fixed {name} opened"] = opened
    assert total >= 500 * min(SCALE, 1) and opened > 0


def test_the_file_path_and_the_cli_give_one_line(golden: Path, tmp_path: Path) -> None:
    """A few mutated files through the whole path a user takes: mmap open and the CLI."""
    raw = (golden / "itq128_rerank.esidx").read_bytes()
    rng = np.random.default_rng(SEED)
    muts = list(raw_mutations(raw, rng))
    picked: dict[str, bytes] = {}
    for region, m in muts:
        picked.setdefault(region.split("-")[0], m)
    path = tmp_path / "m.esidx"
    for region, m in picked.items():
        path.write_bytes(m)
        with pytest.raises((CorruptFileError, VersionError)) as err:
            GalleryIndex.open(path)
        assert one_line(err.value), region
    COUNTS["file path"] = len(picked)
    for region in ("header", "table", "META"):
        path.write_bytes(picked[region])
        r = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "index", "info", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (region, r.stderr)
        assert "Traceback" not in r.stderr and ("corrupt" in r.stderr or "bad magic" in r.stderr), r.stderr
    COUNTS["cli"] = 3
