"""One model as `convert` receives it (Paddle legacy folder, Paddle 3 folder, ONNX file) -> what
the prune -> PTQ -> export -> verify chain consumes.

- Paddle legacy folder: the folder itself is the program and the FP32 reference (unchanged
  behaviour: preprocessing from ``infer_cfg.yml`` / ``preprocess.json`` unless a spec is given).
- ONNX file: the reference is onnxruntime on the user's file; x2paddle's program (checked against
  it, ``converters/from_onnx.py``) is what PaddleSlim and Paddle Lite take; TFLite is converted from
  the user's ONNX file (``tflite_route="onnx"``, the default: measured better, docs/model-inputs.md)
  or from the Paddle program (``"paddle"``).
- Paddle 3 folder: ``pir_to_onnx`` (checked against Paddle 3 inference on the original folder,
  max abs <= 1e-4) then as ONNX; the reference of the artifacts is that verified ONNX (Paddle 3
  cannot run in the conversion environment), the manifest says so.

A detector ONNX with a raw GFL head (PicoDet without NMS) keeps its head outside the artifacts: the
device decodes it with :class:`edge_shitu.gfl_head.GFLHead` (the manifest's ``details.head``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.preprocess import DetPreprocess, RecPreprocess

Feeds = dict[str, np.ndarray]
TFLITE_ROUTES = ("onnx", "paddle")


@dataclass
class PreparedModel:
    """``paddle_dir``: the Paddle program PaddleSlim / Paddle Lite take; ``reference``: the FP32
    reference (a Paddle folder or an ``.onnx`` file, run by onnxruntime); ``onnx``: the ONNX file
    TFLite is converted from when the route is "onnx" (None: exported from the Paddle program);
    ``feed_name``: the image input of the Paddle program; ``head``: a GFL head's manifest dict."""

    format: str
    source: Path
    paddle_dir: Path
    reference: Path
    pre: Any  # RecPreprocess | DetPreprocess
    feed_name: str
    onnx: Optional[Path] = None
    head: Optional[dict[str, Any]] = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def legacy(self) -> bool:
        return self.format == "paddle"

    def feed(self, img: np.ndarray) -> Feeds:
        if isinstance(self.pre, RecPreprocess):
            return {self.feed_name: self.pre.batch([img])}
        f = self.pre(img)
        if self.legacy:
            return f  # the detector program takes image + im_shape + scale_factor
        return {self.feed_name: f["image"]}


def spec_for(info: Any, kind: str, source: Any) -> Any:
    """The preprocessing of a model without a PaddleDetection / PaddleClas-2 config."""
    from edge_shitu.converters.preprocess_spec import parse_spec, spec_from_paddleclas_yml

    if source is None and info.config is not None and kind == "rec" and info.config.name == "inference.yml":
        source = spec_from_paddleclas_yml(info.config)
    spec = parse_spec(source, kind, model_size=info.input_size())
    if spec.needs_bgr_input:
        raise EdgeShituError(f"{info.path}: channel_order bgr is not wired into convert yet: re-export the model "
                             "for RGB input")
    return spec


