"""The real CLI's publish killed, failed and signalled at exact steps; what it says when the end goes wrong.

Crash runs: ``tests/crash_site/sitecustomize.py`` wraps ``os.replace``/``os.rename``/``os.unlink``/``os.rmdir``
and kills the process, or plants an EIO then a SIGINT, at an exact step of the publish; predictions go to a
second folder and there are overlays. Black-box: ``python -m lposs.cli.main_eval`` in a subprocess with it
first on ``PYTHONPATH`` (killed after the commit point); the same planted faults in forks of this process,
whose models are built already (killed before the commit point; EIO then SIGINT during the rollback). Then
the next run (in this process) recovers, and the folders must hold exactly the earlier files or exactly the new
ones. Every step of such a publish is tried in ``tests/test_publish.py``.
"""

import ctypes
import errno
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_faults import ENV, beside, files_of, first_results, free_port
from test_main_eval import REPO_ROOT, SMALL, TINY, run, share_backbones, shared_backbones  # noqa: F401

from lposs.evaluation import loop
from lposs.evaluation.run_output import StagedFolder
from lposs.evaluation.run_state import LogFile
from lposs.models import LPOSSBackbones

CRASH_SITE = Path(__file__).resolve().parent / "crash_site"
NEW = ["--save_visualisations", "2", "k=20", "alpha=0.5"]


