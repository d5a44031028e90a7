"""The Triton pixel kernels: through the CPU interpreter in a child process, and compiled on a GPU.

``TRITON_INTERPRET=1`` only takes effect if it is set before ``triton`` is first imported, and then holds for
the whole process: set here, it would also turn this run's GPU tests into interpreter runs. So the interpreter
cases (``tests/triton_interpreter_cases.py``) run in a child ``pytest`` with the variable set, and this file
asserts that child passed; the compiled kernels are tested below on CUDA.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lposs.segmentation.kernels as kernels
from lposs.segmentation.label_propagation import apply_stencil, pixel_affinity, propagate_pixels, rgb_to_lab

triton = pytest.importorskip("triton", reason="triton is not installed (it comes with torch's CUDA wheels)")
triton_kernels = pytest.importorskip("lposs.segmentation.kernels.triton_pixel")

TESTS = Path(__file__).resolve().parent
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.slow
def test_kernels_under_the_interpreter_equal_the_torch_path():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cases = TESTS / "triton_interpreter_cases.py"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", str(cases)],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-2000:]


def test_triton_backend_on_cpu_without_the_interpreter_is_a_clear_error():
    if triton_kernels.interpreted():
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        propagate_pixels(torch.rand(2, 8, 8), torch.rand(3, 8, 8), backend="triton")


def _signature(kernel) -> dict[str, str]:
    """Triton types of a kernel's arguments, by this module's naming: ``*_ptr`` float32 pointers, upper-case
    compile-time constants, ``tau``/``alpha`` float32, the rest int32 sizes."""
    kinds = {"tau": "fp32", "alpha": "fp32"}
    return {
        name: "*fp32" if name.endswith("_ptr") else "constexpr" if name.isupper() else kinds.get(name, "i32")
        for name in kernel.arg_names
    }


@pytest.mark.parametrize(
    "kernel_name", ["_propagation_product_kernel", "_inverse_sqrt_degree_kernel", "_cg_update_kernel"]
)
def test_kernels_compile_for_an_nvidia_gpu_without_one(kernel_name):
    # The interpreter runs some programs the GPU compiler refuses (a scalar/block mismatch, a non-power-of-two
    # block): compile for an H100 (sm_90) with the ptxas that ships with triton, no GPU needed.
    if triton_kernels.interpreted():
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    kernel = getattr(triton_kernels, kernel_name)
    sizes = {"TILE_H": triton_kernels.TILE_H, "TILE_W": triton_kernels.TILE_W, "BLOCK_C": triton_kernels.BLOCK_C}
    sizes["BLOCK"] = triton_kernels.UPDATE_BLOCK
    constants = {name: value for name, value in sizes.items() if name in kernel.arg_names}
    try:
        compiled = triton.compile(ASTSource(kernel, _signature(kernel), constants), target=GPUTarget("cuda", 90, 32))
    except FileNotFoundError as error:  # a triton build without its bundled ptxas
        pytest.skip(f"no ptxas to compile for sm_90: {error}")
    assert compiled.asm["cubin"]  # machine code: ptxas accepted it
    # The reductions are per-program partial sums summed on the host in a fixed order: no atomics (determinism).
    assert not re.search(r"^\s*(@!?%p\d+\s+)?(atom|red)\.", compiled.asm["ptx"], re.MULTILINE)


class _FakeCuda:
    """Stand-in for the CUDA runtime calls behind ``torch.cuda.device``: a current device per process, starting
    at 0 as in a fresh thread (Gradio's workers, a run that never called set_device)."""

    def __init__(self):
        self.current = 0

    def exchange(self, index):
        previous, self.current = self.current, index if index >= 0 else self.current
        return previous


@pytest.mark.parametrize("index", [1, 3])
def test_every_launch_runs_under_the_tensors_device_not_device_0(monkeypatch, index):
    # Triton launches on torch.cuda.current_device() (triton/backends/driver.py, GPUDriver): record that device
    # at each launch, with fake tensors on cuda:N (no GPU needed) and the runtime's device switch mocked.
    if triton_kernels.interpreted():
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "_exchange_device", fake.exchange)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", fake.exchange)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: fake.current)
    launches = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.name, torch.cuda.current_device()))

    for name in ("_propagation_product_kernel", "_inverse_sqrt_degree_kernel", "_cg_update_kernel"):
        monkeypatch.setattr(triton_kernels, name, Recorder(name))
    with FakeTensorMode(allow_non_fake_inputs=True):
        device = torch.device("cuda", index)
        lab, z = torch.empty(3, 9, 11, device=device), torch.empty(2, 9, 11, device=device)
        operator = triton_kernels.fused_pixel_operator(lab, 0.1, 3, 0.95)
        out = torch.empty_like(z)
        operator.apply(z, out)
        operator.update(torch.empty_like(z), torch.empty_like(z), z, out, torch.empty(2, device=device))
    assert [name for name, _ in launches] == [
        "_inverse_sqrt_degree_kernel",
        "_propagation_product_kernel",
        "_cg_update_kernel",
    ]
    assert all(current == index for _, current in launches), launches
    assert fake.current == 0  # the caller's current device is restored


