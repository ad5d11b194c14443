"""One self-contained HTML report of a study: figures, the trial table, timing and the best trial.

The page must open on an offline compute node or laptop, so plotly.js is inlined once in ``<head>`` and nothing is
fetched at view time (no CDN, no web fonts). All data comes from :mod:`sweeplight.analysis`; the Optuna figures are
drawn from an in-memory copy of the study built from its frozen trials, so the storage is read once.

A study with no finished trial, or only failed ones, still renders: each section that cannot be drawn says why.

The page checks itself: a script in ``<head>`` (before plotly's) records JavaScript errors, and at ``load`` another
writes, into the hidden ``<pre id="sweeplight-selfcheck">``, the number of traces plotly rendered in every
``.sweeplight-figure`` div. A headless browser's DOM dump is then enough to test the page.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplight.analysis import BestTrial, StudyResults, curves_frame, load_results, trials_frame

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    import plotly.graph_objects as go

__all__ = ["FIGURE_IDS", "render_report", "suggest_slurm_time", "trial_kind", "write_report"]

# Every figure the report can hold, in page order; a section that cannot draw its figure shows a note instead.
FIGURE_IDS = ("fig-history", "fig-parallel", "fig-importance", "fig-slice", "fig-contour", "fig-curves",
              "fig-walltime", "fig-epoch-times", "fig-timeline")

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")

# How each kind of trial looks in the learning curves, the wall times and the timeline.
KIND_STYLE: dict[str, dict[str, str]] = {
    "complete": {"color": "#1f77b4", "dash": "solid", "symbol": "circle"},
    "early stopped": {"color": "#2ca02c", "dash": "dot", "symbol": "diamond"},
    "pruned": {"color": "#d62728", "dash": "dash", "symbol": "x"},
    "failed": {"color": "#7f7f7f", "dash": "dashdot", "symbol": "square"},
    "running": {"color": "#9467bd", "dash": "longdash", "symbol": "triangle-right"},
    "waiting": {"color": "#bcbd22", "dash": "dot", "symbol": "circle-open"},
}
MARKED_KINDS = ("early stopped", "pruned", "failed")  # their curves end in a marker: where and why they stopped

TABLE_COLUMNS = ("number", "state", "objective", "epochs", "stop_reason", "wall_time_s", "peak_rss_mb", "host",
                 "worker")

SLURM_MARGIN = 1.25
SLURM_STARTUP_S = 60.0


# ------------------------------------------------------------------------------------------------------------ public


def write_report(target: str | Path | StudyResults, path: str | Path | None = None) -> Path:
    """Write the HTML report of one study (study file, ``runs/<name>`` or loaded results); returns its path.

    The default path is ``<study directory>/report.html``, next to the study's other results.
    """
    results = _one_study(target)
    out = _output_path(results, path)
    page = render_report(results, storage=results.storage)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def suggest_slurm_time(wall_times_s: Iterable[float | None], *, margin: float = SLURM_MARGIN,
                       startup_s: float = SLURM_STARTUP_S) -> str | None:
    """``--time=HH:MM:SS`` for one more trial: p95 of the given wall times, times ``margin``, plus start-up time,
    rounded up to whole minutes. None without a usable wall time.

    p95 rather than the maximum so one slow outlier does not inflate every job; the margin covers a slower node.
    """
    import numpy as np

    values = [float(v) for v in wall_times_s if v is not None and math.isfinite(float(v)) and float(v) >= 0]
    if not values:
        return None
    seconds = float(np.percentile(values, 95)) * margin + startup_s
    minutes = math.ceil(seconds / 60 - 1e-9)  # 120.0000001 s is still 2 minutes
    return f"--time={minutes // 60:02d}:{minutes % 60:02d}:00"


def trial_kind(state: str, stop_reason: str | None) -> str:
    """What the reader needs to tell apart: complete, early stopped, pruned, failed, running or waiting."""
    if state == "COMPLETE":
        return "early stopped" if stop_reason == "early_stopping" else "complete"
    return {"PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}.get(state, "waiting")


def render_report(results: StudyResults, *, storage: str | None = None, now: datetime | None = None) -> str:
    """The whole page as a string (``write_report`` writes it)."""
    from sweeplight._report_pareto import pareto_section

    data = _collect(results, storage, now or datetime.now())
    sections = [_header(data), _history_section(data), pareto_section(data), _parallel_section(data),
                _importance_section(data), _slice_contour_section(data), _curves_section(data), _table_section(data),
                _timing_section(data), _timeline_section(data), _best_section(data)]
    return _page(results.name, "\n".join(sections))


# ------------------------------------------------------------------------------------------------------------- data


@dataclass
class _Data:
    """Everything the sections draw from, read once."""

    results: StudyResults
    trials: pd.DataFrame  # trials_frame plus 'kind' (trial_kind) and 'error' (first line of a failed trial's)
    curves: pd.DataFrame  # curves_frame
    study: optuna.Study  # in memory, finished trials only: for optuna.visualization
    best: BestTrial | None
    importances: dict[str, float] | None
    importance_note: str | None
    storage: str | None
    now: datetime

    @property
    def metric(self) -> str:
        return self.results.metric or "objective"

    def count(self, *states: str) -> int:
        return int(self.trials["state"].isin(states).sum()) if len(self.trials) else 0


def _one_study(target: str | Path | StudyResults) -> StudyResults:
    from sweeplight._errors import SweeplightError

    if isinstance(target, StudyResults):
        return target
    studies = load_results(target)
    if len(studies) != 1:
        names = ", ".join(s.name for s in studies) or "none"
        raise SweeplightError(f"report: {target} holds {len(studies)} studies ({names}); pass one study file or "
                              "study directory (runs/<name>)")
    return studies[0]


def _output_path(results: StudyResults, path: str | Path | None) -> Path:
    from sweeplight._errors import SweeplightError

    if path is not None:
        return Path(path)
    if results.directory is None:
        raise SweeplightError(f"report: study {results.name!r} has no study directory; pass the output path")
    return results.directory / "report.html"


def _collect(results: StudyResults, storage: str | None, now: datetime) -> _Data:
    trials = trials_frame(results)
    trials["kind"] = [trial_kind(state, reason) for state, reason in zip(trials["state"], trials["stop_reason"],
                                                                          strict=True)]
    from sweeplight._report_pareto import best_or_none

    complete = [t for t in results.trials if t.state.name == "COMPLETE" and t.values is not None]
    best = best_or_none(results) if complete else None
    study = _memory_study(results)
    importances, note = _importances(study, complete)
    return _Data(results=results, trials=trials, curves=curves_frame(results), study=study, best=best,
                 importances=importances, importance_note=note, storage=storage, now=now)


def _memory_study(results: StudyResults) -> optuna.Study:
    """The finished trials in an in-memory study: optuna.visualization wants a Study, not a list of trials."""
    import optuna

    study = optuna.create_study(study_name=results.name, direction=results.direction,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    from sweeplight._report_pareto import first_objective

    study.add_trials([first_objective(t, results) for t in results.trials if t.state.name in FINISHED])
    return study


def _varying_params(complete: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Parameters every complete trial has, with at least two distinct values: the ones importance can rank."""
    if not complete:
        return []
    shared = set.intersection(*(set(t.params) for t in complete))
    return sorted(p for p in shared if len({json.dumps(t.params[p], default=str) for t in complete}) > 1)


