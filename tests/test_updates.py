"""On-device updates: add / remove / compact without refitting; crash safety by killing writers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery_index import GalleryIndex, edit_index_file


def _features(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    p = tmp_path / "g.esidx"
    GalleryIndex.build(_features(50), [f"item{i % 10}" for i in range(50)], bits=64).save(p)
    return p


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_add_keeps_hash_parameters_and_finds_new_items(gallery: Path) -> None:
    before = GalleryIndex.open(gallery)
    proj = np.array(before.data.proj)
    new = _features(5, seed=9)
    with edit_index_file(gallery) as idx:
        ids = idx.add(new, ["新品"] * 5)
    assert ids.tolist() == [50, 51, 52, 53, 54]
    after = GalleryIndex.open(gallery)
    assert np.array_equal(after.data.proj, proj) and len(after) == 55
    _, found = after.search(new, k=1)
    assert found[:, 0].tolist() == ids.tolist()
    assert after.query(new[:1], k=1)[0][0].label == "新品"


def test_remove_then_compact_keeps_ids_stable(gallery: Path) -> None:
    x = _features(50)
    with edit_index_file(gallery) as idx:
        assert idx.remove([3, 10, 49]) == 3
    idx = GalleryIndex.open(gallery)
    assert len(idx) == 47 and idx.data.count == 50
    _, ids = idx.search(x[[3, 10]], k=50)
    assert not ({3, 10, 49} & set(ids.ravel().tolist()))
    with edit_index_file(gallery) as idx:
        assert idx.compact() == 3
    idx = GalleryIndex.open(gallery)
    assert idx.data.count == 47 and sorted(idx.ids().tolist()) == sorted(set(range(50)) - {3, 10, 49})
    _, ids = idx.search(x[[20, 30]], k=1)
    assert ids[:, 0].tolist() == [20, 30]
    # auto ids never reuse a removed id
    with edit_index_file(gallery) as idx:
        assert idx.add(_features(1, seed=5), ["z"]).tolist() == [50]


def test_removing_and_compacting_everything_leaves_a_valid_empty_index(gallery: Path) -> None:
    """An empty CODES section used to fail to serialise (memoryview of a zero-size array)."""
    with edit_index_file(gallery) as idx:
        idx.remove(idx.ids())
        assert idx.compact() == 50
    empty = GalleryIndex.open(gallery)
    assert len(empty) == 0 and empty.data.count == 0 and empty.info()["format"] == "edge-shitu index 1.2"
    dist, ids = empty.search(_features(2), k=5)
    assert dist.shape == ids.shape == (2, 0) and empty.query(_features(1), k=3, rerank=5) == [[]]
    with edit_index_file(gallery) as idx:
        assert idx.add(_features(1, seed=4), ["back"]).tolist() == [50]
    assert GalleryIndex.open(gallery).query(_features(1, seed=4), k=1)[0][0].label == "back"


def test_removed_id_can_be_added_again(gallery: Path) -> None:
    with edit_index_file(gallery) as idx:
        idx.remove([7])
        idx.add(_features(1, seed=3), ["again"], ids=[7])
    idx = GalleryIndex.open(gallery)
    assert idx.query(_features(1, seed=3), k=1)[0][0].to_dict()["label"] == "again"


@pytest.mark.parametrize(("action", "msg"), [
    (lambda i: i.remove([3, 12345]), "id 12345 is not in the index"),
    (lambda i: i.add(_features(2), ["a"]), "1 labels for 2 feature rows"),
    (lambda i: i.add(_features(2), ["a", "b"], ids=[1, 2]), "already in the index"),
    (lambda i: i.add(_features(2), ["a", "b"], ids=[80, 80]), "given twice"),
    (lambda i: i.add(_features(2, dim=32), ["a", "b"]), "expects 64"),
    (lambda i: i.add(_features(2).astype(np.int32), ["a", "b"]), "float"),
])
def test_bad_update_leaves_file_unchanged(gallery: Path, action, msg: str) -> None:
    before = _sha(gallery)
    with pytest.raises(EdgeShituError, match=msg), edit_index_file(gallery) as idx:
        action(idx)
    assert _sha(gallery) == before
    assert not [p for p in gallery.parent.iterdir() if ".tmp-" in p.name]


def test_crash_before_rename_leaves_old_file(gallery: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "new.npy", _features(3, seed=4))
    (tmp_path / "new.txt").write_text("a\nb\nc\n")
    before = _sha(gallery)
    env = {**os.environ, "EDGE_SHITU_CRASH_BEFORE_RENAME": "1"}
    r = subprocess.run([sys.executable, "-m", "edge_shitu.cli", "index", "add", str(gallery),
                        str(tmp_path / "new.npy"), "--labels", str(tmp_path / "new.txt")], env=env)
    assert r.returncode == 77
    assert _sha(gallery) == before and GalleryIndex.open(gallery).ntotal == 50
    assert [p for p in gallery.parent.iterdir() if ".tmp-" in p.name]  # the complete-but-unrenamed file
    with edit_index_file(gallery) as idx:
        idx.add(_features(1, seed=8), ["x"])
    assert not [p for p in gallery.parent.iterdir() if ".tmp-" in p.name]  # cleaned by the next writer


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from edge_shitu.gallery_index import edit_index_file
    path = sys.argv[1]
    rng = np.random.default_rng(int(sys.argv[2]))
    while True:
        with edit_index_file(path) as idx:
            ids = idx.add(rng.standard_normal((40, 64)).astype(np.float32), ["w"] * 40)
            idx.remove(ids[::2])
            if idx.data.count > 400:
                idx.compact()
""")


def test_sigkill_at_random_moments_never_corrupts(gallery: Path) -> None:
    """Kill a busy writer with SIGKILL again and again: the file always opens and verifies."""
    rng = np.random.default_rng(0)
    generations = []
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(gallery), str(round_)])
        time.sleep(float(rng.uniform(0.3, 1.2)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        idx = GalleryIndex.open(gallery, verify=True)  # raises if the file were torn
        # each committed update adds 40 and removes 20 in one file replacement: a torn update
        # would show up as a live count off the 20-step grid
        assert (len(idx) - 50) % 20 == 0
        generations.append(idx.data.generation)
    assert generations[-1] > 0, "the writer never finished an update: the test proves nothing"
