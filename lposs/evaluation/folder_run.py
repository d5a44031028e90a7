"""Segmenting a folder of unlabelled images: label maps for every image, on as many ranks as torchrun starts.

Usage::

    seg = lposs.load("lposs_plus", classes=["sky;cloud", "tree", "person"])
    result = lposs.segment_folder(seg, "photos/", "out/", save_scores=True, overlays=10, resume=True)
    print(result.segmented, result.failed)

Every image under the folder (recursively, hidden names skipped, sorted by path) is one task; the images whose
outputs are not complete yet go to the ranks as they become free (:class:`lposs.evaluation.work_queue.WorkQueue`:
a counter in torchrun's store), and a rank out of images waits for the others as long as they make progress. For
``photos/a/b.jpg`` it writes, as soon as the image is done:

- ``out/labels/a/b.png``: palette PNG at the image's size, pixel value = class index;
- ``out/scores/a/b.npy`` (``save_scores``): ``[C, H, W]`` float16 class scores;
- ``out/overlays/a/b.png`` (the first ``overlays`` images): class colours over the image, with a legend.

No lost results: ``out`` is locked for the run (``.out.lock`` beside it); every file is written under a temporary
name in its folder and renamed, so a killed run leaves whole files (and stray temporaries, removed by the next run);
a new run refuses a folder that holds files, and ``resume`` adds only what is missing, after checking that
``out/run.json`` records the same folder, classes and settings. An image that cannot be decoded is skipped with
one line and listed in ``out/skipped.txt``, as is one whose scores hold NaN or infinite values.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lposs.datasets.class_lists import display_names
from lposs.datasets.image_files import ImageReadError, load_image
from lposs.segmentation import Segmentor
from lposs.segmentation.segmentor import ImageEncoding
from lposs.segmentation.windows import resize_to_fit

from .distributed import check_peers
from .folder_outputs import opened_outputs
from .folder_plan import (
    RUN_RECORD,
    SKIPPED,
    FolderPlan,
    FolderResult,
    plan_folder,
    settings_record,
)
from .folder_resume import backbones_identity
from .interrupts import loader_worker_init
from .loop import _all_reduce, _rank_and_world, _reduction_device, all_reduce_sum
from .reporting import atomic_target
from .visualise import overlay_figure, palette, save_png
from .work_queue import WorkQueue

__all__ = ["FolderPlan", "FolderResult", "plan_folder", "run_folder", "segment_folder", "settings_record"]


class _Images(Dataset):
    """Images of one rank's share, decoded and resized in the loader workers; a bad file is returned as its error."""

    def __init__(self, plan: FolderPlan, indices: list[int], sides: tuple[int, int]) -> None:
        self.plan, self.indices, self.sides = plan, indices, sides

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        try:
            image = load_image(self.plan.folder / self.plan.images[index])
        except (OSError, ImageReadError) as error:
            return {"index": index, "error": str(error)}
        resized = resize_to_fit(image, *self.sides)
        keep = index < self.plan.overlays  # the original travels only where an overlay needs it
        return {"index": index, "resized": resized, "size": image.shape[:2], "image": image if keep else None}


def _write(plan: FolderPlan, sample: dict, scores: torch.Tensor, labels: torch.Tensor, colours: list) -> None:
    """Write the missing outputs of one image; ``scores`` ``[C, H, W]`` float32, ``labels`` ``[H, W]`` int64."""
    image = plan.images[sample["index"]]
    missing = plan.missing(sample["index"], tuple(sample["size"]))
    labels = labels.cpu().numpy()  # [H, W] int64
    if "scores" in missing:
        with atomic_target(plan.output("scores", image)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, scores.to(torch.float16).cpu().numpy())
    if "overlays" in missing:
        figure = overlay_figure(sample["image"], labels, display_names(plan.classes), colours)
        save_png(plan.output("overlays", image), figure)
    if "labels" in missing:
        save_png(plan.output("labels", image), labels, colours)


