"""Time the propagation engine against the reference formulation, on the same inputs, in one run.

The reference is how the paper's code (and most LP code) does it: the graph as a CSR matrix built from index
lists, then one CG call per class. On the CPU it is SciPy (``scipy.sparse`` + ``scipy.sparse.linalg.cg``); on a
GPU it is the same in torch on the GPU (CSR from index lists, one CG loop per class that checks its residual on
the host every step, as SciPy's loop does). Ours is ``segmentation.label_propagation``: one batched CG over all
classes; for patches a sparse (CPU) or dense (GPU) kNN graph, for pixels a stencil. On CUDA every variant of
ours is timed: patches with the sparse and the dense graph, pixels with the shifted torch multiply-adds and
with the fused Triton kernel. Kernels are compiled (and each variant run once) before anything is timed.
Every output is compared with the reference (relative error, Frobenius norm); above 1e-4 the exit code is 1.

Usage::

    python tools/benchmark_lp.py                      # CPU, C = 21 and 171
    python tools/benchmark_lp.py --device cuda        # GPU: reference, sparse/dense, torch/Triton, one run
    python tools/benchmark_lp.py --classes 21 --repeats 3
    python tools/benchmark_lp.py --levels pixel --cg-baseline --repeats 5   # this CG against the previous one
    python tools/benchmark_lp.py --levels patch --patch 8   # DINO ViT-B/8: 784 patches per window, N = 11,760

From Python: ``rows = list(benchmark_rows(parse_args(["--device", "cuda"])))``, one dict per timed variant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import lposs.segmentation.label_propagation as engine
from lposs.segmentation.kernels import pixel_backend_ran
from lposs.segmentation.label_propagation import propagate_patches, propagate_pixels, rgb_to_lab

ALPHA, TOL, MAXITER = 0.95, 1e-6, 10
MAX_RELATIVE_ERROR = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 171], help="numbers of columns C")
    parser.add_argument("--device", default="cpu", help="device for our engine and the reference (cpu, cuda)")
    parser.add_argument(
        "--reference",
        default="auto",
        choices=["auto", "scipy", "torch"],
        help="reference implementation: SciPy (CPU) or torch on --device; auto: SciPy on the CPU, torch on a GPU",
    )
    parser.add_argument("--levels", nargs="+", default=["patch", "pixel"], choices=["patch", "pixel"])
    parser.add_argument(
        "--all-variants",
        action="store_true",
        help="on the CPU, time the GPU's variants too (sparse and dense patch graph); always on with CUDA",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (best is kept)")
    parser.add_argument("--windows", type=int, default=15, help="windows per image at patch level (x 196 patches)")
    parser.add_argument(
        "--patch", type=int, default=16, help="DINO patch size: 224 / patch squared patches per window (8: 784)"
    )
    parser.add_argument(
        "--size", type=int, nargs=2, default=[448, 600], metavar=("H", "W"), help="pixel-level image size"
    )
    parser.add_argument(
        "--cg-baseline",
        action="store_true",
        help="also time our engine with the previous CG (dot products through [C, M] temporaries): before/after",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and the peak GPU memory here")
    return parser.parse_args(argv)


def reference_solve(w: sp.csr_matrix, y: np.ndarray) -> np.ndarray:
    """Normalise ``W`` and run one SciPy CG call per column of ``y [N, C]``."""
    w = w.tolil()
    w.setdiag(0)
    w = w.tocsr()
    d = np.asarray(w.sum(1)).ravel()
    d[d == 0] = 1
    d_inv_sqrt = sp.diags(1 / np.sqrt(d))
    lap = sp.eye(w.shape[0], dtype=np.float32, format="csr") - ALPHA * (d_inv_sqrt @ w @ d_inv_sqrt)
    lap = lap.astype(np.float32).tocsr()
    return np.stack([spla.cg(lap, y[:, c], rtol=TOL, atol=0.0, maxiter=MAXITER)[0] for c in range(y.shape[1])], axis=1)


def reference_patches_scipy(scores: np.ndarray, feats: np.ndarray, locs: np.ndarray, k: int = 400) -> np.ndarray:
    n = feats.shape[0]
    k = min(k, n)
    sims = feats @ feats.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [N, k] index lists
    rows = np.repeat(np.arange(n), k)
    cols = idx.ravel()
    s = sims[rows, cols]
    dist = np.linalg.norm(locs[rows] - locs[cols], axis=1)
    w = sp.csr_matrix((np.maximum(s, 0) ** 3.0 * np.exp(-0.01 * dist), (rows, cols)), shape=(n, n))
    return reference_solve(w + w.T, scores)


def reference_pixels_scipy(scores: np.ndarray, image: torch.Tensor, tau: float = 0.01, r: int = 13) -> np.ndarray:
    _, h, w = image.shape
    lab = (
        (rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0])[:, None, None]).permute(1, 2, 0).reshape(-1, 3).numpy()
    )
    yy, xx = np.mgrid[0:h, 0:w]
    rows, cols = [], []
    half = r // 2
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            if dy == 0 and dx == 0:
                continue
            ok = (yy + dy >= 0) & (yy + dy < h) & (xx + dx >= 0) & (xx + dx < w)
            rows.append((yy * w + xx)[ok])
            cols.append(((yy + dy) * w + xx + dx)[ok])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    vals = np.exp(-np.linalg.norm(lab[rows] - lab[cols], axis=1) / tau).astype(np.float32)
    graph = sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))
    return reference_solve(graph, scores.reshape(scores.shape[0], -1).T).T.reshape(scores.shape)


def torch_cg(lap: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SciPy's ``cg`` loop in torch for one vector ``b [N]``: the residual is checked on the host every step."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr, stop = r.clone(), r @ r, TOL * float(b.norm())
    for _ in range(MAXITER):
        if float(rr.sqrt()) < stop:
            break
        ap = (lap @ p[:, None])[:, 0]
        step = rr / (p @ ap)
        x += step * p
        r -= step * ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def reference_solve_torch(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``W`` from index lists (duplicates summed, diagonal dropped), ``L = I - alpha S`` as CSR, one CG per column."""
    with warnings.catch_warnings():  # torch flags sparse tensors as beta on every construction
        warnings.simplefilter("ignore", UserWarning)
        return _reference_solve_torch(rows, cols, vals, y)


