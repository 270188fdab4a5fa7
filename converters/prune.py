"""Structured (channel) pruning with PaddleSlim, driven by measured sensitivity.

How the ratios are chosen, and why this way:

1. Candidates: every ``conv2d`` with ``groups == 1`` (depthwise convs are never masters: they
   follow their producer automatically). PaddleSlim decides what is prunable: a conv for which
   it builds no pruning collection (the detector's head convs feeding ``split``, convs whose
   channels meet an unsupported op, the network's last layers) is skipped and listed.
2. Only the ``max_layers`` candidates with the most MACs are measured, and none once
   ``time_limit_s`` is spent: on 2 CPU cores each
   measurement costs a prune + save + Paddle Inference predictor build + a run on the
   calibration images (about 0.4 s for PP-LCNet at 224, 2-3 s for PP-PicoDet at 640), and the
   small layers cannot save much anyway. This is a deliberate subsample; the report lists it.
3. Sensitivity: each measured layer is pruned ALONE at each of ``probe_ratios`` (default one
   probe, 0.3, to halve the cost; loss is interpolated linearly through 0) (L1-norm
   criterion) and the model's fidelity against FP32 is measured on the calibration inputs
   (extractor: mean cosine of the output features; detector: mean cosine of the raw head
   outputs that enter NMS, because boxes after NMS jump discontinuously).
4. Allocation, greedy: losses (1 - fidelity) are assumed additive and interpolated linearly
   between probes; ratios are raised one candidate step at a time on the layer with the best
   MACs-saved per loss, until the summed loss reaches a share of the budget. The combined model
   is then MEASURED; if it misses the budget the share is halved and the greedy pass rerun
   (at most ``max_rounds`` times), else no pruning is applied.

Overrides: ``prune_ratio`` prunes every prunable conv uniformly (fidelity measured and
reported, no budget), ``no_prune`` copies the model and reports its size.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.runtimes.paddle_backend import PaddleBackend

from .paddle_model import (
    FlopCount,
    PaddleModel,
    _paddle,
    cosine,
    count_flops,
    count_params,
    head_outputs,
    load_model,
    save_model,
)

DEFAULT_CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5)
_log = logging.getLogger("edge_shitu.prune")
_NO_INFER_SHAPE = frozenset({"feed", "fetch", "while", "conditional_block", "select_input", "select_output"})


@dataclass
class LayerSensitivity:
    param: str
    macs: int  # the conv's own MACs in the unpruned model
    loss: dict[float, float] = field(default_factory=dict)  # ratio -> 1 - fidelity (measured)
    saved: dict[float, int] = field(default_factory=dict)  # ratio -> MACs saved (whole model)


class Reductions:
    """The shares of MACs and parameters a pruning report's before/after counts removed."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0


@dataclass
class PruneReport(Reductions):
    out_dir: Path
    mode: str  # "sensitivity" | "uniform" | "none"
    metric: str
    budget: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    ratios: dict[str, float]
    fidelity: float  # measured on the calibration inputs, pruned vs FP32
    eval_fidelity: float | None  # measured on held-out inputs, if given
    sensitivities: list[LayerSensitivity]
    skipped: list[str]  # candidates PaddleSlim cannot prune
    unmeasured: list[str]  # prunable but not measured (subsample)
    rounds: int
    n_evals: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The manifest's view: what was pruned, what it saved, what it cost in fidelity."""
        return {"mode": self.mode, "metric": self.metric, "budget": self.budget,
                "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_reduction": round(self.params_reduction, 4), "macs_reduction": round(self.macs_reduction, 4),
                "fidelity": self.fidelity, "eval_fidelity": self.eval_fidelity,
                "ratios": {k: round(float(v), 4) for k, v in self.ratios.items()},
                "skipped": len(self.skipped), "seconds": round(self.seconds, 1)}



# ----------------------------------------------------------------------------- PaddleSlim glue

