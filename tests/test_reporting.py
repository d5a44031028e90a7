"""Results files and the paper-style table."""

import os

import pytest

from segmentation.reporting import atomic_write_text, format_paper_table


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
