"""Paddle 3 / PIR model folder (``inference.json``) -> ONNX, checked against Paddle 3 inference.

Why: Paddle Lite's ``opt`` cannot read PIR programs and paddlepaddle 2.6 cannot load them;
paddle2onnx 2.x can convert them but needs paddlepaddle >= 3 and pins onnx 1.16-1.17, which
conflicts with the pinned 2.6 conversion set. So both run in ``.venv-paddle3`` (made by
``scripts/setup_aux_envs.sh``), as a child process running ``pir_worker.py`` by path. The same
child computes the FP32 REFERENCE of a PIR input: Paddle 3 inference on the user's original folder
(:func:`paddle3_reference`), which every artifact is then verified against.

The ONNX paddle2onnx writes keeps Paddle's dynamic batch (-1); the converter's other stages want
a fixed input, so the input is fixed to the feeds' shape here (batch 1) and shapes re-inferred.
The file is then checked: onnxruntime (this venv's) vs Paddle 3 on the same real photos, max abs
<= ``tolerance`` (1e-4; measured 2.5e-6 and 6.3e-7: docs/model-inputs.md), or nothing is written.
"""

from __future__ import annotations

import json
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
from edge_shitu.errors import EdgeShituError

PADDLE3_PYTHON_ENV = "EDGE_SHITU_PADDLE3_PYTHON"
DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 11  # what PicoDet/PP-LCNet exports use; notes: opsets 9-17 alike on PP-LCNet
_WORKER = Path(__file__).with_name("pir_worker.py")


@dataclass
class PirToOnnx:
    """Result of :func:`pir_to_onnx`: the ONNX file, its check against Paddle 3 (max abs per
    output over ``samples`` photos) and Paddle 3's outputs on those photos (``reference``, one
    list per feed, in ``output_names`` order: reusable as the reference for those photos)."""

    model_dir: Path
    onnx_path: Path
    output_names: list[str]
    max_abs: dict[str, float]
    reference: list[list[np.ndarray]]
    samples: int
    seconds: float
    versions: dict[str, str]

    @property
    def worst(self) -> float:
        return max(self.max_abs.values()) if self.max_abs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"source": "pir", "tool": f"paddle2onnx {self.versions.get('paddle2onnx', '?')}",
                "reference": f"paddle {self.versions.get('paddle', '?')} inference",
                "onnx": str(self.onnx_path), "max_abs_vs_paddle3": self.max_abs, "samples": self.samples,
                "seconds": round(self.seconds, 1)}


def paddle3_python() -> Path:
    """The interpreter of the Paddle 3 environment (``EDGE_SHITU_PADDLE3_PYTHON`` or
    ``.venv-paddle3/bin/python``), or one EdgeShituError line saying how to create it."""
    env = os.environ.get(PADDLE3_PYTHON_ENV)
    p = Path(env) if env else PROJECT_ROOT / ".venv-paddle3" / "bin" / "python"
    if not p.is_file():
        raise EdgeShituError(f"the Paddle 3 environment ({p}) is missing: Paddle 3 / PIR models need it; run "
                             f"'make aux-envs' (scripts/setup_aux_envs.sh) or set {PADDLE3_PYTHON_ENV}")
    return p


def _run(job: dict[str, Any], stage: str, timeout: float, log: Optional[list[str]]) -> dict[str, Any]:
    """The worker script under the Paddle 3 interpreter (that venv has no edge-shitu): one job file
    in, one result file out; crashes and timeouts become one line (converters/child.py)."""
    from edge_shitu.converters.child import run_child

    py = paddle3_python()
    job_file = Path(job["result"]).with_name("job.json")
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    run_child([str(py), str(_WORKER), str(job_file)], stage=stage, timeout=timeout, env=env, cwd=job_file.parent,
              log=log)
    return json.loads(Path(job["result"]).read_text(encoding="utf-8"))


def _pir_files(model_dir: os.PathLike[str] | str) -> tuple[Path, Path, Path]:
    from edge_shitu.converters.model_input import inspect_model

    info = inspect_model(model_dir)
    if info.format != "pir":
        raise EdgeShituError(f"model {model_dir} is a {info.format} model, not a Paddle 3 (inference.json) folder")
    assert info.params_file is not None
    return info.path, info.model_file, info.params_file


def _load_outputs(path: Path, names: Sequence[str], n: int) -> list[list[np.ndarray]]:
    data = np.load(path)
    return [[data[f"{i}::{k}"] for k in names] for i in range(n)]


