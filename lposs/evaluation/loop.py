"""Evaluating a segmentor on a dataset: per-rank sums of metric counts, one all-reduce, no gathered maps.

Every rank handles the images ``rank, rank + world, ...``; per image it adds the ``[4, C]`` IoU counts (and
``[2, C]`` Boundary IoU counts) to its sums, and the ranks add their sums with one ``all_reduce``. The counts
are integers held in float64, so the result is identical to one process. Several propagation settings can be
evaluated in one pass: the backbones then run once per image for all of them (parameter sweeps). Datasets
that list the same images can share a pass too (:func:`evaluate_pass`): each image is then decoded, encoded
and given its graphs once, and counted against each dataset's own labels (one all-reduce per dataset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from lposs.segmentation import NonFiniteError, Segmentor, SegmentorSettings
from lposs.segmentation.image_graphs import PIXEL_GRAPH_FIELDS, ImageGraphs, graph_key
from lposs.segmentation.segmentor import ClassColumns

from .distributed import check_peers
from .interrupts import loader_worker_init
from .metrics import boundary_iou_counts, iou_counts
from .samples import PassSamples, save_label_png

__all__ = [
    "EvaluationResult",
    "NonFiniteScores",
    "PassMember",
    "PredictionOutputs",
    "SampleError",
    "all_reduce_sum",
    "evaluate",
    "evaluate_pass",
    "evaluate_settings",
    "is_main_process",
    "save_label_png",
]

logger = logging.getLogger("lposs")
_STRAYS_REPORTED: set[tuple] = set()  # a sweep makes several passes over one dataset: say it once


@dataclass
class EvaluationResult:
    """Summed counts over the whole dataset (all ranks) and timing of the whole pass (all ranks)."""

    iou_sums: np.ndarray  # [4, C]: intersection, union, predicted area, label area
    boundary_sums: np.ndarray | None  # [2, C]: boundary intersection, boundary union
    num_images: int  # over all ranks
    seconds: float  # wall time of the pass, loading included: the slowest rank's
    seconds_per_image: float  # wall time per image of one rank (seconds / the largest rank share)

    @property
    def images_per_second(self) -> float:
        """Overall throughput: images of all ranks / the slowest rank's wall time."""
        return self.num_images / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class PredictionOutputs:
    """Where the label maps of one setting go (both optional)."""

    save_dir: Path | None = None  # one label PNG per image, named after the image
    on_prediction: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = (
        None  # (index, image, pred, label)
    )


@dataclass
class PassMember:
    """One dataset of a pass over images: the pass's images, and its own labels, classes, settings and outputs."""

    dataset: object  # from datasets.build_dataset; every member of a pass lists the same image files
    num_classes: int  # K, length of its count arrays
    columns: ClassColumns  # its alias columns in the encodings' scores
    settings: list[int]  # the pass's settings it is evaluated with (indices)
    outputs: list[PredictionOutputs]  # per entry of settings, where its label maps go
    name: str = ""  # its key (``voc``) in log lines; "" for the pass's description


def is_main_process() -> bool:
    """True on rank 0, and without torch.distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(array: np.ndarray, device: torch.device, op: str) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return array
    check_peers()  # a dead or stalled rank: one line naming it within dist_timeout, not a hang
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.cpu().numpy()


def all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum a float64 array over all ranks (identity without torch.distributed)."""
    return _all_reduce(array, device, "sum")


@dataclass
class _StrayLabels:
    """Label values outside the classes over one pass: counted, reported once (mmseg ignores them too)."""

    images: int = 0
    pixels: int = 0
    example: dict | None = field(default=None)

    def add(self, batch: list[dict], position: int) -> None:
        """Count the stray labels of the pass's ``position``-th dataset in ``batch``."""
        for sample in batch:
            stray = sample["strays"][position] if "strays" in sample else None
            if stray is not None:
                self.images, self.pixels = self.images + 1, self.pixels + stray["pixels"]
                self.example = self.example or stray

    def report(self, description: str, total: int, device: torch.device) -> None:
        """One warning on rank 0 with the counts of all ranks (an all-reduce: every rank calls it)."""
        images, pixels = all_reduce_sum(np.array([self.images, self.pixels], np.float64), device)
        key = (description, int(images), int(pixels), None if self.example is None else self.example["file"])
        if images == 0 or not is_main_process() or key in _STRAYS_REPORTED:
            return
        _STRAYS_REPORTED.add(key)
        example = "on another rank"
        if self.example is not None:
            values = ", ".join(map(str, self.example["values"]))
            example = f"{self.example['file']} holds {values}"
        logger.warning(
            f"{description}: {int(images)} of {total} label files hold values outside the classes (other than "
            f"255) in {int(pixels)} pixels, e.g. {example}; left out of the label areas, as mmsegmentation does"
        )


class SampleError(RuntimeError):
    """An image or label of the dataset could not be used."""


class NonFiniteScores(SampleError):
    """An image's class scores (or the features behind them) hold NaN or infinite values: a fault of the models on
    that image, not of its file."""


