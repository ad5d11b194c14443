"""The ``trainer:`` section: the fields sweeplight manages, plus any other Trainer argument passed through.

Searched trainer parameters (``trainer.gradient_clip_val``, ``trainer.swa_lrs``, ``trainer.precision``) are merged
into this section per trial and the result is validated again, so a trial can never build a Trainer from values that
the study file would have rejected.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError
from sweeplight._fields import (
    as_mapping,
    check_keys,
    get_bool,
    get_choice,
    get_int,
    get_number,
    get_str,
    show,
    type_name,
)

if TYPE_CHECKING:
    from sweeplight._space import Param
    from sweeplight._spec import Objective

# Arguments sweeplight builds itself; setting them would silently break pruning, checkpoints or hp_metric.
MANAGED = {
    "callbacks": "list callbacks via trainer.early_stopping / swa / checkpoint",
    "logger": "every trial logs to TensorBoard in its own directory",
    "default_root_dir": "each trial writes to runs/<name>/trials/<number>",
    "enable_checkpointing": "configure trainer.checkpoint instead",
}
ALIASES = {"swa_lrs": ("swa", "lrs"), "swa_epoch_start": ("swa", "epoch_start"),
           "patience": ("early_stopping", "patience")}
_PRECISIONS = ("32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true", "64", "64-true",
               "transformer-engine", "transformer-engine-float16")
_OWN = ("max_epochs", "min_epochs", "early_stopping", "swa", "lr_find", "precision", "accelerator", "devices",
        "strategy", "seed", "checkpoint", "enable_progress_bar")


@dataclass(frozen=True)
class TrainerConfig:
    """What a trial's Trainer is built from."""

    max_epochs: int = 20
    min_epochs: int | None = None
    early_stopping: dict[str, Any] | None = None  # monitor, mode, patience, min_delta, check_finite
    swa: dict[str, Any] | None = None  # lrs, epoch_start, annealing_epochs, annealing_strategy
    lr_find: dict[str, Any] | None = None  # min_lr, max_lr, num_training, mode, attr
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    seed: int = 0
    checkpoint: dict[str, Any] = field(default_factory=dict)  # save_top_k, save_last
    enable_progress_bar: bool = False  # workers write to log files; a bar there is noise
    args: dict[str, Any] = field(default_factory=dict)  # every other Trainer argument, passed through


def parse_trainer(raw: Any, objective: Objective, space: tuple[Param, ...] = ()) -> TrainerConfig:
    """Validate the section, then every searched trainer value against it."""
    mapping = as_mapping(raw, "trainer")
    config = _parse(mapping, objective, "trainer")
    for param in space:
        if param.target != "trainer":
            continue
        key = param.key
        if ALIASES.get(key, (key,))[0] == "early_stopping" and config.early_stopping is None:
            raise SpecError(f"search_space.{param.name}", "searches an early-stopping setting, but "
                            "trainer.early_stopping is false; turn early stopping on or drop the parameter")
        values = param.choices if param.type == "categorical" else (
            (param.value,) if param.type == "fixed" else (param.low, param.high))
        for value in values:
            try:
                _parse(with_params(mapping, {param.name: value}), objective, "trainer")
            except SpecError as exc:
                raise SpecError(f"search_space.{param.name}", f"value {show(value)} is invalid: {exc}") from None
    return config


def trainer_for_trial(raw: Any, objective: Objective, params: Mapping[str, Any]) -> TrainerConfig:
    return _parse(with_params(as_mapping(raw, "trainer"), params), objective, "trainer")


