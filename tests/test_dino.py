"""DINO and DINOv2 features (v, k, q, x) against qkv recomputed from timm's modules and the paper code's rule, and
against references written from facebookresearch/dino and facebookresearch/dinov2 (tests/dino_reference.py)."""

import pytest
import timm
import torch
import torch.nn.functional as F
from dino_reference import reference_features
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.testing import assert_close

import lposs.models.dino as dino_module
from lposs.models import DINO_FEATURES, dino_feature_maps, dino_features, dino_value_features

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


@torch.no_grad()
def _paper_extract_feats(vit, images: torch.Tensor, kind: str) -> torch.Tensor:
    """The paper code's `get_dino_features` / `extract_feats` (vladan-stojnic/LPOSS), on a 224 x 224 batch.

    The hooked qkv output [B, N, 3D] is read as (3, heads, head_dim), split into q, k, v of [B, heads, N, d],
    the chosen one moved to [B, N, heads, d], CLS dropped, heads flattened, and each patch L2-normalised along
    channels of [B, D, N].
    """
    captured = []
    handle = vit.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        vit((images - MEAN) / STD)
    finally:
        handle.remove()
    batch, tokens, channels = captured[0].shape
    heads = vit.blocks[-1].attn.num_heads
    qkv = captured[0].reshape(batch, tokens, 3, heads, channels // heads // 3).permute(2, 0, 3, 1, 4)
    chosen = qkv[{"q": 0, "k": 1, "v": 2}[kind]].transpose(1, 2)  # [B, N, heads, d]
    feats = chosen[:, 1:].flatten(-2, -1).permute(0, 2, 1)  # [B, D, N - 1]
    feats = feats / feats.norm(dim=1, keepdim=True)
    return feats.reshape(batch, channels // 3, 14, 14)


@pytest.fixture(scope="module")
def kinds(vit):
    images = torch.rand(2, 3, 224, 224)
    return images, {kind: dino_features(vit, images, kind) for kind in DINO_FEATURES}


@pytest.mark.parametrize("kind", ["v", "k", "q"])
def test_each_kind_equals_the_paper_code(vit, kinds, kind):
    images, ours = kinds
    assert ours[kind].shape == (2, 384, 14, 14) and ours[kind].dtype == torch.float32
    assert_close(ours[kind], _paper_extract_feats(vit, images, kind), rtol=1e-5, atol=1e-6)
    assert_close(ours[kind].norm(dim=1), torch.ones(2, 14, 14))


def test_kinds_differ_and_v_is_the_default_bit_for_bit(vit, kinds):
    """A swapped q and k (or k taken for v) cannot pass: the three parts are far apart."""
    images, ours = kinds
    for first, second in (("q", "k"), ("k", "v"), ("q", "v")):
        assert (ours[first] - ours[second]).abs().max() > 0.1
    assert torch.equal(ours["v"], dino_value_features(vit, images))
    assert torch.equal(ours["v"], _reference_224(vit, images))  # the value path of step 6 as it was


def test_unknown_kind_is_refused(vit):
    with pytest.raises(ValueError, match="'y'.*v, k, q, x"):
        dino_features(vit, torch.rand(1, 3, 32, 32), "y")


RTOL = 1e-5
# timm name -> the positional resize of the authors' hub: (offset, antialias)
DINOV2 = {"vit_small_patch14_dinov2.lvd142m": (0.1, False), "vit_small_patch14_reg4_dinov2.lvd142m": (0.0, True)}


def jittered(name: str):
    """A random timm model of `name`, parameters jittered so that biases, norms and layer scales are not 0 / 1."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def dinov2():
    return {name: jittered(name) for name in DINOV2}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert_close(actual, expected, rtol=RTOL, atol=RTOL * expected.abs().max().item())


# 224: the 16 x 16 grid of a default window, resized from the 37 x 37 of the 518 px pretraining; 56 x 84: a 4 x 6 grid.
@pytest.mark.parametrize("size", [(224, 224), (56, 84)])
@pytest.mark.parametrize("name", list(DINOV2))
def test_dinov2_equals_facebookresearch_dinov2(dinov2, name, size):
    """kinds x (get_intermediate_layers) and v (the last qkv), registers dropped, each model's positional resize."""
    vit, images = dinov2[name], torch.rand(1 if size[0] == 224 else 2, 3, *size)
    ours = dino_feature_maps(vit, images, ("x", "v"))
    for kind in ("x", "v"):
        assert ours[kind].shape == (images.shape[0], 384, size[0] // 14, size[1] // 14)
        assert_matches(ours[kind], reference_features(vit, images, kind, *DINOV2[name]))
        if size[0] != 224:  # one pass for two kinds = one kind at a time, bit for bit
            assert torch.equal(ours[kind], dino_features(vit, images, kind))


@pytest.mark.parametrize("name", list(DINOV2))
def test_dinov2_planted_bugs_fail(dinov2, name):
    """Another model's positional offset / antialias, or registers taken as patches, move the features."""
    vit, images = dinov2[name], torch.rand(1, 3, 56, 84)
    ours = dino_features(vit, images, "x")
    offset, antialias = DINOV2[name]
    wrong = [reference_features(vit, images, "x", 0.1 - offset, antialias)]  # the other offset
    wrong.append(reference_features(vit, images, "x", offset, not antialias))
    if vit.reg_token is not None:
        wrong.append(reference_features(vit, images, "x", offset, antialias, keep_registers=True))
    for expected in wrong:
        with pytest.raises(AssertionError):
            assert_matches(ours, expected)


def test_wrong_positional_rule_in_the_code_fails(dinov2, monkeypatch):
    """The register model resized with the original models' rule (offset 0.1, no antialias) no longer matches."""
    name = "vit_small_patch14_reg4_dinov2.lvd142m"
    vit, images = dinov2[name], torch.rand(1, 3, 56, 84)
    monkeypatch.setattr(dino_module, "positional_resize_rule", lambda _vit: (0.1, False))
    with pytest.raises(AssertionError):
        assert_matches(dino_features(vit, images, "x"), reference_features(vit, images, "x", *DINOV2[name]))


@pytest.mark.parametrize(
    ("name", "size"), [("vit_small_patch16_224.dino", (224, 224)), ("vit_small_patch8_224.dino", (64, 48))]
)
def test_dino_x_equals_facebookresearch_dino(vit, name, size):
    """DINO's get_intermediate_layers(x, 1)[0][:, 1:]: at patch 16 on the pretraining grid, at patch 8 on an 8 x 6
    grid (DINO's (g + 0.1) positional resize)."""
    model = vit if name == "vit_small_patch16_224.dino" else jittered(name)
    images = torch.rand(1, 3, *size)
    patch = model.patch_embed.patch_size[0]
    ours = dino_feature_maps(model, images, ("x", "v"))
    assert ours["x"].shape == (1, 384, size[0] // patch, size[1] // patch)
    assert_matches(ours["x"], reference_features(model, images, "x", 0.1, False))
    assert_matches(ours["v"], reference_features(model, images, "v", 0.1, False))
    assert (ours["x"] - ours["v"]).abs().max() > 0.1  # x is not the value part
