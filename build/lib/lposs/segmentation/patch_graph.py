"""The patch graph of LPOSS (docs/method.md, "Label propagation"): exact kNN, ``D^-1/2 (W + W^T) D^-1/2``.

Pure tensor functions. On the CPU the top-k selection and the CSR assembly run in compiled loops when available
(:mod:`segmentation.kernels.cpu`); elsewhere, and as the fallback, in torch. Used by
:func:`segmentation.label_propagation.propagate_patches`.
"""

from __future__ import annotations

import warnings

import torch

from .kernels.cpu import cpu_kernels_for

__all__ = ["knn_search", "patch_affinity"]

# Block side of the patch similarity matrix on the CPU (see _similarities).
_SIMILARITY_BLOCK = 512


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
    kernels = cpu_kernels_for(features)
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
    kernels = cpu_kernels_for(weights) if coo_sum is None else None
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
