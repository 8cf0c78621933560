"""TensorBoard events beside metrics.csv, when the ``tensorboard`` package is installed (it is optional).

Every scalar is logged against the global training step, an epoch's row at the step that ended it
(the row's ``steps``), so that one number orders everything a run wrote. That is what lets a
resumed run use TensorBoard's own repair (``SummaryWriter(purge_step=...)``): a run killed in
epoch E+1 had logged that epoch's first steps, and maybe epoch E's row after its checkpoint (or
not, when the kill fell between the two). Resuming from the checkpoint at step T = E x steps per
epoch, the new event file hides every earlier event at step T or later, and the checkpoint's last
row is written again at T: TensorBoard then shows each step once, as an uninterrupted run does,
like metrics.csv (which ``run_folder.tidy_resumed`` rewrites from the checkpoint's log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run_folder import TENSORBOARD


class TensorBoardLog:
    """Writes a run's scalars; does nothing when tensorboard is not installed."""

    def __init__(self, out: Path, resumed_log: list[dict[str, Any]] | None = None) -> None:
        """``resumed_log``: the checkpoint's log when the run is resumed (None for a new run)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._writer = None
            return
        last = resumed_log[-1] if resumed_log else None
        self._writer = SummaryWriter(str(out / TENSORBOARD), purge_step=None if last is None else last["steps"])
        if last is not None:
            self.epoch(last)

    def step(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row, as ``epoch/<column>`` at the row's global step; flushed, like the CSV."""
        if self._writer is not None:
            for k, v in row.items():
                self._writer.add_scalar(f"epoch/{k}", v, row["steps"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