def crash_env(spec):
    """The environment of a child CLI with the planted fault ``spec`` (see crash_site/sitecustomize.py)."""
    path = os.pathsep.join([str(CRASH_SITE), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**ENV, "PYTHONPATH": path, "LPOSS_CRASH": spec}


def cli_in_fork(args, env=None, before=None, err=os.devnull):
    """``main_eval`` in a forked child of this process (models built already: no start-up cost); its PID.

    ``env``: variables set in the child; ``before()`` runs there first; stderr goes to the file ``err``.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)  # as in loader workers: the parent's OpenMP threads are not in the child
            os.environ.update(env or {})
            sys.stdout, sys.stderr = open(os.devnull, "w"), open(err, "w", buffering=1)
            if before is not None:
                before()
            code = run(args)
        finally:
            os._exit(code)
    return pid


def exit_status(pid):
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """One finished run (voc, 2 overlays, predictions in another folder); tests copy it (times and modes kept)."""
    root = tmp_path_factory.mktemp("earlier")
    with pytest.MonkeyPatch.context() as patch:
        share_backbones(patch)  # the function-scoped fixture does not reach a module fixture
        first_results(root, "--save_visualisations", "2")
    return root


def copy_of(earlier, folder):
    """A copy of the earlier results in ``folder``: ``(out, pred, args of a run into them)``."""
    out, pred = folder / "out", folder / "pred"
    shutil.copytree(earlier / "out", out, symlinks=True)
    shutil.copytree(earlier / "pred", pred, symlinks=True)
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={earlier}", *SMALL, *TINY]
    return out, pred, [*args, "--output", str(out), "--save_predictions", str(pred)]


def interrupted_at_start(monkeypatch):
    """The next run, stopped by Ctrl-C once it has locked and recovered its folders (before any model loads)."""

    def stop(cls, model_cfg, device="cpu"):
        raise KeyboardInterrupt

    monkeypatch.setattr(LPOSSBackbones, "from_config", classmethod(stop))


def test_cli_killed_before_and_after_the_commit_point_and_interrupted_in_its_rollback(
    earlier, tmp_path, capsys, monkeypatch
):
    cases = {name: copy_of(earlier, tmp_path / name) for name in ("before", "after", "rollback")}
    specs = {
        "before": f"kill:2:replace:{cases['before'][1]}/",  # a prediction put aside, its new one not yet in
        "after": "kill:1:unlink:/.replaced/",  # deleting the earlier files: after the commit point
        "rollback": f"eio:1:replace:{cases['rollback'][0]}/config.yaml",  # then SIGINT at the rollback's start
    }
    before = {name: files_of(out, pred) for name, (out, pred, _) in cases.items()}
    # the real CLI in a process of its own, the fault planted by sitecustomize
    child = subprocess.Popen(
        [sys.executable, "-m", "lposs.cli.main_eval", *cases["after"][2], *NEW],
        cwd=REPO_ROOT,
        env=crash_env(specs["after"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # meanwhile the same sitecustomize in forks of this process (no start-up: its models are built)
    plant = lambda: runpy.run_path(str(CRASH_SITE / "sitecustomize.py"))  # noqa: E731
    errs = {name: tmp_path / f"{name}.err" for name in ("before", "rollback")}
    forked = {
        name: exit_status(cli_in_fork([*cases[name][2], *NEW], {"LPOSS_CRASH": specs[name]}, plant, errs[name]))
        for name in ("before", "rollback")
    }
    err = child.communicate(timeout=300)[1]
    assert child.returncode == forked["before"] == -signal.SIGKILL, err[-3000:]
    assert forked["rollback"] == 130, errs["rollback"].read_text()[-3000:]
    last = errs["rollback"].read_text().strip().splitlines()[-1]
    assert last == "interrupted: earlier results under --output are otherwise unchanged"
    interrupted_at_start(monkeypatch)
    for name, (out, pred, args) in cases.items():
        assert run(args) == 130
        printed = capsys.readouterr().out
        assert beside(out) == beside(pred) == [], name
        if name != "after":
            assert files_of(out, pred) == before[name], f"{name}: the earlier files changed"
            continue
        assert "its committed publish finished" in printed
        assert json.loads((out / "results.json").read_text())["config"]["k"] == 20
        after = {p.relative_to(tmp_path): v for p, v in files_of(out, pred).items()}
        earlier_files = {p.relative_to(tmp_path): v for p, v in before[name].items()}
        assert after.keys() == earlier_files.keys()  # the same files, every one of them the new run's:
        changed = [p for p in after if after[p][1] != earlier_files[p][1]]
        assert sorted(changed) == sorted(p for p in after if p.name != "eval.log"), "a mix of old and new files"


def test_the_end_of_a_run_after_its_results_were_published(earlier, tmp_path, capsys, monkeypatch):
    out, pred, common = copy_of(earlier, tmp_path)
    log = (out / "eval.log").read_bytes()
    real_rmtree, real_append, real_open = shutil.rmtree, StagedFolder.append_to, open

    def sigterm_in_the_commit(path, *args, **kwargs):  # deleting the earlier files: inside the commit
        if ".replaced" in str(path):
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rmtree(path, *args, **kwargs)

    def sigterm_after_the_commit(self, name):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_append(self, name)

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def disk_full_on_the_log(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(m in mode for m in "wa")
        if writing and (Path(str(file)) == out / "eval.log" or str(file).endswith("eval.log.appended")):
            return FullDisk(handle)
        return handle

    for k, (target, plant) in enumerate(
        [(shutil, ("rmtree", sigterm_in_the_commit)), (StagedFolder, ("append_to", sigterm_after_the_commit))], 7
    ):
        with monkeypatch.context() as patch:
            patch.setattr(target, *plant)
            assert run([*common, f"k={k}"]) == 143
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == "terminated (SIGTERM) after this run's results were published"
        assert json.loads((out / "results.json").read_text())["config"]["k"] == k and beside(out) == []
        assert not list(tmp_path.glob(".*partial*")) and (out / "eval.log").read_bytes() == log
    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", disk_full_on_the_log)
        assert run([*common, "k=9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"error: results published; could not append eval.log: {out / 'eval.log'}: No space left on device"
    )
    assert (out / "eval.log").read_bytes() == log  # not torn
    assert json.loads((out / "results.json").read_text())["config"]["k"] == 9 and beside(out) == beside(pred) == []


def test_no_staged_log_means_no_leak(earlier, tmp_path, capsys, monkeypatch):
    out, pred, common = copy_of(earlier, tmp_path)
    before = files_of(out, pred)
    for reason in (errno.ENOSPC, errno.EMFILE):

        def refused(self, filename, *args, reason=reason, **kwargs):
            raise OSError(reason, os.strerror(reason), filename)

        monkeypatch.setattr(LogFile, "__init__", refused)
        assert run([*common, "k=7"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: cannot write ") and err[-1].endswith(
            f"eval.log: {os.strerror(reason)}; staging removed, earlier results unchanged"
        )
        assert files_of(out, pred) == before and beside(out) == beside(pred) == []


def test_prediction_files_rank_0_cannot_see_stop_the_publish(earlier, tmp_path, capsys, monkeypatch):
    out, pred, common = copy_of(earlier, tmp_path)
    before = files_of(out, pred)
    real_save, calls = loop.save_label_png, []

    def elsewhere(labels, path, palette=None):  # another node's rank writing to its own disk
        calls.append(path)
        if len(calls) > 1:
            real_save(labels, path, palette)

    monkeypatch.setattr(loop, "save_label_png", elsewhere)
    assert run([*common, "k=7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot publish {pred}: 1 of the 2 prediction files the ranks wrote are in")
    assert "--save_predictions must be on storage every node shares" in err
    kept = sorted(tmp_path.glob(".*unpublished-*"))  # .out..., .pred...
    assert err.endswith(f"this run's results are kept in {kept[0]}, {kept[1]}") and len(kept) == 2
    assert files_of(out, pred) == before


def own_disk(folder):
    """In this (forked, single-threaded) process only: an empty disk of its own mounted on ``folder``."""
    libc = ctypes.CDLL(None, use_errno=True)
    ms_rec, ms_private = 16384, 1 << 18
    if libc.unshare(0x00020000) or libc.mount(b"none", b"/", None, ms_rec | ms_private, None):  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare/mount refused")
    if libc.mount(b"tmpfs", str(folder).encode(), b"tmpfs", 0, None):
        raise OSError(ctypes.get_errno(), "mount refused")


def test_rank_that_cannot_see_the_staging_folder_stops_every_rank(earlier, tmp_path):
    """Two gloo ranks; rank 1 sees an empty disk of its own where --save_predictions goes (a node-local disk)."""
    if os.geteuid() != 0:
        pytest.skip("giving one process a disk of its own (a mount namespace) needs root")
    local = tmp_path / "local"
    local.mkdir()
    out, pred = tmp_path / "out", local / "pred"
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={earlier}", *SMALL, *TINY, "dist_timeout=30"]
    args += ["--output", str(out), "--save_predictions", str(pred)]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    errs = [tmp_path / f"rank{rank}.err" for rank in range(2)]
    ranks = [
        cli_in_fork(args, {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, setup, errs[rank])
        for rank, setup in enumerate([None, lambda: own_disk(local)])
    ]
    assert [exit_status(pid) for pid in ranks] == [2, 2], [err.read_text()[-3000:] for err in errs]
    for err in errs:
        last = err.read_text().strip().splitlines()[-1]
        assert last.startswith(f"error: --save_predictions {pred}: rank 1 (host ") and "Traceback" not in last
        assert "cannot see rank 0's staging folder" in last and "not on a node-local disk" in last
    assert beside(out) == beside(pred) == [] and not out.exists() and os.listdir(local) == []
