"""What a run does first with its output folders: lock them, then clear what dead runs left in them.

Rank 0 locks every output folder (:class:`lposs.outputs.lock.OutputLock`), then looks at each
folder's staging folders (:func:`lposs.outputs.place.staging_folders`). One whose owner no longer runs
is stale: while this run holds a working ``flock`` on the folder, every staging folder of it is (its owner held
the same lock), whatever host made it; otherwise the ``.owner`` record decides (a dead process of this host).
Only a folder holding an ``.owner`` record (written first, when a run makes its staging folder) is ours: a folder
that is merely named like staging is the user's, and is never removed or renamed.
A stale staging folder with an unfinished publish has it finished or undone from its journal
(:class:`lposs.outputs.journal.Plan`), over every folder that publish touched, while the locks of
those folders are held; then it is removed, unless it still holds earlier files put aside before a commit
point (``.replaced``) or points to a journal this host cannot reach. Each folder handled or left is one log line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lposs.outputs.journal import REPLACED, Plan, holds_replaced, pending_journal, unreachable_journal
from lposs.outputs.lock import OutputInUse, OutputLock, describe, is_dead_here
from lposs.outputs.place import resolved, staging_folders

from .run_output import broadcast_from_main

__all__ = ["clean_stale_staging", "lock_outputs"]


def _owner(staging: Path) -> dict | None:
    """The ``.owner`` record a run writes first into its staging folder; None when there is none (not ours)."""
    try:
        owner = json.loads((staging / ".owner").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("host"), str) or not isinstance(owner.get("pid"), int):
        return None
    return owner


def _recover(journal: Path, held: dict[Path, bool]) -> tuple[bool, str]:
    """Finish or undo the publication of ``journal``, holding the locks of all its folders; (done, what)."""
    try:
        plan = Plan.read(journal)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return False, f"its publish journal {journal} cannot be read ({error}); look at it, then remove the folder"
    locks: list[OutputLock] = []
    try:
        for final in dict.fromkeys(final for final, _ in plan.folders):
            if final not in held:
                locks.append(OutputLock.acquire(final, "a folder of the same publish:"))
        return plan.recover()
    except OutputInUse as error:
        return False, f"its unfinished publish also moves files into a folder in use ({error})"
    finally:
        for lock in locks:
            lock.release()


def _resolve(staging: Path, held: dict[Path, bool]) -> tuple[bool, str]:
    """Finish or undo the publish ``staging`` takes part in, if any; (may it be removed now, what was done)."""
    what = ""
    journal = pending_journal(staging)
    if journal is not None:
        done, what = _recover(journal, held)
        if not done:
            return False, f", {what}"
        what = f", {what}"
    lost = unreachable_journal(staging)
    if lost is not None:
        return False, (
            f", its publish journal {lost} is not reachable from this host (a disk it does not mount?): "
            "run again where it is, or remove the folder once that publish is known to be finished"
        )
    if holds_replaced(staging):  # before a commit point, or its journal removed by hand: never deleted
        return (
            False,
            f"{what}; earlier files are kept in {staging / REPLACED} (put them back by hand if they are yours)",
        )
    return True, what


def clean_stale_staging(final: Path, held: dict[Path, bool] | None = None) -> list[str]:
    """Recover and remove the stale staging folders of ``final`` (module docstring).

    Args:
        final: an output folder.
        held: the folders (resolved) whose locks the caller holds, each with whether its ``flock`` works.

    Returns:
        One line per staging folder removed, or left in place (and why).
    """
    held = held or {}
    final = resolved(final)
    lines = []
    for staging in staging_folders(final):
        owner = _owner(staging)
        if owner is None:
            lines.append(f"left {staging} alone: named like a staging folder, but without the owner record of a run")
            continue
        who = describe(owner)
        if not (held.get(final, False) or is_dead_here(owner)):
            lines.append(
                f"left the staging folder {staging} in place ({who} may still run); remove it if no run uses it"
            )
            continue
        done, what = _resolve(staging, held)
        if not done:
            lines.append(f"kept the staging folder {staging} of a run that no longer runs ({who}){what}")
            continue
        shutil.rmtree(staging, ignore_errors=True)
        if staging.exists():
            lines.append(f"could not remove the staging folder {staging} of a run that no longer runs ({who}){what}")
        else:
            lines.append(f"removed the staging folder {staging} of a run that no longer runs ({who}){what}")
    return lines


def lock_outputs(folders: list[tuple[str, Path | None]], is_main: bool) -> tuple[list[OutputLock], list[str]]:
    """Rank 0 locks each ``(flag, folder)`` (None: skipped), then cleans their stale staging; all ranks learn the outcome.

    Every lock is taken before any folder is cleaned: a publish over two folders is then finished or undone
    while this run holds both.

    Returns:
        The locks held (rank 0; none elsewhere) and the lines to log (stale locks taken over, staging removed).

    Raises:
        OutputInUse: on every rank, when a live run holds one of the folders (nothing is locked then).
    """
    locks: list[OutputLock] = []
    notes: list[str] = []
    refused = None
    if is_main:
        held: dict[Path, bool] = {}
        try:
            for flag, folder in folders:
                if folder is None or resolved(folder) in held:
                    continue
                locks.append(OutputLock.acquire(folder, flag))
                held[locks[-1].folder] = locks[-1].flocked
                notes += [note for note in (locks[-1].taken_over, locks[-1].note) if note]
            for final in held:
                notes += clean_stale_staging(final, held)
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
