"""tools/gpu_check.py on the CPU: a smoke run of its sections, and a failing, crashing or hanging section recorded
as failed while the others still run."""

import json
import sys

import pytest
from conftest import SHARED

from lposs.cli import gpu_check

# Every section except the benchmarks (tests/test_benchmarks.py runs those scripts).
SMOKE = ["environment", "gpu_tests", "metrics", "patch_lp", "pixel_lp", "backbones", "end_to_end", "determinism"]


def run(tmp_path, *extra, isolated=False):
    argv = ["--output", str(tmp_path), "--device", "cpu", "--tiny", "--data", str(SHARED / "data"), *extra]
    return gpu_check.main(gpu_check.parse_args(argv + ([] if isolated else ["--in-process"])))


def report(tmp_path):
    return json.loads((tmp_path / "report.json").read_text())


@pytest.mark.slow
def test_smoke_run_on_cpu_reports_every_section(tmp_path):
    assert run(tmp_path, "--sections", *SMOKE) == 0
    sections = report(tmp_path)["sections"]
    assert list(sections) == SMOKE
    assert sections["gpu_tests"]["status"] == "skipped"
    has_data = (SHARED / "data" / "voc_mini").is_dir()
    assert sections["end_to_end"]["status"] == ("passed" if has_data else "skipped")
    assert all(sections[name]["status"] == "passed" for name in SMOKE if name not in ("gpu_tests", "end_to_end"))
    # CPU against CPU: every comparison ran and found the same numbers.
    assert set(sections["backbones"]["details"]) >= {
        "text_embeddings",
        "dino_features",
        "clip_scores",
        "clip_scores_naclip",
    }
    for name in ("backbones", "patch_lp", "pixel_lp"):
        differences = [v for v in sections[name]["details"].values() if isinstance(v, float)]
        assert differences and all(v == 0.0 for v in differences), name
    assert all(all(v.values()) for v in sections["metrics"]["details"].values())
    assert sections["determinism"]["details"]["identical"] is True
    if has_data:
        assert sections["end_to_end"]["details"]["images"] == 2
    markdown = (tmp_path / "report.md").read_text()
    assert all(f"| {name} | {sections[name]['status']} |" in markdown for name in SMOKE)


def test_missing_data_skips_end_to_end_with_the_path(tmp_path):
    missing = tmp_path / "no_data"
    argv = ["--output", str(tmp_path), "--device", "cpu", "--data", str(missing), "--in-process"]
    assert gpu_check.main(gpu_check.parse_args(argv + ["--sections", "end_to_end"])) == 0
    record = report(tmp_path)["sections"]["end_to_end"]
    assert record["status"] == "skipped" and str(missing) in record["message"]


def test_a_failing_section_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    seen_while_running = []

    def planted(ctx):
        seen_while_running.append(report(tmp_path)["sections"]["metrics"]["status"])
        raise RuntimeError("planted failure")

    monkeypatch.setitem(gpu_check.SECTIONS, "metrics", (planted, 60))
    assert run(tmp_path, "--sections", "metrics", "environment") == 1
    assert seen_while_running == ["running"]  # a run killed from outside still shows where it was
    sections = report(tmp_path)["sections"]
    assert sections["metrics"]["status"] == "failed" and "planted failure" in sections["metrics"]["message"]
    assert sections["environment"]["status"] == "passed"


def test_isolated_sections_that_hang_or_crash_are_failed_and_the_run_goes_on(tmp_path, monkeypatch):
    children = {
        "metrics": [sys.executable, "-c", "import time; time.sleep(60)"],
        "patch_lp": [sys.executable, "-c", "print('about to crash'); raise SystemExit(3)"],
    }
    real_command = gpu_check.section_command
    monkeypatch.setattr(gpu_check, "section_command", lambda name, args: children.get(name) or real_command(name, args))
    monkeypatch.setitem(gpu_check.SECTIONS, "metrics", (gpu_check.SECTIONS["metrics"][0], 2))  # 2 s limit
    assert run(tmp_path, "--sections", "metrics", "patch_lp", "environment", isolated=True) == 1
    sections = report(tmp_path)["sections"]
    assert sections["metrics"]["status"] == "failed" and "timed out after 2 s" in sections["metrics"]["message"]
    assert sections["patch_lp"]["status"] == "failed" and "exit code 3" in sections["patch_lp"]["message"]
    assert "about to crash" in (tmp_path / "logs" / "patch_lp.log").read_text()
    assert sections["environment"]["status"] == "passed"  # a real child process
    assert sections["environment"]["details"]["device"] == "cpu"


