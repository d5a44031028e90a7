"""Image resizing, the sliding-window grid and merging window outputs (docs/method.md steps 2, 3, 8 and 9)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["floor_to_multiple", "merge_windows", "patch_centres", "resize_to_fit", "resized_size", "window_boxes"]

PATCH_SIZE = 16  # the paper's DINO ViT-B/16; other backbones pass their own


def resized_size(height: int, width: int, short_side: int = 448, long_side: int = 2048) -> tuple[int, int]:
    """Size ``(h, w)`` that keeps the aspect ratio and fits ``(long_side, short_side)``, as mmcv's ``imrescale``."""
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)  # mmcv's rounding, as the reference pipeline


def resize_to_fit(image: np.ndarray, short_side: int = 448, long_side: int = 2048) -> np.ndarray:
    """Resize an image bilinearly so that it fits ``(long_side, short_side)`` (docs/method.md step 2).

    Args:
        image: ``[H, W, 3]`` uint8 RGB.

    Returns:
        ``[h, w, 3]`` uint8, the same pixels mmcv's ``imrescale(image, (long_side, short_side))`` gives.
    """
    height, width = resized_size(image.shape[0], image.shape[1], short_side, long_side)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _axis_starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the windows along one axis; the last one is moved back to end at the border."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def window_boxes(height: int, width: int, crop: int = 224, stride: int = 112) -> list[tuple[int, int, int, int]]:
    """The sliding-window grid of docs/method.md step 3, row-major; ``crop=0``: one window, the whole image.

    Returns:
        ``[(y1, y2, x1, x2), ...]``; every window has size ``min(crop, height) x min(crop, width)``; ``crop=0``:
        ``[(0, height, 0, width)]`` (``stride`` unused).
    """
    if crop == 0:  # whole-image inference (NACLIP's slide_crop=0)
        return [(0, height, 0, width)]
    return [
        (y1, y2, x1, x2)
        for y1, y2 in _axis_starts(height, crop, stride)
        for x1, x2 in _axis_starts(width, crop, stride)
    ]


def floor_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """What the backbones see of a whole image (``crop=0``): its top-left ``[3, h - h % m, w - w % m]`` part.

    As CLIP's patch convolution (stride = patch, no padding) on a whole image in NACLIP: the last ``h % m`` rows
    and ``w % m`` columns are not seen, where windows are padded instead (docs/method.md, "Own protocols").

    Args:
        image: ``[3, h, w]`` float in [0, 1].
        multiple: ``m``, a multiple of both backbones' patch sizes (their lcm).

    Returns:
        ``[3, h', w']``, a view of ``image``.
    """
    height, width = image.shape[-2:]
    if height < multiple or width < multiple:
        raise ValueError(
            f"crop=0 (whole image): the resized image is {height} x {width}, smaller than {multiple} (the backbones' "
            "patch multiple); raise short_side"
        )
    return image[:, : height - height % multiple, : width - width % multiple]


def patch_centres(
    boxes: list[tuple[int, int, int, int]],
    grid: tuple[int, int],
    device: torch.device | None = None,
    patch_size: int = PATCH_SIZE,
) -> torch.Tensor:
    """Centres of the ``p x p`` patches of every window, in resized-image pixels (docs/method.md step 8).

    Patch ``(a, b)`` of the window starting at ``(y1, x1)`` is centred at ``(y1 + p / 2 + p a, x1 + p / 2 + p b)``.

    Args:
        boxes: windows as from :func:`window_boxes`.
        grid: patch grid ``(gh, gw)`` of one window (the DINO grid, the graph's nodes).
        patch_size: ``p``, DINO's patch size (16 for the paper's ViT-B/16).

    Returns:
        ``[len(boxes) * gh * gw, 2]`` float32 ``(y, x)``, window-major then row-major, matching
        ``features.permute(0, 2, 3, 1).reshape(-1, D)`` of a ``[B, D, gh, gw]`` tensor.
    """
    gh, gw = grid
    ys = torch.arange(gh, device=device, dtype=torch.float32) * patch_size + patch_size / 2
    xs = torch.arange(gw, device=device, dtype=torch.float32) * patch_size + patch_size / 2
    local = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # [gh * gw, 2]
    origins = torch.tensor([(y1, x1) for y1, _, x1, _ in boxes], device=device, dtype=torch.float32)  # [B, 2]
    return (origins[:, None, :] + local[None]).reshape(-1, 2)


def merge_windows(
    window_scores: torch.Tensor, boxes: list[tuple[int, int, int, int]], height: int, width: int
) -> torch.Tensor:
    """Resize each window's patch scores to the window and average overlapping windows (docs/method.md step 9).

    Args:
        window_scores: ``[B, C, gh, gw]``, one entry per box.
        boxes: the ``B`` windows ``(y1, y2, x1, x2)``.

    Returns:
        ``[C, height, width]`` float32 canvas.
    """
    win_h, win_w = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    upsampled = F.interpolate(window_scores.float(), size=(win_h, win_w), mode="bilinear", align_corners=False)
    canvas = window_scores.new_zeros((window_scores.shape[1], height, width), dtype=torch.float32)
    count = window_scores.new_zeros((1, height, width), dtype=torch.float32)
    for (y1, y2, x1, x2), scores in zip(boxes, upsampled):
        canvas[:, y1:y2, x1:x2] += scores
        count[:, y1:y2, x1:x2] += 1
    return canvas / count
