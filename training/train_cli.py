"""``mlip-train CONFIG.yaml [key=value ...] [--resume]``.

Trains as the YAML (plus dotted overrides such as ``train.lr=1e-3``) describes and exports the
best EMA model to ``OUTPUT_DIR/model.pt``. Under ``torchrun --nproc_per_node N`` it runs
data-parallel. ``--resume`` continues from ``OUTPUT_DIR/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from training.config import ConfigError, load_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlip-train",
        description="Train an mlip model from a YAML config and export it.",
        epilog="Example: mlip-train training/configs/demo.yaml train.max_epochs=5",
    )
    parser.add_argument("config", help="YAML configuration file")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 output_dir=runs/x"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt"
    )
    args = parser.parse_intermixed_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f"mlip-train: {error}", file=sys.stderr)
        return 2
    from training.trainer import train

    result = train(config, resume=args.resume)
    if rank == 0:
        for split in ("valid", "test"):
            if split in result:
                text = " ".join(f"{k}={v:.5g}" for k, v in result[split].items())
                print(f"{split}: {text}")
        if "model" in result:
            print(f"model: {result['model']} ({result['stop_reason']})")
    return 0
