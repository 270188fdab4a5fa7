"""Channel pruning of inverted-residual blocks with least-squares reconstruction, budgeted in recall points.

Why: L1-norm pruning under a cosine budget (:mod:`.prune`) removes ~1% of MobileNetV2's MACs.
Most of an inverted-residual network's MACs sit in the expanded ("hidden") channels of its
blocks (1x1 expansion conv -> BN -> act -> depthwise conv -> BN -> act -> 1x1 projection conv ->
BN). Removing hidden channels shrinks all three convs; what the removed channels carried is then
largely recovered, without retraining, by re-fitting the projection conv on calibration
activations.

Method:

1. Pattern: every ``conv2d 1x1 -> batch_norm -> act -> depthwise_conv2d -> batch_norm -> act ->
   conv2d 1x1 -> batch_norm`` chain whose intermediate tensors have no other reader (the hidden
   channels then live only inside the block). A model without one raises
   :class:`NoInvertedResidual` (one line; ``convert`` falls back to :mod:`.prune`).
2. Statistics, FP32 model, calibration images: for each block, at up to 512 uniformly sampled
   spatial positions per image, the projection's input ``x`` (hidden channels, plus a constant 1)
   and output ``y`` (pre-BN); likewise the output of the 1x1 conv after the last block (the tail).
3. Channel order: Optimal-Brain-Surgeon on the projection, greedily: remove the hidden channel
   whose removal, with the projection optimally re-fitted on the others, adds the least output
   error, weighted by the next BN's scale (the error that reaches the residual stream), using
   ``H^-1`` of the input covariance and its rank-one downdates. This gives each block an order
   of removal and an error curve.
4. Allocation: channels leave in units of 8 (SIMD-friendly widths), block by block, in the
   global order of least relative error per MAC saved; a target MAC reduction ``f`` is a prefix
   of that order (``allocation="uniform"``: the same share of hidden channels in every block).
5. Surgery: PaddleSlim's Pruner on the expansion conv's weight (axis 0) with the OBS order as its
   criterion; it removes the channels through both BNs, the depthwise conv and the projection's
   input channels. The collections are checked to touch nothing else.
6. Reconstruction, block by block in order: ``X`` = the PRUNED model's projection input (kept
   channels, earlier blocks already reconstructed, so it carries the accumulated error), ``Y`` =
   the FP32 model's projection output at the same positions; ridge least squares with an intercept
   column, shrunk towards the trained weights (not towards zero: directions the calibration
   photos hardly excite keep their trained values); the intercept ``b`` is folded into the
   following BN (``mean' = mean - b``): the convs have no bias. Blocks left unpruned and the tail
   conv are re-fitted too: they absorb the error coming from upstream.
7. Budget: the largest candidate ``f`` whose leave-one-out recall@1 on the labelled gallery sample
   (:mod:`.task_gate`'s measure: float search, FP32 model's reference) drops at most
   ``recall_budget`` points with the pruned model on both sides: ``convert`` embeds a pruned
   bundle's gallery with the pruned FP32 program (the device's model, unquantized; its on-device
   additions come from the same model), and its task gate then weighs pruning and quantization
   together against the user's FP32 model. ``bench_prune`` also reports (and by default budgets)
   the pruned model's queries against the unpruned FP32 model's gallery features.

Measured on MobileNetV2 / the drink gallery (docs/benchmarks.md): ``convert`` picks 25% fewer
MACs (0.47 recall@1 points on both sides, 240 statistics photos; its int8 TFLite 0.66 points below
the unpruned FP32 float search), 1.3x faster fp32 and int8 TFLite (``bench_prune``); without the
reconstruction the same cut keeps 0.48 recall@1.
"""

from __future__ import annotations

import heapq
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.errors import EdgeShituError

from .paddle_model import PaddleModel, _paddle, count_flops, count_params, load_model, mean_row_cosine, save_model
from .prune import Reductions

_log = logging.getLogger("edge_shitu.prune_reconstruct")
ACTIVATIONS = frozenset({"relu6", "relu", "hard_swish", "swish", "silu", "leaky_relu"})
CARRIED_FILES = ("preprocess.json",)  # an extractor's preprocessing (gallery_build_embed.rec_preprocess_for)
UNIT = 8  # hidden channels leave in groups of 8: SIMD-friendly widths for XNNPACK / NEON
MAX_RATIO = 0.75  # at most this share of a block's hidden channels is removed
DEFAULT_TARGETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)  # MAC reductions tried by the recall search
POSITIONS = 512  # sampled spatial positions per image and block
REFIT_UNPRUNED = True  # also re-fit blocks left whole: they absorb upstream error
RIDGE = 1e-1  # ridge lambda (towards the original weights), relative to the mean diagonal of X^T X


class NoInvertedResidual(EdgeShituError):
    """The model has no inverted-residual block this method can prune."""


