"""CLIP towers on timm trunks (models.timm_clip): EVA02 (CLS-pooled), SigLIP2 and PE-Core (attention pool), on tiny
random-weight towers of the same timm architectures, against tests/timm_clip_reference.py; their tokenizers, mean /
std and the one-line refusals."""

import json

import open_clip
import pytest
import torch
from timm_clip_reference import dynamic_twin, normalised_input, reference_cls_features, reference_pool_features
from tiny_models import TINY_EVA02, TINY_PE, TINY_SIGLIP2, write_tiny_tokenizer

from lposs.models import (
    ModelConfigError,
    WeightsUnavailableError,
    build_clip,
    check_model_config,
    dense_clip_features,
    factory,
)
from lposs.models.maskclip import describe_tokenizer, text_classifier
from lposs.models.timm_clip import ATTENTION_POOLED, CLS_POOLED, check_timm_tower

OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SigLIP's and PE's (open_clip's tags, timm's pretrained_cfg)
# name -> (timm trunk, reading, mean / std it was trained with)
TOWERS = {
    TINY_EVA02: ("eva02_test_patch16_clip", CLS_POOLED, OPENAI),
    TINY_SIGLIP2: ("siglip_test_patch16", ATTENTION_POOLED, HALF),
    TINY_PE: ("pe_core_test_patch16", ATTENTION_POOLED, HALF),
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def towers(tokenizer_dir):
    """Each tiny tower with every weight moved off its initial value (zero biases, unit norms, a 0.001 head)."""
    built = {}
    generator = torch.Generator().manual_seed(0)
    for name in TOWERS:
        model, tokenizer = build_clip(name, None, tokenizer=str(tokenizer_dir) if name == TINY_SIGLIP2 else None)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
        built[name] = (model, tokenizer)
    return built


@pytest.mark.parametrize("name", list(TOWERS))
@pytest.mark.parametrize("size", [(40, 72), (224, 224)])  # a padded 3 x 5 grid (not the 14 x 14 of 224 px); 14 x 14
def test_dense_features_equal_the_reference(towers, name, size):
    trunk_name, reading, (mean, std) = TOWERS[name]
    model = towers[name][0]
    assert check_timm_tower(model.visual) == reading
    images = torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(1))
    features = dense_clip_features(model, images)
    grid = (-(-size[0] // 16), -(-size[1] // 16))
    assert features.shape == (2, open_clip.get_model_config(name)["embed_dim"], *grid)  # the text side's dim
    twin = dynamic_twin(trunk_name, model.visual)
    x = normalised_input(images, mean, std, 16)
    reference = reference_cls_features if reading == CLS_POOLED else reference_pool_features
    expected = reference(twin, model.visual, x)  # [B, gh * gw, E]
    assert expected.std() > 1e-2  # the weights reach the output
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TOWERS))
def test_mean_and_std_are_the_trunks(towers, name):
    assert tuple(towers[name][0].visual.preprocess_cfg["mean"]) == TOWERS[name][2][0]
    assert tuple(towers[name][0].visual.preprocess_cfg["std"]) == TOWERS[name][2][1]


def test_a_pretrained_tag_gives_its_own_mean_and_std(towers):
    model = towers[TINY_EVA02][0]
    saved = dict(model.visual.preprocess_cfg)
    try:
        factory._set_tower_preprocess(model, "ViT-B-16-SigLIP2", "webli")  # open_clip's table for the tag
        assert tuple(model.visual.preprocess_cfg["mean"]) == HALF[0]
    finally:
        open_clip.model.set_model_preprocess_cfg(model, saved)


def test_siglip_tokenizer_from_a_local_folder_cleans_and_pads_to_the_models_context(towers, tokenizer_dir):
    tokenizer = towers[TINY_SIGLIP2][1]
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = tokenizer(["A photo of a Cat."])  # SigLIP's 'canonicalize': lower case, punctuation dropped
    expected = [vocab[w] for w in ("a", "photo", "of", "a", "cat")] + [1]  # then '<eos>'
    assert tokens.shape == (1, 64) and tokens[0, :6].tolist() == expected and not tokens[0, 6:].any()


def test_text_embeddings_average_the_templates_of_the_models_own_text_tower(towers):
    model, tokenizer = towers[TINY_SIGLIP2]
    templates = ("a photo of a {}.", "a photo of the {}.")
    embeddings, _ = text_classifier(model, tokenizer, ["cat", "dog"], templates)
    with torch.no_grad():
        per_prompt = torch.nn.functional.normalize(model.encode_text(tokenizer([t.format("dog") for t in templates])))
    expected = torch.nn.functional.normalize(per_prompt.mean(0), dim=0)
    torch.testing.assert_close(embeddings[1], expected, rtol=1e-5, atol=1e-6)
    assert (embeddings[0] - embeddings[1]).abs().max() > 1e-3


