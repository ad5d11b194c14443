"""sweeplight's TPE (sweeplight._tpe.CachedTPESampler) proposes exactly what Optuna's TPESampler proposes.

Two studies get the same history (a few hundred trials: complete, pruned at different steps, failed, infeasible,
running, with ties in the values), then both samplers propose, trial after trial, on the search space of
studies/digits.yaml plus an int log and a float step parameter; the proposals must be equal, not close.
"""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.probability_distributions import _unique_inverse_2d
from optuna.trial import TrialState

from sweeplight import _tpe
from sweeplight._samplers import build_sampler
from sweeplight._spec import load_spec
from sweeplight._tpe import CachedTPESampler, _Mixture, _ParzenEstimatorSameNumbers, _unique_pairs

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE: dict[str, Any] = {
    "lr": FloatDistribution(1e-4, 3e-2, log=True),
    "width": IntDistribution(32, 256, step=32),
    "depth": IntDistribution(1, 3),
    "dropout": FloatDistribution(0.0, 0.5),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "optimizer": CategoricalDistribution(["adam", "sgd"]),
    "momentum": FloatDistribution(0.5, 0.99),  # only with sgd
    "batch_size": CategoricalDistribution([32, 64, 128]),
    "units": IntDistribution(4, 512, log=True),
    "clip": FloatDistribution(0.0, 1.0, step=0.05),
}


