"""LPOSSBackbones: config building, shapes, normalisation and scores = cosine(CLIP head, text), heads and kinds."""

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.testing import assert_close

import lposs.models.lposs as lposs_module
import lposs.models.maskclip as maskclip_module
from lposs.models import (
    LPOSSBackbones,
    clear_text_cache,
    dense_clip_features,
    dino_features,
    dino_value_features,
    text_classifier,
)

CONFIG = {
    "clip": {"name": "ViT-S-16", "pretrained": None},
    "dino": {"name": "vit_small_patch16_224.dino", "pretrained": None},
    "dtype": "float32",
}
TEMPLATES = ("a photo of a {}.", "a rendering of a {}.")
CLASSES = ["cat; kitty", "dog", "sky"]


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    model = LPOSSBackbones.from_config(OmegaConf.create(CONFIG), "cpu")
    model.templates = TEMPLATES  # two prompts per alias keep the test fast on CPU
    model.set_classes(CLASSES)
    return model


def test_from_config_and_classes(backbones):
    assert backbones.device == torch.device("cpu")
    assert backbones.alias_to_class.tolist() == [0, 0, 1, 2]
    assert backbones.text_embeddings.shape == (4, 384)


def test_forward_shapes_normalisation_and_scores(backbones):
    windows = torch.rand(2, 3, 224, 224)
    features, scores = backbones(windows)
    assert features.shape == (2, 384, 14, 14) and scores.shape == (2, 4, 14, 14)
    assert features.dtype == scores.dtype == torch.float32
    assert_close(features.norm(dim=1), torch.ones(2, 14, 14))
    assert scores.abs().max() <= 1 + 1e-5
    text, _ = text_classifier(backbones.clip, backbones.tokenizer, CLASSES, TEMPLATES)
    clip_patches = F.normalize(dense_clip_features(backbones.clip, windows), dim=1)
    expected = (clip_patches.permute(0, 2, 3, 1) @ text.T).permute(0, 3, 1, 2)
    assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_odd_window_size(backbones):
    features, scores = backbones(torch.rand(1, 3, 200, 250))
    assert features.shape == (1, 384, 13, 16) and scores.shape == (1, 4, 13, 16)


def test_clip_scores_resized_bilinearly_to_dino_grid(backbones, monkeypatch):
    """Two grids: the scores of the CLIP grid are resized (align_corners False), not the CLIP features."""
    coarse = torch.randn(1, 384, 7, 7)
    monkeypatch.setattr(lposs_module, "dense_clip_features", lambda _model, _images, *_head: coarse)
    _, scores = backbones(torch.rand(1, 3, 224, 224))
    coarse_scores = torch.einsum("bchw,ac->bahw", F.normalize(coarse, dim=1), backbones.text_embeddings)
    expected = F.interpolate(coarse_scores, size=(14, 14), mode="bilinear", align_corners=False)
    assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    resized_features = F.normalize(F.interpolate(coarse, size=(14, 14), mode="bilinear", align_corners=False), dim=1)
    features_first = torch.einsum("bchw,ac->bahw", resized_features, backbones.text_embeddings)
    assert (scores - features_first).abs().max() > 1e-3  # resizing the features instead would show


@pytest.fixture(scope="module")
def dino_s8():
    torch.manual_seed(1)
    return timm.create_model("vit_small_patch8_224.dino", pretrained=False, num_classes=0).eval()


def test_two_grids_dino_s8_with_clip_s16(backbones, dino_s8):
    """ViT-S/16 CLIP and DINO ViT-S/8: graph on the 8 x 8 grid of a 64 x 64 window, CLIP scores of its 4 x 4 grid
    resized to it; the patch sizes are reported for the windows and the patch centres."""
    two = LPOSSBackbones(backbones.clip, backbones.tokenizer, dino_s8, TEMPLATES)
    two.set_classes(CLASSES)
    assert (two.patch_size, two.patch_sizes, backbones.patch_sizes) == (8, (16, 8), (16, 16))
    windows = torch.rand(2, 3, 64, 64)
    features, scores = two(windows)
    assert torch.equal(features, dino_features(dino_s8, windows))
    clip_patches = F.normalize(dense_clip_features(backbones.clip, windows), dim=1)  # [2, 384, 4, 4]
    on_clip_grid = torch.einsum("behw,ae->bahw", clip_patches, two.text_embeddings)
    expected = F.interpolate(on_clip_grid, size=(8, 8), mode="bilinear", align_corners=False)
    assert scores.shape == (2, 4, 8, 8) and torch.equal(scores, expected)


