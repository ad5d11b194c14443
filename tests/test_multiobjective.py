"""Multi-objective studies and constraints: the study file, real studies through the CLI, the frame and the report.

The real studies train the digits MLP on one local worker each; the module launches its three studies at once. Widths
16 and 128 at depth 1 or 2 give models of 1,210 to 26,122 parameters, so ``param_count <= 5000`` makes the wide ones
infeasible.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import optuna
import pytest

from sweeplight._constraints import Constraint, parse_constraints, score
from sweeplight._errors import SpecError
from sweeplight._pareto import dominates, pareto_rows
from sweeplight._report import write_report
from sweeplight._spec import load_spec
from sweeplight._storage import load_study
from sweeplight.analysis import best_trial, best_trials, trials_frame
from sweeplight.cli import main

from .chromium import selfcheck
from .conftest import BASE, _merge, run_cli, run_cli_all

TWO = [{"metric": "val_acc", "direction": "maximize"}, {"metric": "param_count", "direction": "minimize"}]
SPACE = {"_replace": True, "width": [16, 128], "depth": [1, 2], "lr": {"type": "float", "low": 3e-3, "high": 3e-2}}
LIMIT = 5000


def _params(width: int, depth: int) -> int:
    """The digits MLP's parameter count: 64 inputs, ``depth`` hidden layers of ``width``, 10 outputs."""
    return 64 * width + width + (depth - 1) * (width * width + width) + width * 10 + 10


def _traces(page: str, fig_id: str) -> list[dict]:
    """The traces the report passes to ``Plotly.newPlot`` for one figure."""
    match = re.search(rf'Plotly\.newPlot\(\s*"{re.escape(fig_id)}",\s*', page)
    assert match is not None, f"{fig_id} is not plotted"
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    return traces


def _spec(changes: dict) -> dict:
    return _merge(BASE, changes)


# ----------------------------------------------------------------------------------------------- the study file


def test_a_list_of_objectives_makes_a_multi_objective_study(tmp_path):
    spec = load_spec(_spec({"root": str(tmp_path), "objective": TWO, "pruner": None,
                            "constraints": ["param_count <= 6e4", "val_loss > 0.01"]}))
    assert [o.metric for o in spec.objectives] == ["val_acc", "param_count"] and spec.multi_objective
    assert spec.objective == spec.objectives[0]  # single-objective code paths keep working
    assert spec.constraints == (Constraint("param_count", "<=", 60000.0, "param_count <= 6e4"),
                                Constraint("val_loss", ">", 0.01, "val_loss > 0.01"))
    raw = _spec({"root": str(tmp_path), "objective": TWO})
    del raw["pruner"]
    assert load_spec(raw).pruner.name == "none"  # no pruner by default: Optuna cannot prune several objectives
    single = load_spec(_spec({"root": str(tmp_path)}))
    assert not single.multi_objective and single.objectives == (single.objective,) and single.constraints == ()


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"objective": [TWO[0], {"metric": "param_count", "direction": "minimise"}]}, "objective[1].direction",
     "got 'minimise' (did you mean 'minimize'?); allowed: maximize, minimize"),
    ({"objective": TWO, "pruner": "median"}, "pruner",
     "got 'median'; Optuna cannot prune multi-objective studies; set pruner: {name: none}"),
    ({"objective": TWO, "pruner": "none", "sampler": "cmaes"}, "sampler.name", "cmaes cannot search a multi-objective"),
    ({"objective": [TWO[1], TWO[0]], "pruner": "none"}, "objective[0].metric", "put a metric the module logs first"),
    ({"objective": [TWO[0], {**TWO[1], "value": "last"}], "pruner": "none"}, "objective[1].value",
     "give value on objective[0] only"),
    ({"objective": [TWO[0], TWO[0]], "pruner": "none"}, "objective[1].metric", "is listed twice"),
    ({"objective": {"metric": ["val_acc", "val_loss"], "direction": "maximize"}}, "objective",
     "give several objectives as a list of mappings"),
    ({"constraints": ["param_count =< 5"]}, "constraints[0]", "write 'METRIC OP NUMBER' with OP one of <=, <, >=, >"),
    ({"constraints": ["val_acc >= 0.9", "val_loss < small"]}, "constraints[1]", "'small' is not a number"),
    ({"constraints": ["val_loss < nan"]}, "constraints[0]", "the bound must be a finite number"),
    ({"constraints": "param_count <= 5"}, "constraints", "expected a list of strings"),
    ({"constraints": [{"param_count": 5}]}, "constraints[0]", "expected a string"),
])
def test_bad_input_is_one_line_naming_the_field(tmp_path, changes, field, message):
    with pytest.raises(SpecError) as caught:
        load_spec(_spec({"root": str(tmp_path), **changes}))
    assert caught.value.field == field
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_validate_prints_one_line_and_notes_a_sampler_that_ignores_constraints(make_study, capsys):
    bad = run_cli("study", "validate", str(make_study({"objective": TWO, "pruner": "hyperband"})))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "error: pruner: got 'hyperband'; Optuna cannot prune multi-objective studies; set pruner: {name: none}"]
    # The valid ones in this process: the same command without a second import of torch and Lightning.
    assert main(["study", "validate", str(make_study({"constraints": ["param_count <= 100"]}, name="c.yaml"))]) == 0
    ok = capsys.readouterr()
    assert ok.out.startswith("ok: study 'tiny'"), ok.err
    assert ("note: sampler random ignores constraints; each trial's feasibility is still recorded (samplers that use "
            "them: tpe, nsgaii, nsgaiii, gp)") in ok.out
    assert main(["study", "validate", str(make_study({"constraints": ["param_count <= 100"], "objective": TWO,
                                                      "sampler": "nsgaiii", "pruner": "none"}, name="t.yaml"))]) == 0
    tpe = capsys.readouterr()
    assert tpe.out.startswith("ok: study 'tiny'") and "note:" not in tpe.out, tpe.err


