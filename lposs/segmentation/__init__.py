"""LPOSS / LPOSS+ segmentation: the label-propagation engine, the sliding-window segmentor, configs."""

from .label_propagation import NonFiniteError, conjugate_gradient, propagate_patches, propagate_pixels
from .segmentor import Segmentor, SegmentorSettings, max_over_aliases
from .windows import merge_windows, patch_centres, resize_to_fit, window_boxes

__all__ = [
    "NonFiniteError",
    "Segmentor",
    "SegmentorSettings",
    "conjugate_gradient",
    "max_over_aliases",
    "merge_windows",
    "patch_centres",
    "propagate_patches",
    "propagate_pixels",
    "resize_to_fit",
    "window_boxes",
]
