"""The baselines' own protocols (docs/method.md, "Own protocols"): configs against the authors' files, PAMR and the
whole prediction of each method against tests/protocol_reference.py, on a real VOC image with tiny random backbones."""

from dataclasses import replace
from pathlib import Path

import mmcv
import numpy as np
import protocol_reference
import pytest
import torch
from PIL import Image
from protocol_reference import get_cls_idx, pamr_reference, reference_labels, reference_predict, text_features
from tiny_models import TINY_TEXT_OVERRIDES

from lposs.datasets import DATASET_KEYS, DatasetError, protocol_class_names
from lposs.datasets.method_class_names import CLASS_NAME_DIR, SEPARATORS
from lposs.evaluation.config import CLASS_NAME_SOURCES, ConfigError, load_config
from lposs.segmentation import Segmentor, SegmentorSettings
from lposs.segmentation.pamr import pamr

VOC_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_mini"
VOC_IMAGE = VOC_MINI / "VOCdevkit" / "VOC2012" / "JPEGImages" / "voc_sample_0001.jpg"

# Transcribed from the authors' files (values each segmentor's `predict` uses for each benchmark):
# resize S of Resize(scale=(2048, S)), slide crop / stride, logit_scale, prob_thd, area_thd, PAMR steps.
AUTHORS = {
    "sclip": {  # wangf3014/SCLIP clip_segmentor.py defaults: crop 224, stride 112, logit_scale 40, prob_thd 0, no PAMR
        "voc": (336, 224, 112, 65, 0.1, 0.1, 0),  # configs/cfg_voc21.py
        "voc20": (336, 224, 112, 40, 0.0, None, 0),  # configs/cfg_voc20.py
        "context": (336, 224, 112, 50, 0.1, None, 0),  # configs/cfg_context60.py
        "context59": (336, 224, 112, 40, 0.0, None, 0),  # configs/cfg_context59.py
        "coco_object": (336, 224, 112, 50, 0.1, None, 0),  # configs/cfg_coco_object.py
        "coco_stuff": (448, 224, 112, 40, 0.0, None, 0),  # configs/cfg_coco_stuff164k.py
        "cityscapes": (560, 224, 112, 40, 0.0, None, 0),  # configs/cfg_city_scapes.py
        "ade20k": (336, 224, 112, 40, 0.0, None, 0),  # configs/cfg_ade20k.py
    },
    "naclip": {  # sinahmr/NACLIP naclip.py defaults (as SCLIP's) and eval.py --pamr on: 10 steps, pamr_stride (8, 16)
        # configs/cfg_voc21.py at defb7c94 (the latest): prob_thd=0.1, slide_crop=0 (the whole image; stride unused)
        "voc": (336, 0, 112, 40, 0.1, None, 10),
        "voc20": (336, 0, 112, 40, 0.0, None, 10),  # configs/cfg_voc20.py at defb7c94: slide_crop=0
        "context": (336, 224, 112, 40, 0.1, None, 10),  # configs/cfg_context60.py
        "context59": (336, 224, 112, 40, 0.0, None, 10),  # configs/cfg_context59.py
        "coco_object": (336, 224, 112, 40, 0.1, None, 10),  # configs/cfg_coco_object.py
        "coco_stuff": (336, 224, 112, 40, 0.0, None, 10),  # configs/cfg_coco_stuff164k.py at defb7c94: 336 (was 448)
        "cityscapes": (560, 224, 112, 40, 0.0, None, 10),  # configs/cfg_city_scapes.py
        "ade20k": (336, 224, 112, 40, 0.0, None, 10),  # configs/cfg_ade20k.py
    },
    "clearclip": {  # mc-lan/ClearCLIP clearclip_segmentor.py defaults: crop 448, stride 224, logit_scale 50, prob_thd 0
        "voc": (448, 448, 224, 50, 0.5, None, 0),  # configs/cfg_voc21.py
        "voc20": (448, 448, 224, 50, 0.0, None, 0),  # configs/cfg_voc20.py
        "context": (448, 448, 224, 50, 0.15, None, 0),  # configs/cfg_context60.py
        "context59": (448, 448, 224, 50, 0.0, None, 0),  # configs/cfg_context59.py
        "coco_object": (448, 448, 224, 50, 0.4, None, 0),  # configs/cfg_coco_object.py
        "cityscapes": (448, 224, 224, 50, 0.0, None, 0),  # configs/cfg_city_scapes.py: slide_crop=224
    },
    "proxyclip": {  # mc-lan/ProxyCLIP proxyclip_segmentor.py defaults: crop 336, stride 112, logit_scale 40, prob_thd 0
        "voc": (336, 336, 112, 40, 0.2, None, 0),  # configs/cfg_voc21.py
        "context": (336, 336, 112, 40, 0.15, None, 0),  # configs/cfg_context60.py
        "coco_object": (336, 336, 112, 40, 0.25, None, 0),  # configs/cfg_coco_object.py
        "coco_stuff": (336, 336, 112, 40, 0.0, None, 0),  # configs/cfg_coco_stuff164k.py
        "cityscapes": (448, 224, 112, 40, 0.0, None, 0),  # configs/cfg_city_scapes.py
        "ade20k": (448, 336, 112, 40, 0.0, None, 0),  # configs/cfg_ade20k.py
    },
}


