"""Child-side script of :mod:`.from_pir`, run by ``.venv-paddle3``'s interpreter BY PATH.

That venv holds paddlepaddle 3 + paddle2onnx 2.x and NOT edge-shitu (its pins conflict with the
conversion venv), so this file imports only the standard library, numpy, paddle and paddle2onnx.
Usage: ``python pir_worker.py JOB.json``; the job names the model folder's files, the ONNX file to
write, the feeds (``.npz``, keys ``i::name``) and where to write Paddle 3's outputs and the result.
An expected failure prints one ``edge-shitu: ...`` line and exits 1 (the parent reports that line).
"""

import json
import os
import sys


def _fail(msg: str) -> None:
    print(f"edge-shitu: {msg}", file=sys.stderr)
    sys.exit(1)


def _load_feeds(path: str) -> list:
    import numpy as np

    data = np.load(path)
    out: dict = {}
    for key in data.files:
        i, name = key.split("::", 1)
        out.setdefault(int(i), {})[name] = data[key]
    return [out[i] for i in sorted(out)]


def convert(job: dict) -> dict:
    """paddle2onnx 2.x, in-process (one paddle import for conversion and reference). Its
    default optimizer (polygraphy) pip-installs onnx-graphsurgeon at run time and its
    onnxoptimizer path is broken in 2.1.0: ``optimize_tool="None"``."""
    import paddle2onnx

    out = job["onnx"]
    paddle2onnx.export(job["model_file"], job["params_file"], save_file=out, opset_version=int(job["opset"]),
                       enable_onnx_checker=True, optimize_tool="None")
    if not os.path.isfile(out) or os.path.getsize(out) == 0:  # 2.x logs some failures instead of raising
        _fail(f"paddle2onnx wrote no ONNX file for {job['model_file']} (an op it cannot convert?): see its log")
    return {"paddle2onnx": getattr(paddle2onnx, "__version__", "?")}


def reference(job: dict) -> dict:
    """Paddle 3 inference on the ORIGINAL folder: the FP32 reference of a PIR input."""
    import numpy as np
    import paddle
    import paddle.inference as pi

    cfg = pi.Config(job["model_file"], job["params_file"])
    cfg.disable_gpu()
    cfg.set_cpu_math_library_num_threads(1)
    cfg.disable_glog_info()
    pred = pi.create_predictor(cfg)
    in_names, out_names = pred.get_input_names(), pred.get_output_names()
    outs = {}
    for i, f in enumerate(_load_feeds(job["feeds"])):
        for n in in_names:
            if n not in f:
                _fail(f"the Paddle 3 model wants input {n!r}, the feeds have {sorted(f)}")
            h = pred.get_input_handle(n)
            h.reshape(list(f[n].shape))
            h.copy_from_cpu(np.ascontiguousarray(f[n]))
        pred.run()
        for n in out_names:
            outs[f"{i}::{n}"] = pred.get_output_handle(n).copy_to_cpu()
    np.savez(job["outputs"], **outs)
    return {"paddle": paddle.__version__, "inputs": in_names, "outputs": out_names}


def main(argv: list) -> None:
    if len(argv) != 2:
        print("usage: pir_worker.py JOB.json", file=sys.stderr)
        sys.exit(2)
    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    res = {}
    if job.get("onnx"):
        res.update(convert(job))
    if job.get("feeds"):
        res.update(reference(job))
    with open(job["result"], "w", encoding="utf-8") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv)
