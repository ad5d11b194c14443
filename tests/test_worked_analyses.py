"""The worked analyses in analysis/ run on real studies and their numbers are right, not just drawn.

Two tiny studies are launched once for the module: the same random search (same seed, so the same configurations)
without pruning and with a median pruner, which prunes after the first epoch. The scripts' ``main`` runs in-process;
their building blocks are called again to check the numbers behind the figures.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import yaml
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, confusion_matrix

from analysis import compare_studies, digits_best_model
from sweeplight.analysis import best_trial, load_best_model, load_results, trials_frame

from .conftest import BASE, DIGITS, REPO, _merge, run_cli_all

pytestmark = pytest.mark.slow

TEST_SIZE = int(len(load_digits().target) * 0.15)  # DigitsDataModule's default test_fraction: 269 images


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Study files of two studies launched side by side, 3 trials of 3 epochs each: 'plain' (no pruner) and
    'pruned'."""
    root = tmp_path_factory.mktemp("worked")
    paths = {}
    for name, pruner in (("plain", "none"), ("pruned", {"name": "median", "options": {"n_startup_trials": 1}})):
        data = _merge(BASE, {"name": name, "root": str(root / "runs"), "pruner": pruner, "budget": {"n_trials": 3},
                             "trainer": {"max_epochs": 3}})
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(data, sort_keys=False))
    for result in run_cli_all(*[("study", "launch", str(path), "--no-progress") for path in paths.values()]):
        assert result.returncode == 0, result.stdout + result.stderr
    return paths


