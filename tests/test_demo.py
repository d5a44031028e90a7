"""tools/demo.py on tiny random-weight backbones: outputs for many image kinds, error handling, --compare."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY_OVERRIDES

from lposs.cli.demo import (
    ClassListError,
    ImageSegmenter,
    collect_images,
    main,
    method_settings,
    method_titles,
    parse_args,
    parse_classes,
    segment_files,
    to_rgb_array,
    unique_stems,
)
from lposs.evaluation.config import load_config
from lposs.segmentation import Segmentor

TINY = TINY_OVERRIDES
SMALL = ["short_side=112", "long_side=224", "crop=112", "stride=56"]  # 2-3 windows per 120 x 90 image
CLASSES = ["cat", "dog", "sky;cloud", "grass"]


@pytest.fixture(scope="module")
def config():
    return load_config("lposs_plus.yaml", TINY + SMALL)


@pytest.fixture(scope="module")
def backbones(config):
    from lposs.models import LPOSSBackbones

    torch.manual_seed(0)
    return LPOSSBackbones.from_config(config.model, "cpu").eval()


@pytest.fixture(scope="module")
def segmenter(backbones, config):
    from lposs.segmentation import SegmentorSettings

    return ImageSegmenter(backbones, SegmentorSettings.from_config(config), CLASSES)


def smooth_rgb(h=90, w=120, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))


def write_image(folder: Path, kind: str) -> tuple[Path, tuple[int, int]]:
    """An image file of ``kind``; returns its path and its displayed (width, height)."""
    rgb = smooth_rgb()
    if kind == "rgb":
        Image.fromarray(rgb).save(path := folder / "rgb.png")
    elif kind == "grey":
        Image.fromarray(rgb[:, :, 0]).save(path := folder / "grey.png")
    elif kind == "rgba":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:, :40] = 0
        Image.fromarray(np.dstack([rgb, alpha])).save(path := folder / "rgba.png")
    elif kind == "16bit":
        Image.fromarray(rgb[:, :, 1].astype(np.uint16) * 257).save(path := folder / "deep.png")
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        Image.fromarray(rgb).save(path := folder / "phone.jpg", exif=exif)
        return path, (90, 120)
    return path, (120, 90)


@pytest.mark.parametrize("kind", ["rgb", "grey", "rgba", "16bit", "exif"])
def test_outputs_have_the_input_size(tmp_path, segmenter, kind):
    path, size = write_image(tmp_path, kind)
    assert segment_files([path], segmenter, "lposs_plus", tmp_path / "out", CLASSES) == []
    with Image.open(tmp_path / "out" / f"{path.stem}_labels.png") as labels:
        assert labels.mode == "P" and labels.size == size
        assert np.asarray(labels).max() < len(CLASSES)
        present = set(np.unique(np.asarray(labels)).tolist())
        colours = labels.getpalette()
    with Image.open(tmp_path / "out" / f"{path.stem}_overlay.png") as figure:
        assert figure.size[1] >= size[1] and figure.size[0] > size[0]  # legend panel to the right
        legend = np.asarray(figure.convert("RGB"))[:, size[0] :]
    for c in range(len(CLASSES)):  # a swatch (exact palette colour) for each class found, none for the others
        swatch = np.all(legend == np.asarray(colours[3 * c : 3 * c + 3], np.uint8), axis=-1).sum()
        assert (swatch > 0) == (c in present), (c, present)


def test_image_conversions(tmp_path):
    rgb = smooth_rgb()
    rgba = np.dstack([rgb, np.where(np.arange(120) < 40, 0, 255).astype(np.uint8)[None].repeat(90, 0)])
    out = to_rgb_array(Image.fromarray(rgba))
    assert np.all(out[:, :40] == 255)  # transparent: the white background
    np.testing.assert_array_equal(out[:, 40:], rgb[:, 40:])
    deep = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    np.testing.assert_array_equal(to_rgb_array(deep)[0, :, 0], [0, 100, 255])
    path, _ = write_image(tmp_path, "exif")
    with Image.open(path) as picture:
        stored = np.asarray(picture.convert("RGB"))  # as stored, before the EXIF rotation
        np.testing.assert_array_equal(to_rgb_array(picture), np.rot90(stored, k=-1))


def test_parse_classes():
    assert parse_classes(" cat, dog ,sky ; cloud") == ["cat", "dog", "sky;cloud"]
    for bad, message in [
        ("", "empty"),
        (" , ", "empty name"),
        ("cat,,dog", "empty name"),
        ("cat;,dog", "empty name"),
        ("cat,Cat", "twice"),
        ("sky;cloud,cloud", "twice"),
    ]:
        with pytest.raises(ClassListError, match=message):
            parse_classes(bad)


def test_parse_args_splits_images_and_overrides():
    args = parse_args(["a.jpg", "k=200", "b.png", "--classes", "x", "--output", "o", "device=cpu"])
    assert args.images == [Path("a.jpg"), Path("b.png")] and args.overrides == ["k=200", "device=cpu"]


@pytest.mark.parametrize("classes", ["", "cat,cat", "cat,,dog"])
def test_bad_class_list_exits_2_before_models(tmp_path, capsys, monkeypatch, classes):
    from lposs import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models were loaded"))
    code = main(parse_args([str(tmp_path / "a.png"), "--classes", classes, "--output", str(tmp_path), *TINY]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --classes")


def test_config_error_exits_2(tmp_path, capsys):
    code = main(parse_args([str(tmp_path / "a.png"), "--classes", "a,b", "--output", str(tmp_path), "k=0"]))
    assert code == 2 and "k=0" in capsys.readouterr().err


def test_unreadable_image_is_reported_and_others_written(tmp_path, segmenter, capsys):
    (broken := tmp_path / "broken.png").write_bytes(b"not a png")
    good, _ = write_image(tmp_path, "rgb")
    failed = segment_files([broken, good, tmp_path / "missing.jpg"], segmenter, "lposs_plus", tmp_path / "out", CLASSES)
    assert failed == [broken, tmp_path / "missing.jpg"]
    assert (tmp_path / "out" / "rgb_labels.png").is_file() and (tmp_path / "out" / "rgb_overlay.png").is_file()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "broken.png" in errors[0] and "missing.jpg" in errors[1]


class CountingBackbones:
    def __init__(self, backbones):
        self.backbones, self.calls = backbones, 0
        self.alias_to_class, self.device = backbones.alias_to_class, backbones.device

    def set_classes(self, names):
        self.backbones.set_classes(names)
        self.alias_to_class = self.backbones.alias_to_class

    def __call__(self, windows):
        self.calls += 1
        return self.backbones(windows)


def test_compare_runs_backbones_once_and_matches_single_methods(backbones, config, tmp_path):
    from lposs.segmentation import SegmentorSettings

    counting = CountingBackbones(backbones)
    settings = SegmentorSettings.from_config(config)
    compare = ImageSegmenter(counting, settings, CLASSES, compare=True)
    image = smooth_rgb(seed=3)
    labels = compare(image)
    assert set(labels) == {"maskclip", "lposs", "lposs_plus"} and counting.calls == 1  # one batch of windows
    for method, result in labels.items():
        np.testing.assert_array_equal(result, Segmentor(backbones, method_settings(settings, method)).predict(image))
    path, _ = write_image(tmp_path, "rgb")
    assert segment_files([path], compare, "lposs_plus", tmp_path / "out", CLASSES) == []
    assert (tmp_path / "out" / "rgb_compare.png").is_file()


def test_compare_shows_the_heads_baseline(backbones, config, tmp_path, monkeypatch):
    """With model.clip.head=naclip the first panel is NACLIP's own prediction, titled so."""
    from lposs.cli import demo
    from lposs.models import LPOSSBackbones
    from lposs.segmentation import SegmentorSettings

    naclip = LPOSSBackbones(
        backbones.clip, backbones.tokenizer, backbones.dino, backbones.templates, clip_head="naclip"
    )
    settings = SegmentorSettings.from_config(config)
    compare = ImageSegmenter(naclip, settings, CLASSES, compare=True)
    expected = {"maskclip": "NACLIP", "lposs": "LPOSS (NACLIP)", "lposs_plus": "LPOSS+ (NACLIP)"}
    assert compare.titles == method_titles("naclip") == expected
    image = smooth_rgb(seed=4)
    baseline = Segmentor(naclip, method_settings(settings, "maskclip")).predict(image)
    np.testing.assert_array_equal(compare(image)["maskclip"], baseline)
    maskclip_baseline = Segmentor(backbones, method_settings(settings, "maskclip")).predict(image)
    assert not np.array_equal(baseline, maskclip_baseline)  # the head did change the baseline
    panels = []
    monkeypatch.setattr(demo, "side_by_side", lambda given: panels.extend(given) or given[0][1])
    path, _ = write_image(tmp_path, "rgb")
    assert segment_files([path], compare, "lposs_plus", tmp_path / "out", CLASSES, compare.titles) == []
    assert [title for title, _ in panels] == ["NACLIP", "LPOSS (NACLIP)", "LPOSS+ (NACLIP)"]
    assert method_titles() == {"maskclip": "MaskCLIP", "lposs": "LPOSS", "lposs_plus": "LPOSS+"}


