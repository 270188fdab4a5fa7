"""Exact top-k Hamming search over word-planar codes, in numpy (the path that always works).

Results are ordered by (distance, row) so that this path, the C kernel and the Java reader
return identical lists. The scan is chunked (64k rows: the temporaries stay in L2) and keeps
only rows that beat the current k-th best, so after the first chunk almost nothing is copied.
numpy >= 2 has a popcount ufunc (``np.bitwise_count``); numpy 1.x gets a SWAR popcount.
"""

from __future__ import annotations

import numpy as np

CHUNK = 65536
SMALL_GALLERY = 16384  # below this, many queries are scanned at once (one matrix)

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


def _popcount_swar(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """popcount of uint64 values for numpy < 2 (no bitwise_count); overwrites x."""
    t = x - ((x >> np.uint64(1)) & _M1)
    t = (t & _M2) + ((t >> np.uint64(2)) & _M2)
    t = (t + (t >> np.uint64(4))) & _M4
    t = (t * _H01) >> np.uint64(56)
    np.copyto(out, t, casting="unsafe")
    return out


if hasattr(np, "bitwise_count"):

    def popcount(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x, out=out)  # type: ignore[attr-defined]

    NUMPY_KERNEL = "numpy-bitwise_count"
else:  # numpy 1.x
    popcount = _popcount_swar
    NUMPY_KERNEL = "numpy-swar"


def pad_results(k: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -1, dtype=np.int32), np.full((nq, k), -1, dtype=np.int64)


def _select(d: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of (d, r) pairs by (d, r), sorted."""
    if d.size > k:
        v = np.partition(d, k - 1)[k - 1]
        less = np.flatnonzero(d < v)
        eq = np.flatnonzero(d == v)
        eq = eq[np.argsort(r[eq], kind="stable")[: k - less.size]]
        sel = np.concatenate([less, eq])
        d, r = d[sel], r[sel]
    order = np.lexsort((r, d))
    return d[order], r[order]


def distances(planes: np.ndarray, count: int, q: np.ndarray) -> np.ndarray:
    """Hamming distance of every row to one query (words,) uint64 -> (count,) int32."""
    out = np.empty(count, dtype=np.int32)
    tmp = np.empty(min(CHUNK, max(count, 1)), dtype=np.uint64)
    cnt = np.empty_like(tmp, dtype=np.uint8)
    for s in range(0, count, CHUNK):
        m = min(CHUNK, count - s)
        acc = out[s : s + m]
        acc[:] = 0
        for w in range(planes.shape[0]):
            np.bitwise_xor(planes[w, s : s + m], q[w], out=tmp[:m])
            acc += popcount(tmp[:m], cnt[:m])
    return out


def _topk_one(planes: np.ndarray, count: int, q: np.ndarray, k: int,
              deleted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    words = planes.shape[0]
    m_max = min(CHUNK, count)
    tmp = np.empty(m_max, dtype=np.uint64)
    cnt = np.empty(m_max, dtype=np.uint8)
    acc = np.empty(m_max, dtype=np.uint16)
    best_d = np.empty(0, dtype=np.int64)
    best_r = np.empty(0, dtype=np.int64)
    limit = words * 64 + 1  # accept d < limit
    for s in range(0, count, CHUNK):
        m = min(CHUNK, count - s)
        t, c, a = tmp[:m], cnt[:m], acc[:m]
        np.bitwise_xor(planes[0, s : s + m], q[0], out=t)
        np.copyto(a, popcount(t, c))
        for w in range(1, words):
            np.bitwise_xor(planes[w, s : s + m], q[w], out=t)
            np.add(a, popcount(t, c), out=a)
        cand = np.flatnonzero(a < limit)
        if deleted is not None and cand.size:
            cand = cand[~deleted[s + cand]]
        if not cand.size:
            continue
        best_d, best_r = _select(np.concatenate([best_d, a[cand].astype(np.int64)]),
                                 np.concatenate([best_r, cand + s]), k)
        if best_d.size == k:
            limit = int(best_d[-1])  # strict: an equal distance on a later row loses the tie
            if limit == 0:
                break
    return best_d, best_r


def _topk_small(planes: np.ndarray, count: int, qwords: np.ndarray, k: int,
                deleted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Many queries against a small gallery: one (queries x rows) distance matrix per block."""
    nq = qwords.shape[0]
    dist, rows = pad_results(k, nq)
    kk = min(k, count if deleted is None else int((~deleted).sum()))
    if kk == 0:
        return dist, rows
    qblock = max(1, (1 << 22) // max(count, 1))
    row_ids = np.arange(count, dtype=np.int64)
    for s in range(0, nq, qblock):
        q = qwords[s : s + qblock]
        d = np.zeros((q.shape[0], count), dtype=np.int64)
        tmp = np.empty((q.shape[0], count), dtype=np.uint64)
        cnt = np.empty((q.shape[0], count), dtype=np.uint8)
        for w in range(planes.shape[0]):
            np.bitwise_xor(planes[w, :count][None, :], q[:, w][:, None], out=tmp)
            d += popcount(tmp, cnt)
        key = (d << 32) | row_ids  # unique keys: order by (distance, row)
        if deleted is not None:
            key[:, deleted] = np.iinfo(np.int64).max
        part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < count else np.argsort(key, axis=1)
        ksel = np.take_along_axis(key, part, axis=1)
        ksel.sort(axis=1)
        dist[s : s + q.shape[0], :kk] = (ksel[:, :kk] >> 32).astype(np.int32)
        rows[s : s + q.shape[0], :kk] = ksel[:, :kk] & 0xFFFFFFFF
    return dist, rows


def topk(planes: np.ndarray, count: int, qwords: np.ndarray, k: int,
         deleted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k for each query.

    planes: (words, stride) uint64 word-planar codes; qwords: (nq, words) uint64 queries;
    deleted: bool per row or None. Returns (dist int32 (nq, k), rows int64 (nq, k)), padded
    with -1 where fewer than k live rows exist.
    """
    qwords = np.ascontiguousarray(qwords, dtype=np.uint64)
    nq = qwords.shape[0]
    if deleted is not None and not deleted.any():
        deleted = None
    if count <= SMALL_GALLERY and nq > 1:
        return _topk_small(planes, count, qwords, k, deleted)
    dist, rows = pad_results(k, nq)
    if count == 0:
        return dist, rows
    for i in range(nq):
        d, r = _topk_one(planes, count, qwords[i], k, deleted)
        dist[i, : d.size] = d
        rows[i, : r.size] = r
    return dist, rows