def _assert_offline_html(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "<script src=" not in text  # include_plotlyjs="cdn" would load https://cdn.plot.ly/plotly-*.min.js
    assert text.count("* plotly.js v") == 1  # the library inline, once per page however many figures


def test_best_model_script_writes_both_views_and_agrees_with_the_recorded_accuracy(studies, capsys):
    assert digits_best_model.main([str(studies["plain"]), "--strict"]) == 0
    out = capsys.readouterr().out
    directory = load_results(studies["plain"])[0].directory
    for name in ("errors.html", "hidden_pca.html"):  # the default --out: <study dir>/analysis
        assert f"wrote {directory / 'analysis' / name}" in out
        _assert_offline_html(directory / "analysis" / name)
    correct, total = map(int, re.search(r"test accuracy [\d.]+ \((\d+)/(\d+)\)", out).groups())
    assert total == TEST_SIZE
    best = best_trial(studies["plain"], write_rerun=False)
    assert abs(correct / total - best.test_metrics["test_acc"]) <= 1e-6
    assert "agrees" in out and "DISAGREES" not in out


def test_the_numbers_behind_the_figures(studies):
    best = best_trial(studies["plain"], write_rerun=False)
    model = load_best_model(studies["plain"])
    datamodule = digits_best_model.rebuild_datamodule(model, best.params, load_results(studies["plain"])[0].directory)
    predictions = digits_best_model.predict(model, datamodule)

    matrix = confusion_matrix(predictions.labels, predictions.predicted, labels=list(range(10)))
    assert matrix.sum() == len(datamodule.test_set) == TEST_SIZE
    accuracy = np.trace(matrix) / matrix.sum()
    assert accuracy == pytest.approx(accuracy_score(predictions.labels, predictions.predicted), abs=1e-12)
    assert accuracy == pytest.approx(best.test_metrics["test_acc"], abs=1e-6)  # the trial's own test run
    assert predictions.loss == pytest.approx(best.test_metrics["test_loss"], rel=1e-5)
    assert predictions.hidden.shape == (TEST_SIZE, best.params["width"])  # the last hidden layer, not the logits

    confusion = digits_best_model.confusion_figure(matrix, "t")
    heatmap = next(trace for trace in confusion.data if isinstance(trace, go.Heatmap))
    assert np.asarray(heatmap.z).sum() == TEST_SIZE
    assert f"({np.trace(matrix)}/{TEST_SIZE})" in confusion.layout.title.text

    wrong = int((predictions.labels != predictions.predicted).sum())
    mistakes = digits_best_model.mistakes_figure(predictions, datamodule, 12)
    assert len(mistakes.data) == min(12, wrong)
    images, kind = digits_best_model.pixels_for_display(predictions, datamodule)
    assert kind.startswith("raw")  # the standardisation was undone exactly
    assert images.min() >= 0 and images.max() <= 16

    pca = digits_best_model.pca_figure(predictions, "t")
    assert sum(len(trace.x) for trace in pca.data) == TEST_SIZE  # one point per test image
    crosses = sum(int((np.asarray(trace.marker.symbol) == "x").sum()) for trace in pca.data)
    assert crosses == wrong


def test_a_wrongly_rebuilt_split_is_reported(studies, monkeypatch, capsys):
    # A 20% test split has 359 images: no count out of 359 equals the recorded accuracy out of 269.
    monkeypatch.setattr(digits_best_model, "fixed_data_args", lambda directory: {"test_fraction": 0.2})
    assert digits_best_model.main([str(studies["plain"]), "--strict", "--out", str(studies["plain"].parent)]) == 1
    out = capsys.readouterr().out
    assert "/359)" in out and "DISAGREES" in out


def test_the_data_module_is_built_as_the_trial_built_it(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("digits_worked_analyses", DIGITS)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as sweeplight registers the study's file
    spec.loader.exec_module(module)
    (tmp_path / "spec.json").write_text(json.dumps({"raw": {"data": {"class": "digits.py:DigitsDataModule",
                                                                     "args": {"test_fraction": 0.2}}}}))
    params = {"data.batch_size": 32, "width": 64, "model.split_seed": 5, "lr": 0.01}
    datamodule = digits_best_model.rebuild_datamodule(module.DigitsMLP(), params, tmp_path)
    assert (datamodule.batch_size, datamodule.test_fraction, datamodule.split_seed) == (32, 0.2, 0)
    assert len(datamodule.test_set) == int(len(load_digits().target) * 0.2)


def test_compare_studies(studies, tmp_path, capsys):
    out_file = tmp_path / "compare.html"
    assert compare_studies.main([str(studies["plain"]), str(studies["pruned"]), "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    _assert_offline_html(out_file)
    assert re.search(r"^study\s+plain\s+pruned$", printed, re.MULTILINE)  # the table, one column per study

    loaded = [compare_studies.load_one(str(studies[name])) for name in ("plain", "pruned")]
    frames = {study.name: compare_studies.progress(trials_frame(study), study.direction) for study in loaded}
    summary = compare_studies.summarize(frames, {study.name: study.direction for study in loaded})
    epochs = {}
    for study in loaded:
        trials = trials_frame(study)
        counts = trials["state"].value_counts()
        row = summary.loc[study.name]
        assert row["trials"] == len(trials) == 3
        for state in ("COMPLETE", "PRUNED", "FAIL"):
            assert row[state] == counts.get(state, 0)
        complete = trials.loc[trials["state"] == "COMPLETE", "objective"]
        assert row["best value"] == complete.max() == trials["objective"].max()
        assert row["best value"] == best_trial(studies[study.name], write_rerun=False).value
        assert row["epochs trained"] == trials["epochs"].sum()
        assert frames[study.name]["best_so_far"].iloc[-1] == row["best value"]
        epochs[study.name] = row["epochs trained"]
    assert summary.loc["plain", "PRUNED"] == 0 and summary.loc["plain", "COMPLETE"] == 3
    assert summary.loc["plain", "epochs trained"] == 9  # 3 trials x 3 epochs, none stopped early
    # Same seed, same configurations: the median pruner stops the weak ones after their first epoch.
    assert summary.loc["pruned", "PRUNED"] >= 1 and epochs["pruned"] < epochs["plain"]

    figure = compare_studies.progress_figure(frames, "val_acc")
    assert len(figure.data) == 4  # each study against trial number and against cumulative epochs
    assert {trace.xaxis for trace in figure.data} == {"x", "x2"}


def test_scripts_run_from_the_command_line():
    for script in ("digits_best_model.py", "compare_studies.py"):
        result = subprocess.run([sys.executable, f"analysis/{script}", "--help"], capture_output=True, text=True,
                                cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage:") and f"python analysis/{script}" in result.stdout
