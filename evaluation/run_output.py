"""Output folders that a failed or interrupted run leaves exactly as they were.

A run writes into a hidden staging folder beside the final one (``.NAME.partial-XXXX``, same file system) and
moves each finished set of files (one dataset's results and predictions, then the run's summary) into place
with ``os.replace``. Until a set is published nothing in the final folder changes; a run that stops removes
its staging folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist

__all__ = ["StagedFolder", "broadcast_from_main"]

# Moved last within a set, so that a present results.json means its predictions and overlays are there too.
_LAST = "results.json"
# Logs are appended to at the end of a run (see StagedFolder.append_to), never replaced by publish.
_APPENDED = ("eval.log",)


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (itself without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StagedFolder:
    """A final folder and the staging folder this run writes into first.

    Every rank may write into :meth:`path` (predictions); only rank 0 calls :meth:`publish` and
    :meth:`discard`, after the ranks have synchronised (the all-reduce of the metric counts).
    """

    def __init__(self, final: Path, staging: Path) -> None:
        self.final = Path(final)
        self.staging = Path(staging)

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
        return cls(final, Path(broadcast_from_main(staging)))

    def path(self, *parts: str | Path) -> Path:
        """Where to write ``final/parts`` during the run."""
        return self.staging.joinpath(*parts)

    def publish(self, *parts: str | Path) -> list[Path]:
        """Move every file under ``staging/parts`` to ``final/parts`` (``results.json`` files last).

        Returns:
            The final paths written.
        """
        source = self.staging.joinpath(*parts)
        if not source.exists():
            return []
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        files = [p for p in files if p.relative_to(self.staging).as_posix() not in _APPENDED]
        files.sort(key=lambda p: p.name == _LAST)  # stable: the rest keep their order
        written = []
        for file in files:
            target = self.final / file.relative_to(self.staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
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
        """Remove the staging folder and whatever is left in it."""
        shutil.rmtree(self.staging, ignore_errors=True)
