"""The package's one way to write a file in place: whole or not at all, also after a power loss.

The content goes to a temporary name beside the file (:data:`TEMPORARY_NAME`), the file is fsynced, renamed over
the final name with ``os.replace`` (atomic within one folder), and the folder is fsynced. Without the first fsync
a crash (a power loss, a node's kernel panic) can keep the rename and lose the data: a 0-byte file at the final
name, which a resumed run would take for a finished one. Without the second the rename itself may be lost.

Standard library only.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

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
    "write_durably",
]

# The names written to before the rename: a run killed meanwhile leaves such a file, never a half one at the name.
TEMPORARY_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` minus the process umask (0644 with the usual umask 022)."""
    try:  # Linux tells the umask without changing it (loader threads may be creating files meanwhile)
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)  # elsewhere reading the umask means setting it: put it straight back
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def naming_path(path: Path | str) -> Iterator[None]:
    """An ``OSError`` without a file name (a ``write`` on a full disk) raised again naming ``path``."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error


def fsync_path(path: Path | str) -> None:
    """Make a file's data, or a folder's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_POOL: list[ThreadPoolExecutor] = []  # one for the process: starting threads for every sync costs more than it


def _forget_pool() -> None:
    _POOL.clear()  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def fsync_all(paths: Iterable[Path]) -> None:
    """:func:`fsync_path` each of ``paths`` (files or folders, each once), several at once in threads.

    fsync releases the GIL and file systems batch concurrent syncs: thousands of files take seconds, not minutes.
    """
    paths = list(dict.fromkeys(paths))
    if len(paths) < 2:
        for path in paths:
            fsync_path(path)
        return
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(8, thread_name_prefix="lposs-fsync"))
    list(_POOL[0].map(fsync_path, paths))


def _temporary_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def temporary_file(path: Path, data: bytes = b"") -> Path:
    """A new file beside ``path`` under a temporary name, holding ``data`` (not yet synced; the usual mode)."""
    tmp = _temporary_name(Path(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 minus the umask, not mkstemp's 0600
    try:
        with naming_path(path):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def replace_durably(tmp: Path | str, path: Path | str) -> None:
    """Rename the written file ``tmp`` to ``path`` (one file system): its data synced, the rename, its folder synced."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


@contextmanager
def atomic_target(path: Path | str, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; moved to ``path`` durably when the block ends
    (:func:`replace_durably`), removed on any error.

    The name is hidden and unique (``.NAME.PID.XXXXXXXX.tmp``, :data:`TEMPORARY_NAME`; ``suffix`` appended for
    writers that choose the format by extension), in the same folder (the rename is atomic), and made by the
    writer, so the file gets the usual mode (not ``mkstemp``'s 0600). An ``OSError`` without a file name (a full
    disk) names ``path``. The folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, suffix)
    try:
        with naming_path(path):
            yield tmp
            replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`atomic_target`); its folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path, data)
    try:
        with naming_path(path):
            replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (:func:`atomic_target`); its folder is created."""
    atomic_write_bytes(path, text.encode())


def write_durably(texts: dict[Path, str], data: Iterable[Path] = ()) -> None:
    """Each path holds its text whole or not at all, also after a power loss; ``data`` files synced alongside.

    :func:`atomic_write_text` for several files with two waits for the disk, however many: the temporary files
    (and ``data``) are synced in one round, renamed into place, and their folders synced in a second round.
    """
    temporary: dict[Path, Path] = {}
    try:
        for path, text in texts.items():
            temporary[path] = temporary_file(path, text.encode())
        fsync_all([*data, *temporary.values()])
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temporary.values():
            with suppress(OSError):
                os.unlink(tmp)
        raise
    fsync_all(path.parent for path in texts)
