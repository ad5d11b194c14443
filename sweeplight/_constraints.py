"""Objectives beyond the first, and constraints: parsed from the study file, scored from a trial's final metrics.

A study file names several objectives as a list (``objective: [{metric: val_acc, direction: maximize},
{metric: param_count, direction: minimize}]``) and constraints as strings (``constraints: ["param_count <= 6e4"]``).
Each metric is anything the module logs, or one that sweeplight measures itself: ``param_count`` (the built model's
parameters, as ``summary.json`` has always recorded them) and ``epoch_time`` (mean seconds per validated epoch).

Every value of a trial is read from one epoch: the one the first objective picks (its best epoch with ``value:
best``, the last one with ``value: last``), which is also the epoch of the best checkpoint. Values of different
epochs would describe a model that never existed.

A constraint's value is what Optuna expects (``<= 0`` is feasible): ``value - bound`` for ``<=`` and ``<``,
``bound - value`` for ``>=`` and ``>``. Optuna 5 samplers (TPE, NSGA-II, NSGA-III, GP) read them from the trial's
``constraints`` system attribute, which the worker writes in the same storage write as the trial's final state: a
trial is never seen finished without them. (``constraints_func`` is deprecated in Optuna 5 and would cost one more
write per trial.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweeplight._errors import SpecError
from sweeplight._fields import show, type_name

OWN_METRICS = ("param_count", "epoch_time")  # measured by sweeplight, not logged by the module
OPERATORS = ("<=", "<", ">=", ">")
# Samplers that read trials' constraint values; the others sample as if there were none.
CONSTRAINED_SAMPLERS = ("tpe", "nsgaii", "nsgaiii", "gp")
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)  # Optuna raises on a multi-objective study
FEASIBLE_ATTR = "sweeplight:feasible"
CONSTRAINTS_ATTR = "constraints"  # Optuna's own key (optuna.study._constrained_optimization._CONSTRAINTS_KEY)
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_./:-]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``: the trial is feasible when it holds."""

    metric: str
    op: str  # one of OPERATORS
    bound: float
    text: str  # as written in the study file

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when the constraint holds (strict operators treat equality as holding,
        as Optuna cannot express a strict bound)."""
        return value - self.bound if self.op in ("<=", "<") else self.bound - value


def parse_constraints(raw: Any) -> tuple[Constraint, ...]:
    """``constraints:`` a list of strings like ``"param_count <= 1e6"``; one line naming ``constraints[i]``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("constraints", f"expected a list of strings like 'param_count <= 1e6', got {type_name(raw)} "
                        f"{show(raw)}")
    out = []
    for index, item in enumerate(raw):
        where = f"constraints[{index}]"
        if not isinstance(item, str):
            raise SpecError(where, f"expected a string like 'val_loss < 0.3', got {type_name(item)} {show(item)}; "
                            "quote it")
        match = _CONSTRAINT.match(item)
        if match is None:
            raise SpecError(where, f"got {show(item)}; write 'METRIC OP NUMBER' with OP one of "
                            f"{', '.join(OPERATORS)}, e.g. 'param_count <= 1e6'")
        metric, op, number = match.groups()
        try:
            bound = float(number)
        except ValueError:
            raise SpecError(where, f"{show(number)} is not a number; write e.g. 'param_count <= 1e6'") from None
        if not math.isfinite(bound):
            raise SpecError(where, f"the bound must be a finite number, got {show(number)}")
        out.append(Constraint(metric=metric, op=op, bound=bound, text=f"{metric} {op} {number}"))
    return tuple(out)


def check_search(*, objectives: tuple[Any, ...], constraints: tuple[Constraint, ...], sampler: str,
                 pruner: str) -> None:
    """What Optuna cannot do with several objectives, refused when the study file is read."""
    first = objectives[0]
    if first.metric in OWN_METRICS:
        where = "objective[0].metric" if len(objectives) > 1 else "objective.metric"
        raise SpecError(where, f"{first.metric!r} is measured once per trial, but the first objective picks the best "
                        "epoch and checkpoint; put a metric the module logs first (e.g. val_acc) and "
                        f"{first.metric} after it")
    if len(objectives) < 2:
        return
    seen: set[str] = set()
    for index, objective in enumerate(objectives):
        if objective.metric in seen:
            raise SpecError(f"objective[{index}].metric", f"{objective.metric!r} is listed twice; list each once")
        seen.add(objective.metric)
    if sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise SpecError("sampler.name", f"{sampler} cannot search a multi-objective study; use tpe, nsgaii, "
                        "nsgaiii, gp, random, qmc or grid")
    if pruner != "none":
        raise SpecError("pruner", f"got {pruner!r}; Optuna cannot prune multi-objective studies; set pruner: "
                        "{name: none}")


