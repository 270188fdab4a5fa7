"""``edge-shitu gallery build``: embed a (large) gallery and write one index file, resumably.

The steps, and why each is shaped so:

1. **List** the photos (``read_gallery``: a PaddleClas label file or class folders); nothing is
   decoded up front.
2. **Hash** every photo (sha256, a thread pool, cached in the work dir by path/size/mtime).
   Identical files are then embedded once, and shards are keyed by content, not by path.
3. **Plan** the distinct photos not yet in a finished shard of this model into shards of
   ``shard_size`` (gallery order). A finished shard is never embedded again: that is resume.
4. **Embed** the shards, in this process or on a Ray cluster (``gallery_build_ray``: Ray Data
   ``map_batches`` over an actor pool, each actor holding the model); the driver writes each
   shard atomically as it arrives. Nothing but one shard's features is in flight per worker.
5. **Fit** the hash on a stated sample (all rows up to ``itq_sample``, else a seeded sample),
   **encode** shard by shard in a thread pool, and write ONE index file atomically.

The result does not depend on where or in which order shards were embedded: rows follow the
gallery listing, the fit sample is drawn from that order, and the feature computation is the
same code everywhere (``gallery_build_embed``). Built from the same features, the index equals
``GalleryIndex.build(features, labels, ...)`` whenever the gallery has at most ``itq_sample``
rows.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery import GalleryItem, read_gallery
from edge_shitu.gallery_build_embed import CHANGED, Embedder, ModelSpec, sha256_file
from edge_shitu.gallery_build_shards import Shard, ShardStore, load_hash_cache, save_hash_cache, shard_key

DEFAULT_SHARD_SIZE = 256  # photos per shard: ~8 s of FP32 work at 30 ms/photo, 1.3 MB of 1280-d features
DEFAULT_ITQ_SAMPLE = 50_000  # rows the hash is fitted on (PCA + ITQ over 50k x 512 takes seconds)
MAX_LISTED_UNREADABLE = 1000  # unreadable photos named in the index META (all are counted)


@dataclass
class BuildOptions:
    """How to build. ``ray``: None = this process; "auto" / "HOST:PORT" / "ray://HOST:10001" =
    an existing cluster; "local" = start one on this machine (``workers`` CPUs)."""

    bits: int = 256
    method: str = "itq"
    rerank_vectors: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    itq_sample: int = DEFAULT_ITQ_SAMPLE
    seed: int = 0
    threads: int = 1  # inference threads per worker (per process when local)
    workers: int | None = None  # Ray actors; default: the cluster's CPUs // threads
    ray: str | None = None
    work_dir: Path | None = None
    hash_threads: int = 8
    encode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    progress: bool = True  # a rich progress bar on stderr
    # Called in the driver after each shard is written (tests interrupt or kill workers from it).
    on_shard: Callable[[dict[str, Any]], None] | None = None


@dataclass
class ShardJob:
    key: str
    shas: list[str]
    paths: list[str]


@dataclass
class BuildResult:
    out: str
    work_dir: str
    photos: int
    indexed: int
    unique: int
    duplicates: int
    unreadable: list[dict[str, str]]
    shards: int
    shards_reused: int
    shards_embedded: int
    photos_embedded: int
    embed_seconds: float
    seconds: float
    itq_sample: dict[str, int]
    model: dict[str, Any]
    runner: dict[str, Any]

    @property
    def photos_per_second(self) -> float:
        return self.photos_embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unreadable_count"] = len(self.unreadable)
        d["photos_per_second"] = round(self.photos_per_second, 3)
        return d


Say = Callable[[str], None]


def _say_stderr(msg: str) -> None:
    print(f"edge-shitu: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- listing + hashing
def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def hash_photos(items: Sequence[GalleryItem], work: Path, threads: int = 8
                ) -> tuple[list[str | None], dict[int, str]]:
    """sha256 of every photo (None where it cannot be read) and {position: why}.

    Cached by (absolute path, size, mtime_ns) in the work dir; submitted in chunks so that a
    million photos never make a million futures at once."""
    from edge_shitu.gallery_build_embed import read_photo

    cache = load_hash_cache(work)
    fresh: dict[str, list[Any]] = {}

    def one(item: GalleryItem) -> tuple[str | None, str | None]:
        p = os.path.abspath(item.path)
        try:
            st = os.stat(p)
            hit = cache.get(p)
            if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns and st.st_size > 0:
                fresh[p] = hit
                return hit[2], None
            if st.st_size == 0 or not os.path.isfile(p):
                read_photo(p)  # raises the one-line reason
            sha = sha256_file(p)
            fresh[p] = [st.st_size, st.st_mtime_ns, sha]
            return sha, None
        except EdgeShituError as e:
            return None, str(e)
        except OSError:
            try:
                read_photo(p)
            except EdgeShituError as e:
                return None, str(e)
            return None, f"image {p} cannot be read"

    shas: list[str | None] = []
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for chunk in _chunks(items, 4096):
            for sha, why in pool.map(one, chunk):
                if why is not None:
                    bad[len(shas)] = why
                shas.append(sha)
    save_hash_cache(work, fresh)
    return shas, bad


def plan_shards(items: Sequence[GalleryItem], shas: Sequence[str | None], done: set[str], model_id: str,
                shard_size: int) -> tuple[list[ShardJob], dict[str, str]]:
    """Shards for the distinct photos not yet embedded (gallery order), and {sha: first path}."""
    first: dict[str, str] = {}
    for it, sha in zip(items, shas):
        if sha is not None and sha not in first:
            first[sha] = os.path.abspath(it.path)
    todo = [s for s in first if s not in done]
    jobs = [ShardJob(shard_key(model_id, c), list(c), [first[s] for s in c]) for c in _chunks(todo, shard_size)]
    return jobs, first


# ---------------------------------------------------------------- embedding
def embed_local(jobs: Sequence[ShardJob], spec: ModelSpec, write: Callable[..., None]) -> dict[str, Any]:
    """Embed shards one after another in this process (the default, and the reference)."""
    if not jobs:
        return {"engine": "local", "workers": 0}
    emb = Embedder(spec)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for job in jobs:
        t0, started = time.perf_counter(), time.time()
        feats, ok, failed = emb.embed_files(job.paths, job.shas)
        write(job, [job.shas[i] for i in ok], feats,
              [(job.shas[i], job.paths[i], why) for i, why in failed],
              {"worker": worker, "seconds": round(time.perf_counter() - t0, 3), "started": started,
               "ended": time.time()})
    return {"engine": "local", "workers": 1, "threads": spec.threads}


class _Progress:
    """A rich progress bar over photos (stderr), or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                                TextColumn("{task.fields[rate]} photos/s"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("embed", total=total, rate="-")
            self.t0 = time.perf_counter()
            self.n = 0
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.n += n
            rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------- the build
def build_gallery(gallery: str | os.PathLike[str], rec: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  labels: str | os.PathLike[str] | None = None, artifact: str | os.PathLike[str] | None = None,
                  opts: BuildOptions | None = None, say: Say | None = None) -> BuildResult:
    """Embed ``gallery`` with ``rec`` (or ``artifact``) and write the index ``out``.

    Interrupted (Ctrl-C, a lost driver), it leaves the finished shards in the work dir; run it
    again with the same work dir and it embeds only what is missing. Unreadable photos are
    counted and listed (result and index META), never fatal, unless no photo at all is readable.
    """
    t_start = time.perf_counter()
    opts = opts or BuildOptions()
    say = say or _say_stderr
    if opts.shard_size < 1:
        raise EdgeShituError(f"--shard-size must be >= 1, got {opts.shard_size}")
    if opts.itq_sample < 2:
        raise EdgeShituError(f"--itq-sample must be >= 2, got {opts.itq_sample}")
    out = Path(out)
    spec = ModelSpec.resolve(rec, artifact, opts.threads)
    gal = read_gallery(gallery, labels)
    items = gal.items
    work = Path(opts.work_dir) if opts.work_dir is not None else out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    say(f"gallery: {len(items)} photos, {len(set(gal.labels))} labels; work dir {work}")
    model_id = spec.identity()
    shas, unreadable = hash_photos(items, work, opts.hash_threads)
    store = ShardStore(work, model_id)
    shards = store.scan()
    # photos that failed to decode are done too (same bytes, same failure), except those that changed
    done = {s for sh in shards.values() for s in sh.rows} | {
        f[0] for sh in shards.values() for f in sh.failed if CHANGED not in f[2]}
    jobs, first = plan_shards(items, shas, done, model_id, opts.shard_size)
    # (the work dir may also hold shards of photos no longer in the gallery: not counted, not used)
    reused = sum(1 for sh in shards.values() if any(s in first for s in sh.rows) or
                 any(f[0] in first for f in sh.failed))
    n_before = len(shards)
    n_todo = sum(len(j.shas) for j in jobs)
    say(f"{len(first)} distinct photos ({len(items) - len(unreadable) - len(first)} duplicates); "
        f"{reused} finished shard(s) reused, {len(jobs)} shard(s) / {n_todo} photos to embed with {spec.kind}")
    bar = _Progress(n_todo, opts.progress)
    embedded = [0]
    written: set[str] = set()

    def write(job: ShardJob, rows: list[str], feats: np.ndarray, failed: list[tuple[str, str, str]],
              info: dict[str, Any]) -> None:
        if job.key in written:  # a retried task delivered twice: the shard is already there
            return
        written.add(job.key)
        shards[job.key] = store.write(job.key, job.shas, rows, feats, failed, info)
        embedded[0] += len(job.shas)
        bar.advance(len(job.shas))
        if opts.on_shard is not None:
            opts.on_shard({"key": job.key, "photos": len(job.shas), "done": embedded[0], "total": n_todo, **info})

    t_embed = time.perf_counter()
    try:
        if opts.ray and jobs:
            from edge_shitu.gallery_build_ray import embed_ray

            runner = embed_ray(jobs, spec, opts, write, say)
        else:
            runner = embed_local(jobs, spec, write)
    except KeyboardInterrupt:
        bar.close()
        say(f"interrupted: {len(shards) - n_before} new shard(s) kept in {work}; run the same command again "
            "to resume")
        raise
    finally:
        bar.close()
    embed_seconds = time.perf_counter() - t_embed

    # ---- rows of the index: every readable gallery photo, in listing order
    where: dict[str, tuple[str, int]] = {}
    failed_why: dict[str, str] = {}
    for sh in shards.values():
        for r, s in enumerate(sh.rows):
            where.setdefault(s, (sh.key, r))
        for s, _, why in sh.failed:
            failed_why.setdefault(s, why)
    rows: list[int] = []
    for i, sha in enumerate(shas):
        if sha is None:
            continue
        if sha in where:
            rows.append(i)
        elif sha in failed_why:
            unreadable[i] = failed_why[sha].replace(first.get(sha, ""), str(items[i].path))
        else:  # cannot happen unless the work dir changed under us
            unreadable[i] = f"image {items[i].path}: no feature was found for it (work dir changed?)"
    if not rows:
        raise EdgeShituError(f"gallery {gallery}: none of the {len(items)} photos could be read")
    bad = [{"path": str(items[i].path), "error": unreadable[i]} for i in sorted(unreadable)]
    for b in bad[:5]:
        say(f"warning: skipped {b['error']}")
    if len(bad) > 5:
        say(f"warning: ... and {len(bad) - 5} more unreadable photo(s) (see --json)")
    row_shas = [shas[i] for i in rows]
    meta = {
        "source": "edge-shitu gallery build",
        "extractor": {**spec.describe(), "identity": model_id},
        "ids": "position of the photo in the gallery listing (label file line order / sorted class folders)",
        "gallery": {"photos": len(items), "indexed": len(rows), "unique": len({*row_shas}),
                    "duplicates": len(rows) - len({*row_shas})},
        "unreadable": {"count": len(bad), "photos": bad[:MAX_LISTED_UNREADABLE]},
    }
    index, sample = assemble_index(
        row_shas, [items[i].label for i in rows], np.asarray(rows, dtype=np.uint64), where, shards, opts, meta)
    index.save(out)
    say(f"index written: {out} ({len(rows)} items, {opts.bits}-bit {opts.method}, fitted on {sample} rows)")
    return BuildResult(
        out=str(out), work_dir=str(work), photos=len(items), indexed=len(rows), unique=len({*row_shas}),
        duplicates=len(rows) - len({*row_shas}), unreadable=bad, shards=reused + len(shards) - n_before,
        shards_reused=reused, shards_embedded=len(shards) - n_before, photos_embedded=embedded[0],
        embed_seconds=round(embed_seconds, 3), seconds=round(time.perf_counter() - t_start, 3),
        itq_sample={"rows": sample, "of": len(rows), "seed": opts.seed},
        model={**spec.describe(), "identity": model_id}, runner=runner)


def assemble_index(row_shas: Sequence[str], labels: Sequence[str], ids: np.ndarray,
                   where: dict[str, tuple[str, int]], shards: dict[str, Shard], opts: BuildOptions,
                   meta: dict[str, Any]) -> tuple[Any, int]:
    """Fit the hash on a sample, encode shard by shard, and return (index, sample rows).

    Memory: the codes (and int8 re-rank vectors) of the distinct photos, the fit sample, and one
    shard per encoding thread; never all float features."""
    from edge_shitu.gallery_build_assemble import build_index

    return build_index(row_shas, labels, ids, where, shards, opts, meta)