def _importances(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> tuple[dict[str, float] | None,
                                                                                          str | None]:
    """fANOVA importances (seeded, so the report is reproducible), or the reason there are none."""
    import optuna

    varying = _varying_params(complete)
    if len(complete) < 2:
        return None, (f"Parameter importances need at least 2 complete trials; this study has {len(complete)}.")
    if len(varying) < 2:
        return None, ("Parameter importances need at least 2 parameters that vary across the complete trials; "
                      f"varying here: {', '.join(varying) or 'none'}.")
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying)
    except (ValueError, RuntimeError) as exc:
        return None, f"Parameter importances could not be computed: {exc}"
    return dict(found), None


# ---------------------------------------------------------------------------------------------------------- figures


def _figure(fig: go.Figure, fig_id: str, height: int = 460) -> str:
    """The figure's div (id ``fig_id``, class ``sweeplight-figure``) and its newPlot call; plotly.js is in <head>."""
    fig.update_layout(height=height, margin={"l": 60, "r": 30, "t": 50, "b": 50})
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=fig_id,
                      config={"displaylogo": False, "responsive": True})
    return div.replace('class="plotly-graph-div"', 'class="plotly-graph-div sweeplight-figure"', 1)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(anchor: str, title: str, *parts: str) -> str:
    body = "\n".join(parts)
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _no_complete(data: _Data, what: str) -> str:
    """Why a figure of complete trials is missing, in plain words."""
    finished = data.count(*FINISHED)
    if finished == 0:
        return (f"No finished trials yet ({data.count('RUNNING')} running, {data.count('WAITING')} waiting), so there "
                f"is no {what} to draw. Run the report again once trials finish.")
    return (f"No complete trials ({data.count('FAIL')} failed, {data.count('PRUNED')} pruned), so there is no {what} "
            "to draw.")


