"""End to end: main_eval.py with tiny random backbones on real VOC images and generated datasets."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import make_dataset
from mmseg.core.evaluation import mean_iou
from PIL import Image
from tiny_models import TINY_OVERRIDES, TINY_TEXT_OVERRIDES

from lposs.cli import main_eval
from lposs.datasets import DATASET_KEYS, build_dataset, load_label
from lposs.models import LPOSSBackbones

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_MINI = REPO_ROOT.parent / "shared" / "data" / "voc_mini"
needs_voc = pytest.mark.skipif(not VOC_MINI.is_dir(), reason="needs ../shared/data/voc_mini")

TINY = [*TINY_OVERRIDES, "num_workers=0"]
TINY_TEXT = [*TINY_TEXT_OVERRIDES, "num_workers=0"]  # a 2-block text tower, for long class lists
# Small images: short side 48 < crop 64, so windows are 48 x 64 (a partial grid) and everything stays fast.
SMALL = ["short_side=48", "crop=64", "stride=32"]


_BACKBONES: dict = {}  # (model config, device) -> backbones, for the whole session


def cache_from_config(monkeypatch, cache: dict, key_of=repr) -> None:
    """LPOSSBackbones.from_config builds once per (key_of(model config), device), kept in `cache`."""
    original = LPOSSBackbones.from_config.__func__

    def cached(cls, model_cfg, device="cpu"):
        key = (key_of(model_cfg), str(device))
        if key not in cache:
            cache[key] = original(cls, model_cfg, device)
        return cache[key]

    monkeypatch.setattr(LPOSSBackbones, "from_config", classmethod(cached))


@pytest.fixture(autouse=True)
def shared_backbones(monkeypatch):
    """:func:`share_backbones` for every test (module fixtures call it themselves)."""
    share_backbones(monkeypatch)


def share_backbones(monkeypatch) -> None:
    """Build the random backbones once per session: main() asks for them on every call."""
    cache_from_config(monkeypatch, _BACKBONES)


def run(argv):
    # mmseg's logger keeps the stderr of the test that created it (a closed capture by now): follow the current one
    for handler in logging.getLogger("mmseg").handlers:
        if type(handler) is logging.StreamHandler:
            handler.stream = sys.stderr  # not setStream: it flushes the closed one
    return main_eval.main(main_eval.parse_args(argv))


@needs_voc
def test_voc_results_predictions_and_metric_equal_mmseg(tmp_path):
    out, pred = tmp_path / "out", tmp_path / "pred"
    code = run(
        [
            "lposs_plus.yaml",
            "--dataset",
            "voc",
            "--measure_boundary",
            "--output",
            str(out),
            "--save_predictions",
            str(pred),
            "--save_visualisations",
            "1",
            f"data_root={VOC_MINI}",
            "short_side=112",
            *TINY,
        ]
    )
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    assert record["dataset"] == "voc" and record["method"] == "lposs_plus" and record["num_images"] == 2
    assert set(record["IoU"]) == {"background", *build_dataset("voc", VOC_MINI).CLASSES[1:]}
    assert record["boundary_mIoU"] is not None and record["config"]["pixel_refine"] is True
    assert record["config"]["short_side"] == 112 and record["seconds_per_image"] > 0
    assert (out / "config.yaml").is_file() and "voc" in (out / "eval.log").read_text()
    overlays = list((out / "visualisations").glob("*.png"))  # --save_visualisations 1: the first image only
    assert len(overlays) == 1 and overlays[0].stem == Path(build_dataset("voc", VOC_MINI).img_infos[0]["filename"]).stem
    # Predictions: one PNG per image at its original size; metrics equal mmseg's mean_iou on the same maps.
    dataset = build_dataset("voc", VOC_MINI)
    preds, labels = [], []
    for idx, info in enumerate(dataset.img_infos):
        png = np.array(Image.open(pred / Path(info["filename"]).with_suffix(".png").name))
        label = load_label(dataset, idx)
        assert png.shape == label.shape
        preds.append(png.astype(np.int64))
        labels.append(label)
    ref = mean_iou(preds, labels, num_classes=21, ignore_index=255)
    ours = np.array([np.nan if v is None else v / 100 for v in record["IoU"].values()])
    np.testing.assert_allclose(ours, ref["IoU"], rtol=1e-12, equal_nan=True)
    assert record["mIoU"] == pytest.approx(np.nanmean(ref["IoU"]) * 100)


@needs_voc
def test_same_config_and_seed_give_identical_metrics(tmp_path):
    # k=10: a small graph smooths less, so the tiny models' label maps hold several classes
    args = ["lposs.yaml", "--dataset", "voc", f"data_root={VOC_MINI}", "short_side=112", "k=10", *TINY]
    first = ["--output", str(tmp_path / "a"), "--save_predictions", str(tmp_path / "pa"), "--image_batch", "1"]
    assert run([*args, *first]) == 0
    # the second run loads images in two worker processes and batches both images' windows together:
    # the order, the label maps and the metrics stay the same
    second = ["--output", str(tmp_path / "b"), "--save_predictions", str(tmp_path / "pb"), "--image_batch", "2"]
    assert run([*args, *second, "num_workers=2"]) == 0
    # the method itself draws no random numbers: another seed, with the same (cached) backbone weights, gives the
    # same maps, so noise added to the scores fails this test even when it is seeded
    assert run([*args, "--save_predictions", str(tmp_path / "pc"), "seed=1"]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert a["IoU"] == b["IoU"] and a["mIoU"] == b["mIoU"] and a["aAcc"] == b["aAcc"]
    assert a["mIoU"] > 0  # not all zero, as voc20 with the tiny models was
    runs = ("pa", "pb", "pc")
    maps = {d: {p.name: np.array(Image.open(p)) for p in sorted((tmp_path / d).glob("*.png"))} for d in runs}
    assert len(maps["pa"]) == 2 and maps["pa"].keys() == maps["pb"].keys() == maps["pc"].keys()
    assert len(np.unique(np.concatenate([m.ravel() for m in maps["pa"].values()]))) >= 3  # real label maps
    dataset = build_dataset("voc", VOC_MINI)
    correct = 0
    for idx, info in enumerate(dataset.img_infos):
        name = Path(info["filename"]).with_suffix(".png").name
        np.testing.assert_array_equal(maps["pa"][name], maps["pb"][name])
        np.testing.assert_array_equal(maps["pa"][name], maps["pc"][name])
        # per-class counts of the saved maps (numpy bincount, independent of the code under test)
        label = load_label(dataset, idx)
        valid = label != 255
        hits = [np.bincount(maps[d][name][valid & (maps[d][name] == label)], minlength=21) for d in ("pa", "pb")]
        np.testing.assert_array_equal(hits[0], hits[1])
        correct += hits[0].sum()
    assert correct > 0


def test_all_datasets_table_on_generated_layouts(tmp_path, capsys):
    for key in DATASET_KEYS:
        if key not in ("voc20", "context59", "coco_object"):  # these share folders with voc, context, coco_stuff
            make_dataset(tmp_path, key)
    make_dataset(tmp_path, "coco_object")
    out = tmp_path / "out"
    code = run(
        [
            "maskclip.yaml",
            "--dataset",
            "all",
            "--output",
            str(out),
            "--save_predictions",
            str(tmp_path / "pred"),
            "--measure_boundary",
            f"data_root={tmp_path}",
            *SMALL,
            *TINY_TEXT,  # ~620 class names
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "method",
        "VOC",
        "Context",
        "Object",
        "VOC20",
        "C59",
        "Stuff",
        "City",
        "ADE",
        "avg",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["mIoU"]) == list(main_eval.PAPER_ORDER)
    for key in DATASET_KEYS:
        record = json.loads((out / key / "results.json").read_text())
        assert record["num_images"] == 2 and record["method"] == "maskclip"
        dataset = build_dataset(key, tmp_path)
        assert len(record["IoU"]) == len(dataset.CLASSES)
        for idx, info in enumerate(dataset.img_infos):
            png = Image.open(tmp_path / "pred" / key / Path(info["filename"]).with_suffix(".png"))
            assert png.size[::-1] == load_label(dataset, idx).shape


# ------------------------------------------------------------------------------------------ bad input


def assert_one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    for fragment in fragments:
        assert fragment in err[-1]


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("kk=3", ("unknown config key 'kk'",)),
        ("alpha=1.5", ("alpha=1.5", "(0, 1)")),
        ("r=4", ("r=4", "odd")),
        ("model.clip.nme=x", ("model.clip.nme",)),
    ],
)
def test_config_errors(tmp_path, capsys, override, fragments):
    assert_one_line_error(
        capsys, run(["lposs.yaml", "--dataset", "voc", f"data_root={tmp_path}", override]), *fragments
    )


def test_unknown_dataset_and_missing_folder(tmp_path, capsys):
    assert_one_line_error(
        capsys, run(["lposs.yaml", "--dataset", "pascal", f"data_root={tmp_path}"]), "pascal", "voc20"
    )
    assert_one_line_error(
        capsys,
        run(["lposs.yaml", "--dataset", "ade20k", f"data_root={tmp_path}"]),
        str(tmp_path / "ADEChallengeData2016"),
    )
    assert_one_line_error(capsys, run(["nothere.yaml", "--dataset", "voc"]), "nothere.yaml")


def test_missing_split_file(tmp_path, capsys):
    make_dataset(tmp_path, "voc")
    split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.unlink()
    assert_one_line_error(capsys, run(["lposs.yaml", "--dataset", "voc", f"data_root={tmp_path}", *TINY]), str(split))


def test_unreadable_image_and_size_mismatch(tmp_path, capsys):
    make_dataset(tmp_path, "ade20k")
    image = tmp_path / "ADEChallengeData2016/images/validation/img_a.jpg"
    image.write_bytes(b"not a jpeg")
    args = ["maskclip.yaml", "--dataset", "ade20k", f"data_root={tmp_path}", *SMALL, *TINY_TEXT]
    assert_one_line_error(capsys, run(args), str(image))
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(image)  # label is 37 x 53
    assert_one_line_error(capsys, run(args), "img_a.png", "37x53", "10x12")


def snapshot(*folders):
    """Every file under the folders: bytes, mtime and mode; and every entry of their parent folder."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            stat = path.stat()
            files[path] = (path.read_bytes() if path.is_file() else None, stat.st_mtime_ns, stat.st_mode)
    return files, sorted(p.name for p in folders[0].parent.iterdir())