def test_the_text_cache_key_names_the_tokenizer(tokenizer_dir, tmp_path):
    other = write_tiny_tokenizer(tmp_path / "other")
    config = json.loads((other / "tokenizer.json").read_text())
    config["model"]["vocab"]["cat"], config["model"]["vocab"]["dog"] = config["model"]["vocab"]["dog"], 5
    (other / "tokenizer.json").write_text(json.dumps(config))
    first, second = (
        factory.build_tokenizer(TINY_SIGLIP2, str(tokenizer_dir)),
        factory.build_tokenizer(TINY_SIGLIP2, str(other)),
    )
    assert describe_tokenizer(first) != describe_tokenizer(second)
    assert describe_tokenizer(first) == describe_tokenizer(factory.build_tokenizer(TINY_SIGLIP2, str(tokenizer_dir)))


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """An empty, offline Hugging Face cache; building or fetching any weights fails the test."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("open_clip model built"))
    monkeypatch.setattr(factory, "_fetch_hub_file", lambda *a, **k: pytest.fail("weights fetched"))


def test_offline_without_a_tokenizer_folder_is_one_line_before_weights(offline):
    with pytest.raises(WeightsUnavailableError) as caught:
        build_clip(TINY_SIGLIP2, None)
    message = str(caught.value)
    assert "\n" not in message and "'timm/ViT-B-16-SigLIP2'" in message and "model.clip.tokenizer=" in message


def _config(name, **clip):
    dino = {"name": "vit_small_patch16_224.dino", "pretrained": None}
    return {"clip": {"name": name, "pretrained": None, **clip}, "dino": dino, "dtype": "float32"}


@pytest.mark.parametrize(
    ("clip", "expected"),
    [
        ({"name": TINY_EVA02, "head": "sclip"}, "model.clip.head='sclip'"),
        ({"name": TINY_PE, "head": "proxyclip"}, "model.clip.head='proxyclip'"),
        ({"name": TINY_EVA02, "tokenizer": "/tmp"}, "open_clip's own tokenizer"),
        ({"name": TINY_SIGLIP2, "tokenizer": "/no/such/folder"}, "holding tokenizer.json"),
    ],
)
def test_refusals_are_one_line_before_weights(offline, clip, expected):
    with pytest.raises(ModelConfigError) as caught:
        check_model_config(_config(**clip), "cpu")
    assert "\n" not in str(caught.value) and expected in str(caught.value)


def test_other_heads_on_a_loaded_timm_tower_are_refused(towers):
    with pytest.raises(ValueError, match="head='naclip'"):
        dense_clip_features(towers[TINY_PE][0], torch.rand(1, 3, 32, 32), head="naclip")


@pytest.mark.parametrize(
    ("config", "clip"), [("lposs_plus_dinov3_siglip2", "ViT-B-16-SigLIP2"), ("lposs_plus_dinov3_pe", "PE-Core-B-16")]
)
def test_the_2025_configs_are_lposs_plus_with_their_backbones(config, clip):
    from omegaconf import OmegaConf

    from lposs.evaluation.config import load_config

    loaded = OmegaConf.to_container(load_config(f"{config}.yaml"))
    plus = OmegaConf.to_container(load_config("lposs_plus.yaml"))
    assert loaded["model"]["clip"]["name"] == clip
    assert loaded["model"]["dino"]["name"] == "vit_base_patch16_dinov3.lvd1689m"  # lposs_plus_dinov3.yaml's DINO
    for key in ("name", "pretrained"):
        loaded["model"]["clip"].pop(key), plus["model"]["clip"].pop(key)
    loaded["model"]["dino"].pop("name"), plus["model"]["dino"].pop("name")
    assert loaded == plus  # nothing else differs from LPOSS+


@pytest.mark.parametrize(
    ("name", "tag"), [("ViT-B-16-SigLIP2", "webli"), ("PE-Core-B-16", "meta"), ("EVA02-B-16", "merged2b_s8b_b131k")]
)
def test_hub_tags_offline_are_one_line(monkeypatch, tmp_path, tokenizer_dir, name, tag):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("open_clip model built"))
    folder = str(tokenizer_dir) if name == "ViT-B-16-SigLIP2" else None
    with pytest.raises(WeightsUnavailableError) as caught:
        build_clip(name, tag, tokenizer=folder)
    assert "\n" not in str(caught.value) and f"CLIP {name} (pretrained={tag})" in str(caught.value)
