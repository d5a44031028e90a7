"""Output folders that a failed or interrupted run leaves exactly as they were.

A run writes into a hidden staging folder on the output's own file system (beside it, or inside it when it is
a mount point: :mod:`lposs.outputs.place`), with an ``.owner`` record (host, PID, start time), and
moves each finished set of files (one dataset's results and predictions, then the run's summary) into place
in one :class:`Publication`: its whole plan is journalled and made durable before the first move, a file it
replaces is first put aside in the staging folder, and one marker is the commit point
(:mod:`lposs.outputs.journal`). On any error or signal every move is undone (signals are held
meanwhile), so the final folders hold either all of the set or exactly what they held before; after a crash
at any step the next run into either folder does the same (:mod:`lposs.evaluation.output_recovery`). A failed
publish keeps the computed results: the staging folder is renamed ``...unpublished-XXXX`` and named in the
error line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType

from lposs.files.atomic import atomic_write_text, default_file_mode, replace_durably
from lposs.outputs.checks import OutputLocationError
from lposs.outputs.journal import JOINED, JOURNAL, PRIVATE, REPLACED, Plan, file_id, holds_replaced
from lposs.outputs.lock import holder_record
from lposs.outputs.place import resolved, staging_prefix, staging_root

from .interrupts import signals_held

__all__ = ["Publication", "PublishError", "StagedFolder", "all_or_nothing", "broadcast_from_main"]

# Moved last within a set, so that a present results.json means its predictions and overlays are there too.
_LAST = "results.json"
# Logs are appended to at the end of a run (see StagedFolder.append_to), never replaced by publish.
_APPENDED = ("eval.log",)
_OWNER = ".owner"  # who made a staging folder (lposs.outputs.lock.holder_record)


class PublishError(OSError):
    """Moving the files into place failed; every file moved so far was put back (one line)."""


def _dist() -> ModuleType | None:
    """``torch.distributed`` when this process has imported torch; None otherwise (no torch import here)."""
    return sys.modules.get("torch.distributed")


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (itself without torch.distributed)."""
    dist = _dist()
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return value
    from .distributed import check_peers

    check_peers()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _apply(entry: dict) -> None:
    """Make one line of a plan: a folder, or a move (the earlier file put aside first)."""
    if "created" in entry:
        with suppress(FileExistsError):
            os.mkdir(entry["created"])
        return
    target = entry["target"]
    try:
        if entry["backup"] is not None:
            os.makedirs(os.path.dirname(entry["backup"]), exist_ok=True)
            os.replace(target, entry["backup"])
        os.replace(entry["source"], target)
    except OSError as error:  # named after the final file, not the staging path it came from
        raise type(error)(error.errno, error.strerror, target) from error