def protocol_of(config) -> tuple:
    return (
        config.short_side,
        config.crop,
        config.stride,
        config.logit_scale,
        config.prob_thd,
        config.area_thd,
        config.pamr_steps,
    )


@pytest.mark.parametrize("method", sorted(AUTHORS))
def test_own_configs_hold_the_authors_values_for_every_benchmark(method):
    for key, expected in AUTHORS[method].items():
        config = load_config(f"{method}_own.yaml", dataset=key)
        assert protocol_of(config) == expected, key
        assert config.model.clip.name == "ViT-B-16" and config.model.clip.pretrained == "openai"
        assert config.model.clip.head == method and config.patch_propagation is False
        assert config.long_side == 2048 and config.model.templates == "imagenet80" and config.background == 0
        assert list(config.pamr_dilations) == [8, 16]
    if method == "proxyclip":  # base_config.py: vfm_model='dino' (dino_vitb8), beta 1.2, gamma 3.0
        assert config.model.dino.name == "vit_base_patch8_224.dino" and config.model.clip.proxy_features == "x"
        assert (config.model.clip.proxy_beta, config.model.clip.proxy_gamma) == (1.2, 3.0)


def test_a_command_line_value_wins_over_the_per_dataset_table():
    config = load_config("sclip_own.yaml", ["logit_scale=30"], dataset="voc")
    assert config.logit_scale == 30 and config.prob_thd == 0.1 and config.area_thd == 0.1


def test_per_dataset_table_and_thresholds_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [lposs, _self_]\nper_dataset: {voc: {nope: 1}}\n")
    with pytest.raises(ConfigError, match="per_dataset.voc.nope: unknown config key"):
        load_config(bad)
    bad.write_text("defaults: [lposs, _self_]\nper_dataset: {voc: {k: many}}\n")
    with pytest.raises(ConfigError, match="per_dataset.voc.k='many' is invalid"):
        load_config(bad, dataset="voc")
    with pytest.raises(ConfigError, match="area_thd=0.1 needs logit_scale"):
        load_config("lposs.yaml", ["area_thd=0.1"])
    with pytest.raises(ConfigError, match="class_names='x' is invalid"):
        load_config("lposs.yaml", ["class_names=x"])
    with pytest.raises(ConfigError, match="pamr_dilations"):
        load_config("lposs.yaml", ["pamr_dilations=[]"])
    with pytest.raises(ConfigError, match="class_files_dir='x' needs class_names set to the authors' files"):
        load_config("lposs.yaml", ["class_files_dir=x"])


