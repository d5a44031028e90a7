"""The plan of a folder run (:mod:`lposs.evaluation.folder_run`), checked before any weights load.

Rank 0 lists the images (:func:`lposs.datasets.image_files.list_image_files`), checks that no two would write one
output, that the output folder is writable, not inside the images, and new, empty (but for the run's own hidden
files) or (``resume``) made by a run of the same folder, classes, settings and model (its ``run.json``; changed
images are redone, see :mod:`lposs.evaluation.folder_resume`); every rank gets the plan, or the same one-line
error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lposs.datasets import DatasetError
from lposs.datasets.image_files import image_suffixes, list_image_files
from lposs.outputs.checks import check_output_locations
from lposs.outputs.place import HIDDEN
from lposs.segmentation import SegmentorSettings

from .folder_resume import image_size, image_stamps, is_whole_output
from .loop import _rank_and_world
from .reporting import TEMPORARY_NAME
from .run_output import broadcast_from_main

__all__ = [
    "RUN_RECORD",
    "SKIPPED",
    "FolderPlan",
    "FolderResult",
    "earlier_outputs_problem",
    "is_run_private",
    "plan_folder",
    "read_record",
    "settings_record",
]

RUN_RECORD = "run.json"  # what the folder was made from; --resume checks it
SKIPPED = "skipped.txt"  # images that could not be decoded, one "path<TAB>why" line each
_KINDS = {"labels": ".png", "scores": ".npy", "overlays": ".png"}


@dataclass
class FolderPlan:
    """A checked folder run: what to segment, with which classes, and where the outputs go."""

    folder: Path  # the images (absolute)
    out: Path  # the outputs (absolute)
    images: list[Path]  # relative to folder, in the run's order
    classes: list[str]
    record: dict  # run.json: the folder, its images' stamps, the classes, settings and model of the run
    resume: bool = False
    save_scores: bool = False
    overlays: int = 0  # overlays of the first N images

    def output(self, kind: str, image: Path) -> Path:
        """``out/<kind>/<image path with the kind's suffix>`` (kind: labels, scores or overlays)."""
        return self.out / kind / image.with_suffix(_KINDS[kind])

    def wanted(self, index: int) -> list[str]:
        """The kinds of output image ``index`` gets."""
        return ["labels"] + (["scores"] if self.save_scores else []) + (["overlays"] if index < self.overlays else [])

    def missing(self, index: int, size: tuple[int, int] | None = None) -> list[str]:
        """The kinds of output image ``index`` (of ``size`` ``(H, W)``; default: read from its header) still lacks:
        those without a whole, readable file (:func:`lposs.evaluation.folder_resume.is_whole_output`)."""
        image = self.images[index]
        wanted = self.wanted(index)
        if not any(self.output(kind, image).is_file() for kind in wanted):
            return wanted  # the common case of a new run: no header to read
        size = size or image_size(self.folder / image)
        return [kind for kind in wanted if not is_whole_output(kind, self.output(kind, image), size, len(self.classes))]


