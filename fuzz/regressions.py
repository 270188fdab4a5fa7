"""Fuzzer regression inputs are kept as hex text (fuzz/regressions/*.hex), never as binaries:
this turns them into the raw files libFuzzer / atheris and the tests read, and back.

    python fuzz/regressions.py decode DIR     # every .hex -> DIR/<name> (raw bytes); prints DIR
    python fuzz/regressions.py encode FILE    # a raw crash input -> fuzz/regressions/<name>.hex
"""

from __future__ import annotations

import binascii
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "regressions"


def inputs() -> dict[str, bytes]:
    """{name: raw bytes} of every kept input."""
    return {p.stem: binascii.unhexlify("".join(p.read_text(encoding="ascii").split()))
            for p in sorted(HERE.glob("*.hex"))}


def decode(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name, raw in inputs().items():
        (dst / name).write_bytes(raw)
    return dst


def encode(src: Path) -> Path:
    hx = binascii.hexlify(src.read_bytes()).decode("ascii")
    out = HERE / f"{src.name}.hex"
    out.write_text("\n".join(hx[i:i + 96] for i in range(0, len(hx), 96)) + "\n", encoding="ascii")
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "decode":
        print(decode(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "encode":
        print(encode(Path(sys.argv[2])))
    else:
        sys.exit(__doc__)
