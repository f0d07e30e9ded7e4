"""``mlip-train CONFIG.yaml [key=value ...] [--resume | --overwrite] [--print-config]``.

Trains as the YAML (plus dotted overrides such as ``train.lr=1e-3``) describes and exports the
best EMA model to ``OUTPUT_DIR/model.pt``. Under ``torchrun --nproc_per_node N`` it runs
data-parallel. ``--resume`` continues from ``OUTPUT_DIR/checkpoint.pt``; an output folder that
already holds a run is never replaced without ``--overwrite``. Every config key is listed in
docs/CONFIG.md; ``--print-config`` prints the resolved configuration and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from mlip.cli import Interrupted
from training.config import Config, config_to_dict, load_config
from training.config_doc import key_summary
from training.errors import OutputExistsError, check_writable_dir

__all__ = ["main"]

RUN_FILES = ("checkpoint.pt", "model.pt")
"""Files whose presence means ``output_dir`` already holds a (finished or partial) run."""


def check_output_dir(config: Config, command: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing one, or in a folder that is not writable.

    ``command`` is the config path and overrides, for the suggested ``--resume`` command.

    Raises:
        OutputExistsError: ``output_dir`` holds ``checkpoint.pt``/``model.pt`` and neither
            ``resume`` nor ``overwrite`` is set.
        InputError: ``output_dir`` cannot be created or written.
    """
    output_dir = Path(config.output_dir)
    check_writable_dir(output_dir, "output_dir")
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if found and not resume and not overwrite:
        raise OutputExistsError(
            f"output_dir {str(output_dir)!r} already holds a run ({', '.join(found)}); "
            f"continue it with 'mlip-train {command} --resume', replace it with "
            "--overwrite, or choose another output_dir=..."
        )


def _interrupted_hint(config: Config, command: str) -> str:
    checkpoint = Path(config.output_dir) / "checkpoint.pt"
    if not checkpoint.exists():
        return "No checkpoint was written yet; nothing to resume."
    return (
        f"The last checkpoint is {checkpoint}: 'mlip-train {command} --resume' continues "
        f"from it; 'mlip-export {checkpoint} -o model.pt' exports it."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlip-train",
        description="Train an mlip model from a YAML config and export it. Every config key, "
        "its type, default and unit: docs/CONFIG.md (or --print-config).",
        epilog="Example: mlip-train training/configs/demo.yaml train.max_epochs=5\n\n"
        "Config keys (key = default (type); meanings and units: docs/CONFIG.md; "
        "train.max_time is in minutes):\n" + key_summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML configuration file")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 output_dir=runs/x"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt"
    )
    mode.add_argument(
        "--overwrite", action="store_true", help="replace a run already in OUTPUT_DIR"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (YAML, with every default) and exit",
    )
    args = parser.parse_intermixed_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    config = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True), end="")
        return 0
    check_output_dir(
        config, shlex.join([args.config, *args.overrides]), args.resume, args.overwrite
    )

    from training.log_format import format_metrics
    from training.trainer import train

    try:
        result = train(config, resume=args.resume)
    except KeyboardInterrupt:
        command = shlex.join([args.config, *args.overrides])
        raise Interrupted(_interrupted_hint(config, command)) from None
    if rank == 0:
        for split in ("valid", "test"):
            if split in result:
                print(f"{split}: {format_metrics(result[split])}")
        if "model" in result:
            print(f"model: {result['model']} ({result['stop_reason']})")
    return 0
