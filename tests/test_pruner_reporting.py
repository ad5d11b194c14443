"""What a trial reports to its pruner: each epoch's value, or with ``objective.value: best`` and a rung-based pruner
(successive halving, Hyperband) the best value so far. A scripted model logs val_acc 0.5, 0.8, 0.6, 0.7."""

from __future__ import annotations

import math

import optuna
import pytest

from sweeplight._callbacks import reported_values, reports_best_so_far
from sweeplight._check import check_spec
from sweeplight._samplers import build_pruner, build_sampler
from sweeplight._space import sample
from sweeplight._spec import load_spec
from sweeplight._trial import run_trial

from .conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)
SCRIPTED = REPO / "tests" / "assets" / "scripted.py"
HYPERBAND = {"name": "hyperband", "options": {"min_resource": 1, "reduction_factor": 3}}


def test_hyperband_trial_reports_its_best_value_so_far(make_study):
    path = make_study({"model": {"class": f"{SCRIPTED}:ScriptedMLP"}, "pruner": HYPERBAND,
                       "search_space": {"_replace": True, "lr": {"type": "fixed", "value": 0.01}, "width": [32]},
                       "trainer": {"max_epochs": 4, "early_stopping": False}})
    spec = load_spec(path)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(spec), pruner=build_pruner(spec))
    trial = study.ask()  # the study's first trial: no other trial to lose a rung to
    outcome = run_trial(spec, check_spec(spec), number=0, params=sample(spec.search_space, trial), trial=trial,
                        trial_dir=spec.directory / "trials" / "0")
    assert outcome.state == "COMPLETE", outcome.summary["error"]
    assert [h["val_acc"] for h in outcome.summary["history"]] == pytest.approx([0.5, 0.8, 0.6, 0.7])  # the curve
    # What the trial would score if it stopped at each epoch, in the study and in the summary (what sync re-reports).
    assert list(study._storage.get_trial(trial._trial_id).intermediate_values.values()) == pytest.approx(
        [0.5, 0.8, 0.8, 0.8])
    assert list(outcome.summary["intermediate_values"].values()) == pytest.approx([0.5, 0.8, 0.8, 0.8])
    assert outcome.value == pytest.approx(0.8)


@pytest.mark.parametrize(("pruner", "which", "best_so_far"), [
    (HYPERBAND, "best", True),
    ({"name": "successive_halving"}, "best", True),
    ({"name": "patient", "options": {"patience": 2, "wrapped": HYPERBAND}}, "best", True),
    (HYPERBAND, "last", False),  # the trial's value is its last epoch's: report each epoch's
    ({"name": "median"}, "best", False),  # the median pruner already takes the trial's best over its steps
    ("none", "best", False),
])
def test_best_so_far_only_for_the_best_value_and_a_rung_pruner(make_study, pruner, which, best_so_far):
    spec = load_spec(make_study({"pruner": pruner, "objective": {"value": which}}))
    assert reports_best_so_far(spec) is best_so_far


def test_best_so_far_keeps_missing_and_non_finite_values_and_minimises():
    values = [0.3, None, 0.5, math.nan, 0.2, 0.4]
    assert reported_values(values, best_so_far=False, maximize=False) == values
    got = reported_values(values, best_so_far=True, maximize=False)
    assert got[:3] == [0.3, None, 0.3] and math.isnan(got[3]) and got[4:] == [0.2, 0.2]
    assert reported_values([0.3, 0.5, 0.4], best_so_far=True, maximize=True) == [0.3, 0.5, 0.5]
