"""Where a run stages and locks an output folder: beside it, or inside it where renames from beside fail.

A run writes ``DIR``'s files into a staging folder first and moves them into ``DIR`` with ``os.replace``, which
works only within one mounted file system. ``DIR`` is taken by its resolved path (links and ``..`` followed).
The staging folder is ``.NAME.partial-XXXX`` beside ``DIR`` where a file made there can be renamed into ``DIR``
(tried with a probe file); where it cannot (``DIR`` is a mount point: a container volume, a Kubernetes mount, a
bind mount; its parent is not writable; or ``DIR`` is ``/``), it is ``DIR/.lposs/partial-XXXX``, a hidden folder
that is never part of the results.

Lock files: ``.NAME.lock`` beside ``DIR`` where staging goes there (it also covers a ``DIR`` that does not exist
yet), and ``DIR/.lposs/lock`` whenever ``DIR`` exists, so that runs that reach ``DIR`` by other paths (a link,
a container's mount of it) find one common lock file.

Standard library only: tests import this module in child processes that must start fast.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "HIDDEN",
    "lock_files",
    "probe_rename",
    "resolved",
    "staging_folders",
    "staging_prefix",
    "staging_root",
]

HIDDEN = ".lposs"  # the run's private folder inside DIR: staging (where needed) and the lock file
_SUFFIX = re.compile(r"[a-z0-9_]+")  # what tempfile.mkdtemp appends to a staging folder's prefix


def resolved(folder: Path | str) -> Path:
    """``folder`` as an absolute path with links and ``..`` followed (what it names, however it is reached)."""
    return Path(folder).resolve()


def _restore_times(times: dict[Path, os.stat_result]) -> None:
    for folder, before in times.items():
        try:  # a folder of earlier results looks untouched (its ctime does change)
            os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError:
            pass


def probe_rename(source_dir: Path, target_dir: Path) -> OSError | None:
    """Make a file in ``source_dir`` and rename it into ``target_dir``; None when that works, else the error.

    Both folders keep their modification times; the probe file (``.lposs-probe-*``) is removed.
    """
    times = {folder: folder.stat() for folder in {Path(source_dir), Path(target_dir)}}
    try:
        fd, name = tempfile.mkstemp(prefix=".lposs-probe-", dir=source_dir)
    except OSError as error:
        return error
    os.close(fd)
    moved = Path(target_dir) / Path(name).name
    try:
        os.rename(name, moved)
        error = None
    except OSError as refused:
        moved, error = Path(name), refused
    os.unlink(moved)
    _restore_times(times)
    return error


def staging_root(final: Path) -> Path:
    """The folder that holds ``final``'s staging folders: its parent, or ``final/.lposs`` (module docstring)."""
    final = resolved(final)
    if final.parent == final:
        return final / HIDDEN
    if not final.is_dir():
        return final.parent  # the publish makes it in its parent: renames from there stay on one mount
    return final.parent if probe_rename(final.parent, final) is None else final / HIDDEN


def staging_prefix(final: Path, root: Path) -> str:
    """Name prefix of ``final``'s staging folders in ``root``."""
    return "partial-" if root.name == HIDDEN and root.parent == final else f".{final.name}.partial-"


def lock_files(final: Path) -> list[Path]:
    """The lock files of ``final`` (module docstring): one or two."""
    final = resolved(final)
    files = [final.parent / f".{final.name}.lock"] if staging_root(final) == final.parent else []
    if final.is_dir():
        files.append(final / HIDDEN / "lock")
    return files


def staging_folders(final: Path) -> list[Path]:
    """Every staging folder of ``final`` in either place (left by this run or by earlier ones)."""
    final = resolved(final)
    found = []
    for root in ([final.parent] if final.parent != final else []) + [final / HIDDEN]:
        prefix = staging_prefix(final, root)
        if root.is_dir():  # the name's characters taken as they are; then only mkdtemp's suffixes: ".a.partial-*"
            matches = root.glob(glob.escape(prefix) + "*")  # must not take the staging of "a.partial-b"
            found += sorted(p for p in matches if _SUFFIX.fullmatch(p.name[len(prefix) :]))
    return [path for path in found if path.is_dir() and not path.is_symlink()]
