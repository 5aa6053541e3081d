"""TensorBoard event files under ``OUT/tensorboard`` (rank 0 only), skipped with one warning when the
``tensorboard`` package is not installed."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"
# what each metrics.jsonl field is called in TensorBoard
_TAGS = {"train_loss": "train/loss", "val_accuracy": "val/accuracy", "val_loss": "val/loss", "lr": "train/lr",
         "seconds": "time/epoch_seconds"}


class EventLog:
    """Per-epoch scalars (x-axis: epoch). ``resume_epoch`` > 0 drops events a killed run wrote after that epoch."""

    def __init__(self, run_dir: Path, resume_epoch: int = 0) -> None:
        self.dir = Path(run_dir) / TB_DIR
        self._w: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard is not installed: no TensorBoard event files are written "
                          "(pip install tensorboard); metrics.jsonl has the same numbers", stacklevel=2)
            return
        if resume_epoch == 0:  # a new run: events of an overwritten run would mix with ours
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
        self._w = SummaryWriter(str(self.dir), purge_step=resume_epoch + 1 if resume_epoch else None)

    def epoch(self, rec: dict[str, Any]) -> None:
        if self._w is None:
            return
        for key, value in rec.items():
            if key != "epoch" and isinstance(value, (int, float)):  # the method's statistics under method/
                self._w.add_scalar(_TAGS.get(key, f"method/{key}"), value, rec["epoch"])
        self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
