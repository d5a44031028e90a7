"""Resize, window grid, patch centres (any patch size) and window merging (SPEC steps 2, 3, 8 and 9)."""

import mmcv
import numpy as np
import pytest
import torch

from lposs.segmentation import merge_windows, patch_centres, window_boxes
from lposs.segmentation.windows import floor_to_multiple, resize_to_fit


def smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(mmcv.imresize(small, (w, h), interpolation="bilinear"))


def test_default_windows_of_a_voc_sized_image():
    # 500 x 375 -> 597 x 448: 3 x 5 windows of 224, the last ones moved back to the border.
    assert mmcv.imrescale(np.zeros((375, 500, 3), np.uint8), (2048, 448)).shape[:2] == (448, 597)
    boxes = window_boxes(448, 597)
    assert len(boxes) == 3 * 5
    assert boxes[-1] == (224, 448, 373, 597)
    assert {b[1] - b[0] for b in boxes} == {224} and {b[3] - b[2] for b in boxes} == {224}


def test_resize_equals_mmcv_imrescale():
    for h, w in [(375, 500), (1024, 2048), (333, 4000), (50, 60)]:
        image = smooth_image(h, w, seed=h)
        np.testing.assert_array_equal(resize_to_fit(image), mmcv.imrescale(image, (2048, 448)))


def test_small_image_gives_single_smaller_window():
    assert window_boxes(100, 150) == [(0, 100, 0, 150)]


def test_crop_0_is_one_window_the_whole_image_floor_cropped_for_the_backbones():
    assert window_boxes(336, 458, 0) == window_boxes(336, 458, 0, 999) == [(0, 336, 0, 458)]  # stride unused
    image = torch.rand(3, 336, 458)
    seen = floor_to_multiple(image, 16)
    assert seen.shape == (3, 336, 448) and torch.equal(seen, image[:, :, :448])  # the last 10 columns unseen
    assert floor_to_multiple(image, 112).shape == (3, 336, 448)
    assert patch_centres([(0, 336, 0, 458)], (21, 28))[-1].tolist() == [328.0, 440.0]  # from the origin 0
    with pytest.raises(ValueError, match="crop=0 .* 336 x 458, smaller than 400"):
        floor_to_multiple(image, 400)


def test_patch_centres_are_window_origin_plus_half_patch():
    boxes = [(0, 224, 0, 224), (112, 336, 224, 448)]
    centres = patch_centres(boxes, (14, 14))
    assert centres.shape == (2 * 196, 2)
    assert centres[0].tolist() == [8.0, 8.0] and centres[13].tolist() == [8.0, 216.0]
    assert centres[196 + 14].tolist() == [112 + 8 + 16, 224 + 8]  # second window, row 1, column 0


def test_merge_windows_averages_overlaps():
    boxes = [(0, 4, 0, 4), (0, 4, 2, 6)]
    scores = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])  # constant per window
    canvas = merge_windows(scores, boxes, 4, 6)
    expected = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]).expand(1, 4, 6)
    torch.testing.assert_close(canvas, expected)


def test_patch_centres_of_other_patch_sizes():
    """DINO ViT-B/8 (28 x 28 grid of a 224 window) and DINOv2 /14 (16 x 16): origin + p / 2 + p a."""
    boxes = [(0, 224, 0, 224), (112, 336, 224, 448)]
    for patch, side in ((8, 28), (14, 16)):
        centres = patch_centres(boxes, (side, side), patch_size=patch)
        assert centres.shape == (2 * side * side, 2)
        assert centres[0].tolist() == [patch / 2, patch / 2]
        assert centres[side - 1].tolist() == [patch / 2, 224 - patch / 2]  # the last column ends at the window's edge
        assert centres[side * side + side + 2].tolist() == [112 + patch / 2 + patch, 224 + patch / 2 + 2 * patch]