# ------------------------------------------------------------------------------------------------- pure parts


def test_pareto_rows_match_the_definition():
    rng = random.Random(7)
    for _ in range(200):
        n, k = rng.randint(0, 12), rng.randint(1, 3)
        directions = [rng.choice(["maximize", "minimize"]) for _ in range(k)]
        values = [None if rng.random() < 0.1 else [float(rng.randint(0, 4)) for _ in range(k)] for _ in range(n)]
        candidates = [rng.random() < 0.85 for _ in range(n)]
        usable = [i for i in range(n) if candidates[i] and values[i] is not None]
        expected = [i in usable and not any(dominates(values[j], values[i], directions) for j in usable)
                    for i in range(n)]
        assert pareto_rows(values, directions, candidates) == expected


def test_constraint_values_are_what_optuna_expects(tmp_path):
    le, ge = parse_constraints(["param_count <= 100", "val_acc >= 0.9"])
    assert le.violation(80) == -20 and le.violation(130) == 30 and ge.violation(0.95) == pytest.approx(-0.05)
    objectives = load_spec(_spec({"root": str(tmp_path), "objective": TWO, "pruner": "none"})).objectives
    scored = score(objectives, (le, ge), 0.92, {"val_acc": 0.92, "epoch": 1}, {"param_count": 130.0})
    assert scored.values == [0.92, 130.0] and scored.feasible is False and scored.missing is None
    assert [c["violation"] for c in scored.constraints] == [30.0, pytest.approx(-0.02)]
    missing = score(objectives, (parse_constraints(["val_loss < 1"])[0],), 0.92, {"val_acc": 0.92}, {})
    assert missing.values is None and "objective[1].metric: the module never logs 'param_count'" in missing.missing


# ---------------------------------------------------------------------------------------------- real studies


def _feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


