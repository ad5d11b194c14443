"""Samplers and pruners: a name in the study file picks Optuna's own class; options pass straight through.

Options are checked against the class's signature before anything runs, so a typo in ``n_startup_trials`` fails at
launch with the list of valid options, not silently inside a worker.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError
from sweeplight._fields import did_you_mean

if TYPE_CHECKING:
    import optuna

    from sweeplight._spec import StudySpec

_SAMPLERS = {
    "tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "cmaes": "CmaEsSampler",
    "gp": "GPSampler", "qmc": "QMCSampler", "nsgaii": "NSGAIISampler",
}
_PRUNERS = {
    "none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner", "patient": "PatientPruner",
}
_OWNED = {"seed": "give it as sampler.seed", "search_space": "the grid comes from search_space",
          "wrapped_pruner": "give it as pruner.options.wrapped: {name: median, options: {...}}"}


def build_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    import optuna

    named = spec.sampler
    cls = getattr(optuna.samplers, _SAMPLERS[named.name])
    kwargs = _checked_options(cls, named.options, "sampler")
    if named.seed is not None:
        kwargs["seed"] = named.seed
    if named.name == "grid":
        kwargs["search_space"] = {p.name: p.grid_values() for p in spec.search_space}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError("sampler.options", f"{cls.__name__} rejected {named.options!r}: {exc}") from None


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    import optuna

    named = spec.pruner
    options = dict(named.options)
    wrapped = None
    if named.name == "patient":
        inner = options.pop("wrapped", None)
        if inner is not None:
            from sweeplight._spec import _parse_named

            inner_named = _parse_named(inner, "pruner.options.wrapped", tuple(_PRUNERS))
            wrapped = _build(inner_named.name, inner_named.options, spec, "pruner.options.wrapped.options")
        options.setdefault("patience", 3)
    pruner = _build(named.name, options, spec, "pruner.options", wrapped=wrapped)
    return pruner


def _build(name: str, options: dict[str, Any], spec: StudySpec, where: str, **extra: Any) -> Any:
    import optuna

    cls = getattr(optuna.pruners, _PRUNERS[name])
    kwargs = _checked_options(cls, options, where.removesuffix(".options"))
    if name == "hyperband":
        kwargs.setdefault("max_resource", spec.trainer.max_epochs)
    if name == "patient":
        kwargs["wrapped_pruner"] = extra.get("wrapped")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(where, f"{cls.__name__} rejected {options!r}: {exc}") from None


def _checked_options(cls: type, options: dict[str, Any], where: str) -> dict[str, Any]:
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    for key in options:
        if key in _OWNED and key in accepted:
            raise SpecError(f"{where}.options.{key}", f"is set by sweeplight; {_OWNED[key]}")
        if key not in accepted:
            allowed = [a for a in accepted if a not in _OWNED]
            raise SpecError(f"{where}.options.{key}", f"is not an option of {cls.__name__}{did_you_mean(key, allowed)};"
                            f" valid options: {', '.join(allowed) or '(none)'}")
    return dict(options)
