"""The benchmark scripts run end to end on tiny inputs (their figures are for the README, not asserted)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import benchmark_eval  # noqa: E402
import benchmark_lp  # noqa: E402


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
    assert all(float(row[-1]) < 1e-4 for row in rows)  # relative error against the SciPy reference
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


def test_benchmark_eval_reports_every_stage(capsys):
    assert benchmark_eval.main(benchmark_eval.parse_args(["--small", "--cases", "voc"])) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("voc"))
    assert len(row.split()) == 8 and all(float(v) >= 0 for v in row.split()[3:])
