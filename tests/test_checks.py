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


def _error(config: dict, device: str = "cpu") -> str:
    with pytest.raises(ModelConfigError) as caught:
        check_model_config(config, device)
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
        ("clip.name", "ViT-B-32", ["patch size 32", "expected patch size 16", "ViT-B-16"]),
        ("clip.name", "NoSuch", ["unknown open_clip model", "ViT-B-16"]),
        ("clip.name", "ViT-B-61", ["unknown open_clip model", "close matches", "ViT-B-16"]),
        ("clip.name", "ViT-B-16-SigLIP", ["timm's", "patch size 16"]),
        ("clip.name", "RN50", ["not a ViT", "patch size 16"]),
        ("dino.name", "resnet50", ["ResNet", "not a ViT", "patch size 16", "vit_small_patch16_224.dino"]),
        ("dino.name", "vit_small_patch8_224.dino", ["patch size 8,", "patch size 16"]),
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
    [("clip.head", "nacl1p", "maskclip, sclip, clearclip, naclip"), ("dino.features", "values", "v, k, q")],
)
def test_bad_head_or_feature_kind(no_weights_loaded, key, value, choices):
    assert _error(_with(PAPER, key, value)) == f"model.{key}={value!r}: expected one of {choices}"
    check_model_config(_with(_with(PAPER, "clip.head", "naclip"), "dino.features", "k"), "cpu")  # and good ones pass


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
