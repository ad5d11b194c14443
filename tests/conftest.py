"""Shared fixtures: a small, fast study built on the digits example, written to a temporary directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest_plugins = ["tests.postgres"]

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "studies" / "digits.py"
TOY = REPO / "tests" / "assets" / "toy.py"

BASE: dict[str, Any] = {
    "name": "tiny",
    "model": {"class": f"{DIGITS}:DigitsMLP"},
    "data": {"class": f"{DIGITS}:DigitsDataModule"},
    "objective": {"metric": "val_acc", "direction": "maximize"},
    "search_space": {
        "lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        "width": {"type": "categorical", "choices": [32, 64]},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
    },
    "sampler": {"name": "random", "seed": 1},
    "pruner": "none",
    "budget": {"n_trials": 2, "max_failures": 3},
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "early_stopping": {"patience": 3}},
    "executor": {"kind": "local", "workers": 1, "heartbeat_interval": 5},
}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("_replace"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = {k: v for k, v in value.items() if k != "_replace"} if isinstance(value, dict) else value
    return out


@pytest.fixture
def make_study(tmp_path: Path):
    """Write a study file: the tiny base study with ``changes`` merged in; returns its path."""

    def make(changes: dict[str, Any] | None = None, name: str = "study.yaml") -> Path:
        data = _merge(BASE, {"root": str(tmp_path / "runs"), **(changes or {})})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real ``sweeplight`` command line in a fresh process (``env`` adds to the environment)."""
    return subprocess.run([sys.executable, "-m", "sweeplight.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})
