"""Grid search across parallel workers: every grid point runs exactly once, then the study stops.

Optuna's ``GridSampler`` picks its point when a trial starts, from its own shuffled copy of the grid, so several
processes (each seeding the shuffle differently, or asking at the same moment) run the same point twice (Hydra
#2892, Optuna #2925). Here the worker picks the point itself while it holds the study's ask lock: the first point of
the grid that no trial holds (RUNNING, WAITING, COMPLETE or PRUNED, or FAILED on its own in this launch: a point
whose code raises would raise again, so it is not retried until the next launch, after a fix; a stale or
interrupted trial is re-queued as a WAITING retry, which holds its point), and fixes it on the new trial as
Optuna's ``fixed_params``, so the sampler never chooses.
The grid is walked in the order of ``search_space`` (the last parameter changes fastest), identically in every
worker. A conditional parameter splits the grid only where its condition holds: ``optimizer: [adam, sgd]`` with
``momentum: [0.5, 0.9]`` for sgd is 3 points, not 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeplight._space import Param

FIXED_PARAMS = "fixed_params"  # Optuna's trial system attribute for enqueued (fixed) parameter values


@dataclass(frozen=True)
class GridState:
    """Where a grid study stands: ``free`` lists the points no trial holds, in grid order."""

    size: int
    done: int  # points with a COMPLETE or PRUNED trial, or one that failed on its own in this launch
    free: tuple[dict[str, Any], ...]


def grid_points(space: Sequence[Param]) -> list[dict[str, Any]]:
    """Every distinct configuration of the grid, as the Optuna parameters a trial of it records.

    Values that Optuna does not record (a fixed list or mapping) are left out; inactive conditional parameters are
    left out, so configurations that differ only there are one point.
    """
    params = list(space)

    def walk(index: int, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if index == len(params):
            yield dict(values)
            return
        param = params[index]
        if not param.is_active(values):
            yield from walk(index + 1, values)
            return
        for value in param.grid_values():
            values[param.name] = value
            yield from walk(index + 1, values)
        del values[param.name]

    return [_recorded(space, point) for point in walk(0, {})]


def grid_size(space: Sequence[Param]) -> int:
    return len(grid_points(space))


def _recorded(space: Sequence[Param], point: dict[str, Any]) -> dict[str, Any]:
    scalar = (bool, int, float, str)
    return {p.name: point[p.name] for p in space if p.name in point
            and (p.type != "fixed" or p.value is None or isinstance(p.value, scalar))}


def point_key(values: Mapping[str, Any]) -> tuple:
    """A hashable key that matches a point however its values came back from the storage (1e-3 vs 0.001)."""
    return tuple(sorted((name, _norm(value)) for name, value in values.items()))


def _norm(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return ("num", float(f"{float(value):.10g}"))
    return ("other", repr(value))


def grid_state(space: Sequence[Param], trials: list, launch_id: str | None = None) -> GridState:
    """The grid against the study's trials (read under the ask lock)."""
    from optuna.trial import TrialState

    points = grid_points(space)
    done: set[tuple] = set()
    held: set[tuple] = set()
    failed: set[tuple] = set()
    for t in trials:
        state = t.state
        if state == TrialState.FAIL:
            if (launch_id is not None and t.system_attrs.get("sweeplight:launch") == launch_id
                    and t.system_attrs.get("sweeplight:stop_reason") == "failed"):
                failed.add(point_key(t.params or t.system_attrs.get(FIXED_PARAMS) or {}))
            continue
        if state == TrialState.WAITING:
            values = t.system_attrs.get(FIXED_PARAMS) or {}
        else:  # a running trial's parameters are set under the lock, before another worker reads them
            values = t.params or t.system_attrs.get(FIXED_PARAMS) or {}
        key = point_key(values)
        held.add(key)
        if state in (TrialState.COMPLETE, TrialState.PRUNED):
            done.add(key)
    done |= failed - held  # a failed point being retried (waiting or running) is not done
    held |= failed
    keys = [point_key(p) for p in points]
    free = tuple(p for p, key in zip(points, keys, strict=True) if key not in held)
    return GridState(size=len(points), done=sum(key in done for key in set(keys)), free=free)


def trial_budget(spec: Any) -> int | None:
    """``budget.n_trials``, which for the grid sampler defaults to (and is capped at) the grid's size."""
    if spec.sampler.name != "grid":
        return spec.budget.n_trials
    size = grid_size(spec.search_space)
    return size if spec.budget.n_trials is None else min(size, spec.budget.n_trials)


__all__ = ["GridState", "grid_points", "grid_size", "grid_state", "point_key", "trial_budget"]
