"""tools/reproduce.py: the plan, the readiness check before any weights load, and a run's table on generated data;
the authors' class files from a folder of one's own (class_files_dir)."""

import json

import pytest
from fake_datasets import make_dataset
from test_main_eval import SMALL, TINY_TEXT, refuse_model_loading, run, shared_backbones

from lposs.cli import main_eval, reproduce

assert shared_backbones  # the autouse fixture of test_main_eval: one set of random backbones per model config


def test_plan_prints_a_valid_command_per_cell_and_the_published_numbers(capsys):
    assert reproduce.main(reproduce.parse_args(["--plan", "--methods", "sclip,naclip,clearclip"])) == 0
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if line.startswith("python main_eval.py ")]
    assert len(commands) == 3 * 8
    for command in commands:  # each parses as main_eval's command line
        args = main_eval.parse_args(command.split()[2:])
        assert args.config.endswith("_own.yaml") and args.output.parts[-2:] == (args.config[:-9], args.dataset)
    assert "| sclip | 59.6 | 31.7 | 33.5 | 81.5 | 34.5 | 22.8 | 32.3 | 16.4 |" in out  # SCLIP's README
    assert "| naclip | 64.1 | 35.0 | 36.2 | 83.0 | 38.4 | 25.7 | 38.3 | 19.1 |" in out  # NACLIP's README
    assert "| clearclip | 51.8 | 32.6 | 33.0 | 80.9 | 35.9 | 23.9 | 30.0 | 16.7 |" in out  # ClearCLIP's paper
    assert not any("class_files_dir=" in command for command in commands)  # the shipped class files unless asked


def test_published_rows_of_the_docs_equal_the_tool_and_their_averages():
    """docs/benchmarks.md's side-by-side table and tools/reproduce.py's numbers are one table; where a source quotes
    the average (ClearCLIP 38.1, ProxyCLIP 42.3, NACLIP 42.46, LPOSS+ 41.3), the cells give it back."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    labels = {"LPOSS+": "lposs_plus", "LPOSS": "lposs", "SCLIP": "sclip", "NACLIP": "naclip"}
    labels |= {"ClearCLIP": "clearclip", "ProxyCLIP": "proxyclip"}
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in labels and len(cells) == 11:
            rows[labels[cells[0]]] = tuple(None if cell == "n/v" else float(cell) for cell in cells[1:9])
    assert rows == reproduce.PUBLISHED
    for method, average, decimals in (("clearclip", 38.1, 1), ("naclip", 42.46, 2), ("lposs_plus", 41.3, 1)):
        assert abs(sum(rows[method]) / 8 - average) <= 0.5 * 10**-decimals + 1e-9, method  # rounded cells
    known = [value for value in rows["proxyclip"] if value is not None]
    assert len(known) == 6 and 8 * 42.25 <= sum(known) + 80.3 + 39.1 < 8 * 42.35  # the paper's VOC20 and C59 fit


def test_class_files_go_to_their_method_only_and_are_checked(tmp_path, capsys):
    folder = tmp_path / "ClearCLIP" / "configs"
    folder.mkdir(parents=True)
    argv = ["--plan", "--methods", "sclip,clearclip", "--datasets", "voc", "--class_files_dir", f"clearclip={folder}"]
    assert reproduce.main(reproduce.parse_args(argv)) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python main_eval.py ")]
    assert [command.endswith(f"class_files_dir={folder}") for command in commands] == [False, True]
    for bad in ("clearclip", "lposs=x", "segformer=x", "clearclip="):
        with pytest.raises(SystemExit):
            reproduce.parse_args(["--class_files_dir", bad])
    (folder / "cls_context60.txt").write_text("".join(f"name {i}\n" for i in range(60)))
    argv = ["--methods", "clearclip", "--datasets", "context,context59", "--data_root", str(tmp_path)]
    cells = reproduce.plan_cells(reproduce.parse_args([*argv, "--class_files_dir", f"clearclip={folder}"]))
    context, context59 = ([line for line in cell.missing if "cls_" in line] for cell in cells)
    assert context == [] and context59 == [
        f"class_files_dir={str(folder)!r}: no cls_context59.txt for dataset 'context59' (class_names=clearclip)"
    ]


def test_missing_things_are_one_line_each_before_any_weights_load(tmp_path, monkeypatch, capsys):
    refuse_model_loading(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = ["--methods", "sclip,proxyclip", "--datasets", "voc,context59", "--data_root", str(tmp_path)]
    assert reproduce.main(reproduce.parse_args(argv)) == 2
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("missing (") for line in err)
    assert len([line for line in err if "weights for CLIP ViT-B-16 (pretrained=openai)" in line]) == 1
    assert any(line.startswith("missing (sclip/voc, proxyclip/voc): dataset voc:") for line in err)
    assert any("no class file for dataset 'context59'" in line and "(proxyclip/context59)" in line for line in err)
    assert any("vit_base_patch8_224.dino" in line for line in err)


def test_a_ready_cell_runs_and_prints_measured_minus_published(tmp_path, capsys):
    make_dataset(tmp_path, "voc")
    argv = ["--methods", "sclip", "--datasets", "voc", "--data_root", str(tmp_path), "--output", str(tmp_path / "o")]
    assert reproduce.main(reproduce.parse_args([*argv, *SMALL, *TINY_TEXT])) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sclip |")][0]
    measured = float(row.split("|")[2].split()[0])
    assert row == f"| sclip | {measured:.1f} ({measured - 59.63:+.1f}) |"
    assert (tmp_path / "o" / "sclip" / "voc" / "results.json").is_file()


def test_unknown_method_or_dataset_is_refused():
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--methods", "segformer"])
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--datasets", "kitti"])


def test_resume_recomputes_a_result_whose_own_class_files_changed(tmp_path, monkeypatch):
    """A run with class_files_dir encodes the prompts read there, and its results.json records them; --resume keeps
    the result while they are the same, and recomputes it, saying why, once a file changed (same folder, config)."""
    from lposs.datasets.method_class_names import CLASS_NAME_DIR
    from lposs.models import LPOSSBackbones

    encoded = []  # the class lists the backbones were given
    original = LPOSSBackbones.set_class_groups
    monkeypatch.setattr(
        LPOSSBackbones, "set_class_groups", lambda self, groups: encoded.extend(groups) or original(self, groups)
    )

    make_dataset(tmp_path, "voc")
    folder = tmp_path / "SCLIP" / "configs"
    folder.mkdir(parents=True)
    text = (CLASS_NAME_DIR / "sclip" / "cls_voc21.txt").read_text()
    (folder / "cls_voc21.txt").write_text(text)
    out = tmp_path / "out"
    args = ["sclip_own.yaml", "--dataset", "voc", f"data_root={tmp_path}", "--output", str(out), *SMALL, *TINY_TEXT]
    args.append(f"class_files_dir={folder}")
    assert run(args) == 0
    results = out / "results.json"
    recorded = json.loads(results.read_text())["class_files"]
    assert recorded["folder"] == str(folder) and recorded["prompts"][1] == "aeroplane"
    assert encoded == [recorded["prompts"]]
    first = results.read_bytes()
    assert run([*args, "--resume"]) == 0
    assert results.read_bytes() == first and "--resume: voc is complete, skipped" in (out / "eval.log").read_text()
    (folder / "cls_voc21.txt").write_text(text.replace("aeroplane", "airplane"))
    assert run([*args, "--resume"]) == 0
    assert json.loads(results.read_text())["class_files"]["prompts"][1] == "airplane" == encoded[-1][1]
    assert f"--resume: voc is recomputed: the class files in {folder} changed" in (out / "eval.log").read_text()