def test_unknown_section_is_one_line_and_exit_2(tmp_path, capsys):
    assert run(tmp_path, "--sections", "no_such") == 2
    assert "no_such" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_metrics_and_patch_sections_pass_on_cuda(tmp_path):
    argv = ["--output", str(tmp_path), "--device", "cuda", "--tiny", "--in-process"]
    assert gpu_check.main(gpu_check.parse_args(argv + ["--sections", "metrics", "patch_lp"])) == 0


def test_stage_comparisons_run_strict_and_the_rest_in_the_users_mode(tmp_path, monkeypatch):
    import torch

    seen = {}

    def recorder(name):
        def section(ctx):
            seen[name] = torch.backends.cudnn.allow_tf32
            return {}

        return section

    for name in ("pixel_lp", "backbones", "end_to_end", "determinism"):
        monkeypatch.setitem(gpu_check.SECTIONS, name, (recorder(name), 60))
    before = torch.backends.cudnn.allow_tf32
    try:
        assert run(tmp_path, "--sections", "pixel_lp", "end_to_end", "backbones", "determinism") == 0
    finally:
        torch.backends.cudnn.allow_tf32 = before
    # cuDNN TF32 off for the stage-wise comparisons, on (torch's default, the paper's mode) for what users run
    assert seen == {"pixel_lp": False, "end_to_end": True, "backbones": False, "determinism": True}
    sections = report(tmp_path)["sections"]
    assert "strict" in sections["pixel_lp"]["precision"] and "paper" in sections["end_to_end"]["precision"]


def test_report_peak_memory_includes_the_processes_sections_start(tmp_path):
    records = {
        "pixel_lp": {"status": "passed", "message": "", "details": {}, "seconds": 1.0, "peak_gpu_memory_gb": 2.0},
        "gpu_tests": {"status": "passed", "message": "", "details": {"child_peak_gpu_memory_gb": 7.5}, "seconds": 1.0},
        "benchmark_lp": {"status": "passed", "message": "", "details": {"child_peak_gpu_memory_gb": 3.0}, "seconds": 1},
        "benchmark_eval": {
            "status": "failed",
            "message": "",
            "details": {"child_peak_gpu_memory_gb": None},
            "seconds": 1,
        },
    }
    gpu_check.write_report(tmp_path, {"device": "cuda"}, records)
    assert report(tmp_path)["peak_gpu_memory_gb"] == 7.5


def test_pytest_reports_its_peak_gpu_memory_when_asked(tmp_path, monkeypatch):
    # What the gpu_tests section reads back: the hook pytest calls at the end of the session it starts
    # (tests/conftest.py); on a CPU-only run, null.
    import conftest
    import torch

    peak = tmp_path / "peak.json"
    monkeypatch.delenv("LPOSS_PEAK_MEMORY_FILE", raising=False)  # gpu_check's own run of this suite sets it
    conftest.pytest_sessionfinish(None, 0)
    assert not peak.exists()  # not asked
    monkeypatch.setenv("LPOSS_PEAK_MEMORY_FILE", str(peak))
    conftest.pytest_sessionfinish(None, 0)
    value = json.loads(peak.read_text())
    assert value is None if not (torch.cuda.is_available() and torch.cuda.is_initialized()) else value >= 0


def test_knn_near_ties_counts_patches_whose_kth_neighbour_is_not_determined():
    """Hand-made features: a patch whose k-th and (k+1)-th neighbours are equally similar is a near-tie."""
    import torch

    from lposs.cli.gpu_check_sections import knn_near_ties

    angles = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0, 6.0])  # on a circle: distinct similarities for most pairs
    features = torch.stack([angles.cos(), angles.sin()], 0).reshape(1, 2, 2, 3)  # [B, D, gh, gw]
    # patch 1 (0.5) has neighbours 0 (0.0) and 2 (1.0) at the same angle: its 2nd and 3rd neighbours tie
    assert knn_near_ties(features, k=2) >= 1
    spread = torch.tensor([0.0, 0.3, 0.9, 2.0, 3.5, 5.5])  # no two neighbours equally far from any patch
    assert knn_near_ties(torch.stack([spread.cos(), spread.sin()], 0).reshape(1, 2, 2, 3), k=2) == 0
    assert knn_near_ties(features, k=6) == 0  # every patch is a neighbour: nothing to reorder
