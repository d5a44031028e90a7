"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP and SCLIP call it.

Re-derived from sinahmr/NACLIP ``pamr.py`` (itself from visinf/1-stage-wseg), written as a pure function. For
every pixel and every dilation ``d`` the neighbours are the 8 pixels at offsets ``(dy * d, dx * d)``,
``dy, dx in {-1, 0, 1}`` not both 0, read with replicate padding at the border. With ``P = 8 * len(dilations)``
neighbours:

- ``s[k]`` = standard deviation (unbiased) of channel ``k`` of the image over the 9 taps (centre included) of every
  dilation together (``9 * len(dilations)`` values, the centre counted once per dilation);
- affinity ``a[p] = mean_k ( -|x_k - x_k(p)| / (1e-8 + 0.1 s[k]) )``, weights ``w = softmax_p(a)``;
- ``steps`` times: ``m <- sum_p w[p] m(p)`` for every score channel (the pixel itself is not among its neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pamr"]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]  # the 8 neighbours


def _padded(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``x [B, C, H, W]`` with ``dilation`` pixels of replicate padding on every side (any width: the border
    repeats), as the reference pads before each dilated 3 x 3 kernel."""
    return F.pad(x, [dilation] * 4, mode="replicate")


def _shifted(padded: torch.Tensor, dilation: int, dy: int, dx: int, size: tuple[int, int]) -> torch.Tensor:
    """The ``size`` map of :func:`_padded` read at offset ``(dy * d, dx * d)``: a view, ``[B, C, H, W]``."""
    top, left = dilation + dy * dilation, dilation + dx * dilation
    return padded[..., top : top + size[0], left : left + size[1]]


def _taps(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``x [B, C, H, W]`` at the centre and its 8 neighbours of one dilation: ``[B, C, 9, H, W]``."""
    padded, size = _padded(x, dilation), tuple(x.shape[-2:])
    return torch.stack([_shifted(padded, dilation, dy, dx, size) for dy, dx in [(0, 0), *_OFFSETS]], dim=2)


def pamr_weights(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """PAMR's neighbour weights of an image.

    Args:
        image: ``[B, K, H, W]`` float (any per-channel affine normalisation: the weights do not depend on it, but
            for the ``1e-8`` guard).

    Returns:
        ``[B, P, H, W]`` float, ``P = 8 * len(dilations)`` (dilation-major, neighbours in row-major order), each
        pixel's weights summing to 1.
    """
    taps = torch.cat([_taps(image, d) for d in dilations], dim=2)  # [B, K, 9 * n_dil, H, W]
    spread = taps.std(dim=2, keepdim=True)  # [B, K, 1, H, W], unbiased, as torch's default
    differences = torch.cat([(taps[:, :, :1] - taps[:, :, 9 * i + 1 : 9 * i + 9]) for i in range(len(dilations))], 2)
    affinity = (-differences.abs() / (1e-8 + 0.1 * spread)).mean(dim=1)  # [B, P, H, W], mean over channels
    return torch.softmax(affinity, dim=1)


def pamr(image: torch.Tensor, scores: torch.Tensor, steps: int, dilations: Sequence[int] = (8, 16)) -> torch.Tensor:
    """Refine score maps by ``steps`` rounds of image-adaptive averaging over each pixel's neighbours.

    Args:
        image: ``[B, K, H, W]`` float, the image the affinities come from (NACLIP and SCLIP pass the CLIP-normalised
            image, resized bilinearly to the scores' size).
        scores: ``[B, C, h, w]`` float; resized bilinearly with ``align_corners=True`` to ``(H, W)`` first, as the
            reference does (a no-op where the sizes agree).
        steps: number of rounds (NACLIP: 10); 0 returns the resized scores.
        dilations: the neighbour rings' distances in pixels (NACLIP and SCLIP: ``(8, 16)``).

    Returns:
        ``[B, C, H, W]`` float, in the scores' dtype.
    """
    if image.ndim != 4 or scores.ndim != 4 or image.shape[0] != scores.shape[0]:
        raise ValueError(
            f"pamr: expected image [B, K, H, W] and scores [B, C, h, w], got {image.shape}, {scores.shape}"
        )
    if steps < 0 or not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"pamr: steps={steps} must be >= 0 and dilations={tuple(dilations)} positive integers")
    scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=True)
    if steps == 0:
        return scores
    dilations = [int(d) for d in dilations]
    weights = pamr_weights(image.to(scores.dtype), dilations)  # [B, P, H, W]
    size = tuple(scores.shape[-2:])
    for _ in range(steps):
        refined, p = torch.zeros_like(scores), 0
        for d in dilations:
            padded = _padded(scores, d)
            for dy, dx in _OFFSETS:  # one neighbour at a time: no [B, C, P, H, W] tensor
                refined.addcmul_(weights[:, p : p + 1], _shifted(padded, d, dy, dx, size))
                p += 1
        scores = refined
    return scores
