"""Heartbeats on every storage: a worker that dies without warning has its trial failed as stale and re-queued.

Optuna's own heartbeat covers RDB storages inside ``study.optimize`` only. Here the running trial's worker writes a
``sweeplight:heartbeat`` timestamp (a trial system attribute, so SQLite, journal files and PostgreSQL all carry it)
every ``interval`` seconds, and every live worker checks the other running trials on the same beat: a trial whose
last heartbeat is older than two intervals is failed with stop reason ``stale`` and re-queued (it resumes from its
``last.ckpt``), unless its SLURM job is waiting to run again after a requeue (that job continues the trial
itself). A worker that has just come back from a storage outage waits two intervals before judging anyone,
since the other workers could not write their heartbeats either.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEARTBEAT = "sweeplight:heartbeat"
SLURM_JOB = "sweeplight:slurm_job"  # the array task running the trial (see _slurm_jobs)
REQUEUED_AT = "sweeplight:requeued_at"  # when the trial's worker last requeued its SLURM job
STALE_AT = "sweeplight:stale_at"
_beat_failed = float("-inf")  # monotonic time of this process's last failed heartbeat write


@contextlib.contextmanager
def ask_lock(study_dir: Path) -> Iterator[None]:
    """The study's lock around "check the budget, fail stale trials, ask": keeps budgets exact, re-queues once."""
    path = study_dir / ".ask.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fail_stale(study: Any, interval: float, *, now: float | None = None) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than two intervals and re-queue them; returns their numbers.

    Call it under ``ask_lock``. Skipped for two intervals after this process saw a storage outage end.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from sweeplight._retrying import last_recovery
    from sweeplight._trial_resume import requeue

    if time.monotonic() - max(last_recovery(), _beat_failed) < 2 * interval:
        return []
    now = time.time() if now is None else now
    storage, stale = study._storage, []
    silent = [t for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
              if t.system_attrs.get(HEARTBEAT) is not None and now - t.system_attrs[HEARTBEAT] > 2 * interval]
    requeued = _requeued_jobs(silent, interval)
    for t in silent:
        if t.system_attrs.get(SLURM_JOB) in requeued:
            continue  # its job was requeued: the next run of that job continues this very trial
        try:  # the reason first: a finished trial's attributes can no longer change
            storage.set_trial_system_attr(t._trial_id, "sweeplight:stop_reason", "stale")
            storage.set_trial_system_attr(t._trial_id, STALE_AT, now)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            continue  # another worker got there first, or the trial just finished
        stale.append(t.number)
    if stale:
        requeue(study)
    return stale


def _requeued_jobs(trials: list, interval: float) -> set[str]:
    beats = {t.system_attrs[SLURM_JOB]: t.system_attrs[HEARTBEAT] for t in trials if t.system_attrs.get(SLURM_JOB)}
    if not beats:
        return set()
    from sweeplight._slurm_jobs import waiting_for_requeue

    requeued = {t.system_attrs[SLURM_JOB] for t in trials if t.system_attrs.get(SLURM_JOB)
                and t.system_attrs.get(REQUEUED_AT, 0) >= t.system_attrs[HEARTBEAT]}
    return waiting_for_requeue(list(beats), beats, grace=2 * interval + 120, requeued=requeued)


@contextlib.contextmanager
def beating(study: Any, trial_id: int, interval: float, study_dir: Path) -> Iterator[None]:
    """Beat for ``trial_id`` every ``interval`` seconds and watch the other running trials, until the block ends.

    ``study`` must be a separate Study on its own (non-retrying) storage: a beat that fails is skipped, and must not
    wait out an outage while the training thread goes on.
    """
    done = threading.Event()

    def beat() -> None:
        global _beat_failed
        while not done.wait(interval):
            try:
                study._storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
                with ask_lock(study_dir):
                    fail_stale(study, interval)
            except Exception:  # noqa: BLE001 - an outage: skip this beat, judge no one for a while
                _beat_failed = time.monotonic()

    thread = threading.Thread(target=beat, name="sweeplight-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
