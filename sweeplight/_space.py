"""The search space: typed parameters, conditions, and how a trial samples them.

A parameter's name says where its value goes: ``lr`` or ``model.lr`` to the model, ``data.batch_size`` to the data
module (a bare name goes to every constructor that accepts it), ``trainer.gradient_clip_val`` into the trainer
section. Conditional parameters (``when: {optimizer: sgd}``) are sampled only when their condition holds, so Optuna
records exactly the parameters that shaped the trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError
from sweeplight._fields import as_mapping, check_keys, get_bool, get_choice, to_number, type_name

if TYPE_CHECKING:
    import optuna

PARAM_TYPES = ("float", "int", "categorical", "fixed")
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
            return self.value
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        """All values of this parameter for a grid search; floats need a ``step``."""
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            raise SpecError(f"search_space.{self.name}", "the grid sampler needs a 'step' for float parameters")
        step = self.step or 1
        count = int(round((self.high - self.low) / step)) + 1
        return [type(step)(self.low + i * step) if self.type == "int" else self.low + i * step for i in range(count)]


def parse_space(raw: Any) -> tuple[Param, ...]:
    """Parse ``search_space:`` into parameters ordered so that every condition comes after what it names."""
    mapping = as_mapping(raw, "search_space")
    params = {name: _parse_param(name, spec) for name, spec in mapping.items()}
    for param in params.values():
        for other, allowed in param.when.items():
            where = f"search_space.{param.name}.when.{other}"
            if other not in params:
                raise SpecError(where, f"names an unknown parameter{_close(other, params)}; "
                                f"known: {', '.join(params)}")
            if other == param.name:
                raise SpecError(where, "a parameter cannot depend on itself")
            target = params[other]
            possible = target.choices if target.type == "categorical" else (
                (target.value,) if target.type == "fixed" else None)
            if possible is not None:
                for value in allowed:
                    if value not in possible:
                        raise SpecError(where, f"value {value!r} is not among {other}'s values {list(possible)}")
    return tuple(_order(params))


def sample(space: tuple[Param, ...], trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Sample every active parameter in dependency order; inactive conditional ones are left out."""
    values: dict[str, Any] = {}
    for param in space:
        if param.is_active(values):
            values[param.name] = param.suggest(trial)
    return values


def _close(word: str, names: Mapping[str, Any]) -> str:
    from sweeplight._fields import did_you_mean

    return did_you_mean(word, names)


def _parse_param(name: str, spec: Any) -> Param:
    where = f"search_space.{name}"
    if not isinstance(name, str) or not name or name.startswith(".") or name.endswith("."):
        raise SpecError(where, "parameter names must be non-empty identifiers like 'lr' or 'data.batch_size'")
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
            raise SpecError(f"{where}.choices", f"expected a non-empty list, got {type_name(choices)} {choices!r}")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise SpecError(f"{where}.choices", f"choices must be null, booleans, numbers or strings; "
                                f"got {type_name(choice)} {choice!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise SpecError(f"{where}.choices", f"contains duplicates: {choices!r}")
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
                raise SpecError(f"{where}.{key}", f"must be an integer for type int, got {value!r}")
        low, high = int(low), int(high)
        step = None if step is None else int(step)
    if low > high:
        raise SpecError(where, f"low must be <= high, got low={low!r} high={high!r}; swap them")
    if log and low <= 0:
        raise SpecError(f"{where}.low", f"must be > 0 when log: true, got {low!r}; raise low or set log: false")
    if step is not None and step <= 0:
        raise SpecError(f"{where}.step", f"must be > 0, got {step!r}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise SpecError(f"{where}.step", "cannot be combined with log: true; drop one of them")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    mapping = as_mapping(raw, where)
    if not mapping:
        raise SpecError(where, "is empty; name a parameter and the value(s) it must take, e.g. {optimizer: sgd}")
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
