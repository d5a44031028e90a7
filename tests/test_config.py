"""Configs: the _base_ chain, overrides, and checks of every value."""

import pytest
from omegaconf import OmegaConf

from segmentation import SegmentorSettings
from segmentation.config import CONFIG_DIR, ConfigError, load_config


def test_defaults_are_the_papers():
    config = load_config("lposs.yaml")
    # SPEC section 4, written out here independently of the YAML file.
    expected = {
        "k": 400,
        "gamma": 3.0,
        "sigma": 0.01,
        "pix_dist_pow": 1.0,
        "alpha": 0.95,
        "tau": 0.01,
        "r": 13,
        "crop": 224,
        "stride": 112,
        "short_side": 448,
        "long_side": 2048,
        "tol": 1e-6,
        "maxiter": 10,
    }
    assert {key: config[key] for key in expected} == expected
    assert config.model.clip.name == "ViT-B-16" and config.model.clip.pretrained == "laion2b_s34b_b88k"
    assert config.model.dino.name == "vit_base_patch16_224.dino" and config.model.dino.pretrained is True
    assert SegmentorSettings.from_config(config) == SegmentorSettings()  # the dataclass defaults agree


def test_plus_and_maskclip_differ_by_one_key():
    base = OmegaConf.to_container(load_config("lposs.yaml"))
    plus = OmegaConf.to_container(load_config("lposs_plus.yaml"))
    maskclip = OmegaConf.to_container(load_config(CONFIG_DIR / "maskclip.yaml"))
    assert {k for k in base if base[k] != plus[k]} == {"pixel_refine"} and plus["pixel_refine"] is True
    assert {k for k in base if base[k] != maskclip[k]} == {"patch_propagation"}
    assert SegmentorSettings.from_config(load_config("lposs_plus.yaml")).method == "lposs_plus"
    assert SegmentorSettings.from_config(load_config("maskclip.yaml")).method == "maskclip"


def test_overrides_are_typed_and_nested():
    config = load_config("lposs.yaml", ["k=200", "alpha=0.9", "model.clip.pretrained=null", "data_root=/x"])
    assert config.k == 200 and config.alpha == 0.9 and config.model.clip.pretrained is None and config.data_root == "/x"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("k=0", "k=0"),
        ("k=abc", "k='abc'"),
        ("gamma=-1", "gamma=-1"),
        ("tau=0", "tau=0"),
        ("r=12", "r=12"),
        ("crop=100", "crop=100"),
        ("stride=300", "stride=300"),
        ("maxiter=1.5", "maxiter=1.5"),
        ("knn_backend=annoy", "knn_backend='annoy'"),
        ("model.dtype=float64", "model.dtype='float64'"),
        ("wandb.mode=cloud", "wandb.mode='cloud'"),
        ("device=tpu", "device='tpu'"),
        ("pixel_refine=maybe", "pixel_refine='maybe'"),
        ("model=3", "model"),
        ("long_side=100", "long_side=100"),
    ],
)
def test_bad_values_name_the_key_and_value(override, fragment):
    with pytest.raises(ConfigError, match="invalid|section") as error:
        load_config("lposs.yaml", [override])
    assert fragment in str(error.value)


def test_unknown_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.dino.weights'"):
        load_config("lposs.yaml", ["model.dino.weights=x"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("nothere.yaml")
    loop = tmp_path / "loop.yaml"
    loop.write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(loop)