def test_class_files_read_as_the_authors_get_cls_idx():
    assert CLASS_NAME_SOURCES == ("lposs", "sclip", "clearclip", "proxyclip")
    for key in DATASET_KEYS:
        prompts = protocol_class_names(key, "sclip")
        names, owners = get_cls_idx(CLASS_NAME_DIR / "sclip" / _file(key), ", ")
        assert [n.strip() for n in ";".join(prompts).split(";")] == [n.strip() for n in names], key
        assert [len(p.split(";")) for p in prompts] == np.bincount(owners).tolist(), key
    voc = protocol_class_names("voc", "sclip")
    assert len(voc) == 21 and len(voc[0].split(";")) == 26 and voc[15].startswith("person;person in shirt")
    assert protocol_class_names("voc", "clearclip")[0] == "background"  # ClearCLIP's VOC file: no stuff words
    assert len(protocol_class_names("coco_object", "proxyclip")[0].split(";")) == 17


def test_a_folder_of_ones_own_replaces_the_shipped_class_files(tmp_path):
    """class_files_dir: the folder's cls_<dataset>.txt, read with the source's separator as its get_cls_idx; every
    way it can be wrong is one line naming the folder, file or key."""
    lines = ["backdrop; void\n", *[f"thing {i}; object {i}\n" for i in range(1, 20)], "screen; monitor"]
    (tmp_path / "cls_voc21.txt").write_text("".join(lines))
    names, owners = get_cls_idx(tmp_path / "cls_voc21.txt", "; ")
    prompts = protocol_class_names("voc", "proxyclip", tmp_path)
    assert [n.strip() for n in ";".join(prompts).split(";")] == names and len(prompts) == 21
    assert [len(p.split(";")) for p in prompts] == np.bincount(owners).tolist()
    assert prompts != protocol_class_names("voc", "proxyclip")  # not the shipped file
    with pytest.raises(DatasetError, match="cls_voc21.txt, line 1: a name holds ';'"):  # SCLIP's separator: ", "
        protocol_class_names("voc", "sclip", tmp_path)
    with pytest.raises(DatasetError, match=r"no cls_voc20.txt for dataset 'voc20' \(class_names=proxyclip\)"):
        protocol_class_names("voc20", "proxyclip", tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        protocol_class_names("voc", "proxyclip", tmp_path / "cls_voc21.txt")
    with pytest.raises(DatasetError, match="needs the class_names of an author's files"):
        protocol_class_names("voc", "lposs", tmp_path)
    (tmp_path / "cls_voc21.txt").write_text("".join(lines[:-1]))
    with pytest.raises(DatasetError, match="cls_voc21.txt: 20 classes, dataset 'voc' has 21"):
        protocol_class_names("voc", "proxyclip", tmp_path)
    with pytest.raises(DatasetError, match="give the authors' own with class_files_dir=DIR"):
        protocol_class_names("context", "clearclip")


def _file(key: str) -> str:
    from lposs.datasets.method_class_names import CLASS_FILES

    return CLASS_FILES[key]


def test_pamr_equals_the_conv_reference():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 23, 31, generator=generator)
    scores = torch.randn(1, 5, 23, 31, generator=generator)
    for dilations in ((1,), (8, 16), (2, 40)):  # 40: wider than the image, the border repeated
        expected = pamr_reference(image, scores, 3, dilations)
        torch.testing.assert_close(pamr(image, scores, 3, dilations), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pamr(image, scores, 3, (1,)), scores, atol=1e-2)  # it does change the scores


@pytest.fixture(scope="module")
def voc_image():
    if not VOC_IMAGE.is_file():
        pytest.skip("needs ../shared/data/voc_mini")
    # a 96 x 128 part of it: the protocol upsamples it to short side 336 (six windows) and post-processes at this size
    return np.ascontiguousarray(np.asarray(Image.open(VOC_IMAGE).convert("RGB"))[150:246, 180:308])


