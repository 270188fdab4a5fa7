"""A gallery of labelled product photos in PaddleClas's layout.

PaddleClas keeps an image root plus a text file of ``relative/path.jpg<TAB>label`` lines
(``drink_label.txt``). ``convert`` embeds these photos to build the index; the device adds to
it later. Unreadable photos are skipped and counted, never fatal: one bad JPEG must not stop a
shop from building its gallery.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_shitu.errors import EdgeShituError
from edge_shitu.formats import is_image_file
from edge_shitu.preprocess import load_image

LABEL_FILES = ("drink_label_all.txt", "drink_label.txt", "labels.txt", "label.txt")


@dataclass(frozen=True)
class GalleryItem:
    path: Path
    label: str


@dataclass
class Gallery:
    root: Path
    items: list[GalleryItem]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]

    def images(self, warn: bool = True) -> Iterator[tuple[GalleryItem, np.ndarray]]:
        """Decoded images; unreadable ones are recorded in ``skipped`` and left out."""
        for item in self.items:
            try:
                yield item, load_image(item.path)
            except EdgeShituError as e:
                self.skipped.append((item.path, str(e)))
                if warn:
                    print(f"edge-shitu: warning: skipping {e}", file=sys.stderr)


def read_gallery(root: str | Path, labels: str | Path | None = None) -> Gallery:
    """The gallery under ``root``: from a ``path<TAB>label`` file, or from one folder per label.

    Without ``labels``, a label file in the root is used if there is one (PaddleClas's names),
    otherwise every image in a sub-folder gets the folder's name as its label.
    """
    root = Path(root)
    if not root.is_dir():
        raise EdgeShituError(f"gallery {root} is not a directory; pass the folder that holds the photos")
    if labels is None:
        found = [root / n for n in LABEL_FILES if (root / n).is_file()]
        labels = found[0] if found else None
    items: list[GalleryItem] = []
    if labels is not None:
        lab = Path(labels)
        try:
            lines = lab.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise EdgeShituError(f"labels file {lab} not found") from None
        except UnicodeDecodeError:
            raise EdgeShituError(f"labels file {lab} is not UTF-8 text; save it as UTF-8") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2 or not parts[0].strip() or not parts[-1].strip():
                raise EdgeShituError(f"labels file {lab}: line {n} is not 'path<TAB>label' (PaddleClas gallery "
                                     "format)")
            items.append(GalleryItem(root / parts[0].strip(), parts[-1].strip()))
    else:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for img in sorted(folder.iterdir()):
                if is_image_file(img):
                    items.append(GalleryItem(img, folder.name))
    if not items:
        raise EdgeShituError(f"gallery {root} has no images (expected a 'path<TAB>label' file such as "
                             "drink_label.txt, or one sub-folder of photos per label)")
    return Gallery(root, items)


def expand_images(paths: Sequence[Path]) -> Iterator[Path]:
    """Files as given (a bad one is reported by the loader, by name); folders expanded to the
    photos inside them, sorted and recursive."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if is_image_file(q) and q.is_file())
        else:
            yield p
