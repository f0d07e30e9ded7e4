"""``mlip-eval DATA... --model PATH``: errors of an exported model on dataset files.

Prints, per file, the energy-per-atom (meV/atom), force (meV/Å) and stress (meV/Å³) MAE and
RMSE, overall and per value of an ``atoms.info`` key (``--group-by config_type``); optionally
writes them as JSON (in eV units, with a ``units`` entry), draws a parity plot per file and
writes every structure with its predicted energy, forces and stress to extxyz (``-o``; the
reference labels are kept as ``REF_energy``, ``REF_forces``, ``REF_stress``).

For a model that takes the total charge and spin multiplicity, each frame's own
``charge``/``spin`` (``atoms.info`` or the ``.aselmdb`` row) is used as-is; ``--charge``/``--spin``
fill frames without them (else 0 and 1, with a warning). ``--head`` picks the level-of-theory
head of a model with heads (default: its first head).

A frame the model cannot take (an element it does not know, overlapping atoms, NaN or
wrongly shaped labels, a multiplicity impossible for its electron count) is reported on stderr
and skipped; the rest is evaluated.
Exit status: 0 success, 3 some frames skipped, 1 bad input (nothing written), 130 interrupted.
No output file is overwritten without ``--overwrite``, and none may be an input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlip import AtomicGraph, keys
from mlip.chunked import ChunkedEvaluator, num_hops
from mlip.cli import (
    ArgumentParser,
    CLIError,
    StateFlags,
    add_memory_argument,
    add_state_arguments,
    check_device,
    check_head,
    check_not_inputs,
    check_outputs,
    memory_budget_bytes,
    model_error_message,
    run_cli,
)
from training.units import CONVENTIONS, STRESS_UNITS

__all__ = ["EXIT_SKIPPED", "FileEvaluation", "evaluate_file", "main"]

PROG = "mlip-eval"
EXIT_SKIPPED = 3
UNITS = {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}
"""Units of the metrics in the JSON file (the printed table shows milli-units)."""

_LABEL_KEYS = ("energy", "free_energy", "forces", "stress", "virial")


@dataclass
class FileEvaluation:
    """Everything ``mlip-eval`` reports for one file.

    Attributes:
        metrics: ``{energy_mae, energy_rmse, forces_mae, ...}`` in :data:`UNITS`.
        arrays: Parity arrays ``energy_ref``/``energy_pred`` (eV/atom), ``forces_ref``/
            ``forces_pred`` (eV/Å, flattened).
        n_frames: Frames evaluated.
        skipped: One message per skipped frame (file, frame, reason).
        groups: Group value -> metrics (plus ``n_frames``), when grouped by an info key.
        predictions: One structure per evaluated frame with predicted labels (when asked).
    """

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray]
    n_frames: int
    skipped: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: list[Any] = field(default_factory=list)


def _set_stress(module: torch.nn.Module, flag: bool) -> None:
    if hasattr(module, "compute_stress"):
        module.compute_stress = flag


def _predict(
    module: torch.nn.Module,
    chunked: ChunkedEvaluator | None,
    graph: AtomicGraph,
    singles: Sequence[AtomicGraph],
    device: str,
    use_stress: bool,
) -> dict[str, torch.Tensor]:
    """Energy (B,), forces (N, 3) and, with ``use_stress``, stress (B, 3, 3) of a batch.

    A batch over ``chunked``'s memory budget is evaluated structure by structure, and a
    structure over the budget chunk by chunk (:mod:`mlip.chunked`, exact).
    """
    on_device = torch.device(device)
    # the first needs_chunks call probes the memory per atom on a single structure
    too_big = chunked is not None and any(chunked.needs_chunks(g, on_device) for g in singles)
    if chunked is None or not (too_big or chunked.needs_chunks(graph, on_device)):
        _set_stress(module, use_stress)
        output = {k: v.detach() for k, v in module(graph.to(device).as_dict()).items()}
        if not use_stress:
            output.pop("stress", None)
        return output
    if len(singles) > 1:
        parts = [_predict(module, chunked, g, [g], device, use_stress) for g in singles]
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    output = chunked(graph, on_device, stress=use_stress)
    wanted = (keys.ENERGY, keys.FORCES, keys.STRESS)
    return {k: v.to(device) for k, v in output.items() if k in wanted}


def _ase_infos(path: str, data_format: str | None) -> list[dict[str, Any]]:
    """``atoms.info`` of every record (for groups and predictions); db rows: key-value pairs and
    ``data``."""
    from training.data.readers import record_infos

    try:
        return record_infos(path, data_format)
    except ValueError:
        raise CLIError(
            f"{path}: --group-by and -o need ASE structures (extxyz, xyz, ASE db, .aselmdb)"
        ) from None


def _prediction_atoms(
    frame: Any,
    index: int,
    info: dict[str, Any],
    predicted: dict[str, np.ndarray],
    record_state: bool = False,
) -> Any:
    """The frame as ``Atoms`` with predicted labels on its calculator, references as REF_*.

    With ``record_state``, ``info["charge"]``/``["spin"]`` hold the state the model was given.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    atoms = Atoms(
        numbers=frame.atomic_numbers,
        positions=frame.positions,
        cell=frame.cell if frame.cell is not None else np.zeros((3, 3)),
        pbc=frame.pbc,
    )
    atoms.info.update({k: v for k, v in info.items() if k not in _LABEL_KEYS})
    atoms.info["source_file"] = frame.source
    atoms.info["source_frame"] = index
    if record_state:
        atoms.info["charge"], atoms.info["spin"] = int(frame.charge), int(frame.spin)
    if frame.energy is not None:
        atoms.info["REF_energy"] = float(frame.energy)
    if frame.forces is not None:
        atoms.arrays["REF_forces"] = np.asarray(frame.forces, dtype=np.float64)
    if frame.stress is not None:
        atoms.info["REF_stress"] = full_3x3_to_voigt_6_stress(np.asarray(frame.stress))
    results = {"energy": float(predicted["energy"]), "forces": predicted["forces"]}
    if "stress" in predicted:
        results["stress"] = full_3x3_to_voigt_6_stress(predicted["stress"])
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _usable_frames(
    path: str,
    data_format: str | None,
    options: Any,
    cutoff: float,
    species: set[int],
    state: StateFlags | None = None,
    head: int | None = None,
) -> tuple[list[tuple[int, Any, Any]], list[str]]:
    """``[(index, frame, graph)]`` of the frames the model can take, and skip messages.

    ``state`` resolves each frame's charge and spin for a model that takes them; ``head``
    (an index into the model's heads) is set on every graph.
    """
    from ase.data import chemical_symbols

    from training.data.frames import InvalidFrameError
    from training.data.readers import iter_raw

    usable, skipped = [], []
    known = ", ".join(chemical_symbols[z] for z in sorted(species))
    records = iter_raw(path, data_format, options)
    index = -1
    while True:
        index += 1
        try:
            item = next(records, None)
        except Exception as exc:  # the reader itself failed: a truncated or corrupt file
            raise CLIError(
                f"cannot read {path}, frame {index}: {type(exc).__name__}: {exc}"
            ) from None
        if item is None:
            break
        try:
            if isinstance(item, InvalidFrameError):
                raise item
            frame = item.validated(("energy",), index=index)
            unknown = sorted(set(frame.atomic_numbers.tolist()) - species)
            if unknown:
                names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
                raise ValueError(f"element(s) {names} not known to this model; it knows {known}")
            if state is not None:
                where = f"{path}: frame {index}"
                own = {"charge": frame.charge, "spin": frame.spin}
                periodic = bool(np.all(frame.pbc))
                resolved = state.resolve(frame.atomic_numbers, own, where, periodic)
                if resolved is not None:
                    charge, spin = map(float, resolved)
                    frame = dataclasses.replace(frame, charge=charge, spin=spin)
            graph = frame.to_graph(cutoff)
            if head is not None:
                graph = graph.with_labels(head=torch.tensor([head], dtype=torch.int64))
            usable.append((index, frame, graph))
        except InvalidFrameError as error:
            skipped.append(str(error))
        except ValueError as error:  # unknown element, overlapping atoms, impossible spin
            skipped.append(f"{path}: frame {index}: {error}")
    return usable, skipped


