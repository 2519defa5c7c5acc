"""Which files a command works on: paths given (files, folders searched recursively) expanded
into photos and videos, each once, with overlay names that mirror their folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fkd_jax.errors import UserError
from fkd_jax.pictures.images import IMAGE_SUFFIXES
from fkd_jax.pictures.video import VIDEO_SUFFIXES


@dataclass
class Item:
    """One input file: the path to read, its name in the outputs, and its kind."""

    path: Path
    name: str  # as given or found: the `file` column
    kind: str  # "photo" or "video"
    overlay: Path = field(default=Path())  # relative output path under OUT/overlays


def kind_of(path: Path) -> str | None:
    """"photo" or "video" by the file's suffix, None for other files."""
    s = path.suffix.lower()
    return "photo" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None


def find_inputs(paths: list[str]) -> list[Item]:
    """Expand paths (files, folders searched recursively) into photos and videos, in order,
    each once. Raises UserError for a missing path, an unsupported file or an empty folder."""
    known = " ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
    items, seen = [], set()
    for text in paths:
        p = Path(text)
        if not p.exists():
            raise UserError(f"{text}: no such file or folder")
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and kind_of(q))
            if not found:
                raise UserError(f"{text}: folder holds no images or videos ({known})")
            entries = [(q, str(q)) for q in found]
        elif kind_of(p) is None:
            raise UserError(f"{text}: not an image or video file by its name (expected one "
                            f"of {known})")
        else:
            entries = [(p, text)]
        for q, name in entries:
            key = os.path.realpath(q)
            if key not in seen:
                seen.add(key)
                items.append(Item(q, name, kind_of(q)))
    return assign_overlay_names(items)


def assign_overlay_names(items: list[Item]) -> list[Item]:
    """Overlay paths that mirror the inputs relative to their deepest common folder (distinct
    inputs, distinct names). Formats other than JPEG/PNG/video get a .png overlay."""
    if not items:
        return items
    real = [Path(os.path.realpath(it.path)) for it in items]
    base = Path(os.path.commonpath([str(r.parent) for r in real]))
    for it, r in zip(items, real):
        rel = r.relative_to(base)
        if it.kind == "photo" and rel.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            rel = rel.with_name(rel.name + ".png")
        it.overlay = rel
    return items
