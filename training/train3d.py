"""Command line: ``python -m training.train3d --config training/configs/<name>.json [--resume] [overrides]``.

Trains Wei et al.'s 3D FCN or Klingelhoefer & Rousseau's 3D autoencoder (the config's
``architecture``); see training/README.md, section "3D models".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config3d import load_config
from .loop3d import train3d
from .train import run_training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train3d", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON 3D training config (see training/configs)")
    parser.add_argument("--out", help="run folder (checkpoints, metrics.csv, the model folder); overrides 'out'")
    parser.add_argument("--epochs", type=int, help="overrides 'epochs' (may change on --resume)")
    parser.add_argument("--steps-per-epoch", type=int, help="overrides 'steps_per_epoch'")
    parser.add_argument("--seed", type=int, help="overrides 'seed'")
    parser.add_argument("--threads", type=int, help="torch CPU threads; overrides 'threads'")
    parser.add_argument("--max-minutes", type=float, help="stop before an epoch that would end past this budget")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    overrides = {"out": args.out, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "seed": args.seed,
                 "threads": args.threads, "max_minutes": args.max_minutes}
    return run_training("training.train3d", args.config, overrides, argv, args.resume, load_config, train3d)

if __name__ == "__main__":
    sys.exit(main())
