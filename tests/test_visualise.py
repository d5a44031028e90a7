"""Drawing helpers: overlay maths against hand computations, legends, panels, palette PNGs, OverlayWriter."""

import numpy as np
import pytest
from PIL import Image

from lposs.evaluation.visualise import (
    IGNORE_COLOUR,
    OverlayWriter,
    colourise,
    draw_legend,
    overlay,
    palette,
    present_classes,
    save_png,
    side_by_side,
)

COLOURS = [(255, 0, 0), (0, 128, 255), (20, 200, 40)]


def colour_count(image: np.ndarray, colour) -> int:
    return int(np.all(image == np.asarray(colour, dtype=np.uint8), axis=-1).sum())


def test_overlay_blends_by_hand():
    image = np.array([[[100, 200, 51], [0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # [1, 3, 3]
    labels = np.array([[0, 1, 255]])
    out = overlay(image, labels, COLOURS, alpha=0.25)
    # 0.75 * image + 0.25 * colour, rounded; label 255 blends with black
    expected = np.array([[[139, 150, 38], [0, 32, 64], [191, 191, 191]]], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_overlay_alpha_ends_and_random_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    labels = rng.choice([0, 1, 2, 255], size=(20, 30))
    np.testing.assert_array_equal(overlay(image, labels, COLOURS, alpha=0.0), image)
    full = overlay(image, labels, COLOURS, alpha=1.0)
    for y, x in [(0, 0), (5, 7), (19, 29), (11, 3)]:
        colour = COLOURS[labels[y, x]] if labels[y, x] < 3 else IGNORE_COLOUR
        assert tuple(full[y, x]) == colour
        half = [(int(i) + c) / 2 for i, c in zip(image[y, x], colour)]
        assert np.all(np.abs(overlay(image, labels, COLOURS)[y, x].astype(float) - half) <= 0.5)


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        overlay(np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4), int), COLOURS)


def test_colourise_and_present_classes_ignore_255():
    labels = np.array([[0, 2], [255, 2]])
    out = colourise(labels, COLOURS)
    assert tuple(out[0, 0]) == COLOURS[0] and tuple(out[1, 1]) == COLOURS[2] and tuple(out[1, 0]) == (0, 0, 0)
    assert present_classes(labels, ["a", "b", "c"]) == [0, 2]


def test_palette_distinct_bright_and_dataset_first():
    colours = palette(200)
    assert len(set(colours)) == 200
    assert all(max(c) >= 170 for c in colours)  # value >= 0.7: never the black of ignored pixels
    assert palette(4, base=[[1, 2, 3], [4, 5, 6]])[:2] == [(1, 2, 3), (4, 5, 6)]
    assert len(palette(4, base=[[1, 2, 3]])) == 4


def test_draw_legend_lists_only_present_classes():
    names = ["cat", "dog", "sky"]
    image = np.full((60, 40, 3), 127, np.uint8)
    labels = np.zeros((60, 40), int)
    labels[30:] = 2
    present = present_classes(labels, names)
    assert present == [0, 2]
    out = draw_legend(image, names, present, COLOURS)
    assert out.shape[0] >= 60 and out.shape[1] > 40
    np.testing.assert_array_equal(out[:60, :40], image)
    panel = out[:, 40:]
    assert colour_count(panel, COLOURS[0]) > 20 and colour_count(panel, COLOURS[2]) > 20
    assert colour_count(panel, COLOURS[1]) == 0
    assert draw_legend(image, names, [], COLOURS) is image


def test_side_by_side_places_panels():
    a = np.full((30, 20, 3), 10, np.uint8)
    b = np.full((50, 25, 3), 200, np.uint8)
    out = side_by_side([("a", a), ("b", b)], gap=4)
    assert out.shape[1] == 20 + 4 + 25 and out.dtype == np.uint8
    title = out.shape[0] - 50
    np.testing.assert_array_equal(out[title : title + 30, :20], a)
    np.testing.assert_array_equal(out[title:, 24:], b)
    assert np.all(out[title + 30 :, :20] == 255)  # the shorter panel is padded with white


def test_save_png_palette_roundtrip(tmp_path):
    labels = np.array([[0, 1], [2, 1]])
    save_png(tmp_path / "sub" / "labels.png", labels, COLOURS)
    with Image.open(tmp_path / "sub" / "labels.png") as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), labels)
        assert picture.getpalette()[:9] == [c for colour in COLOURS for c in colour]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["labels.png"]  # no temporary file left


class FakeDataset:
    PALETTE = [[250, 0, 0], [0, 0, 250], [0, 250, 0]]
    img_infos = [{"filename": "city/a_leftImg8bit.png"}, {"filename": "b.jpg"}, {"filename": "c.jpg"}]


def test_overlay_writer_limit_names_and_dataset_palette(tmp_path):
    writer = OverlayWriter(tmp_path / "vis", ["road", "car", "tree"], FakeDataset(), limit=2)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 50, 3), dtype=np.uint8)
    prediction = rng.integers(0, 3, (120, 50))
    label = prediction.copy()
    label[:10] = 255
    paths = [writer(i, image, prediction, label) for i in range(3)]
    assert paths[2] is None
    written = sorted(p.relative_to(tmp_path / "vis").as_posix() for p in (tmp_path / "vis").rglob("*.png"))
    assert written == ["b.png", "city/a_leftImg8bit.png"]  # sub-folders kept: equal stems in two folders stay apart
    figure = np.asarray(Image.open(paths[0]).convert("RGB"))
    # bottom-left block: the prediction overlay in the dataset's colours
    dataset_colours = [tuple(c) for c in FakeDataset.PALETTE]
    np.testing.assert_array_equal(figure[-120:, :50], overlay(image, prediction, dataset_colours))
    label_panel = figure[-120:, 58:108]  # after the 8-pixel gap
    expected_ignored = image[:10].astype(float) / 2  # label 255: blended with black
    assert np.all(np.abs(label_panel[:10].astype(float) - expected_ignored) <= 0.5)
