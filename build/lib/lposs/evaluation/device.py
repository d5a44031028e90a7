"""Setting up the device a run computes on: which CUDA device is current, and the float32 precision mode.

Both are process-wide (per thread, for the current device) settings that tensors do not carry: Triton kernels and
a bare ``torch.cuda.synchronize()`` act on the *current* CUDA device, and TF32 is chosen by global flags. The
run (``main_eval.py``), the demo, the app and the benchmarks set them here, where they set up the device.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISION_MODES", "apply_precision", "current_device", "make_current"]

# What each value of the config key ``strict_float32`` means, for logs and reports.
PRECISION_MODES = {
    False: "paper (torch defaults: cuDNN convolutions may use TF32, matmuls float32)",
    True: "strict float32 (no TF32 anywhere)",
}


def apply_precision(strict_float32: bool) -> str:
    """Set the float32 mode of CUDA matmuls and convolutions; returns its description.

    ``False`` (the default, the paper's mode): torch's defaults, which the paper's code also ran with (torch 1.12:
    cuDNN TF32 on, matmul TF32 off) — the backbones' patch-embedding convolutions may run in TF32 (about 3
    decimal digits: unit roundoff 2^-11), every matmul in float32. ``True``: TF32 off for convolutions too. Set
    explicitly either way, so that a library that changed the flags does not change the run.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = not strict_float32
    return PRECISION_MODES[bool(strict_float32)]


def make_current(device: torch.device | str) -> None:
    """Make ``device`` the current CUDA device of the calling thread when it names one by index (``cuda:N``).

    Tensors carry their device, but Triton launches and ``torch.cuda.synchronize()`` without a device go to the
    current one, which is 0 in a fresh process or thread. Nothing happens for the CPU or a bare ``cuda``.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def current_device(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which ``device`` (``cuda:N``) is the calling thread's current CUDA device, restored after.

    For work that runs on threads the caller did not start (Gradio's workers start on device 0): the current
    device is per thread, so ``make_current`` in the main thread does not reach them.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()
