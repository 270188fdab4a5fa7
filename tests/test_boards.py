"""Board configs: every shipped config loads; bad names and bad files get one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_shitu.boards import list_boards, load_board
from edge_shitu.errors import EdgeShituError

REQUIRED = {"rpi4", "rpi5", "jetson-nano", "jetson-orin", "android-arm64", "x86-64"}


def test_all_required_boards_ship_and_load() -> None:
    assert REQUIRED <= set(list_boards())
    for name in list_boards():
        b = load_board(name)
        assert b.name == name and b.threads >= 1 and b.artifacts
        assert f"tflite:{b.precision}" in b.artifacts or f"nb:arm:{b.precision}" in b.artifacts


def test_unknown_board_lists_valid_ones() -> None:
    with pytest.raises(EdgeShituError, match=r"unknown board 'rpi9'; valid boards: .*rpi4"):
        load_board("rpi9")
    r = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "boards", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and {b["name"] for b in json.loads(r.stdout)} >= REQUIRED


@pytest.mark.parametrize(("patch", "msg"), [
    ({"backend": "onnx"}, "backend must be one of"),
    ({"threads": 0}, "threads must be >= 1"),
    ({"artifacts": ["tflite:int4"]}, "unknown artifact kind"),
    ({"schema": 2}, "schema"),
])
def test_invalid_config_is_rejected(tmp_path: Path, patch: dict, msg: str) -> None:
    raw = {**load_board("rpi4").to_dict(), **patch}
    p = tmp_path / "custom.json"
    p.write_text(json.dumps(raw))
    with pytest.raises(EdgeShituError, match=msg):
        load_board(p)
