"""The sliding-window LPOSS / LPOSS+ segmentor: SPEC steps 2-3, 7-12 around the two backbones.

Usage::

    from models import LPOSSBackbones
    from segmentation import Segmentor, SegmentorSettings

    backbones = LPOSSBackbones.from_config(cfg.model, device)
    backbones.set_classes(["sky;cloud", "tree", "person"])
    segmentor = Segmentor(backbones, SegmentorSettings(pixel_refine=True))  # LPOSS+
    labels = segmentor.predict(image)  # image: [H, W, 3] uint8 RGB -> [H, W] int64 class ids
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .label_propagation import propagate_patches, propagate_pixels
from .windows import merge_windows, patch_centres, resize_to_fit, window_boxes

__all__ = ["Backbones", "Segmentor", "SegmentorSettings", "max_over_aliases"]


class Backbones(Protocol):
    """What the segmentor needs from the models: see ``models.LPOSSBackbones``."""

    alias_to_class: torch.Tensor  # [A] int64, class index of every text row

    @property
    def device(self) -> torch.device: ...

    def __call__(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``windows [B, 3, h, w]`` in [0, 1] -> (features ``[B, D, gh, gw]`` L2-normalised, scores ``[B, A, gh, gw]``)."""
        ...


@dataclass(frozen=True)
class SegmentorSettings:
    """Every setting of the method, with the paper's defaults (SPEC §4)."""

    patch_propagation: bool = True  # False: the MaskCLIP baseline (argmax of the initial scores)
    pixel_refine: bool = False  # True: LPOSS+
    short_side: int = 448
    long_side: int = 2048
    crop: int = 224
    stride: int = 112
    window_batch: int = 64
    k: int = 400
    gamma: float = 3.0
    sigma: float = 0.01
    pix_dist_pow: float = 1.0
    alpha: float = 0.95
    knn_backend: str = "torch"
    tau: float = 0.01
    r: int = 13
    pixel_backend: str = "auto"  # auto | triton | torch, see propagate_pixels
    tol: float = 1e-6
    maxiter: int = 10

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SegmentorSettings:
        """Pick this class's fields out of a (larger) config mapping; the rest is ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: config[key] for key in names if key in config})

    @property
    def method(self) -> str:
        """``"maskclip"``, ``"lposs"`` or ``"lposs_plus"``."""
        if not self.patch_propagation:
            return "maskclip"
        return "lposs_plus" if self.pixel_refine else "lposs"


def max_over_aliases(scores: torch.Tensor, alias_to_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class score = max over its alias rows (SPEC step 11).

    Args:
        scores: ``[A, H, W]``, one row per alias.
        alias_to_class: ``[A]`` int64 in ``[0, num_classes)``.

    Returns:
        ``[num_classes, H, W]``.
    """
    index = alias_to_class.to(scores.device).view(-1, 1, 1).expand_as(scores)
    out = scores.new_full((num_classes,) + tuple(scores.shape[1:]), float("-inf"))
    return out.scatter_reduce(0, index, scores, reduce="amax")


class Segmentor:
    """Open-vocabulary segmentation of one image at a time with LPOSS, LPOSS+ or the MaskCLIP baseline."""

    def __init__(
        self, backbones: Backbones, settings: SegmentorSettings | None = None, *, profile: bool = False
    ) -> None:
        self.backbones = backbones
        self.settings = settings or SegmentorSettings()
        self.profile = profile  # when True, stage_seconds accumulates synchronised wall time per stage
        self.stage_seconds: dict[str, float] = {}

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        device = self.backbones.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start

    @torch.no_grad()
    def encode_windows(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]:
        """Run all windows of an image through the backbones (SPEC steps 3-7).

        Args:
            image: ``[3, h, w]`` float in ``[0, 1]`` (already resized), on the backbones' device.

        Returns:
            ``(features [B, D, gh, gw], scores [B, A, gh, gw], boxes)``.
        """
        s = self.settings
        boxes = window_boxes(image.shape[1], image.shape[2], s.crop, s.stride)
        windows = torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])  # [B, 3, crop, crop]
        outputs = [self.backbones(windows[i : i + s.window_batch]) for i in range(0, len(boxes), s.window_batch)]
        features = torch.cat([f for f, _ in outputs]).float()
        scores = torch.cat([c for _, c in outputs]).float()
        return features, scores, boxes

    @torch.no_grad()
    def alias_scores(self, image: torch.Tensor) -> torch.Tensor:
        """Per-alias scores at the resized resolution after the configured propagation (SPEC steps 3-10).

        Args:
            image: ``[3, h, w]`` float in ``[0, 1]`` (already resized), on the backbones' device.

        Returns:
            ``[A, h, w]`` float32.
        """
        s = self.settings
        with self._stage("backbones"):
            features, scores, boxes = self.encode_windows(image)
        if s.patch_propagation:
            b, a, gh, gw = scores.shape
            flat_scores = scores.permute(0, 2, 3, 1).reshape(-1, a)  # [B * gh * gw, A]
            flat_features = features.permute(0, 2, 3, 1).reshape(b * gh * gw, -1)  # [N, D]
            locations = patch_centres(boxes, (gh, gw), device=image.device)
            with self._stage("patch_lp"):
                flat_scores = propagate_patches(
                    flat_scores,
                    flat_features,
                    locations,
                    k=s.k,
                    gamma=s.gamma,
                    sigma=s.sigma,
                    pix_dist_pow=s.pix_dist_pow,
                    alpha=s.alpha,
                    tol=s.tol,
                    maxiter=s.maxiter,
                    knn_backend=s.knn_backend,
                )
            scores = flat_scores.reshape(b, gh, gw, a).permute(0, 3, 1, 2)  # back to [B, A, gh, gw]
        canvas = merge_windows(scores, boxes, image.shape[1], image.shape[2])
        if s.pixel_refine:
            with self._stage("pixel_lp"):
                canvas = propagate_pixels(
                    canvas,
                    image,
                    tau=s.tau,
                    r=s.r,
                    alpha=s.alpha,
                    tol=s.tol,
                    maxiter=s.maxiter,
                    backend=s.pixel_backend,
                )
        return canvas

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``[H, W, 3]`` uint8 RGB -> resized ``[3, h, w]`` float in ``[0, 1]`` on the backbones' device (SPEC step 2)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an [H, W, 3] uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
        resized = resize_to_fit(image, self.settings.short_side, self.settings.long_side)
        return (
            torch.from_numpy(np.ascontiguousarray(resized)).to(self.backbones.device).permute(2, 0, 1).float() / 255.0
        )

    @torch.no_grad()
    def predict_scores(self, image: np.ndarray) -> torch.Tensor:
        """Class scores at the original size (SPEC steps 2-12, before the argmax).

        Args:
            image: ``[H, W, 3]`` uint8 RGB.

        Returns:
            ``[K, H, W]`` float32, K = number of classes.
        """
        alias_to_class = self.backbones.alias_to_class
        num_classes = int(alias_to_class.max()) + 1
        # As the reference: aliases are propagated as separate columns, the max over them comes after.
        classes = max_over_aliases(self.alias_scores(self.prepare(image)), alias_to_class, num_classes)
        return F.interpolate(classes[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label map ``[H, W]`` int64 of class indices for an ``[H, W, 3]`` uint8 RGB image."""
        return self.predict_scores(image).argmax(0).cpu().numpy()
