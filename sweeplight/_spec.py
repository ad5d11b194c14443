"""The study file: YAML in, a frozen, validated :class:`StudySpec` out.

Parsing only reads the file; it imports no user code, torch or Optuna, so ``status`` and ``--help`` stay fast.
The deeper checks that need imports (the model's constructor, sampler options, Trainer arguments) live in
``_check.py`` and run before ``launch`` creates anything.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweeplight._constraints import Constraint, check_search, parse_constraints
from sweeplight._diagnostics_spec import Diagnostics, parse_diagnostics
from sweeplight._errors import SpecError
from sweeplight._fields import (
    as_mapping,
    check_keys,
    get_choice,
    get_int,
    get_number,
    get_str,
    key_text,
    one_line,
    parse_duration,
    show,
    type_name,
)
from sweeplight._space import Param, parse_space
from sweeplight._trainer_spec import TrainerConfig, parse_trainer
from sweeplight._warm import parse_enqueue

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsgaii", "nsgaiii")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "threshold", "patient")
_TOP_KEYS = ("name", "root", "storage", "model", "data", "objective", "search_space", "sampler", "pruner", "budget",
             "trainer", "executor", "slurm", "constraints", "enqueue", "diagnostics")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_VALUES = 100_000  # after YAML aliases are expanded: a "billion laughs" file is refused, not expanded
_MAX_DEPTH = 50


class _StudyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys: PyYAML keeps the last one silently, so a second ``lr:``
    would quietly replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let PyYAML report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show(key)} (keep one; YAML would silently use the last)",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StudyLoader)  # a SafeLoader subclass: plain data only


@dataclass(frozen=True)
class Component:
    """A class to build (the LightningModule or LightningDataModule) and its fixed keyword arguments."""

    target: str  # 'package.module:Class' or 'path/to/file.py:Class' (relative to the study file)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    metric: str  # a name the module logs, e.g. 'val_acc'
    direction: str  # 'maximize' | 'minimize'
    value: str = "best"  # which epoch's value counts: 'best' or 'last'


@dataclass(frozen=True)
class Named:
    """A sampler or pruner: an Optuna class picked by name, with its keyword options passed through."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


@dataclass(frozen=True)
class Budget:
    n_trials: int | None = None  # finished (complete + pruned) trials, all workers together
    timeout: float | None = None  # seconds from launch; running trials finish, no new ones start
    max_failures: int | None = 5  # failed trials that stop the study; null for no limit
    cpu_hours: float | None = None  # wall time x CPUs, summed over every trial (see _resources.py)
    gpu_hours: float | None = None  # wall time x GPUs, likewise


@dataclass(frozen=True)
class Executor:
    kind: str = "local"
    workers: int = 1
    heartbeat_interval: float = 30.0  # seconds; a running trial silent for 2 intervals is stale
    slurm: Any = None  # SlurmResources when kind is 'slurm'


@dataclass(frozen=True)
class StudySpec:
    """A whole study, validated. Build it with :func:`load_spec`."""

    name: str
    root: Path  # absolute; the study lives in root/name
    storage: str  # an SQLAlchemy URL or journal:///path; defaults to SQLite in the study directory
    model: Component
    data: Component
    objective: Objective
    search_space: tuple[Param, ...]
    sampler: Named
    pruner: Named
    budget: Budget
    trainer: TrainerConfig  # validated known fields plus pass-through Trainer arguments
    executor: Executor
    base_dir: Path  # the study file's directory: relative model/data paths start here
    raw: dict[str, Any]  # the resolved mapping (overrides applied), written next to the study
    # Every objective in order (``objective`` is the first: what single-objective code paths use); more than one
    # makes a multi-objective study. Empty only for a StudySpec built by hand: see ``all_objectives``.
    objectives: tuple[Objective, ...] = ()
    constraints: tuple[Constraint, ...] = ()  # the trial is feasible when all hold
    enqueue: tuple[dict[str, Any], ...] = ()  # configurations queued before sampling (see _warm.py)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)  # what each trial measures (see _diagnostics.py)

    @property
    def all_objectives(self) -> tuple[Objective, ...]:
        return self.objectives or (self.objective,)

    @property
    def multi_objective(self) -> bool:
        return len(self.all_objectives) > 1

    @property
    def directory(self) -> Path:
        return self.root / self.name


