"""CLIP heads and DINO feature kinds through main_eval.py: the head configs, LPOSS+ on a head, a sweep over heads."""

import csv
import json
import subprocess
import sys

import pytest
from fake_datasets import make_dataset
from test_main_eval import REPO_ROOT, SMALL, TINY, assert_one_line_error, refuse_model_loading, run, shared_backbones
from test_sweep import data  # noqa: F401 (a fixture; windows_seen comes from conftest)

HEADS = ("sclip", "clearclip", "naclip")
assert shared_backbones  # the autouse fixture of test_main_eval: one set of random backbones per model config


def read(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("head", HEADS)
def test_head_config_runs_end_to_end(tmp_path, head):
    make_dataset(tmp_path, "voc")
    out = tmp_path / "out"
    assert run([f"{head}.yaml", "--dataset", "voc", f"data_root={tmp_path}", "--output", str(out), *SMALL, *TINY]) == 0
    record = read(out / "results.json")
    assert record["method"] == head and record["num_images"] == 2
    assert record["config"]["model"]["clip"]["head"] == head and record["config"]["patch_propagation"] is False
    assert read(out / "summary.json")["method"] == head


def test_lposs_plus_on_a_head_with_dino_keys(tmp_path):
    make_dataset(tmp_path, "voc")
    out = tmp_path / "out"
    extra = ["model.clip.head=naclip", "model.dino.features=k", "r=5"]
    args = ["lposs_plus.yaml", "--dataset", "voc", f"data_root={tmp_path}", "--output", str(out), *SMALL, *TINY]
    assert run([*args, *extra]) == 0
    record = read(out / "results.json")
    assert record["method"] == "lposs_plus (naclip, dino k)"
    assert record["config"]["model"]["dino"]["features"] == "k"


def test_sweep_over_heads_encodes_each_head_and_writes_its_table(data, tmp_path, windows_seen, monkeypatch):  # noqa: F811
    from lposs.models import LPOSSBackbones

    loads = []
    build = LPOSSBackbones.from_config.__func__
    monkeypatch.setattr(
        LPOSSBackbones, "from_config", classmethod(lambda cls, *a, **k: loads.append(1) or build(cls, *a, **k))
    )
    args = ["lposs.yaml", "--dataset", "voc", f"data_root={data}", *SMALL, *TINY]
    out = tmp_path / "sweep"
    assert run([*args, "--output", str(out), "--sweep", "model.clip.head=maskclip,sclip,naclip"]) == 0
    assert len(loads) == 1  # the heads share the weights: loaded once, each head its own encoding
    sweep_windows = windows_seen[0]
    names = [f"model.clip.head={head}" for head in ("maskclip", "sclip", "naclip")]
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [row["setting"] for row in rows] == names
    for row in rows:
        assert float(row["VOC"]) == pytest.approx(read(out / row["setting"] / "voc" / "results.json")["mIoU"], abs=1e-4)
    assert all(f"| {name} |" in (out / "sweep.md").read_text() for name in names)
    windows_seen[0] = 0
    single = tmp_path / "single"
    assert run([*args, "--output", str(single), "model.clip.head=naclip"]) == 0
    assert sweep_windows == 3 * windows_seen[0]  # each head is its own encoding of every image
    ours, alone = read(out / names[2] / "voc" / "results.json"), read(single / "results.json")
    assert ours["IoU"] == alone["IoU"] and ours["config"] == alone["config"]
    assert ours["method"] == alone["method"] == "lposs (naclip)"


def test_bad_dino_kind_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path, "voc")
    refuse_model_loading(monkeypatch)
    code = run(["lposs.yaml", "--dataset", "voc", f"data_root={tmp_path}", *TINY, "model.dino.features=value"])
    assert_one_line_error(capsys, code, "model.dino.features='value'", "v, k, q")


def test_bad_head_from_the_command_line_exits_2_with_one_line(tmp_path):
    make_dataset(tmp_path, "voc")
    command = [sys.executable, str(REPO_ROOT / "main_eval.py"), "naclip.yaml", "--dataset", "voc"]
    command += [f"data_root={tmp_path}", *TINY, "model.clip.head=nacl1p"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "model.clip.head='nacl1p'" in lines[0] and "maskclip, sclip, clearclip, naclip" in lines[0]
