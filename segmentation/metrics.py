"""mIoU and Boundary IoU as sum-reducible per-class counts (SPEC section 2), then a summary and a table.

Per image, ``iou_counts`` and ``boundary_iou_counts`` return count arrays; the caller sums them over the
dataset (and all-reduces them across ranks) before ``summarize``. No torch.distributed here.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from mmseg.core.evaluation import intersect_and_union
from prettytable import PrettyTable

IGNORE_INDEX = 255


def _check_maps(pred: np.ndarray, label: np.ndarray) -> None:
    if pred.shape != label.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} must be [H, W] maps of the same size")


def iou_counts(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-class areas of one image, computed by mmseg's own ``intersect_and_union``.

    Args:
        pred: ``[H, W]`` integer class indices in ``[0, num_classes)``.
        label: ``[H, W]`` integer class indices, ``ignore_index`` = ignored; already reduce_zero_label'ed.
        num_classes: ``C``.
        ignore_index: label value left out.

    Returns:
        ``[4, C]`` float64: intersection, union, predicted area, label area (pixel counts).
    """
    _check_maps(pred, label)
    areas = intersect_and_union(
        np.ascontiguousarray(pred, dtype=np.int64),
        np.ascontiguousarray(label, dtype=np.int64),
        num_classes,
        ignore_index,
        label_map=dict(),
        reduce_zero_label=False,
    )
    return np.stack([area.numpy() for area in areas]).astype(np.float64)


def mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Inner boundary of a binary mask (Cheng et al., Boundary IoU, CVPR 2021).

    The mask is zero-padded by 1 pixel (so the image border counts as boundary), eroded with a 3 x 3
    kernel ``max(1, round(dilation_ratio * diagonal))`` times, the padding cut off again.

    Args:
        mask: ``[H, W]`` uint8 in ``{0, 1}``.
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        ``[H, W]`` uint8 in ``{0, 1}``: mask minus its erosion.
    """
    h, w = mask.shape
    # Python's round (half to even), as the reference's int(round(...)).
    iterations = max(1, int(round(dilation_ratio * math.sqrt(h**2 + w**2))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=iterations)
    return mask - eroded[1 : h + 1, 1 : w + 1]


def boundary_iou_counts(
    pred: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    dilation_ratio: float = 0.02,
) -> np.ndarray:
    """Per-class Boundary IoU counts of one image (SPEC section 2).

    The prediction is set to ``ignore_index`` where the label is ignored; for each class occurring in the
    label or the prediction, the boundaries of both class masks are compared.

    Args:
        pred: ``[H, W]`` integer class indices.
        label: ``[H, W]`` integer class indices, ``ignore_index`` = ignored.
        num_classes: ``C``; values outside ``[0, C)`` are not counted.
        ignore_index: label value left out.
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        ``[2, C]`` float64: boundary intersection, boundary union (pixel counts).
    """
    _check_maps(pred, label)
    pred = np.where(label == ignore_index, ignore_index, pred)
    counts = np.zeros((2, num_classes), dtype=np.float64)
    present = np.union1d(np.unique(label), np.unique(pred))
    for c in present[(present >= 0) & (present < num_classes)]:
        label_boundary = mask_to_boundary((label == c).astype(np.uint8), dilation_ratio)
        pred_boundary = mask_to_boundary((pred == c).astype(np.uint8), dilation_ratio)
        counts[0, c] = np.count_nonzero(label_boundary & pred_boundary)
        counts[1, c] = np.count_nonzero(label_boundary | pred_boundary)
    return counts


def _percent_or_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) * 100 for v in values]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator  # 0 / 0 -> NaN: class absent from labels and predictions


def _nanmean_percent(values: np.ndarray) -> float | None:
    return None if np.all(np.isnan(values)) else float(np.nanmean(values)) * 100


def summarize(iou_sums: np.ndarray, boundary_sums: np.ndarray | None, class_names: list[str]) -> dict:
    """Dataset metrics from the summed counts.

    Args:
        iou_sums: ``[4, C]`` sum of ``iou_counts`` over the dataset.
        boundary_sums: ``[2, C]`` sum of ``boundary_iou_counts``, or None.
        class_names: ``C`` names (keys of the per-class dicts).

    Returns:
        ``mIoU`` (nanmean of the class IoUs, %), ``IoU`` (name -> % or None for a class with union 0),
        ``aAcc`` (%), ``boundary_mIoU`` (% or None), ``boundary_IoU`` (name -> % or None; empty without
        boundary counts). JSON-serialisable.
    """
    iou_sums = np.asarray(iou_sums, dtype=np.float64)
    if iou_sums.shape != (4, len(class_names)):
        raise ValueError(f"iou_sums has shape {iou_sums.shape}; expected (4, {len(class_names)})")
    iou = _ratio(iou_sums[0], iou_sums[1])
    label_total = iou_sums[3].sum()
    summary = {
        "mIoU": _nanmean_percent(iou),
        "IoU": dict(zip(class_names, _percent_or_none(iou))),
        "aAcc": float(iou_sums[0].sum() / label_total) * 100 if label_total > 0 else None,
        "boundary_mIoU": None,
        "boundary_IoU": {},
    }
    if boundary_sums is not None:
        boundary_sums = np.asarray(boundary_sums, dtype=np.float64)
        if boundary_sums.shape != (2, len(class_names)):
            raise ValueError(f"boundary_sums has shape {boundary_sums.shape}; expected (2, {len(class_names)})")
        boundary_iou = _ratio(boundary_sums[0], boundary_sums[1])
        summary["boundary_mIoU"] = _nanmean_percent(boundary_iou)
        summary["boundary_IoU"] = dict(zip(class_names, _percent_or_none(boundary_iou)))
    return summary


def _cell(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2f}"


def format_table(summary: dict) -> str:
    """Per-class IoU (and Boundary IoU) table followed by the summary row, as mmseg prints it."""
    with_boundary = bool(summary["boundary_IoU"])
    per_class = PrettyTable()
    per_class.field_names = ["Class", "IoU"] + (["Boundary IoU"] if with_boundary else [])
    for name, value in summary["IoU"].items():
        row = [name, _cell(value)]
        if with_boundary:
            row.append(_cell(summary["boundary_IoU"][name]))
        per_class.add_row(row)
    total = PrettyTable()
    total.field_names = ["aAcc", "mIoU"] + (["Boundary mIoU"] if with_boundary else [])
    total.add_row(
        [_cell(summary["aAcc"]), _cell(summary["mIoU"])] + ([_cell(summary["boundary_mIoU"])] if with_boundary else [])
    )
    return f"per class results:\n{per_class.get_string()}\nSummary:\n{total.get_string()}"
