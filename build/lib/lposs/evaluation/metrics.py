"""mIoU and Boundary IoU as sum-reducible per-class counts, then a summary and a table.

Per image, ``iou_counts`` and ``boundary_iou_counts`` return count arrays; the caller sums them over the
dataset (and all-reduces them across ranks) before ``summarize``. No torch.distributed here. The counts are
computed in torch on the device of the inputs (on a GPU the maps never leave it) and equal mmsegmentation's
``intersect_and_union`` and the Boundary IoU reference code (cv2 erosions) bit for bit; see "Metrics" in
``docs/method.md``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from prettytable import PrettyTable

IGNORE_INDEX = 255

MapLike = np.ndarray | torch.Tensor


def _as_maps(pred: MapLike, label: MapLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps as int64 tensors on one device (the first tensor's; the CPU for two NumPy arrays)."""
    if tuple(pred.shape) != tuple(label.shape) or len(pred.shape) != 2:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} must be [H, W] maps of the same size"
        )
    device = next((m.device for m in (pred, label) if isinstance(m, torch.Tensor)), torch.device("cpu"))
    # NumPy maps are copied as int64 (torch refuses to share read-only arrays, as decoded images often are).
    pred_t, label_t = (
        torch.from_numpy(np.array(m, np.int64)) if isinstance(m, np.ndarray) else m for m in (pred, label)
    )
    return pred_t.to(device, torch.int64), label_t.to(device, torch.int64)


def _returned_like(counts: torch.Tensor, pred: MapLike) -> MapLike:
    """int64 tensor on the device for a tensor prediction; float64 NumPy (as before) for a NumPy one."""
    return counts if isinstance(pred, torch.Tensor) else counts.cpu().numpy().astype(np.float64)


