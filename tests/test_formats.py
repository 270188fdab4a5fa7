"""The artifact-format table: every row is backed by an exporter and a backend, and the rest of the
tree asks the table instead of spelling kinds out."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from edge_shitu import formats
from edge_shitu.errors import EdgeShituError

ROOT = Path(__file__).resolve().parents[1]


def test_kind_for_picks_this_cpu_family() -> None:
    assert formats.kind_for("tflite", "int8") == "tflite:int8"
    assert formats.kind_for("nb", "fp32", machine="aarch64") == "nb:arm:fp32"
    assert formats.kind_for("nb", "int8", machine="armv7l") == "nb:arm:int8"
    assert formats.kind_for("nb", "int8", machine="x86_64") == "nb:x86:int8"
    assert formats.kind_for("paddlelite", "fp32", machine="x86_64") == "nb:x86:fp32"  # old board alias
    with pytest.raises(EdgeShituError, match="unknown backend 'coreml'"):
        formats.kind_for("coreml", "int8")
    with pytest.raises(EdgeShituError, match="unknown precision"):
        formats.kind_for("tflite", "int4")
    with pytest.raises(EdgeShituError, match="no nb artifact kind has precision fp16"):
        formats.kind_for("nb", "fp16")


def test_rows_are_consistent_and_file_names_stable() -> None:
    for kind, f in formats.ARTIFACT_FORMATS.items():
        assert f.kind == kind and f.precision in formats.PRECISIONS and f.backend in formats.BACKENDS
        assert f.suffix == formats.BACKENDS[f.backend].suffix
        assert kind.startswith(f.family + ":") and kind.endswith(":" + f.precision)
    # the names bundles already carry (docs/bundle-format.md)
    assert formats.artifact_format("nb:arm:int8").filename("rec") == "rec_arm_int8.nb"
    assert formats.artifact_format("tflite:fp16").filename("det") == "det_fp16.tflite"
    assert not formats.artifact_format("nb:arm:int8").runs_here("x86_64")
    assert formats.artifact_format("nb:arm:int8").runs_here("aarch64")
    assert formats.artifact_format("tflite:int8").runs_here("x86_64")
    assert formats.alternatives_here(["nb:arm:int8", "tflite:fp32", "tflite:int8"], "x86_64") == \
        ["tflite:int8", "tflite:fp32"]
    with pytest.raises(EdgeShituError, match="unknown artifact kind 'tflite:int4'; known: tflite:fp32"):
        formats.artifact_format("tflite:int4")


def test_artifact_type_derives_everything_from_its_kind(tmp_path: Path) -> None:
    a = formats.Artifact("nb:arm:int8", str(tmp_path / "rec_arm_int8.nb"), 10)
    assert isinstance(a.path, Path)
    assert (a.format, a.precision, a.target, a.backend) == ("nb", "int8", "arm", "nb")
    assert a.to_dict()["target"] == "arm" and a.to_dict()["fidelity"] is None


def test_every_row_has_an_exporter_and_every_backend_a_module() -> None:
    for f in formats.ARTIFACT_FORMATS.values():
        path = ROOT / "converters" / f"{f.exporter}.py"
        assert path.is_file(), f"{f.kind}: no converters/{f.exporter}.py"
        assert re.search(r"^def export\(", path.read_text(encoding="utf-8"), re.M), \
            f"converters/{f.exporter}.py has no export(job) entry point (docs/architecture.md)"
    for b in formats.BACKENDS.values():
        assert importlib.util.find_spec(b.module) is not None, b.module
        src = Path(importlib.util.find_spec(b.module).origin).read_text(encoding="utf-8")  # type: ignore[arg-type]
        assert f"class {b.cls}" in src


def test_kind_literals_live_in_the_table() -> None:
    """Outside formats.py, tests and docs, artifact kinds are asked of the table: a handful of
    literals at most (the issue's target), and no parsing of kind strings."""
    pat = re.compile(r"""["'](?:nb:(?:arm|x86)|tflite|onnx):(?:fp32|fp16|int8)["']|["'](?:nb|tflite):["']""")
    split = re.compile(r"""\.split\(["']:["']\)""")
    hits, splits = [], []
    for folder in ("edge_shitu", "converters", "runtimes", "benchmarks"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            if p.name == "formats.py":
                continue
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if pat.search(line):
                    hits.append(f"{p.relative_to(ROOT)}:{n}")
                if split.search(line) and "kind" in line:
                    splits.append(f"{p.relative_to(ROOT)}:{n}")
    assert len(hits) <= 5, hits
    assert not splits, splits


def test_package_root_is_the_public_api() -> None:
    """(Its import footprint is checked with the CLI's in tests/test_pipeline.py.)"""
    import edge_shitu

    assert edge_shitu.Recognizer.__module__ == "edge_shitu.recognizer"
    assert edge_shitu.GalleryIndex.__module__ == "edge_shitu.gallery_index"
    assert callable(importlib.import_module("edge_shitu").convert)
    with pytest.raises(AttributeError):
        edge_shitu.no_such_name  # noqa: B018
