"""The report's Pareto-front section, and how infeasible trials show in its trial table.

A multi-objective study gets one scatter of the complete trials per pair of objectives (the first four): the front
highlighted (and connected, for a study of exactly two objectives, where it is a staircase in that very plane),
dominated trials plain, infeasible trials (a constraint broken) as red crosses. Every other figure of the report shows
the first objective. The figures are Plotly's own scatter traces, drawn from the trials frame's ``objective.<metric>``,
``pareto`` and ``feasible`` columns, so the report and ``sweeplight.analysis`` agree trial for trial.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from sweeplight._report import _figure, _no_complete, _note, _section

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

PARETO_FIGURE = "fig-pareto"  # objectives 0 and 1; further pairs are fig-pareto-<i>-<j>
MAX_OBJECTIVES_DRAWN = 4  # pairs among the first four objectives: 6 figures at most
FRONT_STYLE = {"color": "#ff7f0e", "size": 11, "symbol": "star", "line": {"width": 1, "color": "#7f3f00"}}
DOMINATED_STYLE = {"color": "#1f77b4", "size": 8, "opacity": 0.55}
INFEASIBLE_STYLE = {"color": "#d62728", "size": 9, "symbol": "x"}


def pareto_section(data: Any) -> str:
    """The section, or "" for a single-objective study."""
    results = data.results
    if not results.multi_objective:
        return ""
    title = "Pareto front"
    trials = data.trials
    complete = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    if not len(complete):
        return _section("pareto", title, _note(_no_complete(data, "Pareto front")))
    metrics, directions = results.metrics, results.directions
    on_front = int(complete["pareto"].astype(bool).sum())
    infeasible = int(sum(broke(f) for f in complete["feasible"]))
    intro = (f"{on_front} of {len(complete)} complete trials are on the Pareto front: no other feasible trial is at "
             "least as good in every objective and better in one. "
             + (f"{infeasible} broke a constraint (red crosses) and cannot be on the front. " if infeasible else "")
             + f"The other figures show the first objective, {metrics[0]}.")
    parts = [_note(intro)]
    drawn = range(min(len(metrics), MAX_OBJECTIVES_DRAWN))
    for i, j in itertools.combinations(drawn, 2):
        fig_id = PARETO_FIGURE if (i, j) == (0, 1) else f"{PARETO_FIGURE}-{i}-{j}"
        figure = pair_figure(complete, metrics, directions, i, j, connect=len(metrics) == 2)
        parts.append(_figure(figure, fig_id))
    return _section("pareto", title, *parts)


def pair_figure(complete: pd.DataFrame, metrics: list[str], directions: list[str], i: int, j: int, *,
                connect: bool) -> go.Figure:
    """Objective ``i`` against objective ``j``: one trace per kind of trial that has any (front, dominated,
    infeasible)."""
    import plotly.graph_objects as go

    x, y = f"objective.{metrics[i]}", f"objective.{metrics[j]}"
    infeasible = [broke(f) for f in complete["feasible"]]
    front = [bool(p) for p in complete["pareto"]]
    groups = (("dominated", [not a and not b for a, b in zip(front, infeasible, strict=True)], DOMINATED_STYLE,
               "markers"),
              ("infeasible", infeasible, INFEASIBLE_STYLE, "markers"),
              ("Pareto front", front, FRONT_STYLE, "lines+markers" if connect else "markers"))
    fig = go.Figure()
    for name, mask, style, mode in groups:
        rows = complete[mask]
        if not len(rows):
            continue
        if name == "Pareto front":
            rows = rows.sort_values(x)  # a staircase from one end of the front to the other
        fig.add_trace(go.Scatter(
            x=rows[x].tolist(), y=rows[y].tolist(), mode=mode, name=name, marker=style,
            line={"color": FRONT_STYLE["color"], "width": 1.5} if mode != "markers" else None,
            text=[f"trial {int(n)}" for n in rows["number"]],
            hovertemplate=f"%{{text}}<br>{metrics[i]}=%{{x:.6g}}<br>{metrics[j]}=%{{y:.6g}}<extra>{name}</extra>"))
    fig.update_layout(title=f"{metrics[i]} vs {metrics[j]}", legend={"orientation": "h", "y": -0.18},
                      xaxis_title=f"{metrics[i]} ({directions[i]})", yaxis_title=f"{metrics[j]} ({directions[j]})")
    return fig


def table_columns(trials: pd.DataFrame, results: Any) -> list[str]:
    """The trial table's extra columns, after ``objective``: each objective and ``pareto`` in a multi-objective
    study, ``feasible`` in a study with constraints."""
    columns = []
    if results.multi_objective:
        columns += [f"objective.{metric}" for metric in results.metrics] + ["pareto"]
    if len(trials) and "feasible" in trials and not all(_is_true(f) for f in trials["feasible"]):
        columns.append("feasible")
    return columns


def broke(value: Any) -> bool:
    """A ``feasible`` cell that says False (a Python or NumPy bool); None and NaN mean no verdict."""
    return type(value).__name__ in ("bool", "bool_") and not value


def _is_true(value: Any) -> bool:
    return type(value).__name__ in ("bool", "bool_") and bool(value)


def best_or_none(results: Any) -> Any:
    """The best trial for the report's "Best trial" section (in a multi-objective study: the front's best in the
    first objective), or None when no complete trial is feasible."""
    from sweeplight._errors import SweeplightError
    from sweeplight.analysis import best_trial

    try:
        return best_trial(results, write_rerun=False)
    except SweeplightError:
        return None


def first_objective(trial: Any, results: Any) -> Any:
    """A multi-objective trial as a single-objective one holding its first value: Optuna's figures of one
    objective (history, parallel coordinates, importances, slices) draw it unchanged."""
    if not results.multi_objective or trial.values is None:
        return trial
    import copy

    single = copy.deepcopy(trial)
    single.values = [trial.values[0]]
    return single
