"""Independent references for label propagation: graphs from explicit index lists, SciPy solves.

Written from SPEC steps 8 and 10 directly, with NumPy/SciPy/kornia, sharing no code with the package.
"""

import kornia
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

ALPHA = 0.95


def reference_patch_graph(feats, locs, k, gamma=3.0, sigma=0.01, power=1.0):
    """W of SPEC step 8 built from NumPy index lists and a SciPy CSR matrix."""
    f = feats.double().numpy()
    xy = locs.double().numpy()
    n = f.shape[0]
    sims = f @ f.T
    k = min(k, n)
    rows, cols, vals = [], [], []
    for i in range(n):
        nbrs = np.argsort(-sims[i], kind="stable")[:k]
        for j in nbrs:
            dist = np.sqrt(((xy[i] - xy[j]) ** 2).sum())
            rows.append(i)
            cols.append(j)
            vals.append(max(sims[i, j], 0) ** gamma * np.exp(-sigma * dist**power))
    w = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    w = (w + w.T).tolil()
    w.setdiag(0)
    w = w.tocsr()
    w.eliminate_zeros()
    return w


def normalised(w):
    d = np.asarray(w.sum(1)).ravel()
    d[d == 0] = 1
    dinv = sp.diags(1 / np.sqrt(d))
    return (dinv @ w @ dinv).tocsr()


def reference_pixel_graph(image, tau, r):
    """W of SPEC step 10 from explicit index lists over all pixel pairs of the r x r square."""
    lab = (
        kornia.color.rgb_to_lab(image[None].double())[0] / torch.tensor([100.0, 128.0, 128.0]).double()[:, None, None]
    ).numpy()
    _, h, w = image.shape
    rows, cols, vals = [], [], []
    half = r // 2
    for y in range(h):
        for x in range(w):
            for dy in range(-half, half + 1):
                for dx in range(-half, half + 1):
                    yy, xx = y + dy, x + dx
                    if (dy or dx) and 0 <= yy < h and 0 <= xx < w:
                        rows.append(y * w + x)
                        cols.append(yy * w + xx)
                        vals.append(np.exp(-np.linalg.norm(lab[:, y, x] - lab[:, yy, xx]) / tau))
    return sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))


def solve_exact(s, y, alpha=ALPHA):
    lap = (sp.eye(s.shape[0]) - alpha * s).tocsc()
    return np.stack([spla.spsolve(lap, y[:, j]) for j in range(y.shape[1])], axis=1)


def scipy_cg(s, y, maxiter=10, tol=1e-6):
    lap = (sp.eye(s.shape[0]) - ALPHA * s).tocsr()
    return np.stack([spla.cg(lap, y[:, j], rtol=tol, atol=0.0, maxiter=maxiter)[0] for j in range(y.shape[1])], axis=1)
