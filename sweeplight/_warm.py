"""Warm starts: known-good configurations first (``enqueue:``), and a new study seeded with another's results.

``enqueue:`` lists parameter mappings. Each is checked against the search space when the study file is read, and
queued (Optuna's ``fixed_params``, a WAITING trial) when the study is launched, before any worker asks, so they run
before sampled trials. A configuration is queued only if no trial already holds it (any state but FAIL, waiting
included), so launching again never runs it twice; a failed one is queued again. Parameters an entry leaves out are
sampled, as Optuna does for partially fixed parameters, except in a grid study, where every active parameter is
required (the grid sampler cannot fill in the rest).

``launch --warm-start OTHER`` copies OTHER's COMPLETE trials into this study as finished trials, with this study's
distributions, when every parameter fits this space. Pruned trials are not copied: their value is an intermediate
one, judged against OTHER's pruning rungs, and TPE would read it as a result. Each copy carries
``sweeplight:warm_start_from = "<other name>#<number>"``, so a second launch copies nothing twice, and copies do
not count toward ``budget.n_trials``: the budget is what runs here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sweeplight._errors import SpecError
from sweeplight._fields import as_mapping, did_you_mean, key_text, show, type_name
from sweeplight._space import Param

WARM_FROM = "sweeplight:warm_start_from"  # trial system attr on a copied trial: "<other study>#<number>"
WARM_COUNT = "sweeplight:warm_started"  # study system attr: how many trials --warm-start copied in all
ENQUEUED = "sweeplight:enqueued"  # trial system attr: the index of the enqueue: entry it runs
FIXED_PARAMS = "fixed_params"


# ------------------------------------------------------------------------------------------------ values --

def fit_value(param: Param, value: Any) -> tuple[Any, str | None]:
    """``value`` as this parameter holds it, or the reason it is not one of its values."""
    if param.type == "fixed":
        return (param.value, None) if _same(value, param.value) else (None, f"is fixed to {show(param.value)}")
    if param.type == "categorical":
        for choice in param.choices:
            if _same(value, choice):
                return choice, None
        return None, f"got {show(value)}; allowed: {show(list(param.choices))}"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None, f"expected a number, got string {show(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"expected a number, got {type_name(value)} {show(value)}"
    if param.type == "int":
        if not float(value).is_integer():
            return None, f"expected an integer, got {show(value)}"
        value = int(value)
    if not param.low <= value <= param.high:
        return None, f"got {show(value)}; allowed: {param.low} to {param.high}"
    if param.step is not None:
        steps = (value - param.low) / param.step
        if abs(steps - round(steps)) > 1e-9:
            return None, f"got {show(value)}, not on the grid {param.low} + k x {param.step}"
    return (value if param.type == "int" else float(value)), None


def _same(a: Any, b: Any) -> bool:
    """Equal (floats to 1e-12), and not a boolean standing in for a number (Python's ``True == 1``)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _condition(param: Param) -> str:
    return " and ".join(f"{name} in {show(list(values))}" for name, values in param.when.items())


# ------------------------------------------------------------------------------------------------ enqueue --

def parse_enqueue(raw: Any, space: Sequence[Param], *, grid: bool) -> tuple[dict[str, Any], ...]:
    """Validate ``enqueue:`` against the search space; returns each entry's searched parameters, typed."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("enqueue", f"expected a list of parameter mappings, e.g. [{{lr: 0.01, width: 64}}], got "
                        f"{type_name(raw)} {show(raw)}")
    configs: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        config = _parse_entry(item, space, f"enqueue[{index}]", grid=grid)
        for earlier, other in enumerate(configs):
            if other == config:
                raise SpecError(f"enqueue[{index}]", f"is the same configuration as enqueue[{earlier}]; remove the "
                                "repeat")
        configs.append(config)
    return tuple(configs)


def _parse_entry(item: Any, space: Sequence[Param], where: str, *, grid: bool) -> dict[str, Any]:
    mapping = as_mapping(item, where)
    if not mapping:
        raise SpecError(where, "is empty; give parameter values, e.g. {lr: 0.01}")
    names = [p.name for p in space]
    for key in mapping:
        if key not in names:
            raise SpecError(f"{where}.{key_text(key)}", f"is not a parameter of search_space{did_you_mean(key, names)}"
                            f"; parameters: {', '.join(names)}")
    known: dict[str, Any] = {}  # values decided by this entry (or fixed), for the conditions
    open_: set[str] = set()  # parameters left to the sampler: conditions on them cannot be judged now
    config: dict[str, Any] = {}
    for param in space:  # dependency order
        field = f"{where}.{param.name}"
        undecided = [name for name in param.when if name in open_]
        given = param.name in mapping
        if undecided:
            if given:
                raise SpecError(field, f"is used only when {_condition(param)}, and this entry leaves "
                                f"{undecided[0]} to the sampler; give {undecided[0]} too")
            open_.add(param.name)
            continue
        if not param.is_active(known):
            if given:
                raise SpecError(field, f"is not used in this configuration ({_condition(param)} does not hold); "
                                "remove it")
            continue
        if given:
            value, problem = fit_value(param, mapping[param.name])
            if problem:
                raise SpecError(field, f"{problem}; give a value of search_space.{param.name}")
            known[param.name] = value
            if param.type != "fixed":
                config[param.name] = value
        elif param.type == "fixed":
            known[param.name] = param.value
        elif grid:
            raise SpecError(field, "is missing; with the grid sampler every enqueued configuration must give each "
                            "parameter it uses")
        else:
            open_.add(param.name)
    return config


def _covers(trial: Any, config: Mapping[str, Any], complete: bool) -> bool:
    """Whether ``trial`` (not failed) already holds this configuration: queued with it (its ``fixed_params``
    include it: the enqueued trial, or the re-run of an interrupted one), or, for a configuration that gives every
    parameter, sampled with exactly these values."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return False
    fixed = trial.system_attrs.get(FIXED_PARAMS) or {}
    if all(name in fixed and _same(fixed[name], value) for name, value in config.items()):
        return True
    return complete and set(trial.params) >= set(config) and all(
        _same(trial.params[name], value) for name, value in config.items())


def _complete(space: Sequence[Param], config: Mapping[str, Any]) -> bool:
    """Every active searched parameter is given."""
    values: dict[str, Any] = {}
    for param in space:
        if not param.is_active(values):
            continue
        if param.type == "fixed":
            values[param.name] = param.value
        elif param.name in config:
            values[param.name] = config[param.name]
        else:
            return False
    return True


def enqueue_configs(study: Any, spec: Any) -> tuple[int, int]:
    """Queue each ``enqueue:`` entry no trial holds yet; (queued, already held). Call it under the ask lock."""
    import optuna
    from optuna.trial import TrialState

    if not spec.enqueue:
        return 0, 0
    trials = list(study.get_trials(deepcopy=False))
    queued = held = 0
    for index, config in enumerate(spec.enqueue):
        complete = _complete(spec.search_space, config)
        if any(_covers(t, config, complete) for t in trials):
            held += 1
            continue
        trial = optuna.trial.create_trial(state=TrialState.WAITING,
                                          system_attrs={FIXED_PARAMS: dict(config), ENQUEUED: index})
        study.add_trial(trial)
        trials.append(trial)
        queued += 1
    return queued, held


# --------------------------------------------------------------------------------------------- warm start --

def warm_source(spec: Any, target: str) -> Any:
    """The other study's spec, checked against this one before anything is created."""
    from sweeplight._status import resolve

    where = "--warm-start"
    try:
        other = resolve(target)
    except SpecError as exc:
        raise SpecError(where, f"cannot read {target!r}: {exc}") from None
    if other.name == spec.name and other.storage == spec.storage:
        raise SpecError(where, f"{target!r} is this study itself; name another study")
    mine, theirs = _objectives(spec), _objectives(other)
    if mine != theirs:
        raise SpecError(where, f"study {other.name!r} optimises {theirs}, this one {mine}; a warm start needs the "
                        "same objective metric and direction")
    return other


def _objectives(spec: Any) -> str:
    objectives = getattr(spec, "all_objectives", None) or (spec.objective,)
    return ", ".join(f"{o.metric} ({o.direction})" for o in objectives)


def fit_trial(space: Sequence[Param], params: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The trial's parameters typed for this space, or why they do not fit it (a short reason to count)."""
    names = {p.name for p in space}
    extra = sorted(set(params) - names)
    if extra:
        return {}, f"{extra[0]} not in this search space"
    values: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for param in space:
        if not param.is_active(values):
            if param.name in params:
                return {}, f"{param.name} inactive here"
            continue
        if param.name not in params:
            if param.type == "fixed" and param.distribution() is None:
                values[param.name] = param.value  # a list/mapping fixed value: never an Optuna parameter
                continue
            return {}, f"{param.name} missing"
        value, problem = fit_value(param, params[param.name])
        if problem:
            return {}, f"{param.name} outside this space"
        distribution = param.distribution()
        try:
            contained = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            contained = False
        if not contained:
            return {}, f"{param.name} outside this space"
        values[param.name] = fitted[param.name] = value
    return fitted, None


def copy_trials(study: Any, spec: Any, other: Any, label: str) -> str:
    """Copy ``other``'s fitting COMPLETE trials into ``study``; returns the line ``launch`` prints."""
    import optuna
    from optuna.trial import TrialState

    from sweeplight._heartbeat import ask_lock
    from sweeplight._storage import load_study

    source = load_study(other)
    complete = [t for t in source.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    distributions = {p.name: p.distribution() for p in spec.search_space}
    skipped: Counter[str] = Counter()
    new = []
    with ask_lock(spec.directory):
        copied = {t.system_attrs.get(WARM_FROM) for t in study.get_trials(deepcopy=False)}
        for t in complete:
            origin = f"{other.name}#{t.number}"
            if origin in copied:
                skipped["already copied"] += 1
                continue
            if not t.values or not all(math.isfinite(v) for v in t.values):
                skipped["no finite value"] += 1
                continue
            params, reason = fit_trial(spec.search_space, t.params)
            if reason:
                skipped[reason] += 1
                continue
            new.append(optuna.trial.create_trial(
                params=params, distributions={name: distributions[name] for name in params}, values=t.values,
                intermediate_values=dict(t.intermediate_values),
                # test metrics and the like; not sweeplight's own links, which name trials of the other study
                user_attrs={k: v for k, v in t.user_attrs.items() if not k.startswith("sweeplight:")},
                system_attrs={WARM_FROM: origin}))
        study.add_trials(new)
        # The count, for `status`: one study attribute to read instead of every trial's attributes.
        study._storage.set_study_system_attr(study._study_id, WARM_COUNT, len(copied - {None}) + len(new))
    line = f"warm start: copied {len(new)} of {len(complete)} trials from {label}"
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
        line += f" ({sum(skipped.values())} skipped: {reasons})"
    return line


__all__ = ["ENQUEUED", "WARM_FROM", "copy_trials", "enqueue_configs", "fit_trial", "fit_value", "parse_enqueue",
           "warm_source"]
