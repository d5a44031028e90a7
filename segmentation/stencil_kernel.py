"""Optional compiled CPU kernel for the pixel-graph stencil product, with a pure-torch fallback.

The pixel-level matvec ``out[c, p] = sum_o S[o, p] z[c, p + o]`` is memory-bound as 168 shifted torch
multiply-adds; a loop that walks one image row at a time keeps the 13 rows it reads in cache and runs
2-3x faster. It is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (about 20 s once,
then cached by torch under ``~/.cache/torch_extensions``) and used for float32 CPU tensors only. Without a
C++ compiler, or with ``LPOSS_CPU_KERNEL=0``, ``apply_stencil`` keeps its pure-torch path (same result up to
float rounding), with one warning.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable

import torch

__all__ = ["cpu_stencil_kernel"]

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// out[c, y, x] += sum over offsets k = (dy, dx) of the r x r square without its centre, row-major,
// of S[k, y, x] * Z[c, y + dy, x + dx] for the channels c0 .. c0 + B - 1 (B = 1 or 4: four channels share
// each load of S). Neighbours outside the image contribute nothing.
template <int B>
static void stencil_row(const float* s, const float* z, float* o, int64_t H, int64_t W, int64_t half,
                        int64_t y, int64_t c0) {
  int64_t k = -1;
  for (int64_t dy = -half; dy <= half; ++dy) {
    for (int64_t dx = -half; dx <= half; ++dx) {
      if (dy == 0 && dx == 0) continue;
      ++k;
      const int64_t yy = y + dy;
      if (yy < 0 || yy >= H) continue;
      const int64_t x0 = dx < 0 ? -dx : 0, x1 = dx > 0 ? W - dx : W;
      const float* __restrict__ sr = s + (k * H + y) * W;
      const float* __restrict__ z0 = z + (c0 * H + yy) * W + dx;
      float* __restrict__ o0 = o + (c0 * H + y) * W;
      if (B == 1) {
        #pragma omp simd
        for (int64_t x = x0; x < x1; ++x) o0[x] += sr[x] * z0[x];
        continue;
      }
      const float* __restrict__ z1 = z0 + H * W;
      const float* __restrict__ z2 = z1 + H * W;
      const float* __restrict__ z3 = z2 + H * W;
      float* __restrict__ o1 = o0 + H * W;
      float* __restrict__ o2 = o1 + H * W;
      float* __restrict__ o3 = o2 + H * W;
      #pragma omp simd
      for (int64_t x = x0; x < x1; ++x) {
        const float w = sr[x];
        o0[x] += w * z0[x];
        o1[x] += w * z1[x];
        o2[x] += w * z2[x];
        o3[x] += w * z3[x];
      }
    }
  }
}

torch::Tensor apply_stencil(torch::Tensor S, torch::Tensor Z, int64_t r) {
  TORCH_CHECK(S.is_contiguous() && Z.is_contiguous(), "apply_stencil: contiguous tensors expected");
  TORCH_CHECK(S.scalar_type() == at::kFloat && Z.scalar_type() == at::kFloat, "apply_stencil: float32 expected");
  const int64_t C = Z.size(0), H = Z.size(1), W = Z.size(2), half = r / 2;
  TORCH_CHECK(S.size(0) == r * r - 1 && S.size(1) == H && S.size(2) == W, "apply_stencil: shape mismatch");
  auto out = torch::zeros_like(Z);
  const float* s = S.data_ptr<float>();
  const float* z = Z.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, H, 1, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      int64_t c = 0;
      for (; c + 4 <= C; c += 4) stencil_row<4>(s, z, o, H, W, half, y, c);
      for (; c < C; ++c) stencil_row<1>(s, z, o, H, W, half, y, c);
    }
  });
  return out;
}
"""

_kernel: Callable | None = None
_tried = False


def _compile_flags() -> tuple[str, list[str]]:
    """Module name and flags per CPU capability, so that a shared cache never serves a binary the CPU lacks."""
    capability = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    flags = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP in torch's CPU builds: without it, one thread
    if platform.machine() in ("x86_64", "AMD64") and capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return f"lposs_stencil_v3_{platform.machine()}_{capability}".lower(), flags


def cpu_stencil_kernel() -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None:
    """The compiled ``apply_stencil(S [r*r-1, H, W], Z [C, H, W], r) -> [C, H, W]``, or None if unavailable."""
    global _kernel, _tried
    if _tried:
        return _kernel
    _tried = True
    if os.environ.get("LPOSS_CPU_KERNEL", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        name, flags = _compile_flags()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = load_inline(
                name, cpp_sources=_SOURCE, functions=["apply_stencil"], extra_cflags=flags, extra_ldflags=["-fopenmp"]
            )
        _kernel = module.apply_stencil
    except Exception as error:  # no compiler, no headers, ...: the torch path gives the same result
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"compiled pixel-LP kernel unavailable ({first_line}); using the pure-torch stencil "
            "(same result, about 3x slower on CPU)",
            RuntimeWarning,
            stacklevel=2,
        )
    return _kernel