@contextlib.contextmanager
def _fast_slim() -> Iterator[None]:
    """PaddleSlim quiet, with a linear-time leaf search and a loop-tolerant infer_shape (undone on exit).

    ``PruningCollections._find_leaves`` asks every variable for its consumers by scanning all
    ops: 2 s per call on PP-LCNet, ~20 s on PP-PicoDet, and it runs on every ``prune()``. The
    replacement computes the same set (variables no op reads) in one pass.
    """
    from paddleslim.core import GraphWrapper
    from paddleslim.prune.collections import PruningCollections

    def find_leaves(self: Any, graph: Any) -> list[str]:
        consumed: set[str] = set()
        for blk in graph.program.blocks:
            for op in blk.ops:
                consumed.update(op.input_arg_names)
        return [v.name() for v in graph.vars() if v.name() not in consumed]

    def infer_shape(self: Any) -> None:
        # PaddleSlim's version stops at PP-PicoDet's NMS loop ("while's infer_shape is not
        # registered"); the post-process shapes are dynamic anyway.
        for op in self.ops():
            if op.type() not in _NO_INFER_SHAPE:
                with contextlib.suppress(Exception):
                    op._op.desc.infer_shape(op._op.block.desc)

    orig = PruningCollections._find_leaves
    orig_infer = GraphWrapper.infer_shape
    PruningCollections._find_leaves = find_leaves
    GraphWrapper.infer_shape = infer_shape
    levels = {}
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("paddleslim"):
            lg = logging.getLogger(name)
            levels[lg] = lg.level
            lg.setLevel(logging.ERROR)  # "Leaves ... will be skipped", "change groups of ..."
    try:
        yield
    finally:
        PruningCollections._find_leaves = orig
        GraphWrapper.infer_shape = orig_infer
        for lg, level in levels.items():
            lg.setLevel(level)


def _prunable(model: PaddleModel, params: Sequence[str]) -> dict[str, bool]:
    """Which conv weights PaddleSlim can prune (it builds a pruning collection for them)."""
    from paddleslim.core import GraphWrapper
    from paddleslim.prune.collections import PruningCollections

    graph = GraphWrapper(model.program)
    out = {}
    for p in params:
        cols = PruningCollections().create_pruning_collections([p], graph)
        out[p] = bool(cols) and any(c.all_pruning_details() for c in cols)
    return out


def _dedup_pruner() -> Any:
    from paddleslim.prune import Pruner

    class _DedupPruner(Pruner):
        """PaddleSlim's Pruner, minus a duplicate-index bug.

        When the same tensor is reached twice (PP-LCNetV2's residual adds, or two masters whose
        collections overlap), ``Pruner.prune`` concatenates the pruned indices with duplicates
        and subtracts ``len(indices)`` from the shape and the depthwise ``groups``: the program
        then says 716 groups for 717 channels and Paddle Inference refuses to run it. Here each
        (tensor, axis) only ever receives indices it has not received yet within one prune().
        """

        def prune(self, *args: Any, **kwargs: Any) -> Any:
            self._seen: dict[tuple[str, int], set[int]] = {}
            return super().prune(*args, **kwargs)

        def _transform(self, items: Any) -> Any:
            out = []
            for name, axis, idx in super()._transform(items):
                seen = self._seen.setdefault((name, axis), set())
                fresh = np.array(sorted({int(i) for i in np.asarray(idx).ravel()} - seen), dtype=np.int64)
                seen.update(int(i) for i in fresh)
                if fresh.size:
                    out.append((name, axis, fresh))
            return out

    return _DedupPruner(criterion="l1_norm")


@contextlib.contextmanager
def _pruned(model: PaddleModel, ratios: Mapping[str, float]) -> Iterator[Any]:
    """Temporarily prune the scope's weights (structurally); yields the pruned program."""
    paddle = _paddle()

    ratios = {k: v for k, v in ratios.items() if v > 0}
    if not ratios:
        yield model.program
        return
    with model.guard():
        program, backup, _ = _dedup_pruner().prune(
            model.program, model.scope, params=list(ratios), ratios=list(ratios.values()),
            place=paddle.CPUPlace(), only_graph=False, param_backup=True)
    try:
        yield program
    finally:
        for name, value in backup.items():
            model.scope.find_var(name).get_tensor().set(value, paddle.CPUPlace())


# ----------------------------------------------------------------------------- measurement

