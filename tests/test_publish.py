"""The publish of a run killed, failed or signalled at every step: the next run finds all-old or all-new.

Each publish runs in a forked child of this process (files only: no model, no torch work), whose ``os`` calls
are wrapped to SIGKILL it, fail, or signal it at an exact step; this process then does what the next run does
(:func:`lock_outputs`: lock, recover, remove stale staging) and compares every file byte for byte, with its
modification time and mode. ``tests/test_publish_cli.py`` does the same to the real CLI in a subprocess.
"""

import errno
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from test_faults import beside, dead_pid, files_of, publish_run, stage_new_run

from lposs.evaluation.interrupts import sigterm_raises
from lposs.evaluation.output_recovery import clean_stale_staging, lock_outputs
from lposs.evaluation.run_output import StagedFolder
from lposs.outputs.journal import COMMITTED, JOURNAL

STEPS = ("replace", "rename", "unlink", "rmdir")  # the os calls a publish changes names with


def earlier_results(root):
    """Earlier results in two folders (some of them replaced by the new run, one not: eval.log)."""
    out, pred = root / "out", root / "pred"
    for path in [pred / "voc/a.png", out / "voc/visualisations/a.png", out / "voc/results.json"] + [
        out / name for name in ("config.yaml", "summary.json", "eval.log")
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"old {path.name}")
    return out, pred


def wrap_steps(on_step):
    """Wrap the ``os`` calls of :data:`STEPS` (in a forked child): ``on_step(count, name, args)`` runs first."""
    count = [0]
    for name in STEPS:
        real = getattr(os, name)

        def step(*args, real=real, name=name, **kwargs):
            count[0] += 1
            on_step(count[0], name, args)
            return real(*args, **kwargs)

        setattr(os, name, step)


