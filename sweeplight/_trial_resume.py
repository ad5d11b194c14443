"""Interrupted and stale trials are not lost: they are re-queued and continue from their last checkpoint.

A trial whose worker was stopped (Ctrl-C, SIGTERM) or died (no heartbeat) is FAIL with stop reason 'interrupted'
or 'stale'. ``requeue`` enqueues its parameters once, linking the new trial to the old one; the worker that picks
the new trial up resumes training from the old trial's ``last.ckpt`` and keeps its learning curve, so at most the
epoch in progress is lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sweeplight._callbacks import HISTORY_FILE

RETRY_OF = "sweeplight:retry_of"


def requeue(study: Any) -> list[int]:
    """Enqueue each interrupted or stale trial once; returns the numbers re-queued.

    Call it under the study's ask lock: "already re-queued" is read from the trials that name it in ``retry_of``.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    from sweeplight._sync import SYNCED_FROM

    # Already re-run, or its result was recovered from its summary.
    retried = {t.user_attrs.get(RETRY_OF) for t in trials} | {t.system_attrs.get(SYNCED_FROM) for t in trials}
    done = []
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried:
            continue
        if t.system_attrs.get("sweeplight:stop_reason") not in ("interrupted", "stale"):
            continue
        study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number,
                                                  "sweeplight:restarts": t.user_attrs.get("sweeplight:restarts", 0)
                                                  + 1}, skip_if_exists=False)
        done.append(t.number)
    return done


def resume_for(spec: Any, trial: Any) -> Any:
    """A ``Resume`` when ``trial`` replaces an interrupted trial that left a checkpoint, else None."""
    from sweeplight._trial import Resume

    old = trial.user_attrs.get(RETRY_OF)
    if old is None:
        return None
    old_dir = spec.directory / "trials" / str(old)
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
    return Resume(from_trial=old, checkpoint=checkpoint, history=history,
                  restarts=int(trial.user_attrs.get("sweeplight:restarts", 1)),
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
