"""The Triton pixel kernels run by Triton's CPU interpreter, against the torch path and SciPy.

Not collected by ``pytest`` itself (the name does not start with ``test_``): ``tests/test_triton_kernels.py`` runs
this file in a child process with ``TRITON_INTERPRET=1``. The variable must be set before ``triton`` is first
imported and then holds for the whole process, so it cannot be switched on for a few tests of the main run
without also turning the GPU tests of that run into interpreter runs. By hand:
``TRITON_INTERPRET=1 python -m pytest -q tests/triton_interpreter_cases.py``.
"""

import os
import warnings

import numpy as np
import pytest
import torch
from lp_reference import normalised, reference_pixel_graph

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (tests/test_triton_kernels.py does)", allow_module_level=True)

import lposs.segmentation.kernels as kernels  # noqa: E402
from lposs.segmentation.kernels import triton_pixel as triton_kernels  # noqa: E402
from lposs.segmentation.label_propagation import (  # noqa: E402
    apply_stencil,
    conjugate_gradient,
    pixel_affinity,
    propagate_pixels,
    rgb_to_lab,
)

ALPHA = 0.95


def scaled_lab(image):
    return rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0])[:, None, None]


def torch_product(image, z, tau, r):
    """``z - alpha S z`` by the torch path: weight planes and shifted multiply-adds (not the compiled loop)."""
    return apply_stencil(pixel_affinity(image, tau=tau, r=r), z, r, compiled=False).mul_(-ALPHA).add_(z)


def assert_relative_close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


@pytest.fixture(autouse=True)
def fresh_fallback_state(monkeypatch):
    """Each test sees a process where Triton has not been checked nor warned about yet."""
    monkeypatch.setattr(triton_kernels, "_verdicts", {})
    monkeypatch.setattr(kernels, "_warned", False)
    monkeypatch.setattr(kernels, "_fallback_reasons", {})


def test_kernels_are_interpreted():
    assert triton_kernels.interpreted()


