"""Interrupted and stale trials are not lost: they are re-queued and continue from their last checkpoint.

A trial whose worker was stopped (Ctrl-C, SIGTERM) or died (no heartbeat) is FAIL with stop reason 'interrupted'
or 'stale'. ``requeue`` enqueues its parameters once, linking the new trial to the old one; the worker that picks
the new trial up resumes training from the old trial's ``last.ckpt`` and keeps its learning curve, so at most the
epoch in progress is lost.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sweeplight._callbacks import HISTORY_FILE

RETRY_OF = "sweeplight:retry_of"
RESTARTS = "sweeplight:restarts"


def requeue(study: Any, trials: list | None = None) -> list[int]:
    """Enqueue each interrupted or stale trial once; returns the numbers re-queued.

    Call it under the study's ask lock: "already re-queued" is read from the trials that name it in ``retry_of``.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    from sweeplight._sync import SYNCED_FROM

    # Every worker calls this before each ask: the common case (nothing to re-queue) must stay one cheap pass.
    failed = TrialState.FAIL
    cut = [t for t in trials if t.state is failed
           and t.system_attrs.get("sweeplight:stop_reason") in ("interrupted", "stale")]
    if not cut:
        return []
    # Already re-run, or its result was recovered from its summary.
    retried = {t.user_attrs.get(RETRY_OF) for t in trials} | {t.system_attrs.get(SYNCED_FROM) for t in trials}
    done = []
    for t in cut:
        if t.number in retried:
            continue
        study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number,
                                                  RESTARTS: t.user_attrs.get(RESTARTS, 0)
                                                  + 1}, skip_if_exists=False)
        done.append(t.number)
    return done


def resume_for(spec: Any, trial: Any) -> Any:
    """A ``Resume`` when ``trial`` replaces an interrupted trial that left a checkpoint, else None."""
    old = trial.user_attrs.get(RETRY_OF)
    if old is None:
        return None
    return _resume(spec, old, int(trial.user_attrs.get(RESTARTS, 1)))


def continue_own(spec: Any, study: Any, job: str | None) -> list[tuple[Any, Any]]:
    """The trials a requeued SLURM job left RUNNING, as (trial, Resume or None) to continue in place.

    SLURM runs one instance of a job at a time, so a RUNNING trial stamped with this job's id belongs to a
    previous run of this very job (requeued after a preemption or a time-limit signal, or after a node failure).
    It continues as the same Optuna trial: same number, its intermediate values and pruning history kept.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from sweeplight._heartbeat import HEARTBEAT
    from sweeplight._slurm_jobs import SLURM_JOB

    if not job:
        return []
    own = []
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if t.system_attrs.get(SLURM_JOB) != job:
            continue
        restarts = int(t.user_attrs.get(RESTARTS, 0)) + 1
        try:
            storage.set_trial_system_attr(t._trial_id, HEARTBEAT, time.time())
            storage.set_trial_system_attr(t._trial_id, "sweeplight:pid", os.getpid())
            storage.set_trial_system_attr(t._trial_id, "sweeplight:host", os.uname().nodename)
            storage.set_trial_user_attr(t._trial_id, RESTARTS, restarts)
        except UpdateFinishedTrialError:
            continue  # failed as stale meanwhile: its re-run is queued as a new trial
        own.append((optuna.trial.Trial(study, t._trial_id), _resume(spec, t.number, restarts)))
    return own


def _resume(spec: Any, number: int, restarts: int) -> Any:
    from sweeplight._trial import Resume

    old_dir = spec.directory / "trials" / str(number)
    checkpoint = old_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        return None  # interrupted before its first epoch: start from scratch
    epoch = _checkpoint_epoch(checkpoint)
    old_history: list[dict[str, Any]] = []
    for name in ("summary.json", HISTORY_FILE):  # no summary when the worker was killed without warning
        if (old_dir / name).is_file():
            old_history = json.loads((old_dir / name).read_text()).get("history") or []
            break
    history = [h for h in old_history if h["epoch"] <= epoch]
    return Resume(from_trial=number, checkpoint=checkpoint, history=history, restarts=restarts,
                  epochs_lost=len(old_history) - len(history))


def _checkpoint_epoch(path: Path) -> int:
    import torch

    data = torch.load(path, map_location="cpu", weights_only=weights_only(path))
    return int(data.get("epoch", -1))


def weights_only(path: Path | str) -> bool:
    """Load with ``weights_only=True`` unless the checkpoint holds Python objects (hyperparameters a module saved
    with ``save_hyperparameters`` may); the full unpickler runs only on our own trial's checkpoints, and says so."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        unsafe = get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - an unreadable file fails properly in the load that follows
        return True
    if unsafe:
        print(f"checkpoint {path} holds Python objects ({', '.join(unsafe[:3])}); loading it with "
              "weights_only=False", flush=True)
    return not unsafe
