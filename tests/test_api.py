"""The one-line API (``lposs.load``) and the package face, on tiny random-weight backbones."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_main_eval import SMALL, TINY_TEXT, shared_backbones  # noqa: F401 (fixture: backbones built once)

import lposs
import lposs.segmentation
from lposs.evaluation.config import ConfigError, resolve_config_path
from lposs.models import LPOSSBackbones

CLASSES = ["sky;cloud", "tree", "person"]
# The 3-block tiny CLIP: on these images LPOSS+ gives 2-3 labels (ViT-S-16's random scores give one class
# everywhere, and a constant label map equals any other).
OVERRIDES = [*TINY_TEXT, *SMALL]
BUILD_BACKBONES = LPOSSBackbones.__dict__["from_config"]  # before shared_backbones caches it for each test


def assert_varies(labels: np.ndarray) -> None:
    """A label map worth comparing: at least two labels (a constant map equals any other)."""
    assert len(np.unique(labels)) >= 2, "the label map is constant: a comparison of it shows nothing"


def _image(height: int = 40, width: int = 56) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) % 256
    image[: height // 2, : width // 3] = (200, 30, 30)  # a block with an edge for the pixel level to keep
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def predictor():
    return lposs.load("lposs_plus", classes=CLASSES, device="cpu", overrides=OVERRIDES)


def test_engine_names_at_the_package_face():
    assert lposs.Segmentor is lposs.segmentation.Segmentor
    assert lposs.SegmentorSettings is lposs.segmentation.SegmentorSettings
    assert lposs.propagate_patches is lposs.segmentation.propagate_patches
    assert lposs.propagate_pixels is lposs.segmentation.propagate_pixels
    assert {"load", "Segmentor", "propagate_pixels"} <= set(dir(lposs))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lposs.nothing  # noqa: B018


def test_load_predicts_labels_and_scores(predictor):
    image = _image()
    scores = predictor.predict_scores(image)
    labels = predictor.predict(image)
    assert scores.shape == (3, 40, 56) and scores.dtype == torch.float32
    assert labels.shape == (40, 56) and labels.dtype == np.int64
    assert_varies(labels)
    np.testing.assert_array_equal(labels, scores.argmax(0).numpy())
    assert predictor.classes == CLASSES and predictor.config.pixel_refine is True
    assert predictor.config.k == 400 and predictor.config.short_side == 48  # paper default kept, override applied


def test_load_equals_the_segmentor_built_by_hand(predictor):
    """The one-liner is the documented ten-line construction, nothing more: same config, same scores."""
    config = predictor.config
    torch.manual_seed(config.seed)
    backbones = LPOSSBackbones.from_config(config.model, "cpu").eval()
    backbones.set_classes(CLASSES)
    by_hand = lposs.Segmentor(backbones, lposs.SegmentorSettings.from_config(config))
    image = _image(33, 61)
    torch.testing.assert_close(predictor.predict_scores(image), by_hand.predict_scores(image), rtol=0, atol=0)


def test_images_as_arrays_pil_or_paths_agree(predictor, tmp_path):
    image = _image()
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    expected = predictor.predict(image)
    assert_varies(expected)
    for given in (Image.fromarray(image), path, str(path)):
        np.testing.assert_array_equal(predictor.predict(given), expected)


def test_config_names_overrides_and_methods(shared_backbones):  # noqa: F811
    by_name = lposs.load("lposs", classes=CLASSES, device="cpu", overrides=OVERRIDES)
    by_file = lposs.load(resolve_config_path("lposs.yaml"), classes=CLASSES, device="cpu", overrides=OVERRIDES)
    assert by_name.config == by_file.config and by_name.config.pixel_refine is False
    as_mapping = lposs.load(
        "lposs.yaml",
        classes=CLASSES,
        overrides={**dict(o.split("=", 1) for o in OVERRIDES), "device": "cpu", "model.clip.pretrained": None},
    )
    assert as_mapping.config == by_name.config
    baseline = lposs.load("maskclip", classes=CLASSES, device="cpu", overrides=OVERRIDES)
    assert baseline.config.patch_propagation is False
    whole = lposs.load("lposs_plus", classes=CLASSES, device="cpu", overrides=[*OVERRIDES, "crop=0"])
    image = _image()  # 40 x 56 -> 48 x 67: one window, the backbones see its 48 x 64 part
    assert whole.segmentor.boxes(image) == [(0, 48, 0, 67)] and whole.predict(image).shape == (40, 56)


def test_bad_input_is_one_clear_error_before_weights_load(monkeypatch, predictor):
    monkeypatch.setattr(LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(ConfigError, match="nosuch"):
        lposs.load("nosuch", classes=CLASSES, device="cpu")
    with pytest.raises(ConfigError, match="k"):
        lposs.load("lposs_plus", classes=CLASSES, device="cpu", overrides=["k=-1"])
    with pytest.raises(ValueError, match="model.clip.name"):
        lposs.load("lposs_plus", classes=CLASSES, device="cpu", overrides=["model.clip.name=NoSuchModel"])
    with pytest.raises(ValueError, match="non-empty"):
        predictor.set_classes([])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predictor.predict(Path("missing.png"))


def test_old_configs_path_still_names_the_packaged_file():
    assert resolve_config_path("configs/lposs_plus.yaml") == resolve_config_path("lposs_plus.yaml")
    assert resolve_config_path("lposs_plus.yaml").parent == Path(lposs.__file__).parent / "configs"


def test_refine_with_its_own_maskclip_window_scores_is_predict_exactly(predictor):
    """LPOSS and LPOSS+ on the MaskCLIP window scores of the toolkit itself, handed in as external scores, give
    predict_scores bit for bit (one alias per class: class scores are the propagated columns)."""
    predictor.set_classes(["sky", "tree", "person"])
    try:
        image = _image()
        encoding = predictor.segmentor.encode(image)
        refined = predictor.refine(image, encoding.scores, encoding.boxes)
        assert refined.shape == (3, 40, 56) and torch.equal(refined, predictor.predict_scores(image))
        settings = replace(lposs.SegmentorSettings.from_config(predictor.config), pixel_refine=False)
        lposs_only = lposs.Segmentor(predictor.backbones, settings)
        assert torch.equal(lposs_only.refine(image, encoding.scores), lposs_only.predict_scores(image))
    finally:
        predictor.set_classes(CLASSES)


def _global_state() -> tuple:
    """What a library call must leave as it found it: the CPU RNG and the three float32 precision flags."""
    return (
        torch.get_rng_state(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
    )


def _assert_same_state(actual: tuple, expected: tuple) -> None:
    assert torch.equal(actual[0], expected[0]), "the global RNG state changed"
    assert actual[1:] == expected[1:], "the precision flags changed"


def test_load_and_predict_leave_the_global_rng_and_precision_flags_as_they_found_them(monkeypatch):
    """The caller's flags (TF32 matmuls on, cuDNN TF32 off) are the opposite of the config's paper mode in all
    three; two loads under different caller RNG states give equal random weights (the config's seed)."""
    monkeypatch.setattr(LPOSSBackbones, "from_config", BUILD_BACKBONES)  # really built, not the tests' cache
    saved = _global_state()
    try:
        torch.manual_seed(1234)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = False
        before = _global_state()
        assert before[1:] == (True, "high", False)
        first = lposs.load("lposs", classes=CLASSES, device="cpu", overrides=OVERRIDES)
        _assert_same_state(_global_state(), before)
        seen = []
        predict = first.segmentor.predict
        monkeypatch.setattr(first.segmentor, "predict", lambda image: seen.append(_global_state()) or predict(image))
        first.predict(_image())
        _assert_same_state(_global_state(), before)
        assert seen[0][1:] == (False, "highest", True)  # the config's mode (paper), during the call only
        torch.manual_seed(99)  # another caller state: the weights still come from the config's seed
        second = lposs.load("lposs", classes=CLASSES, device="cpu", overrides=OVERRIDES)
        assert second.backbones is not first.backbones
        weights, again = first.backbones.state_dict(), second.backbones.state_dict()
        assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    finally:
        torch.set_rng_state(saved[0])
        torch.set_float32_matmul_precision(saved[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[3]
