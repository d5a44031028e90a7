"""The Triton pixel kernels: through the CPU interpreter in a child process, and compiled on a GPU.

``TRITON_INTERPRET=1`` only takes effect if it is set before ``triton`` is first imported, and then holds for
the whole process: set here, it would also turn this run's GPU tests into interpreter runs. So the interpreter
cases (``tests/triton_interpreter_cases.py``) run in a child ``pytest`` with the variable set, and this file
asserts that child passed; the compiled kernels are tested below on CUDA.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segmentation.kernels as kernels
from segmentation.label_propagation import apply_stencil, pixel_affinity, propagate_pixels, rgb_to_lab

triton = pytest.importorskip("triton", reason="triton is not installed (it comes with torch's CUDA wheels)")
triton_kernels = pytest.importorskip("segmentation.kernels.triton_pixel")

TESTS = Path(__file__).resolve().parent
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_kernels_under_the_interpreter_equal_the_torch_path():
    env = dict(os.environ, TRITON_INTERPRET="1")
    cases = TESTS / "triton_interpreter_cases.py"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
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


@pytest.mark.parametrize("kernel_name", ["_propagation_product_kernel", "_inverse_sqrt_degree_kernel"])
def test_kernels_compile_for_an_nvidia_gpu_without_one(kernel_name):
    # The interpreter runs some programs the GPU compiler refuses (a scalar/block mismatch, a non-power-of-two
    # block): compile for an H100 (sm_90) with the ptxas that ships with triton, no GPU needed.
    if triton_kernels.interpreted():
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    kernel = getattr(triton_kernels, kernel_name)
    sizes = {"TILE_H": triton_kernels.TILE_H, "TILE_W": triton_kernels.TILE_W, "BLOCK_C": triton_kernels.BLOCK_C}
    constants = {name: value for name, value in sizes.items() if name in kernel.arg_names}
    try:
        compiled = triton.compile(ASTSource(kernel, _signature(kernel), constants), target=GPUTarget("cuda", 90, 32))
    except FileNotFoundError as error:  # a triton build without its bundled ptxas
        pytest.skip(f"no ptxas to compile for sm_90: {error}")
    assert compiled.asm["cubin"]  # machine code: ptxas accepted it


# ------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("height, width, r, channels", [(11, 17, 3, 1), (37, 29, 13, 21), (64, 80, 13, 171)])
def test_compiled_product_equals_torch_path_on_cuda(height, width, r, channels):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, height, width, generator=g).cuda()
    z = (torch.rand(channels, height, width, generator=g) * 2 - 1).cuda()
    lab = rgb_to_lab(image) / torch.tensor([100.0, 128.0, 128.0], device="cuda")[:, None, None]
    out = triton_kernels.fused_pixel_operator(lab, 0.05, r, 0.95)(z)
    expected = apply_stencil(pixel_affinity(image, tau=0.05, r=r), z, r).mul_(-0.95).add_(z)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.gpu
@cuda
def test_auto_backend_uses_the_kernels_on_cuda_without_warning(monkeypatch, recwarn):
    monkeypatch.setattr(kernels, "_warned", False)
    image, y = torch.rand(3, 45, 61).cuda(), torch.rand(21, 45, 61).cuda()
    auto = propagate_pixels(y, image)
    assert triton_kernels._verdicts.get(str(image.device)) is True
    assert not [w for w in recwarn if "Triton" in str(w.message)]
    torch.testing.assert_close(auto, propagate_pixels(y, image, backend="torch"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(propagate_pixels(y, image), auto, rtol=0, atol=0)  # deterministic