def evaluate_file(
    module: torch.nn.Module,
    cutoff: float,
    path: str,
    *,
    data_format: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    stress_units: str = "eV/A^3",
    stress_convention: str = "ase",
    species: Sequence[int] | None = None,
    group_by: str | None = None,
    predictions: bool = False,
    state: StateFlags | None = None,
    head: int | None = None,
    chunked: ChunkedEvaluator | None = None,
) -> FileEvaluation:
    """Metrics, parity arrays and (optionally) per-structure predictions of an exported model.

    Args:
        module: Scripted model from :func:`mlip.export.load`.
        cutoff: Model cutoff, Å.
        path: Dataset file (any format training reads).
        species: Atomic numbers the model knows; frames with others are skipped.
        group_by: ``atoms.info`` key whose values group the metrics (ASE files).
        predictions: Also return each frame as ``Atoms`` with predicted labels.
        state: ``--charge``/``--spin`` for a model that takes them (None: a frame's own
            values only; a frame without them then fails in the model).
        head: Index of the level-of-theory head into the model's heads (None: the first).
        chunked: Evaluates structures over its memory budget in chunks (None: never).
    """
    from training.data.readers import ReaderOptions
    from training.metrics import ErrorMetrics

    options = ReaderOptions(
        energy_key=energy_key,
        forces_key=forces_key,
        stress_key=stress_key,
        stress_units=stress_units,
        stress_convention=stress_convention,
    )
    known = set(species) if species is not None else set(range(119))
    usable, skipped = _usable_frames(path, data_format, options, cutoff, known, state, head)
    infos = _ase_infos(path, data_format) if group_by or predictions else []
    metrics = ErrorMetrics()
    group_metrics: dict[str, ErrorMetrics] = {}
    group_frames: dict[str, int] = {}
    parity: dict[str, list[np.ndarray]] = {
        k: [] for k in ("energy_ref", "energy_pred", "forces_ref", "forces_pred")
    }
    result = FileEvaluation({}, {}, len(usable), skipped)
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        singles = [graph for _, _, graph in chunk]
        graph = AtomicGraph.batch(singles)
        use_stress = graph.stress is not None and bool(graph.pbc.all())
        output = _predict(module, chunked, graph, singles, device, use_stress)
        graph = graph.to(device)
        metrics.update(output, graph)
        n_atoms = graph.num_atoms.to(torch.float64)
        parity["energy_ref"].append((graph.energy / n_atoms).cpu().numpy())
        parity["energy_pred"].append((output["energy"] / n_atoms).cpu().numpy())
        if graph.forces is not None and "forces" in output:
            parity["forces_ref"].append(graph.forces.cpu().numpy().ravel())
            parity["forces_pred"].append(output["forces"].cpu().numpy().ravel())
        if not (group_by or predictions):
            continue
        first_atom = 0
        for position, (index, frame, single) in enumerate(chunk):
            atoms_slice = slice(first_atom, first_atom + frame.n_atoms)
            first_atom += frame.n_atoms
            own = {
                "energy": output["energy"][position : position + 1],
                "forces": output["forces"][atoms_slice],
            }
            if "stress" in output:
                own["stress"] = output["stress"][position : position + 1]
            if group_by:
                value = str(infos[index].get(group_by, "(none)"))
                group_metrics.setdefault(value, ErrorMetrics()).update(own, single.to(device))
                group_frames[value] = group_frames.get(value, 0) + 1
            if predictions:
                arrays = {k: v.to("cpu", torch.float64).numpy() for k, v in own.items()}
                arrays = {k: v[0] if k != "forces" else v for k, v in arrays.items()}
                record_state = state is not None and state.used
                result.predictions.append(
                    _prediction_atoms(frame, index, infos[index], arrays, record_state)
                )
    result.metrics = metrics.compute()
    result.arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parity.items()}
    result.groups = {
        k: {**group_metrics[k].compute(), "n_frames": group_frames[k]}
        for k in sorted(group_metrics)
    }
    return result


