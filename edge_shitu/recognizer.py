"""A bundle opened for recognition: the public device-side object (``edge_shitu.Recognizer``).

:class:`Recognizer` is the PP-ShiTu :class:`~edge_shitu.pipeline.Pipeline` plus what it was
opened from: the bundle, the artifact kinds it loaded and the board's limits. The CLI
(``recognize``, ``camera``, ``gallery add``) and the demo go through it, so a Python user gets
exactly what the command line does::

    from edge_shitu import Recognizer
    rec = Recognizer.open("bundle_rpi4")                   # the board's backend / precision
    result = rec.recognize_file("shelf.jpg")               # or rec.recognize(rgb_uint8_array)
    rec.add_to_gallery(["new1.jpg", "new2.jpg"], label="新品_柠檬茶")

Which artifact is loaded comes from :func:`edge_shitu.formats.kind_for`: TFLite by precision,
Paddle Lite ``.nb`` for this CPU's family. A bundle whose ``.nb`` files hold arm kernels is
refused on x86 with one line naming the runnable alternative (an arm ``.nb`` "runs" on x86
without error and returns garbage).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edge_shitu import formats
from edge_shitu.bundle import Bundle
from edge_shitu.detection import PicoDetHead
from edge_shitu.errors import EdgeShituError
from edge_shitu.gfl_head import GFLHead
from edge_shitu.pipeline import Detector, HammingSearcher, Pipeline, Searcher, Settings, crop_boxes
from edge_shitu.preprocess import RecPreprocess

if TYPE_CHECKING:
    from edge_shitu.gallery_ops import GalleryAdd, GalleryRemove
    from edge_shitu.pipeline import Result


class Recognizer(Pipeline):
    """PP-ShiTu recognition with a bundle's artifacts (see the module doc).

    ``bundle`` is the opened :class:`~edge_shitu.bundle.Bundle`; ``artifact_kind`` the kind the
    extractor was loaded as (``"tflite:int8"``; ``"tflite:int8 (det fp32)"`` when the detector
    runs at another precision); ``max_image_pixels`` the board's decoding budget.
    """

    def __init__(self, rec_backend: Any, rec_pre: RecPreprocess, searcher: Searcher, *, bundle: Bundle,
                 artifact_kind: str, detector: Optional[Detector] = None, settings: Optional[Settings] = None,
                 max_image_pixels: Optional[int] = None) -> None:
        super().__init__(rec_backend, rec_pre, searcher, detector=detector, settings=settings)
        self.bundle = bundle
        self.artifact_kind = artifact_kind
        self.max_image_pixels = max_image_pixels

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, bundle: str | Path | Bundle, *, backend: Optional[str] = None, precision: Optional[str] = None,
             threads: Optional[int] = None, kernel: Optional[str] = None, det_precision: Optional[str] = None,
             **settings: Any) -> Recognizer:
        """Load a bundle for recognition.

        Backend, precision and threads default to the bundle's board config; ``det_precision``
        picks another precision for the detector alone (default: the manifest's
        ``runtime.det_precision`` when no ``precision`` is passed, else ``precision``); ``kernel`` ("auto" | "numpy" |
        "native") the Hamming kernel; other keywords override :class:`Settings`
        (``rec_score_threshold``, ``det_threshold``, ``max_det``, ``rerank``, ...). Artifacts are
        checked against their manifest checksums before they are loaded.
        """
        from edge_shitu.gallery_index import GalleryIndex
        from edge_shitu.runtimes.backend import open_backend

        b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        rt = b.runtime
        backend = formats.backend_name(backend or rt.get("backend", "tflite"))
        if not formats.BACKENDS[backend].device:
            raise EdgeShituError(f"--backend {backend} runs reference models, not bundle artifacts: use one of "
                                 f"{', '.join(n for n, i in formats.BACKENDS.items() if i.device)}")
        explicit = precision
        precision = precision or rt.get("precision", "fp32")
        threads = int(threads or rt.get("threads", 1))
        kind = _runnable_kind(b, "rec", backend, precision)
        if det_precision is None and explicit is None:  # the bundle's choice (e.g. fp32 over a 16x8 detector)
            det_precision = rt.get("det_precision") if rt.get("det_precision") != precision else None
        det_kind = _runnable_kind(b, "det", backend, det_precision or precision) if b.has_detector else None

        rec_art = b.artifact("rec", kind)
        rec_pre = b.preprocess("rec")
        _use_bundle_kernel(b, kernel)
        index = GalleryIndex.open(b.index_path)
        b.check_index(index)  # index and extractor agree, before any photo
        rec_backend = open_backend(rec_art.path, rec_art.backend, threads)
        detector = None
        if det_kind is not None:
            det_art = b.artifact("det", det_kind)
            det_pre = b.preprocess("det")
            details = det_art.details
            head: Any = None
            if isinstance(details.get("head"), dict) and details["head"].get("type") == "gfl":
                head = GFLHead.from_dict(details["head"])  # raw GFL maps (an ONNX PicoDet without NMS)
            elif details.get("cut_before_nms") and details.get("head"):
                head = PicoDetHead.from_dict(details["head"])
            detector = Detector(open_backend(det_art.path, det_art.backend, threads), det_pre, head)
        # numpy's BLAS / OpenCV helper threads busy-wait after their small per-photo jobs and take
        # the cores from the interpreters (runtimes/helper_threads.py): one thread each
        from edge_shitu.preprocess import _opencv
        from edge_shitu.runtimes.helper_threads import limit_helper_threads

        _opencv()
        limit_helper_threads(1)
        s = Settings.from_runtime({**rt, "rerank": b.manifest["index"].get("rerank", 0)}, **settings)
        searcher = HammingSearcher(index, k=int(s.top_k), rerank=int(s.rerank))
        label = kind if not det_precision else f"{kind} (det {det_precision})"
        return cls(rec_backend, rec_pre, searcher, bundle=b, artifact_kind=label, detector=detector, settings=s,
                   max_image_pixels=b.max_image_pixels)

    # ------------------------------------------------------------------ photos
    def load(self, path: str | Path) -> np.ndarray:
        """Decode a photo as RGB uint8 within the board's pixel budget (one-line error otherwise)."""
        from edge_shitu.preprocess import load_image

        return load_image(path, max_pixels=self.max_image_pixels)

    def recognize_file(self, path: str | Path) -> Result:
        return self.recognize(self.load(path))

    # ------------------------------------------------------------------ gallery edits
    @property
    def index(self) -> Any:
        return self.searcher.index  # type: ignore[attr-defined]

    def main_object_box(self, img: np.ndarray) -> Optional[tuple[int, int, int, int]]:
        """The best detection above the detector threshold (integer box), or None (whole photo)."""
        if self.detector is None:
            return None
        h, w = img.shape[:2]
        boxes = crop_boxes(self.detect(img, {}), w, h, min_side=8)
        return tuple(boxes[0][0]) if boxes else None  # type: ignore[return-value]

    def add_to_gallery(self, photos: Sequence[str | Path], label: str, *, whole_image: bool = False) -> GalleryAdd:
        """Embed photos of one product and append them to the bundle's index (see
        :func:`edge_shitu.gallery_ops.add_photos`)."""
        from edge_shitu.gallery_ops import add_photos

        return add_photos(self, photos, label, whole_image=whole_image)

    def remove_from_gallery(self, ids: Sequence[int] = (), label: Optional[str] = None) -> GalleryRemove:
        from edge_shitu.gallery_ops import remove_items

        return remove_items(self.bundle, ids, label)


