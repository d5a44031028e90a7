"""Configs: Hydra composition, the typed schema, checks of every value, sweep grids."""

import itertools
import logging
import os
import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import lposs.evaluation.config as config_module
from lposs.evaluation.config import (
    _RULES,
    CONFIG_DIR,
    ConfigError,
    expand_sweep,
    load_config,
    sweep_parameters,
)
from lposs.segmentation import SegmentorSettings


def test_defaults_are_the_papers():
    config = load_config("lposs.yaml")
    # The paper's defaults, written out here independently of the YAML file.
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
        "pixel_backend": "auto",
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
    for name in ("lposs_plus.yaml", "maskclip.yaml"):  # the files themselves: a defaults list and one setting
        lines = [line for line in (CONFIG_DIR / name).read_text().splitlines() if line and not line.startswith("#")]
        assert len(lines) == 2 and lines[0].startswith("defaults: [lposs, _self_]"), name


def test_plus_dinov3_differs_from_plus_by_the_dino_name():
    plus = OmegaConf.to_container(load_config("lposs_plus.yaml"))
    dinov3 = OmegaConf.to_container(load_config("lposs_plus_dinov3.yaml"))
    assert {k for k in plus if plus[k] != dinov3[k]} == {"model"}
    assert dinov3["model"]["dino"] == {**plus["model"]["dino"], "name": "vit_base_patch16_dinov3.lvd1689m"}
    assert {k for k in plus["model"] if plus["model"][k] != dinov3["model"][k]} == {"dino"}
    lines = [line for line in (CONFIG_DIR / "lposs_plus_dinov3.yaml").read_text().splitlines() if line[:1] not in "#"]
    assert lines[0].startswith("defaults: [lposs_plus, _self_]") and len(lines) == 2


def test_overrides_are_typed_and_nested():
    config = load_config("lposs.yaml", ["k=200", "alpha=0.9", "model.clip.pretrained=null", "data_root=/x", "gamma=2"])
    assert config.k == 200 and config.alpha == 0.9 and config.model.clip.pretrained is None and config.data_root == "/x"
    assert type(config.gamma) is float and config.gamma == 2.0  # the schema's type, not YAML's int
    config = load_config("lposs.yaml", ["model.dino.pretrained=false", "++k=5", "stride=${crop}"])
    assert config.model.dino.pretrained is False and config.k == 5 and config.stride == 224
    assert OmegaConf.to_container(config)["stride"] == 224  # resolved: the saved config holds the value that ran


@pytest.mark.parametrize("override", ["k=${nothere}", "k=${data_root}"])
def test_interpolations_that_cannot_resolve(override):
    with pytest.raises(ConfigError, match="config value k cannot be resolved: ") as error:
        load_config("lposs.yaml", [override])
    assert "\n" not in str(error.value)


def test_quoting_and_null():
    assert load_config("lposs.yaml", ["data_root='/a b/c'"]).data_root == "/a b/c"
    assert load_config("lposs.yaml", ['data_root="/a,b"']).data_root == "/a,b"  # a quoted comma is no sweep
    assert load_config("lposs.yaml", ["data_root=/a b"]).data_root == "/a b"  # as the shell passes "data_root=/a b"
    assert load_config("lposs.yaml", ["wandb.entity=null"]).wandb.entity is None
    assert load_config("lposs.yaml", ["model.dino.pretrained=/w/dino.pth"]).model.dino.pretrained == "/w/dino.pth"


