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

MARKS: list[float] = []  # perf_counter at the start of each training epoch


class TimedMLP(DigitsMLP):
    """The digits MLP; records when each training epoch starts (everything between two marks is one epoch)."""

    def on_train_epoch_start(self) -> None:
        MARKS.append(time.perf_counter())


__all__ = ["MARKS", "DigitsDataModule", "TimedMLP"]