def _class_histogram(values: torch.Tensor, where: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C]`` int64: how many pixels with ``where`` set hold each class; values outside ``[0, C)`` are dropped."""
    counted = where & (values >= 0) & (values < num_classes)
    binned = torch.where(counted, values, num_classes)  # everything not counted goes to an extra bin C
    return torch.bincount(binned.flatten(), minlength=num_classes + 1)[:num_classes]


def iou_counts(pred: MapLike, label: MapLike, num_classes: int, ignore_index: int = IGNORE_INDEX) -> MapLike:
    """Per-class areas of one image from one confusion matrix (one ``bincount`` of ``label * (C+1) + pred``).

    Equal to mmseg's ``intersect_and_union`` (tested bit for bit): pixels whose label is ``ignore_index`` are
    left out, and a value outside ``[0, C)`` is left out of the area it would fall in (as its ``histc`` does)
    while the other map's value of that pixel still counts.

    Args:
        pred: ``[H, W]`` integer class indices in ``[0, num_classes)``, NumPy or a tensor on any device.
        label: ``[H, W]`` integer class indices, ``ignore_index`` = ignored; already reduce_zero_label'ed.
        num_classes: ``C``.
        ignore_index: label value left out.

    Returns:
        ``[4, C]``: intersection, union, predicted area, label area (pixel counts); float64 NumPy for a NumPy
        ``pred``, an int64 tensor on ``pred``'s device for a tensor ``pred``.
    """
    pred_t, label_t = _as_maps(pred, label)
    valid = label_t != ignore_index
    label_bin, pred_bin = (torch.where((m >= 0) & (m < num_classes), m, num_classes) for m in (label_t, pred_t))
    # Codes (C + 1)^2 = ignored pixels, dropped below with the last bin.
    codes = torch.where(valid, label_bin * (num_classes + 1) + pred_bin, (num_classes + 1) ** 2)
    confusion = torch.bincount(codes.flatten(), minlength=(num_classes + 1) ** 2 + 1)[:-1]
    confusion = confusion.view(num_classes + 1, num_classes + 1)  # [label class, predicted class], C = out of range
    intersection = confusion.diagonal()[:num_classes]
    area_pred = confusion[:, :num_classes].sum(0)
    area_label = confusion[:num_classes].sum(1)
    counts = torch.stack([intersection, area_pred + area_label - intersection, area_pred, area_label])
    return _returned_like(counts, pred)


def boundary_width(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Number of 3 x 3 erosions: ``max(1, round(dilation_ratio * image diagonal))``."""
    # Python's round (half to even), as the reference's int(round(...)).
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def _sliding_max(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Maximum over the window ``[i - radius, i + radius]`` along ``dim``, positions outside ignored.

    By doubling (van Herk's idea in log steps): maxima over windows of 1, 2, 4, ... entries, then the window
    of ``2 radius + 1`` as two overlapping power-of-two windows: ``log2`` passes instead of ``2 radius + 1``.
    """
    size = x.shape[dim]
    pad = [0, 0] * (x.dim() - 1 - dim) + [radius, radius]
    running = F.pad(x, pad, value=torch.iinfo(x.dtype).min)  # [..., size + 2 radius, ...]; below any value
    window, span = 1, 2 * radius + 1
    while 2 * window <= span:
        length = running.shape[dim] - window
        running = torch.maximum(running.narrow(dim, 0, length), running.narrow(dim, window, length))
        window *= 2
    return torch.maximum(running.narrow(dim, 0, size), running.narrow(dim, span - window, size))


def uniform_neighbourhoods(values: torch.Tensor, iterations: int) -> torch.Tensor:
    """Where ``iterations`` 3 x 3 erosions of the zero-padded mask of a pixel's own class keep the pixel.

    The reference pads each class mask once with a ring of zeros and erodes it ``iterations`` times with cv2
    (whose border never erodes): a pixel survives iff every pixel of the ``(2n+1) x (2n+1)`` square around it,
    within the padded image, holds its class. That is one test for all classes at once: the square's minimum
    equals its maximum, with the ring holding a value no class has. Both are sliding maxima (the minimum being
    ``-max(-x)``) over a column and then a row (a square is their product), with positions outside the padded
    image ignored like cv2's non-eroding border.

    Args:
        values: ``[H, W]`` integer map (class ids in ``[0, 32767]``, the ignore index), any device.
        iterations: n >= 1.

    Returns:
        ``[H, W]`` bool.
    """
    h, w = values.shape
    # int16 halves the memory traffic of float32. Clamping only merges values outside [0, 32767], which are
    # never counted as classes: it changes nothing for any pixel of a class (it still differs from them).
    # The ring is -1, a value no class has.
    ring = F.pad(values.clamp(-1, 32767).to(torch.int16)[None], (1, 1, 1, 1), value=-1)  # [1, H+2, W+2]
    both = torch.cat([ring, -ring])  # [2, H+2, W+2]: the maximum of the second is minus the minimum
    both = _sliding_max(_sliding_max(both, iterations, dim=1), iterations, dim=2)
    return (both[0] == -both[1])[1 : h + 1, 1 : w + 1]


def mask_to_boundary(mask: MapLike, dilation_ratio: float = 0.02) -> MapLike:
    """Inner boundary of a binary mask (Cheng et al., Boundary IoU, CVPR 2021): mask minus its erosion.

    The mask is zero-padded by 1 pixel (so the image border counts as boundary), eroded with a 3 x 3
    kernel ``boundary_width(H, W, dilation_ratio)`` times, the padding cut off again.

    Args:
        mask: ``[H, W]`` in ``{0, 1}``, NumPy or a tensor on any device.
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        ``[H, W]`` uint8 in ``{0, 1}``, NumPy for a NumPy mask, else a tensor on the mask's device.
    """
    mask_t = (torch.from_numpy(np.array(mask, np.int64)) if isinstance(mask, np.ndarray) else mask).to(torch.int64)
    inside = uniform_neighbourhoods(mask_t, boundary_width(*mask_t.shape, dilation_ratio))
    boundary = ((mask_t != 0) & ~inside).to(torch.uint8)
    return boundary if isinstance(mask, torch.Tensor) else boundary.cpu().numpy()


def boundary_iou_counts(
    pred: MapLike,
    label: MapLike,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    dilation_ratio: float = 0.02,
) -> MapLike:
    """Per-class Boundary IoU counts of one image (see "Metrics" in ``docs/method.md``).

    The prediction is set to ``ignore_index`` where the label is ignored; for every class (a class in
    neither map has empty boundaries and counts 0) the boundaries of its label mask and of its predicted mask
    are compared. A pixel lies on the boundary of its own class's mask iff its neighbourhood is not uniform
    (``uniform_neighbourhoods``), so both maps need one pass each, whatever the number of classes.

    Args:
        pred: ``[H, W]`` integer class indices, NumPy or a tensor on any device.
        label: ``[H, W]`` integer class indices, ``ignore_index`` = ignored.
        num_classes: ``C``; values outside ``[0, C)`` are not counted.
        ignore_index: label value left out.
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        ``[2, C]``: boundary intersection, boundary union (pixel counts); float64 NumPy for a NumPy ``pred``,
        an int64 tensor on ``pred``'s device for a tensor ``pred``.
    """
    pred_t, label_t = _as_maps(pred, label)
    pred_t = torch.where(label_t == ignore_index, ignore_index, pred_t)
    iterations = boundary_width(*label_t.shape, dilation_ratio)
    label_edge = ~uniform_neighbourhoods(label_t, iterations)
    pred_edge = ~uniform_neighbourhoods(pred_t, iterations)
    label_boundary = _class_histogram(label_t, label_edge, num_classes)
    pred_boundary = _class_histogram(pred_t, pred_edge, num_classes)
    intersection = _class_histogram(label_t, label_edge & pred_edge & (label_t == pred_t), num_classes)
    counts = torch.stack([intersection, label_boundary + pred_boundary - intersection])
    return _returned_like(counts, pred)


def _as_numpy(counts: MapLike) -> np.ndarray:
    """Summed counts as float64 NumPy, from NumPy or a tensor on any device."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    return np.asarray(counts, dtype=np.float64)


def _percent_or_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) * 100 for v in values]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator  # 0 / 0 -> NaN: class absent from labels and predictions


def _nanmean_percent(values: np.ndarray) -> float | None:
    return None if np.all(np.isnan(values)) else float(np.nanmean(values)) * 100


def summarize(iou_sums: MapLike, boundary_sums: MapLike | None, class_names: list[str]) -> dict:
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
    iou_sums = _as_numpy(iou_sums)
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
        boundary_sums = _as_numpy(boundary_sums)
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