@dataclass
class Block:
    """One prunable inverted-residual block (names in the Paddle program)."""

    expand_w: str  # 1x1 expansion conv weight [hidden, cin, 1, 1]: PaddleSlim's master
    dw_w: str
    proj_w: str  # 1x1 projection conv weight [cout, hidden, 1, 1]
    block_in: str  # the expansion conv's input (the block's input tensor)
    proj_in: str  # the projection's input (post-activation, hidden channels)
    proj_out: str  # the projection's output (pre-BN)
    bn_mean: str
    bn_var: str
    bn_scale: str
    bn_eps: float
    hidden: int
    cout: int
    macs_per_channel: int = 0  # expansion + depthwise + projection MACs of one hidden channel
    residual: bool = False  # the block's output is block_in + BN(projection)
    out: str = ""  # the block's output tensor (after the residual add, if any)


@dataclass
class ReconstructReport(Reductions):
    out_dir: Path
    allocation: str  # "obs" | "uniform"
    reconstructed: bool
    target: float | None  # the chosen MAC-reduction target ("obs") or hidden ratio ("uniform")
    hidden_before: dict[str, int]
    hidden_after: dict[str, int]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    recall: dict[str, Any] | None  # the chosen model's figures on the gallery sample
    tried: list[dict[str, Any]] = field(default_factory=list)  # every candidate measured
    recall_budget: float | None = None
    seconds: float = 0.0
    statistics_images: int = 0  # photos the channel order and the re-fits were computed on

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``pruning`` entry."""
        out = {"method": "reconstruct",
               "mode": "reconstruct, recall budget" if self.recall_budget is not None else "reconstruct, fixed target",
               "allocation": self.allocation, "reconstructed": self.reconstructed,
               "target": self.target, "recall_budget_points": self.recall_budget, "budget": self.recall_budget,
               "ratios": {k: round(1 - v / self.hidden_before[k], 4) for k, v in self.hidden_after.items()
                          if v < self.hidden_before[k]},
               "params_before": self.params_before, "params_after": self.params_after,
               "macs_before": self.macs_before, "macs_after": self.macs_after,
               "params_reduction": round(self.params_reduction, 4), "macs_reduction": round(self.macs_reduction, 4),
               "hidden_channels": {k: [self.hidden_before[k], v] for k, v in self.hidden_after.items()},
               "recall": self.recall, "tried": self.tried, "seconds": round(self.seconds, 1),
               "statistics_images": self.statistics_images}
        if self.recall and self.recall.get("cosine_mean") is not None:
            out["fidelity"] = self.recall["cosine_mean"]  # mean cosine vs FP32 on the recall sample
        return out


# ----------------------------------------------------------------------------- pattern

def find_blocks(model: PaddleModel) -> list[Block]:
    """Every inverted-residual block whose hidden channels are private to it, in program order."""
    blk = model.program.global_block()
    ops = list(blk.ops)
    producer: dict[str, Any] = {}
    readers: dict[str, list[Any]] = {}
    for op in ops:
        for n in op.input_arg_names:
            readers.setdefault(n, []).append(op)
        for n in op.output_arg_names:
            if op.type != "batch_norm" or n in op.output("Y"):  # BN also "writes" its running stats
                producer.setdefault(n, op)

    def only_reader(var: str, op: Any) -> bool:
        return [o for o in readers.get(var, [])] == [op]

    def out1(op: Any) -> str:
        key = {"conv2d": "Output", "depthwise_conv2d": "Output", "batch_norm": "Y"}.get(op.type, "Out")
        return op.output(key)[0]

    def in1(op: Any) -> str:
        key = {"conv2d": "Input", "depthwise_conv2d": "Input"}.get(op.type, "X")
        return op.input(key)[0]

    def step_back(op: Any, types: frozenset[str] | set[str]) -> Any:
        src = producer.get(in1(op))
        if src is None or src.type not in types or not only_reader(out1(src), op):
            return None
        return src

    def pointwise(op: Any) -> bool:
        if op.type != "conv2d" or op.attr("groups") != 1:
            return False
        shape = blk.var(op.input("Filter")[0]).shape
        return len(shape) == 4 and shape[2] == 1 and shape[3] == 1

    found: list[tuple[int, Block]] = []
    pos = {id(op): i for i, op in enumerate(ops)}
    for proj in ops:
        if not pointwise(proj):
            continue
        a2 = step_back(proj, ACTIVATIONS)
        bn2 = a2 is not None and step_back(a2, {"batch_norm"})
        dw = bn2 and step_back(bn2, {"depthwise_conv2d", "conv2d"})
        if not dw or dw.attr("groups") <= 1:
            continue
        a1 = step_back(dw, ACTIVATIONS)
        bn1 = a1 is not None and step_back(a1, {"batch_norm"})
        exp = bn1 and step_back(bn1, {"conv2d"})
        if not exp or not pointwise(exp):
            continue
        rd = readers.get(out1(proj), [])
        if len(rd) != 1 or rd[0].type != "batch_norm":
            continue
        bn3 = rd[0]
        hidden = int(blk.var(exp.input("Filter")[0]).shape[0])
        if dw.attr("groups") != hidden:
            continue
        after = readers.get(out1(bn3), [])
        residual = len(after) == 1 and after[0].type == "elementwise_add" and \
            exp.input("Input")[0] in after[0].input_arg_names
        found.append((pos[id(exp)], Block(
            expand_w=exp.input("Filter")[0], dw_w=dw.input("Filter")[0], proj_w=proj.input("Filter")[0],
            block_in=exp.input("Input")[0], proj_in=proj.input("Input")[0], proj_out=out1(proj),
            bn_mean=bn3.input("Mean")[0], bn_var=bn3.input("Variance")[0], bn_scale=bn3.input("Scale")[0],
            bn_eps=float(bn3.attr("epsilon")), hidden=hidden, cout=int(blk.var(proj.input("Filter")[0]).shape[0]),
            residual=residual, out=after[0].output("Out")[0] if residual else out1(bn3))))
    return [b for _, b in sorted(found, key=lambda t: t[0])]


def _check_collections(model: PaddleModel, blocks: Sequence[Block]) -> list[Block]:
    """Keep the blocks for which PaddleSlim's pruning collection is exactly the block's own tensors
    (expansion out-channels, both BNs, depthwise, projection in-channels)."""
    from paddleslim.core import GraphWrapper
    from paddleslim.prune.collections import PruningCollections

    from .prune import _fast_slim

    ok = []
    with _fast_slim():
        graph = GraphWrapper(model.program)
        for b in blocks:
            cols = PruningCollections().create_pruning_collections([b.expand_w], graph)
            details = [(d.name, d.axis) for c in cols for d in c.all_pruning_details()]
            convs = {(n, a) for n, a in details if len(graph.var(n).shape()) == 4}
            if convs == {(b.expand_w, 0), (b.dw_w, 0), (b.proj_w, 1)}:
                ok.append(b)
            else:
                _log.info("block at %s skipped: PaddleSlim's collection is %s", b.expand_w, sorted(convs))
    return ok


def blocks_of(model: PaddleModel, input_shapes: Mapping[str, Sequence[int]]) -> list[Block]:
    """:func:`find_blocks`, checked against PaddleSlim, with each block's MACs per hidden channel;
    raises :class:`NoInvertedResidual` when there is none."""
    from .paddle_model import _infer_shapes

    blocks = _check_collections(model, find_blocks(model))
    if not blocks:
        raise NoInvertedResidual(
            "no inverted-residual block (1x1 conv -> BN -> act -> depthwise -> BN -> act -> 1x1 conv -> BN, "
            "hidden channels read by nothing else) in this model: prune-method 'reconstruct' does not apply")
    blk = _infer_shapes(model.program, input_shapes).global_block()
    for b in blocks:
        cin = int(blk.var(b.expand_w).shape[1])
        h1 = int(np.prod(blk.var(b.block_in).shape[2:]))
        h2 = int(np.prod(blk.var(b.proj_in).shape[2:]))
        kdw = int(np.prod(blk.var(b.dw_w).shape[2:]))
        b.macs_per_channel = cin * h1 + kdw * h2 + b.cout * h2
    return blocks


# ----------------------------------------------------------------------------- running pieces of the graph

def _run(model: PaddleModel, program: Any, feeds: Mapping[str, np.ndarray], fetch: Sequence[str]) -> list[np.ndarray]:
    """Run the part of ``program`` from ``feeds`` (any tensors, graph cut there) to ``fetch``."""
    paddle = _paddle()
    with paddle.static.scope_guard(model.scope):
        out = model.exe.run(program, feed=dict(feeds), fetch_list=list(fetch), return_numpy=False, use_prune=True)
    return [np.array(o) for o in out]


def _positions(n_img: int, hw: int, k: int, seed: int) -> list[np.ndarray]:
    """Sampled flat positions, uniformly. (Drawing them in proportion to activation energy, to
    weigh labels above white background, measured worse: it concentrates the statistics and the
    plan then empties the last blocks: 15 recall points lost at 25% MACs instead of 1.)"""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(hw, size=min(k, hw), replace=False)) for _ in range(n_img)]


def _rows(t: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[1, C, H, W] -> [len(idx), C] at flat spatial positions idx (float64)."""
    return t.reshape(t.shape[1], -1)[:, idx].T.astype(np.float64)


