"""DINOv3 features (v, k, q, x) on tiny random timm Evas of DINOv3's layout, against timm's own forward and a
reference written from facebookresearch/dinov3 and timm (tests/dinov3_reference.py)."""

import pytest
import timm
import torch
import torch.nn.functional as F
from dinov3_reference import LVD_MEAN, LVD_STD, SAT_MEAN, SAT_STD, reference_features
from torch.testing import assert_close

from lposs.models import DINO_FEATURES, dino_feature_maps, dino_features
from lposs.models.checks import ModelConfigError, check_crop, check_dino_name

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}  # head dim 32: RoPE of 8 periods per axis
RTOL = 1e-5
# square, portrait and landscape windows: the RoPE grid is the window's own (14 x 14, 14 x 10, 10 x 14)
SIZES = [(224, 224), (224, 160), (160, 224)]


def tiny_dinov3(name: str) -> torch.nn.Module:
    """A tiny random timm DINOv3 of `name`'s layout; parameters jittered so that biases, norms and layer scales are
    not 0 / 1 and attention depends on position (larger qkv weights)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, **TINY).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            param.add_((0.3 if "qkv" in key else 0.05) * torch.randn_like(param))
            if "gamma" in key:
                param.add_(0.5)  # layer scale 1e-5 at init would hide every block but the first
    return model


@pytest.fixture(scope="module")
def models():
    names = ("vit_small_patch16_dinov3", "vit_small_patch16_dinov3_qkvb", "vit_large_patch16_dinov3.sat493m")
    return {name: tiny_dinov3(name) for name in names}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert_close(actual, expected, rtol=RTOL, atol=RTOL * expected.abs().max().item())


def assert_differs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape != expected.shape or (actual - expected).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("vit_small_patch16_dinov3", SIZES[0]),
        ("vit_small_patch16_dinov3", SIZES[1]),
        ("vit_small_patch16_dinov3_qkvb", SIZES[2]),
    ],
)
def test_each_kind_equals_the_reference(models, name, size):
    """v, k, q (the last qkv on norm1, before RoPE) and x (final norm), CLS and storage tokens dropped, RoPE of the
    window's own grid; one pass for all kinds = one kind at a time, bit for bit."""
    vit, images = models[name], torch.rand(2, 3, *size)
    ours = dino_feature_maps(vit, images, DINO_FEATURES)
    expected = reference_features(vit, images)
    for kind in DINO_FEATURES:
        assert ours[kind].shape == (2, 64, size[0] // 16, size[1] // 16) and ours[kind].dtype == torch.float32
        assert_matches(ours[kind], expected[kind])
        assert_close(ours[kind].norm(dim=1), torch.ones(2, size[0] // 16, size[1] // 16))
    if size == (224, 160):
        for kind in DINO_FEATURES:
            assert torch.equal(ours[kind], dino_features(vit, images, kind))
    for first, second in (("q", "k"), ("k", "v"), ("q", "v"), ("x", "v")):
        assert (ours[first] - ours[second]).abs().max() > 0.1


@pytest.mark.parametrize("size", [(224, 224), (160, 224)])
def test_x_and_v_equal_timm_forward_features(models, size):
    """x = timm's forward_features patch tokens; v = the value part of the last qkv (with q_bias, k_bias, v_bias)
    on the last block's norm1 output, hooked in timm's own forward (dynamic_img_size=True)."""
    vit, images = models["vit_small_patch16_dinov3_qkvb"], torch.rand(1, 3, *size)
    captured = []
    handle = vit.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            out = vit.forward_features(
                (images - torch.tensor(LVD_MEAN).view(1, 3, 1, 1)) / torch.tensor(LVD_STD).view(1, 3, 1, 1)
            )
    finally:
        handle.remove()
    attn, grid = vit.blocks[-1].attn, (size[0] // 16, size[1] // 16)
    qkv = F.linear(captured[0], attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
    value = qkv.reshape(1, qkv.shape[1], 3, -1)[:, :, 2]
    ours = dino_feature_maps(vit, images, ("x", "v"))
    for kind, tokens in (("x", out), ("v", value)):
        expected = F.normalize(tokens[:, 5:], dim=-1).reshape(1, *grid, -1).permute(0, 3, 1, 2)
        assert_matches(ours[kind], expected)


def test_planted_bugs_move_the_features(models):
    """v rotated, k / q taken after RoPE, storage tokens kept, RoPE of a fixed 224 or of the transposed grid: each
    reference so built is far from ours (and from the right reference), so the tests above would catch it."""
    vit, images = models["vit_small_patch16_dinov3"], torch.rand(1, 3, 224, 160)
    ours = dino_feature_maps(vit, images, DINO_FEATURES)
    wrong = [
        ("v", reference_features(vit, images, rope_on_v=True)["v"]),
        ("k", reference_features(vit, images, rotated_kq=True)["k"]),
        ("q", reference_features(vit, images, rotated_kq=True)["q"]),
        ("x", reference_features(vit, images, keep_storage=True)["x"]),
        ("v", reference_features(vit, images, rope_grid=(14, 14))["v"]),
        ("v", reference_features(vit, images, rope_grid=(10, 14))["v"]),
    ]
    for kind, expected in wrong:
        assert_differs(ours[kind], expected)


def test_mean_and_std_are_the_models_own(models):
    """SAT-493M: the satellite mean / std from its pretrained_cfg; LVD-1689M: ImageNet's. Swapped, both move."""
    images = torch.rand(1, 3, 160, 224)
    sat, lvd = models["vit_large_patch16_dinov3.sat493m"], models["vit_small_patch16_dinov3"]
    ours_sat, ours_lvd = dino_features(sat, images, "x"), dino_features(lvd, images, "x")
    assert_matches(ours_sat, reference_features(sat, images, SAT_MEAN, SAT_STD)["x"])
    assert_differs(ours_sat, reference_features(sat, images, LVD_MEAN, LVD_STD)["x"])
    assert_matches(ours_lvd, reference_features(lvd, images, LVD_MEAN, LVD_STD)["x"])
    assert_differs(ours_lvd, reference_features(lvd, images, SAT_MEAN, SAT_STD)["x"])


def test_black_padding_to_a_multiple_of_16(models):
    vit, images = models["vit_small_patch16_dinov3"], torch.rand(1, 3, 100, 70)
    padded = F.pad(images, (0, 80 - 70, 0, 112 - 100), value=0.0)
    ours = dino_feature_maps(vit, images, ("v", "x"))
    assert ours["v"].shape == (1, 64, 7, 5)
    for kind, expected in reference_features(vit, padded).items():
        if kind in ours:
            assert_matches(ours[kind], expected)


def test_other_evas_and_layouts_are_refused():
    eva02 = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, depth=1)
    with pytest.raises(ValueError, match="DINOv3's RoPE"):
        dino_features(eva02, torch.rand(1, 3, 28, 28))
    vit = tiny_dinov3("vit_small_patch16_dinov3")
    vit.reg_token = None  # a prefix count the tokens no longer give
    with pytest.raises(ValueError, match="CLS token and registers as the 5 prefix tokens"):
        dino_features(vit, torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize(
    "name", ["vit_small_patch16_dinov3", "vit_base_patch16_dinov3_qkvb", "vit_large_patch16_dinov3.sat493m"]
)
def test_config_check_accepts_dinov3_names_and_their_patch_size(name):
    check_dino_name(name)
    model_cfg = {"clip": {"name": "ViT-B-16"}, "dino": {"name": name}}
    check_crop(224, model_cfg)
    with pytest.raises(ModelConfigError, match="of 16"):
        check_crop(56, model_cfg)
