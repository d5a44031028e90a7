"""Compiled kernels behind the label-propagation engine, each checked against (or falling back to) its torch path.

- :mod:`segmentation.kernels.cpu`: C++ loops for the CPU (``cpu.cpp``: stencil product, top-k, CSR), built on
  first use by torch's extension loader;
- :mod:`segmentation.kernels.triton_pixel`: fused Triton kernels for the pixel level on CUDA (or on CPU tensors
  under ``TRITON_INTERPRET=1``).

Neither is imported here: the engine imports them where it uses them, so that a torch without Triton or a
machine without a compiler still loads the package.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["warn_triton_fallback"]

_warned = False


def warn_triton_fallback(device: torch.device | str, error: BaseException) -> None:
    """One warning per process: the Triton kernels failed on ``device``, the torch path is used instead."""
    global _warned
    if not _warned:
        _warned = True
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"Triton pixel kernels unusable on {device} ({reason}); using the torch path (same result, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
