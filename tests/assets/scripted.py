"""A digits MLP whose validation accuracy follows a fixed script, to check exactly what a pruner is shown."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from digits import DigitsMLP

# val_acc of epochs 0, 1, 2, ...: a rise, a dip and a partial recovery.
SCRIPT = (0.5, 0.8, 0.6, 0.7, 0.75, 0.9)


class ScriptedMLP(DigitsMLP):
    """Trains as the digits MLP, but logs ``val_acc`` from ``SCRIPT`` by epoch (val_loss stays the real one)."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss, on_step=False, on_epoch=True)
        self.log("val_acc", SCRIPT[self.current_epoch], on_step=False, on_epoch=True)
