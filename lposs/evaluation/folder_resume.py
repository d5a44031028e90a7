"""What ``--resume`` of a folder run trusts, and how it checks it (:mod:`lposs.evaluation.folder_run`).

- ``run.json`` records each image's size and modification time (ns) as the run found it
  (:func:`image_stamps`). On resume an image whose stamp differs, or that has outputs but no stamp, is redone:
  its outputs are removed before the new ``run.json`` is written (:func:`changed_images`), so that a run killed in
  between redoes it too.
- An output counts as done only when it is whole: a label PNG that decodes in full at the image's size, a scores
  file whose header and length say ``[C, H, W]`` float16, an overlay PNG that decodes in full
  (:func:`is_whole_output`). A 0-byte, truncated or unreadable file is redone.
- A :class:`lposs.Segmentor` used without its config records its model from the loaded backbones
  (:func:`backbones_identity`): names, heads, templates, precision and a fingerprint of the weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["backbones_identity", "changed_images", "image_size", "image_stamps", "is_whole_output"]

_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height (load_image applies them)
_SAMPLES = 64  # values per parameter tensor in the weights fingerprint


def image_stamps(folder: Path, images: list[Path]) -> dict[str, list[int]]:
    """``{image path (POSIX, relative to folder): [size in bytes, modification time in ns]}``."""
    stamps = {}
    for image in images:
        status = (folder / image).stat()
        stamps[image.as_posix()] = [status.st_size, status.st_mtime_ns]
    return stamps


def changed_images(earlier: dict[str, list[int]], now: dict[str, list[int]]) -> list[str]:
    """The images of ``now`` whose stamp differs from ``earlier``'s, or that ``earlier`` lacks (sorted)."""
    return sorted(name for name, stamp in now.items() if earlier.get(name) != stamp)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image as :func:`lposs.datasets.image_files.load_image` returns it (EXIF rotation applied),
    from its header alone; None when it cannot be opened."""
    try:
        with Image.open(path) as picture:
            width, height = picture.size
            orientation = picture.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (width, height) if orientation in _TRANSPOSED else (height, width)


def _whole_png(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of a PNG that decodes in full; None for a missing, truncated or unreadable one."""
    try:
        with Image.open(path) as picture:
            if picture.format != "PNG":
                return None
            picture.load()  # decodes every row: a truncated file raises here
            return picture.size[::-1]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _whole_scores(path: Path, shape: tuple[int, int, int]) -> bool:
    """A ``.npy`` of ``shape`` float16, as long as its header says (a truncated file is refused by the map)."""
    try:
        values = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return values.shape == shape and values.dtype == np.float16


def is_whole_output(kind: str, path: Path, size: tuple[int, int] | None, num_classes: int) -> bool:
    """Whether the output ``path`` of ``kind`` (labels, scores or overlays) of an image of ``size`` ``(H, W)`` is
    whole and readable (module docstring); an image of unknown size (unreadable now) has no whole output."""
    if size is None or not os.path.isfile(path):
        return False
    if kind == "labels":
        return _whole_png(path) == size
    if kind == "scores":
        return _whole_scores(path, (num_classes, *size))
    return _whole_png(path) is not None


def _weights_fingerprint(modules: list[torch.nn.Module]) -> str:
    """A SHA-256 of every parameter's name, shape, dtype and ``_SAMPLES`` evenly spaced values: equal weights
    give equal fingerprints; other weights (another model, checkpoint or random seed) almost surely differ."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().flatten()
            step = max(1, flat.numel() // _SAMPLES)
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(flat[::step][:_SAMPLES].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def backbones_identity(backbones: Any) -> dict:
    """What the outputs of :class:`lposs.models.LPOSSBackbones` depend on besides the classes (``run.json``)."""
    return {
        "clip": backbones.clip_id,
        "clip_head": backbones.clip_head,
        "dino_features": backbones.dino_kind,
        "proxy": dict(backbones.proxy),
        "templates": [t if isinstance(t, str) else t("{class}") for t in backbones.templates],
        "precision": str(backbones.precision),
        "weights_sha256": _weights_fingerprint([backbones.clip, backbones.dino]),
    }
