"""The journal of a publish: after a crash at any step, the next run finds all the earlier files or all the new.

A publication moves staged files into their final folders (possibly two: ``--output`` and
``--save_predictions``, on different file systems). Before the first move its whole plan is written to
``.publishing`` in the first staging folder, and every other staging folder gets ``.joined`` naming that
journal; both are made durable (written to a temporary file, fsynced, renamed, the folder fsynced). A line of
the plan is a move (the staged source, the final target, where an earlier target is put aside:
``.replaced/...``, and the source's inode, size and modification time) or a folder the publish makes.

**One commit point**: ``.committed`` beside the journal, made durable after every move and every folder
touched has been fsynced. Before it exists, recovery puts every file back (the staged file back into staging,
the earlier file back into place); once it exists, recovery finishes the commit instead: the earlier files
put aside are deleted, then ``.joined``, the journal and the marker, in that order. Earlier files are never
deleted before the commit point. A move is undone only while the final file is still the one the journal moved
in (same inode, size and modification time): a file changed since is left as it is, and named.

Standard library only (and :mod:`lposs.files.atomic`, the package's durable write).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from lposs.files.atomic import fsync_all, temporary_file, write_durably

__all__ = [
    "COMMITTED",
    "JOINED",
    "JOURNAL",
    "PRIVATE",
    "REPLACED",
    "Plan",
    "file_id",
    "fsync_all",
    "holds_replaced",
    "pending_journal",
    "unreachable_journal",
    "write_durably",
]

JOURNAL = ".publishing"  # the plan of an unfinished publication (in its first staging folder)
JOINED = ".joined"  # in every other staging folder of the publication: the journal's path
COMMITTED = ".committed"  # beside the journal: the commit point
REPLACED = ".replaced"  # earlier files put aside by the publication, until it is committed
PRIVATE = (JOURNAL, JOINED, COMMITTED, REPLACED)


def file_id(path: Path | str) -> list[int]:
    """What tells a file from any other later put at its path: ``[inode, size, mtime_ns]``."""
    stat = os.lstat(path)
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _is(path: Path, identity: list[int]) -> bool:
    try:
        return file_id(path) == list(identity)
    except OSError:
        return False


def _undo(entry: dict) -> bool:
    """Undo one line of a plan (a move that may or may not have happened); True when it was left alone."""
    if "created" in entry:
        with suppress(OSError):  # not empty (files not ours), or never made
            os.rmdir(entry["created"])
        return False
    target, source = Path(entry["target"]), Path(entry["source"])
    backup = Path(entry["backup"]) if entry.get("backup") else None
    if _is(target, entry["file"]):
        source.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, source)  # back into staging: computed results are never deleted by an undo
    elif os.path.lexists(target):  # the earlier file, never moved aside; or another file put there since
        return backup is None or os.path.lexists(backup)
    if backup is not None and os.path.lexists(backup):
        os.replace(backup, target)
    return False


def _joined(staging: Path) -> Path | None:
    try:
        return Path(json.loads((staging / JOINED).read_text())["journal"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pending_journal(staging: Path) -> Path | None:
    """The journal of an unfinished publication that ``staging`` takes part in, or None."""
    if (staging / JOURNAL).is_file():
        return staging / JOURNAL
    journal = _joined(staging)
    return journal if journal is not None and journal.is_file() else None  # gone: finished or undone


def unreachable_journal(staging: Path) -> Path | None:
    """The journal ``staging``'s pointer names where this host cannot reach it (its folder is not there), or None.

    The pointers are removed before the journal (:meth:`Plan.forget`): a pointer whose journal's whole folder is
    missing names a publication another host may still have to finish or undo (a disk this host does not mount),
    never a finished one.
    """
    journal = _joined(staging)
    if journal is None or journal.is_file():
        return None
    try:
        return None if journal.parent.is_dir() else journal
    except OSError:  # a stale mount, no permission: not reachable either
        return journal


def holds_replaced(staging: Path) -> bool:
    """True when ``staging`` holds earlier files put aside by a publish (kept until its commit point)."""
    return any(not path.is_dir() or path.is_symlink() for path in (staging / REPLACED).rglob("*"))


@dataclass
class Plan:
    """Every move of one publication, over ``folders`` (``(final, staging)``; the first holds the journal)."""

    journal: Path
    folders: list[tuple[Path, Path]]
    entries: list[dict]
    unset: Path | None = field(default=None, repr=False)  # the empty marker under a temporary name, until commit

    @property
    def marker(self) -> Path:
        """The commit point: this file exists once every move is made and durable."""
        return self.journal.with_name(COMMITTED)

    @classmethod
    def read(cls, journal: Path) -> Plan:
        """The plan in ``journal``.

        Raises:
            OSError, ValueError, KeyError: it cannot be read (written whole, so only a damaged disk does this).
        """
        lines = journal.read_text().splitlines()
        header = json.loads(lines[0])
        folders = [(Path(final), Path(staging)) for final, staging in header["folders"]]
        return cls(journal, folders, [json.loads(line) for line in lines[1:]])

    def write(self, data: Iterable[Path] = ()) -> None:
        """Make the plan durable, with the ``data`` of the files it moves: the journal, then a pointer to it in
        every other staging folder (and the empty marker, under a temporary name, for :meth:`commit`)."""
        header = json.dumps({"folders": [[str(final), str(staging)] for final, staging in self.folders]})
        texts = {self.journal: "\n".join([header, *(json.dumps(entry) for entry in self.entries)]) + "\n"}
        texts.update(
            {staging / JOINED: json.dumps({"journal": str(self.journal)}) + "\n" for _, staging in self.folders[1:]}
        )
        self.unset = temporary_file(self.marker)
        write_durably(texts, [*data, self.unset])

    def commit(self, touched: Iterable[Path]) -> None:
        """The commit point, once the folders ``touched`` by the moves are synced: the marker, made durable."""
        fsync_all(touched)
        os.replace(self.unset, self.marker)
        fsync_all([self.marker.parent])

    def finish(self) -> None:
        """After the commit point: delete the earlier files put aside, then the journal (:meth:`forget`).

        An error here is left to the next run (the journal and the marker stay): the new files are in place.
        """
        try:
            for _, staging in self.folders:
                shutil.rmtree(staging / REPLACED, ignore_errors=True)
            self.forget()
        except OSError:
            pass

    def forget(self) -> None:
        """Remove the pointers, the journal and the marker, in that order (each step leaves a readable state)."""
        for _, staging in self.folders[1:]:
            (staging / JOINED).unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)
        self.marker.unlink(missing_ok=True)
        if self.unset is not None:
            self.unset.unlink(missing_ok=True)

    def _folders(self) -> list[Path]:
        """Every existing folder whose entries the plan's moves (or their undo) change."""
        folders = []
        for entry in self.entries:
            paths = [entry["created"]] if "created" in entry else [entry["source"], entry["target"], entry["backup"]]
            folders += [Path(path).parent for path in paths if path is not None]
        return [folder for folder in dict.fromkeys(folders) if folder.is_dir()]

    def roll_back(self) -> tuple[list[str], list[str]]:
        """Put every file back, last move first, going on past any error; once all went back, sync the folders
        (the moves back durable) and only then forget the plan.

        Returns:
            The targets that could not be put back (their earlier files stay in ``.replaced``, the journal
            stays for the next run) and the targets left alone because another file is there now.
        """
        failed, skipped = [], []
        with suppress(OSError):  # a commit that failed half-way is taken back first: recovery must not finish it
            self.marker.unlink(missing_ok=True)
        for entry in reversed(self.entries):
            try:
                if _undo(entry):
                    skipped.append(entry["target"])
            except Exception:  # an undo goes on: every other file still goes back
                if "target" in entry:
                    failed.append(entry["target"])
        if not failed:
            try:
                fsync_all(self._folders())
            except OSError:  # not durable yet: the journal stays, and the next run undoes it again (a no-op)
                return failed, skipped
            self.forget()
        return failed, skipped

    def recover(self) -> tuple[bool, str]:
        """What the next run does: finish a committed plan, or roll it back; ``(done, what was done)``."""
        if self.marker.exists():
            self.finish()
            return True, "its committed publish finished (the new files stay, the earlier ones deleted)"
        failed, skipped = self.roll_back()
        if failed:
            return False, f"{len(failed)} earlier file(s) of its interrupted publish could not be put back yet"
        left = f"; left alone, as another file is there now: {', '.join(skipped)}" if skipped else ""
        return True, f"its unfinished publish undone{left}"
