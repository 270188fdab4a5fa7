"""Interleaved latency timing, shared by the benchmark scripts and by ``convert`` (what a
mixed-precision file's float layers cost, ``export_tflite._latency_pair``).

Why interleaved: this machine is noisy (two shared cores, other jobs, clock and thermal drift).
Timing candidate A for N runs and then candidate B for N runs lets a burst of load land on one of
them only, and the ratio between them, the figure the benchmarks report, is then wrong. Running
every candidate once per round, side by side, and repeating the rounds spreads whatever the machine
does over all of them alike: read the ratios, not the milliseconds.

Standard library only (devices run the package under Python 3.8).

    ms = interleaved({"fp32": lambda: a.run(feed), "int8": lambda: b.run(feed)}, rounds=20, warmup=3)
    median_ms(ms)  # {"fp32": 12.1, "int8": 6.3}
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


def interleaved_stages(calls: Mapping[K, Callable[[], Mapping[str, float]]], rounds: int,
                       warmup: int = 1) -> dict[K, dict[str, list[float]]]:
    """Each call ``warmup`` times (call by call), then ``rounds`` rounds of every call once, in the
    mapping's order. Each call times its own stages and returns ``{stage: ms}``; the result holds,
    per call and stage, the ``rounds`` values in round order."""
    for f in calls.values():
        for _ in range(warmup):
            f()
    out: dict[K, dict[str, list[float]]] = {k: {} for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            for stage, ms in f().items():
                out[k].setdefault(stage, []).append(ms)
    return out


def _timed(f: Callable[[], Any]) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        f()
        return {"ms": (time.perf_counter() - t0) * 1e3}

    return run


def interleaved(calls: Mapping[K, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[K, list[float]]:
    """Milliseconds per call of each of ``calls`` (``time.perf_counter`` around the call alone),
    ``rounds`` values each, timed interleaved as in :func:`interleaved_stages`."""
    stages = interleaved_stages({k: _timed(f) for k, f in calls.items()}, rounds, warmup)
    return {k: s.get("ms", []) for k, s in stages.items()}


def median_ms(times: Mapping[K, Sequence[float]]) -> dict[K, float]:
    """The median of each key's values."""
    return {k: statistics.median(v) for k, v in times.items()}
