"""Mixed-precision int8 (converters/int8_mixed.py) and its rung in export_tflite.to_tflite.

TensorFlow is never imported in the pytest process (Paddle Lite aborts the session after it): the
TFLite part runs in a child interpreter on a tiny Keras model and prints its figures as JSON.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_shitu.converters import export_tflite
from edge_shitu.converters.int8_mixed import (
    NSR_CAP,
    Candidate,
    Graph,
    best_of,
    channel_nsr,
    fake_quant,
    fitting,
    float_nodes_for,
    float_op_types,
    ladder_sizes,
    output_error,
    rank,
)
from edge_shitu.errors import EdgeShituError
from tests.tflite_child import run_child


def test_fake_quant_is_int8_steps_over_a_range_holding_zero():
    v = np.array([-1.0, 0.0, 0.5, 3.0], np.float32)
    q = fake_quant(v, 0.5, 2.55)  # widened to [0, 2.55]: step 0.01, -1 clips to 0, 3 to 2.55
    assert q.tolist() == pytest.approx([0.0, 0.0, 0.5, 2.55], abs=1e-6)


def test_channel_nsr_sees_small_channels_a_shared_range_wipes_out():
    rng = np.random.default_rng(0)
    even = rng.standard_normal((500, 8)).astype(np.float32)
    lopsided = even.copy()
    lopsided[:, 0] *= 500.0  # one channel sets the range: the other seven round to ~zero
    lo, hi = float(lopsided.min()), float(lopsided.max())
    assert channel_nsr(even, even.min(), even.max()) < 0.02
    assert channel_nsr(lopsided, lo, hi) > 0.7
    # the tensor-wide ratio hides it: the big channel dominates both sums
    err = fake_quant(lopsided, lo, hi) - lopsided
    assert np.sqrt((err ** 2).mean() / (lopsided ** 2).mean()) < 0.05
    dead = np.zeros((10, 3), np.float32)
    assert channel_nsr(dead, 0.0, 1.0) == 0.0  # nothing to lose
    flipped = np.full((10, 2), 1e-3, np.float32)
    assert channel_nsr(flipped, -100.0, 100.0) <= NSR_CAP


def test_rank_float_nodes_and_ladder_sizes():
    assert rank({"a": 0.1, "b": 0.5, "c": 0.5, "d": 0.0}) == ["b", "c", "a", "d"]  # ties keep graph order
    g = Graph(producer={"t1": "op1", "t2": "op2", "t3": "op3"},
              consumers={"t1": ["op2", "op3"], "t2": ["op3"], "t3": []})
    # a tensor is kept float by its producer AND every consumer; shared ops appear once
    assert float_nodes_for(["t1"], g) == ["op1", "op2", "op3"]
    assert float_nodes_for(["t3", "t2"], g) == ["op3", "op2"]
    assert float_nodes_for(["input"], Graph(consumers={"input": ["op1"]})) == ["op1"]
    assert ladder_sizes(5, (1, 2, 4, 8, 16)) == [1, 2, 4, 5]
    assert ladder_sizes(0) == []


def test_split_ops_next_to_float_nodes_are_denylisted_by_type():
    # conv -> t1 -> SPLIT_V -> (t2, t3) -> add; a SPLIT_V cannot be kept float by node name
    g = Graph(producer={"t1": "conv", "t2": "split", "t3": "split", "t4": "add"},
              consumers={"t1": ["split"], "t2": ["add"], "t3": ["add"]},
              types={"conv": "CONV_2D", "split": "SPLIT_V", "add": "ADD"})
    assert float_op_types(["conv"], g) == ["SPLIT_V"]  # it would requantize the float conv's output
    assert float_op_types(["add"], g) == []  # reading the split's outputs: no requantization upstream
    assert float_op_types(["split"], g) == ["SPLIT_V"]


def test_best_of_picks_the_lower_error_per_k():
    def c(k: int, err: float) -> Candidate:
        return Candidate(k, [], [], [], b"", err)

    picked = best_of({"minmax": [c(1, 0.9), c(4, 0.1)], "mse": [c(1, 0.5), c(4, 0.2), c(8, 0.05)]})
    assert [(label, cand.k) for label, cand in picked] == [("mse", 1), ("minmax", 4), ("mse", 8)]


def test_output_error_pairs_outputs_by_shape():
    ref = [[np.ones((1, 4, 2)), np.full((1, 4, 3), 2.0)]]
    swapped = [[np.full((1, 4, 3), 2.0), np.ones((1, 4, 2))]]  # another engine's output order
    assert output_error(swapped, ref) == 0.0
    off = [[np.full((1, 4, 3), 2.0), np.zeros((1, 4, 2))]]
    assert output_error(off, ref) == pytest.approx(0.5)  # one map entirely wrong, the other exact


# ----------------------------------------------------------------------------- the parent's rung
class _Fid(SimpleNamespace):
    pass


def _produced(tmp_path: Path) -> dict[str, Any]:
    files = []
    for k, n in ((1, 2), (4, 7)):
        f = tmp_path / f"m{k}.tflite"
        f.write_bytes(b"x" * (100 + n))
        files.append({"file": str(f), "k": k, "tensors": [f"t{i}" for i in range(k)],
                      "float_layers": [f"op{i}" for i in range(n)], "output_error": 0.1 / k})
    (tmp_path / "int8.tflite").write_bytes(b"x" * 100)
    return {"int8": str(tmp_path / "int8.tflite"), "int8_mixed": files, "int8_mixed_ranked_by": "nsr"}


def test_take_mixed_keeps_the_first_candidate_that_passes(tmp_path, monkeypatch):
    tried: list[str] = []

    def fake_verify(path: Path, *a: Any, **kw: Any) -> Any:
        tried.append(Path(path).name)
        boxes = SimpleNamespace(matched_frac=0.5 if Path(path).name == "m1.tflite" else 0.97, ref_boxes=30)
        fid = _Fid(cosine_mean=0.99, boxes=boxes)
        if boxes.matched_frac < 0.95:
            e = EdgeShituError("box match 0.5 < 0.95")
            e.fidelity = fid  # type: ignore[attr-defined]
            raise e
        return fid

    monkeypatch.setattr(export_tflite, "verify_in_process", fake_verify)
    produced = _produced(tmp_path)
    plain = _Fid(cosine_mean=0.9, boxes=SimpleNamespace(matched_frac=0.4, ref_boxes=30))
    fids: dict[str, Any] = {"int8": plain}
    rejected = {"int8": "box match 0.4 < 0.95"}
    export_tflite._take_mixed(produced, fids, rejected, "ref", [], {"box_match": 0.95}, {"type": "gfl"})
    assert tried == ["m1.tflite", "m4.tflite"]  # fewest float layers first, stops at the first pass
    assert produced["int8"].endswith("m4.tflite") and "int8" not in rejected
    rec = produced["mixed_precision"]
    assert rec["chosen"] == 4 and rec["float_layers"] == [f"op{i}" for i in range(7)] and rec["bytes"] == 107
    assert rec["all_int8_bytes"] == 100 and rec["size_ratio"] == 1.07  # the size it costs
    assert "error" in rec["latency_ms"]  # not real TFLite files: timing is informative, never fatal
    assert [r["passed"] for r in rec["candidates_tried"]] == [False, True]
    assert produced["int8_mode"].startswith("int8 with 7 layers kept float")


def test_take_mixed_leaves_int8_rejected_when_none_passes(tmp_path, monkeypatch):
    def failing(path: Path, *a: Any, **kw: Any) -> Any:
        raise EdgeShituError("box match 0.5 < 0.95")

    monkeypatch.setattr(export_tflite, "verify_in_process", failing)
    produced = _produced(tmp_path)
    before = produced["int8"]
    rejected = {"int8": "missed"}
    export_tflite._take_mixed(produced, {"int8": None}, rejected, "ref", [], {"box_match": 0.95}, {"type": "gfl"})
    assert produced["int8"] == before and list(rejected) == ["int8"]  # the 16x8 rung comes next
    assert rejected["int8"].startswith("missed; none of 2 mixed-precision candidates passed; the largest, 7 ")
    assert produced["mixed_precision"]["chosen"] is None
    assert len(produced["mixed_precision"]["candidates_tried"]) == 2


# ----------------------------------------------------------------------------- ranking a real TFLite model
CHILD = """
    from edge_shitu.converters.int8_mixed import ladder, rank, read_graph

    rng = np.random.default_rng(0)
    inp = tf.keras.Input((12, 12, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation=tf.nn.relu6, name="stem")(inp)
    x = tf.keras.layers.Conv2D(8, 1, name="hostile")(x)  # channel 0: 500x the others
    x = tf.keras.layers.Conv2D(8, 1, activation=tf.nn.relu, name="rescale")(x)  # reads the small channels
    out = tf.keras.layers.Conv2D(4, 1, name="head")(x)
    model = tf.keras.Model(inp, out)
    for layer in model.layers[1:]:
        w, b = layer.get_weights()
        layer.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5, np.zeros_like(b)])
    w, b = model.get_layer("hostile").get_weights()
    w[..., 0] *= 500.0
    model.get_layer("hostile").set_weights([w, b])
    w, b = model.get_layer("rescale").get_weights()
    w[:, :, 0, :] /= 500.0  # the big channel counts no more than the others downstream
    model.get_layer("rescale").set_weights([w, b])
    images = [rng.standard_normal((1, 12, 12, 3)).astype(np.float32) for _ in range(8)]
    calibrated = calibrate_only(model, images)
    cands, scores, base = ladder(calibrated, images[:4], ks=(1, 2, 4))
    # an extractor's shape: one op always float (its pooling block), the ladder capped in bytes
    stem = next(op for op in read_graph(calibrated).types if "stem" in op)
    capped, _, _ = ladder(calibrated, images[:4], ks=(1, 2, 4), always_float=[stem], max_bytes=1 << 20)
    tiny, _, _ = ladder(calibrated, images[:4], ks=(1, 2, 4), always_float=[stem], max_bytes=64)
    def rows(cs):
        return [{"k": c.k, "tensors": c.tensors, "float": c.float_nodes, "types": c.float_types,
                 "error": c.output_error, "bytes": len(c.model)} for c in cs]
    print(json.dumps({"ranked": rank(scores), "scores": scores, "base": base, "stem": stem,
                      "cands": rows(cands), "capped": rows(capped), "tiny": rows(tiny)}))
