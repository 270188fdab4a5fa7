"""The gallery index: build, open (mmap), search, add, remove, compact.

API shaped like Faiss (``D, I = index.search(x, k)``) but with what a shop needs on a device:
labels, stable 64-bit ids, deletions, and a file that is always either the old or the new
version. The index stores codes only (32 bytes per item at 256 bits); re-ranking uses the
float *query* against the stored codes, so it costs no storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu import __version__, hamming
from edge_shitu.atomic import remove_stale_tmp
from edge_shitu.errors import EdgeShituError, VersionError
from edge_shitu.hashing import Hasher, check_features, parse_method
from edge_shitu.index_format import (
    VERSION_MAJOR,
    VERSION_MINOR,
    IndexData,
    Method,
    format_version,
    plane_stride,
    planes_to_rows,
    read_index,
    rows_to_planes,
    write_index,
)

MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Match:
    id: int
    label: str
    distance: int
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "label": self.label, "distance": self.distance}
        if self.score is not None:
            d["score"] = round(self.score, 6)
        return d


def _kernel_choice() -> str:
    choice = os.environ.get("EDGE_SHITU_KERNEL", "auto").lower()
    if choice not in ("auto", "numpy", "native"):
        raise EdgeShituError(f"EDGE_SHITU_KERNEL={choice}: use auto, numpy or native")
    return choice


def _load_native(required: bool) -> Any:
    try:
        from edge_shitu.runtimes import native_kernel
    except ImportError:
        native = None
    else:
        native = native_kernel.load()
    if native is None and required:
        raise EdgeShituError("EDGE_SHITU_KERNEL=native but the C kernel is not built; run 'make native' "
                             "or set EDGE_SHITU_HAMMING_LIB to libeshamming.so")
    return native


class GalleryIndex:
    """A binary-code gallery. Construct with :meth:`build` or :meth:`open`."""

    def __init__(self, data: IndexData, path: Path | None = None) -> None:
        self._d = data
        self.path = path
        self._writable = False
        choice = _kernel_choice()
        self._native = None if choice == "numpy" else _load_native(choice == "native")

    # ------------------------------------------------------------ construction
    @classmethod
    def build(cls, features: np.ndarray, labels: Sequence[str], *, bits: int | None = None,
              method: str | Method = "itq", ids: Sequence[int] | np.ndarray | None = None,
              normalize: bool = True, meta: dict[str, Any] | None = None,
              score_table: bool = True, rerank_vectors: bool = False) -> GalleryIndex:
        """A new index of ``features``; ``score_table`` also stores the distance -> cosine
        table match scores are read from (edge_shitu/scores.py); ``rerank_vectors`` stores each
        item's feature as int8 (``dim`` bytes per item, since format 1.1), so re-ranking scores the
        Hamming shortlist by cosine with the features themselves instead of against their codes."""
        x = check_features(features)
        if x.shape[0] == 0:
            raise EdgeShituError("features: no rows; a gallery needs at least one item")
        if len(labels) != x.shape[0]:  # checked before the (slow) fit
            raise EdgeShituError(f"labels: {len(labels)} labels for {x.shape[0]} feature rows; give one label "
                                 "per row")
        m = parse_method(method)
        if bits is None:  # sign gives one bit per feature value; itq defaults to 256 bits (32 bytes)
            bits = x.shape[1] if m == Method.SIGN else 256
        hasher = Hasher.fit(x, bits=bits, method=m, normalize=normalize)
        data = IndexData(
            bits=hasher.bits, dim=hasher.dim, method=hasher.method,
            planes=np.zeros((hasher.bits // 64, 0), dtype=np.uint64),
            ids=np.zeros(0, dtype=np.uint64), deleted=np.zeros(0, dtype=np.uint8),
            label_of=np.zeros(0, dtype=np.uint32), labels=[], mean=hasher.mean, proj=hasher.proj,
            normalize=normalize, next_id=0, generation=0,
            meta={"created_by": f"edge-shitu {__version__}", **(meta or {})},
            vectors=np.zeros((0, hasher.dim), dtype=np.int8) if rerank_vectors else None,
        )
        index = cls(data)
        index._writable = True
        index.add(x, labels, ids=ids)
        index._d.generation = 0
        if score_table:
            from edge_shitu.scores import TABLE_KEY, distance_cosine_table

            codes = planes_to_rows(index._d.planes, np.arange(index._d.count))
            index._d.meta[TABLE_KEY] = distance_cosine_table(x, codes, index.bits)
        return index

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> GalleryIndex:
        p = Path(path)
        return cls(read_index(p, verify=verify), p)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise EdgeShituError("save: no path given and the index was not opened from a file")
        if self._d.version > (VERSION_MAJOR, VERSION_MINOR):
            # its unknown (optional) sections would be dropped without a word
            raise VersionError("{}: index format {}.{} was written by a newer edge-shitu; this one would drop "
                               "what it does not know: edit it with that version".format(self.path or target,
                                                                                      *self._d.version))
        remove_stale_tmp(target)
        write_index(target, self._d)
        self.path = target
        return target

    # ------------------------------------------------------------ properties
    @property
    def hasher(self) -> Hasher:
        d = self._d
        return Hasher(d.method, d.bits, d.dim, d.normalize, d.mean, d.proj)

    @property
    def bits(self) -> int:
        return self._d.bits

    @property
    def dim(self) -> int:
        return self._d.dim

    @property
    def ntotal(self) -> int:
        """Live items (Faiss's name)."""
        return self._d.live_count

    def __len__(self) -> int:
        return self.ntotal

    @property
    def kernel(self) -> str:
        return f"native-{self._native.kernel}" if self._native is not None else hamming.NUMPY_KERNEL

    @property
    def data(self) -> IndexData:
        return self._d

    def ids(self, live_only: bool = True) -> np.ndarray:
        ids = np.asarray(self._d.ids, dtype=np.int64)
        return ids[~self._d.deleted_mask()] if live_only else ids

    def items(self) -> list[tuple[int, str]]:
        """(id, label) of every live item, in storage order."""
        live = np.flatnonzero(~self._d.deleted_mask())
        return list(zip((int(i) for i in self._d.ids[live]), self.labels_of_rows(live)))

    def info(self) -> dict[str, Any]:
        d = self._d
        return {
            "path": str(self.path) if self.path else None,
            "format": "edge-shitu index {}.{}".format(*format_version(d)),  # of the file as read
            "bits": d.bits, "bytes_per_item": d.code_bytes, "dim": d.dim,
            "method": d.method.name.lower(), "normalize": d.normalize,
            "count": d.count, "live": d.live_count, "deleted": d.count - d.live_count,
            "labels": len(set(self.labels_of_rows(np.flatnonzero(~d.deleted_mask())))),
            "next_id": d.next_id, "generation": d.generation, "kernel": self.kernel,
            "file_bytes": self.path.stat().st_size if self.path and self.path.exists() else None,
            "rerank_vectors": d.vectors is not None,
            "meta": d.meta,
        }

    # ------------------------------------------------------------ updates
    def _make_writable(self) -> None:
        """Copy mmapped sections into memory before the first change (the file stays untouched)."""
        if self._writable:
            return
        d = self._d
        d.planes = np.array(d.planes[:, : plane_stride(d.count)], dtype=np.uint64)
        d.ids = np.array(d.ids, dtype=np.uint64)
        d.deleted = np.array(d.deleted, dtype=np.uint8)
        d.label_of = np.array(d.label_of, dtype=np.uint32)
        d.labels = list(d.labels)
        if d.vectors is not None:
            d.vectors = np.array(d.vectors, dtype=np.int8)
        self._writable = True

    def _live_id_rows(self) -> dict[int, int]:
        live = np.flatnonzero(~self._d.deleted_mask())
        return {int(i): int(r) for i, r in zip(self._d.ids[live], live)}

    def add(self, features: np.ndarray, labels: Sequence[str],
            ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Append items without refitting the hash; returns their ids."""
        x = check_features(features, self._d.dim, "features")
        codes = self.hasher.encode(x)
        vectors = quantize_rows(x) if self._d.vectors is not None else None
        return self.add_codes(codes, labels, ids, vectors=vectors)

    def add_codes(self, codes: np.ndarray, labels: Sequence[str],
                  ids: Sequence[int] | np.ndarray | None = None, *,
                  vectors: np.ndarray | None = None) -> np.ndarray:
        d = self._d
        if d.vectors is not None and (vectors is None or vectors.shape != (len(codes), d.dim)):
            raise EdgeShituError("this index stores re-rank vectors: add float features (index add), not bare codes")
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != d.code_bytes:
            raise EdgeShituError(f"codes: expected uint8 rows of {d.code_bytes} bytes, got {codes.dtype} "
                                 f"{codes.shape}")
        n = codes.shape[0]
        labels = [str(s) for s in labels]
        if len(labels) != n:
            raise EdgeShituError(f"labels: {len(labels)} labels for {n} feature rows; give one label per row")
        if any("\n" in s or "\r" in s for s in labels):
            raise EdgeShituError("labels: a label contains a line break; labels must be single lines")
        new_ids = self._check_new_ids(ids, n)
        self._make_writable()
        label_index = {s: i for i, s in enumerate(d.labels)}
        label_of = np.empty(n, dtype=np.uint32)
        for i, s in enumerate(labels):
            if s not in label_index:
                label_index[s] = len(d.labels)
                d.labels.append(s)
            label_of[i] = label_index[s]
        old = d.count
        total = old + n
        planes = np.zeros((d.words, plane_stride(total)), dtype=np.uint64)
        planes[:, :old] = d.planes[:, :old]
        planes[:, old:total] = rows_to_planes(codes, stride=n)[:, :n] if n else planes[:, old:total]
        deleted = np.zeros((total + 7) // 8, dtype=np.uint8)
        deleted[: d.deleted.size] = d.deleted
        d.planes = planes
        d.ids = np.concatenate([d.ids, new_ids.astype(np.uint64)])
        d.deleted = deleted
        d.label_of = np.concatenate([d.label_of, label_of])
        if d.vectors is not None:
            d.vectors = np.concatenate([d.vectors, np.asarray(vectors, dtype=np.int8)])
        if n:
            d.next_id = max(d.next_id, int(new_ids.max()) + 1)
        d.generation += 1
        return new_ids

    def _check_new_ids(self, ids: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(self._d.next_id, self._d.next_id + n, dtype=np.int64)
        try:
            arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise EdgeShituError(f"ids: must be integers between 0 and {MAX_ID}") from None
        if arr.size != n:
            raise EdgeShituError(f"ids: {arr.size} ids for {n} feature rows; give one id per row")
        if arr.size and (arr.min() < 0):
            raise EdgeShituError(f"ids: must be integers between 0 and {MAX_ID} (got {int(arr.min())})")
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise EdgeShituError(f"ids: id {int(uniq[counts > 1][0])} given twice; ids must be unique")
        live = self._live_id_rows()
        clash = [int(i) for i in arr if int(i) in live]
        if clash:
            raise EdgeShituError(f"ids: id {clash[0]} is already in the index; remove it first or pick "
                                 "another id")
        return arr

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Mark items deleted (all or nothing); returns how many."""
        live = self._live_id_rows()
        rows = []
        for i in ids:
            try:
                key = int(i)
            except (TypeError, ValueError):
                raise EdgeShituError(f"remove: '{i}' is not an integer id") from None
            if key not in live:
                raise EdgeShituError(f"remove: id {key} is not in the index (or was already removed); "
                                     "see 'edge-shitu index info' for the ids")
            rows.append(live.pop(key))
        if not rows:
            return 0
        self._make_writable()
        r = np.asarray(rows, dtype=np.int64)
        np.bitwise_or.at(self._d.deleted, r >> 3, (1 << (r & 7)).astype(np.uint8))
        self._d.generation += 1
        return len(rows)

    def compact(self) -> int:
        """Drop deleted rows (ids are kept); returns how many rows were dropped."""
        d = self._d
        keep = np.flatnonzero(~d.deleted_mask())
        dropped = d.count - keep.size
        if not dropped:
            return 0
        self._make_writable()
        codes = planes_to_rows(d.planes, keep)
        d.planes = rows_to_planes(codes)
        d.ids = d.ids[keep]
        d.label_of = d.label_of[keep]
        if d.vectors is not None:
            d.vectors = d.vectors[keep]
        d.deleted = np.zeros((keep.size + 7) // 8, dtype=np.uint8)
        used = np.unique(d.label_of)
        remap = np.zeros(len(d.labels), dtype=np.uint32)
        remap[used] = np.arange(used.size, dtype=np.uint32)
        d.labels = [d.labels[i] for i in used]
        d.label_of = remap[d.label_of]
        d.generation += 1
        return int(dropped)

    # ------------------------------------------------------------ search
    def labels_of_rows(self, rows: np.ndarray) -> list[str]:
        return [self._d.labels[int(self._d.label_of[r])] for r in rows]

    def cap_k(self, k: int, what: str = "k") -> int:
        """``k`` limited to the live items: results are (queries x k) arrays, so an unbounded k
        (``--k 100000000`` on 987 items) would allocate and sort for nothing."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise EdgeShituError(f"{what}={k!r}: must be an integer")
        if k < 1:
            raise EdgeShituError(f"{what}={k}: must be at least 1")
        return min(int(k), self._d.live_count)

    def search_codes(self, codes: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by Hamming distance for packed query codes; returns (distances, ROWS), with
        min(k, live items) columns."""
        d = self._d
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != d.code_bytes:
            raise EdgeShituError(f"query codes: expected rows of {d.code_bytes} bytes, got shape {codes.shape}")
        k = self.cap_k(k)
        if k == 0:  # nothing live: no column to fill
            return hamming.pad_results(0, codes.shape[0])
        qwords = codes.view(np.uint64).reshape(codes.shape[0], d.words)
        has_deleted = d.live_count != d.count
        if self._native is not None:
            return self._native.topk_planar(d.planes, d.count, qwords, k, d.deleted if has_deleted else None)
        return hamming.topk(d.planes, d.count, qwords, k, d.deleted_mask() if has_deleted else None)

    def _rerank(self, x: np.ndarray, dist: np.ndarray, rows: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        proj = self.hasher.project(x)
        nq = x.shape[0]
        out_d = np.full((nq, k), -1, dtype=np.int32)
        out_r = np.full((nq, k), -1, dtype=np.int64)
        out_s = np.full((nq, k), np.nan, dtype=np.float32)
        for i in range(nq):
            valid = rows[i] >= 0
            r, dd = rows[i][valid], dist[i][valid]
            if not r.size:
                continue
            if self._d.vectors is not None:  # cosine with the stored int8 features
                g = self._d.vectors[r].astype(np.float32)
                score = (g @ x[i]) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(x[i]), 1e-12)
            else:  # asymmetric: the query's projection against the candidates' signs
                signs = np.unpackbits(planes_to_rows(self._d.planes, r), axis=1).astype(np.float32) * 2 - 1
                score = signs @ proj[i]
            order = np.lexsort((r, dd, -score))[:k]
            m = order.size
            out_d[i, :m], out_r[i, :m], out_s[i, :m] = dd[order], r[order], score[order]
        return out_d, out_r, out_s

    def search_rows(self, queries: np.ndarray, k: int = 5, rerank: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(distances, rows, scores-or-None) for float queries; ``k`` and ``rerank`` are capped
        at the number of live items."""
        x = check_features(queries, self._d.dim, "query features")
        k = self.cap_k(k)
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            raise EdgeShituError(f"rerank={rerank!r}: must be 0 (off) or a positive number of items")
        rerank = min(int(rerank), self._d.live_count)
        codes = self.hasher.encode(x)
        if k == 0:
            dist, rows = hamming.pad_results(0, x.shape[0])
            return dist, rows, np.zeros((x.shape[0], 0), np.float32) if rerank else None
        if rerank and rerank > k:
            dist, rows = self.search_codes(codes, rerank)
            return self._rerank(x, dist, rows, k)
        dist, rows = self.search_codes(codes, k)
        if rerank:
            return self._rerank(x, dist, rows, k)
        return dist, rows, None

    def search(self, queries: np.ndarray, k: int = 5, rerank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Faiss-style: (D, I) with Hamming distances and item ids; min(k, live items) columns
        (unlike Faiss, no -1 padding up to k: k is capped, so no k can cost memory)."""
        dist, rows, _ = self.search_rows(queries, k, rerank)
        ids = np.where(rows >= 0, np.asarray(self._d.ids, dtype=np.int64)[np.maximum(rows, 0)], -1)
        return dist, ids

    def query(self, queries: np.ndarray, k: int = 5, rerank: int = 0) -> list[list[Match]]:
        """Best-first matches with labels, one list per query row."""
        dist, rows, scores = self.search_rows(queries, k, rerank)
        out: list[list[Match]] = []
        for i in range(rows.shape[0]):
            matches = []
            for j in range(rows.shape[1]):
                r = int(rows[i, j])
                if r < 0:
                    continue
                matches.append(Match(int(self._d.ids[r]), self._d.labels[int(self._d.label_of[r])],
                                     int(dist[i, j]), None if scores is None else float(scores[i, j])))
            out.append(matches)
        return out


def quantize_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to int8 by its own max |value| (only directions matter: re-ranking is by
    cosine, so neither the scale nor L2 normalisation needs storing)."""
    x = np.asarray(x, dtype=np.float32)
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.zeros((x.shape[0], 1), np.float32)
    return np.clip(np.round(x / np.maximum(peak, 1e-30) * 127), -127, 127).astype(np.int8)


@contextlib.contextmanager
def edit_index_file(path: str | os.PathLike[str]) -> Iterator[GalleryIndex]:
    """Open an index for a change and save it atomically; writers queue on a lock file."""
    p = Path(path)
    if not p.exists():
        raise EdgeShituError(f"{p}: no such index file; build one with 'edge-shitu index build'")
    lock_path = p.with_name(f".{p.name}.lock")
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            index = GalleryIndex.open(p)
            yield index
            index.save(p)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
