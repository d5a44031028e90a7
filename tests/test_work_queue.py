"""The work queue of folder runs (lposs/evaluation/work_queue.py): in one process, playing the other rank on its
in-memory store; then folder runs on two gloo ranks (and folder_outputs.py): images go to the rank that asks, a rank out of images waits for a working one far past dist_timeout, a stalled rank ends the run within
dist_timeout of its last progress, and every rank must see the output folder.

The ranks are real processes, forked from the test process (tests/forking.py): they share its imported modules
and its random-weight backbones copy-on-write, so that they start at once. The planted delays are as short as
the property allows: dist_timeout=3 s, a working rank whose every sign of progress comes 0.9 s late.
"""

import os
import re
import signal
import sys
import threading
import time

import pytest
from forking import ForkedRun, exit_codes, forked
from test_faults import free_port, wait_until
from test_folder_run import assert_labels_equal, folder_args, photos, reference  # noqa: F401 (fixtures)
from test_main_eval import refuse_model_loading, run, shared_backbones  # noqa: F401 (the autouse fixture)

from lposs.evaluation import folder_outputs
from lposs.evaluation.distributed import PeerFailure, collective_timeout, set_collective_timeout
from lposs.evaluation.work_queue import WorkQueue


@pytest.fixture
def short_timeout():
    """dist_timeout = 0.5 s for the test (put back after it)."""
    before = collective_timeout()
    set_collective_timeout(0.5)
    yield 0.5
    set_collective_timeout(before)


def rank_0_of_two(total):
    """Rank 0's queue of a 2-rank run, on the in-memory store of one process: the test plays rank 1 there."""
    queue = WorkQueue(total)
    queue.world = 2
    return queue


def test_claims_hand_out_each_position_once_in_order():
    queue = WorkQueue(5)
    assert [list(queue.claim(2)) for _ in range(4)] == [[0, 1], [2, 3], [4], []]
    assert queue.advance(3) == 3 and queue.advance(2) == 5  # the images done by all ranks
    queue.wait_for_all()  # one rank: nothing to wait for


def test_a_rank_is_waited_for_while_it_progresses_and_not_once_it_stalls_or_fails(short_timeout):
    queue = rank_0_of_two(4)

    def rank_1_working():  # 2 s of work, a sign of progress every 0.25 s, then done
        for _ in range(8):
            time.sleep(0.25)
            queue.store.add(f"{queue.prefix}beat/1", 1)
        queue.store.set(f"{queue.prefix}finished/1", "1")

    worker, start = threading.Thread(target=rank_1_working), time.monotonic()
    worker.start()
    queue.wait_for_all()
    worker.join()
    assert time.monotonic() - start > 3 * short_timeout  # waited three times dist_timeout, and more
    stalled, start = rank_0_of_two(4), time.monotonic()
    with pytest.raises(PeerFailure, match=r"^rank 0: rank 1 made no progress within dist_timeout=0.5 s"):
        stalled.wait_for_all()
    assert short_timeout < time.monotonic() - start < short_timeout + 1
    failed = rank_0_of_two(4)
    failed.store.set(f"{failed.prefix}failed/1", "1")
    with pytest.raises(PeerFailure, match=r"^rank 0: rank 1 stopped on an error"):
        failed.wait_for_all()


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