def _write_text(path: Path, text: str) -> None:
    """Write a text file whole, under a temporary name that a later run recognises (:data:`TEMPORARY_NAME`)."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def _progress(total: int, report: bool) -> tqdm:
    """One line per rank: done / total, images/s and the time left."""
    rank, world = _rank_and_world()
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=f"rank {rank}/{world}",
        unit=" images",
        bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
        position=int(os.environ.get("LOCAL_RANK", 0)) if tty else None,
        mininterval=0.5 if tty else 30.0,  # logs of long jobs: a line every 30 s, not every 0.1 s
        disable=not report,
        file=sys.stderr,
    )


class _Claims:
    """Batches of positions in the run's list of images to do, claimed from the shared queue as this rank asks
    for them (the loader's batch sampler: with workers, it claims a few batches ahead)."""

    def __init__(self, queue: WorkQueue, batch: int) -> None:
        self.queue, self.batch = queue, batch

    def __iter__(self) -> Iterator[list[int]]:
        while claimed := self.queue.claim(self.batch):
            yield list(claimed)


def _segment_share(
    segmentor: Segmentor, plan: FolderPlan, todo: list[int], options: dict
) -> tuple[int, list[tuple[str, str]]]:
    """Segment images of ``todo`` as this rank claims them, until none is left (then wait for the other ranks):
    how many this rank segmented, and those it skipped (unreadable, or non-finite scores), with why."""
    colours, failed, segmented = palette(len(plan.classes)), [], 0
    s = segmentor.settings
    queue = WorkQueue(len(todo))
    loader = DataLoader(
        _Images(plan, todo, (s.short_side, s.long_side)),
        batch_sampler=_Claims(queue, options["image_batch"]),
        num_workers=options["num_workers"],
        collate_fn=list,
        worker_init_fn=loader_worker_init(),
    )
    with _progress(len(todo), options["report"]) as progress:

        def skip(sample: dict, why: str) -> None:
            failed.append((plan.images[sample["index"]].as_posix(), why))
            if options["report"]:
                progress.write(f"skipped: {why}", file=sys.stderr)
            done(1)

        def done(count: int) -> None:  # the bar shows the images done by all ranks
            progress.update(queue.advance(count) - progress.n)

        try:
            for batch in loader:
                good = [sample for sample in batch if "error" not in sample]
                for sample in batch:
                    if "error" in sample:
                        skip(sample, sample["error"])
                sizes = [sample["size"] for sample in good]
                for sample, encoding in zip(good, segmentor.encode_batch([x["resized"] for x in good], sizes)):
                    scores, why = _scores(segmentor, encoding)
                    if scores is None:
                        skip(sample, f"{plan.folder / plan.images[sample['index']]}: {why}")
                        continue
                    _write(plan, sample, scores, segmentor.labels(scores), colours)  # labels: prob_thd applied
                    segmented += 1
                    done(1)
        except BaseException:
            queue.abandon()
            raise
        queue.wait_for_all()
    return segmented, failed


def _scores(segmentor: Segmentor, encoding: ImageEncoding) -> tuple[torch.Tensor | None, str]:
    """The ``[C, H, W]`` class scores of one image, or None and why: one image whose backbones or propagation give
    NaN or infinite values (a degenerate window) is skipped like an unreadable one, never the end of the run."""
    for name, values in (("features", encoding.features), ("scores", encoding.scores)):
        if not torch.isfinite(values).all():
            return None, f"the model gave NaN or infinite {name} (skipped like an unreadable image)"
    scores = segmentor.propagate(encoding)
    if not torch.isfinite(scores).all():
        return None, "propagation gave NaN or infinite class scores (skipped like an unreadable image)"
    return scores, ""


def _gathered(items: list) -> list:
    """Every rank's ``items``, merged and sorted (one collective; ``sorted(items)`` without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return sorted(items)
    check_peers()
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, items)
    return sorted(item for part in everyone for item in part)


def run_folder(
    segmentor: Segmentor, plan: FolderPlan, *, image_batch: int = 1, num_workers: int = 0, report: bool = True
) -> FolderResult:
    """Segment the images of a checked plan, taking them as this rank gets free; see the module docstring.

    Args:
        segmentor: ready, its backbones holding ``plan.classes``.
        image_batch: images whose windows share backbone forwards.
        num_workers: image-decoding processes of this rank (0: in this process).
        report: show this rank's progress line and one line per skipped image (stderr).

    Returns:
        The counts and failures of all ranks (equal on every rank).

    Raises:
        PeerFailure: another rank made no progress for ``dist_timeout`` seconds (naming it).
    """
    rank, world = _rank_and_world()
    start = time.perf_counter()
    if rank == 0:  # written once the weights are loaded: a run that fails before leaves its folder empty
        _write_text(plan.out / RUN_RECORD, json.dumps(plan.record, indent=2) + "\n")
    # each rank checks every world-th image's outputs; the images still to do are then claimed as ranks get free
    pending = _gathered([i for i in range(rank, len(plan.images), world) if plan.missing(i)])
    options = {"image_batch": image_batch, "num_workers": num_workers, "report": report}
    segmented, failed = _segment_share(segmentor, plan, pending, options)
    device = _reduction_device(segmentor)
    segmented = int(all_reduce_sum(np.array([segmented], np.float64), device)[0])
    seconds = float(_all_reduce(np.array([time.perf_counter() - start]), device, "max")[0])
    failed = _gathered(failed)
    if rank == 0:
        _record_failures(plan.out, failed)
    return FolderResult(len(plan.images), segmented, len(plan.images) - len(pending), failed, seconds)


def _record_failures(out: Path, failed: list[tuple[str, str]]) -> None:
    """``out/skipped.txt``: one ``path<TAB>why`` line per image this run could not decode (removed when none)."""
    if failed:
        _write_text(out / SKIPPED, "".join(f"{path}\t{why}\n" for path, why in failed))
    else:
        (out / SKIPPED).unlink(missing_ok=True)


def segment_folder(
    segmentor: Any,
    folder: str | Path,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    save_scores: bool = False,
    overlays: int = 0,
    resume: bool = False,
    limit: int | None = None,
    image_batch: int = 1,
    num_workers: int = 0,
    report: bool = True,
) -> FolderResult:
    """Segment every image under ``folder`` into ``out`` (layout and rules: the module docstring).

    Args:
        segmentor: a :class:`lposs.Predictor` (``lposs.load``) or a :class:`lposs.Segmentor` with its classes set.
        folder: the images; searched recursively.
        out: the output folder: new or empty, or made by an earlier run of the same images, classes and settings
            when ``resume``.
        classes: the class names for legends and ``run.json`` (default: the predictor's; for a bare segmentor,
            ``class 0``, ``class 1``, ...).
        save_scores: also write ``[C, H, W]`` float16 class scores (``.npy``).
        overlays: write overlays for the first N images.
        resume: add only the outputs that ``out`` lacks.
        limit: only the first N images (quick checks).
        others: as :func:`run_folder`. Under torchrun (a process group is initialised) each rank segments its share.

    Returns:
        A :class:`FolderResult`: images, segmented, complete_before, failed ``[(path, why)]``, seconds.
    """
    inner = getattr(segmentor, "segmentor", segmentor)  # a Predictor holds its Segmentor
    num_classes = int(inner.backbones.alias_to_class.max()) + 1
    classes = list(classes or getattr(segmentor, "classes", None) or [f"class {i}" for i in range(num_classes)])
    if len(classes) != num_classes:
        raise ValueError(f"segment_folder: {len(classes)} class names for a segmentor of {num_classes} classes")
    config = getattr(segmentor, "config", None)  # a Predictor's resolved config
    # a bare Segmentor has no config: its model is recorded from the loaded backbones (weights fingerprint included)
    model = (
        backbones_identity(inner.backbones) if config is None else OmegaConf.to_container(config.model, resolve=True)
    )
    settings = settings_record(inner.settings, model)
    options = {"resume": resume, "save_scores": save_scores, "overlays": overlays, "limit": limit}
    plan = plan_folder(folder, out, classes, settings, **options)
    with opened_outputs(plan):
        return run_folder(inner, plan, image_batch=image_batch, num_workers=num_workers, report=report)