@pytest.fixture(scope="module")
def tiny_voc():
    """Random backbones of the own configs' architecture (tiny), holding SCLIP's VOC class file; its text rows as
    the authors' __init__ computes them."""
    from lposs.models import LPOSSBackbones

    config = load_config("sclip_own.yaml", TINY_TEXT_OVERRIDES, dataset="voc")
    torch.manual_seed(0)
    backbones = LPOSSBackbones.from_config(config.model, "cpu").eval()
    backbones.set_classes(protocol_class_names("voc", config.class_names))
    names, owners = get_cls_idx(CLASS_NAME_DIR / "sclip" / "cls_voc21.txt", SEPARATORS["sclip"])
    return backbones, text_features(backbones.clip, backbones.tokenizer, names, backbones.templates), owners


# On the tiny random backbones: a logit scale that spreads the probabilities, short side 224 (two windows, the
# overlap averaged; the protocols' own values are checked above), SCLIP's area_thd at a value that drops a class
# (asserted). prob_thd is set below from the probabilities, so that it sends some pixels, not all, to class 0.
# ClearCLIP at its own resize and windows (448, 448 / 224: a 28 x 28 grid, the positional embedding resized by the
# repositories' (g + 0.1) rule).
CASES = {
    "sclip": {"logit_scale": 400, "area_thd": 0.08, "short_side": 224},
    # its sliding windows (the other benchmarks' protocol); VOC's whole image: test_naclip_whole_image_...
    "naclip": {"logit_scale": 400, "short_side": 224, "crop": 224, "stride": 112},
    "clearclip": {"logit_scale": 400},
    "proxyclip": {"logit_scale": 400},  # at its 336 windows: DINO's and CLIP's grids 21 x 21 (the tiny DINO is /16)
}


def _predictions(voc_image, tiny_voc, method, monkeypatch, case=None, proxy_beta=0.9):
    backbones, text, owners = tiny_voc
    config = load_config(f"{method}_own.yaml", TINY_TEXT_OVERRIDES, dataset="voc")
    assert config.model.clip.head == method
    backbones.set_heads(method)
    backbones.pos_interpolation = config.model.clip.pos_interpolation  # the shared backbones: this config's rule
    if method == "proxyclip":  # beta 0.9: random DINO features are so alike that 1.2 x their mean leaves rows NaN
        backbones.set_heads(method, "v", {"proxy_features": "x", "proxy_beta": proxy_beta, "proxy_gamma": 3.0})
        monkeypatch.setattr(protocol_reference, "PROXY_CONSTANTS", [proxy_beta, 3.0])
    backbones.set_classes(protocol_class_names("voc", config.class_names))  # cached: SCLIP's file encoded once
    if config.class_names != "sclip":  # its own file, read as its get_cls_idx reads it
        path = CLASS_NAME_DIR / config.class_names / "cls_voc21.txt"
        names, owners = get_cls_idx(path, SEPARATORS[config.class_names])
        text = text_features(backbones.clip, backbones.tokenizer, names, backbones.templates)
    settings = replace(SegmentorSettings.from_config(config), **(CASES[method] if case is None else case))
    probabilities = reference_predict(
        backbones.clip, text, owners, voc_image, method, settings.__dict__, backbones.dino
    )
    peak = probabilities.max(0).values
    prob_thd = float(peak[peak.isfinite()].quantile(0.3))  # (ProxyCLIP at beta 1.2: NaN pixels left out)
    return Segmentor(backbones, replace(settings, prob_thd=prob_thd)), probabilities, prob_thd


@pytest.mark.parametrize("method", sorted(CASES))
def test_own_protocol_prediction_equals_the_authors_predict(voc_image, tiny_voc, method, monkeypatch):
    segmentor, expected_probs, prob_thd = _predictions(voc_image, tiny_voc, method, monkeypatch)
    expected_labels = reference_labels(expected_probs, prob_thd)
    scores = segmentor.predict_scores(voc_image)
    labels = segmentor.labels(scores)
    assert len(torch.unique(expected_labels)) >= 3  # class 0 and at least two others: a constant map equals too much
    assert 0 < (expected_labels == 0).float().mean() < 1
    torch.testing.assert_close(scores, expected_probs, rtol=1e-4, atol=5e-4)  # 400 x float32 cosine rounding
    assert (labels != expected_labels).float().mean() < 1e-3  # ties at float precision only
    if method == "sclip":
        assert (expected_probs.flatten(1).amax(1) == 0).any()  # area_thd dropped a class