@dataclass
class FolderResult:
    """What a folder run did, over all ranks."""

    images: int  # images of the run (after ``limit``)
    segmented: int  # images segmented by this run
    complete_before: int  # images whose outputs were already complete (``resume``)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image path relative to the folder, why)
    seconds: float = 0.0  # wall time of the slowest rank

    @property
    def images_per_second(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0


def settings_record(settings: SegmentorSettings, model: dict | None = None) -> dict:
    """What a folder's outputs depend on besides its images and classes (``run.json``): the method's settings
    (less ``window_batch``, which changes no result) and, when known, the model config."""
    values = dataclasses.asdict(settings)
    values.pop("window_batch")
    values["pamr_dilations"] = list(values["pamr_dilations"])  # as run.json holds it (JSON has no tuples)
    return {"settings": values} | ({} if model is None else {"model": model})


def is_run_private(name: str) -> bool:
    """A name that runs keep in an output folder for themselves: the lock's ``.lposs`` folder, temporaries."""
    return name == HIDDEN or TEMPORARY_NAME.fullmatch(name) is not None


def earlier_outputs_problem(out: Path, record: dict, resume: bool) -> str | None:
    """Why ``out`` cannot take this run's outputs (one line), or None: new runs need an empty folder, and
    ``resume`` one made by a run with the same images, classes and settings."""
    if not out.is_dir() or all(is_run_private(path.name) for path in out.iterdir()):
        # new, empty, or holding only what runs keep for themselves: the lock that this very run took inside it,
        # the temporaries of a run killed before it wrote anything
        return None
    if not resume:
        return (
            f"--save_predictions {out} already holds files: add --resume to complete the run that wrote them, "
            "or choose an empty or new folder (a new run never mixes its outputs with older ones)"
        )
    earlier = read_record(out)
    if earlier is None:
        return f"--resume: {out} holds files but no readable {RUN_RECORD}: it was not made by a folder run"
    # the images are not compared here: a changed image is redone (lposs.evaluation.folder_resume)
    difference = _difference(earlier, {key: value for key, value in record.items() if key != "images"}, "")
    if difference is not None:
        return f"--resume: {out / RUN_RECORD} records other {difference}: choose another folder"
    return None


def read_record(out: Path) -> dict | None:
    """``out/run.json``, or None when it is missing or unreadable."""
    try:
        earlier = json.loads((out / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return earlier if isinstance(earlier, dict) else None


def _difference(earlier: object, now: object, name: str) -> str | None:
    """The first entry (dotted name) where two records differ, in words; None when ``now``'s entries are equal."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in now:
            found = _difference(earlier.get(key), now[key], f"{name}.{key}" if name else key)
            if found is not None:
                return found
        return None
    return None if earlier == now else f"{name} ({earlier!r} there, {now!r} in this run)"


def _checked_listing(folder: Path, out: Path, limit: int | None) -> list[Path]:
    """The images of ``folder`` (see :func:`lposs.datasets.image_files.list_image_files`), checked."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: no such folder")
    if out == folder or folder in out.parents:
        raise DatasetError(f"--save_predictions {out} is inside --images {folder}: its outputs would be read as images")
    images = list_image_files(folder)[:limit]
    if not images:
        raise DatasetError(f"--images {folder} holds no image files ({', '.join(sorted(image_suffixes()))})")
    seen: dict[Path, Path] = {}
    for image in images:
        other = seen.setdefault(image.with_suffix(""), image)
        if other != image:
            raise DatasetError(
                f"--images {folder}: {other} and {image} would write the same {image.with_suffix('.png')}; rename one"
            )
    return images


def plan_folder(
    folder: str | Path,
    out: str | Path,
    classes: Sequence[str],
    settings: dict,
    *,
    resume: bool = False,
    save_scores: bool = False,
    overlays: int = 0,
    limit: int | None = None,
) -> FolderPlan:
    """Check a folder run before any weights load (rank 0 lists and checks; every rank gets the plan or the error).

    Args:
        settings: what the outputs depend on besides the classes (``run.json``; ``resume`` needs it equal).

    Raises:
        FileNotFoundError, DatasetError, OutputLocationError: one line: no such folder, no image in it, two images
            with one output name, ``out`` inside the folder, unwritable, or holding files a new run or ``resume``
            must not mix with.
    """
    folder, out = Path(folder).absolute(), Path(out).absolute()
    plan, error = None, None
    if _rank_and_world()[0] == 0:
        try:
            images = _checked_listing(folder, out, limit)
            record = {"folder": str(folder), "classes": list(classes), **settings}
            record["images"] = image_stamps(folder, images)
            check_output_locations([("--save_predictions", out.parent), ("--save_predictions", out)])
            problem = earlier_outputs_problem(out, record, resume)
            if problem is not None:
                raise DatasetError(problem)
            plan = FolderPlan(folder, out, images, list(classes), record, resume, save_scores, overlays)
        except (OSError, ValueError) as failure:
            error = failure
    plan, error = broadcast_from_main((plan, error))
    if error is not None:
        raise error
    return plan
