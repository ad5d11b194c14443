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


def fail_stale(study: Any, interval: float, *, now: float | None = None, trials: list | None = None) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than two intervals and re-queue them; returns their numbers.

    Call it under ``ask_lock``; ``trials``: the study's trials when the caller has just read them (saves a read).
    Skipped for two intervals after this process saw a storage outage end.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from sweeplight._retrying import last_recovery
    from sweeplight._trial_resume import requeue

    if time.monotonic() - max(last_recovery(), _beat_failed) < 2 * interval:
        return []
    now = time.time() if now is None else now
    storage, stale = study._storage, []
    if trials is None:
        trials = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    running = TrialState.RUNNING  # looked up once: this scans every trial before every ask
    silent = [t for t in trials if t.state is running and t.system_attrs.get(HEARTBEAT) is not None
              and now - t.system_attrs[HEARTBEAT] > 2 * interval]
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


class Heartbeat:
    """The worker's heartbeat thread: every ``interval`` seconds, while a trial runs (``beating``), it stamps that
    trial and fails the stale trials of other workers. One thread for the worker's life, not one per trial.

    ``study`` must be a separate Study on its own (non-retrying) storage: a beat that fails is skipped, and must not
    wait out an outage while the training thread goes on.

        with Heartbeat(monitor, interval, study_dir) as heart, heart.beating(trial._trial_id):
            ...  # train
    """

    def __init__(self, study: Any, interval: float, study_dir: Path) -> None:
        self.study, self.interval, self.study_dir = study, interval, study_dir
        self._trial: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeplight-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        """Beat for ``trial_id`` until the block ends (its first beat within ``interval``: ask stamped it)."""
        from sweeplight._diagnostics import PROGRESS

        with self._lock:
            PROGRESS.take()  # an estimate left over from the worker's previous trial is not this one's
            self._trial = trial_id
        try:
            yield
        finally:
            with self._lock:
                self._trial = None

    def _run(self) -> None:
        global _beat_failed
        from optuna.exceptions import UpdateFinishedTrialError

        from sweeplight._diagnostics import PROGRESS, PROGRESS_ATTR

        while not self._stop.wait(self.interval):
            with self._lock:
                trial_id = self._trial
                progress = PROGRESS.take() if trial_id is not None else None
            if trial_id is None:
                continue
            try:
                if progress is None:
                    self.study._storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
                else:  # the trial's wall-time estimate for `study status` rides along: one write, not two
                    from sweeplight._writes import set_trial_attrs

                    set_trial_attrs(self.study._storage, trial_id,
                                    system={HEARTBEAT: time.time(), PROGRESS_ATTR: progress})
                with ask_lock(self.study_dir):
                    fail_stale(self.study, self.interval)
            except UpdateFinishedTrialError:
                continue  # the trial was told meanwhile
            except Exception:  # noqa: BLE001 - an outage: skip this beat, judge no one for a while
                _beat_failed = time.monotonic()