def _history_section(data: _Data) -> str:
    import optuna

    if data.count("COMPLETE") == 0:
        return _section("history", "Optimization history", _note(_no_complete(data, "optimization history")))
    fig = optuna.visualization.plot_optimization_history(data.study, target_name=data.metric)
    return _section("history", "Optimization history", _figure(fig, "fig-history"))


def _parallel_section(data: _Data) -> str:
    import optuna

    if data.count("COMPLETE") == 0:
        return _section("parallel", "Parallel coordinates", _note(_no_complete(data, "parallel coordinates plot")))
    if not _ranked_params(data):
        return _section("parallel", "Parallel coordinates", _note("The complete trials have no searched parameters."))
    fig = optuna.visualization.plot_parallel_coordinate(data.study, target_name=data.metric)
    return _section("parallel", "Parallel coordinates", _figure(fig, "fig-parallel"))


def _importance_section(data: _Data) -> str:
    import optuna

    title = "Parameter importances"
    if data.count("COMPLETE") == 0:
        return _section("importance", title, _note(_no_complete(data, "parameter importance")))
    if data.importances is None:
        return _section("importance", title, _note(data.importance_note or "No parameter importances."))
    fig = optuna.visualization.plot_param_importances(
        data.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=list(data.importances),
        target_name=data.metric)
    return _section("importance", title, _note("fANOVA importances over the complete trials."),
                    _figure(fig, "fig-importance", height=max(260, 60 + 40 * len(data.importances))))


def _ranked_params(data: _Data) -> list[str]:
    """Most important first; without importances, every parameter the complete trials have, by name."""
    if data.importances:
        return list(data.importances)
    complete = [t for t in data.study.trials if t.state.name == "COMPLETE"]
    return sorted({p for t in complete for p in t.params})


def _numeric_params(data: _Data, ranked: list[str]) -> list[str]:
    """Float and int parameters among ``ranked`` that vary across complete trials: what a contour can show."""
    from optuna.distributions import FloatDistribution, IntDistribution

    complete = [t for t in data.study.trials if t.state.name == "COMPLETE"]
    varying = set(_varying_params(complete))
    numeric = []
    for name in ranked:
        dist = next((t.distributions[name] for t in complete if name in t.distributions), None)
        if name in varying and isinstance(dist, (FloatDistribution, IntDistribution)):
            numeric.append(name)
    return numeric


def _slice_contour_section(data: _Data) -> str:
    import optuna

    title = "Slice and contour of the most important parameters"
    if data.count("COMPLETE") == 0:
        return _section("slice", title, _note(_no_complete(data, "slice or contour plot")))
    ranked = _ranked_params(data)
    top = ranked[:3]
    if not top:
        return _section("slice", title, _note("The complete trials have no searched parameters."))
    slice_fig = optuna.visualization.plot_slice(data.study, params=top, target_name=data.metric)
    parts = [_note(f"Parameters: {', '.join(top)}" + (" (by importance)." if data.importances else ".")),
             _figure(slice_fig, "fig-slice", height=420)]
    numeric = _numeric_params(data, ranked)[:2]
    if data.count("COMPLETE") < 2 or len(numeric) < 2:
        parts.append(_note("No contour plot: it needs 2 complete trials and 2 numeric (float or int) parameters "
                           f"that vary across them; this study has {data.count('COMPLETE')} complete trials and "
                           f"numeric varying parameters: {', '.join(numeric) or 'none'}."))
    else:
        contour = optuna.visualization.plot_contour(data.study, params=numeric, target_name=data.metric)
        parts.append(_figure(contour, "fig-contour", height=480))
    return _section("slice", title, *parts)


