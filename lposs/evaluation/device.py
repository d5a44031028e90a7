"""Setting up the device a run computes on: which CUDA device is current, and the float32 precision mode.

Both are process-wide (per thread, for the current device) settings that tensors do not carry: Triton kernels and
a bare ``torch.cuda.synchronize()`` act on the *current* CUDA device, and TF32 is chosen by global flags. The
run (``main_eval.py``), the demo, the app and the benchmarks set them here, where they set up the device; the
library API (``lposs.load``) sets them only for its own calls (:func:`precision`, :func:`current_device`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .config import ConfigError

__all__ = ["PRECISION_MODES", "apply_precision", "current_device", "make_current", "pick_device", "precision"]

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


@contextlib.contextmanager
def precision(strict_float32: bool) -> Iterator[str]:
    """:func:`apply_precision` for the block only: the three flags are as the caller had them afterwards."""
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        yield apply_precision(strict_float32)
    finally:
        torch.set_float32_matmul_precision(saved[0])  # sets matmul.allow_tf32 too: the saved flag comes after
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]


def pick_device(setting: str, current: bool = True) -> torch.device:
    """Config ``device`` (auto, cpu, cuda, cuda:N) -> a torch device; auto is CUDA when there is one.

    ``cuda:N`` must exist. With ``current`` it becomes the current device of the calling thread (Triton's launches
    and a bare ``synchronize()`` go to the current device, 0 unless set); the library API passes False and enters
    :func:`current_device` around its own calls instead.

    Raises:
        ConfigError: CUDA asked for where there is none, or a GPU index this machine lacks.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config value device={setting!r} is invalid: no CUDA device is available")
    device = torch.device(setting)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"config value device={setting!r} is invalid: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    if current:
        make_current(device)
    return device


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