@dataclass
class Tail:
    """The 1x1 conv (+ BN) reading the last block's output (MobileNetV2's 320 -> 1280): re-fitted
    after the blocks, it absorbs what error the blocks leave."""

    w: str
    x: str
    y: str
    bn_mean: str
    cin: int
    cout: int


def find_tail(model: PaddleModel, last: Block) -> Tail | None:
    blk = model.program.global_block()
    readers = [op for op in blk.ops if last.out in op.input_arg_names]
    if len(readers) != 1 or readers[0].type != "conv2d" or readers[0].attr("groups") != 1:
        return None
    conv = readers[0]
    shape = blk.var(conv.input("Filter")[0]).shape
    bns = [op for op in blk.ops if conv.output("Output")[0] in op.input_arg_names]
    if len(shape) != 4 or list(shape[2:]) != [1, 1] or len(bns) != 1 or bns[0].type != "batch_norm":
        return None
    return Tail(conv.input("Filter")[0], last.out, conv.output("Output")[0], bns[0].input("Mean")[0],
                int(shape[1]), int(shape[0]))


@dataclass
class _Stats:
    """FP32-model statistics of one block (or the tail) on the calibration images."""

    cov: np.ndarray | None  # E[[x,1][x,1]^T] (hidden+1)^2
    y: list[np.ndarray]  # per image: projection output at the sampled positions [k, cout]
    pos: list[np.ndarray]
    scale: np.ndarray | None  # the next BN's per-channel scale gamma / sqrt(var + eps)
    skip: list[np.ndarray] | None = None  # residual blocks: the block input at the same positions


