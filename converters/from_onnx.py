"""ONNX -> Paddle inference program (x2paddle), checked against onnxruntime on real photos.

Why: PaddleSlim's pruning and PTQ and Paddle Lite's ``opt`` (the ``.nb`` artifacts) only take a
Paddle program. x2paddle 1.6.0 writes one, but it imports ``onnx.mapping``, which onnx >= 1.16 no
longer has, while the conversion venv pins onnx 1.22. So x2paddle lives in its own
``pip --target`` dir (``build/aux/x2paddle``: x2paddle + onnx 1.15.0, made by
``scripts/setup_aux_envs.sh``), put first on ``PYTHONPATH`` of a CHILD process of the same
interpreter (its paddlepaddle 2.6.2 is what x2paddle emits code for). The child converts, then
runs Paddle Inference on the feeds the parent prepared from real photos; the parent runs
onnxruntime on the user's file and compares. x2paddle is translated op by op, so a wrong
translation shows up as a difference, never as an error: the check is the gate (default
1e-4 max abs; 4.8e-5 measured on PicoDet-S: docs/model-inputs.md). IR optimisation is off in that
check: with it on, Paddle Inference gave NaN on noise inputs for this very program.

``disable_feedback=True``: without it x2paddle phones home. Output: ``OUT/inference.pdmodel`` +
``.pdiparams`` (the legacy layout the rest of the converter reads), written under a temporary
name and renamed, so a failed conversion leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edge_shitu.assets import PROJECT_ROOT
from edge_shitu.atomic import atomic_write
from edge_shitu.errors import EdgeShituError

X2PADDLE_DIR_ENV = "EDGE_SHITU_X2PADDLE_DIR"
DEFAULT_TOLERANCE = 1e-4


@dataclass
class OnnxToPaddle:
    """Result of :func:`onnx_to_paddle`. ``max_abs`` per output (ONNX output order), over all
    feeds; ``output_map`` / ``input_map``: ONNX name -> Paddle program name (x2paddle prefixes
    inputs with ``x2paddle_`` and renames outputs, keeping their order): feed the Paddle program
    (and its .nb) through ``input_map``."""

    onnx_path: Path
    paddle_dir: Path
    model_file: Path
    params_file: Path
    max_abs: dict[str, float]
    output_map: dict[str, str]
    input_map: dict[str, str]
    samples: int
    seconds: float

    @property
    def worst(self) -> float:
        return max(self.max_abs.values()) if self.max_abs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"source": "onnx", "tool": "x2paddle 1.6.0", "paddle_dir": str(self.paddle_dir),
                "max_abs_vs_onnxruntime": self.max_abs, "output_map": self.output_map,
                "input_map": self.input_map, "samples": self.samples, "seconds": round(self.seconds, 1)}


def x2paddle_dir() -> Path:
    """The x2paddle target dir (``EDGE_SHITU_X2PADDLE_DIR`` or ``build/aux/x2paddle``), or one
    EdgeShituError line saying how to create it."""
    d = Path(os.environ.get(X2PADDLE_DIR_ENV) or PROJECT_ROOT / "build" / "aux" / "x2paddle")
    if not (d / "x2paddle").is_dir() or not (d / "onnx").is_dir():
        raise EdgeShituError(f"x2paddle (ONNX -> Paddle) is not installed in {d}: run 'make aux-envs' "
                             f"(scripts/setup_aux_envs.sh) or set {X2PADDLE_DIR_ENV}")
    return d


def max_abs_per_output(names: Sequence[str], refs: Sequence[Sequence[np.ndarray]],
                       gots: Sequence[Sequence[np.ndarray]], tool: str) -> dict[str, float]:
    """Worst absolute difference per output over all samples (outputs in the same order on both
    sides); a shape mismatch means ``tool`` changed the model: one line. Non-finite counts as inf."""
    max_abs = {n: 0.0 for n in names}
    for r, g in zip(refs, gots):
        for n, a, b in zip(names, r, g):
            if np.shape(a) != np.shape(b):
                raise EdgeShituError(f"{tool}'s output for {n} has shape {list(np.shape(b))}, the reference's "
                                     f"{list(np.shape(a))}: this model cannot go through {tool}")
            d = float(np.max(np.abs(np.asarray(b, np.float64) - a))) if np.size(a) else 0.0
            max_abs[n] = max(max_abs[n], d if np.isfinite(d) else float("inf"))
    return max_abs


def onnxruntime_outputs(onnx_path: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                        threads: int = 1) -> tuple[list[str], list[list[np.ndarray]]]:
    """The FP32 reference for an ONNX input: onnxruntime on the user's file (all graph
    optimisations, CPU). Returns output names and per-feed output lists."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # old exporters list weights as inputs: one warning per weight otherwise
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return names, [sess.run(None, {k: v for k, v in f.items() if k in wanted}) for f in feeds]


