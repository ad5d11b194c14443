"""Digits MLPs that watch their own trainer, for tests/test_diagnostics.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from digits import DigitsDataModule, DigitsMLP


class WatchedMLP(DigitsMLP):
    """Records the trainer's callbacks at fit start and, computed here independently of sweeplight, the total
    gradient norm of every optimizer step (the module's hook runs right after the callbacks' hook)."""

    callbacks: ClassVar[list[Any]] = []
    grad_norms: ClassVar[list[tuple[int, float]]] = []  # (epoch, norm)

    def on_fit_start(self) -> None:
        type(self).callbacks = list(self.trainer.callbacks)
        type(self).grad_norms = []

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        type(self).grad_norms.append((self.current_epoch, float(norm)))


__all__ = ["DigitsDataModule", "WatchedMLP"]