def collect_stats(model: PaddleModel, blocks: Sequence[Block], feeds: Sequence[Mapping[str, np.ndarray]],
                  positions: int = POSITIONS, seed: int = 0, tail: Tail | None = None) -> list[_Stats]:
    """Per block (then the tail, if given): FP32 statistics at sampled positions."""
    fetch: list[str] = []
    for b in blocks:
        fetch += [b.proj_in, b.proj_out] + ([b.block_in] if b.residual else [])
    if tail is not None:
        fetch.append(tail.y)
    at = {n: i for i, n in enumerate(fetch)}
    acc = [np.zeros((b.hidden + 1, b.hidden + 1)) for b in blocks]
    ys: list[list[np.ndarray]] = [[] for _ in range(len(blocks) + 1)]
    pos: list[list[np.ndarray]] = [[] for _ in range(len(blocks) + 1)]
    skips: list[list[np.ndarray]] = [[] for _ in blocks]
    n = [0] * len(blocks)
    for i, f in enumerate(feeds):
        outs = _run(model, model.program, f, fetch)
        for j, b in enumerate(blocks):
            x, y = outs[at[b.proj_in]], outs[at[b.proj_out]]
            hw = int(np.prod(x.shape[2:]))
            idx = _positions(1, hw, positions, seed * 100003 + i * 131 + j)[0]
            xa = np.concatenate([_rows(x, idx), np.ones((len(idx), 1))], 1)
            acc[j] += xa.T @ xa
            n[j] += len(idx)
            ys[j].append(_rows(y, idx))
            pos[j].append(idx)
            if b.residual:
                skips[j].append(_rows(outs[at[b.block_in]], idx))
        if tail is not None:
            y = outs[at[tail.y]]
            idx = _positions(1, int(np.prod(y.shape[2:])), positions, seed * 100003 + i * 131 + 9999)[0]
            ys[-1].append(_rows(y, idx))
            pos[-1].append(idx)
    stats = []
    for j, b in enumerate(blocks):
        gamma, var = model.get_param(b.bn_scale), model.get_param(b.bn_var)
        stats.append(_Stats(acc[j] / max(n[j], 1), ys[j], pos[j],
                            (gamma / np.sqrt(var + b.bn_eps)).astype(np.float64), skips[j] if b.residual else None))
    if tail is not None:
        stats.append(_Stats(None, ys[-1], pos[-1], None))
    return stats


# ----------------------------------------------------------------------------- channel order

