"""The .nb int8 mixed-precision ladder (converters/nb_mixed.py): the ranking on small arrays, the
ladder's stopping rule, when export_nb runs it, and one tiny real PTQ with a skip list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_shitu.converters import nb_mixed
from edge_shitu.errors import EdgeShituError


def test_sym_fake_quant_is_exact_on_the_grid_and_clips() -> None:
    x = np.array([-1.0, -64 / 127, 0.0, 1.0, 2.0])
    q = nb_mixed.sym_fake_quant(x, 1.0)
    assert np.allclose(q[:4], x[:4])
    assert q[4] == pytest.approx(1.0)  # clipped at the range
    assert np.all(nb_mixed.sym_fake_quant(x, 0.0) == 0)  # no range: nothing survives


def test_one_huge_channel_scores_high_per_channel() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(2, 8, 6, 6)).astype(np.float32)
    outlier = clean.copy()
    outlier[:, 0] *= 1000.0  # per-tensor range set by channel 0: the other 7 round to ~zero
    a_clean, a_out = nb_mixed.activation_nsr([clean]), nb_mixed.activation_nsr([outlier])
    assert a_clean < 0.02
    assert a_out > 0.5  # 7 of 8 channels lose (nearly) everything
    # a tensor-wide ratio would hide it: channel 0 dominates both sums
    err = nb_mixed.sym_fake_quant(outlier.astype(np.float64), np.abs(outlier).max()) - outlier
    assert np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(outlier.astype(np.float64) ** 2)) < 0.02


def test_zero_channels_are_skipped_and_nsr_is_capped() -> None:
    v = np.zeros((1, 3, 4, 4))
    assert nb_mixed.channel_nsr(v, 1, 1.0) == 0.0
    v[:, 1] = 1e-6  # rounds to zero at range 1: NSR exactly 1 (capped), channel 0 and 2 skipped
    assert nb_mixed.channel_nsr(v, 1, 1.0) == pytest.approx(1.0)


def test_weight_nsr_is_per_output_channel() -> None:
    w = np.ones((4, 2, 3, 3))
    w[0] *= 1000.0  # its own scale: no harm per channel
    assert nb_mixed.weight_nsr(w, "conv2d") < 1e-9
    y = np.ones((5, 3))  # a mul/matmul Y: output channels on axis 1
    y[:, 0] *= 1000.0
    assert nb_mixed.weight_nsr(y, "mul") < 1e-9
    # at one per-tensor scale the two small output channels would round to zero
    assert nb_mixed.channel_nsr(y, 1, float(np.abs(y).max())) == pytest.approx(2 / 3)


def test_rank_worst_first_ties_in_graph_order() -> None:
    assert nb_mixed.rank({"a": 0.1, "b": 0.5, "c": 0.1, "d": 0.7}) == ["d", "b", "a", "c"]
    assert nb_mixed.op_score(0.3, 0.4) == pytest.approx(0.5)


def test_ladder_sizes_never_all_float() -> None:
    assert nb_mixed.ladder_sizes(52) == [1, 2, 4, 8, 16]
    assert nb_mixed.ladder_sizes(5) == [1, 2, 4]
    assert nb_mixed.ladder_sizes(1) == []


def test_ladder_takes_the_first_k_that_passes() -> None:
    ranked = [f"w{i}" for i in range(20)]
    calls: list[list[str]] = []

    def try_k(k: int, skip: list[str]) -> tuple[Any, dict[str, Any]]:
        calls.append(skip)
        return ("file" if k >= 4 else None), {"cosine_mean": 0.99 + k / 1000}

    res = nb_mixed.ladder(ranked, try_k)
    assert res.found == "file" and res.k == 4 and res.skipped == ["w0", "w1", "w2", "w3"]
    assert [t["k"] for t in res.tried] == [1, 2, 4] and calls[1] == ["w0", "w1"]
    none = nb_mixed.ladder(ranked, lambda k, s: (None, {}))
    assert none.found is None and [t["k"] for t in none.tried] == [1, 2, 4, 8, 16]
    d = nb_mixed.mixed_details(res.skipped, res.k, res.tried)
    assert set(d) == {"skipped", "k", "candidates_tried", "ranked_by"}


def test_ladder_runs_only_for_a_gated_extractor_int8_miss() -> None:
    from edge_shitu.converters.convert import DETAIL_KEYS
    from edge_shitu.converters.export_nb import _mixed_applies
    from edge_shitu.converters.exporter import ExportJob

    assert "mixed_precision" in DETAIL_KEYS
    feeds = [{"x": np.zeros((1, 3, 4, 4), np.float32)}]

    def job(model: str = "rec", **options: Any) -> ExportJob:
        return ExportJob(model=model, kinds=["nb:arm:int8"], sources={"paddle": Path("p"), "paddle-int8": Path("q")},
                         out_dir=Path("o"), verify_feeds=feeds, calibration=feeds, options=options)

    miss = EdgeShituError("cosine mean 0.98 < 0.995")
    miss.fidelity = object()  # type: ignore[attr-defined]  # what verify.check attaches to a gate miss
    crash = EdgeShituError("Paddle Lite opt failed (signal SIGSEGV)")
    assert _mixed_applies(job(nb_mixed=True), "int8", miss)
    assert not _mixed_applies(job(nb_mixed=False), "int8", miss)  # --allow-degraded: the plain file is kept
    assert not _mixed_applies(job(), "int8", miss)  # not asked for (convert-model / convert set it)
    assert not _mixed_applies(job(nb_mixed=True), "int8", crash)  # a crash is not a gate miss
    assert not _mixed_applies(job(nb_mixed=True), "fp32", miss)
    assert not _mixed_applies(job("det", nb_mixed=True), "int8", miss)


def _tiny_model(out: Path) -> Path:
    """x -> conv(3->8) -> relu -> conv(8->8) -> relu -> conv(8->4) -> mean: three conv2d ops."""
    import paddle

    paddle.enable_static()
    paddle.seed(0)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 3, 16, 16], "float32")
        h = paddle.static.nn.conv2d(x, 8, 3, padding=1, act="relu")
        h = paddle.static.nn.conv2d(h, 8, 3, padding=1, act="relu")
        h = paddle.static.nn.conv2d(h, 4, 1)
        y = paddle.mean(h, axis=[2, 3])
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        # the second conv's filter gets one output channel 300x the others: its int8 weight noise is
        # per channel (harmless), but its OUTPUT (the third conv's input) has one huge channel
        w = np.array(scope.find_var("conv2d_1.w_0").get_tensor())
        w[0] = np.abs(w[0]) * 300.0  # positive: its output survives the ReLU (inputs are >= 0)
        scope.find_var("conv2d_1.w_0").get_tensor().set(w, paddle.CPUPlace())
        paddle.static.save_inference_model(str(out / "inference"), [x], [y], exe, program=main)
    return out


def test_skip_list_keeps_the_worst_op_float(tmp_path: Path) -> None:
    """Real PaddleSlim PTQ of a tiny model: ranked, then re-quantized with the worst op's weight in
    ``skip_tensor_list``; exactly that op stays float."""
    pytest.importorskip("paddleslim")
    from edge_shitu.converters import quantize

    fp32 = _tiny_model(tmp_path / "fp32")
    rng = np.random.default_rng(0)
    feeds = [{"x": np.abs(rng.normal(size=(1, 3, 16, 16))).astype(np.float32)} for _ in range(4)]
    scores = nb_mixed.score_model(fp32, feeds, quantize.DEFAULT_OPS)
    assert list(scores) == ["conv2d_0.w_0", "conv2d_1.w_0", "conv2d_2.w_0"]  # graph order, named by weight
    ranked = nb_mixed.rank({n: s["score"] for n, s in scores.items()})
    assert ranked[0] == "conv2d_2.w_0", scores  # it reads the tensor with the 300x channel

    plain = quantize.quantize(fp32, tmp_path / "q", feeds, algo="abs_max")
    assert plain.n_quant_ops == 3
    assert quantize.quantized_op_weights(plain.out_dir) == dict.fromkeys(scores, True)
    mixed = quantize.quantize(fp32, tmp_path / "q1", feeds, algo="abs_max", skip_tensor_list=ranked[:1])
    assert mixed.n_quant_ops == 2
    q = quantize.quantized_op_weights(mixed.out_dir)
    assert [n for n, v in q.items() if not v] == ranked[:1]
    # the float op computes in float: its output matches FP32 far better than the all-int8 program's
    from edge_shitu.converters.paddle_model import load_model

    ref = load_model(fp32).run(feeds[0])[0]
    err = {d: float(np.abs(load_model(d).run(feeds[0])[0] - ref).max()) for d in (plain.out_dir, mixed.out_dir)}
    assert err[mixed.out_dir] < err[plain.out_dir], err
