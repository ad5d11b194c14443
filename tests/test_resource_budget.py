"""Budgets in resources: ``budget.cpu_hours`` summed over every trial (wall time x CPUs), enforced across two real
workers before each ask, recorded per trial, and shown by ``study status``."""

from __future__ import annotations

import json
import os

import optuna
import pytest

from sweeplight._launch import _cores, worker_threads
from sweeplight._resources import CPUS, RESOURCES

from .conftest import TOY, run_cli

pytestmark = pytest.mark.slow

LIMIT = 0.003  # CPU hours: 10.8 CPU-seconds, a few trials of at least 2 s on one thread each


def test_cpu_hours_budget_stops_new_trials_across_two_workers(make_study):
    path = make_study({"model": {"class": f"{TOY}:SlowMLP", "args": {"epoch_seconds": 1.0}},
                       "budget": {"n_trials": 30, "cpu_hours": LIMIT}, "executor": {"workers": 2},
                       "trainer": {"max_epochs": 2}})
    out = run_cli("study", "launch", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout
    assert f"done: budget.cpu_hours={LIMIT:g} reached" in out.stdout, out.stdout
    study_dir = path.parent / "runs" / "tiny"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert 2 <= len(trials) < 30 and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.system_attrs["sweeplight:worker"] for t in trials} == {0, 1}
    threads = int(os.environ.get("OMP_NUM_THREADS") or worker_threads(_cores(), 2))
    total = 0.0
    for t in trials:
        summary = json.loads((study_dir / "trials" / str(t.number) / "summary.json").read_text())
        used = summary["resources"]
        assert t.system_attrs[RESOURCES] == used and t.system_attrs[CPUS] == threads
        assert used["gpu_hours"] == 0.0
        # wall time x CPUs: the worker's clock around the trial, a little longer than the trainer's own (the
        # record is rounded to 1e-6 hours)
        assert summary["wall_time_s"] * threads / 3600 - 1e-6 <= used["cpu_hours"] <= \
            (summary["wall_time_s"] + 5) * threads / 3600
        total += used["cpu_hours"]
    assert total >= LIMIT
    for t in trials:  # no trial started once the trials finished before it had spent the budget
        spent = sum(o.system_attrs[RESOURCES]["cpu_hours"] for o in trials if o.datetime_complete < t.datetime_start)
        assert spent < LIMIT, (t.number, spent)

    status = run_cli("study", "status", str(study_dir), "--json")
    data = json.loads(status.stdout)
    assert data["resources"]["cpu_hours"]["limit"] == LIMIT
    assert data["resources"]["cpu_hours"]["used"] == pytest.approx(total, abs=1e-5)
    text = run_cli("study", "status", str(study_dir)).stdout
    assert f"cpu hours {total:.4f} / {LIMIT:.4f}" in text, text

    again = run_cli("study", "launch", str(path), "--no-progress")  # spent: a new launch starts nothing
    assert again.returncode == 0 and f"done: budget.cpu_hours={LIMIT:g} reached" in again.stdout
    assert len(optuna.load_study(study_name="tiny", storage=storage).get_trials()) == len(trials)