def in_child(body):
    """Run ``body()`` in a forked child; its exit status (a signal number as its negative)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def killed_at(step, output, predictions):
    """The publish of a new run, SIGKILLed at ``step`` (the staging folders' removal after it: a plain rmtree)."""

    def body():
        wrap_steps(lambda count, name, args: count == step and os.kill(os.getpid(), signal.SIGKILL))
        publish_run(output, predictions)

    return body


def recover(*folders):
    """What the next run into ``folders`` does first: lock, recover and clean, release."""
    locks, notes = lock_outputs([("--output", folder) for folder in folders], True)
    for lock in locks:
        lock.release()
    return notes


def contents(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in files_of(folder)}


def test_killed_at_every_step_of_a_publish_over_two_folders(tmp_path, monkeypatch):
    # a killed process leaves the page cache to the kernel: fsync matters for a power loss only (tested below)
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    outcomes, step = [], 1
    while True:
        root = tmp_path / f"k{step}"
        out, pred = earlier_results(root)
        before = {"out": contents(out), "pred": contents(pred)}
        output, predictions = stage_new_run(out, pred)
        new = {"out": contents(output.staging), "pred": contents(predictions.staging)}
        status = in_child(killed_at(step, output, predictions))
        if status == 0:
            break  # the publish ended before this step: every step was tried
        assert status == -signal.SIGKILL
        # the next run may use only one of the folders: the whole publication is resolved from either
        first, second = (out, pred) if step % 2 else (pred, out)
        notes = recover(first)
        after = {"out": contents(out), "pred": contents(pred)}
        if after == before:
            outcomes.append("old")
        else:  # exactly the new files (moved: same mtime), and the earlier ones the run did not replace
            for name in ("out", "pred"):
                expected = {**before[name], **{p: v for p, v in new[name].items() if p.name != ".owner"}}
                assert after[name] == expected, f"step {step}: {name} is neither all-old nor all-new"
            outcomes.append("new")
        notes += recover(second)
        assert beside(out) == beside(pred) == [], f"step {step}: staging left"
        assert all("removed the staging folder" in note for note in notes), notes
        step += 1
    # one commit point: every step before it leaves the earlier files, every step after it the new ones
    switch = outcomes.index("new")
    assert set(outcomes[:switch]) == {"old"} and set(outcomes[switch:]) == {"new"}
    assert switch == 18  # killed before the marker's rename: the journal, its pointer, 5 files put aside, 10 moves
    assert len(outcomes) > switch + 5  # the earlier files put aside are deleted after it, then the journal


def test_second_signal_during_the_rollback_keeps_every_earlier_file(tmp_path):
    """An EIO (or Ctrl-C) mid-publish starts a rollback; a second signal then arrives at another thread."""
    for first, second in (("eio", signal.SIGINT), (signal.SIGINT, signal.SIGTERM)):
        out, pred = earlier_results(tmp_path / f"{first}")
        before = files_of(out, pred)
        output, predictions = stage_new_run(out, pred)
        report = tmp_path / f"{first}.outcome"

        def body(first=first, second=second, report=report, output=output, predictions=predictions):
            # like OpenMP, gloo or a loader pin thread: the kernel may hand a process-directed signal to it
            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
            signal.signal(signal.SIGINT, signal.default_int_handler)

            def on_step(count, name, args):
                if count == 11:  # a move in the middle of the output folder's files
                    if first == "eio":
                        raise OSError(errno.EIO, "Input/output error", args[-1])
                    os.kill(os.getpid(), first)
                if count == 13:  # the rollback has begun
                    os.kill(os.getpid(), second)

            wrap_steps(on_step)
            try:
                with sigterm_raises():
                    publish_run(output, predictions)
            except BaseException as error:
                report.write_text(type(error).__name__)
            finally:
                for folder in (output, predictions):
                    folder.discard()

        assert in_child(body) == 0
        assert report.read_text() in ("KeyboardInterrupt", "Terminated"), report.read_text()
        assert files_of(out, pred) == before, f"{first} then {second}: earlier files changed"
        assert beside(out) == beside(pred) == []


def test_recovery_undoes_only_what_is_still_the_killed_runs(tmp_path):
    out, pred = earlier_results(tmp_path)
    output, predictions = stage_new_run(out, pred)
    assert in_child(killed_at(12, output, predictions)) == -signal.SIGKILL  # pred and out/voc done
    # meanwhile (a staging folder left on another host) a later run replaced one of the files it moved in
    newer = out / "voc/visualisations/b.png"
    assert newer.read_text() == "new voc/visualisations/b.png"
    newer.unlink()
    newer.write_text("a later run's overlay")
    for folder in (output, predictions):  # owner: a dead process of this host (no lock needed to judge)
        owner = json.loads((folder.staging / ".owner").read_text())
        (folder.staging / ".owner").write_text(json.dumps({**owner, "pid": dead_pid()}))
    notes = clean_stale_staging(out)
    assert newer.read_text() == "a later run's overlay"  # left alone, and named
    assert len(notes) == 1 and f"left alone, as another file is there now: {newer}" in notes[0]
    assert (pred / "voc/a.png").read_text() == "old a.png" and not (pred / "voc/b.png").exists()
    assert (out / "voc/visualisations/a.png").read_text() == "old a.png"


def test_staging_of_another_host_is_stale_while_this_run_holds_the_flock(tmp_path):
    out, pred = earlier_results(tmp_path)
    before = files_of(out, pred)
    output, predictions = stage_new_run(out, pred)
    assert in_child(killed_at(10, output, predictions)) == -signal.SIGKILL
    for folder in (output, predictions):  # made in a container that has gone, or on another node
        owner = json.loads((folder.staging / ".owner").read_text())
        (folder.staging / ".owner").write_text(json.dumps({**owner, "host": "elsewhere"}))
    lines = clean_stale_staging(out)  # without the lock: its owner may still run
    assert len(lines) == 1 and "may still run" in lines[0] and files_of(out, pred) != before
    notes = recover(out, pred)  # with the lock (a working flock): no other run can own it
    assert "its unfinished publish undone" in notes[0] and "PID" in notes[0] and "host elsewhere" in notes[0]
    assert files_of(out, pred) == before and beside(out) == beside(pred) == []


def test_earlier_files_are_never_deleted_when_the_journal_was_removed_by_hand(tmp_path):
    out, pred = earlier_results(tmp_path)
    output, predictions = stage_new_run(out, pred)
    assert in_child(killed_at(9, output, predictions)) == -signal.SIGKILL  # an overlay of out put aside
    (predictions.staging / JOURNAL).unlink()
    notes = recover(out)
    assert len(notes) == 1 and notes[0].startswith(f"kept the staging folder {output.staging}")
    assert (output.staging / ".replaced/voc/visualisations/a.png").read_text() == "old a.png"
    notes = recover(pred)  # the folder that held the journal: its earlier a.png is kept too
    assert len(notes) == 1 and notes[0].startswith(f"kept the staging folder {predictions.staging}")
    assert f"earlier files are kept in {predictions.staging / '.replaced'}" in notes[0]
    assert (predictions.staging / ".replaced/voc/a.png").read_text() == "old a.png"


def test_earlier_files_put_aside_are_kept_until_a_commit_point(tmp_path):
    """An undo that leaves a later file in place cannot put the earlier one back: its staging folder stays."""
    out, pred = earlier_results(tmp_path)
    output, predictions = stage_new_run(out, pred)
    assert in_child(killed_at(8, output, predictions)) == -signal.SIGKILL  # out's a.png replaced by the new one
    later = out / "voc/visualisations/a.png"
    later.unlink()
    later.write_text("a later run's overlay")
    assert recover(out, pred)
    assert later.read_text() == "a later run's overlay"
    assert (output.staging / ".replaced/voc/visualisations/a.png").read_text() == "old a.png"  # not deleted
    assert (pred / "voc/a.png").read_text() == "old a.png" and not predictions.staging.exists()
    output.keep = False
    assert output.discard() == output.staging  # the run's own clean-up keeps it too


def test_a_rollback_syncs_the_folders_it_restored_before_it_forgets_its_journal(tmp_path, monkeypatch):
    out, pred = earlier_results(tmp_path)
    output, predictions = stage_new_run(out, pred)
    events, real_fsync, real_replace, real_unlink = [], os.fsync, os.replace, os.unlink

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        if Path(dst) == out / "voc/results.json" and ".replaced" not in Path(src).parts:
            raise OSError(errno.EIO, "Input/output error", dst)  # the new results.json: the rollback starts
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    def unlink(path, *args, **kwargs):
        events.append(("unlink", str(path)))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OSError, match="every earlier file was put back"):
        publish_run(output, predictions)
    forgotten = events.index(("unlink", str(predictions.staging / JOURNAL)))
    last_undo = max(i for i, event in enumerate(events[:forgotten]) if event[0] == "replace")
    synced = {path for kind, path in events[last_undo:forgotten] if kind == "fsync"}
    assert {str(pred / "voc"), str(out / "voc"), str(out / "voc/visualisations")} <= synced
    assert (out / "voc/results.json").read_text() == "old results.json"