class _Evaluator:
    """Fidelity of (a pruned variant of) a model against FP32, with Paddle Inference.

    The static Executor is ~10x slower than Paddle Inference here, so each variant is saved as
    a small model that outputs only ``targets`` and run through a fresh predictor.
    """

    def __init__(self, model: PaddleModel, feeds: Sequence[Mapping[str, np.ndarray]],
                 targets: Sequence[str], threads: int, workdir: Path) -> None:
        self.model, self.feeds, self.targets = model, list(feeds), list(targets)
        self.threads, self.workdir = threads, workdir
        self.n_evals = 0
        self.ref = self.outputs(model.program)
        self.n_evals = 0

    def outputs(self, program: Any) -> list[list[np.ndarray]]:
        paddle = _paddle()
        d = Path(tempfile.mkdtemp(prefix="variant-", dir=self.workdir))
        try:
            program = program.clone()  # save_inference_model appends scale ops to what it is given
            blk = program.global_block()
            feed_names = [n for n in self.model.feed_names if n in self.feeds[0]]
            # A fresh name prefix: save_inference_model names its output scale ops
            # save_infer_model/scale_N.tmp_M, which an exported model already has (int32 on the
            # detector) -> "has been created before ... data type not matched".
            with self.model.guard(), paddle.utils.unique_name.guard("es_eval_"):
                paddle.static.save_inference_model(
                    str(d / "inference"), [blk.var(n) for n in feed_names],
                    [blk.var(n) for n in self.targets], self.model.exe, program=program)
            runner = PaddleBackend(d, threads=self.threads)
            outs = [runner.run({s.name: f[s.name] for s in runner.inputs}) for f in self.feeds]
        finally:
            shutil.rmtree(d, ignore_errors=True)
        self.n_evals += 1
        return outs

    def fidelity(self, program: Any) -> float:
        """Mean over inputs of the mean cosine over target tensors."""
        outs = self.outputs(program)
        return float(np.mean([np.mean([cosine(a, b) for a, b in zip(r, o)])
                              for r, o in zip(self.ref, outs)]))


