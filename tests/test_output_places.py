"""Where a run stages and locks: links, ``..``, odd names, another file system, mount points, parallel starts."""

import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fake_datasets import make_dataset
from test_faults import ENV, beside, dead_pid, files_of
from test_main_eval import REPO_ROOT, SMALL, TINY, assert_one_line_error, run, shared_backbones  # noqa: F401

from lposs.outputs.lock import OutputInUse, OutputLock, lock_path

# ------------------------------------------------------------------------------------------ paths


def test_one_lock_for_a_folder_however_it_is_named(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "sub").mkdir()
    held = OutputLock.acquire(real)
    try:
        for other in (tmp_path / "link", tmp_path / "sub" / ".." / "real", tmp_path / "sub" / ".." / "link"):
            with pytest.raises(OutputInUse, match=f"--output {real} is in use"):
                OutputLock.acquire(other)
        make_dataset(tmp_path, "voc")
        args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *TINY, "--output", str(tmp_path / "link")]
        assert_one_line_error(capsys, run(args), f"--output {real} is in use")
    finally:
        held.release()
    assert lock_path(Path("/")) == Path("/.lposs/lock")  # not "/..lock"


def test_odd_names_links_and_dotdot_in_the_output_paths(tmp_path, capsys):
    make_dataset(tmp_path, "voc")
    (tmp_path / "a b").mkdir()
    (tmp_path / "to pred").symlink_to(tmp_path / "a b")
    pred = tmp_path / "a b" / "res [1]*"  # given as .../to pred/../a b/res [1]*: a link, then ..
    given = tmp_path / "to pred" / ".." / "a b" / "res [1]*"
    # staging folders a dead run left: its own (to remove), and another folder's that an unescaped glob matches
    owner = json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "started": "x"})
    for name in (".res [1]*.partial-dead", ".res 1x.partial-dead"):
        (tmp_path / "a b" / name).mkdir()
        (tmp_path / "a b" / name / ".owner").write_text(owner)
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY]
    assert run([*args, "--save_predictions", str(given), "--output", str(tmp_path / "o[u]t")]) == 0
    printed = capsys.readouterr().out
    assert f"removed the staging folder {tmp_path / 'a b' / '.res [1]*.partial-dead'}" in printed
    assert sorted(p.name for p in (tmp_path / "a b").iterdir()) == [".res 1x.partial-dead", "res [1]*"]
    assert len(list(pred.glob("*.png"))) == 2 and (tmp_path / "o[u]t" / "results.json").is_file()
    assert beside(tmp_path / "o[u]t") == beside(pred) == []


def test_output_through_a_link_onto_another_file_system(tmp_path):
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else None
    if scratch is None or scratch.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary folder")
    try:
        make_dataset(tmp_path, "voc")
        (scratch / "out").mkdir()
        (scratch / "out" / "results.json").write_text("earlier")  # replaced across the link
        (tmp_path / "results").symlink_to(scratch)  # ~/results -> /scratch/...: the parent is on another device
        out = tmp_path / "results" / "out"
        args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY, "--output", str(out)]
        assert run([*args, "--save_visualisations", "1", "k=7"]) == 0
        assert json.loads((scratch / "out" / "results.json").read_text())["config"]["k"] == 7
        assert list((scratch / "out" / "visualisations").iterdir()) and (scratch / "out" / "eval.log").is_file()
        assert beside(scratch / "out") == [] and sorted(p.name for p in scratch.iterdir()) == ["out"]
    finally:
        shutil.rmtree(scratch)


def test_parent_that_refuses_new_files_stages_inside_the_output(tmp_path, monkeypatch):
    make_dataset(tmp_path, "voc")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    before = files_of(out)
    real_open, opened = os.open, []

    def refusing(path, flags, mode=0o777, *, dir_fd=None):
        if Path(path).parent == tmp_path and flags & os.O_CREAT:  # a read-only parent (a container's root)
            raise OSError(errno.EROFS, "Read-only file system", path)
        opened.append(Path(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refusing)
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY, "--output", str(out)]
    assert run(args) == 0
    assert out / ".lposs" / "lock" in opened  # locked and staged inside, in the hidden folder
    inside = [p.relative_to(out / ".lposs").parts for p in opened if out / ".lposs" in p.parents]
    assert any(len(parts) > 1 and parts[0].startswith("partial-") for parts in inside)
    assert files_of(out).keys() - before.keys() >= {out / "results.json", out / "config.yaml"}
    assert files_of(out)[out / "earlier.txt"] == before[out / "earlier.txt"] and beside(out) == []