@pytest.fixture(scope="module")
def voc_wide_image():
    if not VOC_IMAGE.is_file():
        pytest.skip("needs ../shared/data/voc_mini")
    return np.ascontiguousarray(np.asarray(Image.open(VOC_IMAGE).convert("RGB"))[200:296, 180:311])  # 96 x 131


def test_naclip_whole_image_at_its_voc_protocol_equals_the_authors_predict(voc_wide_image, tiny_voc, monkeypatch):
    """cfg_voc21.py's slide_crop=0 at its own resize: 96 x 131 -> 336 x 459, not a multiple of 16. One forward of a
    21 x 28 grid (the last 11 columns unseen), the positional embedding resized per axis by the (g + 0.1) rule, the
    Gaussian window 41 x 55; the logits stretched to 336 x 459, then resized to 96 x 131, then PAMR."""
    config = load_config("naclip_own.yaml", TINY_TEXT_OVERRIDES, dataset="voc")
    assert (config.crop, config.short_side) == (0, 336)
    assert mmcv.imrescale(voc_wide_image, (2048, 336)).shape[:2] == (336, 459)
    case = {"logit_scale": 400}  # its own crop, stride, resize and PAMR
    segmentor, expected_probs, prob_thd = _predictions(voc_wide_image, tiny_voc, "naclip", monkeypatch, case)
    assert segmentor.encode(voc_wide_image).boxes == [(0, 336, 0, 459)]
    expected_labels = reference_labels(expected_probs, prob_thd)
    scores = segmentor.predict_scores(voc_wide_image)
    assert len(torch.unique(expected_labels)) >= 3 and 0 < (expected_labels == 0).float().mean() < 1
    torch.testing.assert_close(scores, expected_probs, rtol=1e-4, atol=5e-4)
    assert (segmentor.labels(scores) != expected_labels).float().mean() < 1e-3


def test_proxyclip_at_the_authors_beta_equals_their_predict_wherever_theirs_is_finite(voc_image, tiny_voc, monkeypatch):
    """ProxyCLIP's own beta 1.2. With unit proxy features S_ii = 1, so a window's rows are all NaN in the authors'
    attention when its mean similarity exceeds 1 / 1.2 (every entry below 1.2 x mean) and none otherwise: on the
    tiny random DINO the means of this image's two 336 windows are about 0.75 and 0.9. NaN stays per pixel (the
    window sum, the resizes and the softmax mix no pixel's names with another's; no PAMR): the authors' pixels seen
    by the first window alone are finite, the rest NaN. Ours attend to their own patch there (docs/method.md): equal
    wherever theirs is finite, finite everywhere."""
    segmentor, expected_probs, prob_thd = _predictions(voc_image, tiny_voc, "proxyclip", monkeypatch, proxy_beta=1.2)
    assert segmentor.backbones.proxy["proxy_beta"] == 1.2 and protocol_reference.PROXY_CONSTANTS[0] == 1.2
    finite = expected_probs.isfinite().all(0)  # [H, W]
    assert 0.1 < finite.float().mean() < 0.9  # both kinds of pixel
    assert expected_probs.isnan().all(0)[~finite].all()
    scores = segmentor.predict_scores(voc_image)
    assert scores.isfinite().all()
    torch.testing.assert_close(scores[:, finite], expected_probs[:, finite], rtol=1e-4, atol=5e-4)
    expected_labels = reference_labels(expected_probs, prob_thd)[finite]
    assert len(torch.unique(expected_labels)) >= 2
    assert (segmentor.labels(scores)[finite] != expected_labels).float().mean() < 1e-3
