"""Launch (or resume) a study on this machine: validate, create the study, run local worker processes.

Each worker is a separate ``python -m sweeplight._worker`` process: it pays the ~4 s ``import lightning`` once and
then runs many trials. Workers start in their own session so Ctrl-C reaches only the launcher, which then stops them
cleanly (their running trials are recorded as interrupted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplight._errors import SpecError, StudyStopped, SweeplightError, TrialConfigError
from sweeplight._spec import StudySpec, load_spec, spec_to_json
from sweeplight._status import StudyStatus, read_status
from sweeplight._trainer_spec import _device_count


@dataclass(frozen=True)
class LaunchResult:
    """What a finished launch reports; ``status`` has the per-state counts and the best trial."""

    name: str
    directory: Path
    status: StudyStatus
    stop_reason: str
    worker_logs: list[Path] = field(default_factory=list)
    job: dict[str, Any] | None = None  # the submitted SLURM array (id, workers, script, logs)


def launch(
    study: str | Path | StudySpec,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    workers: int | None = None,
    progress: bool = True,
    follow: bool = False,
    warm_start: str | None = None,
) -> LaunchResult:
    """Create or resume the study and run it to its budget with local worker processes, or submit it as one SLURM
    job array and return (``follow`` waits, with a progress bar, until the study's jobs have ended).

    >>> result = launch("studies/digits.yaml", overrides=["budget.n_trials=4"])  # doctest: +SKIP
    >>> result.status.best_value  # doctest: +SKIP

    ``warm_start``: another study (file or directory) whose finished trials seed this one (see ``_warm.py``).
    """
    spec = study if isinstance(study, StudySpec) else load_spec(study, overrides)
    source = None
    if warm_start is not None:
        from sweeplight._warm import warm_source

        source = warm_source(spec, warm_start)  # a different objective is refused before anything is created
    optuna_study = prepare(spec, progress=progress)
    if source is not None:
        from sweeplight._warm import copy_trials

        print(copy_trials(optuna_study, spec, source, warm_start), flush=True)
    directory = spec.directory
    launch_id = uuid.uuid4().hex[:12]
    deadline = time.time() + spec.budget.timeout if spec.budget.timeout else None
    count = workers or spec.executor.workers
    if spec.executor.kind == "slurm":
        return _submit(spec, launch_id, deadline, count, follow=follow, progress=progress)
    logs = [directory / "workers" / f"worker-{i}.log" for i in range(count)]
    threads = worker_threads(_cores(), count, _device_count(spec.trainer.devices))
    procs = [_start_worker(directory, i, launch_id, deadline, log, threads) for i, log in enumerate(logs)]
    try:
        _monitor(spec, procs, progress)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    codes = [p.returncode for p in procs]
    status = read_status(spec, launch_id=launch_id)
    stopped = status.stopped_message
    if stopped or any(code == 2 for code in codes):
        raise TrialConfigError(stopped or _last_error(logs))
    reason = _final_reason(spec, status)
    if reason.startswith("budget.max_failures"):
        raise StudyStopped(f"study {spec.name!r} stopped: {reason}; see the failed trials' summary.json and "
                           f"{directory / 'workers'}")
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad and reason.startswith(("budget.n_trials", "grid done")):  # a worker died; the others did its work
        print(f"warning: worker {bad[0][0]} exited with code {bad[0][1]}; its trial was re-run by the others; log: "
              f"{logs[bad[0][0]]}", file=sys.stderr)
    elif bad:
        raise StudyStopped(f"worker {bad[0][0]} exited with code {bad[0][1]}: {_last_error(logs[bad[0][0]:])}; "
                           f"log: {logs[bad[0][0]]}")
    return LaunchResult(name=spec.name, directory=directory, status=status, stop_reason=reason, worker_logs=logs)


def prepare(spec: StudySpec, *, progress: bool = True, clear_stop: bool = True) -> Any:
    """Everything before the workers start: check, warn, create or resume the study, write ``spec.json``, re-queue
    interrupted and stale trials. Returns the Optuna study."""
    import optuna

    from sweeplight._check import check_spec
    from sweeplight._heartbeat import ask_lock
    from sweeplight._samplers import build_pruner, build_sampler
    from sweeplight._storage import create_or_load_study, missing_top, storage_warnings
    from sweeplight._summary import write_json_atomic
    from sweeplight._trial_resume import requeue
    from sweeplight._warm import enqueue_configs
    from sweeplight._worker import STOP_ATTR

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_spec(spec)  # imports the user's classes and checks every name before anything is created
    if spec.executor.kind == "slurm":
        from sweeplight._slurm import check_cluster

        check_cluster(spec.executor.slurm)  # a partition that does not exist, too much memory: before any trial
    for warning in storage_warnings(spec.storage):
        print(f"warning: {warning}", file=sys.stderr)
    from sweeplight._constraints import sampler_notes

    for note in sampler_notes(spec):
        print(f"note: {note}", file=sys.stderr)
    directory = spec.directory
    new = missing_top(directory)  # removed again if anything below fails: a failed launch leaves nothing
    try:
        optuna_study = create_or_load_study(spec, sampler=build_sampler(spec), pruner=build_pruner(spec))
        (directory / "workers").mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / "spec.json", spec_to_json(spec))
    except (SweeplightError, OSError) as exc:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        if isinstance(exc, SweeplightError):
            raise
        raise SpecError("root", f"cannot write {directory}: {exc.strerror}; free space on that file system "
                        "(df -h) or point root at another directory") from None
    if clear_stop:  # a new launch, after the user fixed the config; not each `study work` task starting
        optuna_study._storage.set_study_system_attr(optuna_study._study_id, STOP_ATTR, "")
    with ask_lock(directory):
        requeued = requeue(optuna_study)  # interrupted or stale trials continue from their last checkpoint
        queued, held = enqueue_configs(optuna_study, spec)  # before any worker asks: they run first
    if queued or held:
        print(f"enqueue: queued {queued} of {len(spec.enqueue)} configurations ({held} already run or waiting)",
              file=sys.stderr)
    if requeued:
        print(f"re-queued interrupted trials {requeued}; they resume from their last checkpoints", file=sys.stderr)
    return optuna_study


def _submit(spec: StudySpec, launch_id: str, deadline: float | None, count: int, *, follow: bool,
            progress: bool) -> LaunchResult:
    from sweeplight._slurm_jobs import submit

    job = submit(spec, launch_id=launch_id, deadline=deadline, workers=count)
    if progress:
        print(f"submitted job array {job['job_id']} ({count} workers); sbatch script {job['script']}; logs "
              f"{job['logs']}", file=sys.stderr)
    reason = f"submitted as SLURM job {job['job_id']}"
    if not follow:
        return LaunchResult(name=spec.name, directory=spec.directory, status=read_status(spec), stop_reason=reason,
                            job=job)
    status = watch(spec, progress=progress, jobs=True)
    if status.stopped_message:
        raise TrialConfigError(status.stopped_message)
    reason = _final_reason(spec, status)
    if reason.startswith("budget.max_failures"):
        raise StudyStopped(f"study {spec.name!r} stopped: {reason}; see the failed trials' summary.json and "
                           f"{spec.directory / 'slurm'}")
    if reason == "workers finished":
        raise StudyStopped(f"the jobs of study {spec.name!r} ended before its budget was met ({status.finished} "
                           f"finished); see {job['logs']}; launch again to go on")
    return LaunchResult(name=spec.name, directory=spec.directory, status=status, stop_reason=reason, job=job)


def watch(spec: StudySpec, *, progress: bool = True, jobs: bool = False, interval: float = 2.0) -> StudyStatus:
    """Show the progress bar until the budget is met (and, with ``jobs``, the study's SLURM jobs have ended)."""
    from sweeplight._slurm_jobs import ACTIVE

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.budget.n_trials, desc=spec.name, unit="trial", dynamic_ncols=True)
    try:
        while True:
            status = None
            with contextlib.suppress(Exception):  # a storage outage pauses the bar
                status = read_status(spec)
                if bar is not None:
                    _update(bar, status)
            if status is not None and jobs and not any(job["state"] in ACTIVE for job in status.jobs):
                return status  # trials a dead job left RUNNING are failed as stale and re-run by the next launch
            if status is not None and not jobs and not status.counts.get("RUNNING"):
                n_trials = spec.budget.n_trials
                if n_trials is None or status.finished >= n_trials or status.stopped_message:
                    return status
            time.sleep(interval)
    finally:
        if bar is not None:
            bar.close()


def worker_threads(cores: int, workers: int, ranks: int = 1) -> int:
    """Torch threads for each of ``workers`` local processes of ``ranks`` DDP ranks each: the cores shared out.

    torch sizes its thread pool to the machine's cores in every process, so N workers would run N x cores threads
    that fight over the same cores (measured on 2 cores with 4 workers: trials 5-12x slower than one thread each).
    """
    return max(1, cores // max(1, workers * ranks))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (taskset, cgroups), not the machine's
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _start_worker(directory: Path, index: int, launch_id: str, deadline: float | None, log: Path,
                  threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "sweeplight._worker", "work", str(directory), "--launch-id", launch_id,
               "--worker", str(index)]
    if deadline is not None:
        command += ["--deadline", repr(deadline)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(threads))  # the user's own choice wins
    with open(log, "a") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _monitor(spec: StudySpec, procs: list[subprocess.Popen], progress: bool) -> None:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.budget.n_trials, desc=spec.name, unit="trial", dynamic_ncols=True)
    try:
        while True:
            done = all(p.poll() is not None for p in procs)
            if any(p.returncode == 2 for p in procs):
                _stop(procs)
                done = True
            if bar is not None:
                # A storage outage pauses the bar; the workers wait it out.
                with contextlib.suppress(Exception):
                    _update(bar, read_status(spec))
            if done:
                return
            time.sleep(1.0)
    finally:
        if bar is not None:
            bar.close()


def _update(bar: Any, status: StudyStatus) -> None:
    counts = status.counts
    finished = status.finished
    bar.n = min(finished, bar.total) if bar.total else finished
    best = f"{status.best_value:.4g}" if status.best_value is not None else "-"
    bar.set_postfix_str(f"complete={counts.get('COMPLETE', 0)} pruned={counts.get('PRUNED', 0)} "
                        f"failed={counts.get('FAIL', 0)} running={counts.get('RUNNING', 0)} best={best}",
                        refresh=False)
    bar.refresh()


def _stop(procs: list[subprocess.Popen], grace: float = 30.0) -> None:
    """SIGTERM every worker (it records its running trial as interrupted), then SIGKILL stragglers."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    end = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _final_reason(spec: StudySpec, status: StudyStatus) -> str:
    finished = status.finished  # trials copied by --warm-start do not count
    if status.failures_this_launch >= (spec.budget.max_failures or 10**9):
        return f"budget.max_failures={spec.budget.max_failures} reached"
    if status.grid and status.grid["done"] >= status.grid["points"]:
        return f"grid done ({status.grid['points']} points)"
    for kind, use in status.resources.items():
        if use["used"] >= use["limit"]:
            return f"budget.{kind}={use['limit']:g} reached ({use['used']:.3g} used)"
    from sweeplight._worker import budget_trials  # not at the top: ``python -m sweeplight._worker`` imports us

    n_trials = budget_trials(spec)
    if n_trials is not None and finished >= n_trials:
        return f"budget.n_trials={n_trials} reached"
    return "budget.timeout reached" if spec.budget.timeout else "workers finished"


def _last_error(logs: list[Path]) -> str:
    for log in logs:
        try:
            lines = log.read_text().splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if line.startswith("error: "):
                return line.removeprefix("error: ")
    return f"a worker failed; see {logs[0] if logs else 'the worker logs'}"

