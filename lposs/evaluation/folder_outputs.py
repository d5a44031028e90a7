"""The output folder of a folder run (:mod:`lposs.evaluation.folder_run`), opened before any weights load.

:func:`opened_outputs` locks it (rank 0; ``.OUT.lock`` beside it and ``OUT/.lposs/lock`` inside it, see
:mod:`lposs.outputs.lock`), checks it again under the lock (new, empty but for the run's own hidden files, or
``resume`` of a run of the same images, classes and settings), removes the temporaries of killed runs, and checks
that every rank sees it (ranks on nodes with a node-local ``OUT`` would each write a folder of their own).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist

from lposs.datasets import DatasetError
from lposs.outputs.checks import OutputLocationError

from .distributed import check_peers
from .folder_plan import RUN_RECORD, FolderPlan, earlier_outputs_problem, read_record
from .folder_resume import changed_images
from .loop import _rank_and_world
from .output_recovery import lock_outputs
from .reporting import TEMPORARY_NAME
from .run_output import broadcast_from_main

__all__ = ["all_gathered", "opened_outputs"]

_SEE_WAIT_S = 10.0  # how long a rank looks for rank 0's probe file (network file systems cache absent names)


def all_gathered(item: Any) -> list[Any]:
    """Every rank's ``item``, in rank order (``[item]`` without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [item]
    check_peers()
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, item)
    return everyone


def _clear(plan: FolderPlan) -> None:
    """Rank 0, holding the lock: check the folder again, make it, remove the temporaries of killed runs."""
    problem = earlier_outputs_problem(plan.out, plan.record, plan.resume)
    if problem is not None:
        raise DatasetError(problem)
    plan.out.mkdir(parents=True, exist_ok=True)
    for root, _, files in os.walk(plan.out):
        for name in files:
            if TEMPORARY_NAME.fullmatch(name):
                os.unlink(os.path.join(root, name))
    if plan.resume:
        _forget_changed(plan)


def _forget_changed(plan: FolderPlan) -> None:
    """Remove the outputs of the images changed since ``run.json`` was written (they are redone), before this run's
    ``run.json`` replaces it; keep the stamps of its images that this run does not list (``limit``)."""
    earlier = read_record(plan.out) or {}
    stamps = earlier.get("images") if isinstance(earlier.get("images"), dict) else {}
    changed = set(changed_images(stamps, plan.record["images"]))
    redone = []
    for image in plan.images:
        if image.as_posix() in changed:
            outputs = [plan.output(kind, image) for kind in ("labels", "scores", "overlays")]
            redone += [image.as_posix()] if any(path.is_file() for path in outputs) else []
            for path in outputs:
                path.unlink(missing_ok=True)
    if redone:
        print(
            f"--resume: {len(redone)} image(s) changed since {plan.out / RUN_RECORD} was written (size or "
            f"modification time; first: {redone[0]}): their outputs are redone",
            file=sys.stderr,
        )
    plan.record["images"] = {**{k: v for k, v in stamps.items() if isinstance(v, list)}, **plan.record["images"]}


def _sees(path: Path) -> bool:
    deadline = time.monotonic() + _SEE_WAIT_S
    while not path.is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _check_every_rank_sees(out: Path) -> None:
    """Every rank sees the file rank 0 has just made in ``out``, or every rank raises the same one line.

    Raises:
        OutputLocationError: naming the ranks (and hosts) that do not see it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    probe = None
    if dist.get_rank() == 0:  # a temporary's name: a run killed before removing it leaves nothing a run minds
        probe = out / f".ranks.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        probe.write_text("")
    probe = broadcast_from_main(probe)
    try:
        views = all_gathered((dist.get_rank(), socket.gethostname(), _sees(probe)))
    finally:
        if dist.get_rank() == 0:
            probe.unlink(missing_ok=True)
    blind = [f"{rank} (host {host})" for rank, host, sees in views if not sees]
    if blind:
        raise OutputLocationError(
            f"--save_predictions {out}: rank {', '.join(blind)} cannot see it (rank 0 made {probe.name} there); "
            "the folder must be on storage that every node shares, not on a node-local disk"
        )


@contextmanager
def opened_outputs(plan: FolderPlan) -> Iterator[None]:
    """Hold ``plan.out`` for a run (module docstring); released when the block ends.

    Raises:
        OutputInUse: another live run holds it (on every rank).
        DatasetError: it changed since the plan was made and cannot take the outputs (on every rank).
        OutputLocationError: a rank does not see it (on every rank).
    """
    rank, _ = _rank_and_world()
    locks, notes = lock_outputs([("--save_predictions", plan.out)], rank == 0)
    try:
        error = None
        if rank == 0:
            for note in notes:
                print(note, file=sys.stderr)
            try:
                _clear(plan)
            except (OSError, ValueError) as failure:
                error = failure
        error = broadcast_from_main(error)
        if error is not None:
            raise error
        _check_every_rank_sees(plan.out)
        yield
    finally:
        for lock in locks:
            lock.release()
