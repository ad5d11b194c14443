"""Shared fixtures: a small, fast study built on the digits example, written to a temporary directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeplight._record import LAUNCH_COMMAND

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
# The local cluster's resources for a study with ``executor.kind: slurm`` (slurm/start-cluster.sh).
SLURM = {"partition": "debug", "timeout_min": 10, "cpus_per_task": 1, "mem_gb": 2, "signal_delay_s": 60}


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


def run_cli_all(*commands: tuple[str, ...], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Run several independent ``sweeplight`` commands side by side (``run_cli`` each), results in order.

    Launching a study costs two imports of torch and Lightning (the launch, then its worker) whatever its trials do;
    a module that needs several independent studies launches them at once, so two cores overlap those costs.
    """
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args, timeout=timeout), commands))


@pytest.fixture(autouse=True)
def _launch_command_stays_with_its_test():
    """A test calling ``main(["study", "launch", ...])`` in this process notes its command in ``os.environ`` for the
    workers; the launches of later tests would inherit it and record pytest as their command."""
    before = os.environ.get(LAUNCH_COMMAND)
    yield
    if before is None:
        os.environ.pop(LAUNCH_COMMAND, None)
    else:
        os.environ[LAUNCH_COMMAND] = before


@pytest.fixture(scope="session")
def cluster() -> None:
    """Start (or check) the local SLURM cluster; the tests need root, as CI has."""
    out = subprocess.run(["bash", str(REPO / "slurm" / "start-cluster.sh")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="session")
def slurm_array_study(tmp_path_factory: pytest.TempPathFactory, cluster) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished 4-trial study run as a real SLURM job array of 2 workers (``launch --follow``): its path and the
    launch's output. Shared, read-only, by tests/test_slurm.py (the array and its jobs) and tests/test_record.py (the
    trials' records); deterministic, so a trial's rerun reproduces its value."""
    directory = tmp_path_factory.mktemp("slurm-array")
    data = _merge(BASE, {"root": str(directory / "runs"), "budget": {"n_trials": 4},
                         "executor": {"kind": "slurm", "workers": 2, "heartbeat_interval": 3}, "slurm": dict(SLURM),
                         "trainer": {"deterministic": True}})
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        out = run_cli("study", "launch", str(path), "--follow", "--no-progress", timeout=600)
    finally:
        subprocess.run(["scancel", "--name", "sweeplight-tiny"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr[-3000:]
    return path, out
