"""Parameter sweeps through main_eval.py: each setting equals its own run, the backbones run once per image."""

import csv
import json

import numpy as np
import pytest
from fake_datasets import SHAPES, make_dataset
from PIL import Image
from test_main_eval import REPO_ROOT, SMALL, TINY, assert_one_line_error, run, shared_backbones  # noqa: F401

from lposs.evaluation.sweep import PROPAGATION_KEYS, format_sweep_tables

GRID = ["k=5,10", "alpha=0.9,0.95"]
NAMES = ["k=5,alpha=0.9", "k=5,alpha=0.95", "k=10,alpha=0.9", "k=10,alpha=0.95"]
METRICS = ("mIoU", "IoU", "boundary_mIoU", "boundary_IoU", "aAcc", "num_images")


@pytest.fixture
def data(tmp_path):
    """voc and voc20 (one folder), with textured images: on two flat colours every setting gives the same labels."""
    make_dataset(tmp_path, "voc")
    rng = np.random.default_rng(0)
    for name, (h, w) in SHAPES.items():
        coarse = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        image = np.array(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
        Image.fromarray(image).save(tmp_path / "VOCdevkit/VOC2012/JPEGImages" / f"{name}.jpg", quality=95)
    return tmp_path


def common(data, *extra):
    return ["lposs_plus.yaml", "--dataset", "voc,voc20", "--measure_boundary", f"data_root={data}", "r=5"] + [
        *SMALL,
        *TINY,
        *extra,
    ]


def read(path):
    return json.loads(path.read_text())


def test_sweep_equals_separate_runs_and_encodes_each_image_once(data, tmp_path, windows_seen):
    out = tmp_path / "sweep"
    assert run([*common(data, "--output", str(out)), "--sweep", *GRID]) == 0
    sweep_windows = windows_seen[0]
    for name in NAMES:
        windows_seen[0] = 0
        single = tmp_path / "single" / name
        assert run([*common(data, "--output", str(single)), *name.split(",")]) == 0
        assert windows_seen[0] == sweep_windows  # the whole grid cost the backbones one run
        for key in ("voc", "voc20"):
            ours, separate = read(out / name / key / "results.json"), read(single / key / "results.json")
            assert {m: ours[m] for m in METRICS} == {m: separate[m] for m in METRICS}
            assert ours["config"] == separate["config"] and ours["setting"] == name
    records = {name: {k: read(out / name / k / "results.json") for k in ("voc", "voc20")} for name in NAMES}
    assert len({r["voc"]["mIoU"] for r in records.values()}) > 1  # the settings do change the result
    # sweep.csv: one row per setting, mIoU and Boundary mIoU per dataset, their averages, the best row marked
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [row["setting"] for row in rows] == NAMES
    for row in rows:
        rec = records[row["setting"]]
        assert float(row["VOC"]) == pytest.approx(rec["voc"]["mIoU"], abs=1e-4)
        assert float(row["VOC20 bIoU"]) == pytest.approx(rec["voc20"]["boundary_mIoU"], abs=1e-4)
        average = (rec["voc"]["mIoU"] + rec["voc20"]["mIoU"]) / 2
        assert float(row["avg"]) == pytest.approx(average, abs=1e-4)
    best = max(NAMES, key=lambda n: (records[n]["voc"]["mIoU"] + records[n]["voc20"]["mIoU"]) / 2)
    assert [row["setting"] for row in rows if row["best"] == "1"] == [best]
    marked = [line for line in (out / "sweep.md").read_text().splitlines() if line.rstrip().endswith("| * |")]
    assert len(marked) == 1 and marked[0].startswith(f"| {best} |")
    assert read(out / "summary.json")["settings"] == NAMES
    assert (out / NAMES[0] / "config.yaml").read_text().count("k: 5") == 1


def test_sweep_over_windows_encodes_once_per_distinct_value(data, tmp_path, windows_seen):
    args = ["lposs.yaml", "--dataset", "voc", f"data_root={data}", *SMALL, *TINY]
    expected = 0
    for crop in (48, 64):
        windows_seen[0] = 0
        assert run([*args, f"crop={crop}"]) == 0
        expected += windows_seen[0]
    windows_seen[0] = 0
    assert run([*args, "-m", "crop=48,64", "k=5,10"]) == 0  # -m: Hydra's spelling of --sweep
    assert windows_seen[0] == expected


def test_resume_skips_complete_results_only(data, tmp_path, windows_seen):
    out = tmp_path / "sweep"
    args = [*common(data, "--output", str(out)), "--sweep", *GRID]
    assert run(args) == 0
    first = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("results.json")}
    first_log = (out / "eval.log").read_text()
    deleted, corrupt = out / NAMES[1] / "voc20" / "results.json", out / NAMES[2] / "voc20" / "results.json"
    deleted.unlink()
    corrupt.write_text(first[corrupt][0].decode()[:-40])  # cut short, as by a crash without staging
    windows_seen[0] = 0
    assert run([*args, "--resume"]) == 0
    assert windows_seen[0] > 0  # voc20 was encoded again (for the two settings), voc was not
    for path, (content, mtime) in first.items():
        if path in (deleted, corrupt):
            assert {m: read(path)[m] for m in METRICS} == {m: json.loads(content)[m] for m in METRICS}
        else:
            assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    assert len(list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))) == 4
    log = (out / "eval.log").read_text()
    assert log.startswith(first_log) and "--resume: k=5,alpha=0.9 voc is complete, skipped" in log  # appended
    # a changed config is not the same result: nothing is skipped
    windows_seen[0] = 0
    assert run([*args, "--resume", "tol=1e-5"]) == 0
    assert windows_seen[0] > 0 and read(out / NAMES[0] / "voc" / "results.json")["config"]["tol"] == 1e-5


