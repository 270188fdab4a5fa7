"""Can the board's oldest device runtime load what `convert` made? (issue 19)

A board config names its device runtime and the oldest version of it the board must support
(``"runtime": {"name": "tflite-runtime", "min_version": "2.13.0"}``: Raspberry Pi OS bullseye and
JetPack 5 have glibc 2.31, where ai-edge-litert does not install and pip falls back to
tflite-runtime 2.13). Each TFLite artifact lists its operators' (op, version) pairs; the TFLite
sources say which runtime version introduced each one (``edge_shitu/tflite_ops.py``). An artifact
that needs a newer runtime than the board's oldest is refused here, in one line, before the bundle
is written, instead of on the device ("Didn't find op for builtin opcode ... version ...").

Paddle Lite boards (``paddlelite``) are not checked here: their ``.nb`` files are checked by the
``.nb`` exporter, and the TFLite alternative on Android is run by the LiteRT the app ships.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edge_shitu.boards import Board
from edge_shitu.errors import EdgeShituError
from edge_shitu.tflite_ops import TFLITE_RUNTIMES, check_loadable, required_runtime, show


def check_artifact(path: str | Path, board: Board) -> None:
    """One line (EdgeShituError) when the board's oldest runtime cannot load the TFLite file."""
    rt = board.runtime
    if rt.get("name") not in TFLITE_RUNTIMES or Path(path).suffix != ".tflite":
        return
    check_loadable(path, rt["name"], rt["min_version"],
                   context=f"is the oldest runtime board '{board.name}' must support (board_configs/"
                           f"{board.name}.json runtime.min_version)",
                   advice="convert with an older TensorFlow/onnx2tf, drop this artifact kind from the "
                          "board's artifacts, or raise runtime.min_version if every device runs a newer one")


def check_artifacts(board: Board, paths: Iterable[str | Path]) -> None:
    for p in paths:
        check_artifact(p, board)


def check_bundle_dir(board: Board, root: str | Path) -> None:
    """Every TFLite artifact of a bundle being written (``det/``, ``rec/``) against the board."""
    check_artifacts(board, sorted(Path(root).glob("*/*.tflite")))


def describe(path: str | Path) -> str:
    """'TFLite >= 2.10 (RELU_0_TO_1 version 1)': what a file needs, for reports and messages."""
    need, why = required_runtime(Path(path).read_bytes(), str(path))
    return f"TFLite >= {show(need)}" + (f" ({why})" if why else "")


__all__ = ["EdgeShituError", "check_artifact", "check_artifacts", "check_bundle_dir", "describe"]
