"""An MLP on scikit-learn's bundled breast-cancer data (569 tumours, 30 features, benign or malignant)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class BreastCancerDataModule(pl.LightningDataModule):
    """569 samples split into train/val/test with a fixed seed, standardised on the training split."""

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.4, test_fraction: float = 0.1,
                 split_seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        n_val, n_test = int(len(x) * self.val_fraction), int(len(x) * self.test_fraction)
        test_idx, val_idx, train_idx = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        # The features span five orders of magnitude (areas in the thousands, fractal dimensions near 0.06).
        mean, std = x[train_idx].mean(0), x[train_idx].std(0)
        x = (x - mean) / std
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=512)


class BreastCancerMLP(pl.LightningModule):
    """A plain MLP with two outputs; every constructor argument can be searched."""

    def __init__(self, lr: float = 1e-3, width: int = 64, depth: int = 2, dropout: float = 0.1,
                 weight_decay: float = 0.0, optimizer: str = "adam", momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        layers: list[nn.Module] = []
        size = 30
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
            size = width
        layers.append(nn.Linear(size, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=not on_step, sync_dist=not on_step)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, sync_dist=not on_step)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.hparams.momentum,
                                   weight_decay=self.hparams.weight_decay)
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.hparams.weight_decay)
