"""Datasets that list the same images share one pass through main_eval.py, each with the results of its own run."""

import json

import numpy as np
import pytest
from fake_datasets import SHAPES, make_dataset
from PIL import Image
from test_main_eval import REPO_ROOT, SMALL, TINY, TINY_TEXT, VOC_MINI, needs_voc, run, shared_backbones  # noqa: F401

import lposs.datasets.build as dataset_build
import lposs.evaluation.preflight as preflight
import lposs.evaluation.runner as runner
from lposs.datasets import DATASET_KEYS, build_dataset
from lposs.evaluation.shared_passes import plan_passes

METRICS = ("mIoU", "IoU", "boundary_mIoU", "boundary_IoU", "aAcc", "num_images")
# The image folder of each pair, for textured images (on flat colours every setting gives the same labels).
FOLDERS = {
    "voc": "VOCdevkit/VOC2012/JPEGImages",
    "context": "VOCdevkit/VOC2010/JPEGImages",
    "coco_stuff": "coco_stuff164k/images/val2017",
}
PAIRS = [("voc", "voc20"), ("context", "context59"), ("coco_object", "coco_stuff")]


@pytest.fixture
def passes(monkeypatch):
    """The dataset keys of every pass that ran."""
    seen = []
    original = runner.evaluate_pass

    def recording(segmentor, members, settings, **kwargs):
        seen.append(sorted(key for key, built in _built.items() if any(m.dataset is built for m in members)))
        return original(segmentor, members, settings, **kwargs)

    _built = {}
    build = preflight.build_dataset

    def remembering(key, root):
        _built[key] = build(key, root)
        return _built[key]

    monkeypatch.setattr(preflight, "build_dataset", remembering)
    monkeypatch.setattr(runner, "evaluate_pass", recording)
    return seen


def make_pair(root, pair):
    for key in pair:
        make_dataset(root, key)
    folder = root / next(FOLDERS[k] for k in pair if k in FOLDERS)
    rng = np.random.default_rng(0)
    for name, (h, w) in SHAPES.items():
        coarse = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(folder / f"{name}.jpg", quality=95)


def read(path):
    return json.loads(path.read_text())


def same_results(shared_out, shared_pred, alone_out, alone_pred, key):
    """Metrics and saved label maps of ``key`` in the shared run equal those of its own run, exactly."""
    ours, alone = read(shared_out / key / "results.json"), read(alone_out / "results.json")
    assert {m: ours[m] for m in METRICS} == {m: alone[m] for m in METRICS}
    assert ours["config"] == alone["config"]
    maps = sorted((shared_pred / key).rglob("*.png"))
    assert len(maps) == ours["num_images"] == 2
    for path in maps:
        np.testing.assert_array_equal(np.array(Image.open(path)), np.array(Image.open(alone_pred / path.name)))
    labels = np.concatenate([np.array(Image.open(path)).ravel() for path in maps])
    assert len(np.unique(labels)) >= 2, f"{key}: one label everywhere, which the two runs would share anyway"
    return ours


def shared_and_alone(root, tmp_path, pair, extra, windows_seen):
    """``--dataset a,b`` once, then each alone; returns the windows each run encoded."""
    common = ["--measure_boundary", f"data_root={root}", *extra]
    windows_seen[0] = 0
    out, pred = tmp_path / "shared", tmp_path / "shared_pred"
    assert (
        run(
            [
                "lposs_plus.yaml",
                "--dataset",
                ",".join(pair),
                *common,
                "--output",
                str(out),
                "--save_predictions",
                str(pred),
            ]
        )
        == 0
    )
    counts = [windows_seen[0]]
    for key in pair:
        windows_seen[0] = 0
        alone_out, alone_pred = tmp_path / key, tmp_path / f"{key}_pred"
        assert (
            run(
                [
                    "lposs_plus.yaml",
                    "--dataset",
                    key,
                    *common,
                    "--output",
                    str(alone_out),
                    "--save_predictions",
                    str(alone_pred),
                ]
            )
            == 0
        )
        counts.append(windows_seen[0])
        same_results(out, pred, alone_out, alone_pred, key)
    return counts, (out / "eval.log").read_text()


@pytest.mark.parametrize(
    "pair, image_batch", [(PAIRS[0], "4"), (PAIRS[1], "1"), (PAIRS[2], "1")], ids=["voc", "context", "coco"]
)
def test_each_pair_shares_one_pass_with_the_results_of_its_own_runs(tmp_path, pair, image_batch, windows_seen, passes):
    make_pair(tmp_path, pair)
    extra = ["r=5", "--image_batch", image_batch, *SMALL, *TINY_TEXT]
    counts, log = shared_and_alone(tmp_path, tmp_path, pair, extra, windows_seen)
    assert counts[0] == counts[1] == counts[2] > 0  # both datasets for the backbone cost of one
    assert passes == [sorted(pair), [pair[0]], [pair[1]]]
    assert f"one pass shared by {', '.join(pair)}" in log


