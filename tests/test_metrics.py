"""mIoU counts against mmseg's own mean_iou, Boundary IoU against hand-computed numbers and a NumPy
re-implementation of Cheng et al.'s mask_to_boundary."""

import json
import math

import numpy as np
import pytest
from mmseg.core.evaluation import mean_iou
from numpy.lib.stride_tricks import sliding_window_view

from segmentation.metrics import boundary_iou_counts, format_table, iou_counts, summarize

NUM_CLASSES = 6  # class 5 never occurs: its IoU is NaN and left out of the mean


def random_maps(seed, shape=(23, 31)):
    """Blobby pred/label maps over classes 0..4 with an ignored block in the label."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, size=(2, shape[0] // 4 + 1, shape[1] // 4 + 1))
    label, pred = (np.kron(c, np.ones((4, 4), np.int64))[: shape[0], : shape[1]] for c in coarse)
    pred = np.where(rng.random(shape) < 0.2, label, pred)  # some agreement
    label[rng.random(shape) < 0.1] = 255
    label[:3, :5] = 255
    return pred, label


def test_iou_counts_and_summary_match_mmseg():
    maps = [random_maps(seed, shape) for seed, shape in enumerate([(23, 31), (40, 17), (16, 16), (9, 50)])]
    sums = sum(iou_counts(pred, label, NUM_CLASSES) for pred, label in maps)
    assert sums.shape == (4, NUM_CLASSES) and sums.dtype == np.float64
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    summary = summarize(sums, None, names)
    ref = mean_iou([p for p, _ in maps], [lab for _, lab in maps], NUM_CLASSES, ignore_index=255)
    ref_iou = np.asarray(ref["IoU"], dtype=np.float64)
    assert np.isnan(ref_iou[5]) and summary["IoU"]["class5"] is None
    np.testing.assert_allclose([summary["IoU"][n] for n in names[:5]], ref_iou[:5] * 100, rtol=1e-12)
    assert summary["mIoU"] == pytest.approx(np.nanmean(ref_iou) * 100, rel=1e-12)
    assert summary["aAcc"] == pytest.approx(float(ref["aAcc"]) * 100, rel=1e-12)
    # Counts by plain bincount, ignored pixels left out.
    pred = np.concatenate([p[lab != 255] for p, lab in maps])
    label = np.concatenate([lab[lab != 255] for _, lab in maps])
    area_pred = np.bincount(pred, minlength=NUM_CLASSES)
    area_label = np.bincount(label, minlength=NUM_CLASSES)
    inter = np.bincount(label[pred == label], minlength=NUM_CLASSES)
    np.testing.assert_array_equal(sums, [inter, area_pred + area_label - inter, area_pred, area_label])
    json.dumps(summary)


def square(top, left, size=10, shape=(64, 64)):
    mask = np.zeros(shape, np.int64)
    mask[top : top + size, left : left + size] = 1
    return mask


def test_boundary_iou_hand_computed_square():
    # 64 x 64: dilation = round(0.02 * 90.5) = 2, so boundaries are 2 pixels wide.
    label, pred = square(20, 20), square(20, 21)  # prediction shifted right by one pixel
    counts = boundary_iou_counts(pred, label, num_classes=3)
    # Class 1: each 10 x 10 ring is 100 - 6 * 6 = 64 pixels; they share 4 rows x 9 columns + 6 rows x 2 = 48.
    # Class 0 (the rest): the image-border ring 64^2 - 60^2 = 496 plus a 14 x 14 - 10 x 10 = 96 ring around
    # the square; the two outer rings share 14 x 13 - 10 x 11 = 72 pixels.
    expected = np.array([[496 + 72, 48, 0], [2 * (496 + 96) - (496 + 72), 2 * 64 - 48, 0]], np.float64)
    np.testing.assert_array_equal(counts, expected)
    summary = summarize(iou_counts(pred, label, 3), counts, ["bg", "square", "absent"])
    assert summary["boundary_IoU"] == {
        "bg": pytest.approx(568 / 616 * 100),
        "square": pytest.approx(60.0),
        "absent": None,
    }
    assert summary["boundary_mIoU"] == pytest.approx((568 / 616 + 0.6) / 2 * 100)


def test_boundary_ignores_prediction_where_label_is_ignored():
    label, pred = square(20, 20), square(20, 20)
    label[:, 25:] = 255  # right half of the image ignored, the prediction there must not count
    pred[:, 40:] = 2
    counts = boundary_iou_counts(pred, label, num_classes=3)
    assert counts[1, 2] == 0 and counts[0, 2] == 0
    np.testing.assert_array_equal(counts[0], counts[1])  # otherwise a perfect prediction


def reference_mask_to_boundary(mask, dilation_ratio=0.02):
    """Cheng et al.'s mask_to_boundary from scratch: a pixel survives n erosions with a 3 x 3 kernel and
    zero padding iff its (2n+1) x (2n+1) neighbourhood, zeros outside the image, is all ones."""
    h, w = mask.shape
    n = max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))
    padded = np.pad(mask.astype(bool), n, constant_values=False)
    eroded = sliding_window_view(padded, (2 * n + 1, 2 * n + 1)).all(axis=(2, 3))
    return mask.astype(bool) & ~eroded


def reference_boundary_counts(pred, label, num_classes, ratio):
    pred = np.where(label == 255, 255, pred)
    counts = np.zeros((2, num_classes))
    for c in range(num_classes):
        gt_b = reference_mask_to_boundary(label == c, ratio)
        dt_b = reference_mask_to_boundary(pred == c, ratio)
        counts[:, c] = (gt_b & dt_b).sum(), (gt_b | dt_b).sum()
    return counts


@pytest.mark.parametrize("shape, ratio", [((23, 31), 0.02), ((120, 90), 0.02), ((64, 200), 0.05)])
def test_boundary_iou_matches_reference_implementation(shape, ratio):
    for seed in range(3):
        pred, label = random_maps(seed, shape)
        np.testing.assert_array_equal(
            boundary_iou_counts(pred, label, NUM_CLASSES, dilation_ratio=ratio),
            reference_boundary_counts(pred, label, NUM_CLASSES, ratio),
        )


def test_format_table_and_errors():
    counts = iou_counts(square(20, 21), square(20, 20), 2)
    table = format_table(
        summarize(counts, boundary_iou_counts(square(20, 21), square(20, 20), 2), ["background", "square"])
    )
    assert "square" in table and "Boundary IoU" in table and "mIoU" in table
    assert "Boundary" not in format_table(summarize(counts, None, ["background", "square"]))
    with pytest.raises(ValueError, match="same size"):
        iou_counts(np.zeros((4, 5), int), np.zeros((5, 4), int), 2)
    with pytest.raises(ValueError, match=r"expected \(4, 3\)"):
        summarize(counts, None, ["a", "b", "c"])