def paddle3_reference(model_dir: os.PathLike[str] | str, feeds: Sequence[Mapping[str, np.ndarray]], *,
                      timeout: float = 600, log: Optional[list[str]] = None
                      ) -> tuple[list[str], list[list[np.ndarray]]]:
    """Paddle 3 inference on the original PIR folder (the FP32 reference of a PIR input):
    output names and, per feed, its outputs."""
    from edge_shitu.converters.child import save_feeds

    _, model, params = _pir_files(model_dir)
    with tempfile.TemporaryDirectory(prefix="es-pir-ref-") as tmp:
        t = Path(tmp)
        save_feeds(feeds, t / "feeds.npz")
        res = _run({"model_file": str(model), "params_file": str(params), "feeds": str(t / "feeds.npz"),
                    "outputs": str(t / "outputs.npz"), "result": str(t / "result.json")},
                   f"Paddle 3 inference on {model}", timeout, log)
        return list(res["outputs"]), _load_outputs(t / "outputs.npz", res["outputs"], len(feeds))


def pir_to_onnx(model_dir: os.PathLike[str] | str, out_path: os.PathLike[str] | str,
                feeds: Sequence[Mapping[str, np.ndarray]], *, opset: int = DEFAULT_OPSET,
                tolerance: float = DEFAULT_TOLERANCE, timeout: float = 600,
                log: Optional[list[str]] = None) -> PirToOnnx:
    """Convert a Paddle 3 folder to ``out_path`` (an ``.onnx`` file, replaced atomically) and
    check it against Paddle 3 inference on ``feeds`` (preprocessed REAL photos, batch 1, at least
    one). Raises EdgeShituError (nothing written) on a failed conversion or a missed gate."""
    from edge_shitu.converters.child import save_feeds

    if not feeds:
        raise EdgeShituError("pir_to_onnx needs at least one preprocessed photo to verify the ONNX file")
    src, model, params = _pir_files(model_dir)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_feeds(feeds, tmp / "feeds.npz")
        raw = tmp / "raw.onnx"
        res = _run({"model_file": str(model), "params_file": str(params), "onnx": str(raw), "opset": opset,
                    "feeds": str(tmp / "feeds.npz"), "outputs": str(tmp / "outputs.npz"),
                    "result": str(tmp / "result.json")}, f"paddle2onnx (Paddle 3 -> ONNX) on {src}", timeout, log)
        names = list(res["outputs"])
        ref = _load_outputs(tmp / "outputs.npz", names, len(feeds))
        fixed = tmp / "fixed.onnx"
        fix_input_shapes(raw, fixed, {k: tuple(np.shape(v)) for k, v in feeds[0].items()})
        from edge_shitu.converters.from_onnx import max_abs_per_output, onnxruntime_outputs

        onnx_names, got = onnxruntime_outputs(fixed, feeds)
        if len(onnx_names) != len(names):
            raise EdgeShituError(f"paddle2onnx's model of {src} has {len(onnx_names)} outputs, Paddle 3's program "
                                 f"{len(names)}: convert it with PaddleX's own paddle2onnx plugin and pass the .onnx")
        max_abs = max_abs_per_output(names, ref, got, "paddle2onnx")
        worst = max(max_abs, key=lambda k: max_abs[k])
        if not max_abs[worst] <= tolerance:
            raise EdgeShituError(f"paddle2onnx's ONNX of {src} differs from Paddle 3 inference by {max_abs[worst]:.3g} "
                                 f"(max abs, output {worst}, {len(feeds)} photos; gate {tolerance:g}): try another "
                                 "--opset, or export ONNX with PaddleX and pass the .onnx")
        os.replace(fixed, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    versions = {k: str(res.get(k, "?")) for k in ("paddle", "paddle2onnx")}
    return PirToOnnx(src, out, names, max_abs, ref, len(feeds), time.perf_counter() - t0, versions)


def fix_input_shapes(src: Path, dst: Path, shapes: Mapping[str, Sequence[int]]) -> None:
    """Set the named graph inputs to fixed ``shapes`` (dynamic batch -> 1), drop stale output /
    intermediate shapes and re-infer them: the other converter stages want a static graph."""
    import onnx

    m = onnx.load(str(src))
    inits = {i.name for i in m.graph.initializer}
    for v in m.graph.input:
        if v.name in inits:
            continue
        if v.name not in shapes:
            raise EdgeShituError(f"the ONNX model wants input {v.name!r}, the feeds have {sorted(shapes)}")
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(shapes[v.name]):
            raise EdgeShituError(f"input {v.name!r} has rank {len(dims)}, the preprocessed photos "
                                 f"{len(shapes[v.name])}: check the preprocessing")
        for d, n in zip(dims, shapes[v.name]):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != int(n):
                raise EdgeShituError(f"input {v.name!r} is fixed at {[x.dim_value for x in dims]}, the preprocessed "
                                     f"photos are {list(shapes[v.name])}: set the preprocessing size to match")
            d.Clear()
            d.dim_value = int(n)
    for v in m.graph.output:
        for d in v.type.tensor_type.shape.dim:
            if not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    onnx.save(m, str(dst))
