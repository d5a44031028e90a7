"""Folder runs on two gloo ranks (lposs/evaluation/work_queue.py, folder_outputs.py): images go to the rank that
asks, a rank out of images waits for a working one far past dist_timeout, a stalled rank ends the run within
dist_timeout of its last progress, and every rank must see the output folder.

The ranks are real processes, forked from the test process (tests/forking.py): they share its imported modules
and its random-weight backbones copy-on-write, so that they start at once. The planted delays are as short as
the property allows: dist_timeout=3 s, a working rank whose every sign of progress comes 0.9 s late.
"""

import os
import re
import signal
import sys
import time

from forking import ForkedRun, exit_codes, forked
from test_faults import free_port, wait_until
from test_folder_run import assert_labels_equal, folder_args, photos, reference  # noqa: F401 (fixtures)
from test_main_eval import refuse_model_loading, run, shared_backbones  # noqa: F401 (the autouse fixture)

from lposs.evaluation import folder_outputs
from lposs.evaluation.work_queue import WorkQueue


def test_two_gloo_ranks_wait_for_a_working_rank_far_past_dist_timeout(photos, reference, tmp_path):  # noqa: F811 (fixtures of test_folder_run.py)
    out, port = tmp_path / "out", str(free_port())

    def rank(r):
        os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        claim, advance, wait, claims = WorkQueue.claim, WorkQueue.advance, WorkQueue.wait_for_all, []
        if r == 0:  # rank 1 asks first, and gets the one batch of all four images; rank 0 says how long it waited

            def late_claim(self, count):
                time.sleep(0 if claims else 1)
                claims.append(count)
                return claim(self, count)

            def timed_wait(self):
                start = time.monotonic()
                wait(self)
                print(f"waited {time.monotonic() - start:.1f} s", file=sys.stderr)

            WorkQueue.claim, WorkQueue.wait_for_all = late_claim, timed_wait
        else:  # each of rank 1's 6 signs of progress (a claim, 4 images, the last claim) comes 0.9 s late

            def slow_advance(self, count):
                time.sleep(0.9)
                return advance(self, count)

            WorkQueue.advance = slow_advance
        return run(folder_args(photos, out, "dist_timeout=3", "--image_batch", "4"))

    logs = [tmp_path / f"rank{r}.log" for r in (0, 1)]
    codes = exit_codes([forked(lambda r=r: rank(r), logs[r]) for r in (0, 1)])
    printed = [log.read_text() for log in logs]
    assert codes == [0, 0], printed
    # rank 0, out of images, waited for the working rank 1 well over dist_timeout (~4.4 s of planted delays)
    assert float(re.search(r"waited ([\d.]+) s", printed[0])[1]) > 3 * 1.3
    # the images went to the rank that asked for them: all four to rank 1, none to rank 0
    assert "rank 0/2:   0% 0/4" in printed[0] and "rank 1/2: 100% 4/4" in printed[1]
    assert "4 images: 3 segmented, 1 skipped" in printed[0]  # 3 segmentations over both ranks, 3 outputs below
    assert_labels_equal(out, reference[1])  # and the very maps of one process
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith("broken.jpg\t")


def test_a_stalled_rank_ends_a_folder_run_within_dist_timeout(photos, reference, tmp_path, capsys):  # noqa: F811 (fixtures of test_folder_run.py)
    out = tmp_path / "out"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ready = tmp_path / "stalled"

    def stall_after_claiming():  # rank 1 takes an image, then stops for good (SIGSTOP: alive, no progress)
        claim = WorkQueue.claim

        def claim_and_stop(self, count):
            claimed = claim(self, count)
            ready.write_text("")
            os.kill(os.getpid(), signal.SIGSTOP)
            return claimed

        WorkQueue.claim = claim_and_stop

    args = folder_args(photos, out, "dist_timeout=3", "--image_batch", "1")
    plants = (None, stall_after_claiming)
    ranks = [
        ForkedRun(args, tmp_path / f"rank{r}.log", {**env, "RANK": str(r), "LOCAL_RANK": str(r)}, plants[r])
        for r in (0, 1)
    ]
    try:
        assert wait_until(ready.exists, 120)
        stalled = time.monotonic()
        _, err = ranks[0].communicate(timeout=120)
        waited = time.monotonic() - stalled
    finally:
        for child in ranks:
            child.kill()
            child.wait()
    assert ranks[0].returncode == 1 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: rank 1 made no progress within dist_timeout=3 s (died or stalled")
    assert last.endswith("the images done so far stay (finish with --resume)")
    assert waited < 3 + 10  # rank 0's own images (3 at most), then dist_timeout
    assert run(folder_args(photos, out, "--resume")) == 0  # the image rank 1 held is done now
    assert "1 already complete" not in capsys.readouterr().out
    assert_labels_equal(out, reference[1])


def test_every_rank_must_see_the_output_folder_before_the_weights_load(photos, tmp_path, monkeypatch):  # noqa: F811 (fixtures of test_folder_run.py)
    out, port = tmp_path / "out", str(free_port())
    refuse_model_loading(monkeypatch)  # in both children too

    def rank(r):
        os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        if r == 1:  # a node whose OUT is a local disk of its own: rank 0's file is not there
            folder_outputs._sees = lambda path: False
        return run(folder_args(photos, out, "dist_timeout=30"))

    logs = [tmp_path / f"rank{r}.log" for r in (0, 1)]
    codes = exit_codes([forked(lambda r=r: rank(r), logs[r]) for r in (0, 1)])
    printed = [log.read_text() for log in logs]
    assert codes == [2, 2], printed
    for text in printed:
        last = text.strip().splitlines()[-1]
        assert last.startswith(f"error: --save_predictions {out}: rank 1 (host ") and "cannot see it" in last
