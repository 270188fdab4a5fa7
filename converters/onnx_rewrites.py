"""Exact ONNX graph rewrites applied before onnx2tf, each one removing a silent int8 failure.

Max pooling with padding: onnx2tf turns ``MaxPool(pads=...)`` into ``PADV2(value=-FLT_MAX)`` +
``MAX_POOL_2D(VALID)``. TF's int8 calibrator then records the padded tensor's range as
[-3.4e38, max]: its int8 step becomes ~1e36 and the whole tensor quantizes to zero (PicoDet-S
COCO: box recall 0.20 against onnxruntime). A 16x8 model cannot even load (its PADV2 keeps a
float pad value next to int16 data). Padding by REPLICATING the border ("edge") gives the same
maxima whenever every pad is smaller than the kernel (each window then still holds the border
element that was copied), so ``MaxPool(pads)`` becomes ``Pad(mode=edge)`` + ``MaxPool`` with no
padding: identical outputs in float (checked bit for bit on PicoDet-S), and a padded tensor whose
range is its input's.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def edge_pad_max_pools(model: Any) -> int:
    """Rewrite every padded 2-D/3-D ``MaxPool`` of ``model`` (an ``onnx.ModelProto``, in place)
    whose pads are all below its kernel size; returns how many were rewritten."""
    from onnx import helper, numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 11:  # Pad takes its pads as an input from opset 11 on
        return 0
    graph = model.graph
    nodes: list[Any] = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = [int(p) for p in attrs.get("pads", [])]
        kernel = [int(k) for k in attrs.get("kernel_shape", [])]
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if (node.op_type != "MaxPool" or not any(pads) or len(pads) != 2 * len(kernel)
                or auto_pad not in (b"NOTSET", "NOTSET") or len(node.output) != 1
                or any(p >= k for p, k in zip(pads, kernel + kernel))):
            nodes.append(node)
            continue
        nd = len(kernel)
        stem = node.name or f"maxpool{rewritten}"
        pads_name, padded = f"{stem}__edge_pads", f"{node.input[0]}__edge_padded"
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, *pads[:nd], 0, 0, *pads[nd:]], np.int64), pads_name))
        nodes.append(helper.make_node("Pad", [node.input[0], pads_name], [padded], mode="edge",
                                      name=f"{stem}__edge_pad"))
        kept = {k: v for k, v in attrs.items() if k not in ("pads", "auto_pad")}
        nodes.append(helper.make_node("MaxPool", [padded], list(node.output), name=node.name, **kept))
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten
