"""Optional compiled CPU kernels for label propagation, each with a pure-torch fallback in the engine.

Three loops that torch expresses only through large temporaries or sorts, written in ``cpu.cpp`` beside this file and
compiled together on first use by ``torch.utils.cpp_extension.load`` (about 30 s once, then cached by torch under
``~/.cache/torch_extensions``); used for float32 CPU tensors only:

- ``apply_stencil``: the pixel-level matvec ``out[c, p] = sum_o S[o, p] z[c, p + o]``. As 168 shifted torch
  multiply-adds it is memory-bound; a loop over one image row at a time keeps the 13 rows it reads in cache
  and runs 2-3x faster.
- ``topk_sorted_columns``: the exact k largest similarities of each row, in column order, by radix select
  (about 3x faster than ``torch.topk`` for k = 400 of 3000, and the column order saves the sort CSR needs).
- ``symmetric_normalised_csr``: ``D^-1/2 (W + W^T) D^-1/2`` without its diagonal straight into CSR, by a
  counting-sort transpose and a row merge, instead of an argsort and a sparse add.

Without a C++ compiler, or with ``LPOSS_CPU_KERNEL=0``, the engine keeps its pure-torch paths (same result up
to float rounding), with one warning. ``LPOSS_CPU_KERNEL=require`` turns a failed build into an error (the
test suite sets it wherever a compiler exists).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["KernelBuildError", "build_error", "compiler_available", "cpu_kernels", "cpu_kernels_for"]

_SOURCE_FILE = Path(__file__).with_name("cpu.cpp")  # the kernels and their Python bindings

_module: ModuleType | None = None
_build_error: str | None = None  # first line of the error of a failed build
_tried = False
_warned = False


class KernelBuildError(RuntimeError):
    """The CPU kernels failed to build while ``LPOSS_CPU_KERNEL=require`` (the test suite's setting)."""


def _compile_flags() -> tuple[str, list[str]]:
    """Module name and flags per CPU capability, so that a shared cache never serves a binary the CPU lacks.

    The name also carries a hash of the source, its path and the flags: a changed source is built under a new
    name (its own folder in torch's cache) and never collides with a build of another version running at the
    same time; two checkouts of the repository get a folder each, since torch's build file names the source by
    its path and would otherwise rebuild whenever the other checkout was used last.
    """
    capability = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    flags = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP in torch's CPU builds: without it, one thread
    if platform.machine() in ("x86_64", "AMD64") and capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    identity = [_SOURCE_FILE.read_text(), str(_SOURCE_FILE.resolve()), *flags]
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:12]
    return f"lposs_cpu_kernels_{platform.machine()}_{capability}_{digest}".lower(), flags


def compiler_available() -> bool:
    """Whether the C++ compiler torch's extension builder uses (``$CXX``, else ``c++``) is on the PATH."""
    compiler = os.environ.get("CXX", "c++").split()
    return bool(compiler) and shutil.which(compiler[0]) is not None


def build_error() -> str | None:
    """First line of the error of the failed build, None when the kernels built or were not tried."""
    return _build_error


def _error_line(error: Exception) -> str:
    """The compiler's first ``error:`` line when there is one (torch puts the build command first), else line 1."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[0] if lines else type(error).__name__)


def _build() -> ModuleType:
    """Compile (or load from torch's cache) the extension; raises whatever the build raises."""
    # On a machine without CUDA, importing cpp_extension logs "No CUDA runtime is found": true, and
    # irrelevant to a CPU-only extension, so it is kept out of the user's log.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        extension_log.setLevel(level)
    name, flags = _compile_flags()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(name, sources=[str(_SOURCE_FILE)], extra_cflags=flags, extra_ldflags=["-fopenmp"])


def cpu_kernels() -> ModuleType | None:
    """The compiled module (``apply_stencil``, ``topk_sorted_columns``, ``symmetric_normalised_csr``) or None.

    ``LPOSS_CPU_KERNEL``: ``0`` never builds (None); unset or ``1`` builds on first use and, when that fails
    (no compiler, no headers, ...), returns None with one ``RuntimeWarning`` for the process, the engine
    keeping its pure-torch paths; ``require`` raises ``KernelBuildError`` instead (the test suite sets it
    where a compiler exists, so that a kernel that does not build fails the tests). The build is tried once
    per process.
    """
    global _module, _build_error, _tried, _warned
    mode = os.environ.get("LPOSS_CPU_KERNEL", "1")
    if mode == "0":
        return None
    if not _tried:
        _tried = True
        try:
            _module = _build()
        except Exception as error:  # the pure-torch paths give the same result
            _build_error = _error_line(error)
    if _module is None and mode == "require":
        raise KernelBuildError(f"the compiled CPU kernels failed to build: {_build_error}")
    if _module is None and not _warned:
        _warned = True
        warnings.warn(
            f"compiled CPU kernels for label propagation unavailable ({_build_error}); using the pure-torch paths "
            "(same result, 2-3x slower on CPU)",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def cpu_kernels_for(*tensors: torch.Tensor) -> ModuleType | None:
    """The compiled CPU kernels if every tensor is a float32 CPU tensor and they are available, else None."""
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return cpu_kernels()
    return None
