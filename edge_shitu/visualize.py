"""Annotated result images whose labels stay readable, Chinese included.

Pillow's built-in font has no CJK glyphs: a Chinese drink label would come out as empty boxes.
So a font is looked for that really draws the label's characters (checked per label, not
guessed from the file name): ``--font``/``EDGE_SHITU_FONT``, then the CJK fonts Debian /
Raspberry Pi OS / Jetson (Ubuntu) / Android install (``fonts-wqy-microhei``, ``fonts-noto-cjk``,
``fonts-droid-fallback``), then ``fc-match``. When none covers a label, the label is drawn as
``#<gallery id>`` with a one-time warning that says which package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edge_shitu.atomic import atomic_write

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/system/fonts/NotoSansCJK-Regular.ttc",  # Android
    "/system/fonts/DroidSansFallback.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Latin labels at least
)
INSTALL_HINT = "install a CJK font (Debian / Raspberry Pi OS: sudo apt install fonts-wqy-microhei) or pass --font"
COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
          (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def _fc_match() -> list[str]:
    if not shutil.which("fc-match"):
        return []
    try:
        r = subprocess.run(["fc-match", "-f", "%{file}", ":lang=zh"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return []
    return [r.stdout.strip()] if r.returncode == 0 and r.stdout.strip() else []


@lru_cache(maxsize=None)  # not functools.cache (3.9+): the device runtime supports 3.8
def _font(path: str, size: int) -> Optional[Any]:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return None


def covers(font: Any, text: str) -> bool:
    """Whether ``font`` draws every character of ``text`` with a real glyph (not .notdef).

    A missing glyph renders as the font's .notdef box, the same bitmap for every missing
    character; compare each character's rendering with that of a private-use code point.
    """
    def bitmap(ch: str) -> bytes:
        mask = font.getmask(ch)
        return bytes(mask) + bytes(str(mask.size), "ascii")

    missing = bitmap("\ue000")
    return all(ch.isspace() or bitmap(ch) != missing for ch in text)


def font_candidates(explicit: Optional[str] = None) -> list[str]:
    chosen = explicit or os.environ.get("EDGE_SHITU_FONT")
    paths = ([chosen] if chosen else []) + list(CJK_FONT_CANDIDATES) + _fc_match()
    return [p for p in dict.fromkeys(paths) if p and Path(p).is_file()]


def find_font(texts: Sequence[str], explicit: Optional[str] = None, size: int = 20) -> Optional[str]:
    """The path of the first candidate font that draws every one of ``texts``, or None."""
    joined = "".join(sorted(set("".join(texts))))
    for p in font_candidates(explicit):
        f = _font(p, size)
        if f is not None and covers(f, joined):
            return p
    return None


def font_for(text: str, size: int, explicit: Optional[str] = None) -> Optional[Any]:
    """The first candidate font that covers ``text``, or None."""
    for p in font_candidates(explicit):
        f = _font(p, size)
        if f is not None and covers(f, text):
            return f
    return None


def draw_results(img: np.ndarray, objects: Sequence[Any], out_path: str | os.PathLike[str], *,
                 font: Optional[str] = None, warn: Any = None) -> Path:
    """Draw each recognized object's box and ``label score`` onto a copy of ``img`` (RGB uint8)
    and write it atomically (JPEG or PNG by suffix). Returns the path written."""
    im = Image.fromarray(img).convert("RGB")
    draw = ImageDraw.Draw(im)
    size = max(14, round(min(im.size) / 30))
    width = max(2, round(min(im.size) / 250))
    warned = False
    for i, o in enumerate(objects):
        color = COLORS[i % len(COLORS)]
        x1, y1, x2, y2 = o.box
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=color, width=width)
        text = f"{o.label} {o.score:.2f}"
        f = font_for(text, size, font)
        if f is None:
            text = f"#{o.id} {o.score:.2f}"
            f = font_for(text, size, font) or ImageFont.load_default()
            if not warned and warn is not None:
                warn(f"no font here draws the label {o.label!r}: drew '#{o.id}' instead; {INSTALL_HINT}")
                warned = True
        left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
        tw, th = right - left + 6, bottom - top + 4
        tx = max(0, min(x1, im.width - tw))  # keep the label inside the picture
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
        draw.text((tx + 3 - left, ty + 2 - top), text, fill=(255, 255, 255), font=f)
    out = Path(out_path)
    fmt = "PNG" if out.suffix.lower() == ".png" else "JPEG"
    with atomic_write(out) as fh:
        im.save(fh, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out
