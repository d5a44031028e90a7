"""The benchmark scripts run end to end on tiny inputs; what they report is checked, their timings are not."""

import json

import numpy as np
import pytest
import torch
from test_main_eval import shared_backbones  # noqa: F401 (fixture)

from lposs.cli import benchmark_eval, benchmark_lp, benchmark_shared_pass
from lposs.datasets import class_names
from lposs.segmentation import Segmentor, SegmentorSettings


def test_benchmark_lp_runs_and_agrees_with_reference(capsys):
    tiny = ["--classes", "3", "--windows", "2", "--size", "24", "30"]
    assert benchmark_lp.main(benchmark_lp.parse_args(tiny)) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("patch", "pixel"))]
    assert [row[:4] for row in rows] == [
        ["patch", "N=392", "3", "reference-scipy"],
        ["patch", "N=392", "3", "ours"],
        ["pixel", "24x30", "3", "reference-scipy"],
        ["pixel", "24x30", "3", "ours"],
    ]
    assert all(float(row[-2]) < 1e-4 for row in rows)  # relative error against the SciPy reference
    assert [row[-1] for row in rows] == ["reference-scipy", "graph=auto", "reference-scipy", "torch"]  # what ran
    # The rows the GPU check script reads, with the GPU's reference (torch CSR, one CG per class) and variants.
    rows = list(benchmark_lp.benchmark_rows(benchmark_lp.parse_args([*tiny, "--reference", "torch", "--all-variants"])))
    assert [(row["level"], row["method"]) for row in rows] == [
        ("patch", "reference-torch"),
        ("patch", "ours-sparse"),
        ("patch", "ours-dense"),
        ("pixel", "reference-torch"),
        ("pixel", "ours-torch"),
    ]
    assert all(row["relative_error"] < 1e-4 and row["seconds"] > 0 for row in rows)
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] == rows[0]["seconds"] / rows[1]["seconds"]


def test_benchmark_eval_reports_every_stage_of_the_real_pipeline(tmp_path, capsys, monkeypatch):
    backbones = benchmark_eval.build_backbones(tiny=True, device=torch.device("cpu"))
    backbones.set_classes(class_names("voc"))
    # The benchmark times the real LPOSS+ pipeline: a direct Segmentor run on its image gives its labels.
    segmentor = Segmentor(backbones, SegmentorSettings(pixel_refine=True, short_side=224, long_side=448))
    labels = segmentor.predict(benchmark_eval.smooth_image(*benchmark_eval.TINY_SIZE))
    assert len(np.unique(labels)) > 1  # not a constant map, which any pipeline would match
    monkeypatch.setattr(benchmark_eval, "build_backbones", lambda *args: backbones)  # built once for both
    out = tmp_path / "bench.json"
    assert (
        benchmark_eval.main(
            benchmark_eval.parse_args(["--tiny", "--cases", "voc", "--warmup", "0", "--json", str(out)])
        )
        == 0
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["prediction_sha256"] == benchmark_eval.prediction_digest(labels)
    printed = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("voc"))
    assert printed[-1] == result["prediction_sha256"]
    stages = result["stage_seconds"]
    assert list(stages) == ["backbones", "patch_lp", "pixel_lp", "other"]
    assert all(stages[name] > 0 for name in ["backbones", "patch_lp", "pixel_lp"])
    assert sum(stages.values()) == pytest.approx(result["seconds_per_image"], rel=1e-9)
    assert result["images_per_second"] == pytest.approx(1 / result["seconds_per_image"])
    assert (result["classes"], result["text_rows"], result["resized_size"]) == (21, 46, [224, 299])


def test_benchmark_lp_times_the_previous_cg_in_the_same_run(tmp_path, capsys):
    out = tmp_path / "lp.json"
    argv = ["--levels", "pixel", "--classes", "3", "--size", "24", "30", "--cg-baseline", "--json", str(out)]
    assert benchmark_lp.main(benchmark_lp.parse_args(argv)) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["reference-scipy", "ours", "ours-previous-cg"]
    assert all(row["relative_error"] < 1e-4 for row in rows)  # both CGs solve the same system
    assert "previous CG" in capsys.readouterr().out
    assert benchmark_lp.engine.conjugate_gradient is not benchmark_lp.previous_conjugate_gradient  # put back


def test_benchmark_shared_pass_runs_and_both_arms_agree(capsys, shared_backbones):  # noqa: F811
    argv = ["--small", "--images", "1", "--size", "48", "64", "--config", "lposs.yaml", "--in_process"]
    argv += ["short_side=48", "crop=64", "stride=32", "k=10"]
    assert benchmark_shared_pass.main(benchmark_shared_pass.parse_args(argv)) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "metrics equal True" in printed
    rows = {line[:28].strip(): line[28:].split() for line in printed if line[:28].strip()}
    separate = [float(rows["voc alone"][i]) + float(rows["voc20 alone"][i]) for i in (0, 1)]
    assert [float(v) for v in rows["voc + voc20 (two runs)"]] == pytest.approx(separate, abs=0.011)
    ratios = [float(v) for v in rows["ratio one run / two runs"]]
    shared = [float(v) for v in rows["voc,voc20 (one run)"]]
    assert ratios == pytest.approx([shared[i] / separate[i] for i in (0, 1)], abs=0.02) and min(ratios) > 0
