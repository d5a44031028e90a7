"""Start-up noise: torch's 'No CUDA runtime is found' line and mmcv's 2.0 notice are silenced, nothing else is."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NOISE = ("No CUDA runtime is found", "MMCV will release v2.0.0")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_help_prints_only_the_help_and_other_warnings_still_show():
    """One fresh process: ``main_eval.py --help`` as a user runs it, then the filters are checked to be narrow."""
    code = (
        "import logging, runpy, sys, warnings\n"
        "sys.argv = ['main_eval.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('main_eval.py', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "sys.stdout.flush()\n"
        "assert logging.getLogger('torch.utils.cpp_extension').level == logging.NOTSET, 'logger level not restored'\n"
        "warnings.warn('On January 1, 2023, MMCV will release v2.0.0 (a later warning of the same text)')\n"
        "warnings.warn('another warning')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: main_eval.py"), result.stdout[:200]
    for line in NOISE:
        assert line not in result.stdout
    assert "UserWarning: another warning" in result.stderr
    assert "a later warning of the same text" in result.stderr  # the filter was only for mmcv's own import
    assert "No CUDA runtime is found" not in result.stderr
    assert result.stderr.count("UserWarning") == 2, result.stderr  # nothing else was printed at start-up


def test_demo_help_prints_only_the_help():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "demo.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    for line in NOISE:
        assert line not in result.stdout + result.stderr