def suggest(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, d in SPACE.items():
        if name == "momentum" and params["optimizer"] != "sgd":
            continue
        if isinstance(d, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(d.choices))
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            params[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return params


def random_params(rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, d in SPACE.items():
        if name == "momentum" and params["optimizer"] != "sgd":
            continue
        if isinstance(d, CategoricalDistribution):
            params[name] = rng.choice(d.choices)
        elif isinstance(d, IntDistribution) and d.log:
            params[name] = round(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        elif isinstance(d, IntDistribution):
            params[name] = rng.randrange(d.low, d.high + 1, d.step)
        elif d.step is not None:
            params[name] = d.low + d.step * rng.randrange(round((d.high - d.low) / d.step) + 1)
        elif d.log:
            params[name] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
        else:
            params[name] = rng.uniform(d.low, d.high)
    return params


def score(params: dict[str, Any]) -> float:
    """A value with ties (two decimals)."""
    value = -math.log10(params["lr"]) / 5 + params["dropout"] + params["depth"] / 3 + params["clip"]
    return round(value + (params["optimizer"] == "sgd") * params.get("momentum", 0) / 4, 2)


def history(n: int, seed: int, *, mostly_pruned: bool = False) -> list[optuna.trial.FrozenTrial]:
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        params = random_params(rng)
        value = score(params)
        roll = rng.random()
        pruned = roll < (0.85 if mostly_pruned else 0.35)
        steps = rng.choice([0, 1, 2, 2, 5]) if pruned else 6  # some pruned trials never reported
        intermediate = {s: round(value * (s + 1) / 6, 1) for s in range(steps)}  # ties between pruned trials
        if pruned and steps and rng.random() < 0.1:
            intermediate[steps - 1] = float("nan")
        state = TrialState.PRUNED if pruned else TrialState.FAIL if roll > 0.97 else TrialState.COMPLETE
        infeasible = rng.random() < (0.2 if mostly_pruned else 0.05)
        constraints = {"c0": round(rng.uniform(0.1, 2.0), 1) if infeasible else -1.0}
        trials.append(optuna.trial.create_trial(
            params=params, distributions={k: SPACE[k] for k in params}, state=state,
            value=value if state == TrialState.COMPLETE else None, intermediate_values=intermediate,
            constraints=constraints))
    return trials


def twin_studies(direction: str | list[str], options: dict[str, Any], trials: list, *,
                 pruner: optuna.pruners.BasePruner | None = None) -> tuple[optuna.Study, optuna.Study]:
    studies = []
    for cls in (optuna.samplers.TPESampler, CachedTPESampler):
        kwargs = {"directions": direction} if isinstance(direction, list) else {"direction": direction}
        study = optuna.create_study(sampler=cls(**options), pruner=pruner or optuna.pruners.NopPruner(), **kwargs)
        study.add_trials(trials)
        studies.append(study)
    return studies[0], studies[1]


def propose_in_step(optuna_study: optuna.Study, ours: optuna.Study, steps: int, *, running: int = 0,
                    multi: bool = False) -> None:
    """Both studies ask, sample and (after ``running`` asks left running) tell the same outcome, step by step."""
    rng = random.Random(7)
    for step in range(steps):
        trials = [study.ask() for study in (optuna_study, ours)]
        proposed = [suggest(t) for t in trials]
        assert proposed[0] == proposed[1], (step, proposed)
        if step < running:
            continue  # left RUNNING: the constant liar's trials
        value = score(proposed[0])
        prune = rng.random() < 0.3
        for study, trial in zip((optuna_study, ours), trials, strict=True):
            if multi:
                study.tell(trial, [value, -value])
            elif prune:
                trial.report(round(value / 2, 1), 1)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)


@pytest.mark.parametrize(("direction", "options", "running", "hyperband"), [
    ("minimize", {}, 3, False),  # Optuna's defaults: multivariate, constant liar
    ("maximize", {}, 2, True),  # Hyperband: the sampler sees a bracket study
    ("maximize", {"multivariate": False, "constant_liar": False}, 0, False),  # one _sample per parameter
    ("minimize", {"multivariate": True, "group": True}, 2, False),
    ("maximize", {"n_ei_candidates": 8, "constant_liar": False}, 2, False),
    ("minimize", {"multivariate": False}, 2, False),  # independent, constant liar; reads never shared (below)
], ids=["minimize-defaults", "maximize-hyperband", "independent", "group", "no-liar", "fresh-reads"])
def test_same_proposals_as_optuna(direction: str, options: dict[str, Any], running: int, hyperband: bool,
                                  request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.callspec.id == "fresh-reads":
        monkeypatch.setattr(_tpe, "READ_SECONDS", -1.0)  # every entry point reads the storage again
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=6, reduction_factor=3) if hyperband else None
    optuna_study, ours = twin_studies(direction, {"seed": 3, "n_startup_trials": 6, **options}, history(300, 1),
                                      pruner=pruner)
    propose_in_step(optuna_study, ours, 12, running=running)
    if _tpe._EXACT:  # on an Optuna it was not checked against, it is Optuna's TPESampler throughout
        assert ours.sampler.fast_path_calls >= 10 and ours.sampler.optuna_path_calls == 0


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_same_proposals_when_few_trials_complete(direction: str) -> None:
    """Fewer complete trials than TPE's "below" group: pruned trials (by step, then value, ties in order) and
    infeasible ones (by violation) fill it, as in Optuna's split."""
    trials = history(250, 2, mostly_pruned=True)
    optuna_study, ours = twin_studies(direction, {"seed": 5, "n_startup_trials": 6}, trials)
    complete = [t for t in ours.get_trials() if t.state == TrialState.COMPLETE and not t.constraints["c0"] > 0]
    assert len(complete) < 25
    propose_in_step(optuna_study, ours, 8, running=1)
    assert ours.sampler.optuna_path_calls == 0 or not _tpe._EXACT


def test_same_proposals_from_the_start_and_multi_objective_on_optunas_path() -> None:
    optuna_study, ours = twin_studies("maximize", {"seed": 11, "n_startup_trials": 4}, [])
    propose_in_step(optuna_study, ours, 15, running=1)  # random start-up trials, then TPE on few trials
    assert ours.sampler.fast_path_calls > 0 or not _tpe._EXACT
    optuna_study, ours = twin_studies(["minimize", "minimize"], {"seed": 2, "n_startup_trials": 4}, [])
    propose_in_step(optuna_study, ours, 8, multi=True)
    assert ours.sampler.fast_path_calls == 0 and ours.sampler.optuna_path_calls > 0


def test_log_pdf_same_numbers_out_of_range_candidates() -> None:
    """The faster ``log_pdf`` gives Optuna's values bit for bit, also for candidates outside a parameter's range
    and on its bounds (where Optuna's out-of-range case applies per kernel)."""
    rng = np.random.default_rng(0)
    space = {"a": FloatDistribution(0.0, 1.0), "b": FloatDistribution(1e-3, 1.0, log=True),
             "c": IntDistribution(0, 10, step=2), "d": CategoricalDistribution(["x", "y", "z"]),
             "e": FloatDistribution(-5.0, 5.0)}
    observations = {"a": rng.uniform(0, 1, 400), "b": np.exp(rng.uniform(math.log(1e-3), 0, 400)),
                    "c": rng.integers(0, 6, 400) * 2.0, "d": rng.integers(0, 3, 400), "e": rng.uniform(-5, 5, 400)}
    parameters = optuna.samplers.TPESampler()._parzen_estimator_parameters
    ours = _ParzenEstimatorSameNumbers(observations, space, parameters)
    theirs = _ParzenEstimator(observations, space, parameters)
    assert isinstance(ours._mixture_distribution, _Mixture)
    samples = theirs.sample(np.random.RandomState(1), 64)
    samples["a"][:6] = [-0.1, 0.0, 1.0, 1.0 + 1e-12, 2.0, float("nan")]
    samples["b"][:3] = [1e-3, 1.0, 2.0]
    samples["e"][6:9] = [-5.0, 5.0, -7.0]
    expected = theirs.log_pdf(samples)
    got = ours.log_pdf(samples)
    assert np.isneginf(expected).any()
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_estimator_same_kernels_with_ties() -> None:
    """The kernels (mus, sigmas, weights) of the estimator are Optuna's, bit for bit, with many tied observations
    (a discrete parameter's sigmas depend on which of the tied ones ends a run), the unique (mu, sigma) pairs are
    those of Optuna's ``_unique_inverse_2d``, and ``log_pdf`` over 3,000 kernels gives Optuna's numbers."""
    rng = np.random.default_rng(3)
    space = {"w": IntDistribution(32, 256, step=32), "d": IntDistribution(1, 3), "u": IntDistribution(4, 512, log=True),
             "x": FloatDistribution(0.0, 1.0), "c": CategoricalDistribution([32, 64, 128])}
    n = 3000
    observations = {"w": rng.integers(0, 8, n) * 32.0 + 32, "d": rng.integers(1, 4, n) * 1.0,
                    "u": np.exp(rng.uniform(math.log(4), math.log(512), n)).round(), "x": rng.uniform(0, 1, n).round(2),
                    "c": rng.integers(0, 3, n)}
    parameters = optuna.samplers.TPESampler()._parzen_estimator_parameters
    our_estimator = _ParzenEstimatorSameNumbers(observations, space, parameters)
    their_estimator = _ParzenEstimator(observations, space, parameters)
    samples = their_estimator.sample(np.random.RandomState(0), 24)
    got, expected = our_estimator.log_pdf(samples), their_estimator.log_pdf(samples)
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))  # most exponentials underflow here
    ours, theirs = our_estimator._mixture_distribution, their_estimator._mixture_distribution
    assert np.array_equal(ours.weights, theirs.weights)
    for mine, optunas in zip(ours.distributions, theirs.distributions, strict=True):
        assert type(mine) is type(optunas)
        for field in mine._fields:
            assert np.array_equal(getattr(mine, field), getattr(optunas, field)), field
        if hasattr(mine, "mu"):
            got, expected = _unique_pairs(mine.mu, mine.sigma), _unique_inverse_2d(mine.mu, mine.sigma)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_build_sampler_makes_it_with_the_study_files_options() -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "digits.yaml")
    sampler = build_sampler(spec, worker=2)
    assert type(sampler) is CachedTPESampler and isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 6 and sampler._constant_liar
    again = pickle.loads(pickle.dumps(sampler))
    assert again._n_startup_trials == 6 and again._rows is None
