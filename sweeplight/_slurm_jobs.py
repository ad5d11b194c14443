"""The study's SLURM jobs: submit the worker array through submitit, remember it, ask squeue/sacct, cancel.

Each launch appends one record to ``runs/<name>/slurm/jobs.json`` (job id, workers, the sbatch script). The
script and the logs stay in ``runs/<name>/slurm/`` (submitit's folder): ``<job>_submission.sh`` and
``<job>_<index>_0_log.out``, so a trial's log is found from its job id and array index alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sweeplight._heartbeat import SLURM_JOB  # trial system attr: the array task ("123_4") running the trial

JOBS_FILE = "jobs.json"
# States in which a job's trial is only waiting for the job to (re)start: it must not be failed as stale.
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING"}
ACTIVE = WAITING | {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def task_key() -> str | None:
    """This process's SLURM job as ``squeue -j`` names it: ``ARRAYJOB_INDEX`` in an array, else the job id."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def slurm_dir(study_dir: Path) -> Path:
    return study_dir / "slurm"


def log_path(study_dir: Path, key: str) -> Path:
    """Where submitit's srun writes the worker's output (rank 0) for array task ``key``."""
    return slurm_dir(study_dir) / f"{key}_0_log.out"


# ------------------------------------------------------------------------------------------------ submitting --

def submit(spec: Any, *, launch_id: str, deadline: float | None, workers: int) -> dict[str, Any]:
    """Submit one array of ``workers`` identical workers; returns (and records) the job."""
    import submitit

    from sweeplight._slurm import submitit_parameters
    from sweeplight._slurm_worker import SlurmWorker

    folder = slurm_dir(spec.directory)
    folder.mkdir(parents=True, exist_ok=True)
    res = spec.executor.slurm
    # SlurmExecutor, not AutoExecutor: the cluster is named, never guessed. Requeues are ours (no timeout count).
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=10**6, python=res.python)
    executor.update_parameters(**submitit_parameters(res, name=spec.name, workers=workers))
    worker = SlurmWorker(str(spec.directory), launch_id, deadline)
    jobs = executor.map_array(worker, list(range(workers)))
    job_id = jobs[0].job_id.split("_")[0]
    script = folder / f"{job_id}_submission.sh"
    record = {"job_id": job_id, "workers": workers, "launch_id": launch_id, "submitted_at": time.time(),
              "script": str(script), "logs": str(folder / f"{job_id}_<index>_0_log.out")}
    with contextlib.suppress(OSError):  # keep the script itself, not submitit's symlink to a hidden file
        text = script.read_text()
        script.unlink()
        script.write_text(text)
    path = folder / JOBS_FILE
    records = read_jobs(spec.directory)
    records.append(record)
    from sweeplight._summary import write_json_atomic

    write_json_atomic(path, {"jobs": records})
    return record


def read_jobs(study_dir: Path) -> list[dict[str, Any]]:
    path = slurm_dir(study_dir) / JOBS_FILE
    try:
        return list(json.loads(path.read_text()).get("jobs", []))
    except (OSError, ValueError):
        return []


# -------------------------------------------------------------------------------------------------- querying --

@dataclass(frozen=True)
class JobState:
    key: str  # 123_4, or 123_[5-7%2] for array tasks that have not started yet
    state: str
    reason: str = ""
    elapsed: str = ""
    start: float | None = None  # the current run's start (after a requeue: the new run)
    exit_code: str = ""


def run(command: list[str], *, timeout: float = 30, new_session: bool = False) -> subprocess.CompletedProcess | None:
    """A SLURM command; None when it cannot start or hangs (slurmctld unreachable)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              start_new_session=new_session)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _rows(out: subprocess.CompletedProcess, width: int) -> list[list[str]]:
    """The '|'-separated rows of a ``squeue -o``/``sacct -P`` answer."""
    return [parts for parts in (line.split("|") for line in out.stdout.splitlines()) if len(parts) == width]


def squeue(ids: list[str]) -> list[JobState] | None:
    """Jobs still in the queue (pending, running, requeued); None when squeue cannot answer."""
    if not ids:
        return []
    out = run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%r|%M|%S"], timeout=20)
    if out is None or out.returncode != 0:
        # A finished job id that slurmctld has already forgotten (MinJobAge) makes squeue fail.
        return [] if out is not None and "Invalid job id" in out.stderr else None
    return [JobState(key, state, reason, elapsed, _time(start)) for key, state, reason, elapsed, start in _rows(out, 5)]


def sacct(ids: list[str]) -> list[JobState]:
    """Every array task of the jobs as accounting knows them (finished ones too); [] without accounting."""
    if not ids:
        return []
    out = run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode,Elapsed,Start"],
              timeout=20)
    if out is None or out.returncode != 0:
        return []
    return [JobState(key, state.split()[0], "", elapsed, _time(start), code)
            for key, state, code, elapsed, start in _rows(out, 5)]


def job_states(study_dir: Path) -> list[JobState]:
    """Every array task of the study's jobs: the queue's view where it has one, accounting's otherwise."""
    ids = [r["job_id"] for r in read_jobs(study_dir)]
    queued = {s.key: s for s in squeue(ids) or []}
    in_queue = {key.split("_")[0] for key in queued}
    # sacct names a pending throttled array as one record '12_[2-3%1]' where squeue -r lists 12_2 and 12_3
    merged = {s.key: s for s in sacct(ids) if not ("[" in s.key and s.key.split("_")[0] in in_queue)}
    merged.update(queued)
    return sorted(merged.values(), key=lambda s: _sort_key(s.key))


