"""``gallery build``: the index a Ray cluster builds equals the one-process index; a killed worker
and an interrupted run change nothing; unreadable and duplicate photos; the CLI.

Extractor: torchvision's ImageNet MobileNetV2 + GeM exported as a Paddle model with REAL weights
(``converters/mobilenet_v2.export_extractor``, 160 px to keep CI fast), run through its FP32 Paddle reference.
Photos: 200 of the drink gallery (every 4th line of drink_label.txt) for the Ray tests; a
handful of copies (plus a duplicate, a truncated JPEG and a text file) for the others. The Ray
tests start a real local cluster in this process (``ray.init(num_cpus=2)``) and skip, saying
why, when ray is not installed (``pip install 'edge-shitu[cluster]'``).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_shitu.assets import DRINK_GALLERY, DRINK_LABELS
from edge_shitu.gallery_index import GalleryIndex
from edge_shitu.index_format import planes_to_rows
from tests.conftest import require_asset

N_PHOTOS = 200
SHARD = 20


@pytest.fixture(scope="module")
def rec_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("paddle", reason="the FP32 reference needs paddlepaddle (the .venv conversion stack)")
    from edge_shitu.converters.mobilenet_v2 import export_extractor

    try:
        return Path(export_extractor(None, tmp_path_factory.mktemp("rec") / "mnv2", input_size=160))
    except Exception as e:  # the weights come from a package make setup installs
        pytest.skip(f"torchvision MobileNetV2 weights unavailable ({e}); run make setup")


@pytest.fixture(scope="module")
def drink_subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = require_asset(*DRINK_GALLERY)
    lines = require_asset(*DRINK_LABELS).read_text(encoding="utf-8").splitlines()
    labels = tmp_path_factory.mktemp("subset") / "labels.txt"
    labels.write_text("\n".join(lines[::4][:N_PHOTOS]) + "\n", encoding="utf-8")
    return root, labels


def _opts(work: Path, **kw: Any) -> Any:
    from edge_shitu.gallery_build import BuildOptions

    return BuildOptions(shard_size=SHARD, work_dir=work, progress=False, **kw)


def _build(gallery: tuple[Path, Path] | Path, rec: Path, out: Path, **kw: Any) -> Any:
    from edge_shitu.gallery_build import build_gallery

    root, labels = gallery if isinstance(gallery, tuple) else (gallery, None)
    return build_gallery(root, rec, out, labels=labels, opts=_opts(out.parent / "work", **kw), say=lambda m: None)


def _assert_same_index(a: Path, b: Path) -> None:
    x, y = GalleryIndex.open(a).data, GalleryIndex.open(b).data
    assert x.count == y.count
    np.testing.assert_array_equal(planes_to_rows(x.planes, np.arange(x.count)),
                                  planes_to_rows(y.planes, np.arange(y.count)))
    np.testing.assert_array_equal(x.ids, y.ids)
    assert [x.labels[i] for i in x.label_of] == [y.labels[i] for i in y.label_of]
    np.testing.assert_array_equal(x.proj, y.proj)
    assert x.meta == y.meta  # nothing run-dependent (hosts, timings) goes into the file


@pytest.fixture(scope="module")
def reference(rec_model: Path, drink_subset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process index of the 200 photos (the default: no Ray)."""
    out = tmp_path_factory.mktemp("local") / "g.esidx"
    res = _build(drink_subset, rec_model, out)
    assert res.indexed == N_PHOTOS and not res.unreadable and res.runner["engine"] == "local"
    return out


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'edge-shitu[cluster]' (ray[data])")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'edge-shitu[cluster]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- one process
def test_local_build_equals_convert_features_and_gallery_index_build(rec_model: Path, tmp_path: Path) -> None:
    """The features are convert's (same code path) and the index is GalleryIndex.build's."""
    from edge_shitu.gallery import read_gallery
    from edge_shitu.gallery_build_embed import embed_images, rec_preprocess_for

    root = require_asset(*DRINK_GALLERY)
    labels = tmp_path / "l.txt"
    labels.write_text("\n".join(require_asset(*DRINK_LABELS).read_text(encoding="utf-8").splitlines()[:12]),
                      encoding="utf-8")
    g = read_gallery(root, labels)
    feats = embed_images(rec_model, "paddle", rec_preprocess_for(rec_model), [im for _, im in g.images()], 1)
    want = GalleryIndex.build(feats, g.labels, bits=256, rerank_vectors=True)
    want.save(tmp_path / "want.esidx")
    res = _build((root, labels), rec_model, tmp_path / "g.esidx", rerank_vectors=True)
    got = GalleryIndex.open(tmp_path / "g.esidx").data
    w = want.data
    np.testing.assert_array_equal(planes_to_rows(got.planes, np.arange(got.count)),
                                  planes_to_rows(w.planes, np.arange(w.count)))
    np.testing.assert_array_equal(got.ids, w.ids)
    np.testing.assert_array_equal(got.vectors, w.vectors)
    assert got.labels == w.labels and got.meta["cosine_of_distance"] == w.meta["cosine_of_distance"]
    assert res.itq_sample == {"rows": 12, "of": 12, "seed": 0}