def _check_scores(sample: dict, scores: torch.Tensor) -> None:
    """NonFiniteScores naming the image unless ``scores [K, H, W]`` are finite (argmax would hide a NaN)."""
    # A sum is non-finite whenever an entry is: the exact check only then (as the propagation's own check).
    if not torch.isfinite(scores.sum()) and not torch.isfinite(scores).all():
        raise NonFiniteScores(f"image {sample['info']['filename']}: class scores contain NaN or infinite values")


def _propagated(segmentor: Segmentor, sample: dict, encoding, settings, groups, graphs) -> list[torch.Tensor]:
    """``segmentor.propagate_columns`` on one image, a non-finite input or output named by the image."""
    try:
        scores = segmentor.propagate_columns(encoding, settings, groups, graphs)
    except NonFiniteError as error:
        raise NonFiniteScores(f"image {sample['info']['filename']}: {error}") from error
    for group_scores in scores:
        _check_scores(sample, group_scores)
    return scores


class _CountSums:
    """Per-setting running sums of IoU (and Boundary IoU) counts, kept on the segmentation device.

    The counts are exact integers (int64), so summing them on the GPU changes nothing but where the work runs.
    """

    def __init__(self, num_settings: int, num_classes: int, measure_boundary: bool, device: torch.device) -> None:
        self.num_classes = num_classes
        self.iou = torch.zeros(num_settings, 4, num_classes, dtype=torch.int64, device=device)
        self.boundary = (
            torch.zeros(num_settings, 2, num_classes, dtype=torch.int64, device=device) if measure_boundary else None
        )

    def add(self, setting: int, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image's counts; ``prediction`` and ``label`` ``[H, W]`` int64 on the sums' device."""
        self.iou[setting] += iou_counts(prediction, label, self.num_classes)
        if self.boundary is not None:
            self.boundary[setting] += boundary_iou_counts(prediction, label, self.num_classes)

    def all_reduced(self, device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
        """Both sums over all ranks as float64 arrays, with one all-reduce."""
        stacked = self.iou if self.boundary is None else torch.cat([self.iou, self.boundary], dim=1)
        total = all_reduce_sum(stacked.cpu().double().numpy(), device)  # [S, 4 (+ 2), C]
        return total[:, :4], None if self.boundary is None else total[:, 4:]


def _write_outputs(
    outputs: PredictionOutputs, sample: dict, prediction: torch.Tensor, label: np.ndarray, palette: list | None
) -> None:
    if outputs.save_dir is None and outputs.on_prediction is None:
        return  # the label map stays on the device
    prediction = prediction.cpu().numpy()
    if outputs.save_dir is not None:
        name = Path(sample["info"]["ori_filename"]).with_suffix(".png")
        save_label_png(prediction, outputs.save_dir / name, palette)
    if outputs.on_prediction is not None:
        outputs.on_prediction(sample["index"], sample["image"], prediction, label)


def _evaluate_batch(
    segmentor: Segmentor,
    batch: list[dict],
    settings: Sequence[SegmentorSettings],
    members: Sequence[PassMember],
    sums: Sequence[_CountSums],
) -> None:
    """Encode a batch of samples together, then propagate each image with every setting and count per member."""
    errors = [sample["error"] for sample in batch if "error" in sample]
    if errors:
        raise SampleError(errors[0])
    encodings = segmentor.encode_batch([x["resized"] for x in batch], [x["original_size"] for x in batch])
    # Settings of one pixel graph one after another: an image keeps only its last pixel graph (ImageGraphs).
    order = sorted(range(len(settings)), key=lambda j: graph_key(settings[j], PIXEL_GRAPH_FIELDS))
    for sample, encoding in zip(batch, encodings):
        # [H, W] int64 per member, once for every setting
        labels = [torch.from_numpy(label).to(sums[0].iou.device) for label in sample["labels"]]
        graphs = ImageGraphs(encoding)  # each graph of this image built once, for every setting and member
        for j in order:
            users = [m for m, member in enumerate(members) if j in member.settings]
            groups = [members[m].columns for m in users]
            for m, scores in zip(users, _propagated(segmentor, sample, encoding, settings[j], groups, graphs)):
                prediction = segmentor.labels(scores, settings[j])  # [H, W] int64, on the device (prob_thd)
                position = members[m].settings.index(j)
                sums[m].add(position, prediction, labels[m])
                palette = getattr(members[m].dataset, "PALETTE", None)
                _write_outputs(members[m].outputs[position], sample, prediction, sample["labels"][m], palette)


def _reduction_device(segmentor: Segmentor) -> torch.device:
    nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
    return segmentor.backbones.device if nccl else torch.device("cpu")


def evaluate_settings(
    segmentor: Segmentor,
    dataset,
    num_classes: int,
    settings: Sequence[SegmentorSettings],
    *,
    outputs: Sequence[PredictionOutputs] | None = None,
    measure_boundary: bool = False,
    num_workers: int = 2,
    image_batch: int = 1,
    limit: int | None = None,
    description: str = "eval",
) -> list[EvaluationResult]:
    """Segment every image of ``dataset`` once per setting, running the backbones once per image.

    Args:
        segmentor: ready, with the dataset's classes set on its backbones; its settings fix the resizing and
            the windows.
        dataset: from ``datasets.build_dataset``.
        num_classes: C, length of the count arrays.
        settings: propagation settings to evaluate; their ``short_side``, ``long_side``, ``crop`` and
            ``stride`` must equal the segmentor's.
        outputs: per setting, where its label maps go (default: nowhere).
        measure_boundary: also sum Boundary IoU counts (docs/method.md, Metrics).
        num_workers: image-loading (decoding and resizing) processes of this rank (0: in this process).
        image_batch: images whose windows share the backbone forwards (results do not depend on it).
        limit: evaluate only the first ``limit`` images (quick checks).

    Returns:
        One :class:`EvaluationResult` per setting, counts summed over all ranks (one all-reduce in all).

    Raises:
        SampleError: an image or label could not be read or does not fit (the message names the file).
    """
    outputs = list(outputs) if outputs is not None else [PredictionOutputs() for _ in settings]
    if len(outputs) != len(settings):
        raise ValueError(f"evaluate_settings: {len(outputs)} outputs for {len(settings)} settings")
    every_column = ClassColumns(slice(None), segmentor.backbones.alias_to_class)
    member = PassMember(dataset, num_classes, every_column, list(range(len(settings))), outputs)
    options = {"measure_boundary": measure_boundary, "num_workers": num_workers, "image_batch": image_batch}
    return evaluate_pass(segmentor, [member], settings, **options, limit=limit, description=description)[0]


def evaluate_pass(
    segmentor: Segmentor,
    members: Sequence[PassMember],
    settings: Sequence[SegmentorSettings],
    *,
    measure_boundary: bool = False,
    num_workers: int = 2,
    image_batch: int = 1,
    limit: int | None = None,
    description: str = "eval",
) -> list[list[EvaluationResult]]:
    """One pass over images shared by several datasets: each image decoded, encoded and given its graphs once.

    Args:
        segmentor: ready, with the classes of every member set on its backbones (``set_class_groups``).
        members: the datasets of the pass; they must list the same image files in the same order.
        settings: every setting some member is evaluated with (see :func:`evaluate_settings`).
        others: as :func:`evaluate_settings`.

    Returns:
        Per member, one :class:`EvaluationResult` per entry of its ``settings``; the timing is the whole pass's.

    Raises:
        SampleError: an image or a label could not be read or does not fit (the message names the file).
    """
    rank, world = _rank_and_world()
    first = members[0].dataset
    total = len(first) if limit is None else min(limit, len(first))
    keep_original = any(o.on_prediction is not None for member in members for o in member.outputs)
    s = segmentor.settings
    datasets = [member.dataset for member in members]
    samples = PassSamples(datasets, list(range(rank, total, world)), s.short_side, s.long_side, keep_original)
    loader = DataLoader(
        samples,
        batch_size=image_batch,
        num_workers=num_workers,
        collate_fn=list,
        worker_init_fn=loader_worker_init(),
    )
    counting = segmentor.backbones.device  # the counts are summed where the label maps are
    sums = [_CountSums(len(m.settings), m.num_classes, measure_boundary, counting) for m in members]
    strays = [_StrayLabels() for _ in members]
    start = time.perf_counter()
    with tqdm(total=len(samples), desc=description, disable=rank != 0, dynamic_ncols=True) as progress:
        for batch in loader:
            _evaluate_batch(segmentor, batch, settings, members, sums)
            for position, member_strays in enumerate(strays):
                member_strays.add(batch, position)
            progress.update(len(batch))
    device = _reduction_device(segmentor)
    seconds = float(_all_reduce(np.array([time.perf_counter() - start]), device, "max")[0])
    for member, member_strays in zip(members, strays):
        member_strays.report(member.name or description, total, device)
    per_image = seconds / max(-(-total // world), 1)  # the largest rank share has ceil(total / world) images
    results = []
    for member, member_sums in zip(members, sums):
        iou, boundary = member_sums.all_reduced(device)
        results.append(
            [
                EvaluationResult(iou[j], None if boundary is None else boundary[j], total, seconds, per_image)
                for j in range(len(member.settings))
            ]
        )
    return results


def evaluate(
    segmentor: Segmentor,
    dataset,
    num_classes: int,
    *,
    measure_boundary: bool = False,
    num_workers: int = 2,
    image_batch: int = 1,
    limit: int | None = None,
    save_predictions: Path | None = None,
    on_prediction: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    description: str = "eval",
) -> EvaluationResult:
    """:func:`evaluate_settings` with the segmentor's own settings only.

    Args:
        save_predictions: folder for one label PNG per image, named after the image.
        on_prediction: optional ``f(index, image, prediction, label)`` called on every image (visualisations).
        others: as :func:`evaluate_settings`.
    """
    return evaluate_settings(
        segmentor,
        dataset,
        num_classes,
        [segmentor.settings],
        outputs=[PredictionOutputs(save_predictions, on_prediction)],
        measure_boundary=measure_boundary,
        num_workers=num_workers,
        image_batch=image_batch,
        limit=limit,
        description=description,
    )[0]
