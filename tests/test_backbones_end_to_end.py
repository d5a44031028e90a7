"""Other backbones and the ProxyCLIP head through main_eval.py, on tiny random weights: DINO ViT-S/8 with CLIP
ViT-S/16 (two grids), DINOv2-S/14 with registers with a patch-14 CLIP, DINOv3-S/16 on real VOC images (a sweep, the
folder mode, `lposs.load` and `refine`), ProxyCLIP alone and under LPOSS+, a crop that is not a multiple of both
patch sizes, and CLIP towers on timm trunks (EVA02, SigLIP2, PE-Core) on VOC images."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from fake_datasets import make_dataset
from PIL import Image
from test_main_eval import (
    TINY,
    VOC_MINI,
    assert_one_line_error,
    cache_from_config,
    needs_voc,
    refuse_model_loading,
    run,
)
from tiny_models import TINY_CLIP_14, TINY_CLIP_16, TINY_EVA02, TINY_PE, TINY_SIGLIP2, write_tiny_tokenizer

import lposs

S8 = [*TINY, "model.dino.name=vit_small_patch8_224.dino"]
# short side 48, windows 48 x 64: DINO /8 grid 6 x 8, CLIP /16 grid 3 x 4 (resized to 6 x 8)
SMALL_8 = ["short_side=48", "crop=64", "stride=32", "k=50"]
V2 = [*TINY, "model.dino.name=vit_small_patch14_reg4_dinov2.lvd142m", f"model.clip.name={TINY_CLIP_14}"]
# short side 42, windows 42 x 56: both grids 3 x 4
SMALL_14 = ["short_side=42", "crop=56", "stride=28", "r=5"]
V3 = [*TINY, "model.dino.name=vit_small_patch16_dinov3", f"model.clip.name={TINY_CLIP_16}"]
# short side 48, windows 48 x 64: both grids 3 x 4 (RoPE of the 3 x 4 grid, not of DINOv3's 16 x 16 pretraining)
SMALL_16 = ["short_side=48", "crop=64", "stride=32", "r=5"]
_HEAD_KEYS = ("head", "proxy_features", "proxy_beta", "proxy_gamma")


def weights_only(model_cfg) -> str:
    """The model config less what the run sets on loaded weights (the CLIP head and ProxyCLIP's settings)."""
    return repr({**model_cfg, "clip": {k: v for k, v in model_cfg["clip"].items() if k not in _HEAD_KEYS}})


@pytest.fixture(autouse=True)
def backbones_by_weights(monkeypatch):
    """One set of random backbones per weights (the run sets the head on them), kept for the whole session."""
    cache_from_config(monkeypatch, backbones_by_weights.__dict__.setdefault("cache", {}), weights_only)


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_dataset(root, "voc")
    return root


@pytest.mark.parametrize(("config", "method"), [("lposs.yaml", "lposs"), ("proxyclip.yaml", "proxyclip")])
def test_dino_s8_with_clip_s16(voc, tmp_path, config, method):
    """Two grids (6 x 8 and 3 x 4 per window); ProxyCLIP alone on S/8's x (the head's config, no propagation)."""
    out = tmp_path / "out"
    assert run([config, "--dataset", "voc", f"data_root={voc}", "--output", str(out), *SMALL_8, *S8]) == 0
    record = read(out / "results.json")
    assert record["method"] == method and record["num_images"] == 2 and 0 <= record["mIoU"] <= 100
    assert record["config"]["model"]["dino"]["name"] == "vit_small_patch8_224.dino"
    assert record["config"]["patch_propagation"] is (method == "lposs")


@pytest.mark.parametrize(
    ("config", "backbones", "dino"),
    [
        ("lposs_plus.yaml", [*SMALL_14, *V2], "vit_small_patch14_reg4_dinov2.lvd142m"),
        pytest.param("lposs_plus_dinov3.yaml", [*SMALL_16, *V3], "vit_small_patch16_dinov3", marks=needs_voc),
    ],
    ids=["dinov2", "dinov3"],
)
def test_registers_and_proxyclip_under_lposs_plus(voc, tmp_path, config, backbones, dino):
    """LPOSS+ on MaskCLIP and on ProxyCLIP (labelled so): DINOv2-S/14 + registers with a patch-14 CLIP on generated
    images, DINOv3-S/16 (CLS + 4 storage tokens, RoPE) from its own config on real VOC images."""
    out = tmp_path / "sweep"
    data_root = VOC_MINI if "dinov3" in config else voc
    args = [config, "--dataset", "voc", f"data_root={data_root}", "--output", str(out), *backbones]
    assert run([*args, "--sweep", "model.clip.head=maskclip,proxyclip"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [row["setting"] for row in rows] == ["model.clip.head=maskclip", "model.clip.head=proxyclip"]
    records = [read(out / row["setting"] / "voc" / "results.json") for row in rows]
    assert [r["method"] for r in records] == ["lposs_plus", "lposs_plus (proxyclip)"]
    assert all(r["num_images"] == 2 and 0 <= r["mIoU"] <= 100 for r in records)
    assert {r["config"]["model"]["dino"]["name"] for r in records} == {dino}


@needs_voc
def test_dinov3_folder_mode_load_and_refine_on_real_voc_images(tmp_path):
    """The folder mode (main_eval.py --images) and `lposs.load` of lposs_plus_dinov3 give the same label maps, which
    vary; `refine` on the segmentor's own MaskCLIP window scores is `predict_scores` bit for bit."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for jpeg in sorted((VOC_MINI / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg")):
        shutil.copy(jpeg, photos / jpeg.name)
    classes = ["background", "person", "dog", "sky"]
    overrides = [*SMALL_16, *V3]
    folder = ["--images", str(photos), "--classes", ",".join(classes), "--save_predictions", str(out)]
    assert run(["lposs_plus_dinov3.yaml", *folder, *overrides]) == 0
    predictor = lposs.load("lposs_plus_dinov3", classes=classes, device="cpu", overrides=overrides)
    assert predictor.config.model.dino.name == "vit_small_patch16_dinov3"
    names = sorted(p.name for p in photos.glob("*.jpg"))
    maps = {name: predictor.predict(photos / name) for name in names}
    assert len(np.unique(np.concatenate([m.ravel() for m in maps.values()]))) >= 2  # the maps vary
    for name in names:
        np.testing.assert_array_equal(np.array(Image.open(out / "labels" / name.replace(".jpg", ".png"))), maps[name])
    image = np.array(Image.open(photos / names[0]).convert("RGB"))
    encoding = predictor.segmentor.encode(image)
    refined = predictor.refine(image, encoding.scores, encoding.boxes)
    assert refined.shape == (len(classes), *image.shape[:2])
    assert torch.equal(refined, predictor.predict_scores(image))


def test_crop_not_a_multiple_of_both_patch_sizes_exits_2_before_weights_load(voc, capsys, monkeypatch):
    refuse_model_loading(monkeypatch)
    code = run(["lposs.yaml", "--dataset", "voc", f"data_root={voc}", *V2, "crop=64", "stride=32"])
    assert_one_line_error(
        capsys, code, "crop=64", f"model.clip.name='{TINY_CLIP_14}' (14)", "(14), i.e. of 14 (e.g. 224)"
    )


TIMM_TOWER_REST = [
    "model.clip.pretrained=null",
    "model.dino.name=vit_small_patch16_224.dino",
    "model.dino.pretrained=null",
    "model.templates=single",
]


@pytest.fixture(scope="module")
def timm_tower_overrides(tmp_path_factory):
    """name -> overrides of the tiny CLIP towers on timm trunks; SigLIP2's tokenizer from a local folder."""
    folder = write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return {
        TINY_EVA02: [f"model.clip.name={TINY_EVA02}", *TIMM_TOWER_REST],
        TINY_SIGLIP2: [f"model.clip.name={TINY_SIGLIP2}", f"model.clip.tokenizer={folder}", *TIMM_TOWER_REST],
        TINY_PE: [f"model.clip.name={TINY_PE}", *TIMM_TOWER_REST],
    }


@needs_voc
@pytest.mark.parametrize("name", [TINY_EVA02, TINY_SIGLIP2, TINY_PE])
def test_clip_towers_on_timm_trunks_run_everywhere_a_vit_runs(timm_tower_overrides, tmp_path, name):
    """EVA02, SigLIP2 and PE-Core architectures (tiny, random) under LPOSS+ on a real VOC image: a main_eval.py sweep,
    the folder mode and lposs.load (MaskCLIP) give the same labels of the classes asked for; `refine` on the
    segmentor's own window scores is `predict_scores` bit for bit (LPOSS+)."""
    overrides = [*timm_tower_overrides[name], "short_side=64", "k=50", "r=5"]
    out = tmp_path / "out"
    args = ["lposs_plus.yaml", "--dataset", "voc", f"data_root={VOC_MINI}", "--output", str(out), "--limit", "1"]
    assert run([*args, *overrides, "num_workers=0", "--sweep", "alpha=0.9,0.95"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [row["setting"] for row in rows] == ["alpha=0.9", "alpha=0.95"]
    for row in rows:
        record = read(out / row["setting"] / "voc" / "results.json")
        assert record["num_images"] == 1 and 0 <= record["mIoU"] <= 100
        assert record["config"]["model"]["clip"]["name"] == name
    image = sorted((VOC_MINI / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[0]
    photos, labels_out = tmp_path / "photos", tmp_path / "labels_out"
    photos.mkdir()
    shutil.copy(image, photos / image.name)
    # MaskCLIP's scores (no propagation, which smooths random scores into one class) give maps that vary
    classes = ["sky", "person", "dog", "grass", "car", "table"]
    folder = ["--images", str(photos), "--classes", ",".join(classes), "--save_predictions", str(labels_out)]
    assert run(["maskclip.yaml", *folder, *overrides]) == 0
    predictor = lposs.load("maskclip", classes=classes, device="cpu", overrides=overrides)
    labels = predictor.predict(image)
    assert labels.shape == np.asarray(Image.open(image)).shape[:2] and set(np.unique(labels)) <= set(range(6))
    assert len(np.unique(labels)) >= 2  # the maps vary: equal maps mean something
    written = np.array(Image.open(labels_out / "labels" / image.name.replace(".jpg", ".png")))
    np.testing.assert_array_equal(written, labels)
    rgb = np.array(Image.open(image).convert("RGB"))
    predictor = lposs.load("lposs_plus", classes=classes, device="cpu", overrides=overrides)
    encoding = predictor.segmentor.encode(rgb)
    assert torch.equal(predictor.refine(rgb, encoding.scores, encoding.boxes), predictor.predict_scores(rgb))
