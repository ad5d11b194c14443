"""The HTML report of real studies, opened in headless chromium: self-contained, no JavaScript errors, every figure
drawn, pruned and early-stopped trials marked, the table sortable; and studies with nothing to draw still render."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import plotly.offline
import pytest
import yaml

from sweeplight._launch import prepare
from sweeplight._report import FIGURE_IDS, render_report, suggest_slurm_time, trial_kind, write_report
from sweeplight._spec import load_spec
from sweeplight._storage import load_study
from sweeplight.analysis import StudyResults, curves_frame, load_results, trials_frame

from .chromium import dump_dom, pre_json, screenshot, selfcheck
from .conftest import BASE, REPO, TOY, _merge, run_cli_all

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "tests" / "artifacts"

# One worker and a seeded random sampler make the trials reproducible: with early stopping at patience 1 and a
# large min_delta, trials 0, 1 and 5 stop early, 2 and 4 run all epochs and 3 is pruned by the median pruner.
FINISHED = {
    "name": "report",
    "search_space": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}, "trainer.patience": [1, 10]},
    "sampler": {"name": "random", "seed": 3},
    "pruner": {"name": "median", "options": {"n_startup_trials": 3, "n_warmup_steps": 0}},
    "budget": {"n_trials": 6},
    "trainer": {"max_epochs": 3, "early_stopping": {"patience": 3, "min_delta": 0.1}},
    "executor": {"workers": 1},
}


def _study_file(directory: Path, changes: dict[str, Any]) -> Path:
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, {"root": str(directory / "runs"), **changes}), sort_keys=False))
    return path


FAILING = {"name": "failing", "model": {"class": f"{TOY}:AlwaysFailingMLP"},
           "budget": {"n_trials": 2, "max_failures": 2}}


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """The module's two real studies, launched side by side: FINISHED and FAILING -> (study file, launch output)."""
    paths = {"finished": _study_file(tmp_path_factory.mktemp("report"), FINISHED),
             "failing": _study_file(tmp_path_factory.mktemp("failing"), FAILING)}
    results = run_cli_all(*[("study", "launch", str(path), "--no-progress") for path in paths.values()])
    return {name: (path, result) for (name, path), result in zip(paths.items(), results, strict=True)}


@pytest.fixture(scope="module")
def finished(launched) -> Path:
    """A real finished study with complete, early-stopped and pruned trials, and its report at the default path."""
    path, result = launched["finished"]
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def report(finished: Path) -> Path:
    return write_report(finished)


@pytest.fixture(scope="module")
def check(report: Path) -> dict[str, Any]:
    return selfcheck(report)


def _figure_traces(page: str, fig_id: str) -> list[dict[str, Any]]:
    """The traces the page passes to ``Plotly.newPlot`` for one figure."""
    match = re.search(rf'Plotly\.newPlot\(\s*"{re.escape(fig_id)}",\s*', page)
    assert match is not None, f"{fig_id} is not plotted"
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    return traces


def _assert_clean(check: dict[str, Any]) -> None:
    assert check["stage"] == "settled"
    assert check["errors"] == []
    assert check["plotly"] == "object"


# --------------------------------------------------------------------------------------------------- finished study


def test_report_is_one_self_contained_file(finished, report):
    assert report == load_spec(finished).directory / "report.html"
    page = report.read_text(encoding="utf-8")
    plotly_js = plotly.offline.get_plotlyjs()
    assert page.count(plotly_js) == 1  # inlined exactly once
    assert page.index("window.__sweeplightErrors") < page.index(plotly_js) < page.index("</head>")
    rest = page.replace(plotly_js, "")  # plotly.js itself names URLs (map tiles) that a report never uses
    assert 'src="http' not in rest and "cdn.plot.ly" not in rest and "<link" not in rest
    assert re.findall(r"https?://", rest) == []
    assert rest.count("<script src") == 0
    for fig_id in FIGURE_IDS:
        assert f'id="{fig_id}" class="plotly-graph-div sweeplight-figure"' in rest


def test_report_renders_every_figure_in_chromium(finished, report, check):
    _assert_clean(check)
    trials = trials_frame(finished)
    curves = curves_frame(finished)
    figures = check["figures"]
    assert sorted(figures) == sorted(FIGURE_IDS)
    assert all(count >= 1 for count in figures.values()), figures
    with_history = curves[curves["metric"] == "val_acc"]["trial"].nunique()
    assert with_history == len(trials) and figures["fig-curves"] == with_history  # one curve per trial
    assert check["tableRows"] == len(trials) == 6


