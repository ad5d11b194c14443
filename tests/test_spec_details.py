"""Spec details that are easy to get wrong: storage paths, DDP strategy, budgets, per-worker seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeplight._errors import SpecError
from sweeplight._samplers import build_sampler
from sweeplight._spec import load_spec
from sweeplight._storage import storage_file


@pytest.mark.parametrize(("storage", "expected"), [
    (None, "runs/tiny/study.db"),
    ("shared/study.log", "shared/study.log"),
    ("journal:///shared/j.log", "shared/j.log"),
    ("sqlite:///db/s.db", "db/s.db"),
])
def test_relative_storage_paths_start_at_the_study_file(make_study, tmp_path, storage, expected):
    spec = load_spec(make_study({"storage": storage} if storage else {}))
    assert storage_file(spec.storage) == tmp_path / expected


def test_absolute_journal_path(make_study, tmp_path):
    spec = load_spec(make_study({"storage": f"journal:///{tmp_path}/abs.log"}))
    assert spec.storage == f"journal:///{tmp_path}/abs.log" and storage_file(spec.storage) == tmp_path / "abs.log"


def test_auto_strategy_with_several_devices_becomes_ddp(make_study):
    spec = load_spec(make_study({"trainer": {"devices": 2, "accelerator": "cpu"}}))
    assert spec.trainer.strategy == "ddp"


def test_spawn_strategies_are_refused(make_study):
    with pytest.raises(SpecError, match=r"trainer.strategy: got 'ddp_spawn'; sweeplight starts the DDP ranks"):
        load_spec(make_study({"trainer": {"devices": 2, "strategy": "ddp_spawn"}}))


def test_searching_patience_with_early_stopping_off_is_refused(make_study):
    path = make_study({"trainer": {"early_stopping": False}, "search_space": {"trainer.patience": [2, 4]}})
    with pytest.raises(SpecError, match=r"search_space.trainer.patience: searches an early-stopping setting"):
        load_spec(path)


def test_max_failures_null_means_no_limit(make_study):
    assert load_spec(make_study({"budget": {"n_trials": 3, "max_failures": None}})).budget.max_failures is None


def test_each_worker_gets_its_own_sampler_seed(make_study):
    import optuna

    spec = load_spec(make_study({"sampler": {"name": "random", "seed": 5}}))
    firsts = []
    for worker in (0, 1, 0):
        study = optuna.create_study(sampler=build_sampler(spec, worker=worker))
        firsts.append(study.ask().suggest_float("x", 0, 1))
    assert firsts[0] == firsts[2] != firsts[1]


def test_set_overrides_nested_and_dotted_keys(make_study):
    path = make_study({"search_space": {"trainer.gradient_clip_val": {"type": "float", "low": 0.1, "high": 1.0}}})
    spec = load_spec(path, ["search_space.trainer.gradient_clip_val.high=2", "budget.n_trials=7",
                            "trainer.early_stopping.patience=9"])
    param = next(p for p in spec.search_space if p.name == "trainer.gradient_clip_val")
    assert param.high == 2 and spec.budget.n_trials == 7 and spec.trainer.early_stopping["patience"] == 9
    assert Path(spec.root).name == "runs"
