"""Pre-flight checks of the output locations: every folder a run will write can be created, written and reached.

Checked before any model loads, so that a path under a file, a read-only mount or a folder without write
permission stops the run at once (one line, exit 2) instead of after the evaluation. Each folder is checked
where it will be written (its resolved path): the folder itself when it exists, else the nearest existing folder
above it (where it will be created). A probe file (``.lposs-probe-*``) is created there and removed at once:
permission bits alone do not tell (root, ACLs, read-only mounts). Then a probe file is renamed from where the
run will stage its files (:mod:`lposs.outputs.place`) into every existing folder its results go to,
as the publish will: a folder on another mount than its staging fails here, not after hours of evaluation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .place import probe_rename, resolved, staging_root

__all__ = ["OutputLocationError", "check_output_locations", "check_staging"]


class OutputLocationError(ValueError):
    """An output folder cannot be created or written (one line naming the flag and the path)."""


def _nearest_existing(folder: Path) -> Path:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder`` (its modification time put back); the ``OSError`` when that fails."""
    before = folder.stat()
    fd, name = tempfile.mkstemp(prefix=".lposs-probe-", dir=folder)
    try:
        os.write(fd, b"probe")
    finally:
        os.close(fd)
        os.unlink(name)
        try:  # a folder of earlier results looks untouched (its ctime does change)
            os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError:
            pass


def check_output_locations(folders: Iterable[tuple[str, Path]]) -> None:
    """Check that every ``(flag, folder)`` can be created (no file in the way) and written.

    Raises:
        OutputLocationError: the first folder that cannot, naming its flag, the folder and the reason.
    """
    probed: set[Path] = set()
    for flag, folder in folders:
        folder = resolved(folder)
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            where = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
            raise OutputLocationError(f"{flag} {folder} {where}; expected a folder")
        if existing in probed:
            continue
        probed.add(existing)
        try:
            _probe(existing)
        except OSError as error:
            what = "cannot be created" if existing != folder else "is not writable"
            raise OutputLocationError(
                f"{flag} {folder} {what}: {existing} refuses new files ({error.strerror or error})"
            ) from None


def check_staging(flag: str, root: Path, folders: Iterable[Path]) -> None:
    """Check that files staged for ``root`` can be renamed into each existing folder of ``folders`` inside it.

    Raises:
        OutputLocationError: naming the flag, both folders and the reason (another mount, mostly).
    """
    root = resolved(root)
    source = _nearest_existing(staging_root(root))
    inside = [resolved(folder) for folder in folders if resolved(folder).is_relative_to(root)]
    for target in sorted({_nearest_existing(folder) for folder in inside}):
        if target == source or not target.is_dir():
            continue
        error = probe_rename(source, target)
        if error is not None:
            raise OutputLocationError(
                f"{flag} {root}: files staged in {source} cannot be moved into {target} ({error.strerror or error}); "
                "a folder mounted inside the output folder cannot take results in one step: mount the output folder itself"
            )
