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

A third kernel fuses the conjugate-gradient vector updates (``x += a p``, ``r -= a Ap`` and ``r . r``), and the
product's epilogue emits ``p . Ap``: with them a CG step makes 11 full passes over ``[C, H, W]`` memory instead
of 19 (docs/gpu.md). Every launch runs under the tensor's CUDA device (:func:`on_device`).

Used by :func:`segmentation.label_propagation.propagate_pixels` with ``backend="triton"`` (or ``"auto"`` on CUDA),
which checks the kernels against the torch path on the first use on a device. ``"auto"`` falls back to the torch
path on any failure, with one warning; an explicit ``"triton"`` raises instead.
CPU tensors run through Triton's interpreter, which must be switched on with ``TRITON_INTERPRET=1`` *before*
``triton`` is first imported (Triton picks compiled or interpreted kernels when it decorates them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from ..linear_operator import InPlaceOperator
from ..pixel_graph import scaled_lab, stencil_operator
from . import TritonBackendError, fallback_reason, record_triton_failure, warn_triton_fallback

__all__ = [
    "cg_update",
    "checked_pixel_operator",
    "fused_pixel_operator",
    "interpreted",
    "inverse_sqrt_degrees",
    "on_device",
    "propagation_product",
    "propagation_product_into",
]

# A program covers TILE_H x TILE_W pixels and BLOCK_C channels (powers of two, as tl.arange needs): 256 pixels x
# 16 channels of float32 accumulators is 32 registers per thread at Triton's default 4 warps (ptxas for sm_90:
# 217 registers per thread in all, no spills). Not tuned on a GPU yet. One fixed channel block (masked beyond C)
# and no specialisation on the sizes keep it to one compiled variant, the one the first-use check runs.
TILE_H, TILE_W, BLOCK_C = 8, 32, 16
UPDATE_BLOCK = 1024  # elements of one column per program of the CG update kernel
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
    dots_ptr,
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
    """``out = z - alpha * S z`` on one tile of pixels x one block of channels, ``S = D^-1/2 W D^-1/2``.

    Epilogue: ``dots[c, tile] = sum over the tile of z * out`` for each channel of the block, the CG's ``p . A p``
    in per-tile partial sums (no second pass over ``z`` and ``out``). The host sums them over the tiles in a
    fixed order; atomics would make the sum's rounding depend on the order the programs finish in.
    """
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
    result = z_p - alpha * (acc * inv_sqrt_p[None, :])
    tl.store(out_ptr + rows + p[None, :], result, mask=io_mask)
    # z_p is 0 outside the image and beyond C (masked loads): those entries add nothing to the sums.
    tl.store(dots_ptr + cs * tl.num_programs(0) + tl.program_id(0), tl.sum(z_p * result, axis=1), mask=channel_ok)


@triton.jit(do_not_specialize=["size"])
def _cg_update_kernel(x_ptr, r_ptr, p_ptr, ap_ptr, step_ptr, rr_ptr, size, BLOCK: tl.constexpr):
    """One CG step's ``x += step_c p``, ``r -= step_c ap`` on one block of one column ``c``, in one pass.

    Writes the block's partial ``sum r^2`` (after the update) to ``rr[c, block]``, summed on the host in a fixed
    order (no atomics, so the result does not depend on the programs' finishing order).
    """
    block = tl.program_id(0)
    column = tl.program_id(1)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < size
    base = column.to(tl.int64) * size  # int64: C * H * W may pass 2^31
    step = tl.load(step_ptr + column)
    x = tl.load(x_ptr + base + offsets, mask=valid, other=0.0)
    r = tl.load(r_ptr + base + offsets, mask=valid, other=0.0)
    p = tl.load(p_ptr + base + offsets, mask=valid, other=0.0)
    ap = tl.load(ap_ptr + base + offsets, mask=valid, other=0.0)
    r = r - step * ap  # 0 beyond the column's end (masked loads): adds nothing to the sum below
    tl.store(x_ptr + base + offsets, x + step * p, mask=valid)
    tl.store(r_ptr + base + offsets, r, mask=valid)
    tl.store(rr_ptr + column * tl.num_programs(0) + block, tl.sum(r * r, axis=0))


def interpreted() -> bool:
    """True if Triton runs these kernels through its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return not isinstance(_propagation_product_kernel, triton.runtime.jit.JITFunction)


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type == "cpu" and not interpreted():
        raise RuntimeError(
            "the Triton pixel kernels need a GPU tensor, or TRITON_INTERPRET=1 set before triton is first "
            "imported to run them on the CPU; use backend='torch' or 'auto' on the CPU"
        )


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context every kernel launch runs in: the CUDA device of ``tensor`` made current.

    Triton launches on the *current* CUDA device and its current stream, not on its arguments' device:
    ``JITFunction.run`` (triton/runtime/jit.py, Triton 3.8) takes ``driver.active.get_current_device()`` and
    ``get_current_stream(device)``, which with torch loaded are ``torch.cuda.current_device`` and
    ``torch._C._cuda_getCurrentRawStream`` (``GPUDriver.__init__``, triton/backends/driver.py). A tensor on
    ``cuda:1`` launched from a thread whose current device is 0 would fail the launcher's pointer check or run
    on device 0's stream. ``torch.cuda.device`` switches the current device (``_exchange_device``) and back, so
    the launch goes to the tensor's device, on that device's current stream, the one torch's own kernels on
    the tensor use. CPU tensors (the interpreter) need no guard.
    """
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


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
    with on_device(lab):
        _inverse_sqrt_degree_kernel[(_grid_tiles(height, width),)](
            lab, out, height, width, r // 2, tau, TILE_H=TILE_H, TILE_W=TILE_W
        )
    return out


def propagation_product_into(
    z: torch.Tensor, out: torch.Tensor, lab: torch.Tensor, inv_sqrt: torch.Tensor, tau: float, r: int, alpha: float
) -> torch.Tensor:
    """Write ``z - alpha * S z`` into ``out`` in one pass over ``z``; return ``z . out`` per channel.

    Args:
        z, out: ``[C, H, W]`` float32, contiguous, on one device.
        lab: ``[3, H, W]`` float32 scaled Lab, contiguous; inv_sqrt: ``[H, W]`` from :func:`inverse_sqrt_degrees`.
        tau, r: the graph's colour bandwidth and stencil side; alpha: propagation strength.

    Returns:
        ``[C]`` float32: ``sum_p z[c, p] * out[c, p]``, from the kernel's per-tile partial sums.
    """
    _check_device(z)
    if not (z.is_contiguous() and out.is_contiguous()):
        raise ValueError("propagation_product_into: z and out must be contiguous")
    channels, height, width = z.shape
    tiles = _grid_tiles(height, width)
    partial = torch.empty(channels, tiles, dtype=torch.float32, device=z.device)
    with on_device(z):
        _propagation_product_kernel[(tiles, triton.cdiv(channels, BLOCK_C))](
            z,
            lab,
            inv_sqrt,
            out,
            partial,
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
    return partial.sum(1)  # over the tiles, in the same order every time


def propagation_product(
    z: torch.Tensor, lab: torch.Tensor, inv_sqrt: torch.Tensor, tau: float, r: int, alpha: float
) -> torch.Tensor:
    """``z - alpha * S z`` for the pixel graph of ``lab`` (``[C, H, W]`` float32, contiguous), in a new tensor."""
    z = z.contiguous()
    out = torch.empty_like(z)
    propagation_product_into(z, out, lab, inv_sqrt, tau, r, alpha)
    return out


def cg_update(x: torch.Tensor, r: torch.Tensor, p: torch.Tensor, ap: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``x += step_c p``, ``r -= step_c ap`` in one pass (6 vector passes instead of 8); returns ``r . r`` ``[C]``.

    Args:
        x, r, p, ap: ``[C, *]`` float32, contiguous, one device; ``x`` and ``r`` are updated in place.
        step: ``[C]`` float32 step sizes.
    """
    _check_device(x)
    if not all(t.is_contiguous() for t in (x, r, p, ap)):
        raise ValueError("cg_update: x, r, p and ap must be contiguous")
    columns, size = x.shape[0], x[0].numel()
    blocks = triton.cdiv(size, UPDATE_BLOCK)
    partial = torch.empty(columns, blocks, dtype=torch.float32, device=x.device)
    with on_device(x):
        _cg_update_kernel[(blocks, columns)](x, r, p, ap, step.float().contiguous(), partial, size, BLOCK=UPDATE_BLOCK)
    return partial.sum(1)  # fixed order, as in propagation_product_into


def fused_pixel_operator(lab: torch.Tensor, tau: float, r: int, alpha: float) -> InPlaceOperator:
    """The operator ``z [C, H, W] -> z - alpha S z`` of the pixel graph of ``lab [3, H, W]`` (degrees computed once).

    It writes into the CG's buffer and returns ``z . A z`` from the product's epilogue; its ``update`` is the
    fused CG step (:func:`cg_update`). Called like a function it returns a new tensor.
    """
    lab = lab.float().contiguous()
    inv_sqrt = inverse_sqrt_degrees(lab, tau, r)

    def apply(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        if z.is_contiguous() and out.is_contiguous():
            return propagation_product_into(z, out, lab, inv_sqrt, tau, r, alpha)
        out.copy_(propagation_product(z, lab, inv_sqrt, tau, r, alpha))
        return None

    def update(x, r_, p, ap, step):  # noqa: ANN001, ANN202 (the InPlaceOperator.update contract)
        if all(t.is_contiguous() for t in (x, r_, p, ap)):
            return cg_update(x, r_, p, ap, step)
        return None

    return InPlaceOperator(apply, update)


# Devices on which the kernels passed (True) or failed (False) the first-use check, e.g. {"cuda:0": True}.
_verdicts: dict[str, bool] = {}


def _check_against_torch_path(device: torch.device) -> None:
    """Run every kernel on a small problem and compare with torch; raises on any difference.

    The tolerances sit well above the kernels' rounding (see tests/test_triton_kernels.py for the derivation),
    and far below any indexing or masking mistake, which changes results at the 1e-2 level.
    """
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 13, 37, generator=g).to(device)  # 2 x 2 tiles, the last ones partial: every border
    z = torch.rand(19, 13, 37, generator=g).to(device)  # two channel blocks, the second partial
    expected = stencil_operator(image, 0.1, 5, 0.95)(z)
    operator = fused_pixel_operator(scaled_lab(image), 0.1, 5, 0.95)
    out = torch.empty_like(z)
    dots = operator.apply(z, out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    scale = (z * expected).abs().sum((1, 2))
    torch.testing.assert_close(dots, (z * expected).sum((1, 2)), rtol=0, atol=float(scale.max()) * 1e-5)
    x, r, step = z.clone(), expected.clone(), torch.rand(19, generator=g).to(device)
    rr = operator.update(x, r, z, expected, step)
    torch.testing.assert_close(x, z + step[:, None, None] * z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r, expected - step[:, None, None] * expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rr, r.square().sum((1, 2)), rtol=1e-5, atol=0)


def _give_up(device: str, error: BaseException, strict: bool) -> None:
    """Record that the kernels failed on ``device``; raise for an explicit ``backend="triton"``, else warn once."""
    _verdicts[device] = False
    if strict:
        record_triton_failure(device, error)
        raise TritonBackendError(device, error) from error
    warn_triton_fallback(device, error)


def checked_pixel_operator(
    image: torch.Tensor, tau: float, r: int, alpha: float, *, strict: bool = False
) -> InPlaceOperator | None:
    """The fused operator ``z [C, H, W] -> z - alpha S z`` for ``image [3, H, W]``, or None if Triton fails here.

    The first call on a device checks the kernels against torch (:func:`_check_against_torch_path`). With
    ``strict`` (an explicit ``backend="triton"``) any failure, then or in a later launch, raises
    :class:`~segmentation.kernels.TritonBackendError` naming it. Without (``"auto"``) it gives one warning per
    process and the torch path for good on that device (None here; inside the returned operator, the torch
    result). Launch errors are caught; an asynchronous device fault (an illegal address found after the launch
    returned) is not: it poisons the CUDA context and surfaces at the next synchronisation. CPU tensors
    without the interpreter are a usage error: RuntimeError.
    """
    _check_device(image)
    device = str(image.device)
    if _verdicts.get(device) is False:
        if strict:
            raise TritonBackendError(device, fallback_reason(device) or "an earlier failure on this device")
        return None
    try:
        if device not in _verdicts:
            _check_against_torch_path(image.device)
            _verdicts[device] = True
        fused = fused_pixel_operator(scaled_lab(image), tau, r, alpha)
    except Exception as error:  # compiler, launch or mismatch: any of them means "do not use Triton here"
        _give_up(device, error, strict)
        return None
    torch_path: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def fall_back(error: Exception) -> None:
        _give_up(device, error, strict)
        torch_path.append(stencil_operator(image, tau, r, alpha))

    def apply(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        if not torch_path:
            try:
                return fused.apply(z, out)
            except Exception as error:  # e.g. a launch that fails only at this size
                fall_back(error)
        out.copy_(torch_path[0](z))
        return None

    def update(x, r_, p, ap, step):  # noqa: ANN001, ANN202 (the InPlaceOperator.update contract)
        if not torch_path:
            try:
                return fused.update(x, r_, p, ap, step)
            except Exception as error:  # a launch failure writes nothing: the solver's own update is exact
                fall_back(error)
        return None

    return InPlaceOperator(apply, update)
