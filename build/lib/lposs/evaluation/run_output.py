"""Output folders that a failed or interrupted run leaves exactly as they were.

A run writes into a hidden staging folder beside the final one (``.NAME.partial-XXXX``, same file system, with
an ``.owner`` record: host, PID, start time) and moves each finished set of files (one dataset's results and
predictions, then the run's summary) into place in one :class:`Publication`: a file it replaces is first moved
aside into the staging folder, and on any error (or signal) every move is undone, so the final folder holds
either all of the set or exactly what it held before. Each move is journalled in the staging folder
(``.publishing``) before it is made: a run killed mid-publish is rolled back by the next run into the folder,
which also removes staging folders whose owner no longer runs (see :func:`clean_stale_staging`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from .distributed import check_peers
from .output_lock import OutputInUse, OutputLock, describe, holder_record, is_dead_here

__all__ = [
    "Publication",
    "PublishError",
    "StagedFolder",
    "all_or_nothing",
    "broadcast_from_main",
    "clean_stale_staging",
    "lock_outputs",
]

# Moved last within a set, so that a present results.json means its predictions and overlays are there too.
_LAST = "results.json"
# Logs are appended to at the end of a run (see StagedFolder.append_to), never replaced by publish.
_APPENDED = ("eval.log",)
_OWNER = ".owner"  # who made a staging folder (output_lock.holder_record)
_JOURNAL = ".publishing"  # one JSON line per move of an unfinished publication
_REPLACED = ".replaced"  # files moved aside by a publication, until it is committed
_PRIVATE = (_OWNER, _JOURNAL, _REPLACED)


class PublishError(OSError):
    """Moving the files into place failed; every file moved so far was put back (one line)."""


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (itself without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    check_peers()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered afterwards) while a rollback puts files back."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _undo(entries: list[dict]) -> list[str]:
    """Undo journalled moves, last first; returns the paths that could not be restored."""
    failed = []
    for entry in reversed(entries):
        try:
            if "created" in entry:
                os.rmdir(entry["created"])  # only when empty: a folder the publication made
            elif entry["backup"] is None:
                os.unlink(entry["target"])  # a new file: there was none before
            elif os.path.lexists(entry["backup"]):
                os.replace(entry["backup"], entry["target"])
        except FileNotFoundError:
            pass  # the move it undoes never happened
        except OSError:
            if "created" not in entry:
                failed.append(entry["target"])
    return failed


class Publication:
    """The moves of one publish, possibly over several staged folders: all of them happen, or none.

    Use :func:`all_or_nothing`; :meth:`StagedFolder.publish` records each move here.
    """

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.folders: list[StagedFolder] = []

    def record(self, folder: StagedFolder, entry: dict) -> None:
        """Journal ``entry`` (a move about to happen) in memory and in ``folder``'s staging folder."""
        if folder not in self.folders:
            self.folders.append(folder)
        self.entries.append(entry)
        with open(folder.staging / _JOURNAL, "a") as journal:
            journal.write(json.dumps(entry) + "\n")

    def commit(self) -> None:
        for folder in self.folders:
            (folder.staging / _JOURNAL).unlink(missing_ok=True)
            shutil.rmtree(folder.staging / _REPLACED, ignore_errors=True)

    def rollback(self) -> list[str]:
        """Put every moved file back; the paths that could not be restored (their old files stay in staging)."""
        with _signals_deferred():
            failed = _undo(self.entries)
            for folder in self.folders:
                if failed:
                    folder.keep = True  # the old files are still in the staging folder: never delete them
                else:
                    (folder.staging / _JOURNAL).unlink(missing_ok=True)
        self.entries = []
        return failed


@contextmanager
def all_or_nothing(publication: Publication | None = None) -> Iterator[Publication]:
    """A new :class:`Publication`, committed at the end or rolled back on any exception; or ``publication``.

    Raises:
        PublishError: an ``OSError`` while moving (one line naming the file); the files are as before.
    """
    if publication is not None:
        yield publication
        return
    publication = Publication()
    try:
        yield publication
    except OSError as error:
        failed = publication.rollback()
        path = error.filename or "?"
        if failed:
            kept = ", ".join(str(f.staging / _REPLACED) for f in publication.folders)
            raise PublishError(
                error.errno,
                f"{error.strerror}; {len(failed)} earlier file(s) could not be put back: they are in {kept}",
                path,
            ) from error
        raise PublishError(
            error.errno, f"{error.strerror or error}; every earlier file was put back as it was", path
        ) from error
    except BaseException:
        publication.rollback()
        raise
    publication.commit()


