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

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def failed_in_launch(trials: list, launch_id: str | None) -> int:
    """Trials of this launch that failed on their own (not interrupted, not stale): what max_failures counts."""
    from optuna.trial import TrialState

    return sum(t.state == TrialState.FAIL and t.system_attrs.get("sweeplight:launch") == launch_id
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
    snapshot = None if launch_id else read_fast(spec.storage, spec.name, spec.objective.direction)
    failures = 0
    if snapshot is None:
        from sweeplight._storage import load_study

        study = load_study(spec)
        trials = study.get_trials(deepcopy=False)
        snapshot = read_optuna(study, trials)
        failures = failed_in_launch(trials, launch_id)
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
            heartbeat_age_s=round(now - beat, 1) if beat else None))
    jobs = [dataclasses.asdict(j) for j in job_states(spec.directory)] if read_jobs(spec.directory) else []
    best = snapshot.best
    return StudyStatus(
        name=spec.name, storage=mask_url(spec.storage), metric=spec.objective.metric,
        direction=spec.objective.direction, n_trials=spec.budget.n_trials, counts=counts,
        best_number=best.number if best else None, best_value=best.value if best else None,
        best_params=dict(best.params) if best else {}, running=running,
        best_test={k: v for k, v in best.user_attrs.items() if k.startswith("test")} if best else {},
        stopped_message=snapshot.stopped, failures_this_launch=failures, jobs=jobs)


def format_status(status: StudyStatus) -> str:
    counts = status.counts
    budget = f" of {status.n_trials}" if status.n_trials else ""
    lines = [
        f"study {status.name}  ({status.direction} {status.metric})  storage {status.storage}",
        f"finished {status.finished}{budget}: " + ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in STATES),
    ]
    if status.best_number is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in status.best_params.items())
        tested = "".join(f"  {k}={_fmt(v)}" for k, v in status.best_test.items())
        value = _fmt(status.best_value)
        lines.append(f"best: trial {status.best_number}  {status.metric}={value}{tested}  {params}")
    else:
        lines.append("best: none yet (no complete trial)")
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
        epoch = f"epoch {r.last_epoch} {status.metric}={_fmt(r.last_value)}" if r.last_epoch is not None else \
            "no epoch yet"
        beat = f"heartbeat {r.heartbeat_age_s:.0f} s ago" if r.heartbeat_age_s is not None else ""
        lines.append(f"running: trial {r.number}  {where}  {epoch}  {beat}".rstrip())
    return "\n".join(lines)


def _count(key: str) -> int:
    """Array tasks a squeue key stands for: '123_4' is one, '123_[5-7%2]' three."""
    match = re.search(r"\[(\d+)-(\d+)", key)
    return int(match.group(2)) - int(match.group(1)) + 1 if match else 1


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