# ------------------------------------------------------------------------------------------ mount points

MOUNTED = """
import sys
from pathlib import Path
from lposs.outputs.checks import OutputLocationError, check_staging
from lposs.outputs.lock import OutputInUse
from lposs.evaluation.output_recovery import lock_outputs
from lposs.evaluation.run_output import StagedFolder
folder, outer = Path(sys.argv[1]), Path(sys.argv[2])
check_staging("--output", folder, [folder])
try:
    lock_outputs([("--output", folder)], True)
except OutputInUse as error:
    print("refused:", error, flush=True)
sys.stdin.readline()  # the host's run has ended
try:  # a folder mounted inside the output folder: its results cannot be renamed in
    check_staging("--output", outer, [outer / "inner"])
except OutputLocationError as error:
    print("inner:", error, flush=True)
locks, notes = lock_outputs([("--output", folder)], True)
print("locks:", *[path for lock in locks for path in lock.paths], flush=True)
staged = StagedFolder.create(folder)
print("staging:", staged.staging, flush=True)
staged.path("results.json").write_text("from the container")
staged.publish()
staged.discard()
for lock in locks:
    lock.release()
"""


def test_output_on_a_mount_point(tmp_path):
    """A bind mount (as ``docker run -v``): staged and locked inside it; a run outside sees that lock."""
    host, mount, outer = tmp_path / "host", tmp_path / "mnt", tmp_path / "outer"
    for folder in (host, mount, outer / "inner"):
        folder.mkdir(parents=True)
    (host / "results.json").write_text("earlier")
    script = tmp_path / "mounted.py"
    script.write_text(MOUNTED)
    command = [sys.executable, str(script), str(mount), str(outer)]
    shell = 'mount --bind "$1" "$2" && mount -t tmpfs tmpfs "$3" && shift 3 && exec "$@"'
    unshare = ["unshare", "-m", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["-r"])
    mounts = [str(host), str(mount), str(outer / "inner")]
    probe = subprocess.run([*unshare, "sh", "-c", shell, "sh", *mounts, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount point here (unshare -m: {probe.stderr.decode().strip()})")
    held = OutputLock.acquire(host)  # a run on the host, outside the container
    child = subprocess.Popen(
        [*unshare, "sh", "-c", shell, "sh", *mounts, *command],
        cwd=REPO_ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().startswith(f"refused: --output {mount} is in use")
    finally:
        held.release()
    out, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 0, err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["inner"].startswith(
        f"--output {outer}: files staged in {tmp_path} cannot be moved into {outer / 'inner'}"
    )
    assert lines["locks"] == str(mount / ".lposs" / "lock")  # the parent is outside the mount: no lock there
    assert Path(lines["staging"]).parent == mount / ".lposs"
    assert (host / "results.json").read_text() == "from the container"
    assert sorted(p.name for p in host.iterdir()) == ["results.json"]
    assert sorted(os.listdir(tmp_path)) == ["host", "mnt", "mounted.py", "outer"]


# ------------------------------------------------------------------------------------------ lock files


def test_job_array_two_runs_started_in_the_same_instant_without_flock(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    real_pwrite = os.pwrite

    def slow_pwrite(fd, data, offset):
        time.sleep(0.3)  # the holder's record is written a moment after its file is made
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    folder, start = tmp_path / "out", time.time() + 0.2
    children = []
    for index in range(2):
        pid = os.fork()
        if pid == 0:
            outcome = "error"
            try:
                while time.time() < start:
                    pass
                try:
                    lock = OutputLock.acquire(folder)
                    outcome = "held"
                    time.sleep(0.3)
                    lock.release()
                except OutputInUse:
                    outcome = "refused"
            finally:
                (tmp_path / f"outcome{index}").write_text(outcome)
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    outcomes = sorted((tmp_path / f"outcome{index}").read_text() for index in range(2))
    assert outcomes == ["held", "refused"]


def test_another_users_stale_lock_is_taken_over_or_one_line_says_why_not(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    stale = {"host": socket.gethostname(), "pid": dead_pid(), "started": "x"}
    lock_path(folder).write_text(json.dumps(stale))
    real_open, real_replace = os.open, os.replace

    def not_ours(path, flags, mode=0o777, *, dir_fd=None):
        writing = flags & (os.O_RDWR | os.O_WRONLY) and not flags & os.O_EXCL  # O_EXCL: EEXIST comes first
        if Path(path) == lock_path(folder) and writing:
            raise PermissionError(errno.EACCES, "Permission denied", path)  # another user's 0644 file
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def sticky(src, dst):
        if Path(dst) == lock_path(folder):  # /tmp-like folder: only a file's owner may replace it
            raise PermissionError(errno.EPERM, "Operation not permitted", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "open", not_ours)
    monkeypatch.setattr(os, "replace", sticky)
    with pytest.raises(OutputInUse) as refused:
        OutputLock.acquire(folder)
    message = str(refused.value)
    assert "\n" not in message and f"the lock file {lock_path(folder)} was left by PID {stale['pid']}" in message
    assert "cannot be replaced (Operation not permitted)" in message and "remove it as its owner or root" in message
    assert sorted(os.listdir(tmp_path)) == [".out.lock"]  # nothing else left behind
    monkeypatch.setattr(os, "replace", real_replace)
    lock = OutputLock.acquire(folder)
    assert f"left by PID {stale['pid']}" in lock.taken_over
    assert json.loads(lock_path(folder).read_text())["pid"] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------ NFS local_lock


def fake_mount_table(tmp_path, monkeypatch, options, kind="nfs4", fmt="mountinfo"):
    """A mount table in which ``tmp_path`` is a mount of ``kind`` with ``options`` (the root an ext4 disk)."""
    point = str(tmp_path).replace(" ", "\\040")
    if fmt == "mountinfo":
        lines = [
            "1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
            f"90 1 0:50 / {point} rw - {kind} srv:/x {options}",
        ]
    else:
        lines = ["/dev/sda1 / ext4 rw 0 0", f"srv:/x {point} {kind} {options} 0 0"]
    table = tmp_path / f"fake_{fmt}"
    table.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr("lposs.outputs.mounts.MOUNT_TABLES", (str(tmp_path / "none"), str(table)))


@pytest.mark.parametrize("fmt", ["mountinfo", "mounts"])
def test_nfs_with_local_lock_is_not_taken_for_a_cross_host_lock(tmp_path, monkeypatch, fmt):
    """flock on NFS mounted with local_lock=flock succeeds on every host: another host's lock record decides."""
    from lposs.evaluation.output_recovery import lock_outputs

    folder = tmp_path / "out"
    other_host = {"host": "elsewhere", "pid": 4242, "started": "x"}
    fake_mount_table(tmp_path, monkeypatch, "rw,vers=4.2,local_lock=flock,addr=10.0.0.1", fmt=fmt)
    lock_path(folder).write_text(json.dumps(other_host))  # a run on another node holds it (its flock unseen here)
    with pytest.raises(OutputInUse, match="in use by another run \\(PID 4242 on host elsewhere"):
        OutputLock.acquire(folder)
    lock_path(folder).unlink()
    locks, notes = lock_outputs([("--output", folder)], True)
    assert not locks[0].flocked and len(notes) == 1
    assert notes[0].startswith(f"--output {folder}: the nfs4 mount {tmp_path} has local_lock=flock")
    locks[0].release()
    fake_mount_table(tmp_path, monkeypatch, "rw,vers=4.2,local_lock=none,addr=10.0.0.1", fmt=fmt)
    lock_path(folder).write_text(json.dumps(other_host))  # a working flock: nobody holds it, so it is stale
    lock = OutputLock.acquire(folder)
    assert lock.flocked and lock.note is None and "left by PID 4242 on host elsewhere" in lock.taken_over
    lock.release()