def load_spec(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a study file (or a mapping), apply ``--set key.path=value`` overrides and validate it.

    >>> spec = load_spec("studies/digits.yaml", ["budget.n_trials=4"])  # doctest: +SKIP
    """
    if isinstance(source, dict):
        raw, base_dir = copy.deepcopy(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError("", f"study file {str(path)!r} does not exist; pass the path of a .yaml study file")
        try:
            raw = _read_yaml(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError("", f"{str(path)!r} is not valid YAML{where}: {one_line(problem)}") from None
        except UnicodeDecodeError:
            raise SpecError("", f"{str(path)!r} is not a text file; pass a YAML study file") from None
        except RecursionError:
            raise SpecError("", f"{str(path)!r} is nested too deeply to be a study file") from None
        except OSError as exc:
            raise SpecError("", f"cannot read {str(path)!r}: {one_line(exc.strerror or str(exc))}") from None
        base_dir = path.resolve().parent
        if raw is None:
            raise SpecError("", f"{str(path)!r} is empty; see the README's study-file reference")
    if not isinstance(raw, dict):
        raise SpecError("", f"a study file is a mapping of fields (key: value lines), got {type_name(raw)}")
    for item in overrides:
        apply_override(raw, item)
    _check_tree(raw, "", set(), {})
    return parse_spec(raw, base_dir)


def _check_tree(value: Any, where: str, path: set[int], sizes: dict[int, int]) -> int:
    """Refuse what spec.json cannot hold faithfully: self-referencing aliases, alias bombs, dates, NaN.

    Returns the number of values under ``value`` with aliases expanded; shared subtrees are counted, not walked
    again, so an alias bomb is caught in linear time.
    """
    if isinstance(value, (dict, list)):
        if id(value) in path:
            raise SpecError(where, "refers to itself through a YAML alias; write the value out")
        if id(value) in sizes:
            return sizes[id(value)]
        if len(path) >= _MAX_DEPTH:
            raise SpecError(where, f"is nested more than {_MAX_DEPTH} levels deep")
        path.add(id(value))
        total = 1
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(value, dict):
                _check_tree(key, where, path, sizes)
            child = f"{where}.{key_text(key)}" if where else key_text(key)
            total += _check_tree(item, child, path, sizes)
            if total > _MAX_VALUES:
                raise SpecError(where, f"holds more than {_MAX_VALUES} values once YAML aliases are expanded")
        path.discard(id(value))
        sizes[id(value)] = total
        return total
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(where, f"got {value!r}; spec.json cannot store it, give a finite number")
    if value is not None and not isinstance(value, (str, int, float, bool)):
        text = value.isoformat() if hasattr(value, "isoformat") else show(value)
        raise SpecError(where, f"got {type_name(value)} {text}; quote it ('{text}') to make it a string")
    return 1


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key.path=value``; the value is read as YAML (``4`` is a number, ``[a, b]`` a list).

    Keys may themselves hold dots (``search_space.trainer.gradient_clip_val.high=2``): at each level the longest
    existing key wins.
    """
    if "=" not in item:
        raise SpecError("--set", f"expected key.path=value, got {show(item)}")
    path, _, text = item.partition("=")
    try:
        value = _read_yaml(text) if text.strip() else None
    except (yaml.YAMLError, RecursionError):
        value = text
    parts, node = path.strip().split("."), raw
    if not path.strip() or any(not p for p in parts):
        raise SpecError("--set", f"expected key.path=value, got {show(item)}")
    while parts:
        for size in range(len(parts), 0, -1):
            key = ".".join(parts[:size])
            if key in node or size == 1:
                break
        parts = parts[size:]
        if not parts:
            node[key] = value
            return
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise SpecError("--set", f"{show(path)}: {show(key)} holds a {type_name(child)}, not a mapping")
        node = child


def parse_spec(raw: dict[str, Any], base_dir: Path) -> StudySpec:
    check_keys(raw, _TOP_KEYS, "")
    name = get_str(raw, "name", "")
    if not _NAME.match(name) or ".." in name or len(name) > 100:
        raise SpecError("name", f"got {show(name)}; use up to 100 letters, digits, '_', '-' and '.', with no '/' "
                        "or '..'")
    root_text = raw.get("root", "runs")
    if not isinstance(root_text, str) or not root_text.strip() or "\0" in root_text:
        raise SpecError("root", f"expected a directory path, got {type_name(root_text)} {show(root_text)}")
    try:
        root = Path(root_text).expanduser().resolve()
        is_file = root.exists() and not root.is_dir()
    except OSError as exc:  # a name too long for the file system, a loop of links
        raise SpecError("root", f"cannot use {show(root_text)}: {one_line(exc.strerror or str(exc))}") from None
    if is_file:
        raise SpecError("root", f"{str(root)!r} is a file, not a directory; point root at a directory")
    objectives = _parse_objectives(raw.get("objective"))
    objective = objectives[0]
    search_space = parse_space(raw.get("search_space"))
    trainer = parse_trainer(raw.get("trainer"), objective, search_space)
    spec = StudySpec(
        name=name,
        root=root,
        storage="",
        model=_parse_component(raw.get("model"), "model"),
        data=_parse_component(raw.get("data"), "data"),
        objective=objective,
        search_space=search_space,
        sampler=_parse_named(raw.get("sampler", "tpe"), "sampler", SAMPLERS),
        # Optuna cannot prune a multi-objective study: no pruner unless one is named (check_search refuses it)
        pruner=_parse_named(raw.get("pruner", "none" if len(objectives) > 1 else "median"), "pruner", PRUNERS),
        budget=_parse_budget(raw.get("budget"), grid=_is_grid(raw.get("sampler")), trainer=trainer),
        trainer=trainer,
        executor=_parse_executor(raw.get("executor", "local"), raw.get("slurm"), trainer),
        base_dir=base_dir,
        raw=raw,
        objectives=objectives,
        constraints=parse_constraints(raw.get("constraints")),
        enqueue=parse_enqueue(raw.get("enqueue"), search_space, grid=_is_grid(raw.get("sampler"))),
        diagnostics=parse_diagnostics(raw.get("diagnostics")),
    )
    check_search(objectives=objectives, constraints=spec.constraints, sampler=spec.sampler.name,
                 pruner=spec.pruner.name)
    from sweeplight._storage import resolve_storage_url

    storage = resolve_storage_url(raw.get("storage"), spec.directory, base_dir)
    return StudySpec(**{**spec.__dict__, "storage": storage})


def _parse_component(raw: Any, where: str) -> Component:
    if isinstance(raw, str):
        raw = {"class": raw}
    if raw is None:
        raise SpecError(where, "is required; give the class as 'package.module:ClassName' or 'file.py:ClassName'")
    mapping = as_mapping(raw, where)
    check_keys(mapping, ("class", "args"), where)
    target = get_str(mapping, "class", where)
    if ":" not in target:
        raise SpecError(f"{where}.class", f"got {show(target)}; write 'package.module:ClassName' or "
                        "'file.py:ClassName'")
    return Component(target=target, args=as_mapping(mapping.get("args"), f"{where}.args"))


def _parse_objectives(raw: Any) -> tuple[Objective, ...]:
    """One mapping, or a list of them for a multi-objective study (the first one picks the epoch and checkpoint)."""
    if raw is None:
        raise SpecError("objective", "is required, e.g. {metric: val_acc, direction: maximize}")
    if isinstance(raw, dict) and any(isinstance(raw.get(k), list) for k in ("metric", "direction")):
        raise SpecError("objective", "give several objectives as a list of mappings, e.g. [{metric: val_acc, "
                        "direction: maximize}, {metric: param_count, direction: minimize}]")
    if not isinstance(raw, list):
        return (_parse_objective(raw, "objective"),)
    if not raw:
        raise SpecError("objective", "is an empty list; give at least one {metric: ..., direction: ...}")
    objectives = tuple(_parse_objective(item, f"objective[{index}]") for index, item in enumerate(raw))
    for index, item in enumerate(raw[1:], start=1):
        if "value" in item:
            raise SpecError(f"objective[{index}].value", "every objective is read from the epoch the first one "
                            "picks; give value on objective[0] only")
    return objectives


def _parse_objective(raw: Any, where: str) -> Objective:
    if isinstance(raw, str):
        raise SpecError(where, f"got {show(raw)}; give the metric and its direction, e.g. "
                        "{metric: val_acc, direction: maximize}")
    mapping = as_mapping(raw, where)
    check_keys(mapping, ("metric", "direction", "value"), where)
    return Objective(
        metric=get_str(mapping, "metric", where),
        direction=get_choice(mapping, "direction", where, ("maximize", "minimize")),
        value=get_choice(mapping, "value", where, ("best", "last"), "best"),
    )


def _parse_named(raw: Any, where: str, allowed: tuple[str, ...]) -> Named:
    if raw is None:
        raw = "none" if where == "pruner" else "tpe"
    if isinstance(raw, str):
        raw = {"name": raw}
    mapping = as_mapping(raw, where)
    keys = ("name", "seed", "options") if where == "sampler" else ("name", "options")
    check_keys(mapping, keys, where)
    name = get_choice(mapping, "name", where, allowed)
    seed = get_int(mapping, "seed", where, None, minimum=0) if where == "sampler" else None
    if seed is not None and seed >= 2**32:
        raise SpecError(f"{where}.seed", f"must be < 2**32, got {seed}")
    return Named(name=name, options=as_mapping(mapping.get("options"), f"{where}.options"), seed=seed)


def _parse_budget(raw: Any, *, grid: bool = False, trainer: TrainerConfig | None = None) -> Budget:
    mapping = as_mapping(raw, "budget")
    check_keys(mapping, ("n_trials", "timeout", "max_failures", "cpu_hours", "gpu_hours"), "budget")
    hours = {}
    for key in ("cpu_hours", "gpu_hours"):
        hours[key] = get_number(mapping, key, "budget", None)
        if hours[key] is not None and hours[key] <= 0:
            raise SpecError(f"budget.{key}", f"must be > 0, got {show(hours[key])}; leave it out for no limit")
    budget = Budget(
        n_trials=get_int(mapping, "n_trials", "budget", None, minimum=1),
        timeout=parse_duration(mapping.get("timeout"), "budget.timeout"),
        max_failures=None if "max_failures" in mapping and mapping["max_failures"] is None else get_int(
            mapping, "max_failures", "budget", 5, minimum=1),
        cpu_hours=None if hours["cpu_hours"] is None else float(hours["cpu_hours"]),
        gpu_hours=None if hours["gpu_hours"] is None else float(hours["gpu_hours"]),
    )
    if budget.gpu_hours is not None and trainer is not None and str(trainer.accelerator).lower() in ("cpu", "mps"):
        raise SpecError("budget.gpu_hours", f"trainer.accelerator is {trainer.accelerator}, so trials use no GPU and "
                        "this budget is never spent; use budget.cpu_hours")
    if not grid and all(v is None for v in (budget.n_trials, budget.timeout, budget.cpu_hours, budget.gpu_hours)):
        raise SpecError("budget", "give n_trials, timeout, cpu_hours or gpu_hours, or the study would never end")
    return budget


def _is_grid(raw: Any) -> bool:
    """The grid sampler, which ends a study by itself (each grid point once), so no budget is required."""
    return raw == "grid" or (isinstance(raw, dict) and raw.get("name") == "grid")


def _parse_executor(raw: Any, slurm: Any, trainer: TrainerConfig) -> Executor:
    if isinstance(raw, str):
        raw = {"kind": raw}
    mapping = as_mapping(raw, "executor")
    check_keys(mapping, ("kind", "workers", "heartbeat_interval"), "executor")
    kind = get_choice(mapping, "kind", "executor", ("local", "slurm"), "local")
    resources = None
    if kind == "slurm":
        from sweeplight._slurm import parse_slurm

        resources = parse_slurm(slurm, _world_size(trainer))
    elif slurm is not None:
        as_mapping(slurm, "slurm")  # kept for a later launch with --set executor.kind=slurm; checked then
    return Executor(
        kind=kind,
        workers=get_int(mapping, "workers", "executor", 1, minimum=1),
        heartbeat_interval=float(get_number(mapping, "heartbeat_interval", "executor", 30.0, minimum=1)),
        slurm=resources,
    )


def _world_size(trainer: TrainerConfig) -> int:
    """DDP processes per trial: devices x num_nodes for a ddp strategy, else 1 (never imports torch)."""
    devices = trainer.devices
    count = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else 1
    nodes = trainer.args.get("num_nodes", 1)
    nodes = nodes if isinstance(nodes, int) and nodes > 0 else 1
    return count * nodes if str(trainer.strategy).startswith("ddp") else 1


def spec_to_json(spec: StudySpec) -> dict[str, Any]:
    """The resolved spec as written to ``<study>/spec.json``: workers rebuild the exact same spec from it."""
    return {"raw": spec.raw, "base_dir": str(spec.base_dir), "root": str(spec.root), "storage": spec.storage}


def spec_from_dir(study_dir: Path) -> StudySpec:
    """The spec a launch resolved and wrote to ``<study>/spec.json`` (what workers and ``status`` read)."""
    import json

    path = Path(study_dir) / "spec.json"
    if not path.is_file():
        raise SpecError("", f"{study_dir} is not a study directory (no spec.json); pass the study file or runs/<name>")
    return spec_from_json(json.loads(path.read_text()))


def spec_from_json(data: dict[str, Any]) -> StudySpec:
    raw = dict(data["raw"], root=data["root"], storage=data["storage"])
    return parse_spec(raw, Path(data["base_dir"]))


__all__ = ["Budget", "Component", "Executor", "Named", "Objective", "StudySpec", "load_spec"]
