"""Time the propagation engine against the reference formulation, on the same inputs, in one run.

The reference is how the paper's code (and most LP code) does it: the graph as a SciPy CSR matrix built
from index lists, then one SciPy CG call per class. Ours is ``segmentation.label_propagation``: a batched
CG over all classes, a torch sparse kNN graph for patches (built by the compiled CPU kernels when available)
and a stencil for pixels. The kernels are compiled or loaded before anything is timed.

Usage::

    python tools/benchmark_lp.py                      # CPU, C = 21 and 171
    python tools/benchmark_lp.py --device cuda        # our engine on the GPU (reference stays on CPU)
    python tools/benchmark_lp.py --classes 21 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmentation.label_propagation import propagate_patches, propagate_pixels, rgb_to_lab  # noqa: E402

ALPHA, TOL, MAXITER = 0.95, 1e-6, 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 171], help="numbers of columns C")
    parser.add_argument("--device", default="cpu", help="device for our engine (cpu, cuda)")
    parser.add_argument("--levels", nargs="+", default=["patch", "pixel"], choices=["patch", "pixel"])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (best is kept)")
    parser.add_argument("--windows", type=int, default=15, help="windows per image at patch level (x 196 patches)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=[448, 600], metavar=("H", "W"), help="pixel-level image size"
    )
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


def reference_patches(scores: np.ndarray, feats: np.ndarray, locs: np.ndarray, k: int = 400) -> np.ndarray:
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


def reference_pixels(scores: np.ndarray, image: torch.Tensor, tau: float = 0.01, r: int = 13) -> np.ndarray:
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


def timed(fn: Callable[[], object], repeats: int = 1, device: str = "cpu") -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def relative_error(ours: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.from_numpy(np.ascontiguousarray(ref)).float()
    return float((ours.cpu() - ref_t).norm() / ref_t.norm())


def main(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    dev = args.device
    print(f"device for ours: {dev} | torch threads: {torch.get_num_threads()} | reference: SciPy, one CG per class")
    print(f"{'level':<8}{'size':>18}{'C':>6}{'reference s':>14}{'ours s':>10}{'speed-up':>10}{'rel. error':>12}")
    n = args.windows * 196
    feats = torch.nn.functional.normalize(torch.randn(n, 768), dim=1)
    # patch centres on a grid of windows 112 px apart, as the segmentor makes them
    grid = torch.stack(torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij"), -1).reshape(-1, 2) * 16 + 8
    locs = torch.cat([grid + torch.tensor([0, 112 * i]) for i in range(args.windows)]).float()
    h, w = args.size
    image = torch.rand(3, h, w)
    image = torch.nn.functional.avg_pool2d(image[None], 9, 1, 4)[0]  # smooth colours, like a photo's
    # Compiles the optional CPU kernels (or loads them from torch's cache) before anything is timed.
    propagate_pixels(torch.rand(2, 16, 16, device=dev), torch.rand(3, 16, 16, device=dev))
    for c in args.classes if "patch" in args.levels else []:
        scores = torch.rand(n, c) * 0.4
        ref_t, ref = timed(
            lambda scores=scores: reference_patches(scores.numpy(), feats.numpy(), locs.numpy()), args.repeats
        )
        ours_t, ours = timed(
            lambda scores=scores: propagate_patches(scores.to(dev), feats.to(dev), locs.to(dev)), args.repeats, dev
        )
        print(
            f"{'patch':<8}{f'N={n}':>18}{c:>6}{ref_t:>14.2f}{ours_t:>10.3f}{ref_t / ours_t:>9.1f}x{relative_error(ours, ref):>12.1e}"
        )
    for c in args.classes if "pixel" in args.levels else []:
        scores = torch.rand(c, h, w) * 0.4
        ref_t, ref = timed(lambda scores=scores: reference_pixels(scores.numpy(), image), args.repeats)
        ours_t, ours = timed(lambda scores=scores: propagate_pixels(scores.to(dev), image.to(dev)), args.repeats, dev)
        print(
            f"{'pixel':<8}{f'{h}x{w}':>18}{c:>6}{ref_t:>14.2f}{ours_t:>10.3f}{ref_t / ours_t:>9.1f}x{relative_error(ours, ref):>12.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