def _curves_section(data: _Data) -> str:
    import plotly.graph_objects as go

    title = f"Learning curves ({data.metric} per epoch)"
    curves = data.curves
    curves = curves[curves["metric"] == data.metric] if len(curves) else curves
    if not len(curves):
        reason = _no_complete(data, "learning curve") if data.count(*FINISHED) == 0 else (
            f"No learning curves: no trial has logged {data.metric} in a validation epoch yet.")
        return _section("curves", title, _note(reason))
    fig = go.Figure()
    rows = {int(r["number"]): r for r in data.trials.to_dict("records")}
    order = list(KIND_STYLE)
    numbers = sorted(curves["trial"].unique(), key=lambda n: (order.index(_kind_of(rows, n)), n))
    for number in numbers:
        points = curves[curves["trial"] == number].sort_values("epoch")
        fig.add_trace(_curve_trace(int(number), points, rows.get(int(number)), data.best))
    fig.update_layout(xaxis_title="epoch", yaxis_title=data.metric, legend={"traceorder": "grouped"},
                      hovermode="closest")
    note = _note("Dashed red curves were pruned (x marks where), dotted green ones stopped early (diamond), "
                 "dash-dotted grey ones failed (square); solid blue ones ran to the end. The best trial is thicker.")
    return _section("curves", title, note, _figure(fig, "fig-curves", height=520))


def _kind_of(rows: dict[int, dict[str, Any]], number: int) -> str:
    row = rows.get(int(number))
    return row["kind"] if row else "complete"


def _curve_trace(number: int, points: pd.DataFrame, row: dict[str, Any] | None, best: BestTrial | None) -> go.Scatter:
    """One trial's curve, styled by kind; early-stopped, pruned and failed curves end in a marker."""
    import plotly.graph_objects as go

    kind = row["kind"] if row else "complete"
    style = KIND_STYLE[kind]
    is_best = best is not None and best.number == number
    end = [0] * (len(points) - 1) + [12 if kind in MARKED_KINDS else 0]
    reason = (row or {}).get("stop_reason") or ""
    return go.Scatter(
        x=points["epoch"].tolist(), y=points["value"].tolist(), mode="lines+markers",
        name=f"trial {number}" + (" (best)" if is_best else ""), legendgroup=kind, legendgrouptitle_text=kind,
        line={"color": style["color"], "dash": style["dash"], "width": 3.5 if is_best else 1.6},
        marker={"size": end, "symbol": style["symbol"], "color": style["color"]},
        meta={"trial": number, "kind": kind},
        hovertemplate=f"trial {number} ({html.escape(kind)}, {html.escape(str(reason))})<br>"
                      "epoch %{x}: %{y:.5g}<extra></extra>")


def _timing_section(data: _Data) -> str:
    parts = [_walltime_part(data), _epoch_times_part(data), _slurm_part(data)]
    return _section("timing", "Wall time per trial and per epoch", *parts)


def _wall_times(trials: pd.DataFrame) -> pd.Series:
    """The trial's own wall time from its summary, else start-to-finish time in storage."""
    if "wall_time_s" not in trials:
        return trials.get("duration_s", trials["number"] * math.nan)
    wall = trials["wall_time_s"].astype("float64")
    return wall.fillna(trials["duration_s"].astype("float64")) if "duration_s" in trials else wall


def _walltime_part(data: _Data) -> str:
    import plotly.graph_objects as go

    trials = data.trials.assign(wall=_wall_times(data.trials)) if len(data.trials) else data.trials
    timed = trials[trials["wall"].notna()] if len(trials) else trials
    if not len(timed):
        return _note(_no_complete(data, "wall time") if data.count(*FINISHED) == 0 else
                     "No trial has a recorded wall time.")
    fig = go.Figure()
    for kind, group in timed.groupby("kind", sort=False):
        fig.add_trace(go.Bar(x=group["number"].tolist(), y=group["wall"].tolist(), name=str(kind),
                             marker_color=KIND_STYLE[str(kind)]["color"],
                             hovertemplate="trial %{x}: %{y:.1f} s<extra>" + html.escape(str(kind)) + "</extra>"))
    fig.update_layout(xaxis_title="trial", yaxis_title="wall time (s)", barmode="overlay")
    return _figure(fig, "fig-walltime", height=380)


