"""What one rank reads and writes in a pass: its share of the images and labels (decoded and resized in the
loader workers), and label maps written as PNG files atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lposs.datasets import load_image, load_label, stray_labels
from lposs.files.atomic import atomic_target
from lposs.segmentation.windows import resize_to_fit

__all__ = ["PassSamples", "save_label_png"]


class PassSamples(Dataset):
    """Images (decoded and resized here, in the loader workers) and labels of one rank's share.

    The images come from the first dataset; each dataset (datasets sharing a pass list the same images) gives
    its own label of every image. A bad file is returned as its error message, not raised, so that the main
    process can report it in one line (DataLoader would wrap it in a traceback).
    """

    def __init__(
        self, datasets: list, indices: list[int], short_side: int, long_side: int, keep_original: bool
    ) -> None:
        self.datasets = datasets
        self.indices = indices
        self.sides = (short_side, long_side)
        self.keep_original = keep_original  # the original image is shipped only when a callback needs it

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        try:
            image, info = load_image(self.datasets[0], idx)
            labels = [load_label(dataset, idx, image.shape) for dataset in self.datasets]
        except (OSError, ValueError) as error:  # DatasetError is a ValueError, missing files are OSErrors
            return {"error": f"{type(error).__name__}: {error}"}
        sample = {"index": idx, "resized": resize_to_fit(image, *self.sides), "labels": labels, "info": info}
        sample["original_size"] = image.shape[:2]
        sample["image"] = image if self.keep_original else None
        sample["strays"] = [stray_labels(d, idx, label) for d, label in zip(self.datasets, labels)]
        return sample


def save_label_png(labels: np.ndarray, path: Path, palette: list | None = None) -> None:
    """Write a ``[H, W]`` label map (values < 256) as a PNG, durably and atomically (``atomic_target``), mode 0666 - umask."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([channel for colour in palette for channel in colour][: 256 * 3])
    with atomic_target(path) as tmp:
        image.save(tmp, format="PNG")