def first_run_into(tmp_path):
    """voc,voc20 into out (predictions into pred): the results a later, failing run must not touch."""
    make_dataset(tmp_path, "voc")
    out, pred = tmp_path / "out", tmp_path / "pred"
    common = [f"data_root={tmp_path}", "--output", str(out), "--save_predictions", str(pred), *SMALL, *TINY]
    assert run(["lposs.yaml", "--dataset", "voc,voc20", "--measure_boundary", *common]) == 0
    return out, pred, common


def test_failed_run_leaves_earlier_results_untouched(tmp_path, capsys):
    out, pred, common = first_run_into(tmp_path)
    voc, voc20 = (json.loads((out / k / "results.json").read_text()) for k in ("voc", "voc20"))
    summary = json.loads((out / "summary.json").read_text())  # the whole table
    assert summary["mIoU"] == {"voc": voc["mIoU"], "voc20": voc20["mIoU"]}
    assert summary["boundary_mIoU"] == {"voc": voc["boundary_mIoU"], "voc20": voc20["boundary_mIoU"]}
    assert summary["average"]["mIoU"] == pytest.approx((voc["mIoU"] + voc20["mIoU"]) / 2)
    assert summary["average"]["boundary_mIoU"] == pytest.approx((voc["boundary_mIoU"] + voc20["boundary_mIoU"]) / 2)
    before = snapshot(out, pred)
    assert (out / "eval.log").stat().st_size > 0 and len(list(pred.rglob("*.png"))) == 4
    # the scenario: ade20k is missing -> exit 2, nothing under out or pred changed, nothing left beside
    assert_one_line_error(
        capsys, run(["lposs.yaml", "--dataset", "voc,ade20k", "k=7", *common]), "ADEChallengeData2016"
    )
    assert snapshot(out, pred) == before
    # a bad value in the grid of a sweep, too
    code = run(["lposs.yaml", "--dataset", "voc", "--sweep", "k=5,0", *common])
    assert_one_line_error(capsys, code, "k=0")
    assert snapshot(out, pred) == before