def test_proxyclip_head_takes_dino_x_from_the_same_pass(backbones, dino_s8):
    """ProxyCLIP on DINO S/8's x (its default proxy) while the graph keeps DINO's v: one DINO pass gives both."""
    proxy = {"proxy_features": "x", "proxy_beta": 1.1, "proxy_gamma": 2.5}
    head = LPOSSBackbones(backbones.clip, backbones.tokenizer, dino_s8, TEMPLATES, clip_head="proxyclip", proxy=proxy)
    head.set_classes(CLASSES)
    windows = torch.rand(2, 3, 64, 64)
    passes = []
    handle = dino_s8.patch_embed.proj.register_forward_hook(lambda *_: passes.append(1))
    try:
        features, scores = head(windows)
    finally:
        handle.remove()
    assert len(passes) == 1
    assert torch.equal(features, dino_features(dino_s8, windows, "v"))
    proxy_features = dino_features(dino_s8, windows, "x")
    clip_patches = dense_clip_features(backbones.clip, windows, "proxyclip", proxy=proxy_features, beta=1.1, gamma=2.5)
    expected = torch.einsum("behw,ae->bahw", F.normalize(clip_patches, dim=1), head.text_embeddings)
    assert scores.shape == (2, 4, 8, 8) and torch.equal(scores, expected)  # on the proxy's grid: no resize
    head.set_heads("proxyclip", "v", {"proxy_features": "k"})
    assert head.proxy == {"proxy_features": "k", "proxy_beta": 1.2, "proxy_gamma": 3.0}  # the rest ProxyCLIP's
    assert not torch.equal(head(windows)[1], scores)


def test_errors(backbones):
    fresh = LPOSSBackbones(backbones.clip, backbones.tokenizer, backbones.dino)
    with pytest.raises(ValueError, match="set_classes"):
        fresh(torch.rand(1, 3, 32, 32))
    broken = {"clip": {"name": "ViT-S-16"}, "dino": CONFIG["dino"], "dtype": "float32"}
    with pytest.raises(ValueError, match="clip.pretrained"):
        LPOSSBackbones.from_config(broken)


def test_float32_is_bit_identical_to_the_plain_extractors(backbones):
    """No autocast for float32: the outputs are exactly those of the feature functions run on their own."""
    windows = torch.rand(1, 3, 64, 96)  # small: bfloat16 is slow on most CPUs
    features, scores = backbones(windows)
    assert torch.equal(features, dino_value_features(backbones.dino, windows))
    clip_patches = F.normalize(dense_clip_features(backbones.clip, windows), dim=1)
    assert torch.equal(scores, torch.einsum("behw,ae->bahw", clip_patches, backbones.text_embeddings))


def test_bfloat16_runs_under_autocast_with_float32_outputs(backbones):
    half = LPOSSBackbones(backbones.clip, backbones.tokenizer, backbones.dino, TEMPLATES, precision=torch.bfloat16)
    half.set_classes(CLASSES)
    windows = torch.rand(1, 3, 64, 96)  # small: bfloat16 is slow on most CPUs
    full_features, full_scores = backbones(windows)
    features, scores = half(windows)
    assert half.clip.visual.conv1.weight.dtype == torch.float32  # weights untouched: autocast casts per op
    assert features.dtype == scores.dtype == half.text_embeddings.dtype == torch.float32
    # bfloat16 really ran (results differ from float32) and stays close to float32
    assert not torch.equal(features, full_features) and not torch.equal(scores, full_scores)
    assert not torch.equal(half.text_embeddings, backbones.text_embeddings)
    assert F.cosine_similarity(features, full_features, dim=1).min() > 0.97
    assert F.cosine_similarity(half.text_embeddings, backbones.text_embeddings, dim=1).min() > 0.99
    assert (scores - full_scores).abs().max() < 0.05


def test_from_config_keeps_float32_weights_and_sets_autocast(backbones, monkeypatch):
    built = []
    monkeypatch.setattr(
        lposs_module, "build_clip", lambda *a, **k: built.append(a) or (backbones.clip, backbones.tokenizer)
    )
    monkeypatch.setattr(lposs_module, "build_dino", lambda *a: built.append(a) or backbones.dino)
    half = LPOSSBackbones.from_config({**CONFIG, "dtype": "bfloat16"}, "cpu")
    assert half.precision is torch.bfloat16 and all(len(args) == 3 for args in built)  # no dtype: float32 weights
    assert half.clip_id == {"name": "ViT-S-16", "pretrained": None}


