"""mlip-train / mlip-export as a user meets them: no silent overwrite, one-line errors for bad
input (the rows of docs/BAD_INPUT.md), Ctrl-C advice, plain logs when not on a terminal, metrics
with units, --print-config."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

from training.cli import export_main, train_main
from training.log_format import PlainProgress, format_metrics, make_progress

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "training" / "configs" / "demo.yaml"
TINY = "model.hyper={channels: 4, mixer_channels: 8, num_layers: 1, num_radial: 4}"


def _frames(n: int = 6) -> list:
    frames = []
    for seed in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(atoms)
    return frames


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.extxyz"
    ase.io.write(path, _frames())
    return path


def _write_config(tmp_path: Path, train: Path, **extra: object) -> Path:
    values = {
        "data": {"train": str(train), "valid": 0.34},
        "model": {"cutoff": 3.0},
        "train": {"max_epochs": 1, "batch": {"size": 2}, "num_threads": 1},
        "output_dir": str(tmp_path / "run"),
    }
    values.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], main=train_main) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code in (1, 2), err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_refuses_to_overwrite_a_run_without_overwrite(
    tmp_path: Path, good_file: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _write_config(tmp_path, good_file)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"finished run")
    error = _one_line_error(capsys, [str(config)])
    assert "already holds a run" in error and "--resume" in error and "--overwrite" in error
    assert (tmp_path / "run" / "model.pt").read_bytes() == b"finished run"
    from training.config import load_config
    from training.train_cli import check_output_dir

    loaded = load_config(config)
    check_output_dir(loaded, str(config), resume=False, overwrite=True)  # no error
    check_output_dir(loaded, str(config), resume=True, overwrite=False)


def _bad_inputs(tmp_path: Path, good_file: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, expected message fragment): the training rows of docs/BAD_INPUT.md."""
    text = good_file.read_text().splitlines()
    truncated = tmp_path / "truncated.extxyz"
    truncated.write_text("\n".join(text[:-2]) + "\n")
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    frames = _frames()
    frames[1].calc.results["energy"] = float("nan")
    nan = tmp_path / "nan.extxyz"
    ase.io.write(nan, frames)
    shaped = _frames()
    for atoms in shaped:
        atoms.arrays["f2"] = np.zeros((len(atoms), 2))
    wrong_shape = tmp_path / "forces2.extxyz"
    ase.io.write(wrong_shape, shaped)
    one = tmp_path / "one.extxyz"
    ase.io.write(one, _frames(1))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data:\n  train: [a, b\n")
    config = str(_write_config(tmp_path, good_file))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    return {
        "missing data": ([config, f"data.train={tmp_path / 'nope.xyz'}"], "not found"),
        "empty data": ([config, f"data.train={empty}"], "empty file"),
        "truncated data": ([config, f"data.train={truncated}"], "frame 5"),
        "NaN label": ([config, f"data.train={nan}"], "frame 1"),
        "wrong force shape": (
            [config, f"data.train={wrong_shape}", "data.forces_key=f2"],
            "bad shape forces",
        ),
        "bad preset": ([config, "model.preset=huge"], "unknown preset 'huge'"),
        "malformed YAML": ([str(bad_yaml)], "malformed YAML"),
        "unknown key": ([config, "train.epochs=3"], "train.epochs: unknown key"),
        "missing config": ([str(tmp_path / "nope.yaml")], "nope.yaml"),
        "output under a file": ([config, f"output_dir={a_file}/run"], "not a folder"),
        "valid=0": ([config, "data.valid=0"], "no validation set"),
        "one structure": ([config, f"data.train={one}"], "has 1 structure(s)"),
        "stress in the wrong unit": (
            [config, "data.max_stress=1e-5"],
            "implausible stress",
        ),  # fmt: skip
    }


BAD_INPUT_NAMES = [
    "missing data",
    "empty data",
    "truncated data",
    "NaN label",
    "wrong force shape",
    "bad preset",
    "malformed YAML",
    "unknown key",
    "missing config",
    "output under a file",
    "valid=0",
    "one structure",
    "stress in the wrong unit",
]


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_input_is_one_line(
    name: str, tmp_path: Path, good_file: Path, capsys: pytest.CaptureFixture
) -> None:
    argv, fragment = _bad_inputs(tmp_path, good_file)[name]
    error = _one_line_error(capsys, argv)
    assert error.startswith("mlip-train: error: ") and fragment in error, error


def test_bad_input_table_lists_every_case() -> None:
    table = (REPO / "docs" / "BAD_INPUT.md").read_text()
    for name in BAD_INPUT_NAMES:
        assert f"| {name} |" in table, name


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "checkpoint.pt"
    junk.write_bytes(b"not a checkpoint")
    error = _one_line_error(capsys, [str(junk), "-o", str(tmp_path / "m.pt")], export_main)
    assert "not a checkpoint written by mlip-train" in error
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    error = _one_line_error(capsys, [str(junk), "-o", str(a_file / "m.pt")], export_main)
    assert "not a folder" in error


def test_export_of_a_model_file_keeps_weights_and_info(tmp_path: Path) -> None:
    """``mlip-export old.pt -o new.pt`` rewrites an exported file with the current exporter:
    same energies, forces and stress, same training information, layer methods present."""
    import torch

    import mlip.export
    from mlip.models import build_model

    model = build_model(species=[29], cutoff=3.0, preset="small", channels=4, mixer_channels=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # untrained weights would all look alike; make them distinct
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    old = mlip.export.save(model, tmp_path / "old.pt", dataset={"train": "cu.extxyz"}, epochs=3)
    new = tmp_path / "new.pt"
    assert export_main([str(old), "-o", str(new)]) == 0
    assert mlip.export.read_metadata(new)["info"] == mlip.export.read_metadata(old)["info"]
    scripted, _ = mlip.export.load(new, device="cpu")
    assert hasattr(scripted.energy_model, "layer_forward")

    from calculators import MLIPCalculator

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    results = []
    for path in (old, new):
        atoms.calc = MLIPCalculator(str(path))
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-9)
    np.testing.assert_array_equal(results[1][1], results[0][1])
    np.testing.assert_array_equal(results[1][2], results[0][2])


def test_ctrl_c_says_how_to_resume_and_export(
    tmp_path: Path, good_file: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import training.trainer

    def interrupted(config, resume=False):
        Path(config.output_dir).mkdir(parents=True)
        Path(config.output_dir, "checkpoint.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(training.trainer, "train", interrupted)
    config = _write_config(tmp_path, good_file)
    assert train_main([str(config), "train.max_epochs=1"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{config} train.max_epochs=1 --resume" in err
    assert f"mlip-export {tmp_path / 'run' / 'checkpoint.pt'}" in err


def test_redirected_log_has_plain_lines_and_units(
    tmp_path: Path, good_file: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _write_config(tmp_path, good_file)
    assert train_main([str(config), TINY, "train.max_epochs=2"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    assert "meV/Å" in captured.out and "meV/atom" in captured.out
    assert isinstance(make_progress(10, 0, "epoch 0"), PlainProgress)  # stderr is not a tty


def test_metrics_carry_units() -> None:
    text = format_metrics({"energy_mae": 0.0012, "forces_mae": 0.032413, "stress_rmse": 2e-4})
    assert text == "energy MAE 1.2 meV/atom, forces MAE 32.41 meV/Å, stress RMSE 0.2 meV/Å³"


def test_print_config_prints_resolved_yaml(capsys: pytest.CaptureFixture) -> None:
    assert train_main([str(DEMO), "train.lr=0.001", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.001
    assert printed["data"]["stress_units"] == "eV/A^3"  # defaults are shown too
    assert printed["train"]["max_time"] is None


def test_readme_outputs_are_ignored_by_git() -> None:
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("relaxed.extxyz", "runs/demo/model.pt"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not ignored"