@needs_voc
def test_voc_and_voc20_on_real_images(tmp_path, windows_seen):
    extra = ["short_side=112", "k=10", "r=5", *TINY]
    counts, log = shared_and_alone(VOC_MINI, tmp_path, ("voc", "voc20"), extra, windows_seen)
    assert counts[0] == counts[1] == counts[2] > 0
    labels = np.concatenate([np.array(Image.open(p)).ravel() for p in (tmp_path / "shared_pred" / "voc").glob("*.png")])
    assert len(np.unique(labels)) >= 3  # real label maps, not a constant the two runs would share anyway
    assert "one pass shared by voc, voc20" in log


def test_sweep_shares_the_pass_and_builds_each_graph_once_per_image(tmp_path, builds):
    make_pair(tmp_path, PAIRS[0])
    grid = ["--sweep", "alpha=0.9,0.95", "tol=1e-6,1e-3"]
    common = ["lposs_plus.yaml", "--measure_boundary", f"data_root={tmp_path}", "r=5", *SMALL, *TINY, *grid]
    assert run([*common, "--dataset", "voc,voc20", "--output", str(tmp_path / "shared")]) == 0
    assert builds == {"patch": 2, "pixel": 2}  # one of each per image, for 4 settings x 2 datasets
    for key in ("voc", "voc20"):
        assert run([*common, "--dataset", key, "--output", str(tmp_path / key)]) == 0
    names = read(tmp_path / "shared" / "summary.json")["settings"]
    assert len(names) == 4
    for name in names:
        for key in ("voc", "voc20"):
            ours, alone = (
                read(tmp_path / "shared" / name / key / "results.json"),
                read(tmp_path / key / name / key / "results.json"),
            )
            assert {m: ours[m] for m in METRICS} == {m: alone[m] for m in METRICS}
    assert len({read(tmp_path / "shared" / n / "voc" / "results.json")["mIoU"] for n in names}) > 1


def test_resume_evaluates_only_the_incomplete_dataset(tmp_path, windows_seen, passes):
    make_pair(tmp_path, PAIRS[0])
    out = tmp_path / "out"
    args = [
        "lposs.yaml",
        "--dataset",
        "voc,voc20",
        f"data_root={tmp_path}",
        *SMALL,
        *TINY,
        "--sweep",
        "k=5,10",
        "--output",
        str(out),
    ]
    assert run(args) == 0
    first = {p: p.read_bytes() for p in out.rglob("results.json")}
    (out / "k=10" / "voc20" / "results.json").unlink()
    passes.clear()
    windows_seen[0] = 0
    assert run([*args, "--resume"]) == 0
    assert passes == [["voc20"]] and windows_seen[0] > 0  # only voc20, only k=10
    for path, content in first.items():
        assert path.read_bytes() == content or path == out / "k=10" / "voc20" / "results.json"


def test_all_eight_layouts_run_five_passes(tmp_path, windows_seen, passes):
    for key in DATASET_KEYS:
        make_dataset(tmp_path, key)
    out = tmp_path / "out"
    assert (
        run(["maskclip.yaml", "--dataset", "all", "--output", str(out), f"data_root={tmp_path}", *SMALL, *TINY_TEXT])
        == 0
    )
    assert sorted(passes) == sorted(
        [["voc", "voc20"], ["context", "context59"], ["coco_object", "coco_stuff"], ["cityscapes"], ["ade20k"]]
    )
    assert all((out / key / "results.json").is_file() for key in DATASET_KEYS)
    assert list(read(out / "summary.json")["mIoU"]) == list(runner.PAPER_ORDER)


def test_a_different_split_file_falls_back_to_separate_passes(tmp_path, monkeypatch, passes):
    make_pair(tmp_path, PAIRS[0])
    own_split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/mine.txt"
    own_split.write_text("img_a\n")  # a user's own split file for voc20: one of the two images
    config = dataset_build.dataset_config

    def with_own_split(key):
        cfg = config(key)
        if key == "voc20":
            cfg.data.test.split = "ImageSets/Segmentation/mine.txt"
        return cfg

    monkeypatch.setattr(dataset_build, "dataset_config", with_own_split)
    out = tmp_path / "out"
    assert (
        run(["lposs.yaml", "--dataset", "voc,voc20", f"data_root={tmp_path}", *SMALL, *TINY, "--output", str(out)]) == 0
    )
    assert passes == [["voc"], ["voc20"]]
    log = (out / "eval.log").read_text()
    assert "voc and voc20 read " in log and "voc lists 2 images, voc20 1): separate passes" in log
    assert read(out / "voc20" / "results.json")["num_images"] == 1


def test_plan_passes_compares_the_image_lists_not_the_keys(tmp_path):
    make_pair(tmp_path, PAIRS[0])
    make_dataset(tmp_path, "ade20k")
    built = {key: build_dataset(key, tmp_path) for key in ("voc", "voc20", "ade20k")}
    assert plan_passes(["voc", "ade20k", "voc20"], built) == ([["voc", "voc20"], ["ade20k"]], [])
    built["voc20"].img_infos = built["voc20"].img_infos[::-1]  # same files, another order
    passes, notes = plan_passes(["voc", "voc20"], built)
    assert passes == [["voc"], ["voc20"]] and len(notes) == 1
    assert "image 1 is img_b.jpg in voc but img_a.jpg in voc20" in notes[0]
    # two keys of different images never share, whatever their names
    built["voc20"] = build_dataset("ade20k", tmp_path)
    assert plan_passes(["voc", "voc20"], built) == ([["voc"], ["voc20"]], [])
