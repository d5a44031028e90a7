"""From per-alias scores to class scores and labels: the max over aliases, and the baselines' post-processing.

LPOSS's own protocol (docs/method.md, "Pipeline", steps 11-12) takes the max over a class's aliases and the argmax.
The baselines' protocols (SCLIP, NACLIP, ClearCLIP, ProxyCLIP; docs/method.md, "Own protocols") do, after the
sliding-window average of the raw scores, in their ``predict``'s order:

1. resize the alias scores bilinearly to the original image size;
2. PAMR (NACLIP), on the CLIP-normalised image resized to the same size;
3. ``softmax(logit_scale * scores)`` over all alias rows, then the max over a class's aliases;
4. SCLIP's ``area_thd``: a class whose argmax area is at most ``area_thd`` times the area of all non-background
   classes gets probability 0 everywhere;
5. the argmax, then ``prob_thd``: a pixel whose top class probability is below it becomes the background class.

Steps 1-4 are :func:`probability_scores`; step 5 is :func:`labels_with_background`. Every function is pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .pamr import pamr

__all__ = [
    "AUTHORS_MEAN",
    "AUTHORS_STD",
    "class_probabilities",
    "labels_with_background",
    "max_over_aliases",
    "probability_scores",
    "suppress_small_classes",
]

# The baselines' SegDataPreProcessor constants, in [0, 255] units (OpenAI CLIP's mean and std times 255, rounded).
AUTHORS_MEAN = (122.771, 116.746, 104.094)
AUTHORS_STD = (68.501, 66.632, 70.323)


def max_over_aliases(scores: torch.Tensor, alias_to_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class score = max over its alias rows (step 11, docs/method.md).

    Args:
        scores: ``[A, H, W]``, one row per alias.
        alias_to_class: ``[A]`` int64 in ``[0, num_classes)``.

    Returns:
        ``[num_classes, H, W]``.
    """
    index = alias_to_class.to(scores.device).view(-1, 1, 1).expand_as(scores)
    out = scores.new_full((num_classes,) + tuple(scores.shape[1:]), float("-inf"))
    return out.scatter_reduce(0, index, scores, reduce="amax")


def class_probabilities(
    scores: torch.Tensor, alias_to_class: torch.Tensor, num_classes: int, logit_scale: float
) -> torch.Tensor:
    """``softmax(logit_scale * scores)`` over the alias rows, then the max over each class's aliases.

    Args:
        scores: ``[A, H, W]`` raw scores (cosine similarities in ``[-1, 1]`` for the baselines).
        alias_to_class: ``[A]`` int64 in ``[0, num_classes)``.

    Returns:
        ``[num_classes, H, W]`` float in ``[0, 1]``; the softmax is over names, not classes, as the authors'.
    """
    return max_over_aliases(torch.softmax(scores * logit_scale, dim=0), alias_to_class, num_classes)


def suppress_small_classes(probabilities: torch.Tensor, area_thd: float, background: int = 0) -> torch.Tensor:
    """SCLIP's ``area_thd``: zero the classes whose argmax area is small against all non-background classes.

    Args:
        probabilities: ``[K, H, W]`` class probabilities.
        area_thd: fraction in ``[0, 1]``; a non-background class is kept where its argmax pixel count is greater
            than ``area_thd`` times the non-background classes' pixel count together.
        background: the background class's index (never suppressed, and left out of the total).

    Returns:
        ``[K, H, W]``, a new tensor, the suppressed classes' rows set to 0.
    """
    num_classes = probabilities.shape[0]
    areas = torch.bincount(probabilities.argmax(0).flatten(), minlength=num_classes).to(probabilities.dtype)  # [K]
    areas[background] = 0
    keep = (areas > area_thd * areas.sum()).to(probabilities.dtype)  # strictly greater, as SCLIP's `>`
    keep[background] = 1
    return probabilities * keep.view(-1, 1, 1)


def probability_scores(
    alias_scores: torch.Tensor,
    image: torch.Tensor,
    original_size: tuple[int, int],
    alias_to_class: torch.Tensor,
    num_classes: int,
    *,
    logit_scale: float | None,
    pamr_steps: int = 0,
    pamr_dilations: Sequence[int] = (8, 16),
    area_thd: float | None = None,
    background: int = 0,
) -> torch.Tensor:
    """Steps 1-4 of the module docstring on one image's sliding-window average.

    Args:
        alias_scores: ``[A, h, w]`` at the resized image's size (the windows' average).
        image: ``[3, h, w]`` float in ``[0, 1]``, the resized image (PAMR's affinities).
        original_size: ``(H, W)``.
        alias_to_class: ``[A]`` int64 in ``[0, num_classes)``.
        logit_scale: the softmax's temperature; None keeps the raw scores (and the max over aliases).
        pamr_steps, pamr_dilations: PAMR (0 steps: none).
        area_thd: SCLIP's area threshold, or None; needs ``logit_scale``.
        background: the background class's index.

    Returns:
        ``[num_classes, H, W]`` float32: probabilities where ``logit_scale`` is set, else the raw scores' max.
    """
    scores = F.interpolate(alias_scores[None].float(), size=original_size, mode="bilinear", align_corners=False)
    if pamr_steps > 0:
        mean = image.new_tensor(AUTHORS_MEAN).view(3, 1, 1)
        std = image.new_tensor(AUTHORS_STD).view(3, 1, 1)
        normalised = ((image.float() * 255.0 - mean) / std)[None]  # the CLIP input of the authors' predict
        normalised = F.interpolate(normalised, size=original_size, mode="bilinear", align_corners=False)
        scores = pamr(normalised, scores, pamr_steps, pamr_dilations)
    if logit_scale is None:
        return max_over_aliases(scores[0], alias_to_class, num_classes)
    probabilities = class_probabilities(scores[0], alias_to_class, num_classes, logit_scale)
    if area_thd is not None:
        probabilities = suppress_small_classes(probabilities, area_thd, background)
    return probabilities


def labels_with_background(scores: torch.Tensor, prob_thd: float | None = None, background: int = 0) -> torch.Tensor:
    """Argmax labels; where the top class score is below ``prob_thd``, the background class.

    Args:
        scores: ``[K, H, W]`` class scores (probabilities under the baselines' protocols).
        prob_thd: the threshold, or None for the plain argmax.
        background: index of the background class, in ``[0, K)``.

    Returns:
        ``[H, W]`` int64 in ``[0, K)``.
    """
    labels = scores.argmax(0)
    if prob_thd is None:
        return labels
    if not 0 <= background < scores.shape[0]:
        raise ValueError(f"background={background}: expected a class index in [0, {scores.shape[0]})")
    return torch.where(scores.max(0).values < prob_thd, torch.full_like(labels, background), labels)
