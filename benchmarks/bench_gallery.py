#!/usr/bin/env python3
"""Gallery build throughput: one process (one thread) next to 2 Ray workers (one thread each).

    python benchmarks/bench_gallery.py                    # 256 and 1024 drink photos, 2 rounds (~10 min, 2 cores)
    python benchmarks/bench_gallery.py --sizes 128,512 --rounds 3

The extractor is torchvision's ImageNet MobileNetV2 + GeM (REAL weights, exported as a Paddle
model at 224 px) run through its FP32 Paddle reference, one photo per call, exactly as
``edge-shitu gallery build`` runs it. Photos: the first N lines of the drink gallery's
drink_label_all.txt (real JPEGs, decoded and preprocessed inside the timing).

Side by side in one invocation: for each size, ``--rounds`` pairs of (one process, Ray), each
build in a fresh child process (so that its RSS is its own), alternated so that the drift of
this shared machine hits both modes alike; the speed-up compares the medians. The Ray cluster is
a real local one (``ray.init(num_cpus=2)``, started in the child before the build: its start-up
is not counted; Ray Data's planning and the actors' model loading are). For each run:

- ``photos/s (embed)``: photos / wall time of the embedding phase (model load and, for Ray,
  actor start-up and Ray Data's planning included);
- ``photos/s (steady)``: all photos / (the end of the last shard - the start of the first), on the
  workers' own clocks (what a long build runs at: start-up left out);
- peak RSS: sampled every 0.1 s, the driver + the embedding actors (``ray::MapWorker`` processes),
  summed at each sample; Ray's other processes (raylet, GCS, idle pre-started workers) apart;
- the median of a worker's own milliseconds per photo (decode + preprocess + inference): it
  rises with CPU contention, not with scheduling gaps.

Prints a table; writes benchmarks/results/bench_gallery.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # Paddle's OpenMP threads must not spin between photos

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARD = 32


class RssSampler:
    """Peak RSS of the driver + Ray workers (and of Ray's daemons), sampled in a thread."""

    def __init__(self, period: float = 0.1) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.period = period
        self.peak_total = self.peak_driver = self.peak_workers = self.peak_daemons = 0
        self.max_workers = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        driver = self.me.memory_info().rss
        workers = daemons = n = 0
        for p in self.me.children(recursive=True):
            try:
                rss = p.memory_info().rss
                cmd = " ".join(p.cmdline()[:1])
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            if cmd.startswith("ray::MapWorker"):  # the embedding actors
                workers += rss
                n += 1
            else:  # raylet, GCS, idle pre-started workers, Ray Data's coordinator
                daemons += rss
        self.peak_driver = max(self.peak_driver, driver)
        self.peak_workers = max(self.peak_workers, workers)
        self.peak_daemons = max(self.peak_daemons, daemons)
        self.peak_total = max(self.peak_total, driver + workers)
        self.max_workers = max(self.max_workers, n)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()

    def mb(self) -> dict[str, float]:
        return {"driver_plus_workers": round(self.peak_total / 2**20, 1),
                "driver": round(self.peak_driver / 2**20, 1), "workers": round(self.peak_workers / 2**20, 1),
                "ray_daemons": round(self.peak_daemons / 2**20, 1), "worker_processes": self.max_workers}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def one_run(mode: str, n: int, gallery: Path, labels: Path, rec: Path, tmp: Path) -> dict[str, Any]:
    """One build in THIS process (a fresh one: ``--one``), so that its RSS is its own."""
    from edge_shitu.gallery_build import BuildOptions, build_gallery

    if mode == "ray":  # the cluster's start-up is not part of the build
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-{n}-", dir=tmp))
    shards: list[dict[str, Any]] = []

    def on_shard(s: dict[str, Any]) -> None:
        shards.append(s)

    opts = BuildOptions(shard_size=SHARD, threads=1, work_dir=run_dir / "work", progress=False,
                        ray="auto" if mode == "ray" else None, workers=2 if mode == "ray" else None,
                        on_shard=on_shard)
    load0 = load_avg()
    with RssSampler() as rss:
        res = build_gallery(gallery, rec, run_dir / "g.esidx", labels=labels, opts=opts, say=lambda m: None)
    # steady state: every photo / (last shard's end - first shard's start), the workers' own clocks:
    # model loading, actor start-up and the driver's receiving (Ray Data hands results over in bursts)
    # are left out
    t0, t1 = min(s["started"] for s in shards), max(s["ended"] for s in shards)
    steady = sum(s["photos"] for s in shards) / (t1 - t0)
    per_photo = sorted(s["seconds"] / max(s["photos"], 1) for s in shards)
    return {"mode": mode, "workers": res.runner.get("workers"), "threads": 1, "photos": n,
            "embedded": res.photos_embedded, "embed_s": res.embed_seconds,
            "photos_per_s_embed": round(res.photos_per_second, 2), "photos_per_s_steady": round(steady, 2),
            "worker_ms_per_photo_median": round(1000 * sorted(per_photo)[len(per_photo) // 2], 1),
            "total_s": res.seconds, "peak_rss_mb": rss.mb(), "load_before": load0, "load_after": load_avg()}


def run_child(mode: str, n: int, gallery: Path, labels: Path, rec: Path, tmp: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", mode, str(n), str(gallery), str(labels), str(rec), str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{mode} run of {n} photos failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {mode:5} n={n:5}: {row['photos_per_s_embed']:6.2f} photos/s embed, {row['photos_per_s_steady']:6.2f} "
          f"steady, peak RSS {row['peak_rss_mb']['driver_plus_workers']:.0f} MB, load {row['load_before']}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,1024", help="gallery sizes (photos), comma-separated")
    ap.add_argument("--rounds", type=int, default=2, help="local/Ray pairs per size (medians are compared)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_gallery.json"))
    ap.add_argument("--one", nargs=6, metavar=("MODE", "N", "GALLERY", "LABELS", "REC", "TMP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        mode, n, gallery, labels, rec, tmp = args.one
        print(json.dumps(one_run(mode, int(n), Path(gallery), Path(labels), Path(rec), Path(tmp))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]

    from edge_shitu.assets import DRINK_GALLERY, DRINK_LABELS_ALL, asset
    from edge_shitu.converters.mobilenet_v2 import export_extractor

    gallery, all_labels = asset(*DRINK_GALLERY), asset(*DRINK_LABELS_ALL)
    if gallery is None or all_labels is None:
        sys.exit("the drink gallery is not found: set EDGE_SHITU_ASSETS to the shared/assets folder")
    lines = all_labels.read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory(prefix="bench-gallery-") as td:
        tmp = Path(td)
        rec = Path(export_extractor(None, tmp / "mnv2", input_size=224))
        print(f"load average at start: {load_avg()} on {os.cpu_count()} cores", flush=True)
        runs = []
        for n in sizes:  # side by side: local then Ray on the same photos, size by size
            if n > len(lines):
                sys.exit(f"--sizes: the drink gallery has {len(lines)} photos")
            labels = tmp / f"labels_{n}.txt"
            labels.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
            for _ in range(args.rounds):  # alternated: the machine's drift hits both modes alike
                runs.append(run_child("local", n, gallery, labels, rec, tmp))
                runs.append(run_child("ray", n, gallery, labels, rec, tmp))

    def median(mode: str, n: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["mode"] == mode and r["photos"] == n)

    keys = ("photos_per_s_embed", "photos_per_s_steady", "worker_ms_per_photo_median")
    medians = {str(n): {m: {k: median(m, n, k) for k in keys} for m in ("local", "ray")} for n in sizes}
    speedup = {str(n): {k: round(median("ray", n, k) / median("local", n, k), 3) for k in keys[:2]}
               for n in sizes}
    print("\n| mode | workers x threads | photos | photos/s (embed) | photos/s (steady) | peak RSS MB: driver + "
          "workers (driver / actors) | other Ray processes MB | load avg 1 min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        m = r["peak_rss_mb"]
        print(f"| {r['mode']} | {r['workers']} x 1 | {r['photos']} | {r['photos_per_s_embed']:.2f} | "
              f"{r['photos_per_s_steady']:.2f} | {m['driver_plus_workers']:.0f} "
              f"({m['driver']:.0f} / {m['workers']:.0f}) | {m['ray_daemons']:.0f} | {r['load_before'][0]} |")
    print("\nspeed-up of 2 Ray workers over one process (medians of the runs of each mode and size):")
    for n, sp in speedup.items():
        print(f"  {n} photos: {sp['photos_per_s_embed']:.2f}x end to end, {sp['photos_per_s_steady']:.2f}x steady")
    import importlib.metadata as md

    result = {"benchmark": "bench_gallery", "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "ray": md.version("ray"), "paddlepaddle": md.version("paddlepaddle"),
              "extractor": "torchvision MobileNetV2 (ImageNet) + GeM, FP32 Paddle reference, 224 px, batch 1",
              "shard_size": SHARD, "rounds": args.rounds, "runs": runs, "medians": medians,
              "speedup_ray2_over_local": speedup, "target": ">= 1.7x"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
