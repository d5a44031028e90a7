"""The optional compiled CPU kernels, called directly, against torch and SciPy references; a kernel that does
not build fails here wherever a C++ compiler exists (skipped only without one)."""

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from lp_reference import normalised

import lposs.segmentation.kernels.cpu as cpu_kernels_module
from lposs.segmentation.kernels.cpu import KernelBuildError, build_error, compiler_available, cpu_kernels


def built_kernels():
    """The compiled module; skips only without a compiler (or when switched off), fails on a build error."""
    if os.environ.get("LPOSS_CPU_KERNEL") == "0":
        pytest.skip("the CPU kernels are switched off by LPOSS_CPU_KERNEL=0")
    if not compiler_available():
        pytest.skip("no C++ compiler ($CXX or c++) for the optional CPU kernels")
    try:
        module = cpu_kernels()
    except KernelBuildError as error:
        pytest.fail(str(error))
    assert module is not None, f"a C++ compiler exists but the CPU kernels failed to build: {build_error()}"
    return module


@pytest.fixture(scope="module")
def kernels():
    return built_kernels()


def test_kernels_build_where_a_compiler_exists():
    module = built_kernels()
    assert all(callable(getattr(module, name)) for name in ("apply_stencil", "topk_sorted_columns"))


@pytest.fixture
def failing_build(monkeypatch):
    """A fresh module state whose build raises like a compile error."""

    def broken_build():
        raise RuntimeError("Error building extension 'lposs_cpu_kernels': main.cpp:12: error: expected ';'")

    monkeypatch.setattr(cpu_kernels_module, "_build", broken_build)
    for name, value in [("_module", None), ("_build_error", None), ("_tried", False), ("_warned", False)]:
        monkeypatch.setattr(cpu_kernels_module, name, value)


def test_failed_build_falls_back_with_one_warning_for_users(failing_build, monkeypatch, recwarn):
    monkeypatch.setenv("LPOSS_CPU_KERNEL", "1")
    assert cpu_kernels() is None and cpu_kernels() is None
    messages = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "expected ';'" in messages[0] and "pure-torch" in messages[0]
    assert "expected ';'" in build_error()


def test_failed_build_raises_when_required(failing_build, monkeypatch):
    monkeypatch.setenv("LPOSS_CPU_KERNEL", "require")
    with pytest.raises(KernelBuildError, match="expected ';'"):
        cpu_kernels()
    with pytest.raises(KernelBuildError):  # every call, not only the first
        cpu_kernels()


def test_module_name_changes_with_the_source_and_its_checkout(monkeypatch, tmp_path):
    name, _ = cpu_kernels_module._compile_flags()
    source = tmp_path / "cpu.cpp"
    source.write_text(cpu_kernels_module._SOURCE_FILE.read_text())
    monkeypatch.setattr(cpu_kernels_module, "_SOURCE_FILE", source)
    other_checkout = cpu_kernels_module._compile_flags()[0]
    assert other_checkout != name  # same source in another checkout: its own build folder
    source.write_text(source.read_text() + "// changed\n")
    assert cpu_kernels_module._compile_flags()[0] not in (name, other_checkout)


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
