"""Channel-range equalization of an extractor's linear residual streams, before int8 (no change
to the FP32 function).

Why: int8 activations have one range per tensor. In MobileNetV2-style networks the tensors that
carry the residual stream (a block's linear projection output, then each residual add) have
channels whose ranges differ by up to 24x (the 160-channel stream of torchvision's MobileNetV2:
1.5 to 35), so the small channels keep few int8 steps. The stream is linear: dividing its channel
``c`` by ``s_c`` in every producer and multiplying the input column ``c`` of every consumer by
``s_c`` leaves the network's function exactly as it was (Nagel et al. 2019, "Data-Free
Quantization", cross-layer equalization, applied to the stream rather than to conv pairs).

How: a stream is a block (``prune_reconstruct.find_blocks``: expansion -> depthwise ->
projection + BN) followed by the residual blocks that add onto its output. Its tensors' per-channel
absolute maxima ``r_c`` are measured on calibration images; ``s_c = (r_c / geomean(r)) ** alpha``
(``alpha = 0.5``: halfway, so the consumers' per-output-channel weight ranges grow no more than
the stream's activation ranges shrink). Producers: every projection BN of the stream (scale and
bias divided by ``s_c``). Consumers: every conv reading a stream tensor (the residual blocks'
expansions, the next block's expansion or the tail conv; input column times ``s_c``). A stream
read by anything else, or holding a model output, is left alone. The FP32 outputs are checked
unchanged on the calibration images; otherwise nothing is written.

Measured on MobileNetV2 (real weights), int8 TFLite (MSE ranges, float GeM, biases corrected),
16 calibration / 16 held-out drink photos: cosine vs FP32 0.98883 -> 0.99236 (alpha 0.25:
0.99158; 1.0: 0.98934), same size and speed (docs/benchmarks.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALPHA = 0.5
FP32_FLOOR = 0.99999  # the equalized model's FP32 outputs vs the original's (mean cosine); else not used
CARRIED_FILES = ("preprocess.json", "infer_cfg.yml", "inference.yml")


@dataclass
class EqualizeReport:
    """What ``equalize`` did (the manifest's ``equalization``)."""

    out_dir: Path
    streams: int
    channels: int
    alpha: float
    spread_before: float  # the largest max/min channel-range ratio over the streams
    spread_after: float
    fp32_cosine: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"method": "residual-stream channel equalization (before int8)", "streams": self.streams,
                "channels": self.channels, "alpha": self.alpha, "range_spread_before": round(self.spread_before, 2),
                "range_spread_after": round(self.spread_after, 2), "fp32_cosine": round(self.fp32_cosine, 8),
                "images": self.images}


def find_streams(model: Any, blocks: Sequence[Any]) -> list[list[Any]]:
    """Runs of blocks: one block, then the residual blocks that add onto its output."""
    streams: list[list[Any]] = []
    for b in blocks:
        if b.residual and streams and b.block_in == streams[-1][-1].out:
            streams[-1].append(b)
        else:
            streams.append([b])
    return streams


def _consumers(model: Any, stream: Sequence[Any]) -> list[Any] | None:
    """The convs reading the stream's tensors, or None when anything else reads them (or one is a
    model output): then the stream cannot be rescaled exactly."""
    tensors = {b.out for b in stream}
    if tensors & set(model.fetch_names):
        return None
    adds = {b.out for b in stream if b.residual}
    convs = []
    for op in model.program.global_block().ops:
        read = tensors & set(op.input_arg_names)
        if not read:
            continue
        if op.type == "conv2d" and op.attr("groups") == 1 and op.input("Input")[0] in tensors:
            convs.append(op)
        elif not (op.type == "elementwise_add" and op.output("Out")[0] in adds):
            return None
    return convs


def _producer_bns(model: Any, stream: Sequence[Any]) -> list[tuple[str, str]] | None:
    """(scale, bias) parameter names of each block's projection BN."""
    bns = {op.input("X")[0]: (op.input("Scale")[0], op.input("Bias")[0])
           for op in model.program.global_block().ops if op.type == "batch_norm"}
    out = [bns.get(b.proj_out) for b in stream]
    return None if any(x is None for x in out) else out  # type: ignore[return-value]


def equalize(model_dir: str | Path, out_dir: str | Path, feeds: Sequence[Mapping[str, np.ndarray]],
             alpha: float = ALPHA) -> EqualizeReport | None:
    """Write the equalized model to ``out_dir`` (module docstring); None (nothing written) where
    the model has no stream to equalize or its FP32 outputs would move."""
    from .paddle_model import load_model, mean_row_cosine, save_model
    from .prune_reconstruct import find_blocks

    if not feeds:
        return None
    model = load_model(model_dir)
    plans = []
    for stream in find_streams(model, find_blocks(model)):
        convs, bns = _consumers(model, stream), _producer_bns(model, stream)
        if convs and bns:
            plans.append((stream, convs, bns))
    if not plans:
        return None
    ref = [model.run(f) for f in feeds]
    spread_before = spread_after = 1.0
    channels = 0
    for stream, convs, bns in plans:
        tensors = [b.out for b in stream]
        r: Any = 0.0
        for f in feeds:
            outs = model.run(f, fetch=tensors)
            r = np.maximum(r, np.max([np.abs(o).max(axis=(0, 2, 3)) for o in outs], axis=0))
        r = np.maximum(np.asarray(r, np.float64), 1e-12)
        s = (r / np.exp(np.log(r).mean())) ** alpha
        spread_before = max(spread_before, float(r.max() / r.min()))
        spread_after = max(spread_after, float((r / s).max() / (r / s).min()))
        channels += len(r)
        for scale, bias in bns:
            model.set_param(scale, (model.get_param(scale) / s).astype(np.float32))
            model.set_param(bias, (model.get_param(bias) / s).astype(np.float32))
        for op in convs:
            w = op.input("Filter")[0]
            model.set_param(w, (model.get_param(w) * s[None, :, None, None]).astype(np.float32))
    cos = min(mean_row_cosine(a.reshape(len(a), -1), b.reshape(len(b), -1))
              for r0, f in zip(ref, feeds) for a, b in zip(r0, model.run(f)))
    if not cos >= FP32_FLOOR:  # NaN too
        return None
    save_model(model, out_dir)
    for name in CARRIED_FILES:  # save_model carries Paddle's side files, not the extractor's preprocessing
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, Path(out_dir) / name)
    return EqualizeReport(Path(out_dir), len(plans), channels, alpha, spread_before, spread_after, cos, len(feeds))


__all__ = ["ALPHA", "EqualizeReport", "equalize", "find_streams"]