def test_unreadable_counted_duplicates_embedded_once_and_resume(rec_model: Path, tmp_path: Path) -> None:
    src = sorted(require_asset(*DRINK_GALLERY).glob("7/*.jpg"))[:3]
    g = tmp_path / "g"
    for d in ("a", "b"):
        (g / d).mkdir(parents=True)
    for i, p in enumerate(src):
        shutil.copy(p, g / "a" / f"{i}.jpg")
    shutil.copy(src[0], g / "b" / "same_bytes.jpg")  # a duplicate under another label
    (g / "b" / "truncated.jpg").write_bytes(src[1].read_bytes()[:300])
    (g / "b" / "notes.jpg").write_text("not a photo")
    out = tmp_path / "g.esidx"
    res = _build(g, rec_model, out)
    assert res.photos == 6 and res.indexed == 4 and res.unique == 3 and res.duplicates == 1
    assert sorted(Path(b["path"]).name for b in res.unreadable) == ["notes.jpg", "truncated.jpg"]
    assert res.photos_embedded == 5  # 3 distinct photos + the 2 bad ones tried once; the duplicate not
    index = GalleryIndex.open(out)
    meta = index.data.meta
    assert meta["unreadable"]["count"] == 2 and meta["gallery"]["duplicates"] == 1
    codes = planes_to_rows(index.data.planes, np.arange(4))
    labels = [index.data.labels[i] for i in index.data.label_of]
    assert labels == ["a", "a", "a", "b"] and np.array_equal(codes[0], codes[3])
    # ids are gallery positions: a/0..2 = 0..2, b/notes.jpg = 3 (unreadable), b/same_bytes.jpg = 4
    np.testing.assert_array_equal(index.data.ids, [0, 1, 2, 4])
    again = _build(g, rec_model, out)  # everything (the failures included) is known: nothing re-embedded
    assert again.photos_embedded == 0 and again.shards_reused == res.shards and len(again.unreadable) == 2


def test_cli_gallery_build_json(rec_model: Path, tmp_path: Path) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from edge_shitu.cli_gallery_build import register

    app = typer.Typer()
    sub = typer.Typer()
    register(sub)
    app.add_typer(sub, name="gallery")
    root = require_asset(*DRINK_GALLERY)
    labels = tmp_path / "l.txt"
    labels.write_text("\n".join(require_asset(*DRINK_LABELS).read_text(encoding="utf-8").splitlines()[:6]),
                      encoding="utf-8")
    r = CliRunner().invoke(app, ["gallery", "build", str(root), "--labels", str(labels), "--rec", str(rec_model),
                                 "-o", str(tmp_path / "g.esidx"), "--bits", "128", "--work", str(tmp_path / "w"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["indexed"] == 6 and d["unreadable_count"] == 0 and d["runner"]["engine"] == "local"
    assert GalleryIndex.open(tmp_path / "g.esidx").bits == 128
    assert any((tmp_path / "w" / "shards").rglob("*.npy"))


# ---------------------------------------------------------------- on a real local Ray cluster
def test_ray_index_equals_single_process(ray_cluster: Any, rec_model: Path, drink_subset: tuple[Path, Path],
                                         reference: Path, tmp_path: Path) -> None:
    workers: set[str] = set()
    res = _build(drink_subset, rec_model, tmp_path / "g.esidx", ray="auto", workers=2,
                 on_shard=lambda s: workers.add(s["worker"]))
    assert res.runner["engine"] == "ray" and res.runner["workers"] == 2
    assert res.shards_embedded == N_PHOTOS // SHARD
    assert len(workers) == 2  # both actors did work
    _assert_same_index(tmp_path / "g.esidx", reference)


def test_ray_worker_killed_mid_run_is_retried(ray_cluster: Any, rec_model: Path, drink_subset: tuple[Path, Path],
                                              reference: Path, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_first_worker(s: dict[str, Any]) -> None:
        if not killed:
            pid = int(s["worker"].rsplit(":", 1)[1])
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)  # the actor process, busy with its next shard
            killed.append(pid)

    res = _build(drink_subset, rec_model, tmp_path / "g.esidx", ray="auto", workers=2, on_shard=kill_first_worker)
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # it is really gone: its shard was retried on a restarted actor
    assert res.shards_embedded == N_PHOTOS // SHARD and res.indexed == N_PHOTOS and not res.unreadable
    _assert_same_index(tmp_path / "g.esidx", reference)


def test_ray_interrupted_run_resumes_without_reembedding(ray_cluster: Any, rec_model: Path,
                                                         drink_subset: tuple[Path, Path], reference: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "g.esidx"
    seen: list[str] = []

    def ctrl_c_after_3(s: dict[str, Any]) -> None:
        seen.append(s["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(drink_subset, rec_model, out, ray="auto", workers=2, on_shard=ctrl_c_after_3)
    assert not out.exists()  # no index until the end
    shard_dir = next((tmp_path / "work" / "shards").iterdir())
    finished = {p.stem: p.stat().st_mtime_ns for p in shard_dir.glob("*.npy")}
    assert set(finished) == set(seen)
    again: list[str] = []
    res = _build(drink_subset, rec_model, out, ray="auto", workers=2, on_shard=lambda s: again.append(s["key"]))
    assert res.shards_reused == 3 and res.photos_embedded == N_PHOTOS - 3 * SHARD
    assert not set(again) & set(seen)
    assert {p.stem: p.stat().st_mtime_ns for p in shard_dir.glob("*.npy") if p.stem in finished} == finished
    _assert_same_index(out, reference)
