"""``mlip-data``: convert datasets into the HDF5 store, print statistics, make splits.

Examples::

    mlip-data convert MPtrj_2022.9_full.json -o mptrj.h5 --skip-invalid
    mlip-data convert omol25/train/ -o omol.h5 --format aselmdb
    mlip-data stats mptrj.h5 --cutoff 5.0
    mlip-data split mptrj.h5 --valid 0.05 --group-by group_id --seed 0

An interrupted ``convert`` is resumed by running the same command again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert dataset files into one HDF5 store")
    convert.add_argument("inputs", nargs="+", help="dataset files (or .aselmdb folders)")
    convert.add_argument("-o", "--output", required=True, help="the .h5 store to write")
    convert.add_argument(
        "--format", choices=["ase", "asedb", "aselmdb", "mptrj"], help="default: from the name"
    )
    convert.add_argument("--energy-key", help="info key (ASE) or field (MPTrj) of the energy")
    convert.add_argument("--corrected-energy", action="store_true",
                         help="MPTrj: train on corrected_total_energy")  # fmt: skip
    convert.add_argument("--forces-key", help="arrays key of the forces")
    convert.add_argument("--stress-key", help="info key of the stress")
    convert.add_argument("--virial-key", help="info key of a virial (eV)")
    convert.add_argument("--stress-units", default="eV/A^3", choices=["eV/A^3", "GPa", "kbar"],
                         help="unit of the stress label (default eV/A^3)")  # fmt: skip
    convert.add_argument("--stress-convention", default="ase", choices=["ase", "vasp"],
                         help="ase: tensile positive, Voigt xx yy zz yz xz xy; vasp: compressive "
                         "positive, Voigt xx yy zz xy yz zx")  # fmt: skip
    convert.add_argument("--group-key", default="mp_id", help="info key of the group id")
    convert.add_argument("--frame-id-key", help="info key of the frame id")
    convert.add_argument("--head-key", default="head",
                         help="info key of the frame's level-of-theory head name, kept per "
                         "frame for data.head_key (default head)")  # fmt: skip
    convert.add_argument(
        "--require",
        default="energy,forces",
        help="comma-separated labels every frame must have (default energy,forces)",
    )
    convert.add_argument("--skip-invalid", action="store_true", help="skip and count bad frames")
    convert.add_argument("--batch-size", type=int, default=2048, help="records per commit")
    convert.add_argument("--compression", default="lzf", choices=["lzf", "gzip", "none"])
    convert.add_argument("--no-resume", action="store_true", help="do not resume; fail instead")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing store")
    convert.add_argument("-v", "--verbose", action="store_true", help="print every commit")

    stats = commands.add_parser("stats", help="print (and cache) dataset statistics")
    stats.add_argument("store")
    stats.add_argument("--cutoff", type=float, help="also the mean neighbour count (Å)")
    stats.add_argument("--split", help="restrict to a saved split, as NAME:PART (default:train)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    split = commands.add_parser("split", help="make and save a seeded train/valid(/test) split")
    split.add_argument("store")
    split.add_argument("--valid", type=float, default=0.1, help="validation fraction")
    split.add_argument("--test", type=float, default=0.0, help="test fraction")
    split.add_argument("--group-by", choices=["group_id", "source"], help="keep groups together")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--name", default="default")
    return parser


def _convert(args: argparse.Namespace) -> int:
    from training.data.readers import ReaderOptions
    from training.data.store import convert

    energy_key = args.energy_key
    if args.corrected_energy:
        energy_key = "corrected_total_energy"
    options = ReaderOptions(
        energy_key=energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        virial_key=args.virial_key,
        stress_units=args.stress_units,
        stress_convention=args.stress_convention,
        group_key=args.group_key or None,
        frame_id_key=args.frame_id_key,
        head_key=args.head_key or None,
    )
    required = tuple(x for x in args.require.split(",") if x)

    def on_commit(n_frames: int) -> None:
        if args.verbose:
            print(f"committed {n_frames} frames", flush=True)

    report = convert(
        args.inputs,
        args.output,
        format=args.format,
        options=options,
        required=required,
        skip_invalid=args.skip_invalid,
        batch_size=args.batch_size,
        compression=None if args.compression == "none" else args.compression,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        on_commit=on_commit,
    )
    resumed = f" (resumed after {report.resumed_from})" if report.resumed_from else ""
    print(
        f"wrote {report.output}: {report.n_frames} frames, {report.n_atoms} atoms{resumed} "
        f"in {report.seconds:.1f} s"
    )
    if report.skipped:
        total = sum(report.skipped.values())
        print(f"skipped {total} frame(s): {json.dumps(report.skipped)}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from training.data.splits import load_split
    from training.data.statistics import compute_statistics
    from training.data.store import Store

    store = Store(args.store)
    indices = None
    if args.split:
        name, _, part = args.split.partition(":")
        indices = load_split(store, name)[part or "train"]
    stats = compute_statistics(store, cutoff=args.cutoff, indices=indices)
    if args.json:
        print(json.dumps(json.loads(stats.to_json()), indent=2))
    else:
        from training.stats_table import format_statistics

        print(format_statistics(stats, args.store + (f" ({args.split})" if args.split else "")))
    return 0


def _split(args: argparse.Namespace) -> int:
    from training.data.splits import make_split

    fractions = {"train": 1.0 - args.valid - args.test, "valid": args.valid}
    if args.test:
        fractions["test"] = args.test
    parts = make_split(
        args.store, fractions, group_by=args.group_by, seed=args.seed, name=args.name
    )
    sizes = ", ".join(f"{part} {len(indices)}" for part, indices in parts.items())
    print(f"split {args.name!r} saved in {args.store}: {sizes}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlip-data``; returns the exit status (errors print one line, status 1)."""
    args = _parser().parse_args(argv)
    handlers = {"convert": _convert, "stats": _stats, "split": _split}
    try:
        return handlers[args.command](args)
    except (ValueError, OSError, ImportError, KeyError, RuntimeError) as exc:
        print(f"mlip-data {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
