"""Start-up noise: torch's 'No CUDA runtime is found' line and mmcv's 2.0 notice are silenced, nothing else is."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOISE = ("No CUDA runtime is found", "MMCV will release v2.0.0")


@pytest.mark.parametrize("script", ["main_eval.py", "tools/demo.py"])
def test_help_prints_only_the_help(script):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr
    for line in NOISE:
        assert line not in result.stdout + result.stderr


def test_other_warnings_and_logs_still_show():
    code = (
        "import logging, warnings\n"
        "import lposs.datasets\n"
        "assert logging.getLogger('torch.utils.cpp_extension').level == logging.NOTSET, 'logger level not restored'\n"
        "warnings.warn('On January 1, 2023, MMCV will release v2.0.0 (a later warning of the same text)')\n"
        "warnings.warn('another warning')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "UserWarning: another warning" in result.stderr
    assert "a later warning of the same text" in result.stderr  # the filter was only for mmcv's own import
    assert "No CUDA runtime is found" not in result.stderr
