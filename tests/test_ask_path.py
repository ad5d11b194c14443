"""The worker's ask path, made cheaper at 10,000 trials (benchmarks/storage_scale.py --latency): the trials read
without Optuna's per-read sort, counted once for the finished prefix, and a trial's sampled parameters written in
one transaction. Each shortcut must give exactly what Optuna's own calls give, on every storage."""

from __future__ import annotations

import uuid

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from sweeplight import _worker
from sweeplight._launch import prepare
from sweeplight._spec import load_spec
from sweeplight._storage import all_trials, load_study
from sweeplight._warm import WARM_FROM
from sweeplight._writes import params_in_one_write, set_trial_params

BACKENDS = ["sqlite", "journal", "postgres"]


@pytest.fixture(params=BACKENDS)
def study(request, make_study, tmp_path):
    """A prepared, empty study on each storage, opened the way a worker opens it (retrying, cached)."""
    if request.param == "sqlite":
        url = str(tmp_path / "shared" / "study.db")
    elif request.param == "journal":
        url = str(tmp_path / "shared" / "study.log")
    else:
        url = request.getfixturevalue("postgres_server").new_database(f"a_{uuid.uuid4().hex[:10]}")
    spec = load_spec(make_study({"storage": url, "budget": {"n_trials": 50, "max_failures": None}}))
    prepare(spec, progress=False)
    study = load_study(spec, max_wait=30)
    study.fresh = lambda: load_study(spec)  # another process's view: a new storage object, no shared cache
    return study


def _space(trial: optuna.Trial) -> dict:
    params = {"lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
              "width": trial.suggest_int("width", 8, 64, step=8),
              "act": trial.suggest_categorical("act", ["relu", "tanh"])}
    if params["act"] == "relu":
        params["dropout"] = trial.suggest_float("dropout", 0.0, 0.5)
    return params


def _stored(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial as a fresh process reads it (no cache of this process)."""
    return study.fresh().get_trials(deepcopy=False)[number]


def test_params_in_one_write_store_what_optuna_stores(study):
    fixed = [{"lr": 0.01, "width": 32, "act": "relu", "dropout": 0.25}, {"lr": 0.002, "width": 8, "act": "tanh"}]
    for params in fixed * 2:
        study.enqueue_trial(params)
    for i in range(4):
        trial = study.ask()
        if i < 2:  # Optuna's own path: one write per parameter
            got = _space(trial)
        else:
            with params_in_one_write(trial):
                got = _space(trial)
        assert got == fixed[i % 2]
        assert trial.params == got
        study.tell(trial, 0.5)
    for i in range(2):
        plain, batched = _stored(study, i), _stored(study, i + 2)
        assert batched.params == plain.params == fixed[i]
        assert batched.distributions == plain.distributions
    # and a sampler that reads them back sees them: a new trial's TPE draws only inside the distributions
    trial = study.ask()
    with params_in_one_write(trial):
        params = _space(trial)
    assert 1e-4 <= params["lr"] <= 1e-1 and params["width"] in range(8, 65, 8)
    assert _stored(study, 4).params == params


def test_a_distribution_that_does_not_fit_is_refused_as_optuna_refuses_it(study):
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, 0.1)
    with pytest.raises(ValueError) as plain:
        study.ask().suggest_categorical("x", ["a", "b"])
    other = study.ask()
    with pytest.raises(ValueError) as batched, params_in_one_write(other):
        other.suggest_categorical("x", ["a", "b"])
    assert type(batched.value) is type(plain.value)


def test_parameters_sampled_before_an_error_are_written(study):
    trial = study.ask()
    with pytest.raises(RuntimeError, match="model refused"), params_in_one_write(trial):
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("width", 8, 64)
        raise RuntimeError("model refused")
    assert set(_stored(study, trial.number).params) == {"lr", "width"}
    assert _stored(study, trial.number).state == TrialState.RUNNING


def test_no_parameter_is_written_to_a_finished_trial(study):
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):
        set_trial_params(study._storage, trial._trial_id, [("lr", 0.1, FloatDistribution(0.0, 1.0))])
    assert _stored(study, trial.number).params == {}


def test_a_storage_without_batching_gets_one_call_per_parameter():
    study = optuna.create_study()  # in memory: neither a database nor a journal
    trial = study.ask()
    with params_in_one_write(trial):
        _space(trial)
    stored = study.get_trials(deepcopy=False)[0]
    assert stored.params == trial.params and len(stored.params) in (3, 4)
    assert stored.distributions["width"] == IntDistribution(8, 64, step=8)
    assert stored.distributions["act"] == CategoricalDistribution(["relu", "tanh"])


def test_all_trials_is_the_storage_read_and_the_tally_a_full_count(study):
    """Through asks, tells in any order, re-queued (waiting), failed and warm-started trials, the trials read
    equal Optuna's read (same objects, same order) and the counts equal a full pass over them."""
    storage = study._storage

    def check() -> None:
        trials = all_trials(study)
        assert trials == storage.get_all_trials(study._study_id, deepcopy=False)
        assert [t.number for t in trials] == list(range(len(trials)))
        fast, full = _worker.tally(trials), _worker.Tally().add(trials)
        assert (fast.finished, fast.running, fast.waiting) == (full.finished, full.running, full.waiting)
        assert [t.number for t in fast.failures] == [t.number for t in full.failures]
        # and against the states themselves
        states = [t.state for t in trials]
        assert fast.running == states.count(TrialState.RUNNING)
        assert fast.waiting == states.count(TrialState.WAITING)
        assert len(fast.failures) == states.count(TrialState.FAIL)
        warm = sum(WARM_FROM in t.system_attrs for t in trials if t.state.is_finished() and t.state != TrialState.FAIL)
        assert fast.finished == states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) - warm

    check()
    running = [study.ask() for _ in range(4)]
    check()
    study.tell(running[1], 0.3)  # a trial in the middle finishes: the finished prefix ends before trial 0
    check()
    study.tell(running[0], state=TrialState.PRUNED)
    check()
    study.tell(running[3], state=TrialState.FAIL)
    study.enqueue_trial({"lr": 0.01})
    check()
    study.add_trial(optuna.trial.create_trial(value=0.9, system_attrs={WARM_FROM: "other"}))
    check()
    study.tell(running[2], 0.4)
    check()
    for _ in range(3):
        trial = study.ask()
        check()
        study.tell(trial, 0.2)
        check()
    assert _worker.tally(all_trials(study)).finished == 7 - 1  # the warm-started trial does not count