def prepare(path: Path, kind: str, images: Sequence[np.ndarray], work: Path, *, preprocess: Any = None,
            classes: Any = None, tflite_route: str = "onnx",
            progress: Callable[[str], None] = lambda m: None) -> PreparedModel:
    """Recognise ``path`` and turn it into what the conversion chain needs; ``images``: real photos
    (a few) the intermediate conversions are checked on."""
    from edge_shitu.converters.model_input import inspect_model

    if tflite_route not in TFLITE_ROUTES:
        raise EdgeShituError(f"TFLite route {tflite_route!r} is unknown: use {' or '.join(TFLITE_ROUTES)}")
    info = inspect_model(path, kind)
    if info.format == "paddle":
        return _legacy(Path(path), kind, info, preprocess)
    spec = spec_for(info, kind, preprocess)
    pre = spec.rec_preprocess() if kind == "rec" else spec.det_preprocess()
    image = info.image_input
    if image is None or len(info.inputs) != 1:
        raise EdgeShituError(f"{path}: inputs {[t.name for t in info.inputs]}; convert takes a model with one image "
                             "input (a raw-head detector or an extractor)")
    onnx_feeds = [_feed(pre, image.name, im) for im in images]
    details: dict[str, Any] = {"input_format": info.format, "preprocess_spec": spec.to_dict()}
    if info.format == "pir":
        from edge_shitu.converters.from_pir import pir_to_onnx

        progress(f"{kind}: Paddle 3 -> ONNX (paddle2onnx, checked against Paddle 3 on {len(onnx_feeds)} photos)")
        pir = pir_to_onnx(info.path if info.path.is_dir() else info.model_file.parent, work / f"{kind}_pir.onnx",
                          onnx_feeds)
        onnx_path = pir.onnx_path
        d = pir.to_dict()
        d.pop("onnx", None)
        details["pir_to_onnx"] = d
        details["reference"] = ("onnxruntime on paddle2onnx's ONNX of the Paddle 3 folder, checked against Paddle 3 "
                                f"inference on the original folder: max abs {pir.worst:.2e} <= 1e-4")
        x2p_src = simplified_for_x2paddle(onnx_path, work / f"{kind}_pir_x2p.onnx")
        info = inspect_model(onnx_path, kind)
    else:
        onnx_path = x2p_src = info.model_file
        details["reference"] = "onnxruntime on the user's ONNX file"
    from edge_shitu.converters.from_onnx import onnx_to_paddle

    progress(f"{kind}: ONNX -> Paddle (x2paddle, checked against onnxruntime on {len(onnx_feeds)} photos)")
    x2p = onnx_to_paddle(x2p_src, work / f"{kind}_x2paddle", onnx_feeds)
    d = x2p.to_dict()
    d.pop("paddle_dir", None)
    details["x2paddle"] = d
    head = None
    if kind == "det":
        head = _gfl_head(info, spec, classes)
        if head is None:
            raise EdgeShituError(f"{path}: a detector ONNX must end in a raw PicoDet/GFL head (4 score + 4 box maps); "
                                 f"its outputs are {[list(t.shape) for t in info.outputs]}")
    elif classes is not None:
        raise EdgeShituError("--det-classes applies to a detector")
    details["tflite_route"] = tflite_route
    return PreparedModel(details["input_format"], Path(path), x2p.paddle_dir, onnx_path, pre,
                         x2p.input_map.get(image.name, image.name),
                         onnx=onnx_path if tflite_route == "onnx" else None, head=head, details=details)


def simplified_for_x2paddle(src: Path, dst: Path) -> Path:
    """paddle2onnx 2.x writes a PIR program's weights as ``Constant`` nodes and its reshapes through
    ``Shape``/``Slice``/``Concat``; x2paddle maps only initializers and needs static shapes
    (``convert failed node: ...BatchNormalization``). onnxsim folds them (and BN into Conv); the
    result is checked against onnxruntime by ``onnx_to_paddle`` like any x2paddle input."""
    import onnx
    from onnxsim import simplify

    simplified, ok = simplify(onnx.load(str(src)))
    if not ok:
        raise EdgeShituError(f"onnxsim could not validate the simplified graph of {src.name}")
    onnx.save(simplified, str(dst))
    return dst


def _legacy(path: Path, kind: str, info: Any, preprocess: Any) -> PreparedModel:
    from edge_shitu.converters.convert import check_kind, det_preprocess_for
    from edge_shitu.converters.paddle_model import load_program
    from edge_shitu.gallery_build_embed import rec_preprocess_for

    model_dir = info.model_file.parent
    check_kind(model_dir, kind)
    if preprocess is not None:
        from edge_shitu.converters.preprocess_spec import parse_spec

        spec = parse_spec(preprocess, kind, model_size=info.input_size())
        pre: Any = spec.rec_preprocess() if kind == "rec" else spec.det_preprocess()
    else:
        pre = rec_preprocess_for(model_dir) if kind == "rec" else det_preprocess_for(model_dir)
    _, feed_names, _ = load_program(model_dir)
    return PreparedModel("paddle", path, model_dir, model_dir, pre, feed_names[0])


def _feed(pre: Any, name: str, img: np.ndarray) -> Feeds:
    if isinstance(pre, RecPreprocess):
        return {name: pre.batch([img])}
    assert isinstance(pre, DetPreprocess)
    return {name: pre(img)["image"]}


def _gfl_head(info: Any, spec: Any, classes: Any) -> Optional[dict[str, Any]]:
    from edge_shitu.gfl_head import GFLHead, resolve_classes

    agnostic = False
    cls_list = None
    if classes is not None:
        items = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes) if str(c).strip()]
        if [str(c).lower() for c in items] == ["agnostic"]:
            agnostic = True
        else:
            if any(str(c).lower() == "agnostic" for c in items):
                agnostic = True
                items = [c for c in items if str(c).lower() != "agnostic"]
            cls_list = [int(c) if str(c).isdigit() else c for c in items]
    try:
        head = GFLHead.from_output_shapes(spec.size, [(t.name, t.shape) for t in info.outputs],
                                          image=info.image_input.name)
    except EdgeShituError:
        return None
    head.classes = resolve_classes(cls_list, head.num_classes) if cls_list else None
    head.class_agnostic = agnostic
    return head.to_dict()
