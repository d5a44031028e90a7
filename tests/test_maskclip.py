"""MaskCLIP dense features and the CLIP text classifier against step-by-step references written here."""

import copy
import types

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn
from torch.testing import assert_close

from lposs.models import IMAGENET_TEMPLATES, clear_text_cache, dense_clip_features, split_aliases, text_classifier

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def clip():
    """Random ViT-S-16 CLIP; parameters jittered so biases and norms are not trivially 0 / 1."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-16", pretrained=None).eval()
    with torch.no_grad():
        for param in model.visual.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model, open_clip.get_tokenizer("ViT-S-16")


def _reference_tokens(model: nn.Module, images: torch.Tensor):
    """Tokens entering the last visual block, built from open_clip's modules with explicit padding."""
    visual = model.visual
    height, width = images.shape[-2:]
    x = F.pad(images, (0, -width % 16, 0, -height % 16)) if (height % 16 or width % 16) else images
    x = visual.conv1((x - MEAN) / STD)
    gh, gw = x.shape[-2:]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    pos = visual.positional_embedding
    if (gh, gw) != (14, 14):
        patch = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + pos
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x, (gh, gw)


@torch.no_grad()
def _reference_maskclip(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    x, (gh, gw) = _reference_tokens(model, images)
    block = model.visual.transformer.resblocks[-1]
    width = x.shape[-1]
    v = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)[..., 2 * width :]
    v = F.linear(v, block.attn.out_proj.weight, block.attn.out_proj.bias) + x
    v = v + block.mlp(block.ln_2(v))
    out = model.visual.ln_post(v)[:, 1:] @ model.visual.proj
    return out.reshape(out.shape[0], gh, gw, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def test_reference_ordinary_path_equals_encode_image(clip):
    model, _ = clip
    images = torch.rand(2, 3, 224, 224)
    x, _ = _reference_tokens(model, images)
    x = model.visual.transformer.resblocks[-1](x)
    pooled = model.visual.ln_post(x)[:, 0] @ model.visual.proj
    assert_close(pooled, model.encode_image((images - MEAN) / STD), rtol=1e-4, atol=1e-5)


def test_dense_features_224_match_reference(clip):
    model, _ = clip
    images = torch.rand(2, 3, 224, 224)
    out = dense_clip_features(model, images)
    assert out.shape == (2, 384, 14, 14) and out.dtype == torch.float32
    assert_close(out, _reference_maskclip(model, images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(224, 160), (200, 250)])
def test_other_sizes_interpolate_and_pad(clip, size):
    model, _ = clip
    images = torch.rand(1, 3, *size)
    out = dense_clip_features(model, images)
    grid = (-(-size[0] // 16), -(-size[1] // 16))
    assert out.shape == (1, 384, *grid)
    assert_close(out, _reference_maskclip(model, images), rtol=1e-4, atol=1e-5)
    padded = F.pad(images, (0, grid[1] * 16 - size[1], 0, grid[0] * 16 - size[0]), value=0.0)
    assert_close(out, dense_clip_features(model, padded))


def test_non_batch_first_transformer(clip):
    model, _ = clip
    images = torch.rand(1, 3, 224, 224)
    seq_first = copy.deepcopy(model)
    seq_first.visual.transformer.batch_first = False
    for block in seq_first.visual.transformer.resblocks:
        block.attn.batch_first = False
    assert_close(dense_clip_features(seq_first, images), dense_clip_features(model, images), rtol=1e-4, atol=1e-5)


def test_half_precision_runs_in_model_dtype(clip):
    model, _ = clip
    images = torch.rand(1, 3, 64, 80)
    low = copy.deepcopy(model).to(torch.bfloat16)
    out = dense_clip_features(low, images)
    assert out.dtype == torch.float32 and out.shape == (1, 384, 4, 5)
    cosine = F.cosine_similarity(out, dense_clip_features(model, images), dim=1)
    assert cosine.min() > 0.95


def test_layout_and_input_checks(clip):
    model, _ = clip
    with pytest.raises(ValueError, match="VisionTransformer"):
        dense_clip_features(types.SimpleNamespace(visual=nn.Linear(2, 2)), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        dense_clip_features(model, torch.rand(3, 32, 32))
    broken = copy.deepcopy(model)
    broken.visual.transformer.resblocks[-1].attn = nn.Identity()
    with pytest.raises(ValueError, match="MultiheadAttention"):
        dense_clip_features(broken, torch.rand(1, 3, 32, 32))


def test_split_aliases():
    assert split_aliases(["cat; kitty", "dog"]) == (["cat", "kitty", "dog"], [0, 0, 1])
    with pytest.raises(ValueError, match="empty alias"):
        split_aliases(["cat;;kitty"])
    with pytest.raises(ValueError):
        split_aliases("cat")


@torch.no_grad()
def test_text_classifier_aliases_against_reference(clip):
    model, tokenizer = clip
    clear_text_cache()
    templates = ("a photo of a {}.", "a drawing of a {}.")
    embeddings, alias_to_class = text_classifier(model, tokenizer, ["cat; kitty", "dog"], templates)
    assert embeddings.shape == (3, 384) and alias_to_class.tolist() == [0, 0, 1]
    assert_close(embeddings.norm(dim=-1), torch.ones(3))
    prompts = F.normalize(model.encode_text(tokenizer(["a photo of a kitty.", "a drawing of a kitty."])), dim=-1)
    assert_close(embeddings[1], F.normalize(prompts.mean(0), dim=0), rtol=1e-4, atol=1e-5)


class _BagOfTokensText(nn.Module):
    """Cheap stand-in text encoder (sum of random token embeddings) to check the full 80-template path."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(49408, 8), requires_grad=False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens].sum(dim=1)


def test_full_80_templates(clip):
    _, tokenizer = clip
    assert len(IMAGENET_TEMPLATES) == 80
    assert IMAGENET_TEMPLATES[0]("x") == "a bad photo of a x." and IMAGENET_TEMPLATES[-1]("x") == "a tattoo of the x."
    fake = _BagOfTokensText()
    embeddings, _ = text_classifier(fake, tokenizer, ["traffic light"])
    prompts = tokenizer([t("traffic light") for t in OPENAI_IMAGENET_TEMPLATES])
    expected = F.normalize(F.normalize(fake.encode_text(prompts), dim=-1).mean(0), dim=0)
    assert_close(embeddings[0], expected, rtol=1e-5, atol=1e-6)


def test_text_cache_hit(clip, monkeypatch):
    """The in-memory cache (the on-disk one, off here, is tested in test_text_cache.py)."""
    monkeypatch.setenv("LPOSS_CACHE_DIR", "off")
    model, tokenizer = clip
    calls = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda tokens: calls.append(len(tokens)) or original(tokens))
    clear_text_cache()
    templates = ("a photo of a {}.",)
    first = text_classifier(model, tokenizer, ["cat", "dog"], templates)
    assert len(calls) == 1
    second = text_classifier(model, tokenizer, ["cat", "dog"], templates)
    assert len(calls) == 1 and second[0] is first[0]
    text_classifier(model, tokenizer, ["cat", "bird"], templates)
    assert len(calls) == 2
    clear_text_cache()
    text_classifier(model, tokenizer, ["cat", "dog"], templates)
    assert len(calls) == 3
    # Weights changed in place after a first call: recomputed, and the embeddings follow the weights.
    with torch.no_grad():
        model.text_projection.mul_(-1)
    flipped = text_classifier(model, tokenizer, ["cat", "dog"], templates)
    with torch.no_grad():
        model.text_projection.mul_(-1)
    assert len(calls) == 4
    torch.testing.assert_close(flipped[0], -first[0])
