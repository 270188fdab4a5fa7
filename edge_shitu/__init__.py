"""edge-shitu: PP-ShiTu on small devices (verified int8 artifacts + a compact binary Hamming index).

The public Python API, the one the CLI itself uses::

    from edge_shitu import GalleryIndex, Recognizer, convert

    convert(rec="rec_model/", det="det_model/", gallery="gallery/", board="rpi4", out="bundle_rpi4")
    rec = Recognizer.open("bundle_rpi4")                 # on the device
    print(rec.recognize_file("shelf.jpg").objects)
    index = GalleryIndex.open("bundle_rpi4/gallery.esidx")
    D, I = index.search(queries, k=5)

Names are imported on first use, so ``import edge_shitu`` stays cheap on a Raspberry Pi and
``convert`` (which needs the ``convert`` extra) costs nothing until it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Bundle", "EdgeShituError", "GalleryIndex", "Recognizer", "__version__", "convert", "load_board"]

_LAZY = {
    "GalleryIndex": ("edge_shitu.gallery_index", "GalleryIndex"),
    "Recognizer": ("edge_shitu.recognizer", "Recognizer"),
    "Bundle": ("edge_shitu.bundle", "Bundle"),
    "EdgeShituError": ("edge_shitu.errors", "EdgeShituError"),
    "load_board": ("edge_shitu.boards", "load_board"),
}

if TYPE_CHECKING:
    from edge_shitu.boards import load_board
    from edge_shitu.bundle import Bundle
    from edge_shitu.errors import EdgeShituError
    from edge_shitu.gallery_index import GalleryIndex
    from edge_shitu.recognizer import Recognizer


def convert(rec: Any, gallery: Any, board: str = "rpi4", out: Any = "bundle", *, det: Any = None,
            labels: Any = None, progress: Any = None, det_preprocess: Any = None, rec_preprocess: Any = None,
            **options: Any) -> dict[str, Any]:
    """Prune, quantize, export and verify ``rec`` (and ``det``) for ``board``, index ``gallery``,
    and write one bundle to ``out``; returns the manifest. ``options`` are
    :class:`edge_shitu.converters.convert.ConvertOptions` fields (``allow_degraded=True``,
    ``prune=False``, ``n_calib=16``, ...); ``progress`` a ``callable(str)`` for stage messages
    (default: stderr). ``rec`` / ``det``: a Paddle inference folder, a Paddle 3 folder
    (inference.json) or an ``.onnx`` file; ``det_preprocess`` / ``rec_preprocess``: the
    preprocessing of a model that does not carry it (a YAML path, ``"k=v,..."`` or a mapping:
    docs/model-inputs.md); ``det_classes=`` COCO names / ids or ``"agnostic"``.
    Needs ``pip install 'edge-shitu[convert]'`` (Python 3.10)."""
    from pathlib import Path

    from edge_shitu.converters.convert import ConvertOptions
    from edge_shitu.converters.convert import convert as _convert

    for key in ("calib_dir", "work_dir"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    pre = {k: v for k, v in (("det", det_preprocess), ("rec", rec_preprocess)) if v is not None}
    if pre:
        options["preprocess"] = {**options.get("preprocess", {}), **pre}
    return _convert(Path(rec), Path(gallery), board, Path(out), det_dir=None if det is None else Path(det),
                    labels=None if labels is None else Path(labels), opts=ConvertOptions(**options),
                    progress=progress)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edge_shitu' has no attribute {name!r}")
