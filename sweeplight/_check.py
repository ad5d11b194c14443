"""Checks that need imports: the user's classes, their constructors, Trainer arguments, sampler and pruner options.

``check_spec`` runs before ``launch`` creates the study directory or the study, so bad input costs nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweeplight._errors import SpecError
from sweeplight._fields import did_you_mean, key_text, show
from sweeplight._imports import accepted_arguments, import_class, lightning_namespace
from sweeplight._spec import StudySpec


@dataclass(frozen=True)
class Components:
    model_cls: type
    data_cls: type
    namespace: str  # 'lightning.pytorch' or 'pytorch_lightning'


def resolve_components(spec: StudySpec) -> Components:
    import importlib

    model_cls = import_class(spec.model.target, base_dir=spec.base_dir, field="model.class")
    data_cls = import_class(spec.data.target, base_dir=spec.base_dir, field="data.class")
    namespace = lightning_namespace(model_cls)
    pl = importlib.import_module(namespace)
    if not issubclass(model_cls, pl.LightningModule):
        hint = ("; it is a LightningDataModule: give it as data.class" if issubclass(model_cls, pl.LightningDataModule)
                else "; derive the model from lightning.pytorch.LightningModule")
        raise SpecError("model.class", f"{show(spec.model.target)} is not a LightningModule subclass{hint}")
    if not issubclass(data_cls, pl.LightningDataModule):
        other = "lightning.pytorch" if namespace == "pytorch_lightning" else "pytorch_lightning"
        hint = (f" (it derives from {other}'s class; use one package for both)"
                if lightning_namespace(data_cls) != namespace else "")
        if issubclass(data_cls, pl.LightningModule):
            hint = "; it is a LightningModule: give it as model.class"
        raise SpecError("data.class", f"{show(spec.data.target)} is not a {namespace}.LightningDataModule{hint}")
    return Components(model_cls=model_cls, data_cls=data_cls, namespace=namespace)


def split_params(spec: StudySpec, components: Components, params: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """Route sampled values: (model kwargs, data kwargs, trainer params). Fixed ``args`` come first."""
    model_kwargs, data_kwargs, trainer = dict(spec.model.args), dict(spec.data.args), {}
    model_names, model_any = accepted_arguments(components.model_cls)
    data_names, data_any = accepted_arguments(components.data_cls)
    for name, value in params.items():
        target, key = _target(name)
        if target == "trainer":
            trainer[name] = value
        if target in ("model", "auto") and (key in model_names or (model_any and target == "model")):
            model_kwargs[key] = value
        if target in ("data", "auto") and (key in data_names or (data_any and target == "data")):
            data_kwargs[key] = value
    return model_kwargs, data_kwargs, trainer


def check_spec(spec: StudySpec) -> Components:
    """Everything that can be known before the first trial; raises SpecError with one line."""
    from sweeplight._samplers import build_pruner, build_sampler

    components = resolve_components(spec)
    model_names, model_any = accepted_arguments(components.model_cls)
    data_names, data_any = accepted_arguments(components.data_cls)
    for where, args, names, any_ok, cls in (("model.args", spec.model.args, model_names, model_any,
                                             components.model_cls),
                                            ("data.args", spec.data.args, data_names, data_any, components.data_cls)):
        for key in args:
            if key not in names and not any_ok:
                raise SpecError(f"{where}.{key_text(key)}", f"{cls.__name__}.__init__ has no argument {show(key)}"
                                f"{did_you_mean(key, names)}; it accepts: {', '.join(sorted(names)) or '(none)'}")
    for param in spec.search_space:
        target, key = _target(param.name)
        where = f"search_space.{param.name}"
        if target == "model" and key not in model_names and not model_any:
            raise SpecError(where, f"{components.model_cls.__name__}.__init__ has no argument {key!r}"
                            f"{did_you_mean(key, model_names)}; it accepts: {', '.join(sorted(model_names))}")
        if target == "data" and key not in data_names and not data_any:
            raise SpecError(where, f"{components.data_cls.__name__}.__init__ has no argument {key!r}"
                            f"{did_you_mean(key, data_names)}; it accepts: {', '.join(sorted(data_names))}")
        if target == "auto" and key not in model_names and key not in data_names:
            raise SpecError(where, f"neither {components.model_cls.__name__} nor {components.data_cls.__name__} "
                            f"accepts {key!r}{did_you_mean(key, model_names | data_names)}; model accepts: "
                            f"{', '.join(sorted(model_names))}; data accepts: {', '.join(sorted(data_names))}; "
                            "or prefix it with trainer.")
    _check_trainer_args(spec, components)
    build_sampler(spec)
    build_pruner(spec)
    return components


def _check_trainer_args(spec: StudySpec, components: Components) -> None:
    import importlib

    trainer_cls = importlib.import_module(components.namespace).Trainer
    accepted = set(inspect.signature(trainer_cls.__init__).parameters) - {"self"}
    extra_search = {p.key.split(".")[0] for p in spec.search_space if p.target == "trainer"}
    from sweeplight._trainer_spec import _OWN, ALIASES

    for key in [*spec.trainer.args, *extra_search]:
        if key in _OWN or key in ALIASES:
            continue
        if key not in accepted:
            field = f"trainer.{key_text(key)}" if key in spec.trainer.args else f"search_space.trainer.{key}"
            raise SpecError(field, f"is not a Trainer argument{did_you_mean(key, accepted | set(_OWN))}; see the "
                            "README's trainer reference")
    _check_registered(spec, components.namespace)


def _check_registered(spec: StudySpec, namespace: str) -> None:
    """Accelerator and strategy names: Lightning only rejects a typo when each trial builds its Trainer."""
    import importlib

    accelerators = importlib.import_module(f"{namespace}.accelerators").AcceleratorRegistry
    strategies = importlib.import_module(f"{namespace}.strategies").StrategyRegistry
    known = {"accelerator": {"auto", "gpu", *accelerators.available_accelerators()},
             "strategy": {"auto", *strategies.available_strategies()}}
    used = [(f"trainer.{key}", key, getattr(spec.trainer, key)) for key in known]
    for param in spec.search_space:
        if param.target == "trainer" and param.key in known:
            values = param.choices if param.type == "categorical" else (param.value,)
            used += [(f"search_space.{param.name}", param.key, value) for value in values]
    for field, key, name in used:
        if isinstance(name, str) and name not in known[key]:
            raise SpecError(field, f"got {show(name)}{did_you_mean(name, known[key])}; allowed: "
                            f"{', '.join(sorted(known[key]))}")


def _target(name: str) -> tuple[str, str]:
    head, _, rest = name.partition(".")
    if rest and head in ("model", "data", "trainer"):
        return head, rest
    return "auto", name
