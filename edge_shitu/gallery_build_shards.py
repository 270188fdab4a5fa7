"""Feature shards of a gallery build: what makes a build resumable.

A shard is the features of a few hundred distinct photos: ``<key>.npy`` (float32 rows) and
``<key>.json`` (its manifest: the sha256 of every planned photo, the sha256 of each feature row,
the photos that could not be read, and who embedded it). Both are written to a temporary name
and renamed (``edge_shitu.atomic``), the manifest last: a shard whose manifest exists is
complete, anything else is ignored. The key is the sha256 of the model identity and the
photo list, and shards live in a folder per model identity, so a resumed run (or a rebuild with
other ``--bits``) reuses every finished shard of the same model and never one of another.

Photo hashes are cached in ``photo-hashes.json`` by (path, size, mtime): a resumed run over a
million photos does not read them all again just to find out what it already did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.atomic import atomic_write

SHARD_FORMAT = "edge-shitu-gallery-shard"
SHARD_VERSION = 1
HASH_CACHE = "photo-hashes.json"


def shard_key(model_id: str, shas: Sequence[str]) -> str:
    """The key of a shard: the model identity + its planned photo list."""
    h = hashlib.sha256(model_id.encode())
    for s in shas:
        h.update(b"\n" + s.encode())
    return h.hexdigest()[:32]


@dataclass
class Shard:
    """A complete shard as its manifest describes it."""

    key: str
    rows: list[str]  # sha256 of each feature row, in row order
    failed: list[tuple[str, str, str]]  # (sha256, path, why) of photos that could not be embedded
    dim: int
    path: Path  # the .npy file

    def load(self) -> np.ndarray:
        return np.load(self.path)


class ShardStore:
    """The shards of one model identity under ``work``."""

    def __init__(self, work: str | os.PathLike[str], model_id: str) -> None:
        self.work = Path(work)
        self.model_id = model_id
        self.dir = self.work / "shards" / model_id[:16]

    def write(self, key: str, photos: Sequence[str], rows: Sequence[str], feats: np.ndarray,
              failed: Sequence[tuple[str, str, str]], info: dict[str, Any] | None = None) -> Shard:
        """Write one shard: features first, manifest last (the manifest is the commit mark)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.shape[0] != len(rows):
            raise ValueError(f"shard {key}: {feats.shape[0]} feature rows for {len(rows)} photos")
        dim = int(feats.shape[1]) if feats.ndim == 2 and feats.shape[0] else 0
        npy = self.dir / f"{key}.npy"
        with atomic_write(npy) as f:
            np.save(f, feats)
        manifest = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "key": key, "model": self.model_id,
                    "photos": list(photos), "rows": list(rows), "dim": dim,
                    "failed": [list(x) for x in failed], **(info or {})}
        with atomic_write(self.dir / f"{key}.json") as f:
            f.write(json.dumps(manifest).encode())
        return Shard(key, list(rows), [tuple(x) for x in failed], dim, npy)  # type: ignore[misc]

    def scan(self) -> dict[str, Shard]:
        """Every complete, consistent shard of this model (others are ignored, so re-embedded)."""
        out: dict[str, Shard] = {}
        if not self.dir.is_dir():
            return out
        for mf in sorted(self.dir.glob("*.json")):
            shard = self._read(mf)
            if shard is not None:
                out[shard.key] = shard
        return out

    def _read(self, mf: Path) -> Shard | None:
        try:
            m = json.loads(mf.read_text(encoding="utf-8"))
            if m.get("format") != SHARD_FORMAT or m.get("model") != self.model_id or m.get("key") != mf.stem:
                return None
            npy = mf.with_suffix(".npy")
            with open(npy, "rb") as f:  # header only: the shape must agree with the manifest
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
            rows = [str(s) for s in m["rows"]]
            dim = int(m["dim"])
            if dtype != np.float32 or shape[0] != len(rows) or (rows and shape != (len(rows), dim)):
                return None
            failed = [(str(a), str(b), str(c)) for a, b, c in m.get("failed", [])]
            return Shard(mf.stem, rows, failed, dim, npy)
        except (OSError, ValueError, KeyError, TypeError):
            return None


# ---------------------------------------------------------------- photo hash cache
def load_hash_cache(work: Path) -> dict[str, list[Any]]:
    """{path: [size, mtime_ns, sha256]} from an earlier run (empty when absent or unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        d = json.loads((Path(work) / HASH_CACHE).read_text(encoding="utf-8"))
        if isinstance(d, dict):
            return d
    return {}


def save_hash_cache(work: Path, cache: dict[str, list[Any]]) -> None:
    Path(work).mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(work) / HASH_CACHE) as f:
        f.write(json.dumps(cache, ensure_ascii=False).encode())
