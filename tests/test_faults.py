"""Faults of a run: failed publishes, colliding runs, signals, dead ranks, full disks, bad output locations.

Each fault is reproduced on the CPU: planted failures and slowed or refused file operations by monkeypatching,
signals sent to child processes, and two hand-started gloo ranks of which one is killed or stopped.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import make_dataset
from forking import ForkedRun
from PIL import Image
from test_main_eval import (  # noqa: F401 (shared_backbones: the autouse fixture)
    REPO_ROOT,
    SMALL,
    TINY,
    assert_one_line_error,
    refuse_model_loading,
    run,
    shared_backbones,
)

from lposs.cli import main_eval
from lposs.evaluation.reporting import atomic_write_text
from lposs.evaluation.run_output import PublishError, StagedFolder, all_or_nothing
from lposs.outputs.checks import OutputLocationError, check_output_locations
from lposs.outputs.lock import OutputInUse, OutputLock, lock_path
from lposs.segmentation import Segmentor


def stop_at_the_first_image(ready: Path, action: str) -> Callable[[], None]:
    """What a child run does first: once it starts segmenting (the loader workers run, the staging folder exists) it
    writes its PID to ``ready`` and then blocks, or kills or stops itself (a dead or stalled rank)."""

    def stop_here(self, *args, **kwargs):
        ready.write_text(str(os.getpid()))
        if action == "block":
            time.sleep(600)
        os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)

    def plant() -> None:
        if action != "none":
            Segmentor.propagate_columns = stop_here  # what the evaluation loop calls per image

    return plant


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def files_of(*folders):
    """Every file under the folders (a run's private ``.lposs`` folder left out): bytes, mtime and mode."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and ".lposs" not in p.relative_to(folder).parts
    }


