"""The optional compiled CPU kernels, called directly, against torch and SciPy references."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from lp_reference import normalised

from segmentation.cpu_kernels import cpu_kernels


@pytest.fixture(scope="module")
def kernels():
    module = cpu_kernels()
    if module is None:
        pytest.skip("no C++ compiler for the optional CPU kernels")
    return module


def test_top_k_breaks_ties_by_lowest_column(kernels):
    g = torch.Generator().manual_seed(0)
    values = torch.randint(-3, 4, (40, 90), generator=g).float()  # many ties, negatives
    values[::3] *= -1.0  # -0.0 next to 0.0 in those rows: equal as floats, so ties as well
    sims, idx = kernels.topk_sorted_columns(values, 25)
    for row, (s, i) in enumerate(zip(sims, idx, strict=True)):
        kth = values[row].topk(25).values[-1]
        above = torch.nonzero(values[row] > kth).flatten()
        ties = torch.nonzero(values[row] == kth).flatten()[: 25 - len(above)]
        assert torch.equal(i, torch.cat([above, ties]).sort().values)
        assert torch.equal(s, values[row, i])


def test_top_k_of_every_row_equals_torch_topk(kernels):
    sims = torch.randn(300, 1000, generator=torch.Generator().manual_seed(1))
    values, columns = kernels.topk_sorted_columns(sims, 137)
    expected = sims.topk(137, dim=1)
    assert torch.equal(columns, expected.indices.sort(dim=1).values)
    assert torch.equal(values, sims.gather(1, columns))
    _, every = kernels.topk_sorted_columns(sims, 1000)  # k = N: all columns
    assert torch.equal(every, torch.arange(1000).expand(300, -1))


def test_symmetric_normalised_csr_equals_scipy(kernels):
    g = torch.Generator().manual_seed(2)
    n, k = 60, 9
    rows = []
    for i in range(n):
        others = torch.randperm(n, generator=g)
        others = others[others != i]
        rows.append(torch.cat([torch.tensor([i]), others[: k - 1]]) if i < 5 else others[:k])  # 0-4 hold themselves
    columns = torch.stack(rows).sort(dim=1).values
    weights = torch.rand(n, k, generator=g)
    weights[7] = 0.0  # row 7 contributes nothing itself
    row_starts, cols, values = kernels.symmetric_normalised_csr(columns, weights)
    assert row_starts.dtype == cols.dtype == torch.int32
    w = sp.csr_matrix((weights.double().numpy().ravel(), (np.repeat(np.arange(n), k), columns.numpy().ravel())), (n, n))
    w = (w + w.T).tolil()
    w.setdiag(0)
    expected = normalised(w.tocsr()).toarray()
    ours = torch.sparse_csr_tensor(row_starts.long(), cols.long(), values, (n, n)).to_dense().double().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    for i in range(n):  # ascending, distinct columns without the diagonal in every row
        row = cols[row_starts[i] : row_starts[i + 1]]
        assert torch.all(row[1:] > row[:-1]) and not torch.any(row == i)