def obs_order(w: np.ndarray, cov: np.ndarray, scale: np.ndarray, max_remove: int,
              ridge: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy OBS removal order of input channels of a linear map ``y = W x`` (+ intercept).

    ``w`` [cout, hidden]; ``cov`` the (hidden+1)^2 second moment of [x, 1]; ``scale`` weights the
    output rows. Returns (order of the first ``max_remove`` removed channels, the relative output
    error added by each removal, with optimal compensation).
    """
    h = w.shape[1]
    ridge = RIDGE if ridge is None else ridge
    hmat = cov + ridge * np.mean(np.diag(cov)) * np.eye(h + 1)
    hinv = np.linalg.inv(hmat)
    wa = np.concatenate([w.astype(np.float64), np.zeros((w.shape[0], 1))], 1) * scale[:, None]
    energy = float(np.einsum("oi,ij,oj->", wa, cov, wa)) or 1.0
    alive = np.ones(h + 1, bool)
    alive[h] = False  # the intercept is never removed
    order, costs = [], []
    for _ in range(min(max_remove, h - 1)):
        d = np.diag(hinv)
        cost = np.where(alive, (wa ** 2).sum(0) / np.maximum(d, 1e-30), np.inf)
        c = int(np.argmin(cost))
        order.append(c)
        costs.append(float(cost[c]) / energy)
        wa -= np.outer(wa[:, c], hinv[c]) / hinv[c, c]
        hinv -= np.outer(hinv[:, c], hinv[c]) / hinv[c, c]
        alive[c] = False
    return np.asarray(order, np.int64), np.asarray(costs)


@dataclass
class Plan:
    """Per block: the OBS removal order and its error curve; the global pruning path."""

    blocks: list[Block]
    orders: list[np.ndarray]
    costs: list[np.ndarray]
    path: list[int] = field(default_factory=list)  # block index of each successive removal unit

    def counts_for_macs(self, target: float, total_macs: int) -> list[int]:
        """Hidden channels removed per block for a MAC reduction of ``target`` (a path prefix)."""
        counts = [0] * len(self.blocks)
        saved = 0
        for j in self.path:
            if saved >= target * total_macs:
                break
            counts[j] += UNIT
            saved += UNIT * self.blocks[j].macs_per_channel
        return counts

    def counts_uniform(self, ratio: float) -> list[int]:
        return [min(round(b.hidden * ratio / UNIT) * UNIT, int(b.hidden * MAX_RATIO) // UNIT * UNIT,
                    len(o) // UNIT * UNIT) for b, o in zip(self.blocks, self.orders)]


def make_plan(model: PaddleModel, blocks: Sequence[Block], stats: Sequence[_Stats],
              max_ratio: float = MAX_RATIO) -> Plan:
    """OBS orders and error curves of every block (up to ``max_ratio`` of its hidden channels)
    and the global pruning path over them."""
    orders, costs = [], []
    for b, s in zip(blocks, stats):
        w = model.get_param(b.proj_w).reshape(b.cout, b.hidden)
        o, c = obs_order(w, s.cov, s.scale, int(b.hidden * max_ratio))
        orders.append(o)
        costs.append(c)
    plan = Plan(list(blocks), orders, costs)
    # global greedy: the next unit of 8 channels with the least relative error per MAC saved
    heap: list[tuple[float, int, int]] = []

    def push(j: int, unit: int) -> None:
        lo, hi = unit * UNIT, (unit + 1) * UNIT
        if hi <= len(costs[j]) and blocks[j].hidden - hi >= UNIT:
            heapq.heappush(heap, (float(costs[j][lo:hi].sum()) / (UNIT * blocks[j].macs_per_channel), j, unit))

    for j in range(len(blocks)):
        push(j, 0)
    while heap:
        _, j, unit = heapq.heappop(heap)
        plan.path.append(j)
        push(j, unit + 1)
    return plan


# ----------------------------------------------------------------------------- surgery + reconstruction

def _order_criterion(orders: Mapping[str, np.ndarray]) -> Any:
    """A PaddleSlim criterion: channels removed earlier in the OBS order score lower (pruned first)."""

    def criterion(group: Any, values: Any, graph: Any) -> dict[str, dict[int, np.ndarray]]:
        name, axis = group.master["name"], group.master["axis"]
        h = int(graph.var(name).shape()[axis])
        score = np.arange(h, dtype=np.float64) + 2.0 * h
        o = orders[name]
        score[o] = np.arange(len(o), dtype=np.float64)
        return {name: {axis: score}}

    return criterion


def _ridge(xtx: np.ndarray, xty: np.ndarray, ridge: float, prior: np.ndarray) -> np.ndarray:
    """argmin ||Y - [X 1] W||^2 + lam ||W_x - prior||^2, the intercept (last row) unpenalised.

    Shrinking towards the original weights, not towards zero: directions the calibration
    activations hardly excite (late blocks: 100 positions per image for 960 channels) keep the
    trained weights instead of being zeroed, which held-out images would pay for."""
    k = xtx.shape[0] - 1
    reg = ridge * float(np.mean(np.diag(xtx)[:k])) * np.eye(k + 1)
    reg[k, k] = 0.0
    p = np.concatenate([prior.astype(np.float64), np.zeros((1, prior.shape[1]))], 0)
    return np.linalg.solve(xtx + reg, xty + reg @ p)


def apply(model_dir: str | Path, out_dir: str | Path, plan: Plan, counts: Sequence[int],
          calib_feeds: Sequence[Mapping[str, np.ndarray]], stats: Sequence[_Stats] | None, *,
          ridge: float | None = None, residual_fix: bool = False) -> Path:
    """Prune ``counts[j]`` hidden channels of each block (PaddleSlim), reconstruct the projections
    by least squares when ``stats`` is given, save to ``out_dir``."""
    from .prune import _dedup_pruner, _fast_slim

    paddle = _paddle()
    ridge = RIDGE if ridge is None else ridge
    model = load_model(model_dir)
    blocks = plan.blocks
    sel = [(b, n, o) for b, n, o in zip(blocks, counts, plan.orders) if n > 0]
    program = model.program
    if sel:
        pruner = _dedup_pruner()
        pruner.criterion = _order_criterion({b.expand_w: o for b, _, o in sel})
        with _fast_slim(), model.guard():
            program, _, _ = pruner.prune(model.program, model.scope, params=[b.expand_w for b, _, _ in sel],
                                         ratios=[n / b.hidden for b, n, _ in sel], place=paddle.CPUPlace(),
                                         only_graph=False, param_backup=False)
    for b, n in zip(blocks, counts):
        got = model.get_param(b.proj_w).shape[1]
        if got != b.hidden - n:
            raise EdgeShituError(f"PaddleSlim left {got} input channels in {b.proj_w}, expected {b.hidden - n}")
    if stats is not None:
        tail = find_tail(model, blocks[-1]) if len(stats) > len(blocks) else None
        state = [_run(model, program, f, [blocks[0].block_in])[0] for f in calib_feeds]
        for j, (b, s) in enumerate(zip(blocks, stats)):
            k = b.hidden - counts[j]
            nxt = blocks[j + 1].block_in if j + 1 < len(blocks) else (tail.x if tail is not None else None)
            if counts[j] == 0 and not REFIT_UNPRUNED:
                if nxt is not None:
                    state = [_run(model, program, {b.block_in: st}, [nxt])[0] for st in state]
                continue
            xtx = np.zeros((k + 1, k + 1))
            xty = np.zeros((k + 1, b.cout))
            for i, st in enumerate(state):
                x = _run(model, program, {b.block_in: st}, [b.proj_in])[0]
                xa = np.concatenate([_rows(x, s.pos[i]), np.ones((len(s.pos[i]), 1))], 1)
                y = s.y[i]
                if s.skip is not None and residual_fix:  # also undo the error the skip path carries
                    safe = np.where(np.abs(s.scale) > 1e-6, s.scale, np.inf)
                    y = y + (s.skip[i] - _rows(st, s.pos[i])) / safe
                xtx += xa.T @ xa
                xty += xa.T @ y
            sol = _ridge(xtx, xty, ridge, model.get_param(b.proj_w).reshape(b.cout, k).T)
            model.set_param(b.proj_w, sol[:k].T.reshape(b.cout, k, 1, 1).astype(np.float32))
            mean = model.get_param(b.bn_mean).astype(np.float64)
            model.set_param(b.bn_mean, (mean - sol[k]).astype(np.float32))
            if nxt is not None:
                state = [_run(model, program, {b.block_in: st}, [nxt])[0] for st in state]
        if tail is not None:
            s = stats[-1]
            xtx = np.zeros((tail.cin + 1, tail.cin + 1))
            xty = np.zeros((tail.cin + 1, tail.cout))
            for i, st in enumerate(state):
                xa = np.concatenate([_rows(st, s.pos[i]), np.ones((len(s.pos[i]), 1))], 1)
                xtx += xa.T @ xa
                xty += xa.T @ s.y[i]
            sol = _ridge(xtx, xty, ridge, model.get_param(tail.w).reshape(tail.cout, tail.cin).T)
            model.set_param(tail.w, sol[:-1].T.reshape(tail.cout, tail.cin, 1, 1).astype(np.float32))
            mean = model.get_param(tail.bn_mean).astype(np.float64)
            model.set_param(tail.bn_mean, (mean - sol[-1]).astype(np.float32))
    final = PaddleModel(program, model.feed_names, [program.global_block().var(n) for n in model.fetch_names],
                        model.scope, model.exe, model.model_dir, model.model_path, model.params_path, model.side_files)
    save_model(final, out_dir)
    for name in CARRIED_FILES:  # save_model carries Paddle's side files, not the extractor's preprocessing
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, Path(out_dir) / name)
    return Path(out_dir)


# ----------------------------------------------------------------------------- recall

class RecallProbe:
    """Leave-one-out recall@1 of a model's features on a labelled gallery sample (float search),
    against the FP32 model's float search (:mod:`.task_gate`'s reference).

    ``fp32_gallery``: the drop counts the worse of the pruned model on both sides and its queries
    against the FP32 model's gallery features. ``convert`` embeds a pruned bundle's gallery with the
    pruned FP32 program, so it passes False: the drop is the pruned model's on both sides."""

    def __init__(self, ref_dir: str | Path, images: Sequence[np.ndarray], labels: Sequence[str],
                 threads: int = 2, pre: Any = None, fp32_gallery: bool = True) -> None:
        from edge_shitu.evaluate import float_loo_recall
        from edge_shitu.gallery_build_embed import rec_preprocess_for

        self.images, self.labels, self.threads = list(images), list(labels), threads
        self.fp32_gallery = fp32_gallery
        self.pre = pre or rec_preprocess_for(ref_dir)  # the FP32 model's, for every variant
        self.ref_feats = self.embed(ref_dir)
        self.reference = float_loo_recall(self.ref_feats, self.labels)

    def embed(self, model_dir: str | Path) -> np.ndarray:
        from edge_shitu.gallery_build_embed import embed_images

        return embed_images(model_dir, "paddle", self.pre, self.images, self.threads)

    def measure(self, model_dir: str | Path) -> dict[str, Any]:
        return self.figures(self.embed(model_dir))

    def figures(self, feats: np.ndarray) -> dict[str, Any]:
        from edge_shitu.evaluate import float_loo_recall, float_loo_topk, recall_at_1

        own = float_loo_recall(feats, self.labels)
        cross = recall_at_1(float_loo_topk(feats, self.labels, 1, gallery=self.ref_feats), self.labels)
        drop = 100.0 * (self.reference - (min(own, cross) if self.fp32_gallery else own))
        return {"cosine_mean": round(mean_row_cosine(self.ref_feats, feats), 6),
                "reference_recall_at_1": round(self.reference, 6), "recall_at_1": round(own, 6),
                "recall_at_1_fp32_gallery": round(cross, 6), "drop_points": round(drop, 4),
                "photos": len(self.labels), "search": "float (cosine), leave-one-out",
                "drop_of": "min(both sides pruned, FP32 gallery)" if self.fp32_gallery else "both sides pruned"}


