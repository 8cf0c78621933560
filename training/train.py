"""Command line: ``python -m training.train --config training/configs/<name>.json [overrides]``.

Under ``torchrun --nproc-per-node N -m training.train ...`` the same command trains data-
parallel (see ``training.distributed``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from MRSynthesisLib.errors import EXIT_BAD_INPUT, EXIT_OK, InputError

from .config import load_config
from .loop import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON training config (see training/configs)")
    parser.add_argument("--out", help="run folder (checkpoints, metrics.csv, the model folder); overrides 'out'")
    parser.add_argument("--epochs", type=int, help="overrides 'epochs' (may change on --resume)")
    parser.add_argument("--steps-per-epoch", type=int, help="overrides 'steps_per_epoch'")
    parser.add_argument("--seed", type=int, help="overrides 'seed'")
    parser.add_argument("--threads", type=int, help="torch CPU threads; overrides 'threads'")
    parser.add_argument("--max-minutes", type=float, help="stop before an epoch that would end past this budget")
    parser.add_argument("--patience", type=int, help="epochs without improvement before early stopping")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    return parser


def run_training(module: str, config: str, overrides: dict[str, Any], argv: Sequence[str], resume: bool,
                 load: Callable[[str, dict[str, Any]], Any], fit: Callable[..., Any]) -> int:
    """Load the recipe and ``fit`` it. A mistake in the recipe or the data ends in one line naming the
    file (exit 2), as ``mrsynthesis`` does; a bug keeps its traceback. Shared with ``training.train3d``."""
    recipe = [a for a in argv if a != "--resume"]
    try:
        fit(load(config, overrides), resume=resume, command=shlex.join(["python", "-m", module, *recipe]))
    except InputError as error:
        print(f"python -m {module}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    overrides = {"out": args.out, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "seed": args.seed,
                 "threads": args.threads, "max_minutes": args.max_minutes, "patience": args.patience}
    return run_training("training.train", args.config, overrides, argv, args.resume, load_config, train)

if __name__ == "__main__":
    sys.exit(main())
