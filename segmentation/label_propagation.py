"""Label propagation over patches (LPOSS) and over pixels (LPOSS+): docs/method.md, "Label propagation".

Everything here is a pure tensor function: inputs on any device, float32 maths on that device, no
NumPy/SciPy round trips. Both levels solve ``(I - alpha S) Z = Y`` column by column with the batched
conjugate-gradient solver :func:`conjugate_gradient`; they differ only in the graph ``S``:

* patches: a symmetric kNN graph on DINO features, weighted by feature similarity and patch distance,
  held as a sparse CSR matrix (:func:`patch_affinity`; on the CPU the top-k selection and the CSR assembly
  run in compiled loops when available, see :mod:`segmentation.cpu_kernels`), or on a GPU as a dense matrix;
* pixels: a fixed ``r x r`` stencil on Lab colour, held as a dense ``[r*r - 1, H, W]`` weight tensor
  and applied with shifted multiply-adds (:func:`pixel_affinity`, :func:`apply_stencil`; a compiled
  CPU loop when available), never as a sparse matrix. On CUDA, fused Triton kernels recompute the weights
  instead (:mod:`segmentation.triton_kernels`, checked against this path on first use).

On a GPU the CG loop never reads a value back to the host (see ``early_exit`` of :func:`conjugate_gradient`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from .cpu_kernels import cpu_kernels

__all__ = [
    "apply_stencil",
    "conjugate_gradient",
    "knn_search",
    "patch_affinity",
    "pixel_affinity",
    "propagate_patches",
    "propagate_pixels",
    "rgb_to_lab",
    "stencil_offsets",
]

# CIE XYZ of linear sRGB and the D65 white point, as kornia.color.rgb_to_lab uses them.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
# Pixel-level CG runs on chunks of columns of about this size on the CPU (fits a typical L3 cache).
_CPU_CHUNK_BYTES = 32 * 2**20
# Block side of the patch similarity matrix on the CPU (see _similarities).
_SIMILARITY_BLOCK = 512
# The dense patch graph is used on a GPU up to this many nodes (1 GB of float32). At N = 2940 and C = 171 a
# dense CG step is 3 GFLOP, microseconds on a GPU, and dense matmuls stay efficient up to here; a CSR product
# reads 2 index arrays per entry and runs far below peak. Estimated from sizes, not measured yet.
_DENSE_MAX_NODES = 16384
# Lab is divided by these (docs/method.md, "Label propagation") so that L, a and b all span about one unit.
_LAB_SCALE = (100.0, 128.0, 128.0)


# --------------------------------------------------------------------------------------------------
# Argument checks


def _check_open_unit(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_solver_args(alpha: float, tol: float, maxiter: int) -> None:
    _check_open_unit("alpha", alpha)
    _check_positive("tol", tol)
    if int(maxiter) != maxiter or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, got {maxiter}")


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    # A sum is NaN or infinite whenever an entry is, and costs a few times less than isfinite().all(); only
    # a non-finite sum (which finite entries can also give, by overflow) needs the exact check.
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")


# --------------------------------------------------------------------------------------------------
# Solver


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    tol: float = 1e-6,
    maxiter: int = 10,
    early_exit: bool | None = None,
) -> torch.Tensor:
    """Solve ``A x = b`` for every column of ``b`` with its own conjugate-gradient iteration.

    Columns are independent systems that share the symmetric positive-definite operator ``A``. Each one
    runs plain CG (``x0 = 0``, its own step sizes) and stops once ``||r|| <= tol * ||b||``; a stopped
    column stays put while the others go on. This is SciPy's ``cg`` run once per column, batched (not
    block-CG).

    Args:
        matvec: ``X [C, *] -> A X [C, *]``, applying ``A`` to every column at once.
        b: right-hand sides ``[C, *]``: dimension 0 indexes the columns, the rest is one vector.
        tol: relative residual at which a column stops.
        maxiter: maximum number of iterations (matvecs) per column.
        early_exit: leave the loop once every column has stopped. It reads a flag back from the device at
            every step, a host synchronisation that stalls a GPU; without it all ``maxiter`` steps run and
            stopped columns take steps of 0, which gives the same ``x``. None: early exit on the CPU only.

    Returns:
        ``x [C, *]``, same dtype, device and memory layout (strides) as ``b``.
    """
    columns = b.shape[0]
    flat = (columns, -1)  # [C, M]: the norms and dot products run over M

    def dots(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # [C], without a [C, M] temporary
        return torch.linalg.vecdot(u.reshape(flat), v.reshape(flat))

    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = dots(r, r)  # [C]
    threshold = tol * rr.sqrt()  # ||b|| with x0 = 0
    active = rr.sqrt() > threshold
    view = (columns,) + (1,) * (b.dim() - 1)
    if early_exit is None:
        early_exit = b.device.type == "cpu"
    for _ in range(maxiter):
        if early_exit and not bool(active.any()):
            break
        ap = matvec(p)
        pap = dots(p, ap)
        # A stopped column gets step 0, so its x and r no longer change.
        step = torch.where(active, rr / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x.addcmul_(step.view(view), p)
        r.addcmul_(step.view(view), ap, value=-1)
        rr_next = dots(r, r)
        active = active & (rr_next.sqrt() > threshold)
        beta = rr_next / torch.where(rr > 0, rr, torch.ones_like(rr))
        torch.addcmul(r, beta.view(view), p, out=p)  # p = r + beta p in one pass over memory (two with mul_, add_)
        rr = rr_next
    return x


# --------------------------------------------------------------------------------------------------
# Patch level (LPOSS)


def _cpu_kernels_for(*tensors: torch.Tensor) -> ModuleType | None:
    """The compiled CPU kernels if every tensor is a float32 CPU tensor and they are available, else None."""
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return cpu_kernels()
    return None


def _similarities(features: torch.Tensor) -> torch.Tensor:
    """``features @ features.T`` ``[N, N]``; on the CPU from the blocks on and above the diagonal, mirrored.

    The matrix is symmetric, so the CPU computes each off-diagonal block of ``_SIMILARITY_BLOCK`` rows once:
    half the FLOPs, and blocks of this size also run faster through MKL than one large product (about 2x in
    all, the same values bit for bit).
    """
    n, block = features.shape[0], _SIMILARITY_BLOCK
    if features.device.type != "cpu" or n <= block:
        return features @ features.T
    out = features.new_empty(n, n)
    for i in range(0, n, block):
        for j in range(i, n, block):
            torch.mm(features[i : i + block], features[j : j + block].T, out=out[i : i + block, j : j + block])
            if j > i:
                out[j : j + block, i : i + block] = out[i : i + block, j : j + block].T
    return out


def knn_search(
    features: torch.Tensor, k: int, *, backend: str = "torch", chunk_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours by inner product, each node included (usually its own first neighbour).

    Args:
        features: ``[N, D]`` float32, L2-normalised rows.
        k: neighbours per node, ``1 <= k <= N``.
        backend: ``"torch"`` (exact, any device; on the CPU a compiled radix select when available) or
            ``"faiss"`` (exact ``IndexFlatIP``, optional dependency).
        chunk_size: with the torch backend, up to this many nodes the whole ``[N, N]`` similarity matrix is
            formed; above it, blocks of this many rows (memory ``chunk_size * N`` floats).

    Returns:
        ``(similarities [N, k] float32, indices [N, k] int64)``: each row's k largest, indices ascending
        within a row (the order CSR wants).
    """
    if backend == "faiss":
        sims, idx = _knn_search_faiss(features, k)
        idx, order = idx.sort(dim=1)
        return sims.gather(1, order), idx
    if backend != "torch":
        raise ValueError(f"knn_backend must be 'torch' or 'faiss', got {backend!r}")
    n = features.shape[0]
    kernels = _cpu_kernels_for(features)
    if n <= chunk_size:
        blocks = [_similarities(features)]  # [N, N]
    else:
        blocks = (features[start : start + chunk_size] @ features.T for start in range(0, n, chunk_size))
    sims, idx = [], []
    for block in blocks:  # [rows, N]
        if kernels is not None:
            s, i = kernels.topk_sorted_columns(block, k)
        else:
            s, i = block.topk(k, dim=1, sorted=False)
            i, order = i.sort(dim=1)
            s = s.gather(1, order)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def _knn_search_faiss(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "knn_backend='faiss' needs the faiss package: pip install faiss-cpu (or conda install faiss-gpu); "
            "knn_backend='torch' gives the same exact result without it"
        ) from error
    data = features.detach().float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    sims, idx = index.search(data, k)
    return torch.from_numpy(sims).to(features.device), torch.from_numpy(idx).long().to(features.device)


