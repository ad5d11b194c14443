"""Warm starts: ``enqueue:`` (validated against the space, run first, never twice) and ``launch --warm-start``
(another study's fitting COMPLETE trials copied once, not counted toward n_trials). Real launches, real SQLite."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeplight._errors import SpecError
from sweeplight._grid import trial_budget
from sweeplight._spec import load_spec
from sweeplight._warm import ENQUEUED, WARM_FROM, fit_trial
from sweeplight.cli import main

from .conftest import BASE, _merge, run_cli

GRID_SPACE = {"_replace": True, "lr": 0.01, "width": [32, 64], "optimizer": ["adam", "sgd"],
              "momentum": {"type": "categorical", "choices": [0.5, 0.9], "when": {"optimizer": "sgd"}}}


@pytest.mark.parametrize(("changes", "expected"), [
    ({"enqueue": {"lr": 0.01}}, "enqueue: expected a list of parameter mappings"),
    ({"enqueue": [{"lrr": 0.01}]}, "enqueue[0].lrr: is not a parameter of search_space (did you mean 'lr'?)"),
    ({"enqueue": [{"lr": 5.0}]}, "enqueue[0].lr: got 5.0; allowed: 0.001 to 0.03"),
    ({"enqueue": [{"lr": True}]}, "enqueue[0].lr: expected a number, got boolean True"),
    ({"enqueue": [{"width": 48}]}, "enqueue[0].width: got 48; allowed: [32, 64]"),
    ({"enqueue": [{"width": "64"}]}, "enqueue[0].width: got '64'; allowed: [32, 64]"),
    ({"enqueue": [{"optimizer": "adam", "momentum": 0.7}]},
     "enqueue[0].momentum: is not used in this configuration (optimizer in ['sgd'] does not hold); remove it"),
    ({"enqueue": [{"momentum": 0.7}]},
     "enqueue[0].momentum: is used only when optimizer in ['sgd'], and this entry leaves optimizer to the sampler"),
    ({"enqueue": [{"width": 32}, {"width": 32.0}]}, "enqueue[1]: is the same configuration as enqueue[0]"),
    ({"enqueue": [{}]}, "enqueue[0]: is empty"),
    ({"sampler": {"name": "grid"}, "search_space": GRID_SPACE, "enqueue": [{"width": 32}]},
     "enqueue[0].optimizer: is missing; with the grid sampler every enqueued configuration must give each"),
    ({"budget": {"cpu_hours": 0}}, "budget.cpu_hours: must be > 0, got 0"),
    ({"budget": {"cpu_hours": "lots"}}, "budget.cpu_hours: expected a number, got string 'lots'"),
    ({"budget": {"gpu_hours": 1.5}}, "budget.gpu_hours: trainer.accelerator is cpu, so trials use no GPU"),
    ({"budget": {"_replace": True, "max_failures": 2}}, "budget: give n_trials, timeout, cpu_hours or gpu_hours"),
])
def test_bad_enqueue_and_budget_fail_with_one_line(make_study, capsys, changes, expected):
    path = make_study(changes)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(expected), str(caught.value)
    assert main(["study", "validate", str(path)]) == 2  # through the CLI: one line, exit 2, nothing created
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    assert not (path.parent / "runs").exists()


def test_enqueue_entries_are_typed_and_a_grid_needs_no_budget(make_study):
    spec = load_spec(make_study({"enqueue": [{"lr": "2e-3", "width": 64.0}, {"optimizer": "sgd", "momentum": 0.6}]}))
    assert spec.enqueue == ({"lr": 0.002, "width": 64}, {"optimizer": "sgd", "momentum": 0.6})
    assert isinstance(spec.enqueue[0]["width"], int)
    grid = load_spec(make_study({"sampler": {"name": "grid"}, "search_space": GRID_SPACE,
                                 "budget": {"_replace": True, "max_failures": 2}}))
    assert grid.budget.n_trials is None and trial_budget(grid) == 6  # 2 widths x (adam, sgd x 2 momenta)


def test_fit_trial_keeps_only_trials_that_fit_this_space(make_study):
    space = load_spec(make_study()).search_space
    fits = {"lr": 0.01, "width": 32, "optimizer": "sgd", "momentum": 0.6}
    assert fit_trial(space, fits) == (fits, None)
    assert fit_trial(space, {**fits, "depth": 2})[1] == "depth not in this search space"
    assert fit_trial(space, {"lr": 0.01, "width": 32, "optimizer": "sgd"})[1] == "momentum missing"
    assert fit_trial(space, {**fits, "width": 128})[1] == "width outside this space"
    assert fit_trial(space, {**fits, "lr": 0.5})[1] == "lr outside this space"
    assert fit_trial(space, {**fits, "optimizer": "adam"})[1] == "momentum inactive here"


def _study(path: Path, name: str = "tiny") -> optuna.Study:
    runs = path.parent / "runs"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


def _launch(path: Path, *extra: str) -> Any:
    out = run_cli("study", "launch", str(path), "--no-progress", *extra)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout
    return out


ENQUEUE = [{"lr": 0.01, "width": 64, "optimizer": "sgd", "momentum": 0.7}, {"lr": 0.002, "width": 32}]


@dataclass(frozen=True)
class Enqueued:
    path: Path  # the study file: the tiny study with ENQUEUE, n_trials 3, 1 epoch per trial
    first: Any  # the first launch's output
    after_first: list[optuna.trial.FrozenTrial]  # the trials after it
    again: Any  # the output of the launch again with --set budget.n_trials=4


@pytest.fixture(scope="module")
def enqueued(tmp_path_factory: pytest.TempPathFactory) -> Enqueued:
    """A real study with two ``enqueue:`` entries, launched, then launched again for one more trial. The tests only
    read it: the enqueue test checks both launches, the warm-start test copies its trials into a study of its own."""
    directory = tmp_path_factory.mktemp("enqueue")
    path = directory / "study.yaml"
    path.write_text(json.dumps(_merge(BASE, {"root": str(directory / "runs"), "enqueue": ENQUEUE,
                                             "budget": {"n_trials": 3}, "trainer": {"max_epochs": 1}})))
    first = _launch(path)
    after_first = _study(path).get_trials()
    return Enqueued(path, first, after_first, _launch(path, "--set", "budget.n_trials=4"))


@pytest.mark.slow
def test_enqueued_configurations_run_first_and_never_twice(enqueued):
    assert "enqueue: queued 2 of 2 configurations (0 already run or waiting)" in enqueued.first.stderr
    trials = enqueued.after_first
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert trials[0].params == ENQUEUE[0] and trials[0].system_attrs[ENQUEUED] == 0  # in order, before sampling
    assert {k: trials[1].params[k] for k in ENQUEUE[1]} == ENQUEUE[1] and trials[1].system_attrs[ENQUEUED] == 1
    assert "optimizer" in trials[1].params  # left out of the entry: sampled
    assert ENQUEUED not in trials[2].system_attrs

    assert "enqueue: queued 0 of 2 configurations (2 already run or waiting)" in enqueued.again.stderr
    trials = _study(enqueued.path).get_trials()
    assert len(trials) == 4 and sum(ENQUEUED in t.system_attrs for t in trials) == 2
    assert sum(t.params == ENQUEUE[0] for t in trials) == 1


@pytest.mark.slow
def test_warm_start_copies_fitting_trials_once_and_they_do_not_count(make_study, enqueued):
    source = enqueued.path
    old = [t for t in _study(source).get_trials() if t.state.name == "COMPLETE"]
    assert len(old) == 4
    fitting = [t for t in old if t.params["width"] == 32]  # the target's space has width 32 only
    # ENQUEUE[1] fits, ENQUEUE[0] (width 64) does not; seeded: the two sampled trials drew width 32
    assert [t.number for t in fitting] == [1, 2, 3]

    target = make_study({"name": "target", "search_space": {"width": {"_replace": True, "type": "categorical",
                                                                      "choices": [32]}},
                         "budget": {"n_trials": 1}, "trainer": {"max_epochs": 1}}, name="target.yaml")
    out = _launch(target, "--warm-start", str(source.parent / "runs" / "tiny"))
    skipped = len(old) - len(fitting)
    assert (f"warm start: copied {len(fitting)} of {len(old)} trials from {source.parent / 'runs' / 'tiny'} "
            f"({skipped} skipped: {skipped} width outside this space)") in out.stdout, out.stdout
    trials = _study(target, "target").get_trials()
    copies = [t for t in trials if WARM_FROM in t.system_attrs]
    assert sorted(t.system_attrs[WARM_FROM] for t in copies) == sorted(f"tiny#{t.number}" for t in fitting)
    by_origin = {t.system_attrs[WARM_FROM]: t for t in copies}
    for t in fitting:
        copy = by_origin[f"tiny#{t.number}"]
        assert copy.state.name == "COMPLETE" and copy.value == t.value and copy.params == t.params
        assert copy.intermediate_values == t.intermediate_values
    ran = [t for t in trials if WARM_FROM not in t.system_attrs]
    assert len(ran) == 1 and ran[0].state.name == "COMPLETE"  # copies do not count toward n_trials: 1 ran here
    assert "done: budget.n_trials=1 reached" in out.stdout

    again = _launch(target, "--warm-start", str(source))  # the study file names the same study
    assert f"warm start: copied 0 of {len(old)} trials from {source} ({len(old)} skipped: {len(fitting)} already " \
           f"copied, {skipped} width outside this space)" in again.stdout, again.stdout
    assert len(_study(target, "target").get_trials()) == len(trials)  # nothing copied or run twice
    status = run_cli("study", "status", str(target.parent / "runs" / "target"), "--json")
    data = json.loads(status.stdout)
    assert data["warm_started"] == len(fitting) and data["counts"]["COMPLETE"] == len(fitting) + 1


def test_warm_start_refuses_another_objective_before_anything_is_created(make_study, capsys):
    source = make_study(name="source.yaml")
    target = make_study({"name": "target", "objective": {"direction": "minimize"}}, name="target.yaml")
    assert main(["study", "launch", str(target), "--no-progress", "--warm-start", str(source)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: --warm-start: study 'tiny' optimises val_acc \(maximize\), this one val_acc "
                        r"\(minimize\); a warm start needs the same objective metric and direction\n", err), err
    assert not (target.parent / "runs").exists()
