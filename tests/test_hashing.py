"""Hashing: PaddleClas-compatible sign codes, deterministic learned ITQ codes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_asset
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_shitu.assets import DRINK_EMBEDDINGS
from edge_shitu.errors import EdgeShituError
from edge_shitu.hashing import Hasher, hadamard
from edge_shitu.index_format import Method


def test_sign_codes_match_paddleclas_binarize() -> None:
    # PaddleClas: np.packbits(np.clip(np.sign(x), 0, 1), axis=-1): positive -> 1, zero/negative -> 0
    x = np.random.default_rng(0).standard_normal((20, 512)).astype(np.float32)
    x[0, :10] = 0.0
    h = Hasher.fit(x, bits=512, method="sign")
    assert np.array_equal(h.encode(x), np.packbits(np.clip(np.sign(x), 0, 1).astype(np.uint8), axis=-1))


def test_hadamard_is_orthonormal() -> None:
    h = hadamard(64)
    assert np.allclose(h @ h.T, np.eye(64))


def test_itq_is_deterministic_and_orthonormal() -> None:
    x = np.random.default_rng(1).standard_normal((300, 128)).astype(np.float32)
    a = Hasher.fit(x, bits=64, method="itq")
    b = Hasher.fit(x.copy(), bits=64, method="itq")
    assert np.array_equal(a.proj, b.proj) and np.array_equal(a.encode(x), b.encode(x))
    assert np.allclose(a.proj.T @ a.proj, np.eye(64), atol=1e-4)
    assert a.method == Method.ITQ and a.encode(x).shape == (300, 8)


def test_itq_bits_are_balanced_on_real_embeddings() -> None:
    x = np.load(require_asset(*DRINK_EMBEDDINGS))
    bits = np.unpackbits(Hasher.fit(x, bits=256).encode(x), axis=1).mean(0)
    assert 0.3 < bits.mean() < 0.7 and bits.min() > 0.05 and bits.max() < 0.95


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"bits": 100}, "multiple of 64"),
    ({"bits": 1024}, "at least 1024 dimensions"),
    ({"bits": 256, "method": "sign"}, "must be 512"),
    ({"bits": 256, "method": "lsh"}, "unknown hashing method"),
])
def test_bad_parameters(kwargs: dict, msg: str) -> None:
    x = np.random.default_rng(0).standard_normal((10, 512)).astype(np.float32)
    with pytest.raises(EdgeShituError, match=msg):
        Hasher.fit(x, **kwargs)


@pytest.mark.parametrize("bad", [np.zeros((3, 512), np.int32), np.zeros((2, 3, 512), np.float32),
                                 np.full((2, 512), np.nan, np.float32)])
def test_bad_features(bad: np.ndarray) -> None:
    with pytest.raises(EdgeShituError):
        Hasher.fit(bad, bits=512, method="sign")


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (5, 64), elements=st.floats(-1e3, 1e3, width=32)))
def test_query_code_equals_gallery_code_for_same_vector(x: np.ndarray) -> None:
    h = Hasher.fit(np.vstack([x, np.eye(64, dtype=np.float32)]), bits=64, method="itq")
    assert np.array_equal(h.encode(x), h.encode(x.copy()))
    assert np.array_equal(h.encode(x[2:3]), h.encode(x)[2:3])
