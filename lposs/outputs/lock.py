"""One run per output folder: lock files that name their holder (host, PID, start time).

``DIR`` is locked by ``.DIR.lock`` beside it and, once it exists, by ``DIR/.lposs/lock`` inside it (where each
goes: :mod:`lposs.outputs.place`). Each file is a one-line JSON record::

    {"host": "node7", "pid": 4242, "started": "2025-06-01T12:00:00", "process_start": 123456, "argv": [...]}

The lock itself is an exclusive ``flock`` on each file, which the kernel releases when its holder dies, however
it dies; the record only says who holds it. Where the file system has no ``flock`` (some network mounts) the
file is created exclusively (``O_EXCL``: of two runs started in the same instant one gets it) and the record
decides: a holder on this host whose process is gone has left a stale lock. On NFS mounted with ``local_lock``
(:mod:`lposs.outputs.mounts`) ``flock`` works but sees this host only: it is taken, and the record decides as
without it (:attr:`OutputLock.flocked` is then False, and :attr:`OutputLock.note` says why). A stale lock is taken over with one
log line, also another user's (its file is replaced by one of ours; where the folder forbids that, one line
says why). Only rank 0 of a distributed run takes the locks (the ranks of several nodes share them).

Standard library only (and :mod:`lposs.files`): tests import this module in child processes that must start fast.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lposs.files.atomic import replace_durably

from .mounts import local_flock
from .place import HIDDEN, lock_files, resolved

__all__ = [
    "OutputInUse",
    "OutputLock",
    "describe",
    "holder_record",
    "is_dead_here",
    "lock_path",
    "process_alive",
    "process_start_ticks",
]

_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_EMPTY_GRACE_S = 30.0  # an empty lock file is being written by its creator, unless it is older than this


class OutputInUse(RuntimeError):
    """Another live run holds the lock of an output folder, or a stale lock cannot be taken over (one line)."""


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the name (the name in parentheses may hold spaces); None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); None elsewhere or when gone.

    A PID is reused after its process ends: the start time tells a reused PID from the original process.
    """
    fields = _proc_stat(pid)
    try:
        return int(fields[19])  # field 22 of proc(5), counted after the name and the state
    except (TypeError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """True while process ``pid`` (started at ``start_ticks``, when known) runs: not gone, reused or a zombie."""
    fields = _proc_stat(pid)
    if fields is None:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): all that can be told
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return fields[0] != "Z" and (start_ticks is None or process_start_ticks(pid) == start_ticks)


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
    return not process_alive(record["pid"], record.get("process_start"))


def describe(record: dict) -> str:
    """``PID 4242 on host node7, started 2025-06-01T12:00:00`` (what a record says, for messages)."""
    return f"PID {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}"


def lock_path(folder: Path) -> Path:
    """The first lock file of ``folder`` (``.NAME.lock`` beside it, or ``NAME/.lposs/lock``)."""
    return lock_files(folder)[0]


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _flock(fd: int) -> str:
    """``"locked"``, ``"busy"`` (another holder) or ``"unsupported"`` (no ``flock`` on this file system)."""
    try:
        import fcntl
    except ImportError:  # Windows: the record decides
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "locked"
    except BlockingIOError:
        return "busy"
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
        return "unsupported"


def _open(path: Path) -> tuple[int, bool, bool] | None:
    """``(fd, created, foreign)``: created exclusively, or the existing file (read-only when another user's)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True, False
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR), False, False
    except FileNotFoundError:
        return None  # its holder removed it meanwhile: try again
    except PermissionError:  # another user's file: flock works on a read-only descriptor too
        return os.open(path, os.O_RDONLY), False, True


def _in_use(flag: str, folder: Path, path: Path, holder: dict) -> OutputInUse:
    return OutputInUse(
        f"{flag} {folder} is in use by another run ({describe(holder)}; lock file {path}): "
        "wait for it to end, or choose another folder"
    )


def _cannot_take_over(flag: str, folder: Path, path: Path, holder: dict, error: OSError) -> OutputInUse:
    try:
        owner = f"user id {os.stat(path).st_uid}"
    except OSError:
        owner = "another user"
    return OutputInUse(
        f"{flag} {folder}: the lock file {path} was left by {describe(holder)}, which no longer runs, and belongs "
        f"to {owner}; it cannot be replaced ({error.strerror or error}): remove it as its owner or root"
    )


def _replace_foreign(path: Path, old_fd: int, flag: str, folder: Path, holder: dict) -> int:
    """Put a lock file of ours (locked) in place of another user's stale one (whose flock ``old_fd`` holds)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        _flock(fd)
        replace_durably(tmp, path)
    except OSError as error:
        os.close(fd)
        os.unlink(tmp)
        raise _cannot_take_over(flag, folder, path, holder, error) from None
    os.close(old_fd)
    return fd


