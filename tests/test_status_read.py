"""``study status`` reads SQLite and server databases without Optuna; what it reads must equal Optuna's view."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeplight._status_read import read_fast, read_optuna
from sweeplight._storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": IntDistribution(32, 256, step=32),
                 "optimizer": CategoricalDistribution(["adam", "sgd", None]),
                 "bias": CategoricalDistribution([True, 2.5])}


def _fill(url: str) -> optuna.Study:
    """A study with every state, tied best values, an infinite value, running trials with and without epochs."""
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trials = []
    for number in range(12):
        params = {"lr": 10 ** -(1 + number % 3), "width": 32 * (1 + number % 8), "optimizer": ["adam", "sgd", None][
            number % 3], "bias": [True, 2.5][number % 2]}
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE][number % 4]
        value = 0.5 + (number % 5) / 10 if state == TrialState.COMPLETE else None
        trials.append(create_trial(
            state=state, value=value, params=params, distributions=DISTRIBUTIONS,
            intermediate_values={e: 0.1 * e for e in range(number % 4)},
            user_attrs={"test_acc": 0.9, "note": [1, "x"]}, system_attrs={"sweeplight:worker": number}))
    study.add_trials(trials)
    study._storage.set_study_system_attr(study._study_id, "sweeplight:stopped", "objective.metric: never logged")
    study.enqueue_trial({"lr": 0.01})
    for with_epochs in (True, False):
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "sweeplight:heartbeat", 1.7e9)
        study._storage.set_trial_system_attr(trial._trial_id, "sweeplight:host", "node1")
        if with_epochs:
            trial.report(0.25, 0)
            trial.report(float("nan"), 3)
    return study


def _same(fast, reference, running: int = 2) -> None:
    assert fast.counts == reference.counts
    assert fast.best == reference.best
    assert fast.stopped == reference.stopped
    assert len(fast.running) == len(reference.running) == running
    for a, b in zip(fast.running, reference.running, strict=True):
        assert (a.number, a.system_attrs, a.last_step) == (b.number, b.system_attrs, b.last_step)
        assert a.started == pytest.approx(b.started, abs=1e-3)
        assert a.last_value == b.last_value or (math.isnan(a.last_value) and math.isnan(b.last_value))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fast_reader_equals_optuna(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    study = _fill(url)
    fast = read_fast(url, "s", "maximize")
    assert fast is not None
    _same(fast, read_optuna(study))
    assert fast.counts == {"COMPLETE": 6, "PRUNED": 3, "FAIL": 3, "RUNNING": 2}
    assert fast.best.number == 4 and fast.best.value == 0.9 and fast.best.user_attrs["note"] == [1, "x"]
    assert fast.best.params == {"lr": 0.01, "width": 160, "optimizer": "sgd", "bias": True}
    assert fast.running[0].last_step == 3 and math.isnan(fast.running[0].last_value)
    study.tell(study.trials[-1].number, math.inf)  # an infinite value is the best of a maximised study
    fast = read_fast(url, "s", "maximize")
    _same(fast, read_optuna(study), running=1)
    assert fast.best.value == math.inf and fast.best.number == 13
    assert read_fast(url, "other", "maximize") is None  # Optuna's reader reports the missing study


def test_fast_reader_declines_what_it_does_not_know(tmp_path):
    assert read_fast(f"sqlite:///{tmp_path / 'missing.db'}", "s", "maximize") is None
    assert not (tmp_path / "missing.db").exists()  # status never creates a file
    assert read_fast(f"journal:///{tmp_path / 'j.log'}", "s", "maximize") is None
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _fill(url)
    import sqlite3

    with sqlite3.connect(tmp_path / "study.db") as conn:
        conn.execute("UPDATE version_info SET schema_version = 99")
    assert read_fast(url, "s", "maximize") is None


def test_status_command_imports_neither_optuna_nor_torch(tmp_path):
    """The status command on an SQLite study: the same text as before, without the heavy imports."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _fill(url)
    code = ("import sys; from sweeplight._status_read import read_fast; snap = read_fast(%r, 's', 'maximize'); "
            "print(snap.best.number, [m for m in ('optuna', 'torch', 'numpy', 'lightning') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code % url], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "[]"]
