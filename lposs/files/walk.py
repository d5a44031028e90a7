"""A recursive listing that follows links to folders and lists each real folder once (a link loop ends).

``os.walk(followlinks=True)`` has no guard: a link to a folder above it (``photos/all -> ..``) is listed again at
every depth until the path is too long, each time with all its files. Here a link to a folder inside the
listed folder is not entered (the folder is listed under its own path), and each folder is identified by
``(st_dev, st_ino)`` and entered once, in name order: the first path to it (sorted, depth first) is the one
listed, whatever order the file system returns names in.

Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["walk_once"]


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def walk_once(top: Path | str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, followlinks=True)`` with each real folder entered once; sub-folders in name order.

    A link to a folder inside ``top`` is not entered (that folder is listed under its own path); a link
    elsewhere is, once. Yields ``(root, folders, files)`` as ``os.walk`` does (top-down: the caller may prune
    ``folders``).
    """
    real_top = os.path.realpath(top)
    seen: set[tuple[int, int]] = set()
    for root, folders, files in os.walk(top, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:  # gone meanwhile
            folders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        folders[:] = sorted(
            name
            for name in folders
            if not (
                os.path.islink(os.path.join(root, name))
                and _inside(os.path.realpath(os.path.join(root, name)), real_top)
            )
        )
        yield root, folders, files
