"""Search-space sampling through a real Optuna study: conditions, ordering, targets, grid values."""

from __future__ import annotations

import optuna
import pytest

from sweeplight._space import parse_space, sample

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample_many(raw: dict, n: int = 40, sampler: optuna.samplers.BaseSampler | None = None) -> list[dict]:
    space = parse_space(raw)
    study = optuna.create_study(sampler=sampler or optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    out = []
    for _ in range(n):
        trial = study.ask()
        params = sample(space, trial)
        study.tell(trial, float(len(params)))
        out.append(params)
        assert trial.params == params  # Optuna records exactly the parameters that were used
    return out


def test_conditional_parameter_is_sampled_only_when_its_condition_holds():
    runs = _sample_many({
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},  # before its parent
        "optimizer": ["adam", "sgd", "rmsprop"],
        "nesterov": {"type": "categorical", "choices": [True, False], "when": {"optimizer": ["sgd", "rmsprop"]}},
        "dampening": {"type": "float", "low": 0.0, "high": 0.5, "when": {"nesterov": False}},
    })
    assert {r["optimizer"] for r in runs} == {"adam", "sgd", "rmsprop"}
    for r in runs:
        assert ("momentum" in r) == (r["optimizer"] == "sgd")
        assert ("nesterov" in r) == (r["optimizer"] in ("sgd", "rmsprop"))
        assert ("dampening" in r) == (r.get("nesterov") is False)
        if "momentum" in r:
            assert 0.5 <= r["momentum"] <= 0.99


def test_types_bounds_log_and_step():
    runs = _sample_many({
        "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "width": {"type": "int", "low": 32, "high": 256, "step": 32},
        "depth": {"type": "int", "low": 1, "high": 4},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "seed": 7,
    }, sampler=optuna.samplers.RandomSampler(seed=3))
    for r in runs:
        assert 1e-5 <= r["lr"] <= 1e-1
        assert r["width"] in range(32, 257, 32)
        assert 1 <= r["depth"] <= 4 and isinstance(r["depth"], int)
        assert round(r["dropout"] * 10, 6) == round(r["dropout"] * 10)
        assert r["seed"] == 7
    assert min(r["lr"] for r in runs) < 1e-3  # log scale reaches the low decades


def test_targets_follow_the_prefix():
    space = {p.name: p for p in parse_space({"lr": [0.1], "data.batch_size": [32], "trainer.swa_lrs": [0.01],
                                             "model.width": [8]})}
    assert (space["lr"].target, space["lr"].key) == ("auto", "lr")
    assert (space["data.batch_size"].target, space["data.batch_size"].key) == ("data", "batch_size")
    assert space["trainer.swa_lrs"].target == "trainer" and space["model.width"].key == "width"


@pytest.mark.parametrize(("raw", "values"), [
    ({"type": "int", "low": 1, "high": 3}, [1, 2, 3]),
    ({"type": "float", "low": 0.0, "high": 0.2, "step": 0.1}, [0.0, 0.1, 0.2]),
    (["a", "b"], ["a", "b"]),
    (5, [5]),
])
def test_grid_values(raw, values):
    (param,) = parse_space({"p": raw})
    assert param.grid_values() == pytest.approx(values) if param.type == "float" else param.grid_values() == values