THREE = [*TWO, {"metric": "epoch_time", "direction": "minimize"}]
STUDIES = {
    # 2 objectives and a constraint: TPE (3 random trials, then its multi-objective path, which reads the
    # constraints) over 6 trials of 2 epochs
    "pareto": {"objective": TWO, "pruner": "none", "constraints": [f"param_count <= {LIMIT}"], "search_space": SPACE,
               "sampler": {"name": "tpe", "seed": 0, "options": {"n_startup_trials": 3}}, "budget": {"n_trials": 6},
               "trainer": {"max_epochs": 2}},
    # 1 objective and a constraint the grid sampler ignores: one narrow and one wide model
    "single": {"search_space": {"_replace": True, "width": [16, 128]}, "constraints": [f"param_count <= {LIMIT}"],
               "sampler": "grid", "budget": {"n_trials": 2}, "trainer": {"max_epochs": 1}},
    # 3 objectives, ``epoch_time`` (sweeplight's own metric) the third
    "three": {"objective": THREE, "search_space": SPACE, "budget": {"n_trials": 3}, "trainer": {"max_epochs": 1}},
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """The real studies of STUDIES, launched side by side through the CLI: name -> (study file, launch output). Each
    test checks its own study's launch and only reads the study."""
    directory = tmp_path_factory.mktemp("multi")
    paths = {}
    for name, changes in STUDIES.items():
        paths[name] = directory / f"{name}.yaml"
        paths[name].write_text(json.dumps(_merge(BASE, {"name": name, "root": str(directory / "runs"), **changes})))
    results = run_cli_all(*[("study", "launch", str(path), "--no-progress") for path in paths.values()])
    return {name: (paths[name], result) for name, result in zip(paths, results, strict=True)}


@pytest.fixture(scope="module")
def pareto_study(launched) -> Path:
    path, result = launched["pareto"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note:" not in result.stderr  # TPE uses constraints
    return path


@pytest.mark.slow
def test_trials_store_their_values_and_constraints_where_the_sampler_reads_them(pareto_study):
    spec = load_spec(pareto_study)
    trials = load_study(spec).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert [d.name for d in load_study(spec).directions] == ["MAXIMIZE", "MINIMIZE"]
    for t in trials:
        count = _params(t.params["width"], t.params["depth"])
        summary = json.loads((spec.directory / "trials" / str(t.number) / "summary.json").read_text())
        assert summary["param_count"] == count and summary["epoch_time_s"] > 0
        assert t.values == [summary["metrics"]["best"]["val_acc"], count]  # both read from the best epoch
        assert summary["objectives"] == [{"metric": "val_acc", "direction": "maximize", "value": t.values[0]},
                                         {"metric": "param_count", "direction": "minimize", "value": count}]
        # Optuna's own record, as constraints_func would leave it: what TPE/NSGA-II read through trial.constraints
        assert t.system_attrs["constraints"] == [count - LIMIT] and t.constraints == {"0": count - LIMIT}
        assert t.system_attrs["sweeplight:feasible"] is (count <= LIMIT) is summary["feasible"]
        assert summary["constraints"] == [{"constraint": f"param_count <= {LIMIT}", "metric": "param_count",
                                           "value": count, "violation": count - LIMIT}]
    feasible = [t for t in trials if _feasible(t)]
    assert 0 < len(feasible) < 6, [t.params for t in trials]  # seeded: both kinds occur


@pytest.mark.slow
def test_study_best_prints_exactly_the_pareto_set(pareto_study):
    trials = load_study(load_spec(pareto_study)).get_trials()
    feasible = [t for t in trials if _feasible(t)]
    mine = {t.number for t in feasible
            if not any(dominates(o.values, t.values, ["maximize", "minimize"]) for o in feasible)}
    assert mine == {t.number for t in load_study(load_spec(pareto_study)).best_trials}  # Optuna agrees
    result = run_cli("study", "best", str(pareto_study), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["objectives"] == ["val_acc", "param_count"]
    assert {p["number"] for p in data["pareto"]} == mine
    by_number = {t.number: t for t in trials}
    for entry in data["pareto"]:
        trial = by_number[entry["number"]]
        assert entry["values"] == {"val_acc": trial.values[0], "param_count": trial.values[1]}
        assert entry["params"] == trial.params and entry["rerun_command"].endswith(f"best-{trial.number}.yaml")
    text = run_cli("study", "best", str(pareto_study))
    assert text.returncode == 0 and f"Pareto front of study 'pareto': {len(mine)} trial" in text.stdout
    assert sorted(int(n) for n in re.findall(r"^trial (\d+): val_acc=", text.stdout, re.M)) == sorted(mine)
    status = run_cli("study", "status", str(pareto_study))
    assert status.returncode == 0, status.stderr
    assert "(maximize val_acc, minimize param_count)" in status.stdout
    assert f"pareto front: {len(mine)} trial" in status.stdout and "best: trial" not in status.stdout


@pytest.mark.slow
def test_the_frame_has_each_objective_pareto_and_feasible(pareto_study):
    trials = {t.number: t for t in load_study(load_spec(pareto_study)).get_trials()}
    frame = trials_frame(pareto_study)
    assert list(frame.columns[:8]) == ["study", "number", "state", "objective", "objective.val_acc",
                                       "objective.param_count", "pareto", "feasible"]
    pareto = {t.number for t in load_study(load_spec(pareto_study)).best_trials}
    for row in frame.to_dict("records"):
        trial = trials[row["number"]]
        assert row["objective"] == row["objective.val_acc"] == trial.values[0]
        assert row["objective.param_count"] == trial.values[1]
        assert row["feasible"] is _feasible(trial) and row["pareto"] is (row["number"] in pareto)
    assert [t.number for t in best_trials(pareto_study)] == sorted(
        pareto, key=lambda n: -trials[n].values[0])  # best first objective first
    assert best_trial(pareto_study).number == best_trials(pareto_study)[0].number


@pytest.mark.slow
def test_the_report_draws_the_front_and_marks_infeasible_trials(pareto_study, tmp_path):
    frame = trials_frame(pareto_study)
    report = write_report(pareto_study, tmp_path / "report.html")
    page = report.read_text(encoding="utf-8")
    traces = _traces(page, "fig-pareto")
    by_name = {t["name"]: t for t in traces}
    front = frame[frame["pareto"]].sort_values("objective.val_acc")
    assert by_name["Pareto front"]["mode"] == "lines+markers"  # connected
    assert by_name["Pareto front"]["x"] == front["objective.val_acc"].tolist()
    assert by_name["Pareto front"]["y"] == front["objective.param_count"].tolist()
    infeasible = frame[frame["feasible"] == False]  # noqa: E712 - an object column of bools
    assert sorted(by_name["infeasible"]["text"]) == sorted(f"trial {n}" for n in infeasible["number"])
    assert page.count('class="kind-complete infeasible"') + page.count('class="kind-early-stopped infeasible"') \
        == len(infeasible)
    check = selfcheck(report)
    assert check["errors"] == [] and check["stage"] == "settled"
    assert check["figures"]["fig-pareto"] == len(by_name) and check["tableRows"] == 6


@pytest.mark.slow
def test_a_constrained_single_objective_study_picks_the_best_feasible_trial(launched):
    path, result = launched["single"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: sampler grid ignores constraints" in result.stderr
    trials = {t.params["width"]: t for t in load_study(load_spec(path)).get_trials()}
    assert trials[128].system_attrs["constraints"] == [_params(128, 2) - LIMIT]  # recorded all the same
    assert trials[16].system_attrs["sweeplight:feasible"] is True
    best = json.loads(run_cli("study", "best", str(path), "--json").stdout)
    assert best["number"] == trials[16].number and best["value"] == trials[16].value  # whatever 128 scored
    frame = trials_frame(path).set_index("number")
    assert frame.loc[trials[128].number, "feasible"] == False  # noqa: E712
    assert bool(frame.loc[trials[16].number, "pareto"]) and not bool(frame.loc[trials[128].number, "pareto"])
    status = run_cli("study", "status", str(path))
    assert f"best: trial {trials[16].number}" in status.stdout
    page = write_report(path).read_text(encoding="utf-8")
    assert "fig-pareto" not in page and ">feasible</th>" in page and "infeasible" in page


def test_study_sync_adds_a_multi_objective_result_with_its_constraints(make_study, tmp_path):
    """A result the study missed (the worker could not tell it) comes back with every value and its constraints."""
    from sweeplight._storage import create_or_load_study
    from sweeplight._sync import sync

    path = make_study({"objective": TWO, "search_space": SPACE, "constraints": [f"param_count <= {LIMIT}"]})
    spec = load_spec(path)
    create_or_load_study(spec)
    count = _params(128, 1)
    summary = {"schema_version": 1, "study": spec.name, "trial": 0, "state": "COMPLETE", "epochs": 2,
               "params": {"width": 128, "depth": 1, "lr": 0.01}, "stop_reason": "max_epochs",
               "objective": {"metric": "val_acc", "direction": "maximize", "which": "best", "value": 0.9},
               "objectives": [{"metric": "val_acc", "direction": "maximize", "value": 0.9},
                              {"metric": "param_count", "direction": "minimize", "value": count}],
               "constraints": [{"constraint": f"param_count <= {LIMIT}", "metric": "param_count", "value": count,
                                "violation": count - LIMIT}], "feasible": False}
    file = spec.directory / "trials" / "0" / "summary.json"
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps(summary))
    report = sync(spec)
    assert report.added == [(0, 0)]
    (trial,) = load_study(spec).get_trials()
    assert trial.values == [0.9, count] and trial.constraints == {"0": count - LIMIT}
    assert trial.system_attrs["sweeplight:feasible"] is False
    assert load_study(spec).best_trials == []  # the only trial is infeasible
    frame = trials_frame(path)
    assert frame["feasible"].tolist() == [False] and frame["pareto"].tolist() == [False]


@pytest.mark.slow
def test_three_objectives_get_one_figure_per_pair(launched, tmp_path):
    """``epoch_time`` as a third objective (sweeplight's own metric); the report draws each pair of objectives."""
    path, result = launched["three"]
    assert result.returncode == 0, result.stderr[-3000:]
    spec = load_spec(path)
    trials = load_study(spec).get_trials()
    assert len(trials) == 3
    for t in trials:
        summary = json.loads((spec.directory / "trials" / str(t.number) / "summary.json").read_text())
        assert t.values[2] == summary["epoch_time_s"] == summary["history"][0]["time_s"] > 0
        assert summary["feasible"] is True and summary["constraints"] == []
    report = write_report(path, tmp_path / "report.html")
    check = selfcheck(report)
    assert check["errors"] == [] and {"fig-pareto", "fig-pareto-0-2", "fig-pareto-1-2"} <= set(check["figures"])
    assert all(check["figures"][f] >= 1 for f in ("fig-pareto", "fig-pareto-0-2", "fig-pareto-1-2"))
    page = report.read_text(encoding="utf-8")
    for fig_id in ("fig-pareto", "fig-pareto-0-2", "fig-pareto-1-2"):  # a front is connected in 2-D studies only
        assert {t["mode"] for t in _traces(page, fig_id)} == {"markers"}