def beside(folder):
    """A run's debris of ``folder``: hidden entries beside it (staging, lock) and in its ``.lposs`` folder."""
    inside = sorted(f".lposs/{p.name}" for p in (folder / ".lposs").iterdir()) if (folder / ".lposs").is_dir() else []
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")) + inside


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def children_of(pid):
    """PIDs whose parent is ``pid`` (from /proc: no psutil)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid):
    """False once ``pid`` has ended (a zombie waiting for init to reap it counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


# ------------------------------------------------------------------------------------------ publishing


def stage_new_run(out, pred):
    """A run's staged files: new versions of the earlier ones, and new ones (voc20, b.png), in two folders."""
    output, predictions = StagedFolder.create(out), StagedFolder.create(pred)
    for rel in ("voc/a.png", "voc/b.png"):
        atomic_write_text(predictions.path(rel), f"new prediction {rel}")
    for rel in ("voc/visualisations/a.png", "voc/visualisations/b.png", "voc/results.json", "voc20/results.json"):
        atomic_write_text(output.path(rel), f"new {rel}")
    for rel in ("config.yaml", "summary.json", "sweep.md", "sweep.csv"):
        atomic_write_text(output.path(rel), f"new {rel}")
    return output, predictions


def publish_run(output, predictions):
    """As the runner's end of a run: per dataset predictions then outputs, then the rest, in one publication."""
    with all_or_nothing() as publication:
        for key in ("voc", "voc20"):
            predictions.publish(key, publication=publication)
            output.publish(key, publication=publication)
        output.publish(publication=publication)


def test_publish_fails_at_every_move_and_puts_every_file_back(tmp_path, monkeypatch):
    out, pred = tmp_path / "out", tmp_path / "pred"
    for path in [pred / "voc/a.png", out / "voc/visualisations/a.png", out / "voc/results.json"] + [
        out / name for name in ("config.yaml", "summary.json", "sweep.md", "sweep.csv", "eval.log")
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"old {path.name}")
    before = files_of(out, pred)
    real_replace, moves = os.replace, []

    def planted(src, dst):
        if armed:
            moves.append((Path(src), Path(dst)))
            if len(moves) == fail_at:
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", planted)
    fail_at, complete = 1, None
    while complete is None:
        armed = False
        output, predictions = stage_new_run(out, pred)
        staged = files_of(output.staging, predictions.staging)
        moves.clear()
        armed = True
        try:
            publish_run(output, predictions)
            complete = [dst for src, dst in moves]
        except PublishError as error:
            src, dst = moves[fail_at - 1]
            assert "\n" not in str(error) and error.filename in (str(src), str(dst))  # the final file's name
            assert "every earlier file was put back" in error.strerror
            assert files_of(out, pred) == before, f"move {fail_at} changed the earlier files"
            assert not (out / "voc20").exists() and not list(output.staging.glob(".publishing"))
            # the computed results stay: every staged file is back in staging, byte for byte
            kept = {p: v for p, v in files_of(output.staging, predictions.staging).items() if p.name != ".owner"}
            assert kept == {p: v for p, v in staged.items() if p.name != ".owner"}
        armed = False
        for folder in (output, predictions):
            kept = folder.discard()
            assert (kept is None) == (complete is not None)  # kept after a failed publish, renamed
            if kept is not None:
                assert ".unpublished-" in kept.name and kept.parent == tmp_path
                shutil.rmtree(kept)
        assert beside(out) == beside(pred) == []
        fail_at += 1
    # every step failed once: the journal, its pointer in the other staging folder, the 10 files and the 7
    # replaced ones moved aside first, the commit marker
    assert fail_at == 22
    # the publish order: predictions, overlays, results.json (per dataset), then config, summary, tables
    names = [p.relative_to(tmp_path).as_posix() for p in complete if pred in p.parents or out in p.parents]
    assert names == [
        "pred/voc/a.png",
        "pred/voc/b.png",
        "out/voc/visualisations/a.png",
        "out/voc/visualisations/b.png",
        "out/voc/results.json",
        "out/voc20/results.json",
        "out/config.yaml",
        "out/summary.json",
        "out/sweep.csv",
        "out/sweep.md",
    ]
    assert (out / "voc/results.json").read_text() == "new voc/results.json"
    assert (out / "eval.log").read_text() == "old eval.log"  # appended to, never replaced


# ------------------------------------------------------------------------------------------ locks


def test_lock_names_its_live_holder_and_a_dead_holder_is_taken_over(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    held = OutputLock.acquire(folder)
    record = json.loads(lock_path(folder).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
    with pytest.raises(OutputInUse, match=f"PID {os.getpid()} on host"):
        OutputLock.acquire(folder)  # flock: another open file of this process is refused too
    held.release()
    assert not lock_path(folder).exists() and not folder.exists()
    again = OutputLock.acquire(folder)
    assert again.taken_over is None  # a lock released in the normal way is not stale
    again.release()
    # a file system without flock: the record decides (a live PID holds it, a dead one left it stale)
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock_path(folder).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "x"}))
    with pytest.raises(OutputInUse):
        OutputLock.acquire(folder)
    gone = dead_pid()
    lock_path(folder).write_text(json.dumps({"host": socket.gethostname(), "pid": gone, "started": "x"}))
    taken = OutputLock.acquire(folder)
    assert f"PID {gone}" in taken.taken_over and "no longer runs" in taken.taken_over
    taken.release()


def first_results(tmp_path, *extra):
    """A finished run into out (voc, predictions into pred): the files a later run must not touch."""
    make_dataset(tmp_path, "voc")
    out, pred = tmp_path / "out", tmp_path / "pred"
    common = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY]
    common += ["--output", str(out), "--save_predictions", str(pred), *extra]
    assert run(common) == 0
    return out, pred, common


def test_second_run_into_a_locked_folder_stops_at_once(tmp_path, capsys, monkeypatch):
    out, pred, common = first_results(tmp_path)
    before = files_of(out, pred)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time; from lposs.outputs.lock import OutputLock; "
            "OutputLock.acquire(pathlib.Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)",
            str(out),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with monkeypatch.context() as patch:
            refuse_model_loading(patch)  # stopped at once: before any model loads
            assert_one_line_error(capsys, run([*common, "k=7"]), f"--output {out} is in use", f"PID {holder.pid}")
        assert files_of(out, pred) == before and beside(pred) == []
    finally:
        holder.kill()
        holder.wait()
    # its holder was SIGKILLed: the next run takes the lock over (one line) and holds it for the whole run
    real_replace, refused = os.replace, []

    def publish_while_another_tries(src, dst):
        if out in Path(dst).parents and not refused:
            try:
                OutputLock.acquire(out).release()
            except OutputInUse:
                refused.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", publish_while_another_tries)
    assert run([*common, "k=7"]) == 0
    printed = capsys.readouterr().out
    assert f"took over the lock of {out} left by PID {holder.pid}" in printed and refused
    assert beside(out) == beside(pred) == []


