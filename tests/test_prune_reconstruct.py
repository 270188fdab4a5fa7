"""Channel pruning with least-squares reconstruction (converters/prune_reconstruct.py).

A small MobileNetV2 export (real ImageNet weights, input 96) keeps this under a minute: the
reconstruction must lower the error on images it was not fitted on, the MACs must drop by exactly
what the removed channels cost, the pruned model must still run in Paddle Inference, and a model
without the inverted-residual pattern must be refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("paddleslim")

SIZE = 96


def _images(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Smooth random colour fields with a few bright rectangles, ImageNet-normalised [1, 3, S, S]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(0, 1, (3, 6, 6))
        img = np.kron(base, np.ones((SIZE // 6, SIZE // 6)))
        for _ in range(3):
            y, x = rng.integers(0, SIZE - 24, 2)
            img[:, y:y + rng.integers(8, 24), x:x + rng.integers(8, 24)] = rng.uniform(0, 1, (3, 1, 1))
        img = img + rng.normal(0, 0.05, img.shape)
        mean = np.array([0.485, 0.456, 0.406])[:, None, None]
        std = np.array([0.229, 0.224, 0.225])[:, None, None]
        out.append({"x": ((img - mean) / std)[None].astype(np.float32)})
    return out


@pytest.fixture(scope="module")
def mnv2(mnv2_small: Path) -> Path:
    return mnv2_small


@pytest.fixture(scope="module")
def pruned(mnv2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from edge_shitu.converters import prune_reconstruct as pr
    from edge_shitu.converters.paddle_model import load_model

    model = load_model(mnv2)
    calib = _images(12, 0)
    blocks = pr.blocks_of(model, {"x": [1, 3, SIZE, SIZE]})
    stats = pr.collect_stats(model, blocks, calib, tail=pr.find_tail(model, blocks[-1]))
    plan = pr.make_plan(model, blocks, stats, max_ratio=0.3)
    counts = plan.counts_uniform(0.25)
    root = tmp_path_factory.mktemp("pruned")
    return {"blocks": blocks, "counts": counts, "model": model,
            "rec": pr.apply(mnv2, root / "rec", plan, counts, calib, stats),
            "plain": pr.apply(mnv2, root / "plain", plan, counts, calib, None)}


def test_finds_every_expansion_block(pruned: dict) -> None:
    blocks = pruned["blocks"]
    # torchvision MobileNetV2: 17 inverted residuals, the first without an expansion conv
    assert len(blocks) == 16
    assert [b.hidden for b in blocks[:3]] == [96, 144, 144] and blocks[-1].hidden == 960
    assert sum(b.residual for b in blocks) == 10  # stride 1 and unchanged width


def test_reconstruction_lowers_heldout_error(pruned: dict) -> None:
    from edge_shitu.converters import prune_reconstruct as pr
    from edge_shitu.converters.paddle_model import load_model

    ref = pruned["model"]
    last = pruned["blocks"][-1].out
    errs = {}
    for name in ("rec", "plain"):
        m = load_model(pruned[name])
        e_feat, e_last = [], []
        for f in _images(4, 99):  # not the calibration images
            a = pr._run(ref, ref.program, f, [last, ref.fetch_names[0]])
            b = pr._run(m, m.program, f, [last, m.fetch_names[0]])
            e_last.append(np.linalg.norm(a[0] - b[0]) / np.linalg.norm(a[0]))
            e_feat.append(np.linalg.norm(a[1] - b[1]) / np.linalg.norm(a[1]))
        errs[name] = (float(np.mean(e_last)), float(np.mean(e_feat)))
    assert errs["rec"][0] < 0.8 * errs["plain"][0], errs
    assert errs["rec"][1] < 0.8 * errs["plain"][1], errs


def test_macs_drop_as_planned_and_model_runs(pruned: dict, mnv2: Path) -> None:
    from edge_shitu.converters.paddle_model import count_flops, load_model
    from edge_shitu.runtimes.paddle_backend import PaddleBackend

    shapes = {"x": [1, 3, SIZE, SIZE]}
    before = count_flops(load_model(mnv2), shapes).macs
    after = count_flops(load_model(pruned["rec"]), shapes).macs
    expected = sum(n * b.macs_per_channel for b, n in zip(pruned["blocks"], pruned["counts"]))
    assert before - after == expected
    assert 0.18 < expected / before < 0.30  # 25% of the hidden channels, ~85% of the MACs are in blocks
    m = load_model(pruned["rec"])
    for b, n in zip(pruned["blocks"], pruned["counts"]):
        assert m.get_param(b.expand_w).shape[0] == b.hidden - n
        assert m.get_param(b.proj_w).shape[1] == b.hidden - n
        assert (b.hidden - n) % 8 == 0
    out = PaddleBackend(pruned["rec"], threads=1).run(_images(1, 5)[0])
    assert out[0].shape == (1, 1280) and np.isfinite(out[0]).all()


def test_obs_removes_a_redundant_channel_first() -> None:
    from edge_shitu.converters.prune_reconstruct import obs_order

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 6))
    x[:, 5] = x[:, 0] + x[:, 1]  # channel 5 carries nothing the others lack
    xa = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = rng.normal(size=(4, 6))
    order, cost = obs_order(w, xa.T @ xa / len(xa), np.ones(4), 3, ridge=1e-9)
    assert order[0] in (0, 1, 5) and cost[0] < 1e-6
    assert cost[1] > 1e-3  # the next removal loses information


def test_model_without_the_pattern_is_refused(tmp_path: Path) -> None:
    from edge_shitu.converters import prune_reconstruct as pr
    from tests.conftest import plain_conv_model

    plain_conv_model(tmp_path / "plain")
    with pytest.raises(pr.NoInvertedResidual, match="no inverted-residual block") as e:
        pr.prune_reconstruct(tmp_path / "plain", tmp_path / "out", [{"x": np.zeros((1, 3, 16, 16), np.float32)}],
                             target=0.2)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_convert_falls_back_where_the_method_does_not_apply(tmp_path: Path) -> None:
    from edge_shitu.converters.convert import ConvertOptions
    from edge_shitu.converters.prune_reconstruct import for_convert

    said: list[str] = []
    opts = ConvertOptions(prune_method="reconstruct")
    assert for_convert(tmp_path, "det", [], tmp_path, opts, said.append) is None  # the detector
    assert for_convert(tmp_path, "rec", [], tmp_path, opts, said.append) is None  # convert-model: no labels
    assert len(opts.warnings) == 2 and all("falling back to the sensitivity method" in w for w in opts.warnings)
    assert "extractor only" in opts.warnings[0] and "labelled gallery" in opts.warnings[1]
    assert said == opts.warnings


def test_statistics_feeds_tops_calibration_up_with_spread_gallery_photos() -> None:
    from types import SimpleNamespace

    from edge_shitu.converters.prune_reconstruct import statistics_feeds

    pre = SimpleNamespace(batch=lambda ims: np.stack([np.full((3, 4, 4), float(im[0, 0, 0]), np.float32)
                                                      for im in ims]))
    calib = [{"x": np.zeros((1, 3, 4, 4), np.float32)} for _ in range(3)]
    images = [np.full((8, 8, 3), i, np.uint8) for i in range(20)]
    feeds = statistics_feeds(calib, images, pre, n=8)
    assert len(feeds) == 8 and feeds[:3] == calib
    picked = [int(f["x"][0, 0, 0, 0]) for f in feeds[3:]]
    assert picked == [0, 5, 10, 14, 19]  # evenly over the gallery, first and last included
    assert len(statistics_feeds(calib, images[:2], pre, n=8)) == 5  # each photo at most once
    assert statistics_feeds(calib, images, None, n=8) == calib  # nothing to make feeds with
    assert statistics_feeds(calib, images, pre, n=2) == calib  # already enough
    odd = SimpleNamespace(batch=lambda ims: np.zeros((1, 3, 5, 5), np.float32))
    assert statistics_feeds(calib, images, odd, n=8) == calib  # feeds of another shape are not mixed in


def test_convert_indexes_a_pruned_extractors_gallery_with_its_pruned_fp32_program(mnv2: Path, tmp_path: Path) -> None:
    """The device runs (and adds gallery photos with) the pruned model, so the index must hold the
    pruned FP32 program's features; its artifacts are checked against that program (a 40% cut
    misses the fp32 file's 0.9999 cosine gate against the unpruned model by design: the task gate
    judges the cut)."""
    import json

    from edge_shitu import convert
    from edge_shitu.converters.convert import PRUNED_GALLERY, embed
    from edge_shitu.gallery_index import GalleryIndex, quantize_rows
    from edge_shitu.preprocess import RecPreprocess, load_image
    from tests.conftest import small_drink_gallery

    gal = small_drink_gallery(tmp_path / "gallery")  # 12 labels x 2 photos
    board = json.loads((Path(__file__).resolve().parent.parent / "board_configs" / "x86-64.json").read_text())
    board.update(name="x86-tflite-int8", artifacts=["tflite:int8"])
    (tmp_path / "board.json").write_text(json.dumps(board), encoding="utf-8")
    work = tmp_path / "work"
    # any cut passes a 100-point budget: the largest candidate is taken, so something is pruned (24
    # photos: one query is 4.2 points); the int8 file also gets the re-rounded-weights twin
    m = convert(mnv2, gal, str(tmp_path / "board.json"), tmp_path / "bundle", labels=gal / "drink_label.txt",
                prune_method="reconstruct", prune_recall_budget=100.0, recall_budget=100.0, work_dir=work,
                n_calib=4, n_verify=4, weight_rounding=True, progress=lambda msg: None)
    assert m["rec"]["pruning"]["method"] == "reconstruct"
    assert m["rec"]["pruning"]["macs_reduction"] >= 0.3
    int8 = m["rec"]["artifacts"][0]
    assert m["rec"]["pruning"]["artifacts_verified_against"].startswith("the pruned FP32 program")
    wr = int8["details"]["weight_rounding"]  # export_tflite's twin: measured, kept only where better
    print(f"\nweight rounding: {wr}")
    assert wr["layers"] >= 45 and 0 < wr["flipped"] < wr["weights"] and wr["error_after"] < wr["error_before"]
    assert wr["kept"] == (wr["cosine_mean_rounded"] > wr["cosine_mean_before"])
    assert int8["fidelity"]["cosine_mean"] == pytest.approx(max(wr["cosine_mean_rounded"],
                                                                wr["cosine_mean_before"]), abs=1e-5)
    assert ("weights re-rounded" in int8["details"]["int8_mode"]) == wr["kept"]
    index = GalleryIndex.open(tmp_path / "bundle" / "gallery.esidx")
    assert index.info()["meta"]["extractor_artifact"] == PRUNED_GALLERY
    pre = RecPreprocess.from_dict(m["rec"]["preprocess"])
    images = [load_image(gal / line.split("\t")[0])
              for line in (gal / "drink_label.txt").read_text(encoding="utf-8").splitlines()]
    stored = index._d.vectors  # the re-rank int8 features (format 1.1), quantized from the gallery's
    same = {name: float((quantize_rows(embed(None, None, d, pre, images)) == stored).mean())
            for name, d in (("pruned", work / "rec_pruned"), ("unpruned", mnv2))}
    print(f"\nstored int8 features equal to the re-quantized features of: {same}")
    assert same["pruned"] >= 0.999  # the same program on the same photos: the same int8 rows
    assert same["unpruned"] <= 0.95  # cosine ~0.9998 here (fitted on these photos), yet many rows differ