def test_report_header_table_and_best_trial(finished, report):
    page = report.read_text(encoding="utf-8")
    trials = trials_frame(finished)
    body = page.split('<tbody>', 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr") == len(trials)
    counts = trials["state"].value_counts()
    assert f"{len(trials)}: {counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, 0 fail" in page
    assert "val_acc (maximize)" in page and "sqlite:///" in page
    best = trials[trials["state"] == "COMPLETE"].sort_values("objective").iloc[-1]
    best_section = page.split('<section id="best">', 1)[1]
    assert f"<th>trial</th><td>{best['number']}</td>" in best_section
    assert "test.test_acc" in best_section and f"trials/{best['number']}/checkpoints/best-" in best_section
    assert re.search(r"<code>--time=\d\d:\d\d:00</code>", page)
    for column in ("params.lr", "params.dropout", "stop_reason", "wall_time_s", "peak_rss_mb", "host", "worker"):
        assert f">{column}</th>" in page


def test_pruned_and_early_stopped_trials_are_marked_in_the_curves(finished, report):
    trials = trials_frame(finished)
    kinds = {int(r["number"]): trial_kind(r["state"], r["stop_reason"]) for r in trials.to_dict("records")}
    assert {"pruned", "early stopped", "complete"} <= set(kinds.values()), kinds
    traces = {t["meta"]["trial"]: t for t in _figure_traces(report.read_text(encoding="utf-8"), "fig-curves")}
    assert sorted(traces) == sorted(kinds)
    for number, kind in kinds.items():
        trace = traces[number]
        assert trace["legendgroup"] == kind and trace["legendgrouptitle"]["text"] == kind
        end_marker = trace["marker"]["size"][-1]
        if kind == "pruned":
            assert trace["line"]["dash"] == "dash" and trace["marker"]["symbol"] == "x" and end_marker > 0
        elif kind == "early stopped":
            assert trace["line"]["dash"] == "dot" and trace["marker"]["symbol"] == "diamond" and end_marker > 0
        else:
            assert trace["line"]["dash"] == "solid" and end_marker == 0
    pruned = [n for n, k in kinds.items() if k == "pruned"]
    assert {traces[n]["line"]["color"] for n in pruned} != {traces[n]["line"]["color"] for n in kinds
                                                           if kinds[n] == "complete"}


def test_screenshot_is_saved_as_an_artifact(report):
    png = screenshot(report, ARTIFACTS / "report-finished.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_trial_table_sorts_and_filters_in_chromium(finished, report, tmp_path):
    """Click the objective header twice and type into the filter, in the real page."""
    probe = """<pre id="test-probe"></pre><script>
window.addEventListener("load", function () {
  var table = document.getElementById("trial-table");
  var header = Array.prototype.filter.call(table.tHead.rows[0].cells,
    function (th) { return th.textContent === "objective"; })[0];
  function column() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[header.cellIndex]
      .getAttribute("data-sort"); });
  }
  header.click(); var ascending = column();
  header.click(); var descending = column();
  var filter = document.getElementById("trial-filter");
  filter.value = "pruned"; filter.dispatchEvent(new Event("input"));
  var shown = Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; }).length;
  document.getElementById("test-probe").textContent = JSON.stringify(
    {ascending: ascending, descending: descending, shown: shown, errors: window.__sweeplightErrors});
});
</script></body>"""
    page = tmp_path / "probe.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", probe, 1), encoding="utf-8")
    result = pre_json(dump_dom(page), "test-probe")
    objectives = sorted(trials_frame(finished)["objective"].tolist())
    assert [float(v) for v in result["ascending"]] == pytest.approx(objectives)
    assert [float(v) for v in result["descending"]] == pytest.approx(objectives[::-1])
    assert result["shown"] == (trials_frame(finished)["state"] == "PRUNED").sum()
    assert result["errors"] == []


def test_report_of_loaded_results_to_a_chosen_path_masks_the_storage(finished, tmp_path):
    results = load_results(finished)[0]
    out = write_report(results, tmp_path / "elsewhere" / "r.html")
    assert out.is_file() and "sqlite:///" in out.read_text(encoding="utf-8")
    page = render_report(results, storage="postgresql://me:secret@db.example.org/sweeps")
    assert "secret" not in page and "postgresql://me:***@db.example.org/sweeps" in page


# ---------------------------------------------------------------------------------------- nothing finished, or failed


def _no_figure_errors(report: Path, allowed: set[str]) -> dict[str, Any]:
    check = selfcheck(report)
    _assert_clean(check)
    assert set(check["figures"]) <= allowed and all(n >= 1 for n in check["figures"].values()), check
    return check


