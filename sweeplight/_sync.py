"""Put the results a study is missing back into it, from the trials' ``summary.json`` files.

A worker writes ``summary.json`` before it tells the study, so the summary is the record when the tell cannot
happen: the database stayed down longer than the worker waits, the worker was killed between the two, or the
trial was failed as stale while its worker was cut off from the database. ``sweeplight study sync`` (and the worker
itself, when it finds its trial already closed) copies such results in. A result is recognised by its summary's
path, so syncing twice adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplight._constraints import constraint_attrs, told_values

SUMMARY_ATTR = "sweeplight:summary"
SYNCED_FROM = "sweeplight:synced_from"  # on a trial added from a summary: the number of the trial that ran it


@dataclass
class SyncReport:
    """What ``sync`` did; ``present`` counts summaries whose result the study already held."""

    finished: list[int] = field(default_factory=list)  # running trials closed with their summary's result
    added: list[tuple[int, int]] = field(default_factory=list)  # (trial that ran it, new trial number)
    present: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable or foreign summaries, with why


def sync(spec: Any) -> SyncReport:
    """Bring every finished result under ``spec.directory/trials`` into the study; idempotent."""
    from optuna.trial import TrialState

    from sweeplight._heartbeat import ask_lock
    from sweeplight._storage import load_study
    from sweeplight._summary import read_summary

    study = load_study(spec, max_wait=30)
    report = SyncReport()
    paths = sorted((spec.directory / "trials").glob("*/summary.json"), key=lambda p: _number(p.parent.name))
    with ask_lock(spec.directory):
        trials = study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        for path in paths:
            try:
                summary = read_summary(path)
                number, state = int(summary["trial"]), summary["state"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                report.skipped.append(f"{path}: unreadable ({type(exc).__name__})")
                continue
            if summary.get("study") != spec.name:
                report.skipped.append(f"{path}: belongs to study {summary.get('study')!r}")
                continue
            trial = by_number.get(number)
            same = trial is not None and _same_params(trial.params, summary.get("params") or {})
            if same and trial.state == TrialState.RUNNING:
                finish(study, trial, summary, path)
                report.finished.append(number)
            elif state in ("COMPLETE", "PRUNED") and not _recorded(trials, path, trial if same else None, state):
                new = add(study, spec, summary, path)
                report.added.append((number, new))
            else:
                report.present += 1
    return report


def finish(study: Any, trial: Any, summary: dict[str, Any], path: Path) -> None:
    """Close a trial left RUNNING with the result its summary holds."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        for key, value in result_attrs(summary, path).items():
            storage.set_trial_system_attr(trial._trial_id, key, value)
        for key, value in test_metrics(summary).items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
        for step, value in (summary.get("intermediate_values") or {}).items():  # epochs not reported in the outage
            if int(step) not in trial.intermediate_values and value is not None:
                storage.set_trial_intermediate_value(trial._trial_id, int(step), float(value))
        state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}.get(summary["state"], TrialState.FAIL)
        value = told_values(summary) if state == TrialState.COMPLETE else None  # a list with several objectives
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        study.tell(trial.number, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass  # its worker told it meanwhile


def add(study: Any, spec: Any, summary: dict[str, Any], path: Path) -> int:
    """Add a finished result as a new trial linked to the trial that ran it; returns the new trial's number.

    Any re-run of the old trial still waiting in the queue is dropped: its result is now known.
    """
    import optuna
    from optuna.trial import TrialState

    from sweeplight._trial_resume import RETRY_OF

    params = summary.get("params") or {}
    distributions = {p.name: p.distribution() for p in spec.search_space
                     if p.name in params and p.distribution() is not None}
    steps = {int(k): float(v) for k, v in (summary.get("intermediate_values") or {}).items()}
    state = TrialState.COMPLETE if summary["state"] == "COMPLETE" else TrialState.PRUNED
    value = told_values(summary) if state == TrialState.COMPLETE else (steps[max(steps)] if steps else None)
    number = int(summary["trial"])
    several = {"values": value} if isinstance(value, list) else {"value": value}
    trial = optuna.trial.create_trial(
        params={k: params[k] for k in distributions}, distributions=distributions, **several, state=state,
        intermediate_values=steps, user_attrs=test_metrics(summary),
        system_attrs={**result_attrs(summary, path), SYNCED_FROM: number})
    study.add_trial(trial)
    storage = study._storage
    for waiting in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if waiting.user_attrs.get(RETRY_OF) == number:
            storage.set_trial_system_attr(waiting._trial_id, "sweeplight:stop_reason", "superseded")
            storage.set_trial_state_values(waiting._trial_id, TrialState.FAIL)
    added = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get(SUMMARY_ATTR) == str(path)]
    return max(t.number for t in added)


def _recorded(trials: list, path: Path, same_trial: Any, state: str) -> bool:
    if same_trial is not None and same_trial.state.name == state:
        return True
    return any(t.system_attrs.get(SUMMARY_ATTR) == str(path) and t.state.name in ("COMPLETE", "PRUNED")
               for t in trials)


def result_attrs(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """The trial system attributes a result carries (the worker writes the same before its tell)."""
    attrs = {"sweeplight:stop_reason": summary.get("stop_reason"), SUMMARY_ATTR: str(path),
             "sweeplight:epochs": summary.get("epochs"), "sweeplight:error": (summary.get("error") or "")[:2000],
             "sweeplight:resources": summary.get("resources")}  # what resource budgets sum (_resources.py)
    # Optuna's samplers read a finished trial's "constraints": they go in the same write as its final state
    return {**{k: v for k, v in attrs.items() if v not in (None, "")}, **constraint_attrs(summary)}


def test_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The test metrics, stored as trial user attributes."""
    return dict((summary.get("metrics") or {}).get("test") or {})


def _same_params(stored: dict[str, Any], summarised: dict[str, Any]) -> bool:
    return all(summarised.get(k) == v for k, v in stored.items()) and set(stored) <= set(summarised)


def _number(name: str) -> int:
    return int(name) if name.isdigit() else -1
