"""evaluate / evaluate_settings against per-image predictions and counts computed here, image by image."""

import numpy as np
import pytest
import torch
from fake_datasets import SHAPES, make_dataset
from PIL import Image
from test_segmentor import FakeBackbones

from lposs.datasets import build_dataset, load_image, load_label
from lposs.evaluation.loop import PredictionOutputs, evaluate, evaluate_settings
from lposs.evaluation.metrics import boundary_iou_counts, iou_counts
from lposs.segmentation import Segmentor, SegmentorSettings

NUM_CLASSES = 3  # FakeBackbones: 6 aliases of 3 classes
SETTINGS = SegmentorSettings(short_side=48, crop=32, stride=16, k=10, r=3, tau=0.05)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two images of different sizes and textures, labels with 3 classes (+ ignored), in the ADE20k layout."""
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, "ade20k")
    rng = np.random.default_rng(0)
    for i, (name, (h, w)) in enumerate(SHAPES.items()):
        image = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / "ADEChallengeData2016/images/validation" / f"{name}.jpg", quality=95)
        label = np.ones((h, w), np.uint8)  # reduce_zero_label: raw 1..3 -> classes 0..2
        label[: h // 2 + i * 5, :] = 2
        label[:, w // 3 :] += 1 - i  # different boundaries in the two images
        label[:3, :3] = 0  # ignored
        Image.fromarray(label).save(root / "ADEChallengeData2016/annotations/validation" / f"{name}.png")
    return build_dataset("ade20k", root)


def per_image_reference(dataset, settings):
    """Each image predicted on its own, its counts computed on its own, then summed with numpy."""
    segmentor = Segmentor(FakeBackbones(), settings)
    iou, boundary = [], []
    for idx in range(len(dataset)):
        image, _ = load_image(dataset, idx)
        label = load_label(dataset, idx)
        prediction = segmentor.predict(image)
        iou.append(iou_counts(prediction, label, NUM_CLASSES))
        boundary.append(boundary_iou_counts(prediction, label, NUM_CLASSES))
    return np.stack(iou), np.stack(boundary)


def test_boundary_counts_are_summed_over_images(dataset):
    iou, boundary = per_image_reference(dataset, SETTINGS)
    assert not np.array_equal(boundary[0], boundary[1])  # otherwise "last image only" would go unnoticed
    result = evaluate(Segmentor(FakeBackbones(), SETTINGS), dataset, NUM_CLASSES, measure_boundary=True, num_workers=0)
    np.testing.assert_array_equal(result.boundary_sums, boundary.sum(0))
    np.testing.assert_array_equal(result.iou_sums, iou.sum(0))
    assert result.num_images == 2


@pytest.mark.parametrize("image_batch", [1, 2])
def test_settings_in_one_pass_equal_separate_passes_at_any_batch_size(dataset, tmp_path, image_batch):
    grid = [SETTINGS, SegmentorSettings(**{**SETTINGS.__dict__, "k": 5, "pixel_refine": True})]
    saved = [tmp_path / "a", tmp_path / "b"]
    results = evaluate_settings(
        Segmentor(FakeBackbones(), SETTINGS),
        dataset,
        NUM_CLASSES,
        grid,
        outputs=[PredictionOutputs(save_dir=d) for d in saved],
        measure_boundary=True,
        num_workers=0,
        image_batch=image_batch,
    )
    for settings, result, folder in zip(grid, results, saved):
        iou, boundary = per_image_reference(dataset, settings)
        np.testing.assert_array_equal(result.iou_sums, iou.sum(0))
        np.testing.assert_array_equal(result.boundary_sums, boundary.sum(0))
        for idx, info in enumerate(dataset.img_infos):
            png = np.array(Image.open(folder / info["filename"].replace(".jpg", ".png")))
            np.testing.assert_array_equal(
                png, Segmentor(FakeBackbones(), settings).predict(load_image(dataset, idx)[0])
            )
    assert not np.array_equal(results[0].iou_sums, results[1].iou_sums)


def test_windows_of_several_images_share_forwards(dataset):
    """Two images (48 x 69 and 76 x 48 after resizing) in one batch: windows grouped by shape, chunks of
    window_batch, each image's encoding equal to encoding it alone."""
    calls = []

    class Counting(FakeBackbones):
        def __call__(self, windows):
            calls.append(windows.shape[0])
            return super().__call__(windows)

    segmentor = Segmentor(Counting(), SegmentorSettings(**{**SETTINGS.__dict__, "window_batch": 4}))
    images = [load_image(dataset, idx)[0] for idx in range(2)]
    together = segmentor.encode_batch([segmentor.resize(x) for x in images], [x.shape[:2] for x in images])
    assert sum(calls) == sum(len(e.boxes) for e in together) and max(calls) == 4
    for image, encoding in zip(images, together):
        alone = segmentor.encode(image)
        assert alone.boxes == encoding.boxes and alone.original_size == encoding.original_size
        torch.testing.assert_close(alone.features, encoding.features, rtol=0, atol=0)
        torch.testing.assert_close(alone.scores, encoding.scores, rtol=0, atol=0)


def test_counts_are_taken_on_the_segmentation_device(dataset, monkeypatch):
    """The label maps are counted where they were computed (a GPU's maps never go to the host for metrics)."""
    import lposs.evaluation.loop as evaluation

    seen = []

    def recording(counts):
        def wrapped(prediction, label, num_classes):
            seen.append((type(prediction), type(label), prediction.device, label.device))
            return counts(prediction, label, num_classes)

        return wrapped

    monkeypatch.setattr(evaluation, "iou_counts", recording(iou_counts))
    monkeypatch.setattr(evaluation, "boundary_iou_counts", recording(boundary_iou_counts))
    segmentor = Segmentor(FakeBackbones(), SETTINGS)
    evaluate(segmentor, dataset, NUM_CLASSES, measure_boundary=True, num_workers=0)
    device = segmentor.backbones.device
    assert len(seen) == 4 and all(entry == (torch.Tensor, torch.Tensor, device, device) for entry in seen)
