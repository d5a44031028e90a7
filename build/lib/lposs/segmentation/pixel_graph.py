"""The pixel graph of LPOSS+ (docs/method.md, "Label propagation"): an ``r x r`` stencil on Lab colour.

The graph is held as ``r*r - 1`` dense weight planes ``[r*r - 1, H, W]`` and applied with shifted multiply-adds
(a compiled CPU loop when available, :mod:`segmentation.kernels.cpu`), never as a sparse matrix. This is the
torch path of :func:`segmentation.label_propagation.propagate_pixels` and the reference the Triton kernels
(:mod:`segmentation.kernels.triton_pixel`) are checked against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .kernels.cpu import cpu_kernels_for

__all__ = [
    "apply_stencil",
    "pixel_affinity",
    "rgb_to_lab",
    "scaled_lab",
    "stencil_offsets",
    "stencil_operator",
    "stencil_product",
]

# CIE XYZ of linear sRGB and the D65 white point, as kornia.color.rgb_to_lab uses them.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
# Lab is divided by these (docs/method.md, "Label propagation") so that L, a and b all span about one unit.
_LAB_SCALE = (100.0, 128.0, 128.0)


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB ``[3, H, W]`` (or ``[B, 3, H, W]``) in ``[0, 1]`` to CIE Lab, D65, kornia's conventions.

    Returns:
        Same shape; L in ``[0, 100]``, a and b in about ``[-128, 127]``.
    """
    linear = torch.where(image > 0.04045, ((image + 0.055).clamp(min=0) / 1.055) ** 2.4, image / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=image.dtype, device=image.device)
    white = torch.tensor(_D65_WHITE, dtype=image.dtype, device=image.device)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear) / white[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856) ** (1 / 3), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def scaled_lab(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` RGB in ``[0, 1]`` -> Lab divided by ``(100, 128, 128)``, float32 (pixel graph, docs/method.md)."""
    return rgb_to_lab(image.float()) / torch.tensor(_LAB_SCALE, device=image.device)[:, None, None]


def stencil_offsets(r: int) -> list[tuple[int, int]]:
    """The ``r * r - 1`` offsets ``(dy, dx)`` of an ``r x r`` square, centre excluded, row-major."""
    half = r // 2
    return [(dy, dx) for dy in range(-half, half + 1) for dx in range(-half, half + 1) if (dy, dx) != (0, 0)]


def _shifted(padded: torch.Tensor, half: int, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
    """View of ``padded [..., H + 2h, W + 2h]`` holding, at each pixel ``p``, the value at ``p + (dy, dx)``."""
    return padded[..., half + dy : half + dy + height, half + dx : half + dx + width]


def pixel_affinity(image: torch.Tensor, *, tau: float = 0.01, r: int = 13) -> torch.Tensor:
    """Normalised pixel graph of LPOSS+ (docs/method.md, "Label propagation") as stencil weights.

    ``W[o, p] = exp(-||lab_p - lab_{p+o}|| / tau)`` for every offset ``o`` of the ``r x r`` square (centre
    excluded) whose neighbour lies inside the image, else 0; then ``S = D^-1/2 W D^-1/2``.

    Args:
        image: ``[3, H, W]`` RGB in ``[0, 1]``.

    Returns:
        ``S [r*r - 1, H, W]`` float32: ``S[o, y, x]`` is the edge weight from ``(y, x)`` to
        ``(y, x) + offsets[o]``, offsets as in :func:`stencil_offsets`.
    """
    _, height, width = image.shape
    half = r // 2
    lab = scaled_lab(image)
    # Pad with NaN so that out-of-image neighbours give NaN distances, turned into weight 0 below.
    padded = F.pad(lab, (half, half, half, half), value=float("nan"))
    offsets = stencil_offsets(r)
    count = len(offsets)
    weights = torch.empty(count, height, width, dtype=torch.float32, device=image.device)
    for o, (dy, dx) in enumerate(offsets[: count // 2]):
        # .square().sum(0).sqrt() is 20x faster than .norm(dim=0) on the CPU
        dist = (lab - _shifted(padded, half, dy, dx, height, width)).square().sum(0).sqrt()
        torch.exp(-dist / tau, out=weights[o])
    weights[: count // 2].nan_to_num_(nan=0.0)
    # The graph is symmetric: offset count-1-o is -offsets[o] and W[-o](p) = W[o](p - o), so shift, don't recompute.
    padded_half = F.pad(weights[: count // 2], (half, half, half, half))
    for o, (dy, dx) in enumerate(offsets[: count // 2]):
        weights[count - 1 - o] = _shifted(padded_half[o], half, -dy, -dx, height, width)
    degrees = weights.sum(0)
    inv_sqrt = torch.where(degrees > 0, degrees, torch.ones_like(degrees)).rsqrt()  # isolated pixel: degree 1
    inv_sqrt_padded = F.pad(inv_sqrt, (half, half, half, half))
    for o, (dy, dx) in enumerate(offsets):
        weights[o] *= inv_sqrt * _shifted(inv_sqrt_padded, half, dy, dx, height, width)
    return weights


def apply_stencil(affinity: torch.Tensor, z: torch.Tensor, r: int, *, compiled: bool = True) -> torch.Tensor:
    """``S z`` for stencil weights ``affinity [r*r - 1, H, W]`` and values ``z [C, H, W]`` -> ``[C, H, W]``.

    On the CPU (float32) the compiled kernel of :mod:`segmentation.kernels.cpu` is used when it is
    available and ``compiled`` is True; otherwise ``r*r - 1`` shifted multiply-adds.
    """
    kernels = cpu_kernels_for(z, affinity) if compiled else None
    if kernels is not None:
        return kernels.apply_stencil(affinity.contiguous(), z.contiguous(), r)
    _, height, width = z.shape
    half = r // 2
    padded = F.pad(z, (half, half, half, half))
    out = torch.zeros_like(z)
    for o, (dy, dx) in enumerate(stencil_offsets(r)):
        out.addcmul_(affinity[o], _shifted(padded, half, dy, dx, height, width))
    return out


def stencil_operator(image: torch.Tensor, tau: float, r: int, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z [C, H, W] -> z - alpha S z`` with ``S`` held as weight planes (the torch / compiled CPU path)."""
    return stencil_product(pixel_affinity(image, tau=tau, r=r), r, alpha)


def stencil_product(affinity: torch.Tensor, r: int, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z [C, H, W] -> z - alpha S z`` for weight planes ``affinity [r*r - 1, H, W]`` of :func:`pixel_affinity`."""
    return lambda z: apply_stencil(affinity, z, r).mul_(-alpha).add_(z)
