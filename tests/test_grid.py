"""Grid search across parallel workers: every grid point runs exactly once, locally and as a SLURM job array, and
the study stops with ``grid done``. Real workers, real SQLite, real SLURM (slurm/start-cluster.sh)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from sweeplight._grid import grid_points, point_key
from sweeplight._spec import load_spec

from .conftest import BASE, SLURM, _merge, run_cli, run_cli_all

SPACE = {"_replace": True, "lr": 0.01, "width": [32, 64], "optimizer": ["adam", "sgd"],
         "momentum": {"type": "categorical", "choices": [0.5, 0.9], "when": {"optimizer": "sgd"}}}
GRID = {"sampler": {"name": "grid"}, "search_space": SPACE, "budget": {"_replace": True, "max_failures": 3},
        "trainer": {"max_epochs": 1}}
EXPECTED = [
    {"lr": 0.01, "width": 32, "optimizer": "adam"},
    {"lr": 0.01, "width": 32, "optimizer": "sgd", "momentum": 0.5},
    {"lr": 0.01, "width": 32, "optimizer": "sgd", "momentum": 0.9},
    {"lr": 0.01, "width": 64, "optimizer": "adam"},
    {"lr": 0.01, "width": 64, "optimizer": "sgd", "momentum": 0.5},
    {"lr": 0.01, "width": 64, "optimizer": "sgd", "momentum": 0.9},
]


def test_grid_points_follow_conditions_in_search_space_order(make_study):
    spec = load_spec(make_study(GRID))
    assert sorted(map(point_key, grid_points(spec.search_space))) == sorted(map(point_key, EXPECTED))
    assert [p["width"] for p in grid_points(spec.search_space)] == [32, 32, 32, 64, 64, 64]


def _check_each_point_once(study_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = json.loads((study_dir / "spec.json").read_text())["storage"]
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6, [(t.number, t.state.name, t.params) for t in trials]
    assert sorted(point_key(t.params) for t in trials) == sorted(map(point_key, EXPECTED))  # each point once
    return trials


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, cluster) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The grid on 3 local workers and as a SLURM array of 4, launched side by side (independent studies, each in a
    directory of its own): "local" and "slurm" -> (study file, launch output). Only the local test launches its study
    again."""
    paths = {}
    for name, changes in (("local", {"executor": {"workers": 3}}),
                          ("slurm", {"executor": {"kind": "slurm", "workers": 4, "heartbeat_interval": 3},
                                     "slurm": dict(SLURM)})):
        directory = tmp_path_factory.mktemp(f"grid-{name}")
        paths[name] = directory / "study.yaml"
        data = _merge(BASE, {**GRID, "root": str(directory / "runs"), **changes})
        paths[name].write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        local, slurm = run_cli_all(("study", "launch", str(paths["local"]), "--no-progress"),
                                   ("study", "launch", str(paths["slurm"]), "--follow", "--no-progress"))
    finally:
        subprocess.run(["scancel", "--name", "sweeplight-tiny"], capture_output=True, timeout=30)
    return {"local": (paths["local"], local), "slurm": (paths["slurm"], slurm)}


@pytest.mark.slow
def test_three_local_workers_run_each_grid_point_once(launched):
    path, out = launched["local"]
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout
    assert "done: grid done (6 points)" in out.stdout, out.stdout
    study_dir = path.parent / "runs" / "tiny"
    trials = _check_each_point_once(study_dir)
    assert len({t.system_attrs["sweeplight:worker"] for t in trials}) >= 2  # the workers shared the grid
    logs = "".join((study_dir / "workers" / f"worker-{i}.log").read_text() for i in range(3))
    assert logs.count("stopping (grid done (6 points))") >= 1
    status = run_cli("study", "status", str(study_dir))
    assert "finished 6 of 6" in status.stdout and "grid: 6 of 6 points done" in status.stdout, status.stdout

    again = run_cli("study", "launch", str(path), "--no-progress")  # a finished grid runs nothing more
    assert again.returncode == 0 and "done: grid done (6 points)" in again.stdout, again.stderr[-2000:]
    assert len(_check_each_point_once(study_dir)) == 6


@pytest.mark.slow
def test_slurm_array_of_four_runs_each_grid_point_once(launched):
    path, out = launched["slurm"]
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout
    assert "done: grid done (6 points)" in out.stdout, out.stdout
    trials = _check_each_point_once(path.parent / "runs" / "tiny")
    assert all(t.system_attrs.get("sweeplight:slurm_job") for t in trials)