def test_every_head_has_a_title_and_proxyclip_is_named():
    from lposs.cli.demo import HEAD_TITLES
    from lposs.models import CLIP_HEADS

    assert tuple(HEAD_TITLES) == CLIP_HEADS
    expected = {"maskclip": "ProxyCLIP", "lposs": "LPOSS (ProxyCLIP)", "lposs_plus": "LPOSS+ (ProxyCLIP)"}
    assert method_titles("proxyclip") == expected


def test_unique_stems():
    assert unique_stems([Path("a/x.jpg"), Path("b/x.png"), Path("y.png"), Path("c/x.gif")]) == ["x", "x-2", "y", "x-3"]


def test_collect_images_from_files_and_folders(tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "nested/c.png"):
        Image.fromarray(smooth_rgb()).save(folder / name, format="PNG" if name.endswith("png") else "JPEG")
    (folder / "notes.txt").write_text("not an image")
    single, _ = write_image(tmp_path, "rgb")
    found = collect_images([single, folder, folder / "b.png"])
    # the folder's images sorted by name, its sub-folder and other files left out, b.png once
    assert found == [single, folder / "a.JPG", folder / "b.png"]


def test_every_bad_input_is_reported_before_models_load(tmp_path, capsys, monkeypatch):
    from lposs import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models were loaded"))
    good, _ = write_image(tmp_path, "rgb")
    (broken := tmp_path / "broken.png").write_bytes(b"not a png")
    (empty := tmp_path / "empty").mkdir()
    missing = tmp_path / "missing.jpg"
    inputs = [str(good), str(missing), str(broken), str(empty)]
    code = main(parse_args([*inputs, "--classes", "cat,dog", "--output", str(tmp_path / "out"), *TINY]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "out").exists()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert str(missing) in lines[0] and "no such file" in lines[0]
    assert str(empty) in lines[1] and "no image files" in lines[1]
    assert str(broken) in lines[2] and "not a readable image" in lines[2]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "crop=200",
            "error: crop=200: expected 0 (the whole image) or a multiple of the patch sizes of model.clip.name='ViT-S-16' (16)",
        ),
        ("model.dino.name=resnet50", "error: model.dino.name='resnet50': a ResNet, not a ViT"),
        ("model.dtype=float16", "error: model.dtype='float16' on the CPU"),
    ],
)
def test_bad_model_config_exits_2_before_models(tmp_path, capsys, monkeypatch, override, expected):
    from lposs import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models were loaded"))
    good, _ = write_image(tmp_path, "rgb")
    argv = [str(good), "--classes", "cat,dog", "--output", str(tmp_path / "out"), *TINY, "device=cpu", override]
    code = main(parse_args(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(expected), lines


def test_end_to_end_folder_input(tmp_path, capsys, monkeypatch):
    """The command line as a user types it, in-process (tests/test_quiet_start.py starts tools/demo.py itself)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate(("b.png", "a.jpg")):
        Image.fromarray(smooth_rgb(seed=seed)).save(folder / name)
    argv = [str(folder), "--classes", "cat,dog,sky;cloud", "--method", "lposs", "--output", str(tmp_path / "out")]
    monkeypatch.chdir(tmp_path)
    assert main(parse_args([*argv, "device=cpu", *TINY, *SMALL])) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png"]
    # main() returned (no exception escaped), with no error line, and the label maps are whole, of the images' size
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith("error") or "images failed" in line], err
    for stem in ("a", "b"):
        labels = Image.open(tmp_path / "out" / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == (120, 90) and np.array(labels).max() <= 2