def test_a_journal_this_host_cannot_reach_is_never_taken_for_finished(tmp_path):
    out, pred = earlier_results(tmp_path)
    shutil.rmtree(out)  # no earlier files in out: nothing of it is put aside, only new files moved in
    before = files_of(pred)
    output, predictions = stage_new_run(out, pred)
    assert in_child(killed_at(8, output, predictions)) == -signal.SIGKILL
    assert (out / "voc/visualisations/a.png").read_text().startswith("new")
    mounted = predictions.staging.rename(tmp_path / "node-local")  # the journal's disk, not mounted here
    notes = recover(out)
    assert len(notes) == 1 and notes[0].startswith(f"kept the staging folder {output.staging}")
    assert f"its publish journal {predictions.staging / JOURNAL} is not reachable from this host" in notes[0]
    assert (output.staging / "voc/results.json").is_file()  # the staged results, and the pointer, kept
    mounted.rename(predictions.staging)  # where the journal is reachable, the publish is undone
    recover(out, pred)
    assert files_of(pred) == before and files_of(out) == {} and beside(out) == beside(pred) == []


def test_a_folder_named_like_staging_is_ours_only_with_our_owner_record(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    theirs, forged = tmp_path / ".res.partial-old", tmp_path / ".res.partial-abc"
    for folder in (theirs, forged):
        folder.mkdir()
        (folder / "notes.txt").write_text("the user's")
    (forged / ".owner").write_text("[1, 2]")  # a file of that name, not a record of a run
    notes = recover(out)  # with a working flock: every staging folder of a run would be stale
    assert (theirs / "notes.txt").read_text() == (forged / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".res.partial-abc", ".res.partial-old", "res"]
    assert notes == [
        f"left {folder} alone: named like a staging folder, but without the owner record of a run"
        for folder in (forged, theirs)
    ]


def test_journal_and_folders_are_durable_before_the_first_move_and_at_the_commit(tmp_path, monkeypatch):
    out, pred = earlier_results(tmp_path)
    output, predictions = stage_new_run(out, pred)
    staged = [str(p) for p in files_of(output.staging, predictions.staging) if p.name != ".owner"]
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    publish_run(output, predictions)
    renamed = [i for i, (kind, path) in enumerate(events) if kind == "replace"]
    moves = [i for i in renamed if out in Path(events[i][1]).parents or pred in Path(events[i][1]).parents]
    marker = next(i for i in renamed if events[i][1].endswith(COMMITTED))
    synced = [
        {path for kind, path in part if kind == "fsync"} for part in (events[: moves[0]], events[moves[-1] : marker])
    ]
    # before the first move: the new files' data, the journal (renamed into place) and its folder
    assert set(staged) <= synced[0] and str(predictions.staging) in synced[0]
    assert str(predictions.staging / JOURNAL) in {events[i][1] for i in renamed if i < moves[0]}
    # after the last move, before the commit point: every folder the moves changed
    assert {str(out), str(out / "voc"), str(out / "voc20"), str(pred / "voc")} <= synced[1]
    assert str(predictions.staging) in {path for kind, path in events[marker:] if kind == "fsync"}  # the marker's


def test_staging_left_by_a_dead_run_is_found_by_its_escaped_name_and_the_line_is_honest(tmp_path, monkeypatch):
    owner = {"host": socket.gethostname(), "pid": dead_pid(), "started": "x"}
    folders = {}
    for name in ("res[1]", "res1", "res*", "res[1].partial-b"):  # the last: another folder, a name like ours
        staging = tmp_path / f".{name}.partial-abc"
        staging.mkdir()
        (staging / ".owner").write_text(json.dumps(owner))
        folders[name] = staging
    lines = clean_stale_staging(tmp_path / "res[1]")
    assert lines == [
        f"removed the staging folder {folders['res[1]']} of a run that no longer runs (PID {owner['pid']} on host {owner['host']}, started x)"
    ]
    assert all(folders[name].is_dir() for name in ("res1", "res*", "res[1].partial-b"))  # other folders' staging
    real_rmdir = os.rmdir

    def busy(path, *args, **kwargs):
        if "res*" in str(path) or "partial-abc" in str(path):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", busy)
    lines = clean_stale_staging(tmp_path / "res*")
    assert len(lines) == 1 and lines[0].startswith(f"could not remove the staging folder {folders['res*']}")
    assert folders["res1"].is_dir()


def test_a_staging_folder_with_a_journal_is_never_deleted(tmp_path, monkeypatch):
    out, pred = earlier_results(tmp_path)
    before = files_of(out, pred)
    output, predictions = stage_new_run(out, pred)
    real_replace, calls = os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 9 or (len(calls) > 9 and Path(src).name == "a.png" and "/.replaced/" in str(src)):
            raise OSError(errno.EIO, "Input/output error", dst)  # a move, then putting back the earlier a.png
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="could not be put back"):
        publish_run(output, predictions)
    monkeypatch.setattr(os, "replace", real_replace)
    assert [folder.discard() for folder in (output, predictions)] == [output.staging, predictions.staging]
    assert (predictions.staging / JOURNAL).is_file() and (output.staging / ".joined").is_file()
    assert recover(out, pred) and files_of(out, pred) == before and beside(out) == beside(pred) == []


def test_staged_folder_is_shared_by_resolved_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    folder = StagedFolder.create(tmp_path / "sub" / ".." / "link")
    assert folder.final == real and folder.staging.parent == tmp_path
    assert folder.staging.name.startswith(".real.partial-")
    folder.discard()
