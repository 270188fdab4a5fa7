"""The gallery embedder: one model, one preprocessing, one feature per photo.

Why a module of its own: ``edge-shitu convert`` and ``edge-shitu gallery build`` (one process or
a Ray actor per worker) must compute the SAME features for the same photo, bit for bit, or an
index built on a cluster would differ from one built on a workstation. So the feature
computation lives here once: ``runner.run({input: pre.batch([image])})[0]`` as float32, one photo
per call (batch 1, like ``convert``: a larger batch changes the reduction order of some kernels
and with it the last bits of the features).

The model is described by a :class:`ModelSpec` (picklable: Ray ships it to the workers) whose
:meth:`ModelSpec.identity` hashes the model files, the engine and the preprocessing: feature
shards are keyed by it, so a resumed build never mixes features of two models.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_shitu.bundle import sha256_file
from edge_shitu.errors import EdgeShituError
from edge_shitu.preprocess import RecPreprocess, decode_image
from edge_shitu.preprocess import read_image_file as read_photo

PREPROCESS_FILE = "preprocess.json"  # next to a rec model: RecPreprocess.to_dict() (or {"preprocess": ...})
# Bump when the feature computation changes: every shard of an older computation is then stale.
EMBED_VERSION = 1
ENGINES = ("paddle", "tflite")
# The one failure that is not a property of the photo's bytes: a resume must retry it.
CHANGED = "changed while the gallery was being built"


def rec_preprocess_for(model_dir: str | os.PathLike[str]) -> RecPreprocess:
    """The extractor's preprocessing, read exactly as ``convert`` reads it: ``preprocess.json``
    next to the model (the dict itself or a model description with a "preprocess" key), else
    PP-ShiTu's defaults."""
    p = Path(model_dir) / PREPROCESS_FILE
    if p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            return RecPreprocess.from_dict(d.get("preprocess", d) if isinstance(d, dict) else d)
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise EdgeShituError(f"{p}: not a valid preprocessing description ({e})") from None
    return RecPreprocess()


def _model_files(path: Path, kind: str) -> list[Path]:
    if kind == "paddle":
        from edge_shitu.runtimes.paddle_backend import find_model_files

        files = find_model_files(path, need_params=True)
        return [files.model_path] + ([files.params_path] if files.params_path else [])
    if not path.is_file():
        raise EdgeShituError(f"--artifact {path}: not a file (pass the .tflite artifact)")
    return [path]


@dataclass(frozen=True)
class ModelSpec:
    """Which model embeds the gallery: the FP32 Paddle reference (a model folder) or an artifact
    (``.tflite``), the preprocessing of the rec model folder, and the engine's thread count."""

    path: str
    kind: str
    preprocess: dict[str, Any] = field(hash=False)
    threads: int = 1

    @classmethod
    def resolve(cls, rec: str | os.PathLike[str], artifact: str | os.PathLike[str] | None = None,
                threads: int = 1) -> ModelSpec:
        """``rec``: the Paddle model folder (its ``preprocess.json`` is read either way);
        ``artifact``: a ``.tflite`` converted from it, to embed with instead of the reference."""
        rec = Path(rec)
        if not rec.is_dir():
            raise EdgeShituError(f"--rec {rec}: not a directory (pass the folder with inference.pdmodel)")
        if threads < 1:
            raise EdgeShituError(f"--threads must be >= 1, got {threads}")
        pre = rec_preprocess_for(rec).to_dict()
        if artifact is None:
            return cls(str(rec.resolve()), "paddle", pre, threads)
        art = Path(artifact)
        if art.suffix.lower() != ".tflite":
            raise EdgeShituError(f"--artifact {art}: only .tflite artifacts run on a build host (an arm .nb "
                                 "cannot run on x86)")
        return cls(str(art.resolve()), "tflite", pre, threads)

    def identity(self) -> str:
        """sha256 over what decides the features: engine, model bytes, preprocessing, version."""
        h = hashlib.sha256(f"edge-shitu-embed-v{EMBED_VERSION}\n{self.kind}\n".encode())
        h.update(json.dumps(self.preprocess, sort_keys=True).encode())
        for f in _model_files(Path(self.path), self.kind):
            h.update(f"\n{f.name}:{sha256_file(f)}".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "engine": self.kind, "threads": self.threads, "preprocess": self.preprocess}


class Embedder:
    """A loaded extractor. ``embed_image`` is THE feature computation of the tool."""

    def __init__(self, spec: ModelSpec) -> None:
        from edge_shitu.runtimes.backend import open_backend

        self.spec = spec
        self.pre = RecPreprocess.from_dict(spec.preprocess)
        self.runner = open_backend(spec.path, spec.kind, spec.threads)
        self.input = self.runner.inputs[0].name

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> float32 (dim,): batch 1, raw model output (not normalised)."""
        out = self.runner.run({self.input: self.pre.batch([image])})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def embed_images(self, images: Iterable[np.ndarray]) -> np.ndarray:
        return np.stack([self.embed_image(im) for im in images])

    def embed_files(self, paths: Sequence[str], shas: Sequence[str] | None = None
                    ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """Features of the readable photos, their positions, and (position, why) of the others.

        With ``shas``, a file whose bytes no longer hash to the planned sha256 is refused (it
        changed after it was hashed: its feature would be stored under the wrong key)."""
        feats: list[np.ndarray] = []
        ok: list[int] = []
        failed: list[tuple[int, str]] = []
        for i, p in enumerate(paths):
            try:
                data = read_photo(p)
                if shas is not None and hashlib.sha256(data).hexdigest() != shas[i]:
                    raise EdgeShituError(f"image {p} {CHANGED}: rerun")
                feats.append(self.embed_image(decode_image(data, str(p))))
                ok.append(i)
            except EdgeShituError as e:
                failed.append((i, str(e)))
        x = np.stack(feats) if feats else np.zeros((0, 0), np.float32)
        return x, ok, failed


def embed_images(model: str | os.PathLike[str], kind: str | None, pre: RecPreprocess, images: Iterable[np.ndarray],
                 threads: int = 2) -> np.ndarray:
    """``convert``'s embedding through the one feature computation: ``model`` a Paddle folder
    (``kind="paddle"``) or an artifact file (its backend kind; None: from the file name)."""
    from edge_shitu.runtimes.backend import infer_kind

    spec = ModelSpec(str(model), kind or infer_kind(model), pre.to_dict(), threads)
    return Embedder(spec).embed_images(images)