def _epoch_times_part(data: _Data) -> str:
    import plotly.graph_objects as go

    curves = data.curves
    times = curves[curves["metric"] == "time_s"] if len(curves) else curves
    if not len(times):
        return _note("No epoch times: no trial has finished a validation epoch yet.")
    kinds = {int(r["number"]): r["kind"] for r in data.trials.to_dict("records")}
    times = times.assign(kind=[kinds.get(int(n), "complete") for n in times["trial"]],
                         label=[f"trial {t}, epoch {e}" for t, e in zip(times["trial"], times["epoch"], strict=True)])
    fig = go.Figure()
    for kind, group in times.groupby("kind", sort=False):
        fig.add_trace(go.Box(y=group["value"].tolist(), name=str(kind), boxpoints="all", jitter=0.4, pointpos=0,
                             marker_color=KIND_STYLE[str(kind)]["color"],
                             text=group["label"].tolist(),
                             hovertemplate="%{text}: %{y:.2f} s<extra></extra>"))
    fig.update_layout(yaxis_title="epoch time (s)", showlegend=False)
    return _figure(fig, "fig-epoch-times", height=360)


def _slurm_part(data: _Data) -> str:
    complete = data.trials[data.trials["state"] == "COMPLETE"] if len(data.trials) else data.trials
    suggestion = suggest_slurm_time(_wall_times(complete).tolist()) if len(complete) else None
    if suggestion is None:
        return _note("No SLURM --time suggestion: no complete trial with a wall time yet.")
    return (f'<p class="slurm">Suggested SLURM time limit for one trial of the best configuration: '
            f"<code>{suggestion}</code> (95th percentile of {len(complete)} complete trials' wall time, times "
            f"{SLURM_MARGIN:g}, plus {SLURM_STARTUP_S:g} s of start-up, rounded up to minutes).</p>")


def _timeline_section(data: _Data) -> str:
    import plotly.graph_objects as go

    title = "States over time per worker"
    trials = data.trials
    started = trials[trials["started"].notna()] if "started" in trials else trials.iloc[0:0]
    if not len(started):
        return _section("timeline", title, _note("No trial has started yet, so there is no timeline."))
    fig = go.Figure()
    for kind, group in started.groupby("kind", sort=False):
        rows = group.to_dict("records")
        begins = [r["started"].to_pydatetime() if hasattr(r["started"], "to_pydatetime") else r["started"]
                  for r in rows]
        ends = [_end_time(r, data.now if b.tzinfo is None else data.now.astimezone()) for r, b in
                zip(rows, begins, strict=True)]
        fig.add_trace(go.Bar(
            orientation="h", base=[b.isoformat() for b in begins],
            x=[max((e - b).total_seconds(), 0.0) * 1000 for b, e in zip(begins, ends, strict=True)],
            y=[_worker_label(r) for r in rows], name=str(kind), marker_color=KIND_STYLE[str(kind)]["color"],
            text=[f"trial {r['number']}" for r in rows], textposition="inside",
            hovertemplate="%{text}<br>%{base|%H:%M:%S} for %{x:.0f} ms<extra>" + html.escape(str(kind)) + "</extra>"))
    fig.update_layout(barmode="overlay", xaxis={"type": "date", "title": "time"}, yaxis={"title": "worker"})
    height = 200 + 40 * started.apply(_worker_label, axis=1).nunique()
    return _section("timeline", title, _note("Running trials end at the time of this report."),
                    _figure(fig, "fig-timeline", height=height))


def _end_time(row: dict[str, Any], now: datetime) -> datetime:
    finished = row.get("finished")
    if finished is None or (isinstance(finished, float) and math.isnan(finished)) or str(finished) == "NaT":
        return now
    return finished.to_pydatetime() if hasattr(finished, "to_pydatetime") else finished


def _worker_label(row: Any) -> str:
    worker, host = row.get("worker"), row.get("host")
    name = "unknown worker" if _missing(worker) else f"worker {int(worker)}"
    return name if _missing(host) else f"{name} @ {host}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------------------------- text


