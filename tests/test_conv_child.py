"""The converter's plumbing: the one child-process runner and the one exporter contract.

Fast: no model is converted. This module is also the worker the runner tests start
(``python -m tests.test_conv_child --worker JOB``), so each way a child can end (a result, a
one-line error, a crash by signal, a hang) is produced for real.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_shitu.converters.child import how_it_ended, run_worker, telling_line, worker_main
from edge_shitu.converters.exporter import ExportJob, groups, kind_named
from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import ARTIFACT_FORMATS, artifact_format

ROOT = Path(__file__).resolve().parent.parent
WORKER = "tests.test_conv_child"


def _handler(job: dict[str, Any]) -> Any:
    """What the child does, by ``job["do"]``."""
    do = job["do"]
    if do == "ok":
        return {"echo": job["value"], "cwd": os.getcwd()}
    if do == "user-error":
        raise EdgeShituError("the model has no weights:\n copy them")
    if do == "segfault":
        print("Check failure stack trace: ***", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    if do == "exit":
        print("[F 12/ 2 4:00:00.000 op_lite.cc:42] not supported dtype 6", file=sys.stderr)
        print("W0000 00:00:1 some chatter", file=sys.stderr)
        sys.exit(3)
    if do == "sleep":
        time.sleep(30)
    raise ValueError(do)


def _run(job: dict[str, Any], timeout: float = 60, **kw: Any) -> Any:
    return run_worker(WORKER, job, stage="test step", timeout=timeout, cwd=kw.pop("cwd", ROOT), **kw)


def test_worker_result_comes_back() -> None:
    assert _run({"do": "ok", "value": [1, "a"]})["echo"] == [1, "a"]


def test_user_error_is_one_line_with_the_stage() -> None:
    with pytest.raises(EdgeShituError) as e:
        _run({"do": "user-error"})
    msg = str(e.value)
    assert msg.startswith("test step failed (exit 1): edge-shitu: the model has no weights") and "\n" not in msg


def test_signal_is_named() -> None:
    with pytest.raises(EdgeShituError, match=r"test step failed \(signal SIGSEGV\)"):
        _run({"do": "segfault"})


def test_fatal_line_beats_chatter_and_exit_code_is_kept() -> None:
    with pytest.raises(EdgeShituError) as e:
        _run({"do": "exit"})
    assert "(exit 3)" in str(e.value) and "not supported dtype 6" in str(e.value)


def test_timeout_names_stage_and_limit() -> None:
    t0 = time.time()
    with pytest.raises(EdgeShituError, match="test step did not finish in 2 s"):
        _run({"do": "sleep"}, timeout=2)
    assert time.time() - t0 < 20


def test_unexpected_exception_reports_its_last_line() -> None:
    with pytest.raises(EdgeShituError, match=r"\(exit 1\): ValueError: nonsense"):
        _run({"do": "nonsense"})


def test_helpers() -> None:
    assert how_it_ended(0) == "exit 0" and how_it_ended(-6) == "signal SIGABRT" and how_it_ended(2) == "exit 2"
    log = "Traceback (most recent call last):\n  File x\nRuntimeError: opt crashed\n\nW0000 chatter\n"
    assert telling_line(log) == "RuntimeError: opt crashed"
    assert telling_line("just this\n") == "just this" and telling_line("") == "no output"


# ----------------------------------------------------------------------------- exporter contract
def test_file_names_come_from_the_format_table(tmp_path: Path) -> None:
    """The bundle's file names are what they were before the table (readers and docs rely on them)."""
    job = ExportJob(model="rec", kinds=[], sources={"paddle": tmp_path}, out_dir=tmp_path)
    names = {k: job.dest(k).name for k in ("tflite:int8", "tflite:fp16", "tflite:fp32", "nb:arm:int8", "nb:arm:fp32",
                                           "nb:x86:int8", "nb:x86:fp32")}
    assert names == {"tflite:int8": "rec_int8.tflite", "tflite:fp16": "rec_fp16.tflite",
                     "tflite:fp32": "rec_fp32.tflite", "nb:arm:int8": "rec_arm_int8.nb",
                     "nb:arm:fp32": "rec_arm_fp32.nb", "nb:x86:int8": "rec_x86_int8.nb",
                     "nb:x86:fp32": "rec_x86_fp32.nb"}
    assert job.source_for("nb:arm:fp32") == tmp_path
    with pytest.raises(EdgeShituError, match="paddle-int8"):
        job.source_for("nb:arm:int8")


def test_kinds_group_by_exporter_paddle_sources_first() -> None:
    assert groups(["tflite:int8", "tflite:fp32", "nb:arm:int8", "nb:arm:fp32"]) == [
        ["nb:arm:int8", "nb:arm:fp32"], ["tflite:int8", "tflite:fp32"]]
    assert groups(["tflite:fp16"]) == [["tflite:fp16"]]
    for kind, fmt in ARTIFACT_FORMATS.items():  # every row: a kind name and an exporter with the contract
        assert kind_named(fmt.family, fmt.precision, fmt.cpu) == kind
        assert callable(importlib.import_module(f"edge_shitu.converters.{fmt.exporter}").export)
    with pytest.raises(EdgeShituError, match="unknown artifact kind"):
        artifact_format("nb:riscv:int8")


def test_open_backend_dispatches_through_the_table(tmp_path: Path) -> None:
    from edge_shitu.runtimes.backend import infer_kind, open_backend

    assert [infer_kind(f"m{s}") for s in (".tflite", ".nb", ".onnx", ".pdmodel")] == ["tflite", "nb", "onnx", "paddle"]
    (tmp_path / "m.bin").write_bytes(b"")
    with pytest.raises(EdgeShituError, match="unknown model kind 'bogus'"):
        open_backend(tmp_path / "m.bin", "bogus")


if __name__ == "__main__":
    worker_main(_handler)
