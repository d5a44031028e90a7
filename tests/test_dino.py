"""DINO value features against qkv recomputed here from timm's modules."""

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.testing import assert_close

from models import dino_value_features

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vit():
    """Random timm ViT-S/16 (DINO config); parameters jittered so biases and norms are not trivially 0 / 1."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def _values_from_last_norm1_input(vit, x: torch.Tensor, grid) -> torch.Tensor:
    """Value part of blocks[-1].attn.qkv applied to norm1 of the last block's input, CLS dropped, normalised."""
    block = vit.blocks[-1]
    qkv = block.attn.qkv(block.norm1(x))
    value = qkv.reshape(x.shape[0], x.shape[1], 3, -1)[:, 1:, 2]
    value = F.normalize(value, dim=-1)
    return value.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def _reference_224(vit, images: torch.Tensor) -> torch.Tensor:
    """timm's own forward_features, with the last block's input captured by a hook."""
    captured = []
    handle = vit.blocks[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        vit.forward_features((images - MEAN) / STD)
    finally:
        handle.remove()
    return _values_from_last_norm1_input(vit, captured[0], (14, 14))


@torch.no_grad()
def _reference_other_grid(vit, images: torch.Tensor) -> torch.Tensor:
    """Tokens built here with the facebookresearch/dino positional interpolation rule."""
    height, width = images.shape[-2:]
    gh, gw = -(-height // 16), -(-width // 16)
    x = F.pad(images, (0, gw * 16 - width, 0, gh * 16 - height))
    x = vit.patch_embed.proj((x - MEAN) / STD).flatten(2).transpose(1, 2)
    patch_pos = vit.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, scale_factor=((gh + 0.1) / 14, (gw + 0.1) / 14), mode="bicubic")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
    x = torch.cat([vit.cls_token + vit.pos_embed[:, :1], x + patch_pos], dim=1)
    for block in vit.blocks[:-1]:
        x = block(x)
    return _values_from_last_norm1_input(vit, x, (gh, gw))


def test_224_matches_timm_forward_and_hook_removed(vit):
    images = torch.rand(2, 3, 224, 224)
    out = dino_value_features(vit, images)
    assert out.shape == (2, 384, 14, 14) and out.dtype == torch.float32
    assert_close(out, _reference_224(vit, images), rtol=1e-4, atol=1e-5)
    assert_close(out.norm(dim=1), torch.ones(2, 14, 14))
    assert len(vit.blocks[-1].attn.qkv._forward_hooks) == 0


@pytest.mark.parametrize("size", [(224, 160), (200, 250)])
def test_other_sizes_use_dino_interpolation_and_black_padding(vit, size):
    images = torch.rand(1, 3, *size)
    out = dino_value_features(vit, images)
    grid = (-(-size[0] // 16), -(-size[1] // 16))
    assert out.shape == (1, 384, *grid)
    assert_close(out, _reference_other_grid(vit, images), rtol=1e-4, atol=1e-5)
    padded = F.pad(images, (0, grid[1] * 16 - size[1], 0, grid[0] * 16 - size[0]), value=0.0)
    assert_close(out, dino_value_features(vit, padded))


def test_hook_removed_on_error(vit, monkeypatch):
    def fail(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(vit.blocks[-1].mlp, "forward", fail)
    with pytest.raises(RuntimeError, match="boom"):
        dino_value_features(vit, torch.rand(1, 3, 32, 32))
    assert len(vit.blocks[-1].attn.qkv._forward_hooks) == 0


def test_rejects_other_layouts():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1)
    vit.blocks[-1].attn.qkv = torch.nn.Linear(192, 10)
    with pytest.raises(ValueError, match="qkv"):
        dino_value_features(vit, torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="VisionTransformer"):
        dino_value_features(torch.nn.Linear(2, 2), torch.rand(1, 3, 32, 32))