def _fallback_live(holder: dict, path: Path) -> bool:
    """Without ``flock``: does the record's holder still run? (an empty record is being written)."""
    if not holder:
        try:
            return time.time() - os.stat(path).st_mtime < _EMPTY_GRACE_S
        except OSError:
            return False
    return not is_dead_here(holder)


def _remove_stale(path: Path, fd: int, flag: str, folder: Path, holder: dict) -> None:
    """Without ``flock``: take a stale lock file away, unless another run replaced it since it was read."""
    stale = os.fstat(fd).st_ino
    tomb = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return  # another run took it away first
    except OSError as error:  # another user's file in a sticky folder
        raise _cannot_take_over(flag, folder, path, holder, error) from None
    if os.stat(tomb).st_ino != stale:  # a fresh lock of a run that started meanwhile: put it back
        try:
            os.link(tomb, path)
        except FileExistsError:
            pass
    os.unlink(tomb)


def _lock_file(path: Path, flag: str, folder: Path, trust_flock: bool = True) -> tuple[int, dict, bool]:
    """Hold ``path`` (made if missing): ``(fd, previous holder's record, flock works)``; OutputInUse if held.

    Without ``trust_flock`` (a flock that cannot see other hosts) the flock is still taken, and the record
    decides as where there is none.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    removed: dict = {}  # the record of a stale lock file taken away (no flock), for the log line
    while True:
        try:
            opened = _open(path)
        except PermissionError as error:
            raise OutputInUse(f"{flag} {folder}: cannot read the lock file {path} ({error.strerror})") from None
        if opened is None:
            continue
        fd, created, foreign = opened
        try:
            previous = removed if created else _read_record(path)
            state = _flock(fd)
            if state == "locked" and not trust_flock:
                state = "unsupported"  # this host's runs are excluded by the flock, other hosts' by the record
            if state == "busy" or (state == "unsupported" and not created and _fallback_live(previous, path)):
                raise _in_use(flag, folder, path, previous)
            if state == "unsupported" and not created:  # stale: take it away, then create it exclusively
                removed = previous
                _remove_stale(path, fd, flag, folder, previous)
            elif _same_file(fd, path):  # not a file its holder unlinked while we opened it
                if foreign:
                    fd = _replace_foreign(path, fd, flag, folder, previous)
                return fd, previous, state == "locked"
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@dataclass
class OutputLock:
    """The held locks of one output folder; :meth:`release` (or the holder's death) frees them."""

    folder: Path
    paths: list[Path]
    fds: list[int]
    flocked: bool  # every lock file holds a working flock: no other live run can hold the folder
    taken_over: str | None = None  # one line when a stale lock was taken over
    note: str | None = None  # one line when flock cannot see other hosts (NFS with local_lock)
    _released: bool = field(default=False, repr=False)

    @property
    def path(self) -> Path:
        """The first lock file."""
        return self.paths[0]

    @classmethod
    def acquire(cls, folder: Path, flag: str = "--output") -> OutputLock:
        """Lock ``folder`` (by its resolved path; its parent is created if missing) or raise at once.

        Raises:
            OutputInUse: a live run holds it (naming ``flag``, the folder and the holder), or a stale lock
                cannot be taken over (naming the file and why).
        """
        folder = resolved(folder)
        lock = cls(folder, [], [], True)
        stale = {}
        try:
            for path in lock_files(folder):
                local = local_flock(path.parent)
                if local is not None:
                    lock.note = (
                        f"{flag} {folder}: {local}, so flock there cannot see runs on other hosts: staging folders "
                        "are judged by their owner records, and a lock left by a run on another host must be removed by hand"
                    )
                fd, previous, flocked = _lock_file(path, flag, folder, local is None)
                lock.paths.append(path)
                lock.fds.append(fd)
                lock.flocked &= flocked
                stale = stale or previous
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
        except BaseException:
            lock.release()
            raise
        if stale:
            lock.taken_over = f"took over the lock of {folder} left by {describe(stale)}, which no longer runs"
        return lock

    def release(self) -> None:
        """Remove the lock files and free the locks (idempotent)."""
        if self._released:
            return
        self._released = True
        for path, fd in zip(reversed(self.paths), reversed(self.fds)):
            try:
                if _same_file(fd, path):
                    path.unlink()
                if path.parent.name == HIDDEN:
                    path.parent.rmdir()  # only when empty: the run's private folder goes with its lock
            except OSError:
                pass  # a lock file that cannot be removed is stale once we are gone: the next run takes it over
            finally:
                os.close(fd)  # frees the flock