@pytest.mark.parametrize("fail_at", [1, 2])  # voc and voc20 share one pass: its first image, or its second
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_leaves_earlier_results_untouched(tmp_path, capsys, monkeypatch, error, fail_at):
    out, pred, common = first_run_into(tmp_path)
    before = snapshot(out, pred)
    from lposs.segmentation import Segmentor

    calls = []
    original = Segmentor.propagate_columns

    def fails_on_an_image(self, encoding, settings, groups, graphs=None):
        calls.append(1)
        if len(calls) == fail_at:  # at 2, the first image's predictions of both datasets are already staged
            raise error("injected")
        return original(self, encoding, settings, groups, graphs)

    monkeypatch.setattr(Segmentor, "propagate_columns", fails_on_an_image)
    args = ["lposs.yaml", "--dataset", "voc,voc20", "k=7", *common]
    if error is KeyboardInterrupt:
        assert run(args) == 130
    else:
        with pytest.raises(RuntimeError, match="injected"):
            run(args)
    assert len(calls) == fail_at
    assert snapshot(out, pred) == before


def test_output_files_are_0644_and_record_versions(tmp_path, monkeypatch):
    old_umask = os.umask(0o022)
    try:
        out, pred, _ = first_run_into(tmp_path)
    finally:
        os.umask(old_umask)
    for path in [*out.rglob("*.json"), out / "config.yaml", out / "eval.log", *pred.rglob("*.png")]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    record = json.loads((out / "voc" / "results.json").read_text())
    import open_clip
    import timm
    import torch

    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["timm"] == timm.__version__
    assert record["versions"]["open_clip"] == open_clip.__version__ and record["versions"]["mmseg"] == "0.30.0"
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert record["git_commit"] == (git.stdout.strip() if git.returncode == 0 else None)


