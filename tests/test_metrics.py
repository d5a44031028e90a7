"""Metric counts against independent references: mmseg's own ``intersect_and_union`` and ``mean_iou``, a NumPy
bincount written here, Cheng et al.'s Boundary IoU code (cv2 erosions) and hand-computed numbers."""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from mmseg.core.evaluation import intersect_and_union, mean_iou

from lposs.evaluation.metrics import boundary_iou_counts, format_table, iou_counts, mask_to_boundary, summarize

NUM_CLASSES = 6  # class 5 never occurs: its IoU is NaN and left out of the mean


def random_maps(seed, shape=(23, 31), num_classes=5):
    """Blobby pred/label maps over classes 0..num_classes-1 with an ignored block in the label."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, size=(2, shape[0] // 4 + 1, shape[1] // 4 + 1))
    label, pred = (np.kron(c, np.ones((4, 4), np.int64))[: shape[0], : shape[1]] for c in coarse)
    pred = np.where(rng.random(shape) < 0.2, label, pred)  # some agreement
    label[rng.random(shape) < 0.1] = 255
    label[:3, :5] = 255
    return pred, label


def structured_maps(shape=(40, 57)):
    """Stripes, a checkerboard, single pixels, an ignored band touching the border, a class only predicted."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    label = (xx // 7) % 3  # vertical stripes of classes 0, 1, 2
    label[(yy // 3 + xx // 3) % 2 == 0] = np.where(yy < h // 2, 3, label)[(yy // 3 + xx // 3) % 2 == 0]
    label[h - 4 :, :] = 255  # ignored band along the bottom border
    label[h // 8, w // 8] = label[h // 2, 2 * w // 3] = 4  # single pixels
    pred = np.roll(label, 2, axis=1)
    pred[pred == 255] = 0
    pred[h // 4 : h // 2, w // 2 : 7 * w // 8] = 5  # class 5 appears only in the prediction
    return pred, label


def numpy_counts(pred, label, num_classes):
    """Intersection, union and areas by plain NumPy bincounts over the non-ignored pixels."""
    valid = label != 255
    pred, label = pred[valid], label[valid]
    area_pred = np.bincount(pred, minlength=num_classes)
    area_label = np.bincount(label, minlength=num_classes)
    inter = np.bincount(label[pred == label], minlength=num_classes)
    return np.stack([inter, area_pred + area_label - inter, area_pred, area_label]).astype(np.float64)


def mmseg_counts(pred, label, num_classes):
    areas = intersect_and_union(pred, label, num_classes, 255, label_map=dict(), reduce_zero_label=False)
    return np.stack([area.numpy() for area in areas]).astype(np.float64)


@pytest.mark.parametrize("num_classes", [6, 21, 171])
def test_iou_counts_equal_mmseg_and_a_numpy_bincount(num_classes):
    cases = [random_maps(seed, shape, min(num_classes, 40)) for seed, shape in enumerate([(23, 31), (64, 17)])]
    cases.append(structured_maps())
    for pred, label in cases:
        ours = iou_counts(pred, label, num_classes)
        assert ours.dtype == np.float64 and ours.shape == (4, num_classes)
        np.testing.assert_array_equal(ours, mmseg_counts(pred, label, num_classes))
        np.testing.assert_array_equal(ours, numpy_counts(pred, label, num_classes))
        as_tensor = iou_counts(torch.from_numpy(pred), torch.from_numpy(label.astype(np.uint8)), num_classes)
        assert as_tensor.dtype == torch.int64 and torch.equal(as_tensor, torch.from_numpy(ours).long())


def test_iou_counts_drop_out_of_range_values_like_mmseg():
    pred, label = random_maps(3, (30, 30))
    label[0, 10:20] = 7  # not ignored and not a class: mmseg's histc leaves it out of the label area only
    pred[5, :] = 9  # a prediction out of range: left out of the predicted area only
    np.testing.assert_array_equal(iou_counts(pred, label, NUM_CLASSES), mmseg_counts(pred, label, NUM_CLASSES))


def test_class_predicted_but_absent_from_the_label_counts_as_zero_iou():
    pred, label = structured_maps()
    assert not np.any(label == 5) and np.any(pred == 5)
    counts = iou_counts(pred, label, NUM_CLASSES)
    assert counts[0, 5] == 0 and counts[1, 5] == counts[2, 5] == np.count_nonzero((pred == 5) & (label != 255))
    summary = summarize(counts, None, [str(c) for c in range(NUM_CLASSES)])
    assert summary["IoU"]["5"] == 0.0  # a real zero that pulls the mean down, not a NaN left out
    assert summary["mIoU"] == pytest.approx(np.mean(counts[0] / counts[1]) * 100)


def test_summarize_leaves_union_zero_classes_out_of_the_mean():
    names = ["a", "b", "never", "missed"]
    iou_sums = np.array([[3, 1, 0, 0], [4, 4, 0, 5], [3, 4, 0, 0], [4, 1, 0, 5]], np.float64)
    boundary_sums = np.array([[1, 0, 0, 0], [2, 0, 0, 3]], np.float64)
    summary = summarize(torch.from_numpy(iou_sums), boundary_sums, names)
    assert summary["IoU"] == {"a": 75.0, "b": 25.0, "never": None, "missed": 0.0}
    assert summary["mIoU"] == pytest.approx((75 + 25 + 0) / 3)
    assert summary["aAcc"] == pytest.approx(4 / 10 * 100)
    assert summary["boundary_IoU"] == {"a": 50.0, "b": None, "never": None, "missed": 0.0}
    assert summary["boundary_mIoU"] == pytest.approx(25.0)
    empty = summarize(np.zeros((4, 2)), np.zeros((2, 2)), ["x", "y"])
    assert empty["mIoU"] is None and empty["boundary_mIoU"] is None and empty["aAcc"] is None
    json.dumps(summary)


def test_iou_counts_and_summary_match_mmseg_mean_iou():
    maps = [random_maps(seed, shape) for seed, shape in enumerate([(23, 31), (40, 17), (16, 16), (9, 50)])]
    sums = sum(iou_counts(pred, label, NUM_CLASSES) for pred, label in maps)
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    summary = summarize(sums, None, names)
    ref = mean_iou([p for p, _ in maps], [lab for _, lab in maps], NUM_CLASSES, ignore_index=255)
    ref_iou = np.asarray(ref["IoU"], dtype=np.float64)
    assert np.isnan(ref_iou[5]) and summary["IoU"]["class5"] is None
    np.testing.assert_allclose([summary["IoU"][n] for n in names[:5]], ref_iou[:5] * 100, rtol=1e-12)
    assert summary["mIoU"] == pytest.approx(np.nanmean(ref_iou) * 100, rel=1e-12)
    assert summary["aAcc"] == pytest.approx(float(ref["aAcc"]) * 100, rel=1e-12)


# ------------------------------------------------------------------------------------------ Boundary IoU


def cv2_mask_to_boundary(mask, dilation_ratio=0.02):
    """Cheng et al.'s reference (boundary_iou/utils/boundary_utils.py), as published."""
    h, w = mask.shape
    img_diag = np.sqrt(h**2 + w**2)
    dilation = int(round(dilation_ratio * img_diag))
    if dilation < 1:
        dilation = 1
    new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = np.ones((3, 3), dtype=np.uint8)
    new_mask_erode = cv2.erode(new_mask, kernel, iterations=dilation)
    mask_erode = new_mask_erode[1 : h + 1, 1 : w + 1]
    return mask - mask_erode


def cv2_boundary_counts(pred, label, num_classes, ratio=0.02):
    """Per-class reference counts: every class in the label or the prediction, prediction ignored with the label."""
    pred = np.where(label == 255, 255, pred)
    counts = np.zeros((2, num_classes))
    for c in np.union1d(np.unique(label), np.unique(pred)):
        if c < num_classes:
            gt_b = cv2_mask_to_boundary((label == c).astype(np.uint8), ratio)
            dt_b = cv2_mask_to_boundary((pred == c).astype(np.uint8), ratio)
            counts[:, c] = (gt_b & dt_b).sum(), (gt_b | dt_b).sum()
    return counts


@pytest.mark.parametrize("shape, ratio", [((23, 31), 0.02), ((120, 90), 0.02), ((64, 200), 0.05), ((7, 9), 0.3)])
def test_mask_to_boundary_equals_cv2_reference(shape, ratio):
    rng = np.random.default_rng(0)
    for density in (0.5, 0.9, 1.0):
        mask = (rng.random(shape) < density).astype(np.uint8)
        mask[shape[0] // 3 : shape[0] // 2, :] = 1  # a solid band through both side borders
        np.testing.assert_array_equal(mask_to_boundary(mask, ratio), cv2_mask_to_boundary(mask, ratio))


@pytest.mark.parametrize("shape, ratio", [((23, 31), 0.02), ((120, 90), 0.02), ((64, 200), 0.05), ((40, 57), 0.1)])
def test_boundary_iou_counts_equal_cv2_reference(shape, ratio):
    cases = [random_maps(seed, shape) for seed in range(3)] + [structured_maps(shape)]
    for pred, label in cases:
        expected = cv2_boundary_counts(pred, label, NUM_CLASSES, ratio)
        ours = boundary_iou_counts(pred, label, NUM_CLASSES, dilation_ratio=ratio)
        assert ours.dtype == np.float64
        np.testing.assert_array_equal(ours, expected)
        ours_t = boundary_iou_counts(torch.from_numpy(pred), label, NUM_CLASSES, dilation_ratio=ratio)
        assert ours_t.dtype == torch.int64 and torch.equal(ours_t, torch.from_numpy(expected).long())


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


def test_boundary_of_a_class_only_in_the_prediction_counts_in_the_union():
    label = np.zeros((64, 64), np.int64)  # all background
    pred = 2 * square(20, 20)  # a 10 x 10 square of class 2, which the label does not have
    counts = boundary_iou_counts(pred, label, num_classes=3)
    # Class 2: its 64-pixel ring (2 wide), shared with nothing. Class 0: the 496-pixel image-border ring in
    # both, plus the 96-pixel ring around the hole in the prediction only.
    np.testing.assert_array_equal(counts, [[496, 0, 0], [496 + 96, 0, 64]])
    summary = summarize(iou_counts(pred, label, 3), counts, ["bg", "unused", "only predicted"])
    assert summary["boundary_IoU"]["only predicted"] == 0.0
    assert summary["boundary_mIoU"] == pytest.approx(496 / 592 * 100 / 2)


def test_boundary_ignores_prediction_where_label_is_ignored():
    label, pred = square(20, 20), square(20, 20)
    label[:, 25:] = 255  # right half of the image ignored, the prediction there must not count
    pred[:, 40:] = 2
    counts = boundary_iou_counts(pred, label, num_classes=3)
    assert counts[1, 2] == 0 and counts[0, 2] == 0
    np.testing.assert_array_equal(counts[0], counts[1])  # otherwise a perfect prediction


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_cuda_equal_the_cpu():
    for pred, label in [random_maps(seed, (375, 500), 21) for seed in range(2)] + [structured_maps()]:
        pred_cuda, label_cuda = torch.from_numpy(pred).cuda(), torch.from_numpy(label).cuda()
        iou = iou_counts(pred_cuda, label_cuda, 21)
        boundary = boundary_iou_counts(pred_cuda, label_cuda, 21)
        assert iou.device.type == boundary.device.type == "cuda"
        np.testing.assert_array_equal(iou.cpu().numpy(), mmseg_counts(pred, label, 21))
        np.testing.assert_array_equal(boundary.cpu().numpy(), cv2_boundary_counts(pred, label, 21))


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
    assert math.isfinite(summarize(counts, None, ["a", "b"])["mIoU"])