def sampler_notes(spec: Any) -> list[str]:
    """One note when the study has constraints its sampler does not use (they are still recorded)."""
    constraints = getattr(spec, "constraints", ())
    if constraints and spec.sampler.name not in CONSTRAINED_SAMPLERS:
        return [f"sampler {spec.sampler.name} ignores constraints; each trial's feasibility is still recorded "
                f"(samplers that use them: {', '.join(CONSTRAINED_SAMPLERS)})"]
    return []


def own_metrics(param_count: int | None, history: list[dict[str, Any]]) -> dict[str, float]:
    """sweeplight's own metrics of a trial: its model's parameters and mean seconds per validated epoch."""
    out: dict[str, float] = {}
    if param_count is not None:
        out["param_count"] = float(param_count)
    times = [h["time_s"] for h in history if isinstance(h.get("time_s"), (int, float))]
    if times:
        out["epoch_time"] = sum(times) / len(times)
    return out


@dataclass(frozen=True)
class Scored:
    """A trial's objective values and constraints, from the epoch its first objective picked."""

    values: list[float] | None  # every objective, in order; None when one is missing or not finite
    constraints: list[dict[str, Any]]  # {constraint, metric, value, violation}
    feasible: bool | None  # None when a constraint's metric is missing
    missing: str | None  # why values or constraints are missing (a metric not logged, or not finite)


def score(objectives: tuple[Any, ...], constraints: tuple[Constraint, ...], first_value: float | None,
          epoch: Mapping[str, Any], own: Mapping[str, float]) -> Scored:
    """The values Optuna is told and the constraint values the samplers read. ``first_value`` is the first
    objective's value as a single-objective trial scores it; ``epoch`` holds every metric of the picked epoch."""
    logged = ", ".join(sorted(k for k in epoch if k not in ("epoch", "time_s"))) or "(nothing)"

    def lookup(metric: str, field: str) -> tuple[float | None, str | None]:
        value = own.get(metric) if metric in OWN_METRICS else epoch.get(metric)
        if value is None:
            return None, (f"{field}: the module never logs {metric!r}; metrics logged: {logged}, plus sweeplight's "
                          f"{', '.join(OWN_METRICS)}")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"{field}: {metric} is {value!r}, not a finite number"
        return float(value), None

    values: list[float] | None = [first_value] if first_value is not None else None
    missing = None
    for index, objective in enumerate(objectives[1:], start=1):
        value, why = lookup(objective.metric, f"objective[{index}].metric")
        if value is None:
            values, missing = None, missing or why
        elif values is not None:
            values.append(value)
    scored, feasible = [], True
    for index, constraint in enumerate(constraints):
        value, why = lookup(constraint.metric, f"constraints[{index}]")
        if value is None:
            missing, feasible = missing or why, None
            continue
        violation = constraint.violation(value)
        scored.append({"constraint": constraint.text, "metric": constraint.metric, "value": value,
                       "violation": violation})
        if feasible is not None and violation > 0:
            feasible = False
    return Scored(values=values, constraints=scored, feasible=feasible if constraints else True, missing=missing)


def constraint_attrs(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The trial system attributes of a result's constraints: Optuna's ``constraints`` list (what the samplers
    read) and ``sweeplight:feasible``; nothing for a study without constraints or a trial not scored."""
    entries = summary.get("constraints")
    if not entries or summary.get("feasible") is None:
        return {}
    return {CONSTRAINTS_ATTR: [float(e["violation"]) for e in entries], FEASIBLE_ATTR: bool(summary["feasible"])}


def told_values(summary: Mapping[str, Any]) -> float | list[float] | None:
    """What a finished result tells the study: the value, or every objective's value in a multi-objective study."""
    objectives = summary.get("objectives") or []
    if len(objectives) > 1:
        values = [o.get("value") for o in objectives]
        return None if any(v is None for v in values) else [float(v) for v in values]
    return (summary.get("objective") or {}).get("value")
