"""The search space: typed parameters, conditions, and how a trial samples them.

A parameter's name says where its value goes: ``lr`` or ``model.lr`` to the model, ``data.batch_size`` to the data
module (a bare name goes to every constructor that accepts it), ``trainer.gradient_clip_val`` into the trainer
section. Conditional parameters (``when: {optimizer: sgd}``) are sampled only when their condition holds, so Optuna
records exactly the parameters that shaped the trial.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError
from sweeplight._fields import (
    as_mapping,
    check_keys,
    did_you_mean,
    get_bool,
    get_choice,
    key_text,
    show,
    to_number,
    type_name,
)

if TYPE_CHECKING:
    import optuna

PARAM_TYPES = ("float", "int", "categorical", "fixed")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("type", "value", "when"),
}


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) parameter."""

    name: str  # as written in the study file; also the Optuna parameter name
    type: str  # float | int | categorical | fixed
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None  # for type: fixed
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # parameter -> allowed values

    @property
    def target(self) -> str:
        """'model', 'data', 'trainer' or 'auto' (bare name: every constructor that accepts it)."""
        head = self.name.split(".", 1)[0]
        return head if head in ("model", "data", "trainer") and "." in self.name else "auto"

    @property
    def key(self) -> str:
        """The name without its target prefix: the constructor argument or trainer field."""
        return self.name.split(".", 1)[1] if self.target != "auto" else self.name

    def is_active(self, sampled: Mapping[str, Any]) -> bool:
        return all(name in sampled and sampled[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.type == "fixed":
            if self.value is None or isinstance(self.value, (bool, int, float, str)):
                # A one-choice categorical: the value is recorded with the trial like any searched parameter.
                return trial.suggest_categorical(self.name, [self.value])
            trial.set_user_attr(f"fixed.{self.name}", self.value)  # lists/mappings: Optuna params are scalars
            return self.value
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution | None:
        """The Optuna distribution ``suggest`` uses (None for a list/mapping fixed value, kept as a user attr)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "fixed":
            scalar = self.value is None or isinstance(self.value, (bool, int, float, str))
            return CategoricalDistribution([self.value]) if scalar else None
        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid_values(self) -> list[Any]:
        """All values of this parameter for a grid search; floats need a ``step``."""
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        if self.log and not (self.type == "int" and self.step == 1):
            raise SpecError(f"search_space.{self.name}", "the grid sampler needs a step, which log: true cannot "
                            f"take; list the grid values as a categorical instead, e.g. [{self.low}, ..., {self.high}]")
        if self.step is None and self.type == "float":
            raise SpecError(f"search_space.{self.name}.step", "is required by the grid sampler for float parameters; "
                            f"add one, e.g. step: {show((self.high - self.low) / 10)}, or list the values as a "
                            "categorical")
        step = self.step or 1
        # Never past high: Optuna would run a grid value outside the declared range with only a warning.
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if self.type == "int":
            return [int(self.low + i * step) for i in range(count)]
        return [round(self.low + i * step, 12) for i in range(count)]


def describe(space: tuple[Param, ...]) -> dict[str, dict[str, Any]]:
    """A JSON-able description of the space, stored with the study so a resume can refuse a changed space."""
    out: dict[str, dict[str, Any]] = {}
    for p in space:
        entry: dict[str, Any] = {"type": p.type}
        if p.type in ("float", "int"):
            entry.update(low=p.low, high=p.high, log=p.log, step=p.step)
        elif p.type == "categorical":
            entry["choices"] = list(p.choices)
        else:
            entry["value"] = p.value
        if p.when:
            entry["when"] = {k: list(v) for k, v in sorted(p.when.items())}
        out[p.name] = entry
    return out


def space_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two ``describe`` results, e.g. ``['lr (high 0.1 -> 0.3)', 'width (added)']``."""
    changes = [f"{name} (removed)" for name in old if name not in new]
    changes += [f"{name} (added)" for name in new if name not in old]
    for name in old:
        if name in new and old[name] != new[name]:
            keys = sorted(set(old[name]) | set(new[name]), key=str)
            diff = [f"{k} {show(old[name].get(k))} -> {show(new[name].get(k))}" for k in keys
                    if old[name].get(k) != new[name].get(k)]
            changes.append(f"{name} ({', '.join(diff)})")
    return changes


def parse_space(raw: Any) -> tuple[Param, ...]:
    """Parse ``search_space:`` into parameters ordered so that every condition comes after what it names."""
    mapping = as_mapping(raw, "search_space")
    params = {name: _parse_param(name, spec) for name, spec in mapping.items()}
    for param in params.values():
        for other, allowed in param.when.items():
            where = f"search_space.{param.name}.when.{key_text(other)}"
            if other not in params:
                raise SpecError(where, f"names an unknown parameter{did_you_mean(other, params)}; "
                                f"known: {', '.join(params)}")
            if other == param.name:
                raise SpecError(where, "a parameter cannot depend on itself")
            for value in allowed:
                _check_condition(params[other], value, where)
    return tuple(_order(params))


def _check_condition(target: Param, value: Any, where: str) -> None:
    """A condition that can never hold would silently leave its parameter out of every trial."""
    if target.type in ("categorical", "fixed"):
        possible = target.choices if target.type == "categorical" else (target.value,)
        if not any(_same(value, p) for p in possible):
            hint = did_you_mean(value, [p for p in possible if isinstance(p, str)])
            raise SpecError(where, f"value {show(value)} is not among {target.name}'s values "
                            f"{show(list(possible))}{hint}")
        return
    if target.type == "float" and target.step is None:
        raise SpecError(where, f"{target.name} is a continuous float, so it equals {show(value)} with probability "
                        "zero; condition on a categorical or int parameter instead")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(where, f"value {show(value)} is not a number, but {target.name} is {target.type}")
    steps = (value - target.low) / (target.step or 1)
    if not target.low <= value <= target.high or abs(steps - round(steps)) > 1e-9:
        raise SpecError(where, f"value {show(value)} is not a value {target.name} can take (from {target.low} to "
                        f"{target.high}, step {target.step or 1})")


def _same(a: Any, b: Any) -> bool:
    """Equal, and not a boolean standing in for a number (Python's ``True == 1``)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def sample(space: tuple[Param, ...], trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Sample every active parameter in dependency order; inactive conditional ones are left out."""
    values: dict[str, Any] = {}
    for param in space:
        if param.is_active(values):
            values[param.name] = param.suggest(trial)
    return values


def _parse_param(name: str, spec: Any) -> Param:
    where = f"search_space.{key_text(name)}"
    if not isinstance(name, str) or not _PARAM_NAME.match(name):
        raise SpecError(where, "parameter names are identifiers, optionally dotted, like 'lr', 'data.batch_size' or "
                        "'trainer.gradient_clip_val'")
    if isinstance(spec, list):  # shorthand: a list is a categorical
        spec = {"type": "categorical", "choices": spec}
    elif not isinstance(spec, Mapping):  # shorthand: a scalar is a fixed value
        spec = {"type": "fixed", "value": spec}
    spec = as_mapping(spec, where)
    kind = get_choice(spec, "type", where, PARAM_TYPES)
    check_keys(spec, _KEYS[kind], where)
    when = _parse_when(spec.get("when"), f"{where}.when")
    if kind == "fixed":
        if "value" not in spec:
            raise SpecError(f"{where}.value", "is required for type fixed")
        return Param(name, kind, value=spec["value"], when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{where}.choices", f"expected a non-empty list, got {type_name(choices)} {show(choices)}")
        for i, choice in enumerate(choices):
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise SpecError(f"{where}.choices", f"choices must be null, booleans, numbers or strings; "
                                f"got {type_name(choice)} {show(choice)}")
            # Optuna finds a choice by ==, so 1 and 1.0 (or 1 and true) would be recorded as the same choice.
            if any(choice == earlier for earlier in choices[:i]):
                raise SpecError(f"{where}.choices", f"{show(choice)} appears more than once (Optuna compares choices "
                                f"with ==, so 1, 1.0 and true count as equal) in {show(choices)}; remove the repeat")
        return Param(name, kind, choices=tuple(choices), when=when)
    for key in ("low", "high"):
        if key not in spec:
            raise SpecError(f"{where}.{key}", f"is required for type {kind}")
    low, high = to_number(spec["low"], f"{where}.low"), to_number(spec["high"], f"{where}.high")
    log = get_bool(spec, "log", where, False)
    step = None if spec.get("step") is None else to_number(spec["step"], f"{where}.step")
    if kind == "int":
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not float(value).is_integer():
                raise SpecError(f"{where}.{key}", f"must be an integer for type int, got {show(value)}; use type: "
                                "float for fractional values")
        low, high = int(low), int(high)
        step = None if step is None else int(step)
    if low > high:
        raise SpecError(where, f"low must be <= high, got low={show(low)} high={show(high)}; swap them")
    if log and low <= 0:
        raise SpecError(f"{where}.low", f"must be > 0 when log: true, got {show(low)}; raise low or set log: false")
    if step is not None and step <= 0:
        raise SpecError(f"{where}.step", f"must be > 0, got {show(step)}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise SpecError(f"{where}.step", "cannot be combined with log: true; drop one of them")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    mapping = as_mapping(raw, where)
    if not mapping:
        raise SpecError(where, "is empty; name a parameter and the value(s) it must take, e.g. {optimizer: sgd}")
    for name, values in mapping.items():
        if values == []:
            raise SpecError(f"{where}.{key_text(name)}", "is an empty list, so the condition never holds; list the "
                            "value(s) that activate this parameter")
    return {name: tuple(v) if isinstance(v, list) else (v,) for name, v in mapping.items()}


def _order(params: dict[str, Param]) -> list[Param]:
    ordered: list[Param] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join((*chain, name))
            raise SpecError(f"search_space.{name}.when", f"conditions form a cycle ({cycle}); break it")
        state[name] = "visiting"
        for other in params[name].when:
            visit(other, (*chain, name))
        state[name] = "done"
        ordered.append(params[name])

    for name in params:
        visit(name, ())
    return ordered
