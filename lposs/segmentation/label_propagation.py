"""Label propagation over patches (LPOSS) and over pixels (LPOSS+): docs/method.md, "Label propagation".

Everything here is a pure tensor function: inputs on any device, float32 maths on that device, no
NumPy/SciPy round trips. Both levels solve ``(I - alpha S) Z = Y`` column by column with the batched
conjugate-gradient solver :func:`conjugate_gradient`; they differ only in the graph ``S``:

* patches: a symmetric kNN graph on DINO features, weighted by feature similarity and patch distance,
  held as a sparse CSR matrix, or on a GPU as a dense one (:mod:`segmentation.patch_graph`);
* pixels: a fixed ``r x r`` stencil on Lab colour, held as ``[r*r - 1, H, W]`` weight planes and applied with
  shifted multiply-adds, never as a sparse matrix (:mod:`segmentation.pixel_graph`). On CUDA, fused Triton
  kernels recompute the weights instead (:mod:`segmentation.kernels.triton_pixel`, checked against the planes on
  first use).

On a GPU the CG loop never reads a value back to the host (see ``early_exit`` of :func:`conjugate_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .kernels import warn_triton_fallback
from .linear_operator import InPlaceOperator
from .patch_graph import knn_search, patch_affinity
from .pixel_graph import apply_stencil, pixel_affinity, rgb_to_lab, stencil_offsets, stencil_operator, stencil_product

__all__ = [
    "NonFiniteError",
    "PixelGraph",
    "apply_stencil",
    "build_patch_graph",
    "conjugate_gradient",
    "knn_search",
    "patch_affinity",
    "pixel_affinity",
    "propagate_patches",
    "propagate_pixels",
    "rgb_to_lab",
    "solve_patches",
    "stencil_offsets",
]

# Pixel-level CG runs on chunks of columns of about this size on the CPU (fits a typical L3 cache).
_CPU_CHUNK_BYTES = 32 * 2**20
# Off CUDA, a dot product's [C, width] slice of products stays within this (a typical L2 cache or two).
_DOT_SCRATCH_BYTES = 4 * 2**20
# The dense patch graph is used on a GPU up to this many nodes (1 GB of float32). At N = 2940 and C = 171 a
# dense CG step is 3 GFLOP, microseconds on a GPU, and dense matmuls stay efficient up to here; a CSR product
# reads 2 index arrays per entry and runs far below peak. Estimated from sizes, not measured yet.
_DENSE_MAX_NODES = 16384


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


class NonFiniteError(ValueError):
    """Scores, features or an image handed to the propagation hold NaN or infinite values."""


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    # A sum is NaN or infinite whenever an entry is, and costs a few times less than isfinite().all(); only
    # a non-finite sum (which finite entries can also give, by overflow) needs the exact check.
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise NonFiniteError(f"{name} contains NaN or infinite values")


# --------------------------------------------------------------------------------------------------
# Solver


def _squared_norms(u: torch.Tensor) -> torch.Tensor:
    """``||u_c||^2`` per column of ``u [C, *]`` -> ``[C]``: one read of ``u``, no ``[C, M]`` temporary.

    On CUDA a norm reduction (a tree sum). Not on the CPU: torch's CPU norm kernel accumulates far less
    accurately than a sum (measured 3e-6 relative at [21, 268800] and 7e-5 on the patch level's strided
    ``[N, C]`` columns, against 1e-7 for ``vecdot``), which moved the solve 5x further from the float64
    reference; :func:`_dots` over cache-sized slices is as accurate as one ``vecdot`` there.
    """
    if u.is_cuda:
        return torch.linalg.vector_norm(u.reshape(u.shape[0], -1), dim=1).square()
    return _dots(u, u)


def _dots(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u_c . v_c`` per column of ``u, v [C, *]`` -> ``[C]``, reading each once, without a ``[C, M]`` temporary.

    ``torch.linalg.vecdot`` multiplies into a ``[C, M]`` temporary and then sums it (4 passes over memory). On
    CUDA a batched ``[C, 1, M] x [C, M, 1]`` product reads ``u`` and ``v`` once. On the CPU that product is
    several times slower and less accurate (a sequential float32 sum; measured 7e-6 relative at M = 67,200
    against vecdot's 1e-7), so ``vecdot`` runs on slices of columns whose temporary stays cache-sized
    (``_DOT_SCRATCH_BYTES``): as accurate, and faster than one ``vecdot`` at the pixel level's sizes.
    """
    columns = u.shape[0]
    u, v = u.reshape(columns, -1), v.reshape(columns, -1)
    if u.is_cuda and u.is_contiguous() and v.is_contiguous():
        return torch.bmm(u[:, None], v[:, :, None]).view(columns)
    width = max(1, _DOT_SCRATCH_BYTES // (u.element_size() * columns))
    total = torch.linalg.vecdot(u[:, :width], v[:, :width])
    for start in range(width, u.shape[1], width):
        total += torch.linalg.vecdot(u[:, start : start + width], v[:, start : start + width])
    return total


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor] | InPlaceOperator,
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
        matvec: ``X [C, *] -> A X [C, *]``, applying ``A`` to every column at once; or an
            :class:`~segmentation.linear_operator.InPlaceOperator`, which writes ``A X`` into a buffer the solver
            owns (4 ``[C, *]`` tensors in all: ``x``, ``r``, ``p``, ``A p``) and may return the dot products and
            do the vector updates in fused passes.
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
    in_place = isinstance(matvec, InPlaceOperator)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    ap = torch.empty_like(b) if in_place else None  # the one buffer an in-place operator writes A p into
    rr = _squared_norms(r)  # [C]
    threshold = tol * rr.sqrt()  # ||b|| with x0 = 0
    active = rr.sqrt() > threshold
    view = (columns,) + (1,) * (b.dim() - 1)
    if early_exit is None:
        early_exit = b.device.type == "cpu"
    for _ in range(maxiter):
        if early_exit and not bool(active.any()):
            break
        if in_place:
            pap = matvec.apply(p, ap)  # p . Ap too, when the operator computes it on the way
        else:
            ap, pap = matvec(p), None
        if pap is None:
            pap = _dots(p, ap)
        # A stopped column gets step 0, so its x and r no longer change.
        step = torch.where(active, rr / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        rr_next = matvec.update(x, r, p, ap, step) if in_place and matvec.update is not None else None
        if rr_next is None:
            x.addcmul_(step.view(view), p)
            r.addcmul_(step.view(view), ap, value=-1)
            rr_next = _squared_norms(r)
        active = active & (rr_next.sqrt() > threshold)
        beta = rr_next / torch.where(rr > 0, rr, torch.ones_like(rr))
        torch.addcmul(r, beta.view(view), p, out=p)  # p = r + beta p in one pass over memory (two with mul_, add_)
        rr = rr_next
    return x


# --------------------------------------------------------------------------------------------------
# Patch level (LPOSS)


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

    :func:`build_patch_graph` then :func:`solve_patches`; call those two to reuse one graph across solves.

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
    _check_solver_args(alpha, tol, maxiter)  # before the graph is built
    _check_finite("scores", scores)
    graph_settings = {"k": k, "gamma": gamma, "sigma": sigma, "pix_dist_pow": pix_dist_pow, "knn_backend": knn_backend}
    s = build_patch_graph(features, locations, **graph_settings, graph=graph)
    return solve_patches(scores, s, alpha=alpha, tol=tol, maxiter=maxiter)


def build_patch_graph(
    features: torch.Tensor,
    locations: torch.Tensor,
    *,
    k: int = 400,
    gamma: float = 3.0,
    sigma: float = 0.01,
    pix_dist_pow: float = 1.0,
    knn_backend: str = "torch",
    graph: str = "auto",
) -> torch.Tensor:
    """The patch graph ``S`` of :func:`propagate_patches`, for any number of :func:`solve_patches` calls.

    It depends on the features, locations, ``k``, ``gamma``, ``sigma``, ``pix_dist_pow`` and ``knn_backend`` only:
    ``alpha``, ``tol`` and ``maxiter`` change the solve, not the graph.

    Args:
        features, locations, k, gamma, sigma, pix_dist_pow, knn_backend, graph: as in :func:`propagate_patches`.

    Returns:
        ``S [N, N]`` float32, symmetric, zero diagonal: sparse CSR, or dense (``graph`` ``"dense"``, or
        ``"auto"`` on a GPU up to ``N = 16384``).
    """
    if features.dim() != 2 or locations.shape != (features.shape[0], 2):
        raise ValueError(
            f"features must be [N, D] and locations [N, 2] with the same N; got features "
            f"{tuple(features.shape)}, locations {tuple(locations.shape)}"
        )
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    _check_positive("pix_dist_pow", pix_dist_pow)
    if graph not in ("auto", "dense", "sparse"):
        raise ValueError(f"graph must be 'auto', 'dense' or 'sparse', got {graph!r}")
    _check_finite("features", features)
    features, locations = features.float(), locations.float()
    if graph == "auto":
        graph = "dense" if features.device.type == "cuda" and features.shape[0] <= _DENSE_MAX_NODES else "sparse"
    return patch_affinity(
        features,
        locations,
        k=k,
        gamma=gamma,
        sigma=sigma,
        pix_dist_pow=pix_dist_pow,
        knn_backend=knn_backend,
        dense=graph == "dense",
    )


def solve_patches(
    scores: torch.Tensor, graph: torch.Tensor, *, alpha: float = 0.95, tol: float = 1e-6, maxiter: int = 10
) -> torch.Tensor:
    """Solve ``(I - alpha S) Z = Y`` by CG, one column at a time, on a graph of :func:`build_patch_graph`.

    Args:
        scores: ``Y [N, C]`` initial scores.
        graph: ``S [N, N]`` from :func:`build_patch_graph` (sparse or dense).
        alpha, tol, maxiter: as in :func:`propagate_patches`.

    Returns:
        ``Z [N, C]`` float32.
    """
    if scores.dim() != 2 or scores.shape[0] != graph.shape[0]:
        raise ValueError(
            f"scores must be [N, C] with N = {graph.shape[0]} (the graph's nodes), got {tuple(scores.shape)}"
        )
    _check_solver_args(alpha, tol, maxiter)
    _check_finite("scores", scores)
    scores, s = scores.float(), graph

    # CG keeps the strides of b, so passing the transposed view keeps every CG vector in [N, C] memory: the
    # sparse product then reads and writes contiguous rows of C values.
    def matvec(z: torch.Tensor) -> torch.Tensor:  # z [C, N], a view of [N, C] memory; s sparse or dense
        return (s @ z.T).T.mul_(-alpha).add_(z)

    return conjugate_gradient(matvec, scores.T, tol=tol, maxiter=maxiter).T


# --------------------------------------------------------------------------------------------------
# Pixel level (LPOSS+)


def _pixel_operator(image: torch.Tensor, tau: float, r: int, alpha: float, backend: str) -> Callable:
    """``z [C, H, W] -> z - alpha S z`` for the pixel graph of ``image``, by the backend of :func:`propagate_pixels`.

    An explicit ``"triton"`` raises :class:`~segmentation.kernels.TritonBackendError` when the kernels fail (so
    that nothing labelled Triton ever runs the torch path); ``"auto"`` falls back to torch with one warning.
    """
    if backend == "triton" or (backend == "auto" and image.device.type == "cuda"):
        try:
            from .kernels.triton_pixel import checked_pixel_operator
        except ImportError as error:  # torch builds without Triton (CPU-only, Windows)
            if backend == "triton":
                raise ImportError(
                    "pixel backend 'triton' needs the triton package (torch's CUDA wheels bring it)"
                ) from error
            warn_triton_fallback(image.device, error)
        else:
            operator = checked_pixel_operator(image, tau, r, alpha, strict=backend == "triton")
            if operator is not None:
                return operator
    return stencil_operator(image, tau, r, alpha)


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
        backend: ``"torch"`` (weight planes; on the CPU the compiled loop of :mod:`segmentation.kernels.cpu`
            when available), ``"triton"`` (the fused kernels of :mod:`segmentation.kernels.triton_pixel`; CPU tensors
            need ``TRITON_INTERPRET=1``) or ``"auto"`` (Triton on CUDA, torch elsewhere). The first Triton use
            on a device checks the kernels against the torch path. On any failure ``"auto"`` uses the torch
            path, with one warning per process; ``"triton"`` raises ``TritonBackendError`` naming the failure.
        column_chunk: CG runs on this many columns at a time (independent CGs: the result is the same).
            None: all on a GPU; on the CPU as many as fit the cache (2-3x faster per column).

    Returns:
        ``Z [C, H, W]`` float32.
    """
    _check_pixel_shapes(scores, image)
    _check_solver_args(alpha, tol, maxiter)  # before the graph is built
    graph = PixelGraph(image, tau=tau, r=r, backend=backend)
    return graph.propagate(scores, alpha=alpha, tol=tol, maxiter=maxiter, column_chunk=column_chunk)


def _check_pixel_shapes(scores: torch.Tensor, image: torch.Tensor) -> None:
    if scores.dim() != 3 or image.dim() != 3 or image.shape[0] != 3 or scores.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"scores must be [C, H, W] and image [3, H, W] with the same H, W; got scores "
            f"{tuple(scores.shape)}, image {tuple(image.shape)}"
        )


class PixelGraph:
    """The pixel graph of one image (LPOSS+), built once and solved with any ``alpha``, ``tol`` and ``maxiter``.

    The graph depends on the image, ``tau`` and ``r`` only. On the torch path its ``r*r - 1`` weight planes are
    computed at the first solve and kept for every later one; the fused Triton kernels recompute the weights
    inside each product and keep only the degrees, one pass per ``alpha``.

    Args:
        image: ``[3, H, W]`` RGB in ``[0, 1]``.
        tau, r, backend: as in :func:`propagate_pixels`.
    """

    def __init__(self, image: torch.Tensor, *, tau: float = 0.01, r: int = 13, backend: str = "auto") -> None:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
        _check_positive("tau", tau)
        if int(r) != r or r < 3 or r % 2 == 0:
            raise ValueError(f"r must be an odd integer >= 3, got {r}")
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
        _check_finite("image", image)
        self.image, self.tau, self.r, self.backend = image, tau, r, backend
        self._planes: torch.Tensor | None = None  # [r*r - 1, H, W] on the torch path, once computed
        self._operators: dict[float, Callable[[torch.Tensor], torch.Tensor]] = {}

    def operator(self, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """``z [C, H, W] -> z - alpha S z``, by the backend :func:`propagate_pixels` names."""
        if alpha not in self._operators:
            # The complement of the Triton condition of _pixel_operator: the torch path, planes kept.
            if self.backend == "torch" or (self.backend == "auto" and self.image.device.type != "cuda"):
                if self._planes is None:
                    self._planes = pixel_affinity(self.image, tau=self.tau, r=self.r)
                self._operators[alpha] = stencil_product(self._planes, self.r, alpha)
            else:
                self._operators[alpha] = _pixel_operator(self.image, self.tau, self.r, alpha, self.backend)
        return self._operators[alpha]

    def propagate(
        self,
        scores: torch.Tensor,
        *,
        alpha: float = 0.95,
        tol: float = 1e-6,
        maxiter: int = 10,
        column_chunk: int | None = None,
    ) -> torch.Tensor:
        """``Z [C, H, W]`` float32 solving ``(I - alpha S) Z = Y`` for ``scores`` ``Y [C, H, W]`` (see :func:`propagate_pixels`)."""
        _check_pixel_shapes(scores, self.image)
        _check_solver_args(alpha, tol, maxiter)
        _check_finite("scores", scores)
        matvec = self.operator(alpha)
        scores = scores.float()
        if column_chunk is None:
            column_chunk = scores.shape[0] if scores.is_cuda else max(1, _CPU_CHUNK_BYTES // (4 * scores[0].numel()))
        parts = scores.split(column_chunk)
        return torch.cat([conjugate_gradient(matvec, part, tol=tol, maxiter=maxiter) for part in parts])