# One out-of-range or wrongly typed value per range rule (and a few more); each message names key and value.
BAD_VALUES = [
    ("patch_propagation=maybe", "patch_propagation='maybe'"),
    ("pixel_refine=maybe", "pixel_refine='maybe'"),
    ("strict_float32=maybe", "strict_float32='maybe'"),
    ("short_side=0", "short_side=0"),
    ("long_side=100", "long_side=100"),
    ("crop=-14", "crop=-14"),
    ("stride=0", "stride=0"),
    ("stride=300", "stride=300"),
    ("window_batch=0", "window_batch=0"),
    ("k=0", "k=0"),
    ("k=abc", "k='abc'"),
    ("k=1.5", "k=1.5"),
    ("k=[1,2]", "k=[1, 2]"),
    ("gamma=-1", "gamma=-1"),
    ("gamma=0", "gamma=0"),
    ("sigma=-0.1", "sigma=-0.1"),
    ("pix_dist_pow=0", "pix_dist_pow=0"),
    ("alpha=1", "alpha=1"),
    ("alpha=0", "alpha=0"),
    ("alpha=true", "alpha=True"),
    ("knn_backend=annoy", "knn_backend='annoy'"),
    ("tau=0", "tau=0"),
    ("r=12", "r=12"),
    ("r=1", "r=1"),
    ("pixel_backend=cuda", "pixel_backend='cuda'"),
    ("tol=0", "tol=0"),
    ("maxiter=1.5", "maxiter=1.5"),
    ("maxiter=0", "maxiter=0"),
    ("seed=x", "seed='x'"),
    ("num_workers=-1", "num_workers=-1"),
    ("dist_timeout=0", "dist_timeout=0"),
    ("data_root=''", "data_root=''"),
    ("device=tpu", "device='tpu'"),
    ("device=cuda:x", "device='cuda:x'"),
    ("model.dtype=float64", "model.dtype='float64'"),
    ("model.templates=all", "model.templates='all'"),
    ("model.clip.name=''", "model.clip.name=''"),
    ("model.dino.name=''", "model.dino.name=''"),
    ("model.clip.head=mask_clip", "model.clip.head='mask_clip' is invalid: expected one of maskclip, sclip, clearclip"),
    ("model.dino.features=value", "model.dino.features='value' is invalid: expected one of v, k, q, x"),
    ("model.clip.proxy_features=y", "model.clip.proxy_features='y' is invalid: expected one of v, k, q, x"),
    ("model.clip.proxy_beta=high", "model.clip.proxy_beta='high'"),
    ("model.clip.proxy_gamma=-1", "model.clip.proxy_gamma=-1.0 is invalid: expected a number > 0"),
    ("model.dino.pretrained=3", "model.dino.pretrained=3"),
    ("wandb.mode=cloud", "wandb.mode='cloud'"),
    ("model.clip.pos_interpolation=area", "model.clip.pos_interpolation='area' is invalid: expected size or offset"),
    ("class_names=mine", "class_names='mine' is invalid: expected one of lposs, sclip, clearclip, proxyclip"),
    ("class_files_dir=''", "class_files_dir='' is invalid: expected null or a folder path"),
    ("logit_scale=0", "logit_scale=0.0 is invalid: expected null or a number > 0"),
    ("pamr_steps=-1", "pamr_steps=-1 is invalid: expected an integer >= 0"),
    ("pamr_dilations=[0]", "pamr_dilations=[0] is invalid"),
    ("area_thd=1.5", "area_thd=1.5 is invalid: expected null or a number in [0, 1]"),
    ("prob_thd=high", "prob_thd='high'"),
    ("background=-1", "background=-1 is invalid: expected an integer >= 0"),
    ("model=3", "'model' is a section"),
    ("model.clip=3", "'model.clip' is a section"),
]


@pytest.mark.parametrize("override, fragment", BAD_VALUES)
def test_bad_values_name_the_key_and_value(override, fragment):
    with pytest.raises(ConfigError, match="invalid|section") as error:
        load_config("lposs.yaml", [override])
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_every_range_rule_has_a_bad_value_above():
    tested = {override.split("=")[0] for override, _ in BAD_VALUES}
    assert set(_RULES) <= tested


@pytest.mark.parametrize(
    "override",
    ["alpha=0.999", "sigma=0.0", "num_workers=0", "r=3", "crop=16", "long_side=448", "k=1", "device=cuda:1", "seed=-3"],
)
def test_values_on_the_boundary_are_accepted(override):
    key, value = override.split("=")
    overrides = [override, "stride=16"] if key == "crop" else [override]
    assert str(OmegaConf.select(load_config("lposs.yaml", overrides), key)) == value


def test_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.dino.weights'; valid keys here: model.dino.name"):
        load_config("lposs.yaml", ["model.dino.weights=x"])
    for override, key in [("+extra=1", "'extra'"), ("foo.bar=1", "'foo'"), ("hydra.job.chdir=true", "'hydra.job")]:
        with pytest.raises(ConfigError, match=f"unknown config key {key}"):
            load_config("lposs.yaml", [override])
    typo = tmp_path / "typo.yaml"
    typo.write_text("defaults: [lposs, _self_]\nmodel:\n  clip:\n    weights: x\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.clip.weights'"):
        load_config(typo)