def test_every_missing_dataset_in_one_line(tmp_path, capsys):
    make_dataset(tmp_path, "voc")  # voc and voc20 are there, the six others are not
    code = run(["lposs.yaml", "--dataset", "all", f"data_root={tmp_path}", *TINY])
    missing = ("context", "coco_object", "context59", "coco_stuff", "cityscapes", "ade20k")
    assert_one_line_error(capsys, code, "6 datasets", *(f"dataset '{key}'" for key in missing))


def refuse_model_loading(monkeypatch):
    def load(cls, model_cfg, device="cpu"):
        raise AssertionError("the models were loaded before the pre-flight check failed")

    monkeypatch.setattr(LPOSSBackbones, "from_config", classmethod(load))


def test_wandb_without_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path, "cityscapes")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    refuse_model_loading(monkeypatch)
    out = tmp_path / "out"
    code = run(
        [
            "maskclip.yaml",
            "--dataset",
            "cityscapes",
            f"data_root={tmp_path}",
            "--output",
            str(out),
            "wandb.mode=offline",
            *SMALL,
            *TINY,
        ]
    )
    assert_one_line_error(capsys, code, "wandb.mode=offline", "pip install wandb")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cityscapes"]


def test_model_config_checked_before_any_work(tmp_path, capsys, monkeypatch):
    from lposs import models

    class ModelConfigError(ValueError):
        """Stands for models.ModelConfigError (the models package may not have it yet)."""

    checked = []

    def check_model_config(model_cfg, device, crop=None):
        checked.append((model_cfg.clip.name, str(device)))
        if model_cfg.clip.name == "ViT-B-32":
            raise ModelConfigError("config value model.clip.name='ViT-B-32' is invalid: patch size 32, expected 16")

    monkeypatch.setattr(models, "check_model_config", check_model_config, raising=False)
    refuse_model_loading(monkeypatch)
    make_dataset(tmp_path, "cityscapes")
    out = tmp_path / "out"
    args = ["lposs.yaml", "--dataset", "cityscapes", f"data_root={tmp_path}", "--output", str(out), *TINY]
    assert_one_line_error(capsys, run([*args, "--sweep", "model.clip.name=ViT-S-16,ViT-B-32"]), "ViT-B-32", "patch")
    assert checked == [("ViT-S-16", "cpu"), ("ViT-B-32", "cpu")]  # every model of the grid, before any loading
    assert not out.exists()


