"""Two studies side by side: which one finds a good configuration sooner, counted in trials and in epochs trained.

The typical use is the same search run twice, with and without pruning (or with two samplers)::

    python analysis/compare_studies.py runs/digits runs/digits-nopruning
    python analysis/compare_studies.py studies/a.yaml studies/b.yaml --out /tmp/compare.html

Each study is a study file or its results directory ``runs/<name>``. It prints a summary table (trials by state,
best value, epochs trained, time) and writes one self-contained HTML file (plotly.js inline, opens offline) with:

- the best objective so far against the trial number and against the cumulative number of epochs trained, both
  studies on shared axes: pruning that works reaches the same best value with fewer epochs;
- the summary table;
- box plots of the objective per study, completed and pruned trials apart (a pruned trial's value is the last one
  it reported, after fewer epochs, so the two are not comparable).

Only completed trials count towards the best value, as in Optuna and ``sweeplight study best``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sweeplight import SweeplightError
from sweeplight.analysis import StudyResults, load_results, trials_frame, write_html

STATES = ("COMPLETE", "PRUNED", "FAIL")  # always shown; RUNNING/WAITING only when a study has them
COLORS = ("#1f77b4", "#d62728")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_a", help="the first study: a study file or runs/<name>")
    parser.add_argument("study_b", help="the second study: a study file or runs/<name>")
    parser.add_argument("--out", type=Path,
                        help="the HTML file (default: <first study's dir>/analysis/compare-<a>-vs-<b>.html)")
    args = parser.parse_args(argv)

    try:
        studies = [load_one(args.study_a), load_one(args.study_b)]
    except SweeplightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = study_labels(studies, [args.study_a, args.study_b])
    frames = {label: progress(trials_frame(study), study.direction) for label, study in zip(labels, studies,
                                                                                              strict=True)}
    summary = summarize(frames, {label: study.direction for label, study in zip(labels, studies, strict=True)})

    with pd.option_context("display.width", 160, "display.max_columns", None, "display.float_format", "{:.6g}".format):
        print(summary.T.to_string())
    out = args.out or default_out(studies)
    path = write_html([progress_figure(frames, studies[0].metric), table_figure(summary), box_figure(frames)], out,
                      f"{labels[0]} vs {labels[1]}")
    print(f"wrote {path}")
    return 0


def load_one(target: str) -> StudyResults:
    """Exactly one study per argument; a storage URL holding several studies is ambiguous here."""
    studies = load_results(target)
    if len(studies) != 1:
        names = ", ".join(study.name for study in studies) or "none"
        raise SweeplightError(f"{target} names {len(studies)} studies ({names}); name one study file or runs/<name>")
    return studies[0]


def study_labels(studies: list[StudyResults], targets: list[str]) -> list[str]:
    """Study names, or the paths given when both studies have the same name (two roots, one study file)."""
    names = [study.name for study in studies]
    if names[0] != names[1]:
        return names
    return [f"{name} ({target})" for name, target in zip(names, targets, strict=True)]


def default_out(studies: list[StudyResults]) -> Path:
    name = f"compare-{studies[0].name}-vs-{studies[1].name}.html"
    directory = studies[0].directory
    return directory / "analysis" / name if directory is not None else Path(name)


# ------------------------------------------------------------------------------------------------------ the numbers


def progress(trials: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Trials in number order with the running best (completed trials only) and the cumulative epochs trained.

    Trial numbers are handed out as trials start, so this is the order the search spent its budget in. Trials
    still running or that failed before an epoch count zero epochs.
    """
    frame = trials.sort_values("number").reset_index(drop=True)
    complete = frame["objective"].where(frame["state"] == "COMPLETE")
    running = complete.cummax() if direction == "maximize" else complete.cummin()
    frame["best_so_far"] = running.ffill()
    frame["epochs_trained"] = pd.to_numeric(frame["epochs"], errors="coerce").fillna(0).astype(int)
    frame["cumulative_epochs"] = frame["epochs_trained"].cumsum()
    return frame