# ----------------------------------------------------------------------------- entry point

def prune_reconstruct(model_dir: str | Path, out_dir: str | Path, calib_feeds: Sequence[Mapping[str, np.ndarray]], *,
                      gallery_images: Sequence[np.ndarray] | None = None, gallery_labels: Sequence[str] | None = None,
                      recall_budget: float = 1.0, target: float | None = None, allocation: str = "obs",
                      reconstruct: bool = True, targets: Sequence[float] = DEFAULT_TARGETS,
                      positions: int = POSITIONS, threads: int = 2, progress: Any = None,
                      probe: RecallProbe | None = None, preprocess: Any = None,
                      fp32_gallery: bool = True) -> ReconstructReport:
    """Prune ``model_dir`` into ``out_dir`` (see the module docstring).

    ``target``: a fixed MAC reduction (``allocation="obs"``) or hidden-channel ratio
    (``"uniform"``), no search. Otherwise the largest of ``targets`` whose recall@1 drop on
    ``gallery_images`` / ``gallery_labels`` is within ``recall_budget`` points (nothing is pruned
    when none is; ``fp32_gallery``: see :class:`RecallProbe`). Raises :class:`NoInvertedResidual`
    for a model without the pattern.
    """
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    if allocation not in ("obs", "uniform"):
        raise EdgeShituError(f"allocation must be 'obs' or 'uniform', got {allocation!r}")
    if not calib_feeds:
        raise EdgeShituError("pruning with reconstruction needs calibration images: pass a few real photos")
    if target is None and (gallery_images is None or gallery_labels is None) and probe is None:
        raise EdgeShituError("the recall budget needs a labelled gallery (or give a fixed target)")
    model = load_model(model_dir)
    shapes = {n: [1, *np.asarray(calib_feeds[0][n]).shape[1:]] for n in model.feed_names if n in calib_feeds[0]}
    blocks = blocks_of(model, shapes)
    macs_before, params_before = count_flops(model, shapes).macs, count_params(model)
    say(f"prune-reconstruct: {len(blocks)} inverted-residual blocks; statistics on {len(calib_feeds)} images")
    stats = collect_stats(model, blocks, calib_feeds, positions, tail=find_tail(model, blocks[-1]))
    plan = make_plan(model, blocks, stats)

    def counts_of(t: float) -> list[int]:
        return plan.counts_for_macs(t, macs_before) if allocation == "obs" else plan.counts_uniform(t)

    out = Path(out_dir)
    tried: list[dict[str, Any]] = []
    recall = None
    with tempfile.TemporaryDirectory(prefix=".prune-rec-", dir=out.parent if out.parent.exists() else None) as work:
        if target is not None:
            chosen = float(target)
        else:
            if probe is None:
                say(f"prune-reconstruct: FP32 recall on {len(gallery_labels or [])} gallery photos")
                probe = RecallProbe(model_dir, gallery_images or [], gallery_labels or [], threads, preprocess,
                                    fp32_gallery)
            cands = sorted(targets)
            results: dict[float, dict[str, Any]] = {}

            def measure(t: float) -> bool:
                d = Path(work) / f"t{t:.3f}"
                apply(model_dir, d, plan, counts_of(t), calib_feeds, stats if reconstruct else None)
                fig = probe.measure(d)
                fig["target"] = t
                fig["macs_reduction"] = round(1 - count_flops(load_model(d), shapes).macs / macs_before, 4)
                results[t] = fig
                tried.append(fig)
                say(f"prune-reconstruct: {allocation} {t:.2f} -> {fig['macs_reduction']:.1%} fewer MACs, recall@1 drop "
                    f"{fig['drop_points']:.2f} points")
                return fig["drop_points"] <= recall_budget + 1e-9

            # bisection over the sorted candidates (drop grows with the target, up to noise)
            lo, hi = -1, len(cands)  # cands[lo] passes (or none), cands[hi] fails (or none)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if measure(cands[mid]):
                    lo = mid
                else:
                    hi = mid
            chosen = cands[lo] if lo >= 0 else 0.0
            recall = results.get(chosen)
        counts = counts_of(chosen) if chosen > 0 else [0] * len(blocks)
        apply(model_dir, out, plan, counts, calib_feeds, stats if reconstruct and any(counts) else None)
    pruned = load_model(out)
    return ReconstructReport(
        out, allocation, reconstruct, chosen, {b.expand_w: b.hidden for b in blocks},
        {b.expand_w: b.hidden - n for b, n in zip(blocks, counts)}, macs_before, count_flops(pruned, shapes).macs,
        params_before, count_params(pruned), recall, tried, recall_budget if target is None else None,
        time.perf_counter() - t0, len(calib_feeds))