def _runnable_kind(b: Bundle, model: str, backend: str, precision: str) -> str:
    """The artifact kind to load for ``model``; one line when this host cannot run what was asked."""
    kind = formats.kind_for(backend, precision)
    have = [a.kind for a in b.artifacts(model)]
    if kind in have:
        return kind
    here = platform.machine() or "this"
    other = [k for k in have if formats.ARTIFACT_FORMATS.get(k) is not None
             and formats.ARTIFACT_FORMATS[k].backend == backend and formats.ARTIFACT_FORMATS[k].precision == precision]
    alts = formats.alternatives_here(have)
    hint = (f"use --backend {formats.ARTIFACT_FORMATS[alts[0]].backend} --precision "
            f"{formats.ARTIFACT_FORMATS[alts[0]].precision} (the bundle has {alts[0]})" if alts
            else "rebuild the bundle for a board with artifacts this CPU runs (e.g. --board x86-64)")
    board = (b.manifest.get("board") or {}).get("name", "its board")
    if other:
        cpu = formats.ARTIFACT_FORMATS[other[0]].cpu
        raise EdgeShituError(f"{b.root}: built for {board}: its {model} artifact {other[0]} holds {cpu} kernels, "
                             f"which cannot run on this {here} CPU; {hint}")
    raise EdgeShituError(f"{b.root}: no {model} artifact of kind {kind} (the bundle has: {', '.join(have) or 'none'}); "
                         f"{hint}")


def _use_bundle_kernel(b: Bundle, kernel: Optional[str]) -> None:
    """Point the index at the bundle's own C kernel when it was built for this CPU (and no
    other library was named); ``kernel`` ("auto" | "numpy" | "native") overrides the choice."""
    if kernel is not None:
        os.environ["EDGE_SHITU_KERNEL"] = kernel
    lib = b.manifest.get("native_lib")
    if not lib or os.environ.get("EDGE_SHITU_HAMMING_LIB"):
        return
    if formats.native_target_runs_here(lib.get("target", "")):
        os.environ["EDGE_SHITU_HAMMING_LIB"] = str(b.native_lib())  # checksum verified
