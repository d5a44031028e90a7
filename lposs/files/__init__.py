"""Files written whole and folders listed once: the lowest floor of the package (standard library only).

- :mod:`lposs.files.atomic`: the package's one way to write a file in place, durably (fsync, rename, fsync);
- :mod:`lposs.files.walk`: a recursive listing that follows links and lists each real folder once.

Every other floor (:mod:`lposs.models`, :mod:`lposs.datasets`, :mod:`lposs.outputs` and those above) may import
it; it imports nothing of :mod:`lposs`.
"""

from __future__ import annotations

from .atomic import (
    TEMPORARY_NAME,
    atomic_target,
    atomic_write_bytes,
    atomic_write_text,
    default_file_mode,
    fsync_all,
    fsync_path,
    naming_path,
    replace_durably,
    temporary_file,
    write_durably,
)
from .walk import walk_once

__all__ = [
    "TEMPORARY_NAME",
    "atomic_target",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_file_mode",
    "fsync_all",
    "fsync_path",
    "naming_path",
    "replace_durably",
    "temporary_file",
    "walk_once",
    "write_durably",
]