def _reference_solve_torch(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = y.shape[0]
    off_diagonal = rows != cols
    w = torch.sparse_coo_tensor(torch.stack([rows, cols])[:, off_diagonal], vals[off_diagonal], (n, n)).coalesce()
    (r, c), v = w.indices(), w.values()
    d = torch.zeros(n, device=y.device).index_add_(0, r, v)
    inv_sqrt = torch.where(d > 0, d, torch.ones_like(d)).rsqrt()
    eye = torch.arange(n, device=y.device)
    lap = torch.sparse_coo_tensor(
        torch.stack([torch.cat([r, eye]), torch.cat([c, eye])]),
        torch.cat([-ALPHA * v * inv_sqrt[r] * inv_sqrt[c], torch.ones(n, device=y.device)]),
        (n, n),
    )
    lap = lap.coalesce().to_sparse_csr()
    return torch.stack([torch_cg(lap, y[:, j].contiguous()) for j in range(y.shape[1])], dim=1)


def reference_patches_torch(
    scores: torch.Tensor, feats: torch.Tensor, locs: torch.Tensor, k: int = 400
) -> torch.Tensor:
    n = feats.shape[0]
    sims, idx = (feats @ feats.T).topk(min(k, n), dim=1)  # [N, k] index lists
    rows = torch.arange(n, device=feats.device).repeat_interleave(idx.shape[1])
    cols = idx.reshape(-1)
    vals = sims.reshape(-1).clamp(min=0) ** 3.0 * torch.exp(-0.01 * (locs[rows] - locs[cols]).norm(dim=1))
    # W + W^T: every entry once as (i, j) and once as (j, i); the sparse tensor sums duplicates.
    return reference_solve_torch(torch.cat([rows, cols]), torch.cat([cols, rows]), torch.cat([vals, vals]), scores)


def reference_pixels_torch(scores: torch.Tensor, image: torch.Tensor, tau: float = 0.01, r: int = 13) -> torch.Tensor:
    c, h, w = scores.shape
    lab = (rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0], device=image.device)[:, None, None]).reshape(3, -1)
    yy, xx = torch.meshgrid(torch.arange(h, device=image.device), torch.arange(w, device=image.device), indexing="ij")
    rows, cols = [], []
    for dy in range(-(r // 2), r // 2 + 1):
        for dx in range(-(r // 2), r // 2 + 1):
            ok = (yy + dy >= 0) & (yy + dy < h) & (xx + dx >= 0) & (xx + dx < w) & ((dy != 0) | (dx != 0))
            rows.append((yy * w + xx)[ok])
            cols.append(((yy + dy) * w + xx + dx)[ok])
    rows, cols = torch.cat(rows), torch.cat(cols)
    vals = torch.exp(-(lab[:, rows] - lab[:, cols]).norm(dim=0) / tau)
    return reference_solve_torch(rows, cols, vals, scores.reshape(c, -1).T).T.reshape(c, h, w)


def timed(
    fn: Callable[[], object], repeats: int = 1, device: str = "cpu", warmup: bool = False
) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (after one untimed call with ``warmup``) and the last output."""
    if warmup:
        fn()
    cuda = torch.device(device).type == "cuda"
    best, out = float("inf"), None
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)  # the timed device: a bare synchronize() waits on the current one
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def previous_conjugate_gradient(matvec, b, *, tol=1e-6, maxiter=10, early_exit=None):
    """The CG as it was before its dot products lost their temporaries, for ``--cg-baseline``.

    ``torch.linalg.vecdot`` writes ``u * v`` to a ``[C, M]`` temporary, then sums it: 4 passes over memory and an
    allocation per dot product, two per step; the matvec's result is a new tensor every step.
    """
    columns = b.shape[0]

    def dots(u, v):
        return torch.linalg.vecdot(u.reshape(columns, -1), v.reshape(columns, -1))

    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), dots(r, r)
    threshold = tol * rr.sqrt()
    active = rr.sqrt() > threshold
    view = (columns,) + (1,) * (b.dim() - 1)
    early_exit = b.device.type == "cpu" if early_exit is None else early_exit
    for _ in range(maxiter):
        if early_exit and not bool(active.any()):
            break
        ap = matvec(p)
        pap = dots(p, ap)
        step = torch.where(active, rr / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x.addcmul_(step.view(view), p)
        r.addcmul_(step.view(view), ap, value=-1)
        rr_next = dots(r, r)
        active = active & (rr_next.sqrt() > threshold)
        beta = rr_next / torch.where(rr > 0, rr, torch.ones_like(rr))
        torch.addcmul(r, beta.view(view), p, out=p)
        rr = rr_next
    return x


@contextlib.contextmanager
def cg_swapped(solver) -> Iterator[None]:
    """Run our engine with ``solver`` in place of its conjugate gradient (``--cg-baseline``)."""
    current = engine.conjugate_gradient
    engine.conjugate_gradient = solver
    try:
        yield
    finally:
        engine.conjugate_gradient = current


def use_device(device: str) -> None:
    """Make ``device`` current when it names a CUDA device (``cuda:N``): host-side launches (Triton's among them)
    and a bare ``torch.cuda.synchronize()`` go to the current device, which is 0 unless set."""
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(device)


def relative_error(ours: torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    ref_t = torch.as_tensor(np.ascontiguousarray(ref) if isinstance(ref, np.ndarray) else ref).float().cpu()
    return float((ours.cpu() - ref_t).norm() / ref_t.norm())


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DINO-like features ``[N, 768]``, patch centres ``[N, 2]`` of a row of windows, a smooth image ``[3, H, W]``."""
    side = 224 // args.patch  # patches per window side
    n = args.windows * side * side
    feats = torch.nn.functional.normalize(torch.randn(n, 768), dim=1)
    # patch centres on a grid of windows 112 px apart, as the segmentor makes them
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    grid = grid * args.patch + args.patch // 2
    locs = torch.cat([grid + torch.tensor([0, 112 * i]) for i in range(args.windows)]).float()
    image = torch.rand(3, *args.size)
    image = torch.nn.functional.avg_pool2d(image[None], 9, 1, 4)[0]  # smooth colours, like a photo's
    return feats, locs, image


def _variants(level: str, args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Our variants to time per level: name -> keyword arguments of propagate_patches / propagate_pixels."""
    baseline = {"ours-previous-cg": {"previous_cg": True}} if args.cg_baseline and level == "pixel" else {}
    if not (args.device.startswith("cuda") or args.all_variants):
        return {"ours": {}, **baseline}
    if level == "patch":
        return {"ours-sparse": {"graph": "sparse"}, "ours-dense": {"graph": "dense"}}
    if args.device.startswith("cuda"):
        return {"ours-torch": {"backend": "torch"}, "ours-triton": {"backend": "triton"}, **baseline}
    return {"ours-torch": {"backend": "torch"}, **baseline}  # Triton on the CPU is its (slow) interpreter: not timed


def _pixels(scores: torch.Tensor, image: torch.Tensor, previous_cg: bool = False, **kwargs) -> torch.Tensor:
    """``propagate_pixels``, with the previous CG when ``previous_cg`` (the before of ``--cg-baseline``)."""
    with cg_swapped(previous_conjugate_gradient) if previous_cg else contextlib.nullcontext():
        return propagate_pixels(scores, image, **kwargs)


def _backend(level: str, device: str, kwargs: dict) -> str:
    """What actually ran a variant: the patch graph, or the pixel backend (after any fallback of ``auto``)."""
    if level == "patch":
        return f"graph={kwargs.get('graph', 'auto')}"
    return pixel_backend_ran(device, kwargs.get("backend", "auto"))


def benchmark_rows(args: argparse.Namespace) -> Iterator[dict[str, object]]:
    """Time the reference and our variants; one row per (level, C, method), the reference first.

    Each row: ``level`` ("patch" | "pixel"), ``size`` (str), ``classes`` (int), ``method`` ("reference-scipy",
    "reference-torch", "ours", "ours-sparse", "ours-dense", "ours-torch", "ours-triton"), ``device``,
    ``seconds`` (best of ``args.repeats``), ``speedup`` (reference seconds / seconds), ``relative_error``
    (against the reference; 0 for the reference itself) and ``backend`` (what actually ran: an explicit
    ``triton`` raises rather than fall back, so a Triton row is never the torch path's figure).
    """
    torch.manual_seed(0)
    dev = args.device
    use_device(dev)
    reference = args.reference if args.reference != "auto" else ("scipy" if dev == "cpu" else "torch")
    feats, locs, image = _inputs(args)
    n, (h, w) = feats.shape[0], args.size
    # Compiles the optional CPU kernels (or loads them from torch's cache) before anything is timed.
    propagate_pixels(torch.rand(2, 16, 16, device=dev), torch.rand(3, 16, 16, device=dev))
    gpu = dev.startswith("cuda")
    for level in ("patch", "pixel"):
        if level not in args.levels:
            continue
        for c in args.classes:
            if level == "patch":
                scores = torch.rand(n, c) * 0.4
                size = f"N={n}"
                ref_fns = {
                    "scipy": lambda s=scores: reference_patches_scipy(s.numpy(), feats.numpy(), locs.numpy()),
                    "torch": lambda s=scores: reference_patches_torch(s.to(dev), feats.to(dev), locs.to(dev)),
                }
                ours = lambda kw, s=scores: propagate_patches(s.to(dev), feats.to(dev), locs.to(dev), **kw)  # noqa: E731
            else:
                scores = torch.rand(c, h, w) * 0.4
                size = f"{h}x{w}"
                ref_fns = {
                    "scipy": lambda s=scores: reference_pixels_scipy(s.numpy(), image),
                    "torch": lambda s=scores: reference_pixels_torch(s.to(dev), image.to(dev)),
                }
                ours = lambda kw, s=scores: _pixels(s.to(dev), image.to(dev), **kw)  # noqa: E731
            ref_device = dev if reference == "torch" else "cpu"
            ref_t, ref = timed(ref_fns[reference], args.repeats, ref_device, warmup=gpu and reference == "torch")
            row = {"level": level, "size": size, "classes": c, "device": ref_device}
            yield {
                **row,
                "method": f"reference-{reference}",
                "seconds": ref_t,
                "speedup": 1.0,
                "relative_error": 0.0,
                "backend": f"reference-{reference}",
            }
            for name, kwargs in _variants(level, args).items():
                t, out = timed(lambda kwargs=kwargs, ours=ours: ours(kwargs), args.repeats, dev, warmup=gpu)
                error = relative_error(out, ref)
                yield {
                    **row,
                    "device": dev,
                    "method": name,
                    "seconds": t,
                    "speedup": ref_t / t,
                    "relative_error": error,
                    "backend": _backend(level, dev, kwargs),
                }


def main(args: argparse.Namespace) -> int:
    print(f"device: {args.device} | torch threads: {torch.get_num_threads()} | reference: one CG per class")
    print(f"{'level':<8}{'size':>12}{'C':>6}  {'method':<17}{'seconds':>10}{'speed-up':>10}{'rel. error':>12}  backend")
    worst, seconds, rows = 0.0, {}, []
    for row in benchmark_rows(args):
        print(
            f"{row['level']:<8}{row['size']:>12}{row['classes']:>6}  {row['method']:<17}{row['seconds']:>10.4f}"
            f"{row['speedup']:>9.1f}x{row['relative_error']:>12.1e}  {row['backend']}"
        )
        rows.append(row)
        worst = max(worst, row["relative_error"])
        seconds[row["level"], row["classes"], row["method"]] = row["seconds"]
    for (level, c, method), t in seconds.items():
        if method == "ours-triton":
            print(f"fused Triton vs shifted torch, pixel level, C = {c}: {seconds[level, c, 'ours-torch'] / t:.1f}x")
        if method == "ours-previous-cg":
            ours = next(seconds[level, c, m] for m in ("ours", "ours-torch") if (level, c, m) in seconds)
            print(f"pixel level, C = {c}: previous CG {t:.4f} s, this CG {ours:.4f} s: {t / ours:.2f}x")
    if args.json is not None:
        cuda = torch.device(args.device).type == "cuda"
        peak = torch.cuda.max_memory_allocated(args.device) / 2**30 if cuda else None
        args.json.write_text(json.dumps({"device": args.device, "peak_gpu_memory_gb": peak, "rows": rows}, indent=2))
    if worst > MAX_RELATIVE_ERROR:
        print(f"outputs differ from the reference: relative error {worst:.1e} > {MAX_RELATIVE_ERROR:.0e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