class Publication:
    """The moves of one publish, possibly over several staged folders: all of them happen, or none.

    Use :func:`all_or_nothing`; :meth:`StagedFolder.publish` plans its moves here, and they are made at the
    end of the block.
    """

    def __init__(self) -> None:
        self.folders: list[StagedFolder] = []
        self.entries: list[dict] = []
        self.failed: list[str] = []  # targets whose earlier files could not be put back by a rollback
        self.committed = False  # the commit point passed: the new files are in place
        self._made: set[Path] = set()
        self._sources: set[Path] = set()

    def add(self, folder: StagedFolder, source: Path, target: Path) -> bool:
        """Plan the move of the staged ``source`` to ``target`` (and the folders it needs); False if planned already."""
        if source in self._sources:
            return False
        self._sources.add(source)
        if folder not in self.folders:
            self.folders.append(folder)
        for parent in reversed(target.parents):
            if folder.final in (parent, *parent.parents) and parent not in self._made and not parent.exists():
                self._made.add(parent)
                self.entries.append({"created": str(parent)})
        backup = folder.staging / REPLACED / target.relative_to(folder.final) if os.path.lexists(target) else None
        entry = {"source": str(source), "target": str(target), "backup": None if backup is None else str(backup)}
        self.entries.append({**entry, "file": file_id(source)})
        return True

    def _touched(self) -> list[Path]:
        """Every folder whose entries the moves change (to make them durable)."""
        folders = []
        for entry in self.entries:
            paths = [entry["created"]] if "created" in entry else [entry["source"], entry["target"], entry["backup"]]
            folders += [Path(p).parent for p in paths if p is not None]
        return folders

    def execute(self) -> None:
        """Journal the plan, make the moves, commit; before the commit point any exception puts every file back.

        From the commit point on, signals are held (delivered afterwards: :attr:`committed` then says that the
        new files are in place); the rollback holds them too.
        """
        moves = [entry for entry in self.entries if "target" in entry]
        if not moves:
            return
        plan = Plan(self.folders[0].staging / JOURNAL, [(f.final, f.staging) for f in self.folders], self.entries)
        try:
            plan.write([Path(entry["source"]) for entry in moves])  # with the new files' data, before any move
            for entry in self.entries:
                _apply(entry)
            with signals_held():
                plan.commit(self._touched())
                self.committed = True
                plan.finish()
        except BaseException:
            if not self.committed:
                with signals_held():
                    self.failed = plan.roll_back()[0]
            raise

    def error(self, error: OSError) -> PublishError:
        """The one-line error of a failed publish; the staging folders are kept (the computed results)."""
        for folder in self.folders:
            folder.keep = True
        if not self.failed:
            return PublishError(
                error.errno,
                f"{error.strerror or error}; every earlier file was put back as it was",
                error.filename or "?",
            )
        kept = ", ".join(str(folder.staging / REPLACED) for folder in self.folders)
        return PublishError(
            error.errno,
            f"{error.strerror or error}; {len(self.failed)} earlier file(s) could not be put back: they are in "
            f"{kept} (the next run into the folder puts them back)",
            error.filename or "?",
        )


@contextmanager
def all_or_nothing(publication: Publication | None = None) -> Iterator[Publication]:
    """A new :class:`Publication`, made at the end of the block (all or nothing); or ``publication`` itself.

    Raises:
        PublishError: an ``OSError`` while planning or moving (one line naming the file); the files are as
            before, and the staging folders are kept with the computed results.
    """
    if publication is not None:
        yield publication
        return
    publication = Publication()
    try:
        yield publication
        publication.execute()
    except OSError as error:
        raise publication.error(error) from error


