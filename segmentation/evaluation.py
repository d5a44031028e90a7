"""Evaluating a segmentor on a dataset: per-rank sums of metric counts, one all-reduce, no gathered maps.

Every rank handles the images ``rank, rank + world, ...``; per image it adds the ``[4, C]`` IoU counts (and
``[2, C]`` Boundary IoU counts) to its sums, and the ranks add their sums with one ``all_reduce``. The counts
are integers held in float64, so the result is identical to one process.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets import load_image, load_label

from .metrics import boundary_iou_counts, iou_counts
from .segmentor import Segmentor

__all__ = ["EvaluationResult", "all_reduce_sum", "evaluate", "is_main_process", "save_label_png"]


@dataclass
class EvaluationResult:
    """Summed counts over the whole dataset (all ranks) and timing of this rank."""

    iou_sums: np.ndarray  # [4, C]: intersection, union, predicted area, label area
    boundary_sums: np.ndarray | None  # [2, C]: boundary intersection, boundary union
    num_images: int  # over all ranks
    seconds_per_image: float  # wall time per image on this rank, loading included


def is_main_process() -> bool:
    """True on rank 0, and without torch.distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(array: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum a float64 array over all ranks (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


class _Samples(Dataset):
    """Images and labels of one rank's share; a bad file is returned as its error message, not raised,
    so that the main process can report it in one line (DataLoader would wrap it in a traceback)."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        try:
            image, info = load_image(self.dataset, idx)
            label = load_label(self.dataset, idx, image.shape)
        except (OSError, ValueError) as error:  # DatasetError is a ValueError, missing files are OSErrors
            return {"error": f"{type(error).__name__}: {error}"}
        return {"index": idx, "image": image, "label": label, "info": info}


class SampleError(RuntimeError):
    """An image or label of the dataset could not be used."""


def save_label_png(labels: np.ndarray, path: Path, palette: list | None = None) -> None:
    """Write a ``[H, W]`` label map (values < 256) as a PNG, atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([channel for colour in palette for channel in colour][: 256 * 3])
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def evaluate(
    segmentor: Segmentor,
    dataset,
    num_classes: int,
    *,
    measure_boundary: bool = False,
    num_workers: int = 2,
    limit: int | None = None,
    save_predictions: Path | None = None,
    on_prediction=None,
    description: str = "eval",
) -> EvaluationResult:
    """Segment every image of ``dataset`` and sum the metric counts over all ranks.

    Args:
        segmentor: ready, with the dataset's classes set on its backbones.
        dataset: from ``datasets.build_dataset``.
        num_classes: C, length of the count arrays.
        measure_boundary: also sum Boundary IoU counts (SPEC §2).
        num_workers: image-loading processes of this rank (0: load in this process).
        limit: evaluate only the first ``limit`` images (quick checks).
        save_predictions: folder for one label PNG per image, named after the image.
        on_prediction: optional ``f(index, image, prediction, label)`` called on every image (visualisations).

    Raises:
        SampleError: an image or label could not be read or does not fit (the message names the file).
    """
    rank, world = _rank_and_world()
    total = len(dataset) if limit is None else min(limit, len(dataset))
    samples = _Samples(dataset, list(range(rank, total, world)))
    loader = DataLoader(samples, batch_size=None, num_workers=num_workers, collate_fn=lambda x: x)
    iou_sums = np.zeros((4, num_classes))
    boundary_sums = np.zeros((2, num_classes)) if measure_boundary else None
    start = time.perf_counter()
    progress = tqdm(loader, total=len(samples), desc=description, disable=rank != 0, dynamic_ncols=True)
    for sample in progress:
        if "error" in sample:
            raise SampleError(sample["error"])
        prediction = segmentor.predict(sample["image"])
        iou_sums += iou_counts(prediction, sample["label"], num_classes)
        if boundary_sums is not None:
            boundary_sums += boundary_iou_counts(prediction, sample["label"], num_classes)
        if save_predictions is not None:
            name = Path(sample["info"]["ori_filename"]).with_suffix(".png")
            save_label_png(prediction, save_predictions / name, getattr(dataset, "PALETTE", None))
        if on_prediction is not None:
            on_prediction(sample["index"], sample["image"], prediction, sample["label"])
    seconds = (time.perf_counter() - start) / max(len(samples), 1)
    device = (
        segmentor.backbones.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
    )
    iou_sums = all_reduce_sum(iou_sums, device)
    if boundary_sums is not None:
        boundary_sums = all_reduce_sum(boundary_sums, device)
    return EvaluationResult(iou_sums, boundary_sums, total, seconds)