def _header(data: _Data) -> str:
    from sweeplight._storage import mask_url

    results = data.results
    counts = ", ".join(f"{data.count(s)} {s.lower()}" for s in STATES)
    best = (f"{data.metric} = {_fmt(data.best.value)} (trial {data.best.number})" if data.best else "none yet")
    goals = ", ".join(f"{m} ({d})" for m, d in zip(results.metrics, results.directions, strict=True))
    rows = [("objective", goals), ("trials", f"{len(data.trials)}: {counts}"),
            ("best", best), ("storage", mask_url(data.storage) if data.storage else "unknown"),
            ("directory", str(results.directory) if results.directory else "unknown"),
            ("generated", data.now.strftime("%Y-%m-%d %H:%M:%S"))]
    items = "\n".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    status = _status_line(data)
    return (f"<header>\n<h1>Study {html.escape(results.name)}</h1>\n<dl class=\"facts\">\n{items}\n</dl>\n"
            f"{_note(status) if status else ''}\n{_nav()}\n</header>")


def _status_line(data: _Data) -> str | None:
    """One plain sentence when the study has nothing to show yet."""
    if not len(data.trials):
        return "No trials yet: the study was created but no trial has started, so there are no finished trials."
    if data.count(*FINISHED) == 0:
        return (f"No finished trials yet: {data.count('RUNNING')} running, {data.count('WAITING')} waiting. "
                "The figures fill in as trials finish.")
    if data.count("COMPLETE") == 0:
        return (f"No complete trials: all {data.count(*FINISHED)} finished trials failed or were pruned "
                f"({data.count('FAIL')} failed, {data.count('PRUNED')} pruned). The trial table shows each failed "
                "trial's error; the full traceback is in its summary.json.")
    return None


def _nav() -> str:
    links = [("history", "history"), ("parallel", "parallel coordinates"), ("importance", "importances"),
             ("slice", "slice and contour"), ("curves", "learning curves"), ("trials", "trials"),
             ("timing", "timing"), ("timeline", "timeline"), ("best", "best trial")]
    return "<nav>" + " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in links) + "</nav>"


def _table_section(data: _Data) -> str:
    trials = data.trials
    if not len(trials):
        return _section("trials", "Trials", _note("No trials yet."))
    params = sorted(c for c in trials.columns if c.startswith("params."))
    from sweeplight._report_pareto import table_columns

    columns = [*TABLE_COLUMNS[:3], *table_columns(trials, data.results), *params, *TABLE_COLUMNS[3:]]
    if trials["error"].notna().any():
        columns.append("error")
    head = "".join(f'<th title="click to sort">{html.escape(c)}</th>' for c in columns)
    body = "\n".join(_table_row(row, columns) for row in trials.sort_values("number").to_dict("records"))
    return _section("trials", "Trials",
                    '<p><input id="trial-filter" type="search" placeholder="filter rows (e.g. pruned, adam, 3)" '
                    'aria-label="filter trials"> <span class="note">Click a column header to sort.</span></p>',
                    f'<div class="trial-table-wrap"><table id="trial-table">\n<thead><tr>{head}</tr></thead>\n'
                    f"<tbody>\n{body}\n</tbody>\n</table></div>")


def _table_row(row: dict[str, Any], columns: list[str]) -> str:
    cells = []
    for column in columns:
        value = _plain(row.get(column))
        sort = f' data-sort="{float(value)!r}"' if _is_number(value) else ""
        cells.append(f"<td{sort}>{html.escape(_fmt(value))}</td>")
    kind = str(row.get("kind", "")).replace(" ", "-")
    from sweeplight._report_pareto import broke

    infeasible = " infeasible" if broke(row.get("feasible")) else ""  # a constraint broken
    return f'<tr class="kind-{html.escape(kind)}{infeasible}">' + "".join(cells) + "</tr>"


def _best_section(data: _Data) -> str:
    best = data.best
    if best is None:
        return _section("best", "Best trial", _note(_no_complete(data, "best trial")))
    rows = [("trial", str(best.number)), (f"objective ({best.metric or 'value'}, {best.direction})", _fmt(best.value))]
    rows += [(f"params.{k}", _fmt(v)) for k, v in best.params.items()]
    rows += [(f"test.{k}", _fmt(v)) for k, v in sorted(best.test_metrics.items())]
    if not best.test_metrics:
        rows.append(("test metrics", "none (the data module has no test set, or the test did not run)"))
    rows.append(("checkpoint", str(best.checkpoint) if best.checkpoint else "none recorded"))
    rows.append(("summary", str(best.summary) if best.summary else "none recorded"))
    items = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return _section("best", "Best trial", f'<table class="best">\n{items}\n</table>')


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, so they format and compare like the rest."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    """Numbers to 6 significant digits; missing values (None, NaN, NaT) as an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("NaT", "nan", "<NA>"):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return _fmt(value.item())
    return str(value)


