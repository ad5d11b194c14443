"""The benchmarks' module: the digits example with a clock in ``on_train_epoch_start``.

Every runner (raw loop aside) trains this class, so the epoch marks come from the same hook wherever the Trainer
came from. sweeplight loads this file by path; the benchmark script takes the class from that same module object,
so both see one ``MARKS`` list.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

from digits import DigitsDataModule, DigitsMLP
from torch import nn

MARKS: list[float] = []  # perf_counter at the start of each training epoch


class TimedMLP(DigitsMLP):
    """The digits MLP; records when each training epoch starts (everything between two marks is one epoch)."""

    def on_train_epoch_start(self) -> None:
        MARKS.append(time.perf_counter())


__all__ = ["MARKS", "DigitsDataModule", "TimedCNN", "TimedMLP"]


class TimedCNN(TimedMLP):
    """Three 3x3 convolutions over the 8x8 digit images: the heavier model (>= 10 ms per step on 2 CPU cores), with
    the MLP's logging and optimisers. Few parameters, so its checkpoints are small and its steps compute-bound."""

    def __init__(self, lr: float = 1e-3, channels: int = 32, dropout: float = 0.1, weight_decay: float = 0.0,
                 optimizer: str = "adam", momentum: float = 0.9) -> None:
        super().__init__(lr=lr, width=8, depth=1, dropout=dropout, weight_decay=weight_decay, optimizer=optimizer,
                         momentum=momentum)
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * 64, 10))