# photos the statistics are read on in `convert`: its calibration photos, then gallery photos spread
# over the gallery (no labels used: the re-fit matches FP32 outputs). MobileNetV2 at 25% fewer MACs,
# recall@1 drop on all 1068 drink photos, pruned model on both sides, by statistics photos:
# 48: 1.31, 64: 1.31, 96: 0.85, 128: 0.66, 160: 1.03, 240: 0.56 points (docs/benchmarks.md)
RECONSTRUCT_IMAGES = 240


def statistics_feeds(calib: Sequence[Mapping[str, np.ndarray]], images: Sequence[np.ndarray], preprocess: Any,
                     n: int = RECONSTRUCT_IMAGES) -> list[Mapping[str, np.ndarray]]:
    """``calib`` topped up to ``n`` feeds with ``images`` spread evenly (each at most once), made
    by ``preprocess`` like the calibration feeds; just ``calib`` when they cannot be matched."""
    feeds = list(calib)
    if preprocess is None or not feeds or len(feeds[0]) != 1 or len(feeds) >= n or not len(images):
        return feeds
    name, like = next(iter(feeds[0].items()))
    picks = dict.fromkeys(np.linspace(0, len(images) - 1, min(n - len(feeds), len(images))).round().astype(int))
    extra = [{name: np.asarray(preprocess.batch([images[int(i)]]), np.float32)} for i in picks]
    if extra and extra[0][name].shape != np.asarray(like).shape:
        return feeds
    return feeds + extra


