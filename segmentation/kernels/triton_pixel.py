"""Triton kernels for the pixel level (LPOSS+) on the GPU: degrees and the fused product ``z - alpha S z``.

The torch path holds the pixel graph as ``r*r - 1`` weight planes and applies it with one shifted multiply-add
per offset, each pass reading and writing the whole ``[C, H, W]`` tensor (about 90 GB of traffic per product at
448 x 600 x 171). Here one program handles a tile of pixels and a block of channels in one pass: it walks the
``r x r`` offsets once, reads each neighbour's values for every channel of the block (the tile and its halo are
re-read from the GPU caches, not from memory), accumulates in registers and writes ``z - alpha S z`` once.

The edge weights are *recomputed* in the kernel from the Lab image (3 floats per pixel) and the inverse square
root degrees (1 float per pixel) instead of being read from 168 weight planes: the planes would be read again
for every block of channels (11 times at C = 171, 2 GB per product), while the recomputation costs one ``exp``
and one ``sqrt`` per offset and pixel, shared by the whole channel block, and the inputs stay cache-sized.

Used by :func:`segmentation.label_propagation.propagate_pixels` with ``backend="triton"`` (or ``"auto"`` on CUDA),
which checks the kernels against the torch path on the first CUDA use and falls back to it on any failure.
CPU tensors run through Triton's interpreter, which must be switched on with ``TRITON_INTERPRET=1`` *before*
``triton`` is first imported (Triton picks compiled or interpreted kernels when it decorates them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from ..pixel_graph import scaled_lab, stencil_operator
from . import warn_triton_fallback

__all__ = [
    "checked_pixel_operator",
    "fused_pixel_operator",
    "interpreted",
    "inverse_sqrt_degrees",
    "propagation_product",
]

# A program covers TILE_H x TILE_W pixels and BLOCK_C channels (powers of two, as tl.arange needs): 256 pixels x
# 16 channels of float32 accumulators is 32 registers per thread at Triton's default 4 warps (ptxas for sm_90:
# 217 registers per thread in all, no spills). Not tuned on a GPU yet. One fixed channel block (masked beyond C)
# and no specialisation on the sizes keep it to one compiled variant, the one the first-use check runs.
TILE_H, TILE_W, BLOCK_C = 8, 32, 16
_SIZES = ["channels", "height", "width", "half"]


@triton.jit
def _tile_pixels(height, width, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Row, column and in-image mask of the pixels of this program's tile, flattened to ``[TILE_H * TILE_W]``."""
    tiles_w = tl.cdiv(width, TILE_W)
    tile = tl.program_id(0)
    i = tl.arange(0, TILE_H * TILE_W)
    ys = (tile // tiles_w) * TILE_H + i // TILE_W
    xs = (tile % tiles_w) * TILE_W + i % TILE_W
    return ys, xs, (ys < height) & (xs < width)


@triton.jit
def _edge_weights(lab_ptr, l0, l1, l2, ys, xs, dy, dx, height, width, tau, valid):
    """``exp(-||lab_p - lab_q|| / tau)`` for ``q = p + (dy, dx)``; 0 at the centre and outside the image.

    Same arithmetic, in the same order, as ``pixel_affinity``: squares summed over L, a, b, square root (correctly
    rounded), then the division by ``tau`` (not a multiplication by ``1 / tau``, which rounds differently).
    """
    qy = ys + dy
    qx = xs + dx
    inside = valid & (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width) & ((dy != 0) | (dx != 0))
    q = qy * width + qx
    plane = height * width
    d0 = l0 - tl.load(lab_ptr + q, mask=inside, other=0.0)
    d1 = l1 - tl.load(lab_ptr + plane + q, mask=inside, other=0.0)
    d2 = l2 - tl.load(lab_ptr + 2 * plane + q, mask=inside, other=0.0)
    dist = tl.sqrt_rn(d0 * d0 + d1 * d1 + d2 * d2)
    # IEEE division (a plain "/" is approximate on NVIDIA GPUs), with tau broadcast to the block shape first
    exponent = tl.div_rn(-dist, tl.zeros_like(dist) + tau)
    return tl.where(inside, tl.exp(exponent), 0.0), q, inside


@triton.jit(do_not_specialize=_SIZES[1:])
def _inverse_sqrt_degree_kernel(lab_ptr, out_ptr, height, width, half, tau, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """``out[p] = 1 / sqrt(sum_q W[p, q])`` (a zero degree counts as 1) for one tile of pixels."""
    ys, xs, valid = _tile_pixels(height, width, TILE_H, TILE_W)
    p = ys * width + xs
    plane = height * width
    l0 = tl.load(lab_ptr + p, mask=valid, other=0.0)
    l1 = tl.load(lab_ptr + plane + p, mask=valid, other=0.0)
    l2 = tl.load(lab_ptr + 2 * plane + p, mask=valid, other=0.0)
    degree = tl.zeros([TILE_H * TILE_W], dtype=tl.float32)
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            w, q, inside = _edge_weights(lab_ptr, l0, l1, l2, ys, xs, dy, dx, height, width, tau, valid)
            degree += w
    degree = tl.where(degree > 0, degree, 1.0)  # isolated pixel: degree 1, as the torch path
    tl.store(out_ptr + p, 1.0 / tl.sqrt_rn(degree), mask=valid)


@triton.jit(do_not_specialize=_SIZES)
def _propagation_product_kernel(
    z_ptr,
    lab_ptr,
    inv_sqrt_ptr,
    out_ptr,
    channels,
    height,
    width,
    half,
    tau,
    alpha,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``out = z - alpha * S z`` on one tile of pixels x one block of channels, ``S = D^-1/2 W D^-1/2``."""
    ys, xs, valid = _tile_pixels(height, width, TILE_H, TILE_W)
    p = ys * width + xs
    plane = height * width
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_ok = cs < channels
    rows = cs.to(tl.int64)[:, None] * plane  # [BLOCK_C, 1]: int64, C * H * W may pass 2^31
    l0 = tl.load(lab_ptr + p, mask=valid, other=0.0)
    l1 = tl.load(lab_ptr + plane + p, mask=valid, other=0.0)
    l2 = tl.load(lab_ptr + 2 * plane + p, mask=valid, other=0.0)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], dtype=tl.float32)
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            w, q, inside = _edge_weights(lab_ptr, l0, l1, l2, ys, xs, dy, dx, height, width, tau, valid)
            w = w * tl.load(inv_sqrt_ptr + q, mask=inside, other=0.0)  # W[p, q] / sqrt(d_q), shared by the block
            z_q = tl.load(z_ptr + rows + q[None, :], mask=channel_ok[:, None] & inside[None, :], other=0.0)
            acc += w[None, :] * z_q
    io_mask = channel_ok[:, None] & valid[None, :]
    z_p = tl.load(z_ptr + rows + p[None, :], mask=io_mask, other=0.0)
    inv_sqrt_p = tl.load(inv_sqrt_ptr + p, mask=valid, other=0.0)
    tl.store(out_ptr + rows + p[None, :], z_p - alpha * (acc * inv_sqrt_p[None, :]), mask=io_mask)


def interpreted() -> bool:
    """True if Triton runs these kernels through its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return not isinstance(_propagation_product_kernel, triton.runtime.jit.JITFunction)


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type == "cpu" and not interpreted():
        raise RuntimeError(
            "the Triton pixel kernels need a GPU tensor, or TRITON_INTERPRET=1 set before triton is first "
            "imported to run them on the CPU; use backend='torch' or 'auto' on the CPU"
        )


def _grid_tiles(height: int, width: int) -> int:
    return triton.cdiv(height, TILE_H) * triton.cdiv(width, TILE_W)


def inverse_sqrt_degrees(lab: torch.Tensor, tau: float, r: int) -> torch.Tensor:
    """``1 / sqrt(d)`` of the pixel graph, ``d`` its degrees (a zero degree counts as 1).

    Args:
        lab: ``[3, H, W]`` float32 Lab divided by ``(100, 128, 128)``, contiguous.
        tau: colour bandwidth; r: odd stencil side.

    Returns:
        ``[H, W]`` float32 on the device of ``lab``.
    """
    _check_device(lab)
    _, height, width = lab.shape
    out = torch.empty(height, width, dtype=torch.float32, device=lab.device)
    _inverse_sqrt_degree_kernel[(_grid_tiles(height, width),)](
        lab, out, height, width, r // 2, tau, TILE_H=TILE_H, TILE_W=TILE_W
    )
    return out


def propagation_product(
    z: torch.Tensor, lab: torch.Tensor, inv_sqrt: torch.Tensor, tau: float, r: int, alpha: float
) -> torch.Tensor:
    """``z - alpha * S z`` for the pixel graph of ``lab``, in one pass over ``z``.

    Args:
        z: ``[C, H, W]`` float32.
        lab: ``[3, H, W]`` float32 scaled Lab, contiguous; inv_sqrt: ``[H, W]`` from :func:`inverse_sqrt_degrees`.
        tau, r: the graph's colour bandwidth and stencil side; alpha: propagation strength.

    Returns:
        ``[C, H, W]`` float32, contiguous.
    """
    _check_device(z)
    z = z.contiguous()
    channels, height, width = z.shape
    out = torch.empty_like(z)
    grid = (_grid_tiles(height, width), triton.cdiv(channels, BLOCK_C))
    _propagation_product_kernel[grid](
        z,
        lab,
        inv_sqrt,
        out,
        channels,
        height,
        width,
        r // 2,
        tau,
        alpha,
        TILE_H=TILE_H,
        TILE_W=TILE_W,
        BLOCK_C=BLOCK_C,
    )
    return out


def fused_pixel_operator(lab: torch.Tensor, tau: float, r: int, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map ``z [C, H, W] -> z - alpha S z`` of the pixel graph of ``lab [3, H, W]`` (degrees computed once)."""
    lab = lab.float().contiguous()
    inv_sqrt = inverse_sqrt_degrees(lab, tau, r)
    return lambda z: propagation_product(z, lab, inv_sqrt, tau, r, alpha)


# Devices on which the kernels passed (True) or failed (False) the first-use check, e.g. {"cuda:0": True}.
_verdicts: dict[str, bool] = {}


def _check_against_torch_path(device: torch.device) -> None:
    """Run both kernels on a small problem and compare with the torch path; raises on any difference."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 13, 37, generator=g).to(device)  # 2 x 2 tiles, the last ones partial: every border
    z = torch.rand(19, 13, 37, generator=g).to(device)  # two channel blocks, the second partial
    expected = stencil_operator(image, 0.1, 5, 0.95)(z)
    torch.testing.assert_close(fused_pixel_operator(scaled_lab(image), 0.1, 5, 0.95)(z), expected, rtol=1e-5, atol=1e-6)


def checked_pixel_operator(
    image: torch.Tensor, tau: float, r: int, alpha: float
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The fused map ``z [C, H, W] -> z - alpha S z`` for ``image [3, H, W]``, or None if Triton fails here.

    The first call on a device checks the kernels against the torch path (:func:`_check_against_torch_path`).
    Any failure then, or later in a launch, gives one warning per process and the torch path for good on that
    device (None here; inside the returned map, the torch result). CPU tensors without the interpreter are a
    usage error, not a failure: RuntimeError.
    """
    _check_device(image)
    device = str(image.device)
    if _verdicts.get(device) is False:
        return None
    try:
        if device not in _verdicts:
            _check_against_torch_path(image.device)
            _verdicts[device] = True
        fused = fused_pixel_operator(scaled_lab(image), tau, r, alpha)
    except Exception as error:  # compiler, launch or mismatch: any of them means "do not use Triton here"
        _verdicts[device] = False
        warn_triton_fallback(device, error)
        return None
    fallback: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def matvec(z: torch.Tensor) -> torch.Tensor:
        if not fallback:
            try:
                return fused(z)
            except Exception as error:  # e.g. a launch that fails only at this size
                _verdicts[device] = False
                warn_triton_fallback(device, error)
                fallback.append(stencil_operator(image, tau, r, alpha))
        return fallback[0](z)

    return matvec