@pytest.mark.parametrize(
    ("device", "world_size", "expected"),
    [("cuda:1", "1", "this machine has 1 GPU"), ("cuda:0", "2", "use device=cuda")],
)
def test_gpu_index_checked_before_any_work(monkeypatch, device, world_size, expected):
    """A GPU index the machine lacks, or one index for every torchrun process, is one ConfigError line."""
    from lposs.evaluation.config import ConfigError
    from lposs.evaluation.runner import setup_distributed

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # the CUDA-only branch, forced on the CPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    with pytest.raises(ConfigError, match=expected):
        setup_distributed(device)


def test_local_rank_beyond_the_gpus_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    # torchrun --nproc_per_node larger than the GPU count: LOCAL_RANK 2 on a machine with 2 GPUs.
    refuse_model_loading(monkeypatch)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # the CUDA-only branch, forced on the CPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.set_device", lambda device: pytest.fail(f"set_device({device}) called"))
    monkeypatch.setenv("LOCAL_RANK", "2")
    make_dataset(tmp_path, "cityscapes")
    code = run(["lposs.yaml", "--dataset", "cityscapes", f"data_root={tmp_path}", "device=cuda", *TINY])
    assert_one_line_error(capsys, code, "LOCAL_RANK=2", "2 GPU(s)")


def test_each_rank_sets_its_device_before_the_process_group(monkeypatch):
    # NCCL binds a rank's communicator to the current device when the group is created: set_device must come first.
    from lposs.evaluation.runner import setup_distributed

    calls = []
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.set_device", lambda device: calls.append(("set_device", str(device))))
    monkeypatch.setattr("torch.distributed.is_initialized", lambda: False)
    monkeypatch.setattr("torch.distributed.init_process_group", lambda backend, **_: calls.append(("init", backend)))
    monkeypatch.setattr("torch.distributed.new_group", lambda **_: None)  # the gloo group that checks peers
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert setup_distributed("cuda") == torch.device("cuda", 1)
    assert calls == [("set_device", "cuda:1"), ("init", "nccl")]


def test_a_gpu_index_becomes_the_current_device(monkeypatch):
    # device=cuda:1: Triton launches and a bare synchronize() act on the current device, so it must be cuda:1.
    from lposs.evaluation.runner import setup_distributed

    calls = []
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.set_device", lambda device: calls.append(str(device)))
    assert setup_distributed("cuda:1") == torch.device("cuda", 1)
    assert calls == ["cuda:1"]


@pytest.mark.parametrize("value, strict", [("false", False), ("true", True)])
def test_the_run_applies_the_precision_mode_of_its_config(tmp_path, monkeypatch, value, strict):
    import lposs.evaluation.runner as runner

    applied = []
    monkeypatch.setattr(runner, "apply_precision", applied.append)
    make_dataset(tmp_path, "voc")
    args = ["lposs.yaml", "--dataset", "voc", f"data_root={tmp_path}", "--limit", "1", *TINY, *SMALL]
    assert run([*args, f"strict_float32={value}"]) == 0
    assert applied == [strict]


def test_precision_modes_set_the_tf32_flags():
    from lposs.evaluation.device import apply_precision

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # as a library might leave it
        assert "paper" in apply_precision(False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False)
        assert "strict" in apply_precision(True)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
