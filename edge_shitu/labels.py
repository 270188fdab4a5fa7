"""Reading label and id lists (PaddleClas's ``path<TAB>label`` lines or plain labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_shitu.errors import EdgeShituError


def _read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EdgeShituError(f"{what} file {p} not found") from None
    except UnicodeDecodeError:
        raise EdgeShituError(f"{what} file {p} is not UTF-8 text; save it as UTF-8") from None
    except OSError as e:
        raise EdgeShituError(f"{what} file {p} cannot be read: {e.strerror}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_labels(path: str | Path) -> list[str]:
    """One label per line; a line ``path<TAB>label`` gives its last tab field (PaddleClas layout)."""
    out = []
    for n, line in enumerate(_read_lines(path, "labels"), 1):
        label = line.split("\t")[-1].strip()
        if not label:
            raise EdgeShituError(f"labels file {path}: line {n} has no label; give one label per feature row")
        out.append(label)
    return out


def read_ids(path: str | Path) -> np.ndarray:
    """One non-negative integer id per line."""
    ids = []
    for n, line in enumerate(_read_lines(path, "ids"), 1):
        try:
            v = int(line.strip())
        except ValueError:
            raise EdgeShituError(f"ids file {path}: line {n} ('{line.strip()}') is not an integer") from None
        if v < 0 or v >= 2**63:
            raise EdgeShituError(f"ids file {path}: line {n}: id {v} out of range (0 .. 2^63-1)")
        ids.append(v)
    return np.asarray(ids, dtype=np.int64)


def load_features(path: str | Path) -> np.ndarray:
    """A float feature matrix from .npy (never unpickles)."""
    p = Path(path)
    try:
        x = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise EdgeShituError(f"features file {p} not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise EdgeShituError(f"features file {p} is not a readable .npy array ({str(e).splitlines()[0]}); "
                             "save features with numpy.save") from None
    if not isinstance(x, np.ndarray):
        raise EdgeShituError(f"features file {p}: expected one array (.npy), not an archive")
    return x
