"""lposs.files: the one durable atomic write (every writer goes through it, in fsync order) and link-safe listing.

A file is fsynced before it is renamed to its name and its folder after: otherwise a power loss can keep the
rename and lose the data, leaving a 0-byte file at the name (which a resume takes for a finished output).
"""

import ast
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from lposs.cli.convert_pascal_context import _write_split
from lposs.datasets.label_conversion import write_png_atomic
from lposs.evaluation.reporting import atomic_target as reexported_target
from lposs.evaluation.reporting import atomic_write_text as reexported_text
from lposs.evaluation.run_output import StagedFolder
from lposs.evaluation.samples import save_label_png
from lposs.evaluation.visualise import save_png
from lposs.files.atomic import TEMPORARY_NAME, atomic_target, atomic_write_text, write_durably
from lposs.models.text_cache import save_embeddings

# Where os.replace / os.rename / tempfile.mkstemp may appear: the helper itself; the publish's moves of files
# already written (journal, undo, commit marker), a folder renamed, probes and lock files. Any other is a
# second way to write a file in place.
ALLOWED = {
    ("lposs.files.atomic", "replace_durably", "os.replace"),
    ("lposs.files.atomic", "write_durably", "os.replace"),
    ("lposs.outputs.journal", "_undo", "os.replace"),
    ("lposs.outputs.journal", "Plan.commit", "os.replace"),
    ("lposs.evaluation.run_output", "_apply", "os.replace"),
    ("lposs.evaluation.run_output", "StagedFolder.discard", "os.rename"),
    ("lposs.outputs.lock", "_remove_stale", "os.rename"),
    ("lposs.outputs.lock", "_replace_foreign", "tempfile.mkstemp"),  # an empty lock file, flocked before its rename
    ("lposs.outputs.place", "probe_rename", "os.rename"),
    ("lposs.outputs.place", "probe_rename", "tempfile.mkstemp"),
    ("lposs.outputs.checks", "_probe", "tempfile.mkstemp"),
}
WATCHED = {"os.replace", "os.rename", "tempfile.mkstemp", "shutil.move"}


def _calls(path: Path) -> set[tuple[str, str]]:
    """``(enclosing function, 'module.attr')`` of every watched call in ``path``."""
    found = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{where}.{child.name}".lstrip("."))
                continue
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                base = child.func.value
                if isinstance(base, ast.Name) and f"{base.id}.{child.func.attr}" in WATCHED:
                    found.add((where, f"{base.id}.{child.func.attr}"))
            visit(child, where)

    visit(ast.parse(path.read_text()), "")
    return found