# ------------------------------------------------------------------------------------------ GPU
#
# Tolerances of the compiled kernels against the torch path on the same GPU, derived from the instructions the
# kernels compile to for sm_90 (checked above: ex2.approx.f32 for exp, div.full.f32 for 1 / sqrt(d), sqrt.rn and
# div.rn, fma.rn from contraction) and the PTX ISA's documented accuracy: ex2.approx.f32 at most 2 ulp, div.full.f32
# at most 2 ulp, over the full range; the torch path's CUDA expf and rsqrtf at most 2 ulp (CUDA math API). With
# u = 2^-24 (float32 unit roundoff, 1 ulp <= 2u relative), first order, for one entry S_pq = w_pq / sqrt(d_p d_q):
#   exp:    kernel 4u (ex2) + y u (tl.exp scales its argument y = dist / tau by log2(e): rounding that product
#           moves the exponent by y u, so the weight by y u relative); torch 4u. Distances and their division
#           by tau are correctly rounded on both sides, in the same order: no difference.
#   degree: sum of n = r^2 - 1 positive weights, summed in another order on each side: (n - 1) u each; through
#           1 / sqrt half of that, for d_p and d_q: (n - 1) u per side.
#   1/sqrt: kernel sqrt.rn + div.full = 1u + 4u; torch rsqrtf 4u; for p and q: 2 x 9u.
#   S:      two products per side: 4u.
# The product z - alpha S z adds the n-term sum on each side (FMA or not): 2 (n - 1) u of sum_q |S_pq z_q|.
# So |kernel - torch| <= u alpha (8 + y_max + 4 (n - 1) + 22) (|S| |z|) + 2u |z|, entry by entry: a worst-case
# bound (every rounding in the same direction); measured differences sit one to two orders below it, and any
# indexing or masking mistake changes entries by a whole weight, far above it.
U = 2.0**-24


def _product_bound(affinity, z, r, alpha, y_max):
    """Entry-wise bound on |kernel - torch| for ``z - alpha S z`` (see the derivation above)."""
    n = r * r - 1
    weighted = apply_stencil(affinity.abs(), z.abs(), r)  # sum_q |S_pq| |z_q|
    return U * alpha * (8 + y_max + 4 * (n - 1) + 22) * weighted + 2 * U * z.abs()


def _y_max(image, tau):
    """The largest exponent dist / tau of the image's graph: its Lab diameter over tau (an upper bound)."""
    lab = rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0], device=image.device)[:, None, None]
    span = lab.flatten(1).max(1).values - lab.flatten(1).min(1).values
    return float(span.norm()) / tau


def _cg_tolerance(affinity, r, alpha, y_max, steps, size):
    """Relative (to max |x|) tolerance of ``steps`` CG steps with the kernels against the torch path.

    The per-product bound above, normwise: eps_A = u alpha (30 + y_max + 4 (n - 1)) max_p sum_q |S_pq|; the CG's
    own vector work now differs too (the kernels' per-tile partial sums and fused updates against bmm and
    addcmul): about (log2(M) + 6) u per step. The solution of (I - alpha S) x = b moves by at most
    kappa = (1 + alpha) / (1 - alpha) times a relative change of the operator (39 at alpha = 0.95); the CG's
    k-step iterate is treated the same way.
    """
    n = r * r - 1
    row_sum = float(affinity.abs().sum(0).max())
    eps_a = U * alpha * (30 + y_max + 4 * (n - 1)) * row_sum
    kappa = (1 + alpha) / (1 - alpha)
    return kappa * (eps_a + steps * (math.log2(size) + 6) * U)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("height, width, r, channels", [(11, 17, 3, 1), (37, 29, 13, 21), (64, 80, 13, 171)])
def test_compiled_product_equals_torch_path_on_cuda(height, width, r, channels):
    g = torch.Generator().manual_seed(height * width + r)
    image = torch.rand(3, height, width, generator=g).cuda()
    z = (torch.rand(channels, height, width, generator=g) * 2 - 1).cuda()
    lab = rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0], device="cuda")[:, None, None]
    out = triton_kernels.fused_pixel_operator(lab, 0.05, r, 0.95)(z)
    affinity = pixel_affinity(image, tau=0.05, r=r)
    expected = apply_stencil(affinity, z, r).mul_(-0.95).add_(z)
    bound = _product_bound(affinity, z, r, 0.95, _y_max(image, 0.05))
    excess = ((out - expected).abs() - bound).max()
    assert excess <= 0, f"kernel differs from the torch path beyond the derived bound by {float(excess):.2e}"


@pytest.mark.gpu
@cuda
def test_auto_backend_uses_the_kernels_on_cuda_without_warning(monkeypatch, recwarn):
    monkeypatch.setattr(kernels, "_warned", False)
    g = torch.Generator().manual_seed(11)
    image, y = torch.rand(3, 45, 61, generator=g).cuda(), torch.rand(21, 45, 61, generator=g).cuda()
    tau, r = 0.05, 13  # tau keeps every weight above float32's subnormal range (exp(-y_max) > 2^-126)
    auto = propagate_pixels(y, image, tau=tau, r=r)
    assert triton_kernels._verdicts.get(str(image.device)) is True
    assert kernels.pixel_backend_ran(image.device, "auto") == "triton"
    assert not [w for w in recwarn if "Triton" in str(w.message)]
    torch_path = propagate_pixels(y, image, tau=tau, r=r, backend="torch")
    tolerance = _cg_tolerance(pixel_affinity(image, tau=tau, r=r), r, 0.95, _y_max(image, tau), 10, 45 * 61)
    difference = float((auto - torch_path).abs().max() / torch_path.abs().max())
    assert difference <= tolerance, f"relative difference {difference:.2e} above the derived {tolerance:.2e}"
    torch.testing.assert_close(propagate_pixels(y, image, tau=tau, r=r), auto, rtol=0, atol=0)  # deterministic
