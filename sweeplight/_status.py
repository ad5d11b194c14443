"""Where a study stands: trials by state, the best trial, and what is running (and where).

Reads only the storage and the resolved spec; it never imports torch, Lightning or the user's code.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplight._diagnostics import PROGRESS_ATTR, eta_fields, eta_text
from sweeplight._grid import trial_budget
from sweeplight._resources import LABELS, budget_status, has_budget
from sweeplight._slurm_jobs import SLURM_JOB, job_states, log_path, read_jobs
from sweeplight._spec import StudySpec, load_spec

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class RunningTrial:
    number: int
    worker: Any
    host: str | None
    pid: int | None
    started: float | None
    last_epoch: int | None
    last_value: float | None
    heartbeat_age_s: float | None
    slurm_job: str | None = None  # the array task running it
    log: str | None = None  # that task's log file
    # diagnostics.epoch_timing (see _diagnostics.eta_fields): seconds since the trial started, and once 2 epochs
    # are timed the epochs planned, the mean epoch time, the estimated time left and in all (None before)
    elapsed_s: float | None = None
    max_epochs: int | None = None
    epoch_s: float | None = None
    remaining_s: float | None = None
    total_s: float | None = None


@dataclass(frozen=True)
class StudyStatus:
    name: str
    storage: str  # masked
    metric: str
    direction: str
    n_trials: int | None
    counts: dict[str, int]
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_test: dict[str, float] = field(default_factory=dict)  # test metrics of the best checkpoint, if tested
    running: list[RunningTrial] = field(default_factory=list)
    stopped_message: str = ""
    failures_this_launch: int = 0
    jobs: list[dict[str, Any]] = field(default_factory=list)  # the study's SLURM array tasks: key, state, ...
    warm_started: int = 0  # finished trials copied by --warm-start: in counts, not in finished
    grid: dict[str, int] | None = None  # grid sampler: {"points": N, "done": D}
    resources: dict[str, dict[str, float]] = field(default_factory=dict)  # {"cpu_hours": {"used", "limit"}}
    objectives: list[str] = field(default_factory=list)  # "maximize val_acc", one per objective
    pareto: list[dict[str, Any]] = field(default_factory=list)  # multi-objective: {number, values, params}

    @property
    def finished(self) -> int:
        """Finished trials that ran in this study: what ``budget.n_trials`` counts."""
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0) - self.warm_started


def failed_in_launch(trials: list, launch_id: str | None) -> int:
    """Trials of this launch that failed on their own (not interrupted, not stale): what max_failures counts."""
    from optuna.trial import TrialState

    failed = TrialState.FAIL
    return sum(t.state is failed and t.system_attrs.get("sweeplight:launch") == launch_id
               and t.system_attrs.get("sweeplight:stop_reason") == "failed" for t in trials) if launch_id else 0


def resolve(target: str | Path | StudySpec) -> StudySpec:
    """A study file, a study directory (holding spec.json) or a spec."""
    if isinstance(target, StudySpec):
        return target
    path = Path(target)
    if path.is_dir():
        from sweeplight._spec import spec_from_dir

        return spec_from_dir(path)
    return load_spec(path)


def read_status(target: str | Path | StudySpec, *, launch_id: str | None = None) -> StudyStatus:
    """The study's status. Without ``launch_id`` (the ``status`` command) an RDB storage is read without importing
    Optuna; ``launch_id`` (a running launch counting its failures) needs every trial, through Optuna."""
    from sweeplight._status_read import read_fast, read_optuna
    from sweeplight._storage import mask_url

    spec = resolve(target)
    # Grid progress and resource use need every trial: those studies are read through Optuna.
    every_trial = launch_id or spec.sampler.name == "grid" or has_budget(spec)
    every_trial = every_trial or spec.multi_objective or bool(spec.constraints)  # the front, feasibility
    snapshot = None if every_trial else read_fast(spec.storage, spec.name, spec.objective.direction)
    failures = 0
    grid, resources = None, {}
    pareto: list[dict[str, Any]] = []
    if snapshot is None:
        from sweeplight._storage import load_study

        study = load_study(spec)
        trials = study.get_trials(deepcopy=False)
        snapshot = read_optuna(study, trials)
        failures = failed_in_launch(trials, launch_id)
        if spec.sampler.name == "grid":
            from sweeplight._grid import grid_state

            state = grid_state(spec.search_space, trials, launch_id)
            grid = {"points": state.size, "done": state.done}
        resources = budget_status(spec, trials)
        if spec.multi_objective or spec.constraints:  # the best feasible trial, or the Pareto front
            from sweeplight._pareto import status_front

            front_best, pareto = status_front(spec, trials)
            snapshot = dataclasses.replace(snapshot, best=front_best)
    counts = {state: 0 for state in STATES}
    counts.update(snapshot.counts)
    now = time.time()
    running = []
    for t in snapshot.running:
        attrs = t.system_attrs
        beat = attrs.get("sweeplight:heartbeat")
        job = attrs.get(SLURM_JOB)
        running.append(RunningTrial(slurm_job=job, log=str(log_path(spec.directory, job)) if job else None,
            number=t.number, worker=attrs.get("sweeplight:worker"), host=attrs.get("sweeplight:host"),
            pid=attrs.get("sweeplight:pid"), started=t.started, last_epoch=t.last_step, last_value=t.last_value,
            heartbeat_age_s=round(now - beat, 1) if beat else None,
            **eta_fields(attrs.get(PROGRESS_ATTR), t.started, now)))
    jobs = [dataclasses.asdict(j) for j in job_states(spec.directory)] if read_jobs(spec.directory) else []
    best = snapshot.best
    return StudyStatus(
        name=spec.name, storage=mask_url(spec.storage), metric=spec.objective.metric,
        direction=spec.objective.direction, n_trials=trial_budget(spec), counts=counts,
        best_number=best.number if best else None, best_value=best.value if best else None,
        best_params=dict(best.params) if best else {}, running=running,
        best_test={k: v for k, v in best.user_attrs.items() if k.startswith("test")} if best else {},
        stopped_message=snapshot.stopped, failures_this_launch=failures, jobs=jobs,
        warm_started=snapshot.warm_started, grid=grid, resources=resources,
        objectives=[f"{o.direction} {o.metric}" for o in spec.all_objectives], pareto=pareto)


def format_status(status: StudyStatus) -> str:
    counts = status.counts
    budget = f" of {status.n_trials}" if status.n_trials else ""
    lines = [
        f"study {status.name}  ({status.direction} {status.metric})  storage {status.storage}",
        f"finished {status.finished}{budget}: " + ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in STATES),
    ]
    if len(status.objectives) > 1:  # a multi-objective study: the front instead of one best trial
        from sweeplight._pareto import format_front_line

        lines[0] = f"study {status.name}  ({', '.join(status.objectives)})  storage {status.storage}"
        lines.append(format_front_line(status.pareto))
    elif status.best_number is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in status.best_params.items())
        tested = "".join(f"  {k}={_fmt(v)}" for k, v in status.best_test.items())
        value = _fmt(status.best_value)
        lines.append(f"best: trial {status.best_number}  {status.metric}={value}{tested}  {params}")
    else:
        lines.append("best: none yet (no complete trial)")
    if status.warm_started:
        lines.append(f"warm start: {status.warm_started} finished trials copied from another study (not counted)")
    if status.grid:
        lines.append(f"grid: {status.grid['done']} of {status.grid['points']} points done")
    for kind, use in status.resources.items():
        digits = 2 if use["limit"] >= 0.1 else 4  # a small test budget still shows its progress
        lines.append(f"{LABELS[kind]} {use['used']:.{digits}f} / {use['limit']:.{digits}f}")
    if status.stopped_message:
        lines.append(f"stopped: {status.stopped_message}")
    if status.jobs:
        states: dict[str, int] = {}
        for job in status.jobs:
            states[job["state"]] = states.get(job["state"], 0) + _count(job["key"])
        ids = sorted({job["key"].split("_")[0] for job in status.jobs}, key=int)
        lines.append(f"slurm jobs {', '.join(ids)}: " + ", ".join(f"{n} {state.lower()}" for state, n in
                                                                   sorted(states.items())))
    for r in status.running:
        where = f"worker {r.worker} on {r.host} pid {r.pid}" if r.host else "worker ?"
        if r.slurm_job:
            where = f"job {r.slurm_job} on {r.host}  log {r.log}"
        done = f" ({r.last_epoch + 1}/{r.max_epochs})" if r.last_epoch is not None and r.max_epochs else ""
        epoch = f"epoch {r.last_epoch}{done} {status.metric}={_fmt(r.last_value)}" if r.last_epoch is not None \
            else "no epoch yet"
        timing = eta_text(dataclasses.asdict(r))
        beat = f"heartbeat {r.heartbeat_age_s:.0f} s ago" if r.heartbeat_age_s is not None else ""
        lines.append(f"running: trial {r.number}  {where}  {epoch}  {timing}  {beat}".rstrip())
    return "\n".join(lines)


def _count(key: str) -> int:
    """Array tasks a squeue key stands for: '123_4' is one, '123_[5-7%2]' three."""
    match = re.search(r"\[(\d+)-(\d+)", key)
    return int(match.group(2)) - int(match.group(1)) + 1 if match else 1


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