def summarize(frames: dict[str, pd.DataFrame], directions: dict[str, str]) -> pd.DataFrame:
    """One row per study: the numbers that decide which setup spends its compute better."""
    extra = sorted({state for frame in frames.values() for state in frame["state"]} - set(STATES))
    rows = {}
    for label, frame in frames.items():
        counts = frame["state"].value_counts()
        complete = frame[frame["state"] == "COMPLETE"]
        row: dict[str, object] = {"trials": len(frame)}
        row.update({state: int(counts.get(state, 0)) for state in (*STATES, *extra)})
        if complete.empty:
            best_number, best_value, epochs_to_best = None, float("nan"), None
        else:
            pick = complete["objective"].idxmax() if directions[label] == "maximize" else complete["objective"].idxmin()
            best_number, best_value = int(frame.loc[pick, "number"]), float(frame.loc[pick, "objective"])
            epochs_to_best = int(frame.loc[pick, "cumulative_epochs"])
        started, finished = pd.to_datetime(frame["started"]), pd.to_datetime(frame["finished"])
        row.update({
            "best value": best_value,
            "best trial": best_number,
            "epochs trained": int(frame["epochs_trained"].sum()),
            "epochs until best": epochs_to_best,
            "median epochs per trial": float(frame.loc[frame["state"].isin(("COMPLETE", "PRUNED")),
                                                       "epochs_trained"].median()),
            "trial time, summed (s)": round(float(pd.to_numeric(frame["duration_s"]).sum()), 1),
            "elapsed, first start to last finish (s)": round((finished.max() - started.min()).total_seconds(), 1)
            if started.notna().any() and finished.notna().any() else float("nan"),
        })
        rows[label] = row
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index.name = "study"
    return summary


# ------------------------------------------------------------------------------------------------------ the figures


def progress_figure(frames: dict[str, pd.DataFrame], metric: str | None) -> go.Figure:
    """Best value so far per trial and per epoch spent; the y axis is shared so the curves compare directly."""
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                           subplot_titles=("best so far vs trial number", "best so far vs epochs trained"))
    for (label, frame), color in zip(frames.items(), COLORS, strict=False):
        hover = [f"trial {n} ({state}): {value:.4g}; best so far {best:.4g}; {epochs} epochs in total"
                 for n, state, value, best, epochs in zip(frame["number"], frame["state"], frame["objective"],
                                                          frame["best_so_far"], frame["cumulative_epochs"],
                                                          strict=True)]
        for col, x in ((1, frame["number"]), (2, frame["cumulative_epochs"])):
            figure.add_trace(go.Scatter(x=x, y=frame["best_so_far"], mode="lines+markers", line_shape="hv",
                                        name=label, legendgroup=label, showlegend=col == 1, hovertext=hover,
                                        hoverinfo="text", line={"color": color}), row=1, col=col)
    figure.update_xaxes(title_text="trial number", row=1, col=1)
    figure.update_xaxes(title_text="cumulative epochs trained (trials in number order)", row=1, col=2)
    figure.update_yaxes(title_text=f"best {metric or 'objective'} so far (completed trials)", row=1, col=1)
    figure.update_layout(title="How fast each study found its best configuration", height=480)
    return figure


def table_figure(summary: pd.DataFrame) -> go.Figure:
    """The summary table, one column per study, as printed."""
    shown = summary.T
    cells = [list(shown.index)] + [[format_cell(value) for value in shown[column]] for column in shown.columns]
    figure = go.Figure(go.Table(header={"values": ["", *shown.columns], "align": "left"},
                                cells={"values": cells, "align": "left"}))
    figure.update_layout(title="Summary", height=80 + 28 * (len(shown) + 1), margin={"t": 50, "b": 10})
    return figure


def format_cell(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def box_figure(frames: dict[str, pd.DataFrame]) -> go.Figure:
    """The objective of every scored trial, per study; completed and pruned trials in separate boxes."""
    figure = go.Figure()
    for state, color in (("COMPLETE", "#2ca02c"), ("PRUNED", "#ff7f0e")):
        xs, ys, texts = [], [], []
        for label, frame in frames.items():
            part = frame[(frame["state"] == state) & frame["objective"].notna()]
            xs += [label] * len(part)
            ys += list(part["objective"])
            texts += [f"trial {n}, {e} epochs" for n, e in zip(part["number"], part["epochs_trained"], strict=True)]
        figure.add_trace(go.Box(x=xs, y=ys, name=state.lower(), boxpoints="all", pointpos=0, jitter=0.3,
                                text=texts, marker_color=color, offsetgroup=state))
    figure.update_layout(boxmode="group", title="Objective per trial (a pruned trial's last reported value)",
                         yaxis_title="objective", height=480)
    return figure


if __name__ == "__main__":
    sys.exit(main())
