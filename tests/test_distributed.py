"""torchrun with 2 processes (gloo, CPU) equals one process.

One 2-process run, shared by the assertions: a sweep (two settings), over two datasets that share one pass
(voc, voc20), with Boundary IoU. Each (setting, dataset) must give exactly the metrics of the same run in one
process; that run's own equalities (a sweep = separate runs, a shared pass = each dataset alone) are tested in
test_sweep.py and test_shared_passes.py.
"""

import json
import os
import subprocess
import sys

import pytest
from fake_datasets import SHAPES
from test_main_eval import REPO_ROOT, SMALL, TINY, run, shared_backbones  # noqa: F401
from test_shared_passes import PAIRS, make_pair

pytestmark = pytest.mark.slow

METRICS = ("mIoU", "IoU", "boundary_mIoU", "boundary_IoU", "aAcc", "num_images")
SETTINGS = ("k=5", "k=10")


def arguments(data):
    return [
        "lposs_plus.yaml",
        "--dataset",
        "voc,voc20",
        "--measure_boundary",
        f"data_root={data}",
        "r=5",
        *SMALL,
        *TINY,
    ]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """(data root, output folder, the launcher's stdout) of one ``torchrun --nproc_per_node=2`` sweep."""
    data = tmp_path_factory.mktemp("data")
    make_pair(data, PAIRS[0])
    out = tmp_path_factory.mktemp("two") / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "main_eval.py"]
    argv = [*launcher, *arguments(data), "--sweep", "k=5,10", "--output", str(out)]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, out, done.stdout


def read(path):
    return json.loads(path.read_text())


def test_two_processes_equal_one(two_processes, tmp_path):
    data, two, _ = two_processes
    one = tmp_path / "one"
    assert run([*arguments(data), "--sweep", "k=5,10", "--output", str(one)]) == 0
    for setting in SETTINGS:
        for key in ("voc", "voc20"):
            ours, alone = read(two / setting / key / "results.json"), read(one / setting / key / "results.json")
            assert {m: ours[m] for m in METRICS} == {m: alone[m] for m in METRICS}, (setting, key)
            assert ours["num_images"] == len(SHAPES)  # every image counted once over the two ranks
    assert read(two / "k=5" / "voc" / "results.json")["mIoU"] != read(two / "k=10" / "voc" / "results.json")["mIoU"]
    # one test, so that a scheduler spreading tests over workers never runs the 2-process fixture twice
    stdout = two_processes[2]
    assert "one pass shared by voc, voc20" in stdout
    assert stdout.count("images/s over 2 process(es)") == 1  # the throughput of all ranks, printed by rank 0 once
