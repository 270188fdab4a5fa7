"""The one way the converter runs a step in a child process, and the one ``--worker`` entry point.

Why child processes at all: Paddle Lite's ``opt`` SEGFAULTS on some programs, Paddle Lite ABORTS
its host process on an unsupported kernel, paddle2onnx's C++ core aborts, PaddleSlim's
calibration can SIGSEGV on a detector's NMS loop, and onnx2tf/TF keep global state between
conversions. Each such step runs as ``python -m <module> --worker JOB_JSON``; a crash, a signal or
a timeout then becomes ONE line (:class:`EdgeShituError`) naming the stage, how the child ended
(``exit 1``, ``signal SIGSEGV``) and the most telling line of its stderr, instead of a dead
converter or a 60-line C++ dump.

Parent side: :func:`run_worker` (``python -m module``; :func:`run_child` for any other command).
Child side: ``if __name__ == "__main__": worker_main(handler)``; what the handler returns
(JSON-serialisable) comes back as :func:`run_worker`'s result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

import numpy as np

from edge_shitu.errors import EdgeShituError

RESULT_KEY = "_result"  # the job key naming the file the child writes its handler's return value to
# Lines that say what went wrong, most specific first in spirit: our own one-liners, Python
# exceptions, glog/Paddle Lite fatal lines ("F1202 ...", "[F 12/ 2 ...").
_TELLING = re.compile(r"^(edge-shitu:|\[F |F\d{4} |([\w.]*\.)?\w*(Error|Exception)\b)")
# Chatter that never explains a failure (TF/absl info and warning lines).
_NOISE = ("W0000", "I0000")


def telling_line(log: str, limit: int = 300) -> str:
    """The line of a child's output that best says why it failed: the last error-looking line,
    else the last non-empty one."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith(_NOISE)]
    why = next((ln for ln in reversed(lines) if _TELLING.match(ln)), lines[-1] if lines else "no output")
    return why[:limit]


def how_it_ended(returncode: int) -> str:
    """``exit N`` or ``signal SIGSEGV`` (subprocess reports a signal as a negative return code)."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def run_child(cmd: Sequence[str], *, stage: str, timeout: float, env: Optional[Mapping[str, str]] = None,
              cwd: Optional[Path] = None, log: Optional[list[str]] = None) -> str:
    """Run any child command; return its combined stdout+stderr, or raise ONE line.

    The one place where exit codes, signals and timeouts become errors. ``stage`` names the
    step ("Paddle Lite opt (x86) on m.pdmodel"); ``env`` replaces the environment (default: this
    one), with ``GLOG_minloglevel=2`` unless given; the output is also appended to ``log`` when a
    list is passed (callers that scan it). For commands that are not ``python -m module``
    (another interpreter, a script), e.g. a Paddle 3 environment.
    """
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("GLOG_minloglevel", "2")
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=full_env,
                              cwd=str(cwd) if cwd is not None else None)
    except subprocess.TimeoutExpired as e:
        raise EdgeShituError(f"{stage} did not finish in {timeout:.0f} s") from e
    output = (proc.stdout or "") + (proc.stderr or "")
    if log is not None:
        log.append(output)
    if proc.returncode != 0:
        raise EdgeShituError(f"{stage} failed ({how_it_ended(proc.returncode)}): {telling_line(output)}")
    return output


def run_worker(module: str, job: Mapping[str, Any], *, stage: str, timeout: float,
               env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None,
               log: Optional[list[str]] = None) -> Any:
    """Run ``python -m module --worker JOB`` (this interpreter) through :func:`run_child` and
    return what the module's :func:`worker_main` handler returned."""
    with tempfile.TemporaryDirectory(prefix="es-child-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, "--worker", json.dumps({**job, RESULT_KEY: str(result)})]
        output = run_child(cmd, stage=stage, timeout=timeout, env=env, cwd=cwd, log=log)
        if not result.exists():
            raise EdgeShituError(f"{stage} failed (exit 0 without a result): {telling_line(output)}")
        return json.loads(result.read_text())


def worker_main(handler: Callable[[dict[str, Any]], Any], argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The child side: ``--worker JOB_JSON`` -> ``handler(job)``; its return value is written for
    :func:`run_worker`. An EdgeShituError prints as one ``edge-shitu:`` line (exit 1); anything
    else keeps its traceback, whose last line the parent reports."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--worker":
        print(f"usage: python -m {_module_name()} --worker JOB_JSON", file=sys.stderr)
        sys.exit(2)
    job = json.loads(args[1])
    result_file = job.pop(RESULT_KEY, None)
    try:
        out = handler(job)
    except EdgeShituError as e:
        print(f"edge-shitu: {e}", file=sys.stderr)
        sys.exit(1)
    if result_file:
        Path(result_file).write_text(json.dumps(out))
    sys.exit(0)


def _module_name() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


# ----------------------------------------------------------------------------- feeds across processes
def save_feeds(feeds: Sequence[Mapping[str, np.ndarray]], path: str | os.PathLike[str]) -> None:
    """Per-sample feed dicts -> one ``.npz`` (keys ``i::name``) a worker reads with :func:`load_feeds`."""
    flat = {f"{i}::{k}": np.asarray(v) for i, f in enumerate(feeds) for k, v in f.items()}
    np.savez(path, **flat)


def load_feeds(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    out: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        i, name = key.split("::", 1)
        out.setdefault(int(i), {})[name] = data[key]
    return [out[i] for i in sorted(out)]
