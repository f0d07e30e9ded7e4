"""``mlip-export CHECKPOINT -o model.pt``: a training checkpoint to a TorchScript model file.

Rebuilds the model from the configuration stored in the checkpoint, loads the EMA weights
(``--weights best`` for the best EMA model seen in validation, the default, or ``ema`` /
``raw``) and writes it with :func:`mlip.export.save`. Given an exported model file instead
(``mlip-export old.pt -o new.pt``), it writes the same weights and training information with
the current exporter, so a file from an older version gains what the exporter adds since (for
example the layer-by-layer methods of chunked evaluation).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from training.errors import InputError, check_writable_dir

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlip-export", description="Export a training checkpoint as one TorchScript file."
    )
    parser.add_argument(
        "checkpoint", help="checkpoint.pt written by mlip-train, or a model file to re-export"
    )
    parser.add_argument("-o", "--output", default="model.pt", help="output file")
    parser.add_argument(
        "--weights",
        choices=("best", "ema", "raw"),
        default="best",
        help="best EMA weights (default), last EMA weights, or the raw weights",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    from pathlib import Path

    if Path(args.output).exists() and not args.overwrite:
        parser.exit(1, f"mlip-export: error: {args.output} exists (use --overwrite)\n")
    if not Path(args.checkpoint).is_file():
        parser.exit(1, f"mlip-export: error: {args.checkpoint}: no such checkpoint\n")
    check_writable_dir(Path(args.output).resolve().parent, "output folder")

    import mlip.export
    from training.checkpoint import load_checkpoint
    from training.model_io import export_model, load_pretrained, rebuild_model

    try:
        mlip.export.read_metadata(args.checkpoint)
    except mlip.export.ModelFileError:
        pass  # not an exported model: a checkpoint
    else:
        model, metadata = load_pretrained(args.checkpoint)
        mlip.export.save(model.eval(), args.output, **metadata.get("info", {}))
        print(f"wrote {args.output} (re-exported {args.checkpoint})")
        return 0
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        checkpoint["model_config"], checkpoint["config"]  # noqa: B018 - present in every one
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(
            f"{args.checkpoint}: not a checkpoint written by mlip-train ({detail})"
        ) from None
    if args.weights == "raw":
        weights = checkpoint["model"]
    elif args.weights == "best" and checkpoint.get("best_model") is not None:
        weights = checkpoint["best_model"]
    else:
        weights = checkpoint["ema"]["shadow"]
    model = rebuild_model(checkpoint["model_config"], weights).eval()
    history = checkpoint.get("history") or []
    last = history[-1] if history else {}
    metrics = {"valid": {k[6:]: v for k, v in last.items() if k.startswith("valid_")}}
    export_model(
        model,
        args.output,
        checkpoint["model_config"],
        checkpoint["config"],
        metrics if history else {},
        len(history),
        weights=args.weights,
        trained_states=(checkpoint.get("statistics") or {}).get("trained_states"),
    )
    print(f"wrote {args.output}")
    return 0
