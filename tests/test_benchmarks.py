"""The benchmark scripts run end to end on tiny inputs (their figures are for the README, not asserted)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import benchmark_eval  # noqa: E402
import benchmark_lp  # noqa: E402


def test_benchmark_lp_runs_and_agrees_with_reference(capsys):
    assert benchmark_lp.main(benchmark_lp.parse_args(["--classes", "3", "--windows", "2", "--size", "24", "30"])) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("patch", "pixel"))]
    assert [row[0] for row in rows] == ["patch", "pixel"]
    assert all(float(row[-1]) < 1e-4 for row in rows)  # relative error against the SciPy reference


def test_benchmark_eval_reports_every_stage(capsys):
    assert benchmark_eval.main(benchmark_eval.parse_args(["--small", "--cases", "voc"])) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("voc"))
    assert len(row.split()) == 8 and all(float(v) >= 0 for v in row.split()[3:])
