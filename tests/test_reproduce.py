"""tools/reproduce.py: the plan, the readiness check before any weights load, and a run's table on generated data."""

import pytest
from fake_datasets import make_dataset
from test_main_eval import SMALL, TINY_TEXT, refuse_model_loading, shared_backbones

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
    assert "| clearclip | n/v | n/v | n/v | n/v | n/v | n/v | n/v | n/v |" in out


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