# ------------------------------------------------------------------------------------------ output locations


def test_output_locations_probed(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputLocationError, match=f"{afile} is a file"):
        check_output_locations([("--output", afile)])
    with pytest.raises(OutputLocationError, match=f"cannot be created: {afile} is a file"):
        check_output_locations([("--save_predictions", afile / "a" / "b")])
    ro, fine = tmp_path / "ro", tmp_path / "fine"
    ro.mkdir()
    fine.mkdir()
    mtime = fine.stat().st_mtime_ns
    real_open, probes = os.open, []

    def refusing(path, flags, mode=0o777, *, dir_fd=None):
        probes.append(Path(path))
        if Path(path).parent == ro:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refusing)
    check_output_locations([("--output", fine), ("--output", fine / "new" / "deeper")])
    assert [p.parent for p in probes] == [fine]  # probed once, where the files will go
    assert fine.stat().st_mtime_ns == mtime and list(fine.iterdir()) == []  # probe removed, folder as it was
    with pytest.raises(OutputLocationError, match=f"{ro / 'sub'} cannot be created: {ro} refuses new files"):
        check_output_locations([("--output", ro / "sub")])


def test_bad_output_locations_stop_before_any_model_loads(tmp_path, capsys, monkeypatch):
    out, pred, common = first_results(tmp_path, "--save_visualisations", "1")
    before = files_of(out, pred)
    refuse_model_loading(monkeypatch)
    afile = tmp_path / "afile"
    afile.write_text("x")
    base = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY]
    assert_one_line_error(capsys, run([*base, "--output", str(afile)]), f"--output {afile} is a file")
    assert_one_line_error(capsys, run([*base, "--output", str(afile / "out")]), f"{afile} is a file")
    assert_one_line_error(capsys, run([*base, "--save_predictions", str(afile / "p")]), "--save_predictions")
    # unwritable folders (tests run as root, so mode bits would not stop the writes): os.open refuses there
    real_open = os.open
    # (a parent that refuses new files is no fault when the folder exists: test_output_places.py)
    for folder, reason in ((out / "visualisations", errno.EACCES), (out, errno.EROFS)):

        def refusing(path, flags, mode=0o777, *, dir_fd=None, folder=folder, reason=reason):
            if Path(path).parent == folder:
                raise OSError(reason, os.strerror(reason), path)
            return real_open(path, flags, mode, dir_fd=dir_fd)

        monkeypatch.setattr(os, "open", refusing)
        assert_one_line_error(capsys, run([*common, "--save_visualisations", "1", "k=9"]), str(folder))
    monkeypatch.setattr(os, "open", real_open)
    assert files_of(out, pred) == before and beside(out) == beside(pred) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit", "afile", "out", "pred"]


