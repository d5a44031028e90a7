"""Results files and the paper-style table."""

import os
from pathlib import Path

import numpy as np
import pytest

from lposs.evaluation import reporting
from lposs.evaluation.loop import save_label_png
from lposs.evaluation.reporting import atomic_write_text, environment_record, format_paper_table, summary_record
from lposs.evaluation.run_output import StagedFolder

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_paper_table_order_and_average():
    records = {"voc20": {"mIoU": 80.0}, "voc": {"mIoU": 60.0}, "ade20k": {"mIoU": None}}
    lines = format_paper_table("lposs_plus", records, ("voc", "context", "voc20", "ade20k")).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["method", "VOC", "VOC20", "ADE", "avg"]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["lposs_plus", "60.0", "80.0", "nan", "70.0"]


def test_atomic_write_leaves_old_file_or_new_one(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_written_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        save_label_png(np.zeros((4, 5), np.uint8), tmp_path / "pred.png")
        (tmp_path / "plain.txt").write_text("as open() creates it")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"results.json": 0o644, "pred.png": 0o644, "plain.txt": 0o644}


def test_staged_folder_publishes_whole_sets_and_discards_the_rest(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "eval.log").write_text("old run\n")
    (final / "voc").mkdir()
    (final / "voc" / "results.json").write_text("old")
    staged = StagedFolder.create(final)
    assert staged.staging.parent == tmp_path and staged.staging.name.startswith(".out.partial-")
    for name in ("results.json", "a.png"):
        atomic_write_text(staged.path("voc", name), "new " + name)
    atomic_write_text(staged.path("ade20k", "results.json"), "never published")
    atomic_write_text(staged.path("eval.log"), "new run\n")
    assert (final / "voc" / "results.json").read_text() == "old"  # nothing moved yet
    written = staged.publish("voc")
    assert [p.name for p in written] == ["a.png", "results.json"]  # results.json last
    assert (final / "voc" / "results.json").read_text() == "new results.json"
    staged.publish()  # everything else, but never the log, which is appended
    assert (final / "eval.log").read_text() == "old run\n"
    staged.append_to("eval.log")
    assert (final / "eval.log").read_text() == "old run\nnew run\n"
    staged.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_environment_record_names_versions_and_commit():
    import subprocess

    import torch

    record = environment_record()
    assert set(record["versions"]) == {"torch", "open_clip", "timm", "mmseg"}
    assert record["versions"]["torch"] == torch.__version__
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert record["git_commit"] == (git.stdout.strip() if git.returncode == 0 else None)


def test_git_commit_is_none_outside_a_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(reporting, "REPO_ROOT", tmp_path)  # not a git checkout
    assert reporting.environment_record()["git_commit"] is None


def test_summary_holds_the_whole_table():
    records = {"voc20": {"mIoU": 80.0, "boundary_mIoU": 50.0}, "voc": {"mIoU": 60.0, "boundary_mIoU": 40.0}}
    summary = summary_record("lposs", records, ("voc", "voc20"))
    assert summary["datasets"] == ["voc", "voc20"] and summary["mIoU"] == {"voc": 60.0, "voc20": 80.0}
    assert summary["boundary_mIoU"] == {"voc": 40.0, "voc20": 50.0}
    assert summary["average"] == {"mIoU": 70.0, "boundary_mIoU": 45.0}


@pytest.mark.parametrize(
    ("config", "overrides", "label"),
    [
        ("lposs_plus.yaml", [], "lposs_plus"),
        ("proxyclip.yaml", [], "proxyclip"),
        ("lposs_plus.yaml", ["model.clip.head=proxyclip"], "lposs_plus (proxyclip)"),
        ("proxyclip.yaml", ["model.clip.proxy_features=k"], "proxyclip (proxy k)"),
        (
            "lposs.yaml",
            ["model.clip.head=proxyclip", "model.clip.proxy_features=v", "model.dino.features=x"],
            "lposs (proxyclip, proxy v, dino x)",
        ),
        ("lposs.yaml", ["model.clip.proxy_features=v"], "lposs"),  # no ProxyCLIP head: its proxy is not used
    ],
)
def test_method_labels_name_the_head_and_its_proxy(config, overrides, label):
    from lposs.evaluation.config import load_config

    assert reporting.method_label(load_config(config, overrides)) == label
