"""Issue 13: atomic replaces keep the mode (and owner / group) of the file they replace; new
files and bundle folders follow the umask. In-process through ``atomic_write`` / ``atomic_dir``
and through ``edge-shitu index build | remove | add`` runs under umask 022 and 077."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_shitu.atomic import atomic_dir, atomic_write
from edge_shitu.gallery_index import GalleryIndex


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def es_umask(mask: int, *args: str) -> subprocess.CompletedProcess:
    """``python -m edge_shitu.cli ARGS`` in a shell whose umask is ``mask``."""
    return subprocess.run(["sh", "-c", f'umask {mask:03o} && exec "$0" -m edge_shitu.cli "$@"', sys.executable,
                           *args], capture_output=True, text=True, timeout=300)


def features(tmp: Path, n: int = 30, seed: int = 0) -> tuple[Path, Path]:
    x = np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)
    np.save(tmp / "f.npy", x)
    (tmp / "labels.txt").write_text("".join(f"p{i}\n" for i in range(n)), encoding="utf-8")
    return tmp / "f.npy", tmp / "labels.txt"


def no_leftovers(d: Path) -> None:
    assert not [p.name for p in d.iterdir() if ".tmp-" in p.name], list(d.iterdir())


# ============================================================================ atomic_write
@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_follows_the_umask(tmp_path: Path, mask: int, want: int) -> None:
    with umask(mask), atomic_write(tmp_path / "new.bin") as f:
        f.write(b"hello")
    assert mode(tmp_path / "new.bin") == want and (tmp_path / "new.bin").read_bytes() == b"hello"
    no_leftovers(tmp_path)


@pytest.mark.parametrize("old_mode", [0o644, 0o640, 0o600, 0o664, 0o444])
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_replaced_file_keeps_its_mode(tmp_path: Path, old_mode: int, mask: int) -> None:
    p = tmp_path / "x.esidx"
    p.write_bytes(b"old")
    os.chmod(p, old_mode)
    with umask(mask), atomic_write(p) as f:
        f.write(b"new")
    assert p.read_bytes() == b"new" and mode(p) == old_mode
    no_leftovers(tmp_path)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "x.esidx"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    with pytest.raises(RuntimeError), atomic_write(p) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert p.read_bytes() == b"old" and mode(p) == 0o640
    no_leftovers(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing owners needs root")
def test_replaced_file_keeps_its_owner_and_group(tmp_path: Path) -> None:
    p = tmp_path / "x.esidx"
    p.write_bytes(b"old")
    os.chown(p, 1234, 5678)
    os.chmod(p, 0o640)
    with atomic_write(p) as f:
        f.write(b"new")
    st = os.stat(p)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)


# ============================================================================ atomic_dir
@pytest.mark.parametrize("mask, want", [(0o022, 0o755), (0o077, 0o700)])
def test_new_bundle_folder_follows_the_umask(tmp_path: Path, mask: int, want: int) -> None:
    with umask(mask), atomic_dir(tmp_path / "bundle") as d:
        (d / "manifest.json").write_text("{}")
    assert mode(tmp_path / "bundle") == want and (tmp_path / "bundle" / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_replaced_bundle_folder_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old").write_text("x")
    os.chmod(target, 0o750)
    with umask(0o077), atomic_dir(target) as d:
        (d / "new").write_text("y")
    assert mode(target) == 0o750 and [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_failed_bundle_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "bundle"):
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []


# ============================================================================ the CLI
@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600)])
def test_index_build_follows_the_umask(tmp_path: Path, mask: int, want: int) -> None:
    f, labels = features(tmp_path)
    out = tmp_path / "g.esidx"
    proc = es_umask(mask, "index", "build", str(f), "--labels", str(labels), "--bits", "64", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert mode(out) == want
    no_leftovers(tmp_path)


@pytest.mark.parametrize("old_mode", [0o644, 0o640])
def test_index_edits_keep_the_files_mode(tmp_path: Path, old_mode: int) -> None:
    f, labels = features(tmp_path)
    x = np.load(f)
    out = tmp_path / "g.esidx"
    GalleryIndex.build(x, [f"p{i}" for i in range(len(x))], bits=64).save(out)
    os.chmod(out, old_mode)
    proc = es_umask(0o077, "index", "remove", str(out), "3", "4")
    assert proc.returncode == 0, proc.stderr
    assert mode(out) == old_mode and GalleryIndex.open(out).ntotal == len(x) - 2
    proc = es_umask(0o077, "index", "add", str(out), str(f), "--labels", str(labels))
    assert proc.returncode == 0, proc.stderr
    assert mode(out) == old_mode
    proc = es_umask(0o077, "index", "compact", str(out))
    assert proc.returncode == 0, proc.stderr
    assert mode(out) == old_mode
    no_leftovers(tmp_path)