def test_one_way_to_write_a_file_in_place():
    found = set()
    for path in sorted((REPO_ROOT / "lposs").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        found |= {(module, where, call) for where, call in _calls(path)}
    assert found - ALLOWED == set(), "temporary files renamed into place outside lposs.files.atomic"
    assert ALLOWED <= found  # the scan sees the calls it allows (not vacuous)


@pytest.fixture
def events(monkeypatch):
    """Every fsync (the path synced) and rename (source, target), in order."""
    log, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def assert_durable(log: list, target: Path) -> None:
    """``target`` was renamed into place after its data was synced, and its folder synced after the rename."""
    renames = [i for i, event in enumerate(log) if event[0] == "replace" and event[2] == str(target)]
    assert len(renames) == 1, f"{target}: {log}"
    source = log[renames[0]][1]
    assert ("fsync", source) in log[: renames[0]], f"{target} renamed before its data was synced: {log}"
    assert ("fsync", str(target.parent)) in log[renames[0] + 1 :], f"{target}'s folder not synced after: {log}"
    assert target.stat().st_size > 0


def _writers(tmp_path, monkeypatch):
    monkeypatch.setenv("LPOSS_CACHE_DIR", str(tmp_path / "cache"))
    label = np.array([[0, 1], [2, 1]], np.uint8)
    staged = StagedFolder(tmp_path / "final", tmp_path / "staging")
    staged.staging.mkdir()
    (staged.staging / "eval.log").write_text("new lines\n")

    def through_target(path):
        with atomic_target(path) as tmp, open(tmp, "wb") as handle:
            handle.write(b"data")

    return {
        "atomic_write_text": lambda: reexported_text(tmp_path / "a/results.json", "{}"),
        "atomic_target": lambda: through_target(tmp_path / "a/scores.npy"),
        "save_label_png": lambda: save_label_png(label, tmp_path / "b/pred.png", [(0, 0, 0), (1, 1, 1), (2, 2, 2)]),
        "save_png": lambda: save_png(tmp_path / "b/overlay.png", np.zeros((2, 2, 3), np.uint8)),
        "write_png_atomic": lambda: write_png_atomic(label, tmp_path / "c/label.png"),
        "convert_pascal_context": lambda: _write_split(tmp_path / "voc", "val", ["b", "a"]),
        "text_cache": lambda: save_embeddings({"model": "m"}, torch.ones(2, 3)),
        "eval.log append": lambda: staged.append_to("eval.log"),
        "write_durably": lambda: write_durably({tmp_path / "d/journal": "plan\n"}),
    }


def test_every_writer_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, events):
    targets = {
        "atomic_write_text": tmp_path / "a/results.json",
        "atomic_target": tmp_path / "a/scores.npy",
        "save_label_png": tmp_path / "b/pred.png",
        "save_png": tmp_path / "b/overlay.png",
        "write_png_atomic": tmp_path / "c/label.png",
        "convert_pascal_context": tmp_path / "voc/ImageSets/SegmentationContext/val.txt",
        "eval.log append": tmp_path / "final/eval.log",
        "write_durably": tmp_path / "d/journal",
    }
    (tmp_path / "d").mkdir()
    for name, write in _writers(tmp_path, monkeypatch).items():
        events.clear()
        write()
        if name == "text_cache":
            (entry,) = (tmp_path / "cache/text_embeddings").glob("*.pt")
            assert_durable(events, entry)
        else:
            assert_durable(events, targets[name])
    leftovers = [p for p in tmp_path.rglob("*") if TEMPORARY_NAME.fullmatch(p.name)]
    assert leftovers == []
    assert reexported_target is atomic_target


def test_a_write_that_does_not_reach_the_disk_never_appears_at_its_name(tmp_path, monkeypatch):
    """The data sync fails (an I/O error, as a crash before it): the name holds the earlier file, or nothing."""
    earlier, fresh = tmp_path / "old.json", tmp_path / "new.png"
    atomic_write_text(earlier, "earlier")

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match=f"Input/output error: '{earlier}'"):  # named after the file
        atomic_write_text(earlier, "x" * 100)
    with pytest.raises(OSError):
        save_label_png(np.zeros((2, 2), np.uint8), fresh)
    assert earlier.read_text() == "earlier" and not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no temporary file left either


def test_staging_owner_record_is_written_durably_first(tmp_path, events):
    folder = StagedFolder.create(tmp_path / "out")
    assert_durable(events, folder.staging / ".owner")
    assert json.loads((folder.staging / ".owner").read_text())["pid"] == os.getpid()
    folder.discard()


def test_link_loops_are_listed_once(tmp_path):
    """A link to a folder above it, and two folders linking to each other: each real folder is listed once."""
    from lposs.datasets.image_files import list_image_files
    from lposs.datasets.user_dataset import UserDataset
    from lposs.files.walk import walk_once

    photos = tmp_path / "photos"
    for rel in ("a.jpg", "sub/b.jpg", "x/c.jpg", "y/d.jpg"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(b"jpeg")
    (photos / "sub/up").symlink_to("..")  # photos/sub/up -> photos
    (photos / "x/to_y").symlink_to("../y")  # x -> y -> x
    (photos / "y/to_x").symlink_to("../x")
    (photos / "z").symlink_to("sub")  # a second name for sub: listed under its own name only
    elsewhere = tmp_path / "elsewhere"  # a folder outside, followed once, with a loop of its own
    elsewhere.mkdir()
    (elsewhere / "e.jpg").write_bytes(b"jpeg")
    (elsewhere / "again").symlink_to(".")
    (elsewhere / "back").symlink_to(photos)
    (photos / "ext").symlink_to(elsewhere)
    listed = [Path(root).relative_to(photos).as_posix() for root, _, _ in walk_once(photos)]
    assert listed == [".", "ext", "sub", "x", "y"]
    names = ["a.jpg", "ext/e.jpg", "sub/b.jpg", "x/c.jpg", "y/d.jpg"]
    assert list_image_files(photos) == [Path(name) for name in names]
    samples = UserDataset.load_annotations(None, str(photos), ".jpg", str(photos), ".png", None)
    assert [sample["filename"] for sample in samples] == names