def _interp(points: Mapping[float, float], r: float) -> float:
    """Piecewise-linear through (0, 0) and the probes, linear extrapolation past the last."""
    xs = [0.0, *sorted(points)]
    ys = [0.0, *(points[x] for x in sorted(points))]
    if r <= xs[-1]:
        return float(np.interp(r, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (r - xs[-1])


def _greedy(sens: Sequence[LayerSensitivity], candidates: Sequence[float], allowed: float) -> dict[str, float]:
    ratios = {s.param: 0.0 for s in sens}
    total = 0.0
    steps = sorted(candidates)
    while True:
        best, best_gain = None, 0.0
        for s in sens:
            cur = ratios[s.param]
            nxt = next((c for c in steps if c > cur + 1e-9), None)
            if nxt is None:
                continue
            dloss = max(_interp(s.loss, nxt) - _interp(s.loss, cur), 0.0)
            dsave = _interp({k: float(v) for k, v in s.saved.items()}, nxt) - \
                _interp({k: float(v) for k, v in s.saved.items()}, cur)
            if total + dloss > allowed or dsave <= 0:
                continue
            gain = dsave / max(dloss, 1e-7)
            if gain > best_gain:
                best, best_gain = (s, nxt, dloss), gain
        if best is None:
            return {k: v for k, v in ratios.items() if v > 0}
        s, nxt, dloss = best
        ratios[s.param] = nxt
        total += dloss


# ----------------------------------------------------------------------------- entry point

def _input_shapes(model: PaddleModel, feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    return {n: [1, *np.asarray(feeds[n]).shape[1:]] for n in model.feed_names if n in feeds}


def prune(model_dir: str | Path, out_dir: str | Path, calib_feeds: Sequence[Mapping[str, np.ndarray]], *,
          eval_feeds: Sequence[Mapping[str, np.ndarray]] | None = None, budget: float = 0.99,
          prune_ratio: float | None = None, no_prune: bool = False,
          candidates: Sequence[float] = DEFAULT_CANDIDATES, probe_ratios: Sequence[float] = (0.3,),
          max_layers: int = 12, max_rounds: int = 4, share: float = 0.8, threads: int = 2,
          time_limit_s: float | None = 60.0) -> PruneReport:
    """Prune ``model_dir`` into ``out_dir``; see the module docstring for the method.

    ``calib_feeds``: per-image feed dicts (a few real images, preprocessed as deployed) used for
    sensitivity and the budget check. ``budget``: minimum fidelity (mean cosine vs FP32) of the
    pruned model on them. ``time_limit_s`` stops measuring further layers once exceeded (the
    measured ones are still used). Returns a :class:`PruneReport` with measured figures.
    """
    t0 = time.perf_counter()
    if not calib_feeds:
        raise EdgeShituError("pruning needs calibration images to measure fidelity: pass a few real photos")
    if prune_ratio is not None and not 0.0 <= prune_ratio < 1.0:
        raise EdgeShituError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    if not 0.0 < budget <= 1.0:
        raise EdgeShituError(f"fidelity budget must be in (0, 1], got {budget}")
    model = load_model(model_dir)
    shapes = _input_shapes(model, calib_feeds[0])
    targets = head_outputs(model.program)
    metric = ("mean cosine of output features" if targets == model.fetch_names
              else f"mean cosine of {len(targets)} raw head outputs (pre-NMS)")
    macs_before = count_flops(model, shapes).macs
    params_before = count_params(model)
    out = Path(out_dir)
    convs = [op for op in model.program.global_block().ops if op.type == "conv2d" and op.attr("groups") == 1]
    base = _infer_macs(model, shapes)
    conv_macs = {op.input("Filter")[0]: base.get(op.output("Output")[0], 0) for op in convs}

    with _fast_slim(), tempfile.TemporaryDirectory(prefix=".prune-", dir=out.parent if out.parent.exists()
                                                    else None) as work:
        ev = _Evaluator(model, calib_feeds, targets, threads, Path(work))
        sens: list[LayerSensitivity] = []
        skipped: list[str] = []
        unmeasured: list[str] = []
        rounds = 0
        if no_prune or prune_ratio == 0.0:
            mode, ratios = "none", {}
        elif prune_ratio is not None:
            mode = "uniform"
            ok = _prunable(model, list(conv_macs))
            skipped = [p for p, v in ok.items() if not v]
            ratios = {p: float(prune_ratio) for p, v in ok.items() if v}
        else:
            mode = "sensitivity"
            ranked = sorted(conv_macs, key=lambda p: -conv_macs[p])
            chosen: list[str] = []
            for p in ranked:  # collections are costly on big graphs: stop at max_layers prunable
                if len(chosen) >= max_layers:
                    unmeasured.append(p)
                    continue
                (chosen if _prunable(model, [p])[p] else skipped).append(p)
            for k, p in enumerate(chosen):
                if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
                    unmeasured = chosen[k:] + unmeasured  # keep the CI budget; reported
                    break
                s = LayerSensitivity(p, conv_macs[p])
                try:
                    for r in probe_ratios:
                        with _pruned(model, {p: r}) as prog:
                            s.loss[r] = max(0.0, 1.0 - ev.fidelity(prog))
                            s.saved[r] = macs_before - count_flops(prog, shapes).macs
                except Exception as e:  # a graph PaddleSlim prunes into something Paddle cannot run
                    _log.warning("pruning %s gives an invalid model, skipped: %s", p, str(e).splitlines()[0][:200])
                    skipped.append(p)
                    continue
                sens.append(s)
            ratios = {}
            allowed = (1.0 - budget) * share
            for rounds in range(1, max_rounds + 1):  # noqa: B007 - rounds is reported
                trial = _greedy(sens, candidates, allowed)
                if not trial:
                    break
                try:
                    with _pruned(model, trial) as prog:
                        fid = ev.fidelity(prog)
                except Exception as e:
                    _log.warning("combined pruning %s failed, retrying smaller: %s", trial, str(e).splitlines()[0][:99])
                    fid = 0.0
                if fid >= budget:
                    ratios = trial
                    break
                allowed *= 0.5
        # Apply for real, save, and measure the saved model.
        ev_eval = _Evaluator(model, eval_feeds, targets, threads, Path(work)) if eval_feeds else None
        with _pruned(model, ratios) as prog:
            fid = ev.fidelity(prog)
            eval_fid = ev_eval.fidelity(prog) if ev_eval is not None else None
            final = PaddleModel(prog, model.feed_names, [prog.global_block().var(n) for n in model.fetch_names],
                                model.scope, model.exe, model.model_dir, model.model_path, model.params_path,
                                model.side_files)
            save_model(final, out)
            params_after = count_params(final)
            macs_after = count_flops(final, shapes).macs
        n_evals = ev.n_evals
    return PruneReport(out, mode, metric, budget if mode == "sensitivity" else None, params_before, params_after,
                       macs_before, macs_after, dict(ratios), fid, eval_fid, sens, skipped, unmeasured, rounds,
                       n_evals, time.perf_counter() - t0)


def _infer_macs(model: PaddleModel, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """MACs per conv output tensor (to rank layers before measuring them)."""
    from .paddle_model import _infer_shapes

    prog = _infer_shapes(model.program, shapes)
    blk = prog.global_block()
    res = {}
    for op in blk.ops:
        if op.type in ("conv2d", "depthwise_conv2d"):
            w = [max(int(d), 1) for d in blk.var(op.input("Filter")[0]).shape]
            o = [max(int(d), 1) for d in blk.var(op.output("Output")[0]).shape]
            res[op.output("Output")[0]] = int(np.prod(o)) * int(np.prod(w[1:]))
    return res


__all__ = ["DEFAULT_CANDIDATES", "FlopCount", "LayerSensitivity", "PruneReport", "prune"]
