"""The trial runner on a real Trainer: each test trains the digits MLP (or a variant) for a few epochs in-process."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from sweeplight._check import check_spec
from sweeplight._samplers import build_pruner, build_sampler
from sweeplight._space import sample
from sweeplight._spec import load_spec
from sweeplight._trial import run_trial

from .conftest import TOY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(path: Path, fixed: dict | None = None):
    spec = load_spec(path)
    components = check_spec(spec)
    study = optuna.create_study(direction=spec.objective.direction, sampler=build_sampler(spec),
                                pruner=build_pruner(spec))
    if fixed:
        study.enqueue_trial(fixed)
    trial = study.ask()
    params = sample(spec.search_space, trial)
    outcome = run_trial(spec, components, number=trial.number, params=params, trial=trial,
                        trial_dir=spec.directory / "trials" / str(trial.number))
    return spec, study, trial, outcome


def test_complete_trial_summary_has_real_values(make_study):
    _, _, _, outcome = _run(make_study({"trainer": {"max_epochs": 3, "swa": {"lrs": 0.01, "epoch_start": 2,
                                                                                   "annealing_epochs": 1}}}),
                            fixed={"lr": 0.01, "width": 64, "optimizer": "adam"})
    s = outcome.summary
    assert outcome.state == "COMPLETE", s["error"]
    assert s["epochs"] == 3 and [h["epoch"] for h in s["history"]] == [0, 1, 2]
    val_accs = [h["val_acc"] for h in s["history"]]
    assert outcome.value == max(val_accs) == s["objective"]["value"]
    assert 0.85 < outcome.value <= 1.0
    assert s["metrics"]["best"]["val_acc"] == outcome.value
    assert s["metrics"]["last"]["val_acc"] == val_accs[-1]
    assert 0.8 < s["metrics"]["test"]["test_acc"] <= 1.0  # the best checkpoint was tested
    assert s["metrics"]["test"]["test_loss"] < 1.0
    assert "train_loss" in s["history"][0] and "train_loss" in s["history"][-1]  # merged after validation
    assert s["history"][0]["train_loss"] != s["history"][1]["train_loss"]
    assert s["stop_reason"] == "max_epochs"
    assert Path(s["checkpoints"]["best"]).is_file() and Path(s["checkpoints"]["last"]).name == "last.ckpt"
    assert s["swa"]["lrs"] == 0.01 and s["precision"] == "32-true"
    assert s["param_count"] == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert s["peak_rss_mb"] > 50 and s["wall_time_s"] > 0 and len(s["epoch_times_s"]) == 3
    assert s["versions"]["torch"] == torch.__version__.split("+")[0] or s["versions"]["torch"] == torch.__version__
    assert s["params"] == {"lr": 0.01, "width": 64, "optimizer": "adam"}  # momentum not sampled for adam


def test_early_stopping_is_the_recorded_stop_reason(make_study):
    _, _, _, outcome = _run(make_study({"trainer": {"max_epochs": 8, "early_stopping": {
        "patience": 1, "min_delta": 0.5}}}))
    assert outcome.state == "COMPLETE"
    assert outcome.summary["stop_reason"] == "early_stopping"
    assert outcome.summary["epochs"] == 2  # epoch 0 sets the best, epoch 1 cannot improve by 0.5


def test_early_stopping_on_a_plateau_is_recorded(make_study):
    """lr 0: the metric never moves, so the best checkpoint (epoch 0) comes before the stop; testing that checkpoint
    restores EarlyStopping's state, which must not turn the stop reason into max_epochs."""
    _, _, _, outcome = _run(make_study({"search_space": {"_replace": True, "lr": {"type": "fixed", "value": 0.0},
                                                         "width": [32]},
                                        "trainer": {"max_epochs": 6, "early_stopping": {"patience": 2}}}))
    assert outcome.summary["epochs"] == 3 and outcome.summary["stop_reason"] == "early_stopping"
    assert outcome.summary["checkpoints"]["best"].endswith("best-epoch=000.ckpt")


def test_pruned_trial_stops_at_once_and_keeps_intermediate_values(make_study):
    _, study, trial, outcome = _run(make_study({"pruner": {"name": "threshold", "options": {"lower": 0.999}},
                                                "trainer": {"max_epochs": 5}}))
    assert outcome.state == "PRUNED" and outcome.summary["stop_reason"] == "pruned"
    assert outcome.summary["epochs"] == 1
    frozen = study._storage.get_trial(trial._trial_id)
    assert list(frozen.intermediate_values) == [0]
    assert outcome.value == pytest.approx(frozen.intermediate_values[0])