def format_table(label: str, rows: dict[str, tuple[int, dict[str, float]]]) -> str:
    """A table of MAE/RMSE in meV units, one row per ``name -> (n_frames, metrics)``."""
    columns = [
        ("energy", "E", "meV/atom"),
        ("forces", "F", "meV/Å"),
        ("stress", "S", "meV/Å³"),
    ]
    present = [c for c in columns if any(f"{c[0]}_mae" in m for _, m in rows.values())]
    header = [label, "frames"]
    for _, short, unit in present:
        header += [f"{short} MAE/({unit})", f"{short} RMSE/({unit})"]
    lines = [header]
    for name, (n_frames, metrics) in rows.items():
        line = [name, str(n_frames)]
        for quantity, _, _ in present:
            for kind in ("mae", "rmse"):
                value = metrics.get(f"{quantity}_{kind}")
                line.append("-" if value is None else f"{1000 * value:.3f}")
        lines.append(line)
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths))
        )
        for line in lines
    )


def build_parser() -> ArgumentParser:
    """The argument parser of ``mlip-eval``."""
    parser = ArgumentParser(
        prog=PROG,
        description="Energy/force/stress errors of an exported model on dataset files.",
        epilog="Exit status: 0 success, 3 some frames skipped (reported on stderr), 1 bad "
        "input, 130 interrupted.",
    )
    parser.add_argument("data", nargs="+", help="dataset files (any format training reads)")
    parser.add_argument("--model", required=True, help="exported model file (model.pt)")
    parser.add_argument("--format", default=None, help="reader format; default: guess")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--energy-key", default=None)
    parser.add_argument("--forces-key", default=None)
    parser.add_argument("--stress-key", default=None)
    parser.add_argument(
        "--stress-units",
        default="eV/A^3",
        choices=list(STRESS_UNITS),
        help="unit of the stress label (mlearn and VASP OUTCAR 'in kB': kbar)",
    )
    parser.add_argument(
        "--stress-convention",
        default="ase",
        choices=list(CONVENTIONS),
        help="ase: tensile positive, Voigt xx yy zz yz xz xy; vasp: compressive positive, "
        "Voigt xx yy zz xy yz zx",
    )
    parser.add_argument(
        "--group-by",
        default=None,
        metavar="KEY",
        help="also report errors per value of this atoms.info key, e.g. config_type",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PREDS.extxyz",
        help="write every structure with predicted energy/forces/stress (references as "
        "REF_energy, REF_forces, REF_stress) to this extxyz file",
    )
    parser.add_argument("--plot", default=None, help="parity plot PNG prefix (one per file)")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist"
    )
    add_memory_argument(parser)
    add_state_arguments(parser, override=False)
    return parser


