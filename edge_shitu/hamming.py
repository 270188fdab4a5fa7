"""Exact top-k Hamming search over word-planar codes, in numpy (the path that always works).

Results are ordered by (distance, row) so that this path, the C kernel and the Java reader
return identical lists. The scan is chunked (32k rows: the temporaries stay in L2) and keeps
only rows that beat the current k-th best, so after the first chunk almost nothing is copied.
numpy >= 2 has a popcount ufunc (``np.bitwise_count``); numpy 1.x gets a SWAR popcount.
"""

from __future__ import annotations

import numpy as np

CHUNK = 32768
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


GROUP_WORDS = 4  # popcounts of up to 4 words (<= 256) are summed in uint8: 256 wraps to 0


def _exact(planes: np.ndarray, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact distances of a few rows (a gather; used to settle wrapped uint8 group sums)."""
    d = np.zeros(rows.size, dtype=np.int64)
    for w in range(planes.shape[0]):
        d += np.unpackbits((planes[w, rows] ^ q[w]).view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1, dtype=np.int64)
    return d


def _topk_one(planes: np.ndarray, count: int, q: np.ndarray, k: int,
              deleted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One query, chunked scan.

    Per chunk, the popcounts of each group of <= 4 words are summed in uint8 (same-dtype adds
    are 2-3x faster than mixed uint16 += uint8). A full group (256 bits) can wrap 256 -> 0, so
    the summed value never exceeds the true distance: filtering ``value < limit`` loses no
    row, and the few candidates with a zero group are recounted exactly.
    """
    words = planes.shape[0]
    m_max = min(CHUNK, count)
    tmp = np.empty(m_max, dtype=np.uint64)
    cnt = np.empty(m_max, dtype=np.uint8)
    groups = [np.empty(m_max, dtype=np.uint8) for _ in range(0, words, GROUP_WORDS)]
    total = np.empty(m_max, dtype=np.uint16) if len(groups) > 1 else None
    can_wrap = [min(GROUP_WORDS, words - w0) == GROUP_WORDS for w0 in range(0, words, GROUP_WORDS)]
    best_d = np.empty(0, dtype=np.int64)
    best_r = np.empty(0, dtype=np.int64)
    limit = words * 64 + 1  # accept d < limit
    for s in range(0, count, CHUNK):
        m = min(CHUNK, count - s)
        t, c = tmp[:m], cnt[:m]
        for gi, w0 in enumerate(range(0, words, GROUP_WORDS)):
            g = groups[gi][:m]
            np.bitwise_xor(planes[w0, s : s + m], q[w0], out=t)
            popcount(t, g)
            for w in range(w0 + 1, min(w0 + GROUP_WORDS, words)):
                np.bitwise_xor(planes[w, s : s + m], q[w], out=t)
                np.add(g, popcount(t, c), out=g)
        if total is None:
            a = groups[0][:m]
        else:
            a = total[:m]
            np.add(groups[0][:m], groups[1][:m], out=a, dtype=np.uint16)
            for g in groups[2:]:
                np.add(a, g[:m], out=a)
        cand = np.arange(m) if limit > np.iinfo(a.dtype).max else np.flatnonzero(a < limit)
        if deleted is not None and cand.size:
            cand = cand[~deleted[s + cand]]
        if not cand.size:
            continue
        cd = a[cand].astype(np.int64)
        wrapped = np.zeros(cand.size, dtype=bool)
        for g, wraps in zip(groups, can_wrap):
            if wraps:
                wrapped |= g[:m][cand] == 0
        if wrapped.any():
            cd[wrapped] = _exact(planes, cand[wrapped] + s, q)
        best_d, best_r = _select(np.concatenate([best_d, cd]), np.concatenate([best_r, cand + s]), k)
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