def _csr(row_starts: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags sparse CSR as beta on every construction
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return torch.sparse_csr_tensor(row_starts, cols, values, (n, n))


def _row_starts(row_counts: torch.Tensor) -> torch.Tensor:
    row_starts = row_counts.new_zeros(row_counts.shape[0] + 1)
    row_starts[1:] = row_counts.cumsum(0)
    return row_starts


def _dense_symmetric_normalised(neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 (W + W^T) D^-1/2`` with a zero diagonal, as a dense ``[N, N]`` matrix (same inputs as below)."""
    n = neighbours.shape[0]
    w = weights.new_zeros(n, n).scatter_(1, neighbours, weights)
    w.fill_diagonal_(0.0)  # a node is its own neighbour
    w += w.T.clone()  # equal (i, j) entries of W and W^T add up, as in the sparse sum
    degrees = w.sum(1)
    inv_sqrt = torch.where(degrees > 0, degrees, torch.ones_like(degrees)).rsqrt()  # isolated node: degree 1
    return w.mul_(inv_sqrt[:, None]).mul_(inv_sqrt[None, :])


def _symmetric_normalised(
    neighbours: torch.Tensor, weights: torch.Tensor, *, coo_sum: bool | None = None
) -> torch.Tensor:
    """``D^-1/2 (W + W^T) D^-1/2`` with a zero diagonal, as a CSR matrix ``[N, N]``.

    Args:
        neighbours: ``[N, k]`` column of each entry of ``W``, distinct and ascending within a row.
        weights: ``[N, k]`` its weight.
        coo_sum: add ``W`` and ``W^T`` as COO matrices (CSR + CSR is not implemented on every backend) instead
            of as CSR. None: COO off the CPU. Both give the same matrix.
    """
    n, k = neighbours.shape
    kernels = _cpu_kernels_for(weights) if coo_sum is None else None
    if kernels is not None:
        return _csr(*kernels.symmetric_normalised_csr(neighbours.contiguous(), weights.contiguous()), n)
    rows = torch.arange(n, device=neighbours.device)
    weights = torch.where(neighbours == rows[:, None], 0.0, weights)  # zero diagonal (a node is its own neighbour)
    # W^T z_i = sum_j W_ji z_j, so the degrees of W + W^T are W's row sums plus its column sums.
    degrees = weights.sum(1).index_add_(0, neighbours.reshape(-1), weights.reshape(-1))
    degrees = torch.where(degrees > 0, degrees, torch.ones_like(degrees))  # isolated node: degree 1
    inv_sqrt = degrees.rsqrt()
    values = weights * inv_sqrt[:, None] * inv_sqrt[neighbours]  # [N, k], symmetric normalisation
    w = _csr(_row_starts(torch.full((n,), k, device=rows.device)), neighbours.reshape(-1), values.reshape(-1), n)
    # W^T in CSR: entries ordered by column of W; equal (i, j) entries of W and W^T are summed by the add.
    transposed = (neighbours.reshape(-1) * n + rows.repeat_interleave(k)).argsort()
    w_t = _csr(
        _row_starts(torch.bincount(neighbours.reshape(-1), minlength=n)),
        rows.repeat_interleave(k)[transposed],
        values.reshape(-1)[transposed],
        n,
    )
    if not (w.device.type != "cpu" if coo_sum is None else coo_sum):
        return w + w_t
    return (w.to_sparse_coo() + w_t.to_sparse_coo()).coalesce().to_sparse_csr()


def patch_affinity(
    features: torch.Tensor,
    locations: torch.Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    pix_dist_pow: float = 1.0,
    knn_backend: str = "torch",
    dense: bool = False,
) -> torch.Tensor:
    """Normalised patch graph ``S = D^-1/2 W D^-1/2`` of LPOSS (docs/method.md, "Label propagation").

    ``W`` holds, for every patch, its ``k`` nearest neighbours by feature inner product ``s`` with weight
    ``max(s, 0) ** gamma * exp(-sigma * dist ** pix_dist_pow)``; then ``W <- W + W^T`` and the diagonal is
    zeroed.

    Args:
        features: ``[N, D]`` float32, L2-normalised.
        locations: ``[N, 2]`` patch centres in pixels (``y, x``).
        k: neighbours per node; ``k >= N`` means all nodes.
        dense: return a dense matrix instead of a sparse one (same values).

    Returns:
        ``[N, N]`` float32, symmetric, zero diagonal: sparse CSR, or dense with ``dense=True``.
    """
    n = features.shape[0]
    # Reference quirk: a node counts among its own k neighbours and is then dropped with the diagonal,
    # so every node keeps k - 1 others.
    sims, idx = knn_search(features, min(k, n), backend=knn_backend)
    ys, xs = locations.unbind(1)
    dist = torch.hypot(ys[:, None] - ys[idx], xs[:, None] - xs[idx])  # [N, k] pixels
    weights = sims.clamp(min=0) ** gamma * torch.exp(-sigma * dist**pix_dist_pow)
    return _dense_symmetric_normalised(idx, weights) if dense else _symmetric_normalised(idx, weights)


def propagate_patches(
    scores: torch.Tensor,
    features: torch.Tensor,
    locations: torch.Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    pix_dist_pow: float = 1.0,
    alpha: float = 0.95,
    tol: float = 1e-6,
    maxiter: int = 10,
    knn_backend: str = "torch",
    graph: str = "auto",
) -> torch.Tensor:
    """LPOSS: propagate patch scores over the kNN graph of all patches of an image (pipeline step 8).

    Args:
        scores: ``Y [N, C]`` initial scores (raw cosine similarities, one column per alias).
        features: ``[N, D]`` DINO features, L2-normalised.
        locations: ``[N, 2]`` patch centres in resized-image pixels.
        k, gamma, sigma, pix_dist_pow: graph construction, see :func:`patch_affinity`.
        alpha: propagation strength in ``(0, 1)``.
        tol, maxiter: CG stopping rule per column.
        knn_backend: ``"torch"`` or ``"faiss"``.
        graph: ``"sparse"`` (CSR), ``"dense"`` (``[N, N]``, 4 N^2 bytes) or ``"auto"``: dense on a GPU up to
            ``N = 16384`` (1 GB), where a dense product beats a sparse one, sparse otherwise.

    Returns:
        ``Z [N, C]`` float32 solving ``(I - alpha S) Z = Y`` approximately (``maxiter`` CG steps).
    """
    if scores.dim() != 2 or features.dim() != 2 or locations.shape != (scores.shape[0], 2):
        raise ValueError(
            f"scores must be [N, C], features [N, D] and locations [N, 2] with the same N; got scores "
            f"{tuple(scores.shape)}, features {tuple(features.shape)}, locations {tuple(locations.shape)}"
        )
    if features.shape[0] != scores.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but scores has {scores.shape[0]}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    _check_positive("pix_dist_pow", pix_dist_pow)
    _check_solver_args(alpha, tol, maxiter)
    if graph not in ("auto", "dense", "sparse"):
        raise ValueError(f"graph must be 'auto', 'dense' or 'sparse', got {graph!r}")
    _check_finite("scores", scores)
    _check_finite("features", features)
    scores, features, locations = scores.float(), features.float(), locations.float()
    if graph == "auto":
        graph = "dense" if features.device.type == "cuda" and scores.shape[0] <= _DENSE_MAX_NODES else "sparse"
    s = patch_affinity(
        features,
        locations,
        k=k,
        gamma=gamma,
        sigma=sigma,
        pix_dist_pow=pix_dist_pow,
        knn_backend=knn_backend,
        dense=graph == "dense",
    )

    # CG keeps the strides of b, so passing the transposed view keeps every CG vector in [N, C] memory: the
    # sparse product then reads and writes contiguous rows of C values.
    def matvec(z: torch.Tensor) -> torch.Tensor:  # z [C, N], a view of [N, C] memory; s sparse or dense
        return (s @ z.T).T.mul_(-alpha).add_(z)

    return conjugate_gradient(matvec, scores.T, tol=tol, maxiter=maxiter).T


# --------------------------------------------------------------------------------------------------
# Pixel level (LPOSS+)


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


def _scaled_lab(image: torch.Tensor) -> torch.Tensor:
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
    lab = _scaled_lab(image)
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

    On the CPU (float32) the compiled kernel of :mod:`segmentation.cpu_kernels` is used when it is
    available and ``compiled`` is True; otherwise ``r*r - 1`` shifted multiply-adds.
    """
    kernels = _cpu_kernels_for(z, affinity) if compiled else None
    if kernels is not None:
        return kernels.apply_stencil(affinity.contiguous(), z.contiguous(), r)
    _, height, width = z.shape
    half = r // 2
    padded = F.pad(z, (half, half, half, half))
    out = torch.zeros_like(z)
    for o, (dy, dx) in enumerate(stencil_offsets(r)):
        out.addcmul_(affinity[o], _shifted(padded, half, dy, dx, height, width))
    return out


def _stencil_operator(image: torch.Tensor, tau: float, r: int, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z [C, H, W] -> z - alpha S z`` with ``S`` held as weight planes (the torch / compiled CPU path)."""
    s = pixel_affinity(image, tau=tau, r=r)
    return lambda z: apply_stencil(s, z, r).mul_(-alpha).add_(z)


_warned_triton_fallback = False


def _warn_triton_fallback(device: torch.device | str, error: BaseException) -> None:
    """One warning per process: the Triton kernels failed on ``device``, the torch path is used instead."""
    global _warned_triton_fallback
    if not _warned_triton_fallback:
        _warned_triton_fallback = True
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"Triton pixel kernels unusable on {device} ({reason}); using the torch path (same result, slower)",
            RuntimeWarning,
            stacklevel=3,
        )


def _pixel_operator(image: torch.Tensor, tau: float, r: int, alpha: float, backend: str) -> Callable:
    """``z [C, H, W] -> z - alpha S z`` for the pixel graph of ``image``, by the backend of :func:`propagate_pixels`."""
    if backend == "triton" or (backend == "auto" and image.device.type == "cuda"):
        try:
            from .triton_kernels import checked_pixel_operator
        except ImportError as error:  # torch builds without Triton (CPU-only, Windows)
            if backend == "triton":
                raise ImportError(
                    "pixel backend 'triton' needs the triton package (torch's CUDA wheels bring it)"
                ) from error
            _warn_triton_fallback(image.device, error)
        else:
            operator = checked_pixel_operator(image, tau, r, alpha)
            if operator is not None:
                return operator
    return _stencil_operator(image, tau, r, alpha)


def propagate_pixels(
    scores: torch.Tensor,
    image: torch.Tensor,
    *,
    tau: float = 0.01,
    r: int = 13,
    alpha: float = 0.95,
    tol: float = 1e-6,
    maxiter: int = 10,
    backend: str = "auto",
    column_chunk: int | None = None,
) -> torch.Tensor:
    """LPOSS+: propagate pixel scores over the colour graph of the image (pipeline step 10).

    Memory is ``O(H W (C + r^2))`` with the torch backend (``r*r - 1`` weight planes, applied by shifted
    multiply-adds) and ``O(H W C)`` with Triton (weights recomputed inside one fused kernel).

    Args:
        scores: ``Y [C, H, W]`` pixel scores (the window-averaged patch-level result).
        image: ``[3, H, W]`` RGB in ``[0, 1]``, same ``H, W``.
        tau: colour bandwidth, > 0.
        r: odd stencil side, >= 3.
        alpha, tol, maxiter: as in :func:`propagate_patches`.
        backend: ``"torch"`` (weight planes; on the CPU the compiled loop of :mod:`segmentation.cpu_kernels`
            when available), ``"triton"`` (the fused kernels of :mod:`segmentation.triton_kernels`; CPU tensors
            need ``TRITON_INTERPRET=1``) or ``"auto"`` (Triton on CUDA, torch elsewhere). The first Triton use
            on a device checks the kernels against the torch path; on any failure the torch path is used, with
            one warning per process.
        column_chunk: CG runs on this many columns at a time (independent CGs: the result is the same).
            None: all on a GPU; on the CPU as many as fit the cache (2-3x faster per column).

    Returns:
        ``Z [C, H, W]`` float32.
    """
    if scores.dim() != 3 or image.dim() != 3 or image.shape[0] != 3 or scores.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"scores must be [C, H, W] and image [3, H, W] with the same H, W; got scores "
            f"{tuple(scores.shape)}, image {tuple(image.shape)}"
        )
    _check_positive("tau", tau)
    if int(r) != r or r < 3 or r % 2 == 0:
        raise ValueError(f"r must be an odd integer >= 3, got {r}")
    _check_solver_args(alpha, tol, maxiter)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    _check_finite("scores", scores)
    _check_finite("image", image)
    matvec = _pixel_operator(image, tau, r, alpha, backend)
    scores = scores.float()
    if column_chunk is None:
        column_chunk = scores.shape[0] if scores.is_cuda else max(1, _CPU_CHUNK_BYTES // (4 * scores[0].numel()))
    parts = scores.split(column_chunk)
    return torch.cat([conjugate_gradient(matvec, part, tol=tol, maxiter=maxiter) for part in parts])
