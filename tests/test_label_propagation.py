"""The propagation engine against independent SciPy/NumPy/kornia references (SPEC steps 8 and 10)."""

import kornia
import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from lp_reference import normalised, reference_patch_graph, reference_pixel_graph, scipy_cg, solve_exact

import lposs.segmentation.kernels.cpu as cpu_kernels_module
import lposs.segmentation.patch_graph as patch_graph
from lposs.segmentation.kernels.cpu import cpu_kernels
from lposs.segmentation.label_propagation import (
    apply_stencil,
    conjugate_gradient,
    knn_search,
    patch_affinity,
    pixel_affinity,
    propagate_patches,
    propagate_pixels,
    rgb_to_lab,
    stencil_offsets,
)


def random_patches(n=240, d=16, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    locs = torch.rand(n, 2, generator=g) * 200
    scores = torch.rand(n, c, generator=g) * 2 - 1
    return scores, feats, locs


@pytest.fixture(params=["compiled-kernels", "torch-only"])
def patch_engine(request, monkeypatch):
    """Runs a test on the compiled CPU kernels (top-k, CSR assembly) and on the pure-torch path."""
    if request.param == "compiled-kernels":
        if cpu_kernels() is None:
            pytest.skip("no C++ compiler for the optional CPU kernels")
    else:
        monkeypatch.setattr(cpu_kernels_module, "cpu_kernels", lambda: None)
    return request.param


# ------------------------------------------------------------------------------------------ patches


def test_patch_graph_matches_reference_and_is_symmetric(patch_engine):
    _, feats, locs = random_patches()
    s = patch_affinity(feats, locs, k=30).to_dense().double().numpy()
    ref = normalised(reference_patch_graph(feats, locs, 30)).toarray()
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s, s.T, atol=1e-7)
    assert np.all(np.diag(s) == 0)


def test_patch_graph_with_several_similarity_blocks_and_a_hub(patch_engine):
    # N = 1100 spans three 512-row blocks of the mirrored similarity matrix (the last one partial), and node
    # 0 lies near every other node, so that row 0 of W^T is far longer than k.
    _, feats, locs = random_patches(n=1100, d=12, seed=5)
    hub = torch.nn.functional.normalize(torch.ones(12), dim=0)
    feats = torch.nn.functional.normalize(feats + 2 * hub, dim=1)
    feats[0] = hub
    s = patch_affinity(feats, locs, k=100).to_dense().double().numpy()
    w = reference_patch_graph(feats, locs, 100)
    assert (w[:, 0] != 0).sum() > 500
    np.testing.assert_allclose(s, normalised(w).toarray(), rtol=1e-5, atol=1e-7)


def test_knn_search_returns_each_rows_k_largest_in_column_order(patch_engine):
    _, feats, _ = random_patches(n=700, d=8, seed=2)
    sims, idx = knn_search(feats, 50)
    full = (feats.double() @ feats.double().T).numpy()
    expected = np.sort(-np.sort(-full, axis=1)[:, :50], axis=1)
    np.testing.assert_allclose(np.sort(sims.double().numpy(), axis=1), expected, atol=1e-6)
    np.testing.assert_allclose(sims.double().numpy(), np.take_along_axis(full, idx.numpy(), 1), atol=1e-6)
    assert torch.all(idx[:, 1:] > idx[:, :-1])  # ascending, hence distinct
    chunked_sims, chunked_idx = knn_search(feats, 50, chunk_size=128)  # blocks of rows instead of one matrix
    assert torch.equal(chunked_idx, idx)


