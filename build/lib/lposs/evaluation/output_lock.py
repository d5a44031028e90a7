"""One run per output folder: a lock file beside the folder that names its holder (host, PID, start time).

``DIR`` is locked by ``.DIR.lock`` in its parent folder (where the run's staging folders live too, so that
nothing inside ``DIR`` changes while a run holds it). The file is a one-line JSON record::

    {"host": "node7", "pid": 4242, "started": "2025-06-01T12:00:00", "process_start": 123456, "argv": [...]}

The lock itself is an exclusive ``flock`` on that file, which the kernel releases when its holder dies, however
it dies; the record only says who holds it. Where the file system has no ``flock`` (some network mounts) the
record decides: a holder on this host whose process is gone has left a stale lock. A stale lock is taken over
with one log line. Only rank 0 of a distributed run takes the lock (the ranks of several nodes share it).

Standard library only: tests import this module in child processes that must start fast.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OutputInUse", "OutputLock", "holder_record", "is_dead_here", "lock_path", "process_start_ticks"]

_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutputInUse(RuntimeError):
    """Another live run holds the lock of an output folder (one line: the folder and the holder)."""


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); None elsewhere or when gone.

    A PID is reused after its process ends: the start time tells a reused PID from the original process.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
        return int(fields[19])  # field 22 of proc(5), counted after the name and the state
    except (OSError, IndexError, ValueError):
        return None


def holder_record() -> dict:
    """Who this process is: host, PID, start time (ISO, local), ``/proc`` start ticks, command line."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "process_start": process_start_ticks(os.getpid()),
        "argv": sys.argv,
    }


def is_dead_here(record: dict) -> bool:
    """True when ``record`` names a process of this host that no longer runs (a reused PID included)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    start = process_start_ticks(record["pid"])
    return record.get("process_start") is not None and start is not None and start != record["process_start"]


def describe(record: dict) -> str:
    """``PID 4242 on host node7, started 2025-06-01T12:00:00`` (what a record says, for messages)."""
    return f"PID {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}"


def lock_path(folder: Path) -> Path:
    """The lock file of ``folder``: ``.NAME.lock`` beside it."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@dataclass
class OutputLock:
    """The held lock of one output folder; :meth:`release` (or the holder's death) frees it."""

    folder: Path
    path: Path
    fd: int
    taken_over: str | None = None  # one line when a stale lock was taken over

    @classmethod
    def acquire(cls, folder: Path, flag: str = "--output") -> OutputLock:
        """Lock ``folder`` (its parent is created if missing) or raise :class:`OutputInUse` at once.

        Raises:
            OutputInUse: a live run holds it; the message names ``flag``, the folder and the holder.
        """
        path = lock_path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                previous = _read_record(path)
                if not _try_flock(fd, previous):
                    raise OutputInUse(
                        f"{flag} {folder} is in use by another run ({describe(previous)}; lock file {path}): "
                        "wait for it to end, or choose another folder"
                    )
                if _same_file(fd, path):  # not a file its holder unlinked while we opened it
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        taken = None
        if previous:
            taken = f"took over the lock of {folder} left by {describe(previous)}, which no longer runs"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
        return cls(Path(folder), path, fd, taken)

    def release(self) -> None:
        """Remove the lock file and free the lock (idempotent)."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a lock file that cannot be removed is stale once we are gone: the next run takes it over
        finally:
            os.close(self.fd)  # frees the flock
            self.fd = -1


def _try_flock(fd: int, previous: dict) -> bool:
    """Take the exclusive lock of ``fd`` without waiting; without ``flock`` support, judge by the record."""
    try:
        import fcntl
    except ImportError:  # Windows: the record decides
        return not previous or is_dead_here(previous)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
        return not previous or is_dead_here(previous)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
