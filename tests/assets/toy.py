"""Modules for tests: variants of the digits MLP that fail, never log the objective, or use pytorch_lightning."""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as old_pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from digits import DigitsDataModule, DigitsMLP


class FailingMLP(DigitsMLP):
    """Raises in training when ``width`` is 32: a bug in user code that only some configurations hit."""

    def training_step(self, batch, batch_idx):
        if self.hparams.width == 32:
            raise ValueError("width 32 is broken on purpose")
        return super().training_step(batch, batch_idx)


class SlowMLP(DigitsMLP):
    """Each training epoch takes at least ``epoch_seconds``: time to signal, preempt or kill its worker mid-trial."""

    def __init__(self, epoch_seconds: float = 2.0, lr: float = 1e-3, width: int = 128, optimizer: str = "adam",
                 momentum: float = 0.9) -> None:
        super().__init__(lr=lr, width=width, optimizer=optimizer, momentum=momentum)
        self.epoch_seconds = epoch_seconds

    def on_train_epoch_start(self) -> None:  # inside the epoch, as real training time is
        import time

        time.sleep(self.epoch_seconds)


class AlwaysFailingMLP(DigitsMLP):
    def training_step(self, batch, batch_idx):
        raise RuntimeError("this model always fails")


class OldStyleMLP(old_pl.LightningModule):
    """A module written against the older ``pytorch_lightning`` package."""

    def __init__(self, lr: float = 1e-2, width: int = 32) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class OldStyleData(old_pl.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage=None):
        inner = DigitsDataModule()
        inner.setup()
        self.train_set, self.val_set = inner.train_set, inner.val_set

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


__all__ = ["AlwaysFailingMLP", "DigitsDataModule", "DigitsMLP", "FailingMLP", "OldStyleData", "OldStyleMLP",
           "SlowMLP", "TensorDataset"]
