"""Budgets in resources: ``budget.cpu_hours`` and ``budget.gpu_hours``, summed over every trial of the study.

A trial uses wall time x the devices it holds: the GPUs its trainer runs on (``devices`` x ``num_nodes`` when
``accelerator`` is ``gpu`` or ``cuda``), and the CPUs its worker was given (in a SLURM job ``cpus_per_task`` x its
tasks; a local worker, the torch threads ``launch`` gives it, ``OMP_NUM_THREADS``, x its DDP ranks). The worker
stamps each trial with those counts when it asks, and records the trial's use (``sweeplight:resources``, and
``resources`` in summary.json) with its result. Before each ask, under the ask lock, a worker sums what finished
trials used and what running ones have used so far; so the budget holds across workers and launches, because it
lives in the study's storage. Trials copied by ``--warm-start`` used nothing here; a trial killed without warning
(failed as stale) has no record and is not counted.
"""

from __future__ import annotations

import os
import time
from typing import Any

RESOURCES = "sweeplight:resources"  # trial system attr: {"cpu_hours": ..., "gpu_hours": ...}
CPUS = "sweeplight:cpus"  # trial system attr: the CPUs the trial holds
GPUS = "sweeplight:gpus"  # trial system attr: the GPUs the trial holds
KINDS = ("cpu_hours", "gpu_hours")
LABELS = {"cpu_hours": "cpu hours", "gpu_hours": "gpu hours"}


def has_budget(spec: Any) -> bool:
    return spec.budget.cpu_hours is not None or spec.budget.gpu_hours is not None


def trial_devices(spec: Any) -> dict[str, int]:
    """The CPUs and GPUs one trial of this worker holds (see the module docstring)."""
    from sweeplight._spec import _world_size
    from sweeplight._trainer_spec import _device_count

    trainer = spec.trainer
    gpus = 0
    if str(trainer.accelerator).lower() in ("gpu", "cuda"):
        devices = trainer.devices
        if devices == "auto" or devices == -1:
            import torch

            count = torch.cuda.device_count()
        else:
            count = _device_count(devices)
        nodes = trainer.args.get("num_nodes", 1)
        gpus = count * (nodes if isinstance(nodes, int) and nodes > 0 else 1)
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if os.environ.get("SLURM_JOB_ID") and per_task.isdigit():
        tasks = os.environ.get("SLURM_NTASKS", "1")
        cpus = int(per_task) * (int(tasks) if tasks.isdigit() else 1)
    else:
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            cpus = int(threads) * _world_size(trainer)
        else:  # a worker started outside launch: the CPUs this process may use
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {CPUS: cpus, GPUS: gpus}


def trial_use(wall_seconds: float, devices: dict[str, int]) -> dict[str, float]:
    """A trial's use: wall time x devices, in hours."""
    return {"cpu_hours": round(wall_seconds * devices[CPUS] / 3600, 6),
            "gpu_hours": round(wall_seconds * devices[GPUS] / 3600, 6)}


def used(trials: list, now: float | None = None) -> dict[str, float]:
    """What every trial of the study used: recorded for finished trials, elapsed x devices for running ones."""
    from optuna.trial import TrialState

    now = time.time() if now is None else now
    total = dict.fromkeys(KINDS, 0.0)
    for t in trials:
        attrs = t.system_attrs
        record = attrs.get(RESOURCES)
        if isinstance(record, dict):
            for kind in KINDS:
                total[kind] += float(record.get(kind) or 0.0)
        elif t.state == TrialState.RUNNING and t.datetime_start is not None and CPUS in attrs:
            elapsed = max(0.0, now - t.datetime_start.timestamp())
            total["cpu_hours"] += elapsed * float(attrs.get(CPUS) or 0) / 3600
            total["gpu_hours"] += elapsed * float(attrs.get(GPUS) or 0) / 3600
    return total


def budget_reason(spec: Any, trials: list) -> str | None:
    """Why no new trial may start because a resource budget is spent, or None."""
    if not has_budget(spec):
        return None
    total = used(trials)
    for kind in KINDS:
        limit = getattr(spec.budget, kind)
        if limit is not None and total[kind] >= limit:
            return f"budget.{kind} reached ({total[kind]:.3g} of {limit:g} {LABELS[kind]})"
    return None


def budget_status(spec: Any, trials: list) -> dict[str, dict[str, float]]:
    """``{"cpu_hours": {"used": 0.12, "limit": 0.5}}`` for each resource budget the study sets."""
    if not has_budget(spec):
        return {}
    total = used(trials)
    return {kind: {"used": round(total[kind], 6), "limit": getattr(spec.budget, kind)} for kind in KINDS
            if getattr(spec.budget, kind) is not None}


__all__ = ["budget_reason", "budget_status", "has_budget", "trial_devices", "trial_use", "used"]