def test_lr_finder_suggestion_is_used_and_recorded(make_study):
    path = make_study({"search_space": {"_replace": True, "width": [32]}, "trainer": {
        "lr_find": {"num_training": 30}, "max_epochs": 1}})
    _, _, _, outcome = _run(path)
    info = outcome.summary["lr_find"]
    assert outcome.state == "COMPLETE", outcome.summary["error"]
    assert info["suggestion"] is not None and info["used"] is True
    assert info["lr"] == pytest.approx(info["suggestion"])


def test_lr_finder_suggestion_only_recorded_when_lr_is_searched(make_study):
    path = make_study({"trainer": {"lr_find": {"num_training": 30}, "max_epochs": 1}})
    _, _, _, outcome = _run(path, fixed={"lr": 0.005, "width": 32, "optimizer": "adam"})
    info = outcome.summary["lr_find"]
    assert info["suggestion"] is not None and info["used"] is False and info["lr"] == 0.005


def test_bf16_mixed_precision_on_cpu(make_study):
    _, _, _, outcome = _run(make_study({"trainer": {"precision": "bf16-mixed", "max_epochs": 2}}),
                            fixed={"lr": 0.01, "width": 64, "optimizer": "adam"})
    assert outcome.state == "COMPLETE", outcome.summary["error"]
    assert outcome.summary["precision"] == "bf16-mixed" and outcome.value > 0.5


def test_searched_trainer_parameters_reach_the_trainer(make_study):
    path = make_study({"search_space": {"trainer.gradient_clip_val": [0.5], "trainer.accumulate_grad_batches": [2],
                                        "trainer.max_epochs": [1]}})
    _, _, _, outcome = _run(path)
    assert outcome.state == "COMPLETE" and outcome.summary["epochs"] == 1
    assert outcome.summary["params"]["trainer.gradient_clip_val"] == 0.5


def test_failing_user_code_is_a_failed_trial_with_its_error(make_study):
    path = make_study({"model": {"class": f"{TOY}:AlwaysFailingMLP"}})
    _, _, _, outcome = _run(path)
    assert outcome.state == "FAIL" and outcome.config_error is None
    assert "RuntimeError: this model always fails" in outcome.summary["error"]
    assert outcome.summary["stop_reason"] == "failed"


def test_objective_metric_never_logged_lists_what_was_logged(make_study):
    path = make_study({"objective": {"metric": "val_accuracy", "direction": "maximize"}})
    _, _, _, outcome = _run(path)
    assert outcome.state == "FAIL" and outcome.config_error is not None
    message = str(outcome.config_error)
    assert message.startswith("objective.metric: the module never logs 'val_accuracy'")
    assert "val_acc" in message and "val_loss" in message


def test_module_from_old_pytorch_lightning_package(make_study):
    path = make_study({"model": {"class": f"{TOY}:OldStyleMLP"}, "data": {"class": f"{TOY}:OldStyleData"},
                       "search_space": {"_replace": True, "lr": {"type": "float", "low": 1e-3, "high": 1e-2}}})
    _, _, _, outcome = _run(path)
    assert outcome.state == "COMPLETE", outcome.summary["error"]
    assert outcome.summary["lightning_namespace"] == "pytorch_lightning"


def test_last_checkpoint_every_epoch_is_a_link_to_best_when_it_improved(make_study):
    """last.ckpt holds the last epoch whether or not it improved; when it did, it is the best file (written once)."""
    _, _, _, outcome = _run(make_study({"trainer": {"max_epochs": 4}}),
                            fixed={"lr": 0.01, "width": 64, "optimizer": "adam"})
    s = outcome.summary
    assert outcome.state == "COMPLETE", s["error"]
    last, best = Path(s["checkpoints"]["last"]), Path(s["checkpoints"]["best"])
    assert torch.load(last, weights_only=False)["epoch"] == 3
    best_epoch = max(s["history"], key=lambda h: h["val_acc"])["epoch"]
    assert torch.load(best, weights_only=False)["epoch"] == best_epoch
    assert last.samefile(best) == (best_epoch == 3)
    assert not list(last.parent.glob("*.link"))