@pytest.mark.parametrize(
    "override, message",
    [
        ("k", "override 'k' cannot be parsed"),
        ("=3", "override '=3' has no key"),
        ("k=[1,2", "override 'k=\\[1,2' cannot be parsed"),
        ("k=100,200", "override 'k=100,200' is a sweep"),
        ("alpha=choice(0.9,0.95)", "is a sweep"),
    ],
)
def test_unparsable_overrides_and_sweeps_in_a_single_config(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("lposs.yaml", [override])
    assert "\n" not in str(error.value)


def test_config_by_path_outside_configs(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mine.yaml").write_text("defaults: [lposs_plus, _self_]\nk: 7\n")
    config = load_config(folder / "mine.yaml", ["alpha=0.5"])
    assert (config.k, config.alpha, config.pixel_refine, config.tau) == (7, 0.5, True, 0.01)
    monkeypatch.chdir(folder)
    assert load_config("mine.yaml").k == 7  # relative to the working directory
    # a standalone copy of lposs.yaml (no defaults list) gets the same schema and checks
    (folder / "copy.yaml").write_text((CONFIG_DIR / "lposs.yaml").read_text())
    assert load_config("copy.yaml") == load_config("lposs.yaml")
    with pytest.raises(ConfigError, match="k='abc' is invalid"):
        load_config("copy.yaml", ["k=abc"])


def test_repository_in_a_folder_with_a_space_and_a_quote(tmp_path, monkeypatch):
    clone = tmp_path / "it's my clone" / "configs"  # the search path override that adds configs/ must quote it
    shutil.copytree(CONFIG_DIR, clone, ignore=shutil.ignore_patterns("datasets"))
    monkeypatch.setattr(config_module, "CONFIG_DIR", clone)
    (clone / "lposs.yaml").write_text((CONFIG_DIR / "lposs.yaml").read_text().replace("k: 400", "k: 9"))
    (tmp_path / "mine.yaml").write_text("defaults: [lposs_plus, _self_]\n")
    assert load_config(tmp_path / "mine.yaml").k == 9 and load_config("maskclip.yaml").k == 9


@pytest.mark.parametrize(
    "text, message",
    [
        ("k: 7\n", "config key 'alpha' has no value in .*part.yaml"),
        ("_base_: lposs.yaml\nk: 7\n", "uses _base_, which Hydra configs replace by a defaults list"),
        ("defaults: [part, _self_]\n", "includes itself through its defaults list"),
        ("defaults: [lpos, _self_]\n", "Could not load 'lpos'"),
        ("k: [1\n", "cannot parse a YAML file"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    (tmp_path / "part.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(tmp_path / "part.yaml")
    assert "\n" not in str(error.value)


def test_missing_and_misnamed_files(tmp_path):
    available = (
        "clearclip.yaml, clearclip_own.yaml, lposs.yaml, lposs_plus.yaml, lposs_plus_dinov3.yaml, "
        "lposs_plus_dinov3_pe.yaml, lposs_plus_dinov3_siglip2.yaml, maskclip.yaml, naclip.yaml, naclip_own.yaml, "
        "proxyclip.yaml, proxyclip_own.yaml, sclip.yaml, sclip_own.yaml"
    )
    with pytest.raises(ConfigError, match=f"not found.*available: {available}"):
        load_config("nothere.yaml")
    (tmp_path / "x.yml").write_text("k: 1\n")
    with pytest.raises(ConfigError, match="must be a .yaml file"):
        load_config(tmp_path / "x.yml")


def test_hydra_leaves_cwd_files_and_logging_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, hydra_logger = logging.getLogger(), logging.getLogger("hydra")
    before = (list(root.handlers), root.level, list(hydra_logger.handlers), hydra_logger.level)
    first = load_config("lposs_plus.yaml", ["k=10"])
    second = load_config("lposs_plus.yaml")  # a second call in the same process, no state carried over
    assert (first.k, second.k) == (10, 400)
    assert os.getcwd() == str(tmp_path) and os.listdir(tmp_path) == []  # no outputs/, no .hydra/
    assert (list(root.handlers), root.level, list(hydra_logger.handlers), hydra_logger.level) == before
    assert not GlobalHydra.instance().is_initialized()


def test_inside_an_enclosing_hydra_context(tmp_path):
    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert load_config("lposs.yaml").k == 400
        assert compose("app").x == 1  # the caller's Hydra still composes from its own folder
    assert not GlobalHydra.instance().is_initialized()


def test_expand_sweep_is_hydras_grid():
    overrides = ["k=100,200,400", "device=cpu", "alpha=0.9,0.95", "tau=0.005,0.01"]
    grid = expand_sweep(overrides)
    expected = [
        [f"k={k}", "device=cpu", f"alpha={alpha}", f"tau={tau}"]
        for k, alpha, tau in itertools.product([100, 200, 400], [0.9, 0.95], [0.005, 0.01])
    ]
    assert grid == expected and len(grid) == 12
    # Hydra's own basic sweeper (what `-m` runs), here also for range(), choice() and a repeated key; a smaller grid
    # (each point is composed and checked: 0.1 s each)
    overrides = ["k=100,200,400", "device=cpu", "r=range(3,8,2)", "pixel_refine=choice(true,false)", "k=10,20"]
    hydra_batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    assert expand_sweep(overrides) == hydra_batches[0]
    assert sweep_parameters(overrides) == ["k", "r", "pixel_refine"]


def test_expand_sweep_points_load_as_written():
    grid = expand_sweep(["data_root='/a b','/c,d'", "model.clip.pretrained=null", "k=range(100,301,100)"])
    assert len(grid) == 6 and all("model.clip.pretrained=null" in point for point in grid)
    loaded = [load_config("lposs.yaml", point) for point in grid]
    assert [(c.data_root, c.k) for c in loaded] == list(itertools.product(["/a b", "/c,d"], [100, 200, 300]))
    assert all(c.model.clip.pretrained is None for c in loaded)


def test_expand_sweep_without_sweeps_and_quoted_commas():
    assert expand_sweep(["data_root='a,b'", "k=5"]) == [["data_root='a,b'", "k=5"]]
    assert expand_sweep([]) == [[]]
    assert sweep_parameters(["data_root='a,b'", "k=5", "r=13,13", "k=[1,2]"]) == []  # a list is one value


def test_expand_sweep_checks_every_point_first():
    with pytest.raises(ConfigError, match=r"k=0 is invalid.*\(sweep point: k=0 alpha=0.9\)"):
        expand_sweep(["k=100,0,200", "alpha=0.9"])
    with pytest.raises(ConfigError, match="unknown config key 'model.dino.weights'"):
        expand_sweep(["k=100,200", "model.dino.weights=1,2"])
    with pytest.raises(ConfigError, match="continuous interval"):
        expand_sweep(["alpha=interval(0.5,0.9)"])
    # across keys only against the config the grid is for: crop=224 with stride=300 is bad in lposs.yaml
    assert len(expand_sweep(["crop=448,224", "stride=300"])) == 2
    with pytest.raises(ConfigError, match="stride=300 is invalid: expected at most crop=224"):
        expand_sweep(["crop=448,224", "stride=300"], config="lposs_plus.yaml")


def test_crop_0_is_the_whole_image_and_its_stride_is_unused():
    config = load_config("lposs.yaml", ["crop=0"])
    assert config.crop == 0 and config.stride == 112  # no "stride at most crop" check


def test_head_and_feature_choices_are_the_models():
    """The config's lists (kept free of torch imports) are the models package's."""
    from lposs.evaluation.config import CLIP_HEADS, DINO_FEATURES
    from lposs.models import CLIP_HEADS as MODEL_HEADS
    from lposs.models import DINO_FEATURES as MODEL_FEATURES

    assert CLIP_HEADS == MODEL_HEADS and DINO_FEATURES == MODEL_FEATURES


@pytest.mark.parametrize("head", ["sclip", "clearclip", "naclip", "proxyclip"])
def test_head_configs_are_the_baseline_with_that_head(head):
    config = load_config(f"{head}.yaml")
    paper = load_config("maskclip.yaml")
    assert config.model.clip.head == head and config.patch_propagation is False
    config.model.clip.head = "maskclip"
    assert config == paper  # nothing else differs from the MaskCLIP baseline
    plus = load_config("lposs_plus.yaml", [f"model.clip.head={head}"])
    assert plus.model.clip.head == head and plus.pixel_refine and plus.patch_propagation
    clip = plus.model.clip  # ProxyCLIP's constants and proxy, whatever the head
    assert (clip.proxy_features, clip.proxy_beta, clip.proxy_gamma) == ("x", 1.2, 3.0)
