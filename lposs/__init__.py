"""LPOSS / LPOSS+: training-free open-vocabulary semantic segmentation by label propagation over patches and pixels.

The one-line API::

    import lposs
    seg = lposs.load("lposs_plus", classes=["sky;cloud", "tree", "person"], device="cuda")
    labels = seg.predict(image)         # np.ndarray [H, W] int64 class indices
    scores = seg.predict_scores(image)  # torch.Tensor [C, H, W] float32

A folder of images, resumable, on every rank torchrun starts: ``lposs.segment_folder(seg, "photos/", "out/")``.
The engine: ``from lposs import Segmentor, SegmentorSettings, propagate_patches, propagate_pixels``.
Subpackages, one floor each (imports only go down): :mod:`lposs.cli` (entry points) -> :mod:`lposs.evaluation`
(the run) -> :mod:`lposs.segmentation` (the method) -> :mod:`lposs.models`, :mod:`lposs.datasets`.
Names are imported on first use, so ``import lposs`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.5.0"

_HOMES = {
    "Predictor": "lposs.api",
    "load": "lposs.api",
    "Segmentor": "lposs.segmentation",
    "SegmentorSettings": "lposs.segmentation",
    "propagate_patches": "lposs.segmentation",
    "propagate_pixels": "lposs.segmentation",
    "segment_folder": "lposs.evaluation.folder_run",
}

__all__ = [
    "Predictor",
    "Segmentor",
    "SegmentorSettings",
    "__version__",
    "load",
    "propagate_patches",
    "propagate_pixels",
    "segment_folder",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lposs' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
