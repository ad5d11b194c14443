"""The analysis frames agree with the storage and the summaries; export, best and the re-run of the best trial."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from sweeplight._spec import load_spec
from sweeplight._storage import load_study
from sweeplight.analysis import best_trial, curves_frame, export, load_best_model, trials_frame

from .conftest import BASE, REPO, _merge, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real study: 5 trials, sgd-only momentum (a conditional parameter), a median pruner that prunes some."""
    directory = tmp_path_factory.mktemp("analysis")
    data = _merge(BASE, {"root": str(directory / "runs"), "budget": {"n_trials": 5},
                         "sampler": {"name": "random", "seed": 3},
                         "pruner": {"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
                         "trainer": {"max_epochs": 3}})
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("study", "launch", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    return path


def _summaries(path: Path) -> dict[int, dict]:
    directory = load_spec(path).directory
    return {int(p.parent.name): json.loads(p.read_text()) for p in directory.glob("trials/*/summary.json")}


def test_trials_frame_agrees_with_storage_and_summaries(study_path):
    frame = trials_frame(study_path)
    trials = {t.number: t for t in load_study(load_spec(study_path)).get_trials()}
    summaries = _summaries(study_path)
    assert sorted(frame["number"]) == sorted(trials) and len(frame) == 5
    assert set(frame["study"]) == {"tiny"}
    for row in frame.to_dict("records"):
        trial, summary = trials[row["number"]], summaries[row["number"]]
        assert row["state"] == trial.state.name == summary["state"]
        if trial.state.name == "COMPLETE":
            assert row["objective"] == pytest.approx(trial.value) == pytest.approx(summary["objective"]["value"])
        assert row["epochs"] == summary["epochs"] == len(summary["history"])
        assert row["stop_reason"] == summary["stop_reason"]
        assert row["best.val_acc"] == pytest.approx(summary["metrics"]["best"]["val_acc"])
        assert row["wall_time_s"] == summary["wall_time_s"] and row["peak_rss_mb"] == summary["peak_rss_mb"]
        assert row["params.lr"] == pytest.approx(trial.params["lr"])
        if trial.params["optimizer"] == "sgd":
            assert row["params.momentum"] == pytest.approx(trial.params["momentum"])
        else:  # a conditional parameter that was not sampled
            assert math.isnan(row["params.momentum"])
        assert row["worker"] == 0 and row["duration_s"] > 0 and row["summary"].endswith("summary.json")
    assert "PRUNED" in set(frame["state"])  # the median pruner did stop some
    pruned = frame[frame["state"] == "PRUNED"]
    assert (pruned["stop_reason"] == "pruned").all() and pruned["objective"].notna().all()
    assert frame.columns[:4].tolist() == ["study", "number", "state", "objective"]


def test_curves_frame_is_the_learning_curves(study_path):
    curves = curves_frame(study_path)
    summaries = _summaries(study_path)
    assert curves.columns.tolist() == ["study", "trial", "epoch", "metric", "value"]
    for number, summary in summaries.items():
        val = curves[(curves["trial"] == number) & (curves["metric"] == "val_acc")].sort_values("epoch")
        assert val["epoch"].tolist() == list(range(summary["epochs"]))
        expected = [summary["intermediate_values"][str(e)] for e in val["epoch"]]
        assert val["value"].tolist() == pytest.approx(expected)
    assert {"train_loss", "val_loss", "val_acc"} <= set(curves["metric"])


def test_a_storage_url_loads_every_study_inside(study_path):
    spec = load_spec(study_path)
    by_url = trials_frame(spec.storage)
    by_file = trials_frame(study_path)
    pd.testing.assert_frame_equal(by_url.drop(columns=["params.momentum"]), by_file.drop(columns=["params.momentum"]),
                                  check_like=True)


def test_export_writes_both_tables(study_path, tmp_path):
    for fmt, read in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        result = run_cli("study", "export", str(study_path), "--format", fmt, "--out", str(tmp_path / fmt))
        assert result.returncode == 0, result.stderr
        trials, curves = read(tmp_path / fmt / f"trials.{fmt}"), read(tmp_path / fmt / f"curves.{fmt}")
        expected = trials_frame(study_path)
        assert len(trials) == len(expected) and trials["number"].tolist() == expected["number"].tolist()
        assert trials["objective"].tolist() == pytest.approx(expected["objective"].tolist(), nan_ok=True)
        assert len(curves) == len(curves_frame(study_path))
    assert export(study_path, tmp_path / "api", fmt="csv")[0].name == "trials.csv"


def test_best_prints_params_and_reruns_exactly(study_path):
    result = run_cli("study", "best", str(study_path))
    assert result.returncode == 0, result.stderr
    best = best_trial(study_path, write_rerun=True)
    frame = trials_frame(study_path)
    complete = frame[frame["state"] == "COMPLETE"]
    assert best.value == pytest.approx(complete["objective"].max())
    printed = yaml.safe_load(result.stdout.split("checkpoint:")[0])
    assert printed["params"] == best.params
    assert f"re-run: sweeplight study launch {best.rerun_file}" in result.stdout
    assert best.checkpoint is not None and best.checkpoint.is_file()

    rerun = subprocess.run(best.rerun_command.split()[0:1] + best.rerun_command.split()[1:] + ["--no-progress"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    again = best_trial(best.rerun_file, write_rerun=False)
    assert again.params == best.params
    assert again.value == pytest.approx(best.value, abs=1e-6)  # deterministic on CPU: the same objective
    assert again.test_metrics == pytest.approx(best.test_metrics, abs=1e-6)


def test_load_best_model_is_the_checkpointed_model(study_path):
    model = load_best_model(study_path)
    best = best_trial(study_path, write_rerun=False)
    state = torch.load(best.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_best_of_a_study_without_completed_trials_is_one_line(make_study):
    path = make_study({"budget": {"n_trials": 1}})
    from sweeplight._launch import prepare

    prepare(load_spec(path), progress=False)
    result = run_cli("study", "best", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: study 'tiny' has no completed trial yet (0 trials); see sweeplight study "
                                     "status")
