"""Residual-stream channel equalization (converters/equalize.py).

A small MobileNetV2 export (real ImageNet weights, input 96): the equalized program must compute
the same function, its stream channel ranges must be flatter, and a model without a stream must be
left alone (nothing written).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("paddleslim")

SIZE = 96  # tests/conftest.py MNV2_SMALL


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.kron(rng.uniform(0, 1, (3, 6, 6)), np.ones((SIZE // 6, SIZE // 6)))
        img = img + rng.normal(0, 0.05, img.shape)
        out.append({"x": ((img - 0.45) / 0.225)[None].astype(np.float32)})
    return out


@pytest.fixture(scope="module")
def mnv2(mnv2_small: Path) -> Path:
    return mnv2_small


def test_equalized_model_computes_the_same_features_with_flatter_stream_ranges(mnv2: Path, tmp_path: Path) -> None:
    from edge_shitu.converters.equalize import equalize, find_streams
    from edge_shitu.converters.paddle_model import load_model, mean_row_cosine
    from edge_shitu.converters.prune_reconstruct import find_blocks

    calib, held = _feeds(6, 0), _feeds(4, 1)
    rep = equalize(mnv2, tmp_path / "eq", calib)
    assert rep is not None and rep.out_dir == tmp_path / "eq"
    # torchvision MobileNetV2: 16 expansion blocks in 6 runs (the last two single blocks included)
    before, after = load_model(mnv2), load_model(tmp_path / "eq")
    streams = find_streams(before, find_blocks(before))
    assert [len(s) for s in streams] == [2, 3, 4, 3, 3, 1] and rep.streams == 6
    assert rep.channels == sum(s[0].cout for s in streams)
    assert (tmp_path / "eq" / "preprocess.json").is_file()
    # the same function on photos it was not measured on
    ref = np.concatenate([before.run(f)[0] for f in held])
    got = np.concatenate([after.run(f)[0] for f in held])
    assert mean_row_cosine(ref, got) >= 0.99999 and rep.fp32_cosine >= 0.99999
    # the stream tensors themselves: channel c divided by s_c, so their spread shrinks
    tensors = [b.out for s in streams for b in s]
    spread = {}
    for name, m in (("before", before), ("after", after)):
        r = [np.abs(o).max(axis=(0, 2, 3)) for o in m.run(calib[0], fetch=tensors)]
        spread[name] = max(float(x.max() / max(x.min(), 1e-9)) for x in r)
    assert spread["after"] < 0.7 * spread["before"], spread
    assert rep.spread_after < rep.spread_before


def test_model_without_a_stream_is_left_alone(tmp_path: Path) -> None:
    from edge_shitu.converters.equalize import equalize
    from tests.conftest import plain_conv_model

    plain = plain_conv_model(tmp_path / "plain")
    assert equalize(plain, tmp_path / "out", [{"x": np.zeros((1, 3, 16, 16), np.float32)}]) is None
    assert not (tmp_path / "out").exists()
