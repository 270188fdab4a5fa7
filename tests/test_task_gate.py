"""The extractor's recall gate (converters/task_gate.py) on clustered features: it passes a model
that keeps the neighbours, fails one that loses them, and samples whole labels."""

from __future__ import annotations

import numpy as np

from edge_shitu.converters.task_gate import MIN_QUERIES, TaskGate, choose_threshold, sample_rows, usable

SETTINGS = {"bits": 256, "method": "itq", "rerank": 10}


def _clusters(n_labels: int = 40, per: int = 4, dim: int = 512, spread: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, dim))
    feats = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(n_labels * per, dim))
    labels = [f"c{i}" for i in range(n_labels) for _ in range(per)]
    return feats.astype(np.float32), labels


def test_same_features_pass_with_no_drop() -> None:
    feats, labels = _clusters()
    gate = TaskGate(feats, feats, labels, SETTINGS, budget_points=1.0)
    fig = gate.measure(feats)
    assert fig.queries == len(labels) and fig.photos == len(labels)
    assert fig.reference_recall_at_1 > 0.95  # the clusters are separable: the gate has something to lose
    assert abs(fig.drop_points) <= 1.0 and fig.passed
    assert fig.to_dict()["passed"] is True and "re-rank 10" in fig.search


def test_noisy_queries_fail_the_budget() -> None:
    feats, labels = _clusters()
    noisy = feats + 6.0 * np.random.default_rng(1).normal(size=feats.shape).astype(np.float32)
    fig = TaskGate(feats, feats, labels, SETTINGS, budget_points=1.0).measure(noisy)
    assert fig.drop_points > 5 and not fig.passed
    assert fig.recall_at_1 < fig.reference_recall_at_1


def test_a_budget_is_never_finer_than_one_query_unless_zero() -> None:
    from edge_shitu.converters.task_gate import TaskFigures

    def fig(drop: float, budget: float, queries: int) -> TaskFigures:
        return TaskFigures(0.9, 0.9 + drop / 100, drop, budget, queries, queries, "itq")

    one_of_60 = round(100 / 60, 4)
    assert fig(one_of_60, 1.0, 60).passed and fig(one_of_60, 1.0, 60).to_dict()["resolution_points"] == one_of_60
    assert not fig(2 * one_of_60, 1.0, 60).passed  # two queries are a measurement
    assert not fig(one_of_60, 0.0, 60).passed  # a zero budget demands no change at all
    assert not fig(1.5, 1.0, 1000).passed  # large galleries: the budget as given


def test_sample_keeps_whole_labels_and_small_galleries_whole() -> None:
    _, labels = _clusters(n_labels=300, per=5)
    assert len(sample_rows(labels, 2000)) == 1500  # small enough: every photo
    rows = sample_rows(labels, 400, seed=3)
    assert len(rows) == 400
    picked = np.asarray(labels)[rows]
    for lab in set(picked):  # every sampled label keeps all of its photos
        assert (picked == lab).sum() == 5
    assert np.array_equal(rows, sample_rows(labels, 400, seed=3))  # seeded


def test_too_few_pairs_is_not_usable() -> None:
    labels = [f"c{i}" for i in range(100)] + ["a", "a"]
    assert not usable(labels)
    assert usable([f"c{i // 2}" for i in range(2 * MIN_QUERIES)])


def test_threshold_separates_right_from_wrong_matches() -> None:
    """Clustered gallery + labels with one photo only (products the gallery cannot match): the
    chosen threshold accepts most right matches and few wrong ones, with the device's scores."""
    feats, labels = _clusters(n_labels=40, per=4, spread=0.9)
    lone, _ = _clusters(n_labels=20, per=1, seed=7)
    feats = np.concatenate([feats, lone])
    labels = labels + [f"lone{i}" for i in range(20)]
    gate = TaskGate(feats, feats, labels, SETTINGS)
    t = choose_threshold(gate.index, feats, labels, rerank=gate.rerank)
    assert t["right_matches"] > 100 and t["wrong_matches"] >= 160 + 20  # every photo's leave-label-out is wrong
    assert t["right_accepted"] >= 0.95 and t["wrong_accepted"] <= 0.2, t
    assert -1 <= t["threshold"] <= 1 and "held out" in t["chosen_by"] and -1 <= t["youden_threshold"] <= 1
