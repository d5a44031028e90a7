"""check_model_config: one-line errors naming key and value, before (and without) any weights are loaded."""

import copy

import open_clip
import pytest
import timm
import torch

import lposs.models.factory as factory
from lposs.models import CheckpointNotFoundError, LPOSSBackbones, ModelConfigError, check_model_config

TINY = {
    "clip": {"name": "ViT-S-16", "pretrained": None},
    "dino": {"name": "vit_small_patch16_224.dino", "pretrained": None},
    "dtype": "float32",
}
PAPER = {
    "clip": {"name": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"},
    "dino": {"name": "vit_base_patch16_224.dino", "pretrained": True},
    "dtype": "float32",
    "templates": "imagenet80",
}


def _with(base: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(base)
    *path, last = dotted.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = value
    return config


def _error(config: dict, device: str = "cpu", crop: int | None = None) -> str:
    with pytest.raises(ModelConfigError) as caught:
        check_model_config(config, device, crop=crop)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture()
def no_weights_loaded(monkeypatch, tmp_path):
    """Building, loading or downloading any weights fails the test; the HF cache is empty and offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("open_clip model built"))
    monkeypatch.setattr(factory, "_fetch_hub_file", lambda *a, **k: pytest.fail("weights fetched"))


def test_paper_config_passes_offline_without_loading_anything(no_weights_loaded):
    check_model_config(PAPER, "cpu")
    check_model_config(TINY, torch.device("cpu"))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("clip.name", "coca_ViT-B-32", ["attentional pooler", "ViT-L-14"]),
        ("clip.name", "NoSuch", ["unknown open_clip model", "ViT-B-16", "ViT-L-14", "ViT-B-32"]),
        ("clip.name", "ViT-B-61", ["unknown open_clip model", "close matches", "ViT-B-16"]),
        ("clip.name", "convnext_base", ["timm's 'convnext_base'", "Eva or VisionTransformer", "EVA02-B-16"]),
        ("clip.name", "MobileCLIP-B", ["timm's 'vit_base_mci_224'", "PatchEmbed"]),
        ("clip.name", "RN50", ["not a ViT", "ViT-B-16"]),
        ("dino.name", "resnet50", ["ResNet", "not a ViT", "vit_small_patch16_224.dino", "vit_base_patch8_224.dino"]),
        ("dino.name", "vit_smal_patch16_224.dino", ["unknown timm model", "vit_small_patch16_224.dino"]),
        ("dino.name", "vit_small_patch16_224.nosuch", ["no tag 'nosuch'", "dino"]),
        ("dino.name", "deit_small_distilled_patch16_224", ["prefix tokens"]),
    ],
)
def test_bad_model_names(no_weights_loaded, key, value, expected):
    message = _error(_with(TINY, key, value))
    assert message.startswith(f"model.{key}={value!r}: "), message
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize(
    ("key", "value", "choices"),
    [
        ("clip.head", "nacl1p", "maskclip, sclip, clearclip, naclip, proxyclip"),
        ("dino.features", "values", "v, k, q, x"),
        ("clip.proxy_features", "y", "v, k, q, x"),
    ],
)
def test_bad_head_or_feature_kind(no_weights_loaded, key, value, choices):
    assert _error(_with(PAPER, key, value)) == f"model.{key}={value!r}: expected one of {choices}"
    check_model_config(_with(_with(PAPER, "clip.head", "naclip"), "dino.features", "k"), "cpu")  # and good ones pass


# The backbones, each CLIP with a DINO: every patch size, DINOv2 with and without registers.
OTHER_BACKBONES = [
    ("ViT-L-14", "openai", "vit_small_patch8_224.dino"),
    ("ViT-L-14-336", "openai", "vit_base_patch8_224.dino"),
    ("ViT-B-32", "openai", "vit_base_patch14_dinov2.lvd142m"),
    ("ViT-L-14", "laion2b_s32b_b82k", "vit_base_patch14_reg4_dinov2.lvd142m"),
    ("ViT-B-16", "laion2b_s34b_b88k", "vit_large_patch14_reg4_dinov2.lvd142m"),
]


@pytest.mark.parametrize(("clip", "tag", "dino"), OTHER_BACKBONES, ids=[f"{c}-{d}" for c, _, d in OTHER_BACKBONES])
def test_other_patch_sizes_pass_with_a_crop_of_both(no_weights_loaded, clip, tag, dino):
    config = _with(_with(_with(PAPER, "clip.name", clip), "clip.pretrained", tag), "dino.name", dino)
    check_model_config(_with(config, "clip.head", "proxyclip"), "cpu", crop=224)  # 224: a multiple of both


@pytest.mark.parametrize(
    ("clip", "dino", "patches", "crop", "lcm"),
    [
        ("ViT-L-14", "vit_base_patch8_224.dino", (14, 8), 225, 56),
        ("ViT-B-16", "vit_small_patch14_reg4_dinov2.lvd142m", (16, 14), 208, 112),  # a multiple of 16, not of 14
        ("ViT-B-32", "vit_small_patch16_224.dino", (32, 16), 240, 32),
    ],
)
def test_crop_not_a_multiple_of_both_patch_sizes_is_one_line(no_weights_loaded, clip, dino, patches, crop, lcm):
    config = _with(_with(TINY, "clip.name", clip), "dino.name", dino)
    message = _error(config, crop=crop)
    expected = f"crop={crop}: expected 0 (the whole image) or a multiple of the patch sizes of model.clip.name={clip!r}"
    assert message.startswith(expected)
    assert f"({patches[0]}) and model.dino.name={dino!r} ({patches[1]}), i.e. of {lcm}" in message
    check_model_config(config, "cpu", crop=4 * lcm)
    check_model_config(config, "cpu", crop=0)  # the whole image, floor-cropped to a multiple of lcm when run
    assert _error(config, crop=-lcm).startswith(f"crop={-lcm}: expected 0 (the whole image) or a multiple")


def test_clip_tag_of_another_model_lists_the_tags():
    message = _error(_with(_with(TINY, "clip.name", "ViT-B-16-plus-240"), "clip.pretrained", "openai"))
    assert message.startswith("model.clip.pretrained='openai': ")
    assert "laion400m_e31" in message and "laion400m_e32" in message and "checkpoint path" in message
    message = _error(_with(TINY, "clip.pretrained", "openai"))  # ViT-S-16 has no published weights at all
    assert "no weights for ViT-S-16" in message
    assert "model.clip.pretrained=true" in _error(_with(TINY, "clip.pretrained", True))


def test_pretrained_paths(tmp_path):
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"x")  # content is not read by the check
    check_model_config(_with(_with(TINY, "clip.pretrained", str(weights)), "dino.pretrained", str(weights)), "cpu")
    for key in ("clip.pretrained", "dino.pretrained"):
        missing = str(tmp_path / "nowhere" / "w.pth")
        with pytest.raises(CheckpointNotFoundError) as caught:
            check_model_config(_with(TINY, key, missing), "cpu")
        assert isinstance(caught.value, FileNotFoundError)
        assert str(caught.value) == f"model.{key}={missing!r}: checkpoint file not found"


def test_dino_pretrained_values():
    assert _error(_with(TINY, "dino.pretrained", "maybe")).startswith("model.dino.pretrained='maybe': expected true")
    assert _error(_with(TINY, "dino.pretrained", 3)).startswith("model.dino.pretrained=3: ")
    no_weights = _with(_with(TINY, "dino.name", "vit_small_patch16_36x1_224"), "dino.pretrained", True)
    assert timm.list_pretrained("vit_small_patch16_36x1_224.*") == []
    message = _error(no_weights)
    assert message.startswith(
        "model.dino.pretrained=true: timm has no pretrained weights for 'vit_small_patch16_36x1_224'"
    )


def test_dtype_rules():
    message = _error(_with(TINY, "dtype", "float16"), "cpu")
    assert message.startswith("model.dtype='float16' on the CPU") and "slower" in message
    check_model_config(_with(TINY, "dtype", "float16"), "cuda:0")  # fine on a GPU (nothing is run here)
    check_model_config(_with(TINY, "dtype", "bfloat16"), "cpu")
    assert _error(_with(TINY, "dtype", "float64")).startswith("model.dtype='float64': expected one of")
    assert _error(_with(TINY, "templates", "all")).startswith("model.templates='all'")


def test_missing_key():
    config = copy.deepcopy(TINY)
    del config["dino"]["pretrained"]
    assert _error(config) == "model config: missing key 'model.dino.pretrained'"


def test_from_config_checks_before_building(monkeypatch):
    monkeypatch.setattr("lposs.models.lposs.build_clip", lambda *a, **k: pytest.fail("CLIP built before the check"))
    with pytest.raises(ModelConfigError, match="model.dino.name='resnet50'"):
        LPOSSBackbones.from_config(_with(TINY, "dino.name", "resnet50"))
    with pytest.raises(ModelConfigError, match="model.dtype='float16' on the CPU"):
        LPOSSBackbones.from_config(_with(TINY, "dtype", "float16"), "cpu")
