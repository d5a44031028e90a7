"""The operator contract of :func:`segmentation.label_propagation.conjugate_gradient`.

A matvec is either a plain function ``x [C, *] -> A x`` (a new tensor per call) or an :class:`InPlaceOperator`,
which writes ``A x`` into a buffer the solver owns and may hand back, on the way, what the solver would otherwise
compute in extra passes over memory: the dot products ``x . A x`` of the columns, and the fused vector update of
one CG step. This module holds the contract only; the fused Triton kernels that fill it live in
:mod:`segmentation.kernels.triton_pixel`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["InPlaceOperator"]

# (x, out) -> x.Ax per column [C], or None when not computed on the way
Apply = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]
# (x, r, p, ap, step [C]) -> r.r per column [C] after x += step p, r -= step ap; None: not done, do it yourself
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class InPlaceOperator:
    """A symmetric positive-definite ``A`` that writes ``A x`` into a buffer owned by the caller.

    Args:
        apply: ``(x [C, *], out [C, *]) -> x.Ax [C] | None``: writes ``A x`` into ``out`` (same shape, dtype,
            device and strides as ``x``); returns the column dot products ``x . A x`` when it computes them on
            the way (a fused kernel's epilogue), else None and the solver computes them.
        update: optional ``(x, r, p, ap, step [C]) -> r.r [C] | None``: one CG step's ``x += step p``,
            ``r -= step ap`` in place, returning the new ``r . r`` per column; None means it did nothing (a
            fallback) and the solver does the update itself.

    Calling the operator like a plain matvec (``op(x)``) still works: it allocates the result.
    """

    def __init__(self, apply: Apply, update: Update | None = None) -> None:
        self.apply = apply
        self.update = update

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``A x [C, *]`` in a new tensor (the plain matvec call style)."""
        out = torch.empty_like(x)
        self.apply(x, out)
        return out