def test_propagate_patches_converges_to_exact_solution(patch_engine):
    scores, feats, locs = random_patches()
    z = propagate_patches(scores, feats, locs, k=30, tol=1e-7, maxiter=300)
    s = normalised(reference_patch_graph(feats, locs, 30))
    exact = solve_exact(s, scores.double().numpy())
    np.testing.assert_allclose(z.numpy(), exact, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("maxiter", [2, 10])
def test_propagate_patches_equals_scipy_cg_per_column(maxiter, patch_engine):
    scores, feats, locs = random_patches(seed=3)
    z = propagate_patches(scores, feats, locs, k=40, maxiter=maxiter)
    s = normalised(reference_patch_graph(feats, locs, 40))
    ref = scipy_cg(s, scores.double().numpy(), maxiter=maxiter)
    if maxiter == 2:  # far from convergence: equal iterates check each column's own step sizes
        assert np.abs(ref - solve_exact(s, scores.double().numpy())).max() > 1e-3
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_k_at_least_n_uses_all_nodes(patch_engine):
    scores, feats, locs = random_patches(n=50)
    feats = feats.abs()  # all similarities positive: no zero weights
    z = propagate_patches(scores, feats, locs, k=400)
    s = normalised(reference_patch_graph(feats, locs, 50))
    assert s.nnz == 50 * 49  # complete graph
    np.testing.assert_allclose(z.numpy(), scipy_cg(s, scores.double().numpy()), rtol=1e-4, atol=1e-4)


def test_one_class_column():
    scores, feats, locs = random_patches(c=1)
    z = propagate_patches(scores, feats, locs, k=20)
    ref = scipy_cg(normalised(reference_patch_graph(feats, locs, 20)), scores.double().numpy())
    assert z.shape == (240, 1)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_zero_column_stays_zero_and_does_not_disturb_others():
    scores, feats, locs = random_patches(c=3)
    scores[:, 1] = 0
    z = propagate_patches(scores, feats, locs, k=20)
    alone = propagate_patches(scores[:, [0, 2]], feats, locs, k=20)
    assert torch.all(z[:, 1] == 0)
    torch.testing.assert_close(z[:, [0, 2]], alone)


def test_dense_patch_graph_equals_reference(patch_engine):
    scores, feats, locs = random_patches(seed=8)
    s = patch_affinity(feats, locs, k=30, dense=True)
    assert not s.is_sparse and s.layout == torch.strided
    np.testing.assert_allclose(
        s.double().numpy(), normalised(reference_patch_graph(feats, locs, 30)).toarray(), rtol=1e-5, atol=1e-7
    )
    z = propagate_patches(scores, feats, locs, k=30, graph="dense")
    ref = scipy_cg(normalised(reference_patch_graph(feats, locs, 30)), scores.double().numpy())
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z, propagate_patches(scores, feats, locs, k=30, graph="sparse"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coo_sum", [True, False], ids=["coo-sum (CUDA's branch)", "csr-sum"])
def test_symmetric_normalisation_branches_equal_dense_reference(coo_sum):
    # Rows 0 and 3 name each other (their W + W^T entries add up); node 2 has weight 0 everywhere (degree 1).
    neighbours = torch.tensor([[0, 1, 3], [1, 2, 4], [0, 2, 4], [0, 3, 4], [1, 3, 4]])
    weights = torch.tensor([[9.0, 1.0, 2.0], [9.0, 0.5, 0.25], [0.0, 9.0, 0.0], [3.0, 9.0, 1.5], [0.75, 1.0, 9.0]])
    w = np.zeros((5, 5))
    for i in range(5):
        for j, v in zip(neighbours[i].tolist(), weights[i].tolist()):
            w[i, j] = v
    w = w + w.T
    np.fill_diagonal(w, 0.0)
    d = w.sum(1)
    d[d == 0] = 1
    expected = w / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    s = patch_graph._symmetric_normalised(neighbours, weights, coo_sum=coo_sum)
    assert s.layout == torch.sparse_csr
    np.testing.assert_allclose(s.to_dense().double().numpy(), expected, rtol=1e-6)


def test_bad_graph_layout_is_named():
    scores, feats, locs = random_patches(n=20)
    with pytest.raises(ValueError, match="graph must be .* got 'csr'"):
        propagate_patches(scores, feats, locs, graph="csr")


def test_faiss_backend_equals_torch_backend():
    pytest.importorskip("faiss", reason="faiss not installed (optional backend)")
    scores, feats, locs = random_patches()
    torch.testing.assert_close(
        propagate_patches(scores, feats, locs, k=30, knn_backend="faiss"), propagate_patches(scores, feats, locs, k=30)
    )


# ------------------------------------------------------------------------------------------ solver


def test_conjugate_gradient_columns_stop_on_their_own():
    # A diagonal system converges in one step per distinct eigenvalue: column 0 has one, column 1 three.
    diag = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    b[0, 1] = 0.0
    calls = []

    def matvec(x):
        calls.append(1)
        return x * diag

    x = conjugate_gradient(matvec, b, tol=1e-6, maxiter=10)
    torch.testing.assert_close(x, b / diag)
    assert len(calls) == 4  # column 1 needs 4 iterations, column 0 stopped after 1 and stayed put


def spd_system(n=60, columns=4, seed=0):
    """A dense SPD matrix with eigenvalues in [1, 12] (CG needs 10-20 steps for 1e-5) and right-hand sides of
    very different norms, so that a stop rule that scales wrongly with ||b|| stops at a different step."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1.0, 12.0, n, dtype=torch.float64)) @ q.T
    b = torch.randn(columns, n, generator=g, dtype=torch.float64) * torch.tensor([0.01, 1.0, 30.0, 1000.0])[:, None]
    return a, b


def scipy_cg_iterations(a, b, tol, maxiter):
    steps = []
    x, _ = spla.cg(a.numpy(), b.numpy(), rtol=tol, atol=0.0, maxiter=maxiter, callback=lambda xk: steps.append(1))
    return x, len(steps)


def test_conjugate_gradient_stop_rule_equals_scipy_per_column():
    a, b = spd_system()
    tol, maxiter = 1e-5, 100
    batched = conjugate_gradient(lambda x: x @ a, b, tol=tol, maxiter=maxiter)
    for column in range(b.shape[0]):
        calls = []

        def matvec(x, calls=calls):
            calls.append(1)
            return x @ a

        alone = conjugate_gradient(matvec, b[column : column + 1], tol=tol, maxiter=maxiter)
        expected, iterations = scipy_cg_iterations(a, b[column], tol, maxiter)
        assert 5 <= iterations < maxiter  # the stop rule, not maxiter, ends it
        assert len(calls) == iterations
        np.testing.assert_allclose(alone[0].numpy(), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
        np.testing.assert_allclose(batched[column].numpy(), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())


def test_conjugate_gradient_without_early_exit_gives_the_same_x():
    # Columns stop at different steps (eigenvalues in [1, 12]; tol 1e-3), all before maxiter.
    a, b = spd_system(columns=4, seed=1)
    b[1] = 0.0  # stopped from the start
    counts = {}

    def counting(name):
        def matvec(x):
            counts[name] = counts.get(name, 0) + 1
            return x @ a

        return matvec

    early = conjugate_gradient(counting("early"), b, tol=1e-3, maxiter=40, early_exit=True)
    full = conjugate_gradient(counting("full"), b, tol=1e-3, maxiter=40, early_exit=False)
    assert counts["early"] < 40 and counts["full"] == 40
    assert torch.equal(early, full)
    assert torch.all(full[1] == 0)


def _large_allocations(run, size_bytes):
    """Allocations of exactly ``size_bytes`` made while ``run()`` executes, by the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    return [event.name for event in prof.events() if event.self_cpu_memory_usage == size_bytes]


def test_conjugate_gradient_allocates_x_r_p_and_nothing_per_step():
    # 10 steps at [C, M] = [3, 2^19]: the old dot products (vecdot: a [C, M] product, then its sum) made 21
    # [C, M] temporaries on top of x, r and p, 24 in all; now only x, r, p remain. The matvec writes into a
    # buffer of its own here, so every [C, M] allocation seen is the solver's.
    columns, size = 3, 2**19
    diag = torch.linspace(1.0, 3.0, size)
    buffer = torch.empty(columns, size)
    b = torch.rand(columns, size, generator=torch.Generator().manual_seed(0))
    run = lambda: conjugate_gradient(lambda x: torch.mul(x, diag, out=buffer), b, tol=1e-30, maxiter=10)  # noqa: E731
    assert len(_large_allocations(run, columns * size * 4)) == 3


def test_in_place_operator_gets_one_buffer_from_the_solver_and_gives_the_same_x():
    from lposs.segmentation.linear_operator import InPlaceOperator

    columns, size = 3, 2**19
    diag = torch.linspace(1.0, 3.0, size)
    b = torch.rand(columns, size, generator=torch.Generator().manual_seed(0))
    buffers = []

    def apply(x, out):
        buffers.append(out.data_ptr())
        torch.mul(x, diag, out=out)

    operator = InPlaceOperator(apply)
    allocations = _large_allocations(lambda: conjugate_gradient(operator, b, tol=1e-30, maxiter=10), columns * size * 4)
    assert len(allocations) == 4 and len(set(buffers)) == 1  # x, r, p and the one A p buffer, reused each step
    plain = conjugate_gradient(lambda x: x * diag, b, tol=1e-30, maxiter=10)
    torch.testing.assert_close(conjugate_gradient(operator, b, tol=1e-30, maxiter=10), plain, rtol=1e-6, atol=0)


def test_in_place_operator_dots_and_update_are_used_as_given():
    # An operator may hand back p.Ap and do the vector update itself (the fused GPU kernels); the solver must use
    # what it gets: here the operator's p.Ap and update are exact in float64, and the x equals SciPy's.
    from lposs.segmentation.linear_operator import InPlaceOperator

    a, b = spd_system(columns=4, seed=2)
    used = {"dots": 0, "update": 0}

    def apply(x, out):
        torch.matmul(x, a, out=out)
        used["dots"] += 1
        return (x * out).sum(1)

    def update(x, r, p, ap, step):
        used["update"] += 1
        x.add_(step[:, None] * p)
        r.sub_(step[:, None] * ap)
        return (r * r).sum(1)

    x = conjugate_gradient(InPlaceOperator(apply, update), b, tol=1e-5, maxiter=100)
    for column in range(b.shape[0]):
        expected, _ = scipy_cg_iterations(a, b[column], 1e-5, 100)
        np.testing.assert_allclose(x[column].numpy(), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
    assert used["dots"] == used["update"] > 5


# ------------------------------------------------------------------------------------------ pixels


def test_lab_equals_kornia():
    img = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(1))
    img[:, 0, 0] = 0.0
    img[:, 0, 1] = 1.0
    torch.testing.assert_close(rgb_to_lab(img), kornia.color.rgb_to_lab(img[None])[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("r", [3, 5])
def test_pixel_graph_matches_reference(r):
    img = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(2))
    tau = 0.3
    ref = normalised(reference_pixel_graph(img, tau, r))
    s = pixel_affinity(img, tau=tau, r=r)
    dense = np.zeros((99, 99))
    for o, (dy, dx) in enumerate(stencil_offsets(r)):
        for y in range(9):
            for x in range(11):
                if 0 <= y + dy < 9 and 0 <= x + dx < 11:
                    dense[y * 11 + x, (y + dy) * 11 + x + dx] = s[o, y, x]
                else:
                    assert s[o, y, x] == 0
    np.testing.assert_allclose(dense, ref.toarray(), rtol=1e-5, atol=1e-7)


def test_border_pixels_have_fewer_neighbours():
    img = torch.full((3, 30, 30), 0.5)  # constant image: every in-image neighbour has weight 1
    s = pixel_affinity(img, tau=0.01, r=13)
    counts = (s > 0).sum(0)
    assert counts[15, 15] == 168
    assert counts[0, 0] == 7 * 7 - 1
    assert counts[0, 15] == 7 * 13 - 1
    assert counts[3, 15] == 10 * 13 - 1
    # Constant image: W is all ones, so S[o, p] = 1 / sqrt(deg(p) deg(p + o)) with deg = neighbour count.
    torch.testing.assert_close(s[stencil_offsets(13).index((1, 1)), 0, 0], 1 / torch.sqrt(torch.tensor(48.0 * 63.0)))


def test_propagate_pixels_converges_to_exact_solution():
    g = torch.Generator().manual_seed(4)
    img = torch.rand(3, 10, 12, generator=g)
    y = torch.rand(4, 10, 12, generator=g)
    z = propagate_pixels(y, img, tau=0.5, r=5, tol=1e-7, maxiter=300)
    s = normalised(reference_pixel_graph(img, 0.5, 5))
    exact = solve_exact(s, y.reshape(4, -1).T.double().numpy())
    np.testing.assert_allclose(z.reshape(4, -1).T.numpy(), exact, rtol=1e-4, atol=2e-4)


def test_propagate_pixels_equals_scipy_cg_ten_iterations_default_stencil():
    g = torch.Generator().manual_seed(5)
    img = torch.rand(3, 16, 18, generator=g)
    img[:, :, 9:] = 0.2  # a flat region next to a noisy one
    y = torch.rand(3, 16, 18, generator=g)
    z = propagate_pixels(y, img, tau=0.05, r=13)
    s = normalised(reference_pixel_graph(img, 0.05, 13))
    ref = scipy_cg(s, y.reshape(3, -1).T.double().numpy())
    np.testing.assert_allclose(z.reshape(3, -1).T.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_constant_image_and_single_class():
    y = torch.rand(1, 12, 14, generator=torch.Generator().manual_seed(6))
    img = torch.full((3, 12, 14), 0.3)
    z = propagate_pixels(y, img, r=5)
    s = normalised(reference_pixel_graph(img, 0.01, 5))
    np.testing.assert_allclose(
        z.reshape(1, -1).T.numpy(), scipy_cg(s, y.reshape(1, -1).T.double().numpy()), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-kernel", "torch-shifts"])
def test_stencil_product_equals_sparse_matrix_product(compiled):
    if compiled and cpu_kernels() is None:
        pytest.skip("no C++ compiler for the optional CPU kernel")
    g = torch.Generator().manual_seed(7)
    img, z = (
        torch.rand(3, 15, 19, generator=g),
        torch.rand(6, 15, 19, generator=g),
    )  # a block of 4 channels and 2 single ones
    s = pixel_affinity(img, tau=0.2, r=7)
    ref = normalised(reference_pixel_graph(img, 0.2, 7)) @ z.reshape(6, -1).T.double().numpy()
    out = apply_stencil(s, z, 7, compiled=compiled)
    np.testing.assert_allclose(out.reshape(6, -1).T.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("column_chunk", [1, 2, 5], ids=["one-column-chunks", "uneven-chunks", "unchunked (CUDA)"])
def test_column_chunks_do_not_change_the_result(column_chunk):
    g = torch.Generator().manual_seed(9)
    img, y = torch.rand(3, 10, 13, generator=g), torch.rand(5, 10, 13, generator=g)
    z = propagate_pixels(y, img, tau=0.1, r=5, column_chunk=column_chunk)
    ref = scipy_cg(normalised(reference_pixel_graph(img, 0.1, 5)), y.reshape(5, -1).T.double().numpy())
    np.testing.assert_allclose(z.reshape(5, -1).T.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_pixel_memory_is_stencil_sized():
    s = pixel_affinity(torch.rand(3, 20, 30), r=7)
    assert s.shape == (48, 20, 30) and s.dtype == torch.float32


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tau": -1.0}, "tau"),
        ({"tau": 0.0}, "tau"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"r": 4}, "r"),
        ({"r": 1}, "r"),
        ({"maxiter": 0}, "maxiter"),
        ({"tol": 0.0}, "tol"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_pixel_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        propagate_pixels(torch.rand(2, 8, 8), torch.rand(3, 8, 8), **kwargs)


@pytest.mark.parametrize(
    "kwargs, name", [({"k": 0}, "k"), ({"alpha": 1.5}, "alpha"), ({"gamma": -1.0}, "gamma"), ({"sigma": -0.1}, "sigma")]
)
def test_bad_patch_arguments_name_the_argument(kwargs, name):
    scores, feats, locs = random_patches(n=20)
    with pytest.raises(ValueError, match=rf"^{name} "):
        propagate_patches(scores, feats, locs, **kwargs)


def test_shape_mismatch_and_nan_scores():
    scores, feats, locs = random_patches(n=20)
    with pytest.raises(ValueError, match="scores"):
        propagate_patches(scores[:10], feats, locs)
    with pytest.raises(ValueError, match="image"):
        propagate_pixels(torch.rand(2, 8, 8), torch.rand(3, 8, 9))
    scores[3, 1] = float("nan")
    with pytest.raises(ValueError, match="scores contains NaN"):
        propagate_patches(scores, feats, locs)
    with pytest.raises(ValueError, match="scores contains NaN"):
        propagate_pixels(torch.full((2, 8, 8), float("nan")), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="knn_backend"):
        propagate_patches(torch.rand(20, 2), feats, locs, knn_backend="annoy")
    feats[5, 0] = float("inf")
    with pytest.raises(ValueError, match="features contains NaN"):
        propagate_patches(torch.rand(20, 2), feats, locs)


def test_finite_scores_whose_sum_overflows_are_accepted():
    scores, feats, locs = random_patches(n=20, c=2)
    scores[:, 0] = 3e38  # the sum is infinite, every entry is finite
    assert torch.isfinite(propagate_patches(scores, feats, locs, k=5)[:, 1]).all()


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    scores, feats, locs = random_patches(n=600, c=21)
    cpu = propagate_patches(scores, feats, locs, k=100)
    gpu = propagate_patches(scores.cuda(), feats.cuda(), locs.cuda(), k=100)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    img, y = torch.rand(3, 64, 80), torch.rand(21, 64, 80)
    torch.testing.assert_close(
        propagate_pixels(y.cuda(), img.cuda()).cpu(), propagate_pixels(y, img), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("scratch_bytes", [4, 4 * 3 * 7, 2**22])  # one column per slice, 7 with a partial last, all
def test_column_dot_products_over_slices_equal_float64(monkeypatch, scratch_bytes):
    import lposs.segmentation.label_propagation as engine

    monkeypatch.setattr(engine, "_DOT_SCRATCH_BYTES", scratch_bytes)
    g = torch.Generator().manual_seed(3)
    u, v = torch.rand(3, 5, 11, generator=g) - 0.5, torch.rand(3, 5, 11, generator=g)
    expected = (u.double() * v.double()).sum((1, 2))
    torch.testing.assert_close(engine._dots(u, v).double(), expected, rtol=1e-6, atol=1e-6)
    transposed = torch.rand(55, 3, generator=g).T  # the patch level's [N, C] memory seen as [C, N]
    expected = (transposed.double() * transposed.double()).sum(1)
    torch.testing.assert_close(engine._dots(transposed, transposed).double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("layout", ["rows", "strided columns"])
def test_cg_reductions_are_as_accurate_as_a_float64_sum(layout):
    # The CG's r.r and p.Ap set every step size: a float32 reduction that accumulates sequentially (torch's CPU
    # norm kernel did) is 20-500x less accurate than a pairwise sum and moved the solve visibly off SciPy's.
    from lposs.segmentation.label_propagation import _dots, _squared_norms

    g = torch.Generator().manual_seed(0)
    u = torch.rand(21, 268800, generator=g) if layout == "rows" else torch.rand(2940, 171, generator=g).T
    v = torch.rand(u.shape[1], u.shape[0], generator=g).T.contiguous() if layout == "rows" else torch.rand_like(u)
    exact = (u.double() ** 2).sum(1)
    assert ((_squared_norms(u).double() - exact).abs() / exact).max() < 1e-6
    exact = (u.double() * v.double()).sum(1)  # positive terms: no cancellation, so 1e-6 is a fair bound
    assert ((_dots(u, v).double() - exact).abs() / exact).max() < 1e-6