class StagedFolder:
    """A final folder and the staging folder this run writes into first.

    Every rank may write into :meth:`path` (predictions); only rank 0 calls :meth:`publish` and
    :meth:`discard`, after the ranks have synchronised (the all-reduce of the metric counts).
    """

    def __init__(self, final: Path, staging: Path) -> None:
        self.final = Path(final)
        self.staging = Path(staging)
        self.keep = False  # set by a failed publish: the staging folder holds the computed results

    @classmethod
    def create(cls, final: Path, is_main: bool = True, shared_by: str | None = None) -> StagedFolder:
        """Make the staging folder of ``final`` (rank 0, on its file system) and share it with all ranks.

        Nothing inside ``final`` is created or changed (but ``final/.lposs`` where staging goes there); only its
        parent folder is created if missing. With ``shared_by`` (the flag, for messages) every rank writes
        into it, and every rank checks that it sees rank 0's staging folder.

        Raises:
            OutputLocationError: on every rank, when some rank cannot see the staging folder (node-local).
        """
        paths = None
        if is_main:
            final = resolved(final)
            root = staging_root(final)
            root.mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=staging_prefix(final, root), dir=root)
            atomic_write_text(Path(staging) / _OWNER, json.dumps(holder_record()) + "\n")  # first: ours
            paths = (str(final), staging)
        folder = cls(*map(Path, broadcast_from_main(paths)))
        try:
            if shared_by is not None:
                folder._check_shared(shared_by)
        except BaseException:
            if is_main:
                folder.discard()
            raise
        return folder

    def _check_shared(self, flag: str) -> None:
        """Every rank sees the staging folder: other nodes must not write into folders of their own."""
        dist = _dist()
        if dist is None or not (dist.is_available() and dist.is_initialized()):
            return
        views: list = [None] * dist.get_world_size()
        dist.all_gather_object(views, (dist.get_rank(), socket.gethostname(), self.staging.is_dir()))
        blind = [f"{rank} (host {host})" for rank, host, sees in views if not sees]
        if blind:
            raise OutputLocationError(
                f"{flag} {self.final}: rank {', '.join(blind)} cannot see rank 0's staging folder {self.staging}; "
                "the folder must be on storage that every node shares, not on a node-local disk"
            )

    def path(self, *parts: str | Path) -> Path:
        """Where to write ``final/parts`` during the run."""
        return self.staging.joinpath(*parts)

    def files(self, *parts: str | Path) -> list[Path]:
        """The staged files under ``parts`` (``results.json`` files last), this folder's own records left out."""
        source = self.staging.joinpath(*parts)
        if source.is_file():
            return [source]
        files = sorted(p for p in source.rglob("*") if p.is_file())
        files = [p for p in files if p.relative_to(self.staging).parts[0] not in (*_APPENDED, _OWNER, *PRIVATE)]
        return sorted(files, key=lambda p: p.name == _LAST)  # stable: the rest keep their order

    def publish(self, *parts: str | Path, publication: Publication | None = None) -> list[Path]:
        """Move every file under ``staging/parts`` to ``final/parts`` (``results.json`` files last).

        Within ``publication`` (see :func:`all_or_nothing`; the moves are made at the end of its block), or as
        one publication of its own.

        Returns:
            The final paths written.

        Raises:
            PublishError: a move failed; the final folder is as it was (see :func:`all_or_nothing`).
        """
        if not self.staging.joinpath(*parts).exists():
            return []
        written = []
        with all_or_nothing(publication) as moves:
            for file in self.files(*parts):
                target = self.final / file.relative_to(self.staging)
                written += [target] if moves.add(self, file, target) else []
        return written

    def append_to(self, name: str) -> None:
        """Append ``staging/name`` (a log) to ``final/name``, whole or not at all (a copy renamed over it).

        Raises:
            OSError: naming ``final/name``; it is then as it was.
        """
        source, target = self.staging / name, self.final / name
        if not source.is_file():
            return
        self.final.mkdir(parents=True, exist_ok=True)
        combined = self.staging / f"{name}.appended"
        try:
            with open(combined, "wb") as out:
                if target.is_file():
                    with open(target, "rb") as old:
                        shutil.copyfileobj(old, out)
                with open(source, "rb") as new:
                    shutil.copyfileobj(new, out)
            os.chmod(combined, target.stat().st_mode & 0o7777 if target.is_file() else default_file_mode())
            replace_durably(combined, target)
        except OSError as error:  # named after the log, not the copy in staging
            raise type(error)(error.errno, error.strerror, str(target)) from error
        finally:
            with suppress(OSError):
                os.unlink(combined)
        source.unlink()

    def discard(self) -> Path | None:
        """Remove the staging folder; where it stays instead, if it does.

        Kept: with a journal or a pointer to one (an unfinished publish: the next run finishes or undoes it);
        after a failed publish, renamed ``...unpublished-XXXX`` (the computed results; no later run removes it);
        with earlier files put aside (``.replaced``) and no commit point passed; or when it cannot be removed.
        """
        if (self.staging / JOURNAL).exists() or (self.staging / JOINED).exists():
            return self.staging
        if self.keep:
            head, _, suffix = self.staging.name.rpartition("partial-")  # the folder's own name may hold it too
            kept = self.staging.with_name(f"{head}unpublished-{suffix}")
            try:
                os.rename(self.staging, kept)
            except OSError:
                return self.staging
            return kept
        if holds_replaced(self.staging):  # earlier files are deleted only after a commit point (Plan.finish)
            return self.staging
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.staging if os.path.lexists(self.staging) else None