# (H, W, r, C): odd sizes; tiles of 8 x 32 pixels cut at every border; r = 3, 5, 7, 13; one and several channel
# blocks of 16 (the last partial); images smaller than the stencil (6 x 5 under 7 x 7, 11 rows under 13). The
# interpreter takes milliseconds per stencil offset and channel block: sizes are the smallest that show each case.
@pytest.mark.parametrize(
    "height, width, r, channels",
    [(11, 17, 3, 1), (23, 9, 5, 3), (9, 40, 3, 21), (11, 17, 13, 3), (6, 5, 7, 37)],
)
def test_fused_product_equals_torch_path(height, width, r, channels):
    g = torch.Generator().manual_seed(height * width + r)
    image = torch.rand(3, height, width, generator=g)
    image[:, : height // 2] = 0.4  # a flat region: large weights, next to small ones
    z = torch.rand(channels, height, width, generator=g) * 2 - 1
    tau = 0.1
    fused = triton_kernels.fused_pixel_operator(scaled_lab(image), tau, r, ALPHA)
    assert_relative_close(fused(z), torch_product(image, z, tau, r))


def test_fused_product_equals_scipy_graph_product():
    g = torch.Generator().manual_seed(1)
    image, z = torch.rand(3, 9, 11, generator=g), torch.rand(2, 9, 11, generator=g)
    s = normalised(reference_pixel_graph(image, 0.2, 5))  # from explicit index lists, kornia's Lab
    y = z.reshape(2, -1).T.double().numpy()
    expected = (y - ALPHA * (s @ y)).T.reshape(2, 9, 11)
    out = triton_kernels.fused_pixel_operator(scaled_lab(image), 0.2, 5, ALPHA)(z)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("r", [3, 13])
def test_inverse_sqrt_degrees_equal_reference(r):
    image = torch.rand(3, 10, 14, generator=torch.Generator().manual_seed(r))
    image[:, :, 7:] = 0.0  # black half: Lab distance 0, weight 1
    degrees = np.asarray(reference_pixel_graph(image, 0.05, r).sum(1)).reshape(10, 14)
    out = triton_kernels.inverse_sqrt_degrees(scaled_lab(image), 0.05, r)
    np.testing.assert_allclose(out.numpy(), 1 / np.sqrt(degrees), rtol=1e-5)


def test_isolated_pixels_get_degree_one():
    image = torch.zeros(3, 4, 5)
    image[:, ::2, ::2] = 1.0  # white and black pixels in rows of their own: every weight exp(-47 or more) = 0
    image[:, 1::2] = 0.5
    out = triton_kernels.inverse_sqrt_degrees(scaled_lab(image), 0.001, 3)
    assert torch.all(out[::2, ::2] == 1.0)
    # grey rows: two grey neighbours of weight 1 (one at the row ends)
    torch.testing.assert_close(out[1::2, 1:-1], torch.full((2, 3), 2**-0.5))


def test_propagate_pixels_triton_backend_equals_torch_backend():
    g = torch.Generator().manual_seed(3)
    image, y = torch.rand(3, 9, 13, generator=g), torch.rand(3, 9, 13, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernels pass their check: no fallback warning
        out = propagate_pixels(y, image, tau=0.1, r=3, backend="triton")
    assert_relative_close(out, propagate_pixels(y, image, tau=0.1, r=3, backend="torch"))
    assert triton_kernels._verdicts == {"cpu": True}


def test_auto_backend_on_cpu_does_not_use_triton(monkeypatch):
    monkeypatch.setattr(triton_kernels, "propagation_product_into", None)  # would raise TypeError if called
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        propagate_pixels(torch.rand(2, 6, 7), torch.rand(3, 6, 7), r=3)


def failing_product(*args, **kwargs):
    raise RuntimeError("out of resources: shared memory")


def _problem(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 8, 9, generator=g), torch.rand(2, 8, 9, generator=g)


def test_explicit_triton_backend_raises_naming_the_failure(monkeypatch):
    monkeypatch.setattr(triton_kernels, "propagation_product_into", failing_product)
    image, y = _problem(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: an error instead
        for _ in range(2):  # the second call names the recorded failure too
            with pytest.raises(kernels.TritonBackendError, match="'triton' failed on cpu: out of resources"):
                propagate_pixels(y, image, tau=0.1, r=3, backend="triton")
    assert triton_kernels._verdicts == {"cpu": False}


def test_auto_fallback_warns_once_and_records_what_ran(monkeypatch):
    # "auto" takes Triton on CUDA only: on the interpreter its fallback is reached through the checked operator.
    monkeypatch.setattr(triton_kernels, "propagation_product_into", failing_product)
    image, _ = _problem(4)
    with pytest.warns(RuntimeWarning) as caught:
        assert triton_kernels.checked_pixel_operator(image, 0.1, 3, ALPHA) is None
        assert triton_kernels.checked_pixel_operator(image, 0.1, 3, ALPHA) is None
    assert len(caught) == 1
    assert "out of resources" in str(caught[0].message) and "torch path" in str(caught[0].message)
    assert kernels.fallback_reason("cpu") == "out of resources: shared memory"
    assert kernels.pixel_backend_ran("cpu", "triton") == "triton"  # explicit: never a fallback (it raises)


def test_kernel_with_a_wrong_result_fails_the_first_use_check(monkeypatch):
    real = triton_kernels.propagation_product_into

    def wrong(z, out, *args):
        dots = real(z, out, *args)
        out.mul_(1.001)
        return dots

    monkeypatch.setattr(triton_kernels, "propagation_product_into", wrong)
    image, y = _problem(5)
    with pytest.raises(kernels.TritonBackendError, match="Mismatch|not close"):
        propagate_pixels(y, image, tau=0.1, r=3, backend="triton")
    assert triton_kernels._verdicts == {"cpu": False}


def _fails_after_the_check(monkeypatch):
    """The first-use check passed earlier in this process (its own tests are above); launches now fail."""
    monkeypatch.setitem(triton_kernels._verdicts, "cpu", True)
    monkeypatch.setattr(triton_kernels, "propagation_product_into", failing_product)


def test_launch_failing_after_the_check_falls_back_inside_the_solve_for_auto(monkeypatch):
    _fails_after_the_check(monkeypatch)
    image, y = _problem(6)
    with pytest.warns(RuntimeWarning) as caught:
        operator = triton_kernels.checked_pixel_operator(image, 0.1, 3, ALPHA)
        out = conjugate_gradient(operator, y)
    assert len(caught) == 1
    torch.testing.assert_close(out, propagate_pixels(y, image, tau=0.1, r=3, backend="torch"))


def test_launch_failing_after_the_check_raises_for_explicit_triton(monkeypatch):
    _fails_after_the_check(monkeypatch)
    image, y = _problem(6)
    with pytest.raises(kernels.TritonBackendError, match="out of resources"):
        propagate_pixels(y, image, tau=0.1, r=3, backend="triton")


def test_product_epilogue_gives_the_column_dot_products_deterministically():
    g = torch.Generator().manual_seed(7)
    image = torch.rand(3, 11, 45, generator=g)  # 2 x 2 tiles, partial at the right and bottom
    z = torch.rand(19, 11, 45, generator=g) * 2 - 1  # two channel blocks, the second partial
    lab = scaled_lab(image)
    inv_sqrt = triton_kernels.inverse_sqrt_degrees(lab, 0.1, 3)
    out = torch.empty_like(z)
    dots = triton_kernels.propagation_product_into(z, out, lab, inv_sqrt, 0.1, 3, ALPHA)
    expected = (z.double() * out.double()).sum((1, 2))
    scale = float((z.double() * out.double()).abs().sum((1, 2)).max())
    torch.testing.assert_close(dots.double(), expected, rtol=0, atol=1e-6 * scale)
    again = triton_kernels.propagation_product_into(z, torch.empty_like(z), lab, inv_sqrt, 0.1, 3, ALPHA)
    assert torch.equal(dots, again)  # fixed-order reduction


def test_cg_update_kernel_equals_the_torch_update():
    g = torch.Generator().manual_seed(8)
    columns, size = 3, triton_kernels.UPDATE_BLOCK + 77  # two blocks per column, the second partial
    x, r, p, ap = (torch.rand(columns, size, generator=g) * 2 - 1 for _ in range(4))
    step = torch.tensor([0.5, 0.0, -1.25])  # 0: a stopped column stays put exactly
    x_new, r_new = x.clone(), r.clone()
    rr = triton_kernels.cg_update(x_new, r_new, p, ap, step)
    torch.testing.assert_close(x_new, x + step[:, None] * p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r_new, r - step[:, None] * ap, rtol=1e-6, atol=1e-6)
    assert torch.equal(x_new[1], x[1]) and torch.equal(r_new[1], r[1])
    torch.testing.assert_close(rr.double(), r_new.double().square().sum(1), rtol=1e-5, atol=0)


def test_fused_solve_uses_the_epilogue_and_the_update_kernel(monkeypatch):
    calls = {"dots": 0, "update": 0}
    real_product, real_update = triton_kernels.propagation_product_into, triton_kernels.cg_update

    def product(*args):
        calls["dots"] += 1
        return real_product(*args)

    def update(*args):
        calls["update"] += 1
        return real_update(*args)

    monkeypatch.setattr(triton_kernels, "propagation_product_into", product)
    monkeypatch.setattr(triton_kernels, "cg_update", update)
    image, y = _problem(9)
    operator = triton_kernels.fused_pixel_operator(scaled_lab(image), 0.1, 3, ALPHA)
    out = conjugate_gradient(operator, y, tol=1e-12, maxiter=4, early_exit=False)
    assert calls == {"dots": 4, "update": 4}
    expected = conjugate_gradient(lambda z: torch_product(image, z, 0.1, 3), y, tol=1e-12, maxiter=4)
    assert_relative_close(out, expected)
