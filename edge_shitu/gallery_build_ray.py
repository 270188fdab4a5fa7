"""The Ray side of ``gallery build``: Ray Data ``map_batches`` over an actor pool.

Why Ray Data rather than a home-made scheduler: it streams (a bounded number of shards in flight,
backpressure when the driver falls behind), restarts a killed actor and retries its shard
(``max_restarts=-1``, ``max_task_retries=-1`` are Ray Data's defaults for actor pools), and
runs unchanged on a laptop, ``ray up`` or KubeRay. One row of the dataset is one shard job
(keys, sha256s, paths: a few KB); an actor holds the model and returns the shard's features, which
the driver writes atomically into the work dir (so the work dir need not be shared storage; the
photos must be readable at the same paths on every worker).

Imported only when ``--ray`` is given: ray is an optional extra (``pip install edge-shitu[cluster]``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery_build_embed import Embedder, ModelSpec

if TYPE_CHECKING:
    from edge_shitu.gallery_build import BuildOptions, ShardJob


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise EdgeShituError("--ray needs Ray: pip install 'edge-shitu[cluster]' (ray[data])") from None
    return ray


class EmbedActor:
    """One Ray actor: loads the model once, embeds one shard per call."""

    def __init__(self, spec: ModelSpec) -> None:
        # Paddle / oneDNN / numpy must not spawn a thread per core in each of several actors
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(spec.threads)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin
        self.embedder = Embedder(spec)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {k: [] for k in ("key", "rows", "feats", "failed", "worker", "seconds",
                                                      "started", "ended")}
        for key, shas_j, paths_j in zip(batch["key"], batch["shas"], batch["paths"]):
            t0, started = time.perf_counter(), time.time()
            shas, paths = json.loads(str(shas_j)), json.loads(str(paths_j))
            feats, ok, failed = self.embedder.embed_files(paths, shas)
            buf = io.BytesIO()
            np.save(buf, feats.astype(np.float32))
            out["key"].append(str(key))
            out["rows"].append(json.dumps([shas[i] for i in ok]))
            out["feats"].append(buf.getvalue())
            out["failed"].append(json.dumps([[shas[i], paths[i], why] for i, why in failed]))
            out["worker"].append(self.worker)
            out["seconds"].append(round(time.perf_counter() - t0, 3))
            out["started"].append(started)  # wall clock, for throughput over the cluster (benchmarks)
            out["ended"].append(time.time())
        return {k: np.array(v, dtype=object) for k, v in out.items()}


def _cause(e: BaseException) -> str:
    """The line that says what went wrong, out of Ray's multi-line remote traceback."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "EdgeShituError:" in ln:
            return ln.split("EdgeShituError:", 1)[1].strip()
    return lines[-1][:300] if lines else type(e).__name__


def connect(address: str, workers: int | None, threads: int) -> bool:
    """Join (or start) a cluster; True when this call started Ray (then the caller shuts it down).

    An already initialised Ray (a test's ``ray.init(num_cpus=2)``, a notebook) is used as is."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                          "configure_logging": True}
    if address == "local":
        ray.init(num_cpus=(workers or os.cpu_count() or 1) * threads, **kw)
    else:
        ray.init(address=address, **kw)
    return True


def embed_ray(jobs: Sequence[ShardJob], spec: ModelSpec, opts: BuildOptions,
              write: Callable[..., None], say: Callable[[str], None]) -> dict[str, Any]:
    """Embed ``jobs`` on the cluster; ``write(job, rows, feats, failed, info)`` per finished shard,
    in the driver, as results stream in (completion order, which the index does not depend on)."""
    ray = _ray()
    started = connect(opts.ray or "auto", opts.workers, opts.threads)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours (rich, over photos) replaces Ray's per-operator bars
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = opts.workers or max(1, cpus // opts.threads)
        say(f"ray: {workers} worker(s) x {opts.threads} thread(s) on a cluster of {cpus} CPU(s)")
        by_key = {j.key: j for j in jobs}
        rows = [{"key": j.key, "shas": json.dumps(j.shas), "paths": json.dumps(j.paths)} for j in jobs]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        out = ds.map_batches(EmbedActor, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                             batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                             num_cpus=opts.threads)
        try:
            for r in out.iter_rows():
                job = by_key[str(r["key"])]
                feats = np.load(io.BytesIO(r["feats"]))
                failed = [tuple(x) for x in json.loads(r["failed"])]
                write(job, json.loads(r["rows"]), feats, failed,
                      {"worker": str(r["worker"]), "seconds": float(r["seconds"]), "started": float(r["started"]),
                       "ended": float(r["ended"])})
        except ray.exceptions.RayError as e:  # e.g. an actor that cannot load the model on its node
            raise EdgeShituError(f"ray: a worker failed ({_cause(e)}); finished shards are kept, rerun to resume. "
                                 "The model and the photos must be at the same paths on every node") from None
        return {"engine": "ray", "workers": workers, "threads": opts.threads, "cluster_cpus": cpus}
    finally:
        if started:
            ray.shutdown()