def test_comma_lists_need_sweep(data, capsys):
    assert_one_line_error(capsys, run(common(data, "k=5,10")), "k", "--sweep")


def test_propagation_keys_are_the_settings_after_the_backbones():
    assert set(PROPAGATION_KEYS) >= {"k", "alpha", "gamma", "sigma", "pix_dist_pow", "tau", "r", "tol", "maxiter"}
    assert not {"crop", "stride", "short_side", "long_side", "window_batch"} & set(PROPAGATION_KEYS)


def test_sweep_table_marks_the_best_average():
    rows = {
        "a": {"voc": {"mIoU": 50.0, "boundary_mIoU": None}, "ade20k": {"mIoU": 10.0, "boundary_mIoU": None}},
        "b": {"voc": {"mIoU": 40.0, "boundary_mIoU": None}, "ade20k": {"mIoU": 30.0, "boundary_mIoU": None}},
    }
    markdown, table = format_sweep_tables(rows, ["voc", "ade20k"], measure_boundary=False)
    assert markdown.splitlines()[0] == "| setting | VOC | ADE | avg | best |"
    assert markdown.splitlines()[3] == "| b | 40.0 | 30.0 | 35.0 | * |"
    assert table.splitlines()[1:] == ["a,50.0000,10.0000,30.0000,0", "b,40.0000,30.0000,35.0000,1"]
    # No row is best when no row has a value (an empty dataset, say).
    empty = {name: {"voc": {"mIoU": None}} for name in ("k=1", "k=2")}
    markdown, table = format_sweep_tables(empty, ["voc"], measure_boundary=False)
    assert "*" not in markdown and [line[-1] for line in table.splitlines()[1:]] == ["0", "0"]


def test_a_setting_listed_twice_is_evaluated_once():
    from lposs.evaluation.sweep import plan_combinations

    combinations = plan_combinations("lposs.yaml", ["k=10,20,10", "alpha=0.9"], sweep=True)
    assert [c.name for c in combinations] == ["k=10", "k=20"]
    assert [c.config.k for c in combinations] == [10, 20]


def test_benchmark_sweep_runs_and_labels_agree(capsys):
    from lposs.cli import benchmark_sweep

    argv = ["--small", "--images", "1", "--size", "32", "48", "--short_side", "32", "--k", "5", "--alpha", "0.9"]
    assert benchmark_sweep.main(benchmark_sweep.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "2 settings x 1 images" in printed and "labels equal                    True" in printed
    assert float(next(line for line in printed.splitlines() if line.startswith("ratio")).split()[-1]) > 0
