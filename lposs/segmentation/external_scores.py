"""Class scores of another method as LPOSS's initial scores (docs/method.md, "External scores").

Scores for the whole image, ``[C, H', W']`` of any size, are sampled bilinearly at the graph's patch centres;
scores per window, ``[B, C, h, w]`` on any grid, are resized bilinearly (``align_corners=False``) to the graph's
(DINO) grid, as the CLIP scores of a backbone of another patch size are. Either way they become ``Y`` of every
window, and label propagation runs from there as for the toolkit's own scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .windows import patch_centres

__all__ = ["check_boxes", "sample_at_centres", "scores_per_window"]


def check_boxes(boxes: Sequence[tuple[int, int, int, int]], size: tuple[int, int]) -> None:
    """ValueError unless ``boxes`` are windows ``(y1, y2, x1, x2)`` of one size inside an image of ``size`` (h, w)."""
    sizes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes}
    inside = all(0 <= y1 < y2 <= size[0] and 0 <= x1 < x2 <= size[1] for y1, y2, x1, x2 in boxes)
    if not boxes or len(sizes) != 1 or not inside:
        raise ValueError(
            f"boxes must be windows (y1, y2, x1, x2) of one size inside the resized image {size}, got {list(boxes)[:4]}"
        )


def sample_at_centres(scores: torch.Tensor, centres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples of a whole-image score map at points of the (resized) image.

    The map covers the image: its pixel ``(i, j)`` is centred at ``((i + 0.5) h / H', (j + 0.5) w / W')`` in image
    pixels, the convention of ``F.interpolate(..., align_corners=False)``; points beyond the outer pixel centres
    take the border values.

    Args:
        scores: ``[C, H', W']`` class scores, any size.
        centres: ``[N, 2]`` points ``(y, x)`` in pixels of the image, e.g. :func:`~segmentation.windows.patch_centres`.
        size: ``(h, w)`` of that image.

    Returns:
        ``[N, C]`` float32.
    """
    if scores.dim() != 3:
        raise ValueError(f"whole-image scores must be [C, H, W], got {tuple(scores.shape)}")
    height, width = size
    ys, xs = centres.float().unbind(1)
    grid = torch.stack([2 * xs / width - 1, 2 * ys / height - 1], dim=-1)  # [N, 2] (x, y) in [-1, 1], image edges
    sampled = F.grid_sample(
        scores[None].float(), grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=False
    )  # [1, C, 1, N]
    return sampled[0, :, 0].T


def scores_per_window(
    scores: torch.Tensor,
    boxes: list[tuple[int, int, int, int]],
    grid: tuple[int, int],
    size: tuple[int, int],
    patch_size: int,
) -> torch.Tensor:
    """External scores as the initial scores ``Y`` of every window, on the graph's grid.

    Args:
        scores: ``[C, H', W']`` for the whole image (sampled at the patch centres), or ``[B, C, h, w]`` per window
            (``B = len(boxes)``; resized bilinearly to ``grid`` when ``(h, w)`` differs, else used as they are).
        boxes: the ``B`` windows ``(y1, y2, x1, x2)`` in pixels of the resized image.
        grid: ``(gh, gw)``, the DINO grid of one window.
        size: ``(h, w)`` of the resized image.
        patch_size: DINO's patch size (patch centres ``y1 + p / 2 + p a``).

    Returns:
        ``[B, C, gh, gw]`` float32.
    """
    if scores.dim() == 3:
        centres = patch_centres(boxes, grid, device=scores.device, patch_size=patch_size)
        flat = sample_at_centres(scores, centres, size)  # [B * gh * gw, C], window-major then row-major
        return flat.reshape(len(boxes), grid[0], grid[1], -1).permute(0, 3, 1, 2)
    if scores.dim() != 4 or scores.shape[0] != len(boxes):
        raise ValueError(
            f"scores must be [C, H, W] for the image or [{len(boxes)}, C, h, w] for its {len(boxes)} windows, "
            f"got {tuple(scores.shape)}"
        )
    scores = scores.float()
    if tuple(scores.shape[-2:]) != tuple(grid):
        scores = F.interpolate(scores, size=tuple(grid), mode="bilinear", align_corners=False)
    return scores