HEADS_AND_KINDS = [("sclip", "v"), ("clearclip", "k"), ("naclip", "q")]


def _with_head(backbones, head, kind, precision=None) -> LPOSSBackbones:
    """The same modules with another CLIP head and DINO feature kind."""
    other = LPOSSBackbones(
        backbones.clip, backbones.tokenizer, backbones.dino, TEMPLATES, precision, backbones.clip_id, head, kind
    )
    other.set_classes(CLASSES)
    return other


@pytest.mark.parametrize(("head", "kind"), HEADS_AND_KINDS)
def test_heads_and_kinds_reach_the_extractors_and_windows_stay_independent(backbones, head, kind):
    windows = torch.rand(2, 3, 64, 96)
    other = _with_head(backbones, head, kind)
    features, scores = other(windows)
    assert torch.equal(features, dino_features(backbones.dino, windows, kind))
    clip_patches = F.normalize(dense_clip_features(backbones.clip, windows, head), dim=1)
    assert torch.equal(scores, torch.einsum("behw,ae->bahw", clip_patches, other.text_embeddings))
    one_features, one_scores = other(windows[1:2])  # a batch of windows is each window on its own
    assert_close(one_features, features[1:2], rtol=1e-5, atol=1e-6)
    assert_close(one_scores, scores[1:2], rtol=1e-5, atol=1e-6)
    _, default_scores = backbones(windows)
    assert (scores - default_scores).abs().max() > 1e-2  # the head did change the scores


@pytest.mark.parametrize(("head", "kind"), HEADS_AND_KINDS)
def test_heads_and_kinds_under_bfloat16_autocast(backbones, head, kind):
    windows = torch.rand(1, 3, 64, 96)
    full_features, full_scores = _with_head(backbones, head, kind)(windows)
    features, scores = _with_head(backbones, head, kind, torch.bfloat16)(windows)
    assert features.dtype == scores.dtype == torch.float32
    assert not torch.equal(scores, full_scores)  # bfloat16 really ran
    assert F.cosine_similarity(features, full_features, dim=1).min() > 0.97
    assert (scores - full_scores).abs().max() < 0.05


def test_text_side_does_not_depend_on_the_head(backbones, monkeypatch, tmp_path):
    """Every head shares one text classifier: one on-disk cache entry, read back for the other head."""
    monkeypatch.setenv("LPOSS_CACHE_DIR", str(tmp_path))
    clear_text_cache()
    first = _with_head(backbones, "naclip", "k")
    clear_text_cache()
    encoded = []
    monkeypatch.setattr(maskclip_module, "_encode_aliases", lambda *a: encoded.append(a) or pytest.fail("re-encoded"))
    second = _with_head(backbones, "sclip", "v")
    assert torch.equal(first.text_embeddings, second.text_embeddings) and not encoded
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    assert torch.equal(first.text_embeddings, backbones.text_embeddings)  # and the MaskCLIP head's own


def test_from_config_reads_head_and_kind(backbones, monkeypatch):
    monkeypatch.setattr(lposs_module, "build_clip", lambda *a, **k: (backbones.clip, backbones.tokenizer))
    monkeypatch.setattr(lposs_module, "build_dino", lambda *a: backbones.dino)
    config = {**CONFIG, "clip": {**CONFIG["clip"], "head": "clearclip"}, "dino": {**CONFIG["dino"], "features": "q"}}
    built = LPOSSBackbones.from_config(config, "cpu")
    assert (built.clip_head, built.dino_kind) == ("clearclip", "q")
    assert built.proxy == {"proxy_features": "x", "proxy_beta": 1.2, "proxy_gamma": 3.0}  # absent keys: ProxyCLIP's
    proxy = {"head": "proxyclip", "proxy_features": "k", "proxy_beta": 1.0, "proxy_gamma": 2.0}
    built = LPOSSBackbones.from_config({**CONFIG, "clip": {**CONFIG["clip"], **proxy}}, "cpu")
    assert built.clip_head == "proxyclip" and built.proxy == {k: v for k, v in proxy.items() if k != "head"}
    assert (LPOSSBackbones.from_config(CONFIG, "cpu").clip_head, backbones.dino_kind) == ("maskclip", "v")
    assert built.clip_id == {"name": "ViT-S-16", "pretrained": None}  # the text cache key: no head in it