"""


@pytest.mark.skipif(find_spec("tensorflow") is None, reason="TensorFlow (the conversion extra) is not installed")
def test_ladder_keeps_the_hostile_tensor_float_first():
    r = run_child(CHILD)
    top = r["ranked"][0]
    assert "hostile" in top, r["ranked"]
    assert r["scores"][top] > 0.5 and all(s < 0.3 for n, s in r["scores"].items() if n != top), r["scores"]
    first = r["cands"][0]
    assert first["k"] == 1 and first["tensors"] == [top]
    # kept float: the hostile conv (its producer) and the conv reading it, nothing else
    assert len(first["float"]) == 2, first["float"]
    assert "hostile" in first["float"][0] and "rescale" in first["float"][1], first["float"]
    assert first["types"] == []  # no op type had to be denylisted wholesale
    assert first["error"] < 0.2 * r["base"], (first["error"], r["base"])
    assert [c["k"] for c in r["cands"]] == sorted(c["k"] for c in r["cands"])
    # always_float: in every candidate, never ranked; max_bytes: no file above it
    capped = r["capped"]
    assert capped and all(c["float"][0] == r["stem"] for c in capped), capped
    assert all(r["stem"] not in c["tensors"] for c in capped)
    assert r["tiny"] == []


def test_fitting_keeps_worst_tensors_whose_float_weights_fit():
    g = Graph(producer={"a": "A", "b": "B", "c": "C"}, consumers={"a": ["B"], "b": ["C"], "c": []})
    weights = {"A": 10, "B": 1000, "C": 5}
    # a tensor floats its producer and consumers: b -> B, C (1005 weights); a -> A, B (1010); c -> C (5)
    assert fitting(["b", "a", "c"], g, weights, budget=3 * 20) == ["c"]  # too dear ones skipped, cheaper kept
    assert fitting(["b", "a", "c"], g, weights, budget=3 * 1015) == ["b", "a", "c"]  # B and C paid once
    assert fitting(["c", "a"], g, weights, budget=3 * 1015 - 1) == ["c"]
    assert fitting(["c"], g, weights, budget=3 * 4) == []
    assert fitting(["c"], g, weights, budget=0, already_float=["C"]) == ["c"]  # nothing new to pay


def test_mixed_precision_option_names_every_model_or_the_kinds_asked_for():
    from edge_shitu.converters.convert import ConvertOptions, mixed_for

    assert not mixed_for(ConvertOptions(), "rec") and not mixed_for(ConvertOptions(), "det")
    every = ConvertOptions(mixed_precision=True)
    assert mixed_for(every, "det") and mixed_for(every, "rec")
    demo = ConvertOptions(mixed_precision=("rec",))  # `make demo`: the extractor only (PicoDet-S's ladder never passes)
    assert mixed_for(demo, "rec") and not mixed_for(demo, "det")