def for_convert(model_dir: Path, kind: str, calib: Sequence[Mapping[str, np.ndarray]], work: Path, opts: Any,
                progress: Any, preprocess: Any = None) -> ReconstructReport | None:
    """``convert_model``'s ``--prune-method reconstruct``: the report, or None (with one warning
    line) where the method does not apply and the sensitivity method runs instead: a detector,
    no labelled gallery (``convert-model``), or a model without inverted-residual blocks.
    ``preprocess``: the extractor's RecPreprocess as convert resolved it (gallery photos -> input)."""
    why = None
    if kind != "rec":
        why = "applies to the extractor only (its budget is the gallery's recall)"
    elif not opts.prune_gallery:
        why = "needs a labelled gallery for its recall budget (convert, not convert-model)"
    if why is None:
        from .task_gate import sample_rows, usable

        images, labels = opts.prune_gallery
        # the recall gate's own sample: a smaller one under-states the drop (fewer distractors; the
        # 25% MobileNetV2 cut lost 0.75 points on 399 photos, 1.3-3.9 on all 1068)
        rows = sample_rows(labels, int(getattr(opts, "recall_sample", 2000)))
        if not usable([labels[i] for i in rows]):
            why = "needs a gallery with enough labels holding 2+ photos for its recall budget"
    if why is None:
        progress(f"{kind}: pruning with least-squares reconstruction (recall budget {opts.prune_recall_budget} "
                 f"points on {len(rows)} gallery photos)")
        try:
            return prune_reconstruct(model_dir, work / f"{kind}_pruned", statistics_feeds(calib, images, preprocess),
                                     gallery_images=[images[i] for i in rows], gallery_labels=[labels[i] for i in rows],
                                     recall_budget=opts.prune_recall_budget, progress=progress,
                                     preprocess=preprocess, fp32_gallery=False)  # convert: pruned gallery
        except NoInvertedResidual as e:
            why = str(e).split(": prune-method")[0]
    msg = f"{kind}: prune-method reconstruct {why}: falling back to the sensitivity method"
    progress(msg)
    opts.warnings.append(msg)
    return None


__all__ = ["Block", "NoInvertedResidual", "Plan", "RecallProbe", "ReconstructReport", "apply", "blocks_of",
           "collect_stats", "find_blocks", "for_convert", "make_plan", "obs_order", "prune_reconstruct",
           "statistics_feeds"]