# ------------------------------------------------------------------------------------------------------------- page


# Before plotly's script so even an error while plotly.js loads is recorded.
_ERROR_HOOK = """
window.__sweeplightErrors = [];
window.onerror = function (message, source, line) {
  window.__sweeplightErrors.push(String(message) + " (" + source + ":" + line + ")");
  return false;
};
window.addEventListener("unhandledrejection", function (event) {
  window.__sweeplightErrors.push("unhandled rejection: " + String(event.reason));
});
"""

# At load, and once more after plotly's asynchronous work has settled: what was actually rendered.
_SELF_CHECK = """
(function () {
  function record(stage) {
    var figures = {};
    document.querySelectorAll(".sweeplight-figure").forEach(function (div) {
      figures[div.id] = div.data ? div.data.length : -1;
    });
    var rows = document.querySelectorAll("#trial-table tbody tr").length;
    var check = {stage: stage, plotly: typeof Plotly, errors: window.__sweeplightErrors, figures: figures,
                 tableRows: rows};
    document.getElementById("sweeplight-selfcheck").textContent = JSON.stringify(check);
  }
  window.addEventListener("load", function () {
    record("load");
    setTimeout(function () { record("settled"); }, 1000);
  });
})();
"""

# Click a header to sort (numbers by value, empty cells last), type to filter rows.
_TABLE_JS = """
(function () {
  var table = document.getElementById("trial-table");
  var filter = document.getElementById("trial-filter");
  if (!table) { return; }
  var body = table.tBodies[0];
  function key(row, column) {
    var cell = row.cells[column];
    var raw = cell.getAttribute("data-sort");
    return raw !== null ? parseFloat(raw) : cell.textContent.trim();
  }
  function compare(a, b) {
    if (a === "" || b === "") { return a === b ? 0 : (a === "" ? 1 : -1); }
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
        other.removeAttribute("aria-sort");
      });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var ka = key(a, column), kb = key(b, column);
        var order = compare(ka, kb);
        return (ka === "" || kb === "") ? order : (ascending ? order : -order);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  filter.addEventListener("input", function () {
    var words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    Array.prototype.forEach.call(body.rows, function (row) {
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (word) { return text.indexOf(word) !== -1; });
    });
  });
})();
"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1300px; padding: 0 24px 48px; color: #1d2330; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #d5dae3; padding-bottom: 4px; margin-top: 36px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
nav { margin: 12px 0; } nav a { color: #1f5fbf; }
.note { color: #56607a; }
code { background: #eef1f6; padding: 2px 6px; border-radius: 3px; font-size: 1.05em; }
table { border-collapse: collapse; font-size: 13px; }
#trial-table th { cursor: pointer; background: #eef1f6; position: sticky; top: 0; }
#trial-table th[aria-sort="ascending"]::after { content: " \\25B2"; }
#trial-table th[aria-sort="descending"]::after { content: " \\25BC"; }
th, td { border: 1px solid #d5dae3; padding: 3px 8px; text-align: left; }
td[data-sort] { text-align: right; font-variant-numeric: tabular-nums; }
tr.kind-pruned td { background: #fdf0f0; } tr.kind-failed td { background: #f1f1f1; }
tr.kind-early-stopped td { background: #f0f9f0; } tr.kind-running td { background: #f5f0fa; }
table.best th { background: #eef1f6; }
tr.infeasible td { color: #a31515; font-style: italic; }
.trial-table-wrap { overflow-x: auto; }
"""


def _page(name: str, body: str) -> str:
    """The document: error hook, then plotly.js (once), then the sections, the table script and the self-check."""
    import plotly.offline

    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>sweeplight report: {html.escape(name)}</title>\n"
        f"<script>{_ERROR_HOOK}</script>\n"
        f"<script>{plotly.offline.get_plotlyjs()}</script>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        '<pre id="sweeplight-selfcheck" hidden></pre>\n'
        f"<script>{_TABLE_JS}</script>\n<script>{_SELF_CHECK}</script>\n</body>\n</html>\n")