def _sort_key(key: str) -> tuple:
    job, _, index = key.partition("_")
    return (int(job) if job.isdigit() else 0, int(index) if index.isdigit() else -1, key)


def _time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def waiting_for_requeue(keys: list[str], beats: dict[str, float], grace: float, requeued: set[str]) -> set[str]:
    """Array tasks whose trial only waits for its job to come back: pending/requeued, still COMPLETING after its
    worker requeued it (``requeued``: not a job that was killed), or restarted after the trial's last heartbeat
    less than ``grace`` seconds ago (the new run is still starting up)."""
    states = squeue(sorted(set(keys)))
    if states is None:
        return set(keys)  # squeue cannot say (slurmctld busy): judge no SLURM trial this time
    now, found = time.time(), set()
    for s in states:
        restarted = s.start is not None and s.key in beats and s.start >= beats[s.key] - 2 and now - s.start < grace
        held = "held" in s.reason.lower() or s.state == "REQUEUE_HOLD"
        ending_requeued = s.state == "COMPLETING" and s.key in requeued
        if (s.state in WAITING and not held) or ending_requeued or (s.state == "RUNNING" and restarted):
            found.add(s.key)
    return found


def job_state() -> str | None:
    """This job's state as slurmctld sees it now (RUNNING, COMPLETING, ...); None when it cannot say."""
    key = task_key()
    if not key:
        return None
    out = run(["scontrol", "show", "job", "-o", key], timeout=20, new_session=True)
    for field in out.stdout.split() if out is not None else ():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    return None


def requeue_self() -> bool:
    """``scontrol requeue`` this job (the array task); True when SLURM accepted it.

    Run in a new session: the SIGTERM that follows a preemption notice must not kill the request on its way.
    """
    key = task_key()
    if not key:
        return False
    out = run(["scontrol", "requeue", key], new_session=True)
    if out is None:
        return False
    if out.returncode != 0:
        print(f"scontrol requeue {key} failed: {out.stderr.strip()[:200]}", flush=True)
    return out.returncode == 0


def cancelled(study_dir: Path) -> bool:
    """``study cancel`` was run for this job: a signal now means stop for good, not requeue."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    return bool(job) and (slurm_dir(study_dir) / "cancelled" / str(job)).exists()


def cancel(study: Any, study_dir: Path, *, wait: float = 90) -> tuple[list[str], list[int]]:
    """``scancel`` the study's jobs; their running trials end as 'interrupted', so the next launch re-runs them
    from their checkpoints. Returns (job ids cancelled, trial numbers marked)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from sweeplight._errors import SweeplightError

    ids = [r["job_id"] for r in read_jobs(study_dir)]
    queue = squeue(ids)
    if queue is None:
        raise SweeplightError("squeue does not answer; nothing was cancelled or marked; try again")
    live = sorted({s.key.split("_")[0] for s in queue if s.state in ACTIVE}, key=int)
    marks = slurm_dir(study_dir) / "cancelled"
    marks.mkdir(parents=True, exist_ok=True)
    for job in live:
        (marks / job).touch()  # read by the workers' signal handler: do not requeue
    if live:
        run(["scancel", *live])
    end = time.time() + wait
    while live and time.time() < end and any(s.state in ACTIVE for s in squeue(live) or []):
        time.sleep(1)
    marked = []  # trials whose worker could not say so itself (killed before it recorded the interruption)
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        job = str(t.system_attrs.get(SLURM_JOB) or "")
        if job.split("_")[0] in ids:
            try:
                storage.set_trial_system_attr(t._trial_id, "sweeplight:stop_reason", "interrupted")
                storage.set_trial_system_attr(t._trial_id, "sweeplight:cancelled_at", time.time())
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # its worker recorded it meanwhile
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.FAIL,)):
        if str(t.system_attrs.get(SLURM_JOB) or "").split("_")[0] in live and \
                t.system_attrs.get("sweeplight:stop_reason") == "interrupted":
            marked.append(t.number)
    return live, sorted(marked)


__all__ = ["SLURM_JOB", "JobState", "cancel", "cancelled", "job_state", "job_states", "log_path", "read_jobs",
           "requeue_self", "submit", "task_key", "waiting_for_requeue"]