def _plot_paths(prefix: str | None, data: Sequence[str]) -> list[Path]:
    if prefix is None:
        return []
    return [Path(f"{prefix}{f'_{k}' if len(data) > 1 else ''}.png") for k in range(len(data))]


def _load_model(path: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    import mlip.export

    if not Path(path).is_file():
        raise CLIError(f"model file not found: {path}")
    try:
        module, metadata = mlip.export.load(path, device=device)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"cannot load model {path}: {exc}") from None
    for parameter in module.parameters():  # forces only: autograd then saves less
        parameter.requires_grad_(False)
    return module, metadata


def _run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.output is not None and Path(args.output).suffix.lower() not in (".extxyz", ".xyz"):
        raise CLIError(f"-o {args.output!r}: predictions are written as .extxyz")
    for path in args.data:
        if not Path(path).exists():
            raise CLIError(f"dataset file not found: {path}")
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise CLIError(f"cannot read {path}: the file is empty")
    check_device(args.device)
    outputs = [p for p in (args.json, args.output) if p] + _plot_paths(args.plot, args.data)
    check_not_inputs(outputs, [*args.data, args.model])
    check_outputs(outputs, args.overwrite)

    from mlip.allocator import keep_freed_memory
    from training.plots import parity_plot

    if torch.device(args.device).type == "cpu":
        keep_freed_memory()
    budget = memory_budget_bytes(args.memory_budget)
    module, metadata = _load_model(args.model, args.device)
    cutoff = float(metadata["cutoff"])
    chunked = (  # a non-local model (receptive_field null) is always evaluated whole
        None
        if "receptive_field" in metadata and metadata["receptive_field"] is None
        else ChunkedEvaluator(module, num_hops(metadata), budget)
    )
    species = [int(z) for z in metadata["atomic_numbers"]]
    heads = [str(name) for name in metadata["heads"]]
    check_head(args.head, heads, args.model)
    state = StateFlags(
        args.charge, args.spin, inputs=metadata["inputs"], model=args.model, override=False
    )
    results: dict[str, Any] = {}
    predictions: list[Any] = []
    n_skipped = 0
    plots = _plot_paths(args.plot, args.data)
    for index, path in enumerate(args.data):
        try:
            evaluation = evaluate_file(
                module,
                cutoff,
                path,
                data_format=args.format,
                batch_size=args.batch_size,
                device=args.device,
                energy_key=args.energy_key,
                forces_key=args.forces_key,
                stress_key=args.stress_key,
                stress_units=args.stress_units,
                stress_convention=args.stress_convention,
                species=species,
                group_by=args.group_by,
                predictions=args.output is not None,
                state=state,
                head=None if args.head is None else heads.index(args.head),
                chunked=chunked,
            )
        except Exception as exc:  # a ValueError raised inside the TorchScript model
            message = model_error_message(exc)
            if message is None:
                raise
            raise CLIError(f"{path}: {message}") from None
        for message in state.pop_warnings():
            print(f"{PROG}: warning: {message}", file=sys.stderr)
        for message in evaluation.skipped:
            print(f"{PROG}: warning: {message}; skipped", file=sys.stderr)
        n_skipped += len(evaluation.skipped)
        if evaluation.n_frames == 0:
            print(f"{PROG}: warning: {path}: no frame could be evaluated", file=sys.stderr)
            continue
        rows = {"all": (evaluation.n_frames, evaluation.metrics)}
        rows |= {k: (int(m["n_frames"]), m) for k, m in evaluation.groups.items()}
        skipped = f", {len(evaluation.skipped)} skipped" if evaluation.skipped else ""
        print(f"{path}: {evaluation.n_frames} frames{skipped}")
        print(format_table(args.group_by or "frames of", rows))
        predictions.extend(evaluation.predictions)
        results[path] = {
            **evaluation.metrics,
            "n_frames": evaluation.n_frames,
            "n_skipped": len(evaluation.skipped),
            "units": UNITS,
        }
        if args.group_by:
            results[path]["groups"] = {args.group_by: evaluation.groups}
        if plots:
            parity_plot(evaluation.arrays, plots[index], title=Path(path).name)
            print(f"  parity plot: {plots[index]}")
    if not results:
        raise CLIError("no frame could be evaluated (see the warnings above)")
    if args.output is not None:
        import ase.io

        ase.io.write(args.output, predictions, format="extxyz")
        print(f"predictions: {args.output}")
    if args.json:
        partial = Path(f"{args.json}.partial")
        partial.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        os.replace(partial, args.json)
    if n_skipped:
        print(f"{PROG}: warning: {n_skipped} frame(s) skipped (see above)", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mlip-eval``; returns the exit status."""
    return run_cli(PROG, _run, argv)