def with_params(raw: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``trainer.*`` parameters into a copy of the section (``trainer.swa.lrs`` or ``trainer.swa_lrs``)."""
    merged = copy.deepcopy(dict(raw))
    for name, value in params.items():
        if not name.startswith("trainer."):
            continue
        key = name.split(".", 1)[1]
        path = ALIASES.get(key, tuple(key.split(".")))
        node = merged
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return merged


def _parse(m: dict[str, Any], objective: Objective, where: str) -> TrainerConfig:
    for key, why in MANAGED.items():
        if key in m:
            raise SpecError(f"{where}.{key}", f"is managed by sweeplight ({why}); remove it")
    args = {k: v for k, v in m.items() if k not in _OWN}
    precision = m.get("precision", "32-true")
    precision = str(precision) if isinstance(precision, int) and not isinstance(precision, bool) else precision
    if precision not in _PRECISIONS:
        raise SpecError(f"{where}.precision", f"got {show(precision)}; allowed: 32, 16-mixed, bf16-mixed, 64, "
                        "16-true, bf16-true (16-mixed needs a GPU; bf16-mixed also runs on CPU)")
    devices = m.get("devices", 1)
    if not (devices == "auto" or _is_count(devices, 1) or (
            isinstance(devices, list) and devices and all(_is_count(d, 0) for d in devices))):
        raise SpecError(f"{where}.devices", f"got {type_name(devices)} {show(devices)}; use a count >= 1, a "
                        "non-empty list of device indices, or 'auto'")
    for key in ("accelerator", "strategy"):
        if key in m:
            get_str(m, key, where)
    config = TrainerConfig(
        max_epochs=get_int(m, "max_epochs", where, 20, minimum=1),
        min_epochs=get_int(m, "min_epochs", where, None, minimum=0),
        early_stopping=_early_stopping(m.get("early_stopping", {}), objective, f"{where}.early_stopping"),
        swa=_swa(m.get("swa"), f"{where}.swa"),
        lr_find=_lr_find(m.get("lr_find", False), f"{where}.lr_find"),
        precision=precision,
        accelerator=m.get("accelerator", "auto"),
        devices=devices,
        strategy=m.get("strategy", "auto"),
        seed=get_int(m, "seed", where, 0, minimum=0),
        checkpoint=_checkpoint(m.get("checkpoint"), f"{where}.checkpoint"),
        enable_progress_bar=get_bool(m, "enable_progress_bar", where, False),
        args=args,
    )
    strategy = str(config.strategy)
    if _device_count(config.devices) > 1 or config.devices == "auto":
        if strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook") or strategy.startswith(("ddp_spawn_", "ddp_fork_")):
            raise SpecError(f"{where}.strategy", f"got {show(strategy)}; sweeplight starts the DDP ranks itself, "
                            "use strategy: ddp (or ddp_find_unused_parameters_true)")
        if strategy == "auto" and _device_count(config.devices) > 1:
            # Lightning's own launcher would re-run the worker command for each rank; sweeplight launches them.
            config = TrainerConfig(**{**config.__dict__, "strategy": "ddp"})
        elif _device_count(config.devices) > 1 and not strategy.startswith("ddp"):
            raise SpecError(f"{where}.strategy", f"got {show(strategy)} with devices={show(config.devices)}; "
                            "several devices need strategy: ddp")
    if config.min_epochs is not None and config.min_epochs > config.max_epochs:
        raise SpecError(f"{where}.min_epochs", f"({config.min_epochs}) must be <= max_epochs ({config.max_epochs})")
    return config


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _device_count(devices: Any) -> int:
    if isinstance(devices, list):
        return len(devices)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) else 1


def _early_stopping(raw: Any, objective: Objective, where: str) -> dict[str, Any] | None:
    if raw is False or raw is None:
        return None
    if raw is True:
        raw = {}
    m = as_mapping(raw, where)
    check_keys(m, ("monitor", "mode", "patience", "min_delta", "check_finite"), where)
    monitor = get_str(m, "monitor", where, objective.metric)
    default_mode = {"maximize": "max", "minimize": "min"}[objective.direction] if monitor == objective.metric else None
    if default_mode is None and "mode" not in m:
        raise SpecError(f"{where}.mode", f"is required when monitoring {monitor!r} (not the objective); max or min")
    return {
        "monitor": monitor,
        "mode": get_choice(m, "mode", where, ("min", "max"), default_mode),
        "patience": get_int(m, "patience", where, 5, minimum=1),
        "min_delta": float(get_number(m, "min_delta", where, 0.0, minimum=0)),
        "check_finite": get_bool(m, "check_finite", where, True),
    }


def _swa(raw: Any, where: str) -> dict[str, Any] | None:
    if raw is False or raw is None:
        return None
    if not isinstance(raw, (dict, list)) and not isinstance(raw, bool):
        raw = {"lrs": raw}
    if raw is True:
        raise SpecError(where, "needs the SWA learning rate, e.g. swa: {lrs: 0.01}")
    m = as_mapping(raw, where)
    check_keys(m, ("lrs", "epoch_start", "annealing_epochs", "annealing_strategy"), where)
    if "lrs" not in m:
        raise SpecError(f"{where}.lrs", "is required: the SWA learning rate, e.g. 0.01")
    lrs = m["lrs"]
    if lrs == []:
        raise SpecError(f"{where}.lrs", "is an empty list; give one learning rate, or one per parameter group")
    lrs = [float(get_number({"v": x}, "v", f"{where}.lrs")) for x in lrs] if isinstance(lrs, list) else float(
        get_number(m, "lrs", where))
    if (min(lrs) if isinstance(lrs, list) else lrs) <= 0:
        raise SpecError(f"{where}.lrs", f"must be > 0, got {show(lrs)}")
    start = get_number(m, "epoch_start", where, 0.8)
    if (isinstance(start, float) and not 0 < start <= 1) or (isinstance(start, int) and start < 1):
        raise SpecError(f"{where}.epoch_start", f"got {show(start)}; a fraction in (0, 1] or an epoch number >= 1")
    return {
        "lrs": lrs,
        "epoch_start": start,
        "annealing_epochs": get_int(m, "annealing_epochs", where, 10, minimum=1),
        "annealing_strategy": get_choice(m, "annealing_strategy", where, ("cos", "linear"), "cos"),
    }


def _lr_find(raw: Any, where: str) -> dict[str, Any] | None:
    if raw is False or raw is None:
        return None
    m = {} if raw is True else as_mapping(raw, where)
    check_keys(m, ("min_lr", "max_lr", "num_training", "mode", "attr"), where)
    config = {
        "min_lr": float(get_number(m, "min_lr", where, 1e-8)),
        "max_lr": float(get_number(m, "max_lr", where, 1.0)),
        "num_training": get_int(m, "num_training", where, 100, minimum=2),
        "mode": get_choice(m, "mode", where, ("exponential", "linear"), "exponential"),
        "attr": get_str(m, "attr", where, None),
    }
    if not 0 < config["min_lr"] < config["max_lr"]:
        raise SpecError(where, f"needs 0 < min_lr < max_lr, got {show(config['min_lr'])} and "
                        f"{show(config['max_lr'])}")
    return config


def _checkpoint(raw: Any, where: str) -> dict[str, Any]:
    m = as_mapping(raw, where)
    check_keys(m, ("save_top_k", "save_last"), where)
    return {"save_top_k": get_int(m, "save_top_k", where, 1, minimum=1),
            "save_last": get_bool(m, "save_last", where, True)}
