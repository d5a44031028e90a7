"""The label-propagation graphs of one image, built once and shared by every setting and dataset that uses them.

The patch graph depends only on ``k``, ``gamma``, ``sigma``, ``pix_dist_pow`` and ``knn_backend``; the pixel graph
only on ``tau``, ``r`` (and the backend that holds it). ``alpha``, ``tol`` and ``maxiter`` change the solve, never
the graph: a sweep over them, or several datasets of one shared pass, build each graph of an image once.
"""

from __future__ import annotations

from typing import Any

import torch

from .label_propagation import PixelGraph, build_patch_graph
from .windows import PATCH_SIZE, patch_centres

__all__ = ["PATCH_GRAPH_FIELDS", "PIXEL_GRAPH_FIELDS", "ImageGraphs", "graph_key"]

# The settings each graph is built from (SegmentorSettings field names).
PATCH_GRAPH_FIELDS = ("k", "gamma", "sigma", "pix_dist_pow", "knn_backend")
PIXEL_GRAPH_FIELDS = ("tau", "r", "pixel_backend")


def graph_key(settings: Any, fields: tuple[str, ...]) -> tuple:
    """The values of ``fields`` in ``settings`` (a ``SegmentorSettings``): equal keys, equal graphs."""
    return tuple(getattr(settings, name) for name in fields)


class ImageGraphs:
    """The graphs of one image encoding, each built on first use and then reused.

    Patch graphs (a few MB each) are all kept; of the pixel graphs (``r*r - 1`` weight planes, about 180 MB at
    448 x 600) only the last one built, so that settings using one pixel graph should come one after another.

    Args:
        encoding: a ``segmentation.segmentor.ImageEncoding`` (its ``features``, ``boxes`` and ``image``).
    """

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self._patch: dict[tuple, torch.Tensor] = {}
        self._pixel: tuple[tuple, PixelGraph] | None = None

    def patch(self, settings: Any) -> torch.Tensor:
        """``S [N, N]`` of :func:`segmentation.label_propagation.build_patch_graph` for the settings' graph fields."""
        key = graph_key(settings, PATCH_GRAPH_FIELDS)
        if key not in self._patch:
            features, boxes = self.encoding.features, self.encoding.boxes
            b, _, gh, gw = features.shape
            flat_features = features.permute(0, 2, 3, 1).reshape(b * gh * gw, -1)  # [N, D]
            patch = getattr(self.encoding, "patch_size", PATCH_SIZE)
            locations = patch_centres(boxes, (gh, gw), device=features.device, patch_size=patch)
            self._patch[key] = build_patch_graph(flat_features, locations, **dict(zip(PATCH_GRAPH_FIELDS, key)))
        return self._patch[key]

    def pixel(self, settings: Any) -> PixelGraph:
        """The :class:`segmentation.label_propagation.PixelGraph` of the resized image for the settings' ``tau``, ``r``."""
        key = graph_key(settings, PIXEL_GRAPH_FIELDS)
        if self._pixel is None or self._pixel[0] != key:
            tau, r, backend = key
            self._pixel = None  # the old planes go before the new ones are computed
            self._pixel = (key, PixelGraph(self.encoding.image, tau=tau, r=r, backend=backend))
        return self._pixel[1]
