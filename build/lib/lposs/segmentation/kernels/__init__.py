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

__all__ = [
    "TritonBackendError",
    "fallback_reason",
    "pixel_backend_ran",
    "record_triton_failure",
    "warn_triton_fallback",
]

_warned = False
# Devices on which the Triton kernels were given up, and the first line of why: {"cuda:1": "out of resources"}.
_fallback_reasons: dict[str, str] = {}


def _key(device: torch.device | str) -> str:
    """``"cuda"`` names the current CUDA device: the key is the indexed name (``"cuda:0"``), as tensors give it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    if isinstance(error, str):
        return text.splitlines()[0] if text else "unknown failure"
    return text.splitlines()[0] if text else type(error).__name__


class TritonBackendError(RuntimeError):
    """An explicit ``backend="triton"`` (config ``pixel_backend=triton``) whose kernels failed on a device."""

    def __init__(self, device: torch.device | str, error: BaseException | str) -> None:
        super().__init__(
            f"pixel backend 'triton' failed on {device}: {_first_line(error)} "
            "(pixel_backend=auto falls back to the torch path with a warning; pixel_backend=torch skips Triton)"
        )


def warn_triton_fallback(device: torch.device | str, error: BaseException) -> None:
    """One warning per process: the Triton kernels failed on ``device``, the torch path is used instead.

    Every call records the reason for ``device`` (:func:`fallback_reason`), so that reports can say what ran.
    """
    global _warned
    reason = record_triton_failure(device, error)
    if not _warned:
        _warned = True
        warnings.warn(
            f"Triton pixel kernels unusable on {device} ({reason}); using the torch path (same result, slower)",
            RuntimeWarning,
            stacklevel=3,
        )


def record_triton_failure(device: torch.device | str, error: BaseException) -> str:
    """Remember the first failure of the Triton kernels on ``device``; returns its first line."""
    reason = _first_line(error)
    _fallback_reasons.setdefault(_key(device), reason)
    return reason


def fallback_reason(device: torch.device | str) -> str | None:
    """Why the Triton kernels were given up on ``device`` in this process, or None if they were not."""
    return _fallback_reasons.get(_key(device))


def pixel_backend_ran(device: torch.device | str, backend: str = "auto") -> str:
    """The pixel backend that ``propagate_pixels(..., backend=backend)`` on ``device`` used in this process.

    ``"triton"`` or ``"torch"``; after a fallback of ``"auto"``, ``"torch (Triton failed: <reason>)"``. An
    explicit ``"triton"`` never falls back (it raises), so it reports ``"triton"``. Call it after the run.
    """
    if backend == "torch" or (backend == "auto" and torch.device(device).type != "cuda"):
        return "torch"
    reason = fallback_reason(device)
    return "triton" if reason is None or backend == "triton" else f"torch (Triton failed: {reason})"