def test_preflight_gaps(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path, "voc")
    refuse_model_loading(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = ["lposs_plus.yaml", "--dataset", "voc", f"data_root={tmp_path}", *TINY, "device=cpu"]
    assert_one_line_error(capsys, run([*args, "pixel_backend=triton"]), "pixel_backend='triton'", "CUDA")
    with pytest.raises(SystemExit) as stop:
        main_eval.parse_args(["lposs.yaml", "--output", str(tmp_path), "--save_visualisations", "-1"])
    assert stop.value.code == 2 and "--save_visualisations must be >= 0" in capsys.readouterr().err
    assert main_eval.dataset_keys("voc,voc20,voc") == ["voc", "voc20"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("k: 10\n")  # no defaults list: data_root is a valid key, but not in this file
    assert_one_line_error(capsys, run([str(mine), "--dataset", "voc", f"data_root={tmp_path}"]), "defaults: [lposs")


# ------------------------------------------------------------------------------------------ faults mid-run


def test_failed_publish_of_each_kind_of_file_keeps_earlier_results(tmp_path, capsys, monkeypatch):
    out, pred, common = first_results(tmp_path, "--save_visualisations", "1")
    before = files_of(out, pred)
    assert {p.name for p in before} >= {"results.json", "config.yaml", "summary.json", "img_a.png"}
    real_replace = os.replace
    for kind in ("pred", "visualisations", "results.json", "config.yaml", "summary.json"):
        failed = []

        def planted(src, dst, kind=kind, failed=failed):
            dst = Path(dst)
            if not failed and (out in dst.parents or pred in dst.parents) and kind in (dst.name, *dst.parts[-3:-1]):
                failed.append(dst)  # once: putting the earlier files back works
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", planted)
        code = run([*common, "k=7"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("error: cannot publish ") and "Traceback" not in "\n".join(err)
        assert f"{failed[0]}: Permission denied" in err[-1] and "every earlier file was put back" in err[-1]
        assert files_of(out, pred) == before, kind
        # the computed results are kept, named in the line (no later run removes them)
        kept = [tmp_path / name for name in beside(out) + beside(pred)]
        assert [p.name.split("-")[0] for p in kept] == [".out.unpublished", ".pred.unpublished"]
        assert err[-1].endswith(f"this run's results are kept in {kept[0]}, {kept[1]}")
        assert (kept[0] / "results.json").is_file() and len(list(kept[1].glob("*.png"))) == 2
        for folder in kept:
            shutil.rmtree(folder)


def test_full_disk_mid_run(tmp_path, capsys, monkeypatch):
    out, pred, common = first_results(tmp_path)
    before = files_of(out, pred)
    real_save, saved = Image.Image.save, []

    def disk_fills(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_fills)
    code = run([*common, "k=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"error: cannot write {pred.parent}/.pred.partial-") and err[-1].endswith(
        "img_a.png: No space left on device; staging removed, earlier results unchanged"
    )
    assert files_of(out, pred) == before and beside(out) == beside(pred) == []


def test_full_disk_on_the_log_file_names_it(tmp_path):
    import logging

    from lposs.evaluation.run_state import LogFile as _LogFile

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    handler = _LogFile(tmp_path / "eval.log")
    handler.stream.close()
    handler.stream = FullDisk()
    record = logging.LogRecord("lposs", logging.INFO, __file__, 1, "a result", None, None)
    with pytest.raises(OSError, match="No space left") as error:
        handler.emit(record)  # logging's default would print a traceback and carry on
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(tmp_path / "eval.log")


def test_label_values_outside_the_classes_reported_once(tmp_path, capsys):
    make_dataset(tmp_path, "voc")
    label = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/img_a.png"
    values = np.array(Image.open(label))
    values[10:12, 20:23] = 30  # voc has 21 classes: 30 is none of them, nor the ignore value 255
    Image.fromarray(values).save(label)
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY]
    assert run(args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "outside the classes" in line]
    assert len(lines) == 1 and f"e.g. {label} holds 30" in lines[0]
    assert "1 of 2 label files" in lines[0] and "in 6 pixels" in lines[0]


# ------------------------------------------------------------------------------------------ signals


def start_child(tmp_path, name, action, args, env=None):
    """A run forked from this process (see tests/forking.py) that stops at its first image as ``action`` says."""
    ready = tmp_path / f"{name}.ready"
    child = ForkedRun(args, tmp_path / f"{name}.log", env, stop_at_the_first_image(ready, action))
    return child, ready


def test_sigterm_and_sigkill_leave_no_debris(tmp_path, capsys):
    out, pred, common = first_results(tmp_path)
    before = files_of(out, pred)
    out2 = tmp_path / "out2"
    # full-size images, one per batch: a worker's next batch fills the pipe to its rank; workers of a dead rank
    # then block writing to it for minutes, unless the kernel kills them with their parent
    big = ["--image_batch", "1", "num_workers=2", "short_side=448", "crop=224", "stride=112"]
    term, term_ready = start_child(tmp_path, "term", "block", [*common, *big])
    kill, kill_ready = start_child(tmp_path, "kill", "block", [*common[:-4], "--output", str(out2), *big])
    workers = {}
    try:
        assert wait_until(lambda: term_ready.exists() and kill_ready.exists(), 300)
        workers = {child: children_of(child.pid) for child in (term, kill)}
        assert all(len(pids) == 2 for pids in workers.values())
        assert ".out.lock" in beside(out) and len(beside(out2)) == 2  # the lock and the staging folder
        term.send_signal(signal.SIGTERM)
        kill.send_signal(signal.SIGKILL)
        _, err = term.communicate(timeout=120)
        assert term.returncode == 143, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("terminated (SIGTERM): earlier results") and "Traceback" not in err
        assert kill.wait(timeout=60) == -signal.SIGKILL
        assert wait_until(lambda: not any(running(pid) for pids in workers.values() for pid in pids), 30)
    finally:
        for child in (term, kill):
            child.kill()
            child.wait()
        for pid in [pid for pids in workers.values() for pid in pids if running(pid)]:
            os.kill(pid, signal.SIGKILL)  # orphans of a failed check must not outlive the test
    assert files_of(out, pred) == before and beside(out) == beside(pred) == []
    left = beside(out2)
    assert left[0] == ".out2.lock" and left[1].startswith(".out2.partial-")
    # the next run into out2 takes the lock over and removes the staging folder, one line each
    assert run([*common[:-4], "--output", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert f"removed the staging folder {out2.parent / left[1]} of a run that no longer runs (PID {kill.pid}" in printed
    assert f"took over the lock of {out2} left by PID {kill.pid}" in printed
    assert beside(out2) == [] and (out2 / "results.json").is_file()


# ------------------------------------------------------------------------------------------ distributed


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_dead_or_stalled_rank_ends_the_others_within_dist_timeout(tmp_path, fault):
    make_dataset(tmp_path, "voc")
    out = tmp_path / "out"
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", "--output", str(out), *SMALL, *TINY]
    args += ["--save_predictions", str(tmp_path / "pred"), "dist_timeout=5"]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [
        start_child(tmp_path, f"rank{r}", action, args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})[0]
        for r, action in ((0, "none"), (1, fault))
    ]
    try:
        _, err = ranks[0].communicate(timeout=300)
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    lines = err.strip().splitlines()
    assert ranks[0].returncode == 1 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("error: rank 0: rank 1 did not arrive within dist_timeout=5 s (died or stalled")
    assert lines[-1].endswith("staging removed, earlier results unchanged")
    assert beside(out) == [] and not out.exists() and not (tmp_path / "pred").exists()


# ------------------------------------------------------------------------------------------ non-finite scores


def test_non_finite_scores_name_the_image_and_keep_earlier_results(tmp_path, capsys, monkeypatch):
    """NaN class scores for the second image (img_a, listed second), argmaxed as they are (maskclip) or propagated
    (lposs): one line naming it, exit 1, and the earlier results under --output and --save_predictions byte for
    byte as they were."""
    out, pred, common = first_results(tmp_path)
    before = files_of(out, pred)
    real_encode, calls = Segmentor.encode_batch, []

    def nan_for_the_second_image(self, images, sizes):
        encodings = real_encode(self, images, sizes)
        calls.append(len(images))
        if len(calls) % 2 == 0:
            encodings[0].scores[:, 0] = float("nan")  # one class column of every window
        return encodings

    monkeypatch.setattr(Segmentor, "encode_batch", nan_for_the_second_image)
    image = tmp_path / "VOCdevkit/VOC2012/JPEGImages/img_a.jpg"
    for config in ("maskclip.yaml", "lposs.yaml"):
        code = run([config, *common[1:], "--image_batch", "1", "k=7"])
        err = capsys.readouterr().err.strip().splitlines()
        assert calls[-2:] == [1, 1] and code == 1, config  # main() returned: no exception escaped
        assert err[-1].startswith(f"error: image {image}: ") and "NaN or infinite" in err[-1]
        assert err[-1].endswith("staging removed, earlier results unchanged")
        assert files_of(out, pred) == before and beside(out) == beside(pred) == []