def onnx_to_paddle(onnx_path: os.PathLike[str] | str, out_dir: os.PathLike[str] | str,
                   feeds: Sequence[Mapping[str, np.ndarray]], *, tolerance: float = DEFAULT_TOLERANCE,
                   timeout: float = 900, reference: Optional[list[list[np.ndarray]]] = None,
                   log: Optional[list[str]] = None) -> OnnxToPaddle:
    """Convert ``onnx_path`` into ``out_dir`` (created; must not exist or be empty) and check it.

    ``feeds``: preprocessed REAL photos (name -> array, batch 1), at least one; ``reference``:
    onnxruntime's outputs on them when the caller already has them (else computed here).
    Raises EdgeShituError when x2paddle fails or the program misses ``tolerance`` (max abs over
    every output and feed), naming the output and the figure; nothing is left in ``out_dir``."""
    from edge_shitu.converters.child import load_feeds, run_worker, save_feeds
    from edge_shitu.converters.model_input import inspect_model

    src, out = Path(onnx_path), Path(out_dir)
    if inspect_model(src).format != "onnx":  # one line for a file that is not ONNX, a dynamic batch, ...
        raise EdgeShituError(f"model {src} is not an ONNX file: Paddle folders need no x2paddle")
    if not feeds:
        raise EdgeShituError("onnx_to_paddle needs at least one preprocessed photo to verify x2paddle's program")
    if out.exists() and any(out.iterdir()):
        raise EdgeShituError(f"output folder {out} is not empty: pass a new folder")
    aux = x2paddle_dir()
    t0 = time.perf_counter()
    names, ref = (onnxruntime_outputs(src, feeds)[0], reference) if reference is not None \
        else onnxruntime_outputs(src, feeds)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "model.onnx").symlink_to(src.resolve())  # x2paddle derives names from a ".onnx" suffix
        save_feeds(feeds, tmp / "feeds.npz")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(aux), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("OMP_NUM_THREADS", "1")
        res = run_worker("edge_shitu.converters.from_onnx", {
            "onnx": str(tmp / "model.onnx"), "work": str(tmp / "x2p"), "feeds": str(tmp / "feeds.npz"),
            "outputs": str(tmp / "outputs.npz"),
        }, stage=f"x2paddle (ONNX -> Paddle) on {src.name}", timeout=timeout, env=env, log=log)
        got = load_feeds(tmp / "outputs.npz")
        fetch = list(res["fetch_names"])
        if len(fetch) != len(names):
            raise EdgeShituError(f"x2paddle's program of {src.name} has {len(fetch)} outputs, the ONNX model "
                                 f"{len(names)}: this model cannot go through x2paddle")
        max_abs = max_abs_per_output(names, ref, [[g[f] for f in fetch] for g in got], "x2paddle")
        worst = max(max_abs, key=lambda k: max_abs[k])
        if not max_abs[worst] <= tolerance:
            raise EdgeShituError(f"x2paddle's Paddle program of {src.name} differs from onnxruntime by "
                                 f"{max_abs[worst]:.3g} (max abs, output {worst}, {len(feeds)} photos; gate "
                                 f"{tolerance:g}): the .nb path is not available for this model, use TFLite")
        final = tmp / "final"
        final.mkdir()
        shutil.move(str(tmp / "x2p" / "inference_model" / "model.pdmodel"), final / "inference.pdmodel")
        shutil.move(str(tmp / "x2p" / "inference_model" / "model.pdiparams"), final / "inference.pdiparams")
        if out.exists():
            out.rmdir()
        os.replace(final, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OnnxToPaddle(src, out, out / "inference.pdmodel", out / "inference.pdiparams", max_abs,
                        dict(zip(names, fetch)), dict(res["input_map"]), len(feeds), time.perf_counter() - t0)


def rgb_input_for_bgr_model(src: os.PathLike[str] | str, dst: os.PathLike[str] | str,
                            input_name: Optional[str] = None) -> Path:
    """Make a model that wants BGR take the runtime's RGB: a Gather [2, 1, 0] on the image
    input's channel axis, so the device preprocessing (always RGB) needs nothing new. Exact (a
    pure permutation); converters fold it into the first conv. ``preprocess_spec`` stores
    mean/std in RGB order to match. Written to ``dst`` atomically."""
    import onnx
    from onnx import helper, numpy_helper

    from edge_shitu.converters.model_input import inspect_model

    info = inspect_model(src)
    if info.format != "onnx":
        raise EdgeShituError(f"model {src} is not an ONNX file")
    img = next((t for t in info.inputs if t.name == input_name), None) if input_name else info.image_input
    if img is None or len(img.shape) != 4:
        raise EdgeShituError(f"model {src} has no 4-D image input{f' named {input_name!r}' if input_name else ''}")
    axis = 1 if img.shape[1] == 3 else 3
    if img.shape[axis] != 3:
        raise EdgeShituError(f"input {img.name!r} of {src} has no 3-channel axis: channel_order bgr needs one")
    m = onnx.load(str(src))
    flipped = f"{img.name}__bgr"
    for node in m.graph.node:
        node.input[:] = [flipped if i == img.name else i for i in node.input]
    idx = numpy_helper.from_array(np.array([2, 1, 0], np.int64), f"{img.name}__bgr_index")
    m.graph.initializer.append(idx)
    m.graph.node.insert(0, helper.make_node("Gather", [img.name, idx.name], [flipped], axis=axis,
                                            name=f"{img.name}__rgb_to_bgr"))
    out = Path(dst)
    with atomic_write(out) as f:
        f.write(m.SerializeToString())  # onnx.save wants a named file; the bytes are the same
    return out


# ----------------------------------------------------------------------------- child side
def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """In the child (x2paddle dir first on PYTHONPATH): convert, then Paddle Inference on the feeds."""
    import logging

    import onnx

    from edge_shitu.converters.child import load_feeds, save_feeds

    if not onnx.__version__.startswith("1.15."):
        raise EdgeShituError(f"x2paddle needs onnx 1.15 first on PYTHONPATH, got onnx {onnx.__version__}: "
                             "run 'make aux-envs'")
    logging.getLogger().setLevel(logging.WARNING)
    from x2paddle.convert import onnx2paddle

    onnx2paddle(job["onnx"], job["work"], disable_feedback=True)
    model = Path(job["work"]) / "inference_model" / "model.pdmodel"
    if not model.is_file():  # x2paddle logs some failures instead of raising
        raise EdgeShituError("x2paddle wrote no program (an ONNX op it cannot translate?): see its log above")
    import paddle.inference as pi

    cfg = pi.Config(str(model), str(model.with_suffix(".pdiparams")))
    cfg.disable_gpu()
    cfg.switch_ir_optim(False)
    cfg.set_cpu_math_library_num_threads(1)
    cfg.disable_glog_info()
    pred = pi.create_predictor(cfg)
    in_names, fetch = pred.get_input_names(), pred.get_output_names()
    outs = []
    feeds = load_feeds(job["feeds"])
    input_map = {_onnx_name(n, sorted(feeds[0])): n for n in in_names}
    for f in feeds:
        for src, n in input_map.items():
            h = pred.get_input_handle(n)
            h.reshape(list(f[src].shape))
            h.copy_from_cpu(np.ascontiguousarray(f[src]))
        pred.run()
        outs.append({n: pred.get_output_handle(n).copy_to_cpu() for n in fetch})
    save_feeds(outs, job["outputs"])
    return {"fetch_names": fetch, "input_map": input_map}


def _onnx_name(paddle_name: str, onnx_names: list[str]) -> str:
    """x2paddle prefixes every input with ``x2paddle_`` (and turns odd characters into ``_``)."""
    if paddle_name in onnx_names:
        return paddle_name
    bare = paddle_name[len("x2paddle_"):] if paddle_name.startswith("x2paddle_") else paddle_name
    for n in onnx_names:
        if n == bare or "".join(c if c.isalnum() else "_" for c in n) == bare:
            return n
    raise EdgeShituError(f"x2paddle's program wants input {paddle_name!r}, the ONNX model has {onnx_names}")


if __name__ == "__main__":
    from edge_shitu.converters.child import worker_main

    worker_main(_worker)
