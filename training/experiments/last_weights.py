"""A finished run's last-step weights as a model folder: the control for weight averaging.

Run by hand from the repository root::

    python -m training.experiments.last_weights --run runs/loso-patient07/<run>

Averaging (``average_epochs``, ``training/averaging.py``) never changes the steps, so the
weights of a run's last step, which its ``checkpoint.safetensors`` holds, are exactly what
the same recipe without averaging would have delivered. Writing them next to the run's
model folder (``<out>/<name>-last``, card copied with that name and a description saying
what it is) gives the paired comparison, average against last step of the same trajectory,
without training the run twice. ``training.experiments.loso`` then scores both folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from MRSynthesisLib.cards import build_network, read_card, save_model

from ..checkpoint import load_checkpoint_weights
from ..run_folder import CHECKPOINT


def write_last_weights(run: Path) -> Path:
    """Write ``<run>/<name>-last`` from the run's checkpoint; returns that folder."""
    config = run / "config.json"
    if not config.is_file():
        raise ValueError(f"{run}: not a training run folder (no config.json)")
    name = json.loads(config.read_text(encoding="utf-8"))["name"]
    if not (run / name).is_dir():
        raise ValueError(f"{run}: the run has not finished (no model folder {name}); "
                         "its checkpoint is not the last step")
    card = read_card(run / name)
    network = build_network(card)
    load_checkpoint_weights(run / CHECKPOINT, network)
    last = replace(card, name=f"{name}-last", description=(
        f"The last training step's weights of run {name} (from its {CHECKPOINT}), not the weight average its "
        f"recipe delivers; written by training.experiments.last_weights as that average's control. {card.description}"))
    return save_model(last, network, run / last.name, overwrite=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.last_weights",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", required=True, type=Path, help="finished run folder(s)")
    args = parser.parse_args(argv)
    try:
        for run in args.run:
            print(write_last_weights(run), flush=True)
    except ValueError as error:  # CheckpointError and ModelCardError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