def test_study_without_finished_trials_renders(make_study):
    path = make_study({"name": "fresh"})
    study = prepare(load_spec(path), progress=False)  # created, no worker started
    report = write_report(path)
    text = report.read_text(encoding="utf-8")
    assert "No trials yet" in text and "no finished trials" in text
    check = _no_figure_errors(report, set())
    assert check["figures"] == {} and check["tableRows"] == 0

    study.ask()  # one running trial (no worker attribute), one waiting
    study.enqueue_trial({"lr": 0.01, "width": 32, "optimizer": "adam"})
    text = write_report(path).read_text(encoding="utf-8")
    assert "No finished trials yet: 1 running, 1 waiting" in text
    assert "no optimization history to draw" in text and "Running trials end at the time of this report" in text
    check = _no_figure_errors(report, {"fig-timeline"})
    assert check["figures"] == {"fig-timeline": 1} and check["tableRows"] == 2


def test_study_with_only_failed_trials_renders(launched):
    path, _ = launched["failing"]  # the launch stops with an error: every trial fails
    states = {t.state.name for t in load_study(load_spec(path)).get_trials()}
    assert states == {"FAIL"}
    text = write_report(path).read_text(encoding="utf-8")
    assert "No complete trials: all 2 finished trials failed or were pruned (2 failed, 0 pruned)" in text
    assert "no optimization history to draw" in text and "no best trial to draw" in text
    assert "No SLURM --time suggestion" in text and "No learning curves" in text
    assert ">error</th>" in text and text.count("RuntimeError: this model always fails") == 2
    check = _no_figure_errors(load_spec(path).directory / "report.html", {"fig-walltime", "fig-timeline"})
    assert check["tableRows"] == 2


# ------------------------------------------------------------------------------------------------------ pure parts


def test_suggest_slurm_time_is_p95_times_margin_plus_startup_in_minutes():
    assert suggest_slurm_time([100.0] * 20) == "--time=00:04:00"  # 125 + 60 = 185 s -> 4 min
    assert suggest_slurm_time([48.0]) == "--time=00:02:00"  # exactly 120 s stays 2 min
    # p95 of 60, 120, ..., 1200 is 1143 s (linear interpolation); 1143 * 1.25 + 60 = 1488.75 s -> 25 min
    assert suggest_slurm_time([60.0 * i for i in range(1, 21)]) == "--time=00:25:00"
    assert suggest_slurm_time([36000.0]) == "--time=12:31:00"
    assert suggest_slurm_time([100000.0]) == "--time=34:45:00"  # hours beyond a day, as SLURM accepts them
    assert suggest_slurm_time([600.0], margin=1.0, startup_s=0.0) == "--time=00:10:00"
    assert suggest_slurm_time([None, float("nan"), 100.0]) == suggest_slurm_time([100.0])
    assert suggest_slurm_time([]) is None and suggest_slurm_time([None, float("nan")]) is None


def test_trial_kind():
    assert trial_kind("COMPLETE", "max_epochs") == "complete"
    assert trial_kind("COMPLETE", "early_stopping") == "early stopped"
    assert trial_kind("PRUNED", "pruned") == "pruned"
    assert trial_kind("FAIL", None) == "failed"
    assert trial_kind("RUNNING", None) == "running" and trial_kind("WAITING", None) == "waiting"


# ----------------------------------------------------------------------------------- unusual studies, in memory


def _no_params(trial: optuna.Trial) -> float:
    return 1.0


def _two_params(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1) + trial.suggest_int("n", 1, 5)


def _flat(trial: optuna.Trial) -> float:
    return 1.0 + 0 * trial.suggest_float("x", 0, 1) + 0 * trial.suggest_float("y", 0, 1)


def _pruned(trial: optuna.Trial) -> float:
    trial.report(1.0, 0)
    raise optuna.TrialPruned()


OPTUNA_FIGURES = {"fig-history", "fig-parallel", "fig-importance", "fig-slice", "fig-contour"}
TIMING_FIGURES = {"fig-walltime", "fig-timeline"}  # no summaries: no curves, no epoch times


@pytest.mark.parametrize(("objective", "n_trials", "drawn"), [
    (_two_params, 5, OPTUNA_FIGURES),
    (_two_params, 1, {"fig-history", "fig-parallel", "fig-slice"}),  # too few trials for importance and contour
    (_flat, 4, OPTUNA_FIGURES - {"fig-importance"}),  # importance of a constant objective: a note instead
    (_no_params, 3, {"fig-history"}),
    (_pruned, 2, set()),
])
def test_unusual_studies_draw_only_figures_with_traces(objective: Callable[[optuna.Trial], float], n_trials: int,
                                                       drawn: set[str]):
    """Studies without summaries (e.g. synced from elsewhere): each figure either has traces or is a note."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)
    results = StudyResults(name="memory", direction="minimize", metric="loss", directory=None, trials=study.trials)
    page = render_report(results)
    found = set(re.findall(r'id="(fig-[a-z-]+)" class="plotly-graph-div sweeplight-figure"', page))
    assert found == drawn | TIMING_FIGURES
    for fig_id in found:
        assert _figure_traces(page, fig_id), fig_id
