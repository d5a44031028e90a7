"""Backbone factories: names, dtypes, local checkpoints, the HF cache and the offline error."""

import time

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

import lposs.models.factory as factory
from lposs.models import WeightsUnavailableError, build_clip, build_dino, resolve_dtype

DINO = "vit_small_patch16_224.dino"


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Empty HF / torch caches; HF_HUB_OFFLINE unset (each test sets what it needs)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64")


def test_random_init_builds_and_casts():
    model, tokenizer = build_clip("ViT-S-16", "null", "cpu", "bfloat16")
    assert not model.training and model.visual.conv1.weight.dtype == torch.bfloat16
    assert tokenizer(["a cat"]).shape == (1, 77)
    vit = build_dino(DINO, False, "cpu", "float32")
    assert not vit.training and vit.num_classes == 0


def test_bad_names_and_models_that_are_not_vits():
    """Any ViT patch size is built (two grids, docs/method.md); names that do not exist and non-ViTs are refused."""
    with pytest.raises(ValueError, match="ViT-Q-99"):
        build_clip("ViT-Q-99", None)
    with pytest.raises(ValueError, match="model.clip.name='RN50': no patch size"):
        build_clip("RN50", None)
    with pytest.raises(ValueError, match="vit_nope_patch16"):
        build_dino("vit_nope_patch16", None)
    with pytest.raises(ValueError, match="model.dino.name='resnet50': a ResNet, not a ViT"):
        build_dino("resnet50", None)
    with pytest.raises(ValueError, match="model.dtype"):
        build_clip("ViT-S-16", None, dtype="half")
    with pytest.raises(ValueError, match="not_a_tag"):
        build_clip("ViT-S-16", "not_a_tag")


def test_offline_without_cache_fails_fast(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as clip_error:
        build_clip("ViT-B-16", "laion2b_s34b_b88k")
    with pytest.raises(WeightsUnavailableError) as dino_error:
        build_dino("vit_base_patch16_224.dino", True)
    assert time.perf_counter() - start < 10
    clip_message, dino_message = str(clip_error.value), str(dino_error.value)
    assert "ViT-B-16" in clip_message and "laion2b_s34b_b88k" in clip_message
    assert "model.clip.pretrained=/path/to/" in clip_message and "\n" not in clip_message
    assert "vit_base_patch16_224.dino" in dino_message and "model.dino.pretrained=/path/to/" in dino_message
    assert "\n" not in dino_message and isinstance(dino_error.value, RuntimeError)


def test_dinov3_offline_without_cache_fails_fast_in_one_line(empty_caches, monkeypatch):
    """DINOv3's LVD-1689M tag goes through timm's hub like the other DINO weights: offline, one line, in seconds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as error:
        build_dino("vit_base_patch16_dinov3.lvd1689m", True)
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "vit_base_patch16_dinov3.lvd1689m" in message and "model.dino.pretrained=/path/to/" in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_unreachable_hub_fails_fast_without_offline_flag(empty_caches, monkeypatch):
    monkeypatch.setattr(factory, "_reachable", lambda *_args, **_kwargs: False)
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        build_dino("vit_base_patch16_224.dino", "true")


def test_missing_local_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "weights.bin")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_clip("ViT-S-16", missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dino(DINO, missing)


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    vit = timm.create_model(DINO, pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "dino.pth")
    _assert_same_weights(build_dino(DINO, str(tmp_path / "dino.pth")), vit)
    clip = open_clip.create_model("ViT-S-16", pretrained=None)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    loaded, _ = build_clip("ViT-S-16", str(tmp_path / "clip.pt"))
    _assert_same_weights(loaded, clip)


def test_hub_weights_come_from_the_local_cache_offline(empty_caches, monkeypatch):
    """A file in the HF cache layout is used with HF_HUB_OFFLINE=1 (no network touched)."""
    torch.manual_seed(2)
    vit = timm.create_model(DINO, pretrained=False, num_classes=0)
    repo = empty_caches / "hf" / "hub" / "models--timm--vit_small_patch16_224.dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in vit.state_dict().items()}, repo / "snapshots" / ("0" * 40) / "model.safetensors"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_same_weights(build_dino(DINO, True), vit)
