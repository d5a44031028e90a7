"""External scores as initial scores: bilinear samples of a whole-image map at patch centres, or per-window scores
resized to the graph's grid."""

import pytest
import torch
import torch.nn.functional as F

from lposs.segmentation.external_scores import check_boxes, sample_at_centres, scores_per_window


def ramp(rows: int, cols: int) -> torch.Tensor:
    """[2, rows, cols]: channel 0 = row index, channel 1 = 10 x column index (bilinear reproduces it exactly)."""
    i, j = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([i, 10 * j])


def test_samples_follow_the_align_corners_false_convention():
    """Map pixel i of a map H' high over an image h high is centred at (i + 0.5) h / H': the image point y reads
    index y H' / h - 0.5; beyond the outer centres, the border value."""
    scores = ramp(5, 8)  # over an image of 20 x 40: a map pixel is 4 x 5 image pixels
    points = torch.tensor([[10.0, 20.0], [2.0, 2.5], [6.0, 7.5], [19.0, 39.0], [0.0, 0.0]])
    sampled = sample_at_centres(scores, points, (20, 40))
    expected = torch.tensor([[2.0, 35.0], [0.0, 0.0], [1.0, 10.0], [4.0, 70.0], [0.0, 0.0]])
    torch.testing.assert_close(sampled, expected)


def test_whole_image_scores_per_window_in_graph_order():
    """Window-major, then row-major patches, as the features' nodes: patch (a, b) of window (y1, x1) reads the map
    at (y1 + p / 2 + p a, x1 + p / 2 + p b)."""
    scores = ramp(32, 48)  # a map of the image's own size: index = pixel - 0.5 at a pixel centre
    boxes = [(0, 16, 0, 16), (16, 32, 32, 48)]
    out = scores_per_window(scores, boxes, (2, 2), (32, 48), patch_size=8)
    assert out.shape == (2, 2, 2, 2)
    assert out[1, 0].tolist() == [[16 + 4 - 0.5, 16 + 4 - 0.5], [16 + 12 - 0.5, 16 + 12 - 0.5]]
    assert out[1, 1].tolist() == [[10 * (32 + 4 - 0.5), 10 * (32 + 12 - 0.5)]] * 2


def test_window_scores_resized_only_when_the_grid_differs():
    coarse = torch.rand(3, 4, 7, 7)
    boxes = [(0, 224, 0, 224)] * 3
    assert scores_per_window(coarse, boxes, (7, 7), (224, 224), 32) is coarse  # used as they are
    resized = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.equal(scores_per_window(coarse, boxes, (28, 28), (224, 224), 8), resized)


def test_bad_shapes_and_boxes():
    with pytest.raises(ValueError, match=r"\[C, H, W\] for the image or \[2, C, h, w\]"):
        scores_per_window(torch.rand(5, 1, 4, 4), [(0, 8, 0, 8)] * 2, (4, 4), (8, 8), 2)
    with pytest.raises(ValueError, match="whole-image scores must be"):
        sample_at_centres(torch.rand(4, 4), torch.zeros(1, 2), (4, 4))
    check_boxes([(0, 8, 0, 8), (4, 12, 0, 8)], (12, 8))
    for boxes in ([], [(0, 8, 0, 8), (0, 4, 0, 4)], [(0, 16, 0, 8)]):
        with pytest.raises(ValueError, match="one size inside the resized image"):
            check_boxes(boxes, (12, 8))
