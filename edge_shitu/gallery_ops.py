"""Gallery edits on the device: add photos of a product, remove items, list what is there.

Library calls behind ``edge-shitu gallery add | remove | list`` (the CLI only parses and prints)
and :meth:`edge_shitu.Recognizer.add_to_gallery`. The index file is changed in place under its
lock and replaced atomically (``edit_index_file``), so a running recognizer on the same bundle
and a crash mid-edit both see either the old gallery or the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edge_shitu.bundle import Bundle
from edge_shitu.errors import EdgeShituError
from edge_shitu.gallery import expand_images

if TYPE_CHECKING:
    from edge_shitu.recognizer import Recognizer


@dataclass
class GalleryAdd:
    """What ``add_photos`` did: the new items (id, photo, box), the gallery size after, and the
    photos that could not be read (reported, not fatal)."""

    label: str
    added: list[dict[str, Any]]
    items: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (photo, one-line reason)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "added": self.added, "items": self.items,
                "failed": [f for f, _ in self.failed]}


@dataclass
class GalleryRemove:
    removed: int
    ids: list[int]
    items: int

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "ids": self.ids, "items": self.items}


def add_photos(rec: Recognizer, photos: Sequence[str | Path], label: str, *,
               whole_image: bool = False) -> GalleryAdd:
    """Embed photos (files or folders) of one product with the bundle's own models and append them.

    Each photo contributes its detector's main object (the whole photo when nothing is detected
    or ``whole_image``), embedded by the extractor the recognizer loaded; the new items are
    searchable at once. Raises when no photo could be read; otherwise unreadable ones are listed.
    """
    from edge_shitu.gallery_index import edit_index_file

    if not label.strip():
        raise EdgeShituError("the label must not be empty")
    files = list(expand_images([Path(p) for p in photos]))
    crops, boxes, used, failed = [], [], [], []
    for f in files:
        try:
            img = rec.load(f)
        except EdgeShituError as e:
            failed.append((str(f), str(e)))
            continue
        box = None if whole_image else rec.main_object_box(img)
        x1, y1, x2, y2 = box or (0, 0, img.shape[1], img.shape[0])
        crops.append(img[y1:y2, x1:x2])
        boxes.append([x1, y1, x2, y2])
        used.append(str(f))
    if not crops:
        why = f": {failed[0][1]}" if len(failed) == 1 else ""
        raise EdgeShituError(f"none of the {len(files)} photo(s) could be read{why}: nothing added")
    feats = rec.embed(crops)
    with edit_index_file(rec.bundle.index_path) as index:
        ids = index.add(feats, [label] * len(crops))
        live = len(index)
    added = [{"id": int(i), "image": u, "box": b} for i, u, b in zip(ids, used, boxes)]
    return GalleryAdd(label, added, live, failed)


def remove_items(bundle: str | Path | Bundle, ids: Sequence[int] = (), label: Optional[str] = None) -> GalleryRemove:
    """Remove items by id and/or every item with ``label``; they stop matching at once."""
    from edge_shitu.gallery_index import edit_index_file

    if not ids and label is None:
        raise EdgeShituError("say what to remove: gallery ids, or a label")
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    with edit_index_file(b.index_path) as index:
        targets = [int(i) for i in ids]
        if label is not None:
            targets += [i for i, lab in index.items() if lab == label]
            if not targets:
                raise EdgeShituError(f"no gallery item has the label {label!r} ('edge-shitu gallery list' shows them)")
        removed = index.remove(sorted(set(targets)))
        live = len(index)
    return GalleryRemove(removed, sorted(set(targets)), live)


def list_items(bundle: str | Path | Bundle, label: Optional[str] = None) -> dict[str, list[int]]:
    """{label: [ids]} of the live items (only ``label`` when given), in index order."""
    from edge_shitu.gallery_index import GalleryIndex

    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    by_label: dict[str, list[int]] = {}
    for i, lab in GalleryIndex.open(b.index_path).items():
        if label is None or lab == label:
            by_label.setdefault(lab, []).append(i)
    return by_label