class StagedFolder:
    """A final folder and the staging folder this run writes into first.

    Every rank may write into :meth:`path` (predictions); only rank 0 calls :meth:`publish` and
    :meth:`discard`, after the ranks have synchronised (the all-reduce of the metric counts).
    """

    def __init__(self, final: Path, staging: Path) -> None:
        self.final = Path(final)
        self.staging = Path(staging)
        self.keep = False  # set when a failed rollback left earlier files in the staging folder

    @classmethod
    def create(cls, final: Path, is_main: bool = True) -> StagedFolder:
        """Make the staging folder beside ``final`` (rank 0) and share its name with all ranks.

        Nothing inside ``final`` is created or changed; only its parent folder is created if missing.
        """
        final = Path(final).absolute()
        staging = None
        if is_main:
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent)
            (Path(staging) / _OWNER).write_text(json.dumps(holder_record()) + "\n")
        return cls(final, Path(broadcast_from_main(staging)))

    def path(self, *parts: str | Path) -> Path:
        """Where to write ``final/parts`` during the run."""
        return self.staging.joinpath(*parts)

    def _files(self, source: Path) -> list[Path]:
        if source.is_file():
            return [source]
        files = sorted(p for p in source.rglob("*") if p.is_file())
        files = [p for p in files if p.relative_to(self.staging).parts[0] not in (*_APPENDED, *_PRIVATE)]
        return sorted(files, key=lambda p: p.name == _LAST)  # stable: the rest keep their order

    def _make_parents(self, target: Path, publication: Publication) -> None:
        missing = [p for p in reversed(target.parents) if not p.exists() and self.final in (p, *p.parents)]
        for folder in missing:
            publication.record(self, {"created": str(folder)})
            folder.mkdir()

    def publish(self, *parts: str | Path, publication: Publication | None = None) -> list[Path]:
        """Move every file under ``staging/parts`` to ``final/parts`` (``results.json`` files last).

        Within ``publication`` (see :func:`all_or_nothing`), or as one publication of its own.

        Returns:
            The final paths written.

        Raises:
            PublishError: a move failed; the final folder is as it was (see :func:`all_or_nothing`).
        """
        source = self.staging.joinpath(*parts)
        if not source.exists():
            return []
        written = []
        with all_or_nothing(publication) as moves:
            for file in self._files(source):
                relative = file.relative_to(self.staging)
                target = self.final / relative
                self._make_parents(target, moves)
                backup = self.staging / _REPLACED / relative if os.path.lexists(target) else None
                moves.record(self, {"target": str(target), "backup": None if backup is None else str(backup)})
                try:
                    if backup is not None:
                        backup.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(target, backup)
                    os.replace(file, target)
                except OSError as error:  # named after the final file, not the staging path it came from
                    raise type(error)(error.errno, error.strerror, str(target)) from error
                written.append(target)
        return written

    def append_to(self, name: str) -> None:
        """Append ``staging/name`` (a log) to ``final/name``, creating it when needed."""
        source = self.staging / name
        if not source.is_file():
            return
        self.final.mkdir(parents=True, exist_ok=True)
        with open(self.final / name, "a") as target:
            target.write(source.read_text())
        source.unlink()

    def discard(self) -> None:
        """Remove the staging folder and whatever is left in it (kept when it holds files not put back)."""
        if not self.keep:
            shutil.rmtree(self.staging, ignore_errors=True)


def _read_json_lines(path: Path) -> list[dict]:
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break  # the line being written when the run died: its move had not started
    return entries


def clean_stale_staging(final: Path) -> list[str]:
    """Remove the staging folders of ``final`` whose owner no longer runs, rolling back an unfinished publish.

    Call it while holding ``final``'s lock (no live run then publishes into it).

    Returns:
        One line per staging folder removed (or left: an owner on another host, or no owner record).
    """
    final = Path(final).absolute()
    if not final.parent.is_dir():
        return []
    lines = []
    for staging in sorted(final.parent.glob(f".{final.name}.partial-*")):
        try:
            owner = json.loads((staging / _OWNER).read_text())
        except (OSError, ValueError):
            owner = None
        if not isinstance(owner, dict) or not is_dead_here(owner):
            who = "no owner record" if not isinstance(owner, dict) else f"owner {describe(owner)} may still run"
            lines.append(f"left the staging folder {staging} in place ({who}); remove it if no run uses it")
            continue
        undone = ""
        if (staging / _JOURNAL).is_file():
            failed = _undo(_read_json_lines(staging / _JOURNAL))
            if failed:
                lines.append(f"kept {staging}: {len(failed)} earlier file(s) of an interrupted publish are in it")
                continue
            undone = ", its unfinished publish undone"
        shutil.rmtree(staging, ignore_errors=True)
        lines.append(f"removed the staging folder {staging} of a run that no longer runs ({describe(owner)}){undone}")
    return lines


def lock_outputs(folders: list[tuple[str, Path | None]], is_main: bool) -> tuple[list[OutputLock], list[str]]:
    """Rank 0 locks each ``(flag, folder)`` (None: skipped) and cleans its stale staging; all ranks learn the outcome.

    Returns:
        The locks held (rank 0; none elsewhere) and the lines to log (stale locks taken over, staging removed).

    Raises:
        OutputInUse: on every rank, when a live run holds one of the folders (nothing is locked then).
    """
    locks: list[OutputLock] = []
    notes: list[str] = []
    refused = None
    if is_main:
        seen = set()
        try:
            for flag, folder in folders:
                if folder is None or Path(folder).absolute() in seen:
                    continue
                seen.add(Path(folder).absolute())
                locks.append(OutputLock.acquire(Path(folder).absolute(), flag))
                notes += [locks[-1].taken_over] if locks[-1].taken_over else []
                notes += clean_stale_staging(folder)
        except OutputInUse as error:
            refused = str(error)
        except BaseException:
            for lock in locks:
                lock.release()
            raise
        if refused is not None:
            for lock in locks:
                lock.release()
            locks = []
    refused = broadcast_from_main(refused)
    if refused is not None:
        raise OutputInUse(refused)
    return locks, notes
