"""SLURM resources: the study file's ``slurm:`` section, checked against the cluster before anything is submitted.

The section uses submitit's generic names (``timeout_min``, ``mem_gb``, ``cpus_per_task``, ``gpus_per_node``,
``tasks_per_node``, ``nodes``) plus SLURM's own (``partition``, ``account``, ``qos``, ``constraint``, ``exclude``),
``setup`` lines that run in the batch script before the worker (``module load ...``, activating an environment) and
``additional_parameters`` for any other ``#SBATCH`` option. ``check_cluster`` asks ``sinfo`` and ``sbatch
--test-only`` whether the cluster can run such a job, so a wrong partition or too much memory is one line at launch,
not a job stuck in the queue with ``Reason=PartitionConfig``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from sweeplight._errors import SpecError
from sweeplight._fields import as_mapping, check_keys, get_int, get_number, get_str, show, type_name

KEYS = ("partition", "account", "qos", "timeout_min", "cpus_per_task", "mem_gb", "gpus_per_node", "nodes",
        "tasks_per_node", "constraint", "exclude", "setup", "additional_parameters", "array_parallelism",
        "signal_delay_s", "job_name", "python")
_SBATCH_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# submitit_parameters keys that are submitit's own, not sbatch options
_NOT_SBATCH = ("job_name", "signal_delay_s", "array_parallelism", "stderr_to_stdout", "setup", "additional_parameters")
_NOT_TESTED = ("mail-type", "mail-user", "output", "error", "open-mode", "signal")  # no bearing on whether it can run


@dataclass(frozen=True)
class SlurmResources:
    """What one worker job asks for. ``tasks_per_node`` is the trainer's DDP world size per node."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int = 1
    constraint: str | None = None
    exclude: str | None = None
    setup: tuple[str, ...] = ()
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    array_parallelism: int | None = None  # default: all workers at once
    signal_delay_s: int = 120  # USR2 this long before the time limit: enough to requeue cleanly
    job_name: str | None = None
    python: str | None = None  # the interpreter on the compute nodes; default: the one that launched


def parse_slurm(raw: Any, world_size: int) -> SlurmResources:
    """Validate the ``slurm:`` section. ``world_size`` is the trainer's process count (devices for DDP)."""
    mapping = as_mapping(raw, "slurm")
    check_keys(mapping, KEYS, "slurm")
    text = {key: get_str(mapping, key, "slurm", None) for key in
            ("partition", "account", "qos", "constraint", "exclude", "job_name", "python")}
    setup = mapping.get("setup") or []
    if isinstance(setup, str):
        setup = [setup]
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise SpecError("slurm.setup", f"expected a list of shell lines, got {type_name(setup)} {show(setup)}")
    extra = as_mapping(mapping.get("additional_parameters"), "slurm.additional_parameters")
    for key, value in extra.items():
        if not _SBATCH_NAME.match(key.replace("_", "-")):
            raise SpecError(f"slurm.additional_parameters.{key}", "expected an sbatch long option name such as "
                            "'mail-type' (without the leading --)")
        if isinstance(value, (dict, list)):
            raise SpecError(f"slurm.additional_parameters.{key}", f"expected a single value, got {type_name(value)}")
    nodes = get_int(mapping, "nodes", "slurm", 1, minimum=1)
    gpus = get_int(mapping, "gpus_per_node", "slurm", 0, minimum=0)
    per_node = max(1, world_size // nodes)
    tasks = get_int(mapping, "tasks_per_node", "slurm", per_node, minimum=1)
    if tasks * nodes != world_size:
        raise SpecError("slurm.tasks_per_node", f"nodes x tasks_per_node = {nodes} x {tasks} = {tasks * nodes} "
                        f"processes, but the trainer trains on {world_size} (trainer.devices x trainer.num_nodes); "
                        "each DDP rank is one SLURM task, so leave tasks_per_node out or make them agree")
    if gpus and world_size > 1 and gpus != tasks:
        raise SpecError("slurm.gpus_per_node", f"{gpus} GPUs per node but {tasks} DDP ranks per node; give each "
                        "rank one GPU (gpus_per_node = trainer.devices)")
    resources = SlurmResources(
        **text, timeout_min=get_int(mapping, "timeout_min", "slurm", 60, minimum=1),
        cpus_per_task=get_int(mapping, "cpus_per_task", "slurm", 1, minimum=1),
        mem_gb=get_number(mapping, "mem_gb", "slurm", None, minimum=0.001),
        gpus_per_node=gpus, nodes=nodes, tasks_per_node=tasks, setup=tuple(setup), additional_parameters=extra,
        array_parallelism=get_int(mapping, "array_parallelism", "slurm", None, minimum=1),
        signal_delay_s=get_int(mapping, "signal_delay_s", "slurm", 120, minimum=10))
    if resources.signal_delay_s >= resources.timeout_min * 60:
        raise SpecError("slurm.signal_delay_s", f"{resources.signal_delay_s} s is not shorter than the time limit "
                        f"(timeout_min={resources.timeout_min}); the worker would be told to stop as it starts")
    return resources


def submitit_parameters(res: SlurmResources, *, name: str, workers: int) -> dict[str, Any]:
    """The resources in submitit's ``SlurmExecutor`` names."""
    params: dict[str, Any] = {
        "job_name": res.job_name or f"sweeplight-{name}", "time": res.timeout_min, "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node, "cpus_per_task": res.cpus_per_task,
        "signal_delay_s": res.signal_delay_s, "array_parallelism": min(workers, res.array_parallelism or workers),
        "stderr_to_stdout": True, "additional_parameters": {"requeue": True, **res.additional_parameters}}
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(res, key):
            params[key] = getattr(res, key)
    if res.mem_gb is not None:
        params["mem"] = f"{int(res.mem_gb * 1024)}MB"
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.setup:
        params["setup"] = list(res.setup)
    return params


# ------------------------------------------------------------------------------------------------ the cluster --

def require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "squeue", "sinfo", "scontrol") if shutil.which(tool) is None]
    if missing:
        raise SpecError("executor.kind", f"'slurm' needs the SLURM commands on PATH ({', '.join(missing)} not "
                        "found); run launch on a login node, or use executor.kind: local (bash slurm/start-cluster.sh "
                        "starts a one-node test cluster on this machine)")


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_cpus: int  # CPUs of its largest node
    max_mem_mb: int
    max_gpus: int


def partitions() -> dict[str, Partition]:
    """Partitions with the largest node's CPUs, memory (MB) and GPUs, from ``sinfo``."""
    from sweeplight._slurm_jobs import run

    out = run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"])
    if out is None or out.returncode != 0:
        why = "no answer" if out is None else out.stderr.strip()[:200] or out.returncode
        raise SpecError("executor.kind", f"sinfo failed ({why}); is slurmctld reachable from here?")
    found: dict[str, Partition] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 4:
            continue
        name, cpus, mem, gres = parts
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        old = found.get(name)
        found[name] = Partition(name, default or bool(old and old.default), max(_int(cpus), old.max_cpus if old else 0),
                                max(_int(mem), old.max_mem_mb if old else 0), max(gpus, old.max_gpus if old else 0))
    return found


def _int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def check_cluster(res: SlurmResources) -> None:
    """One line naming the field when this cluster cannot run the worker job; nothing is submitted."""
    require_slurm()
    parts = partitions()
    if res.partition:
        for name in res.partition.split(","):
            if name not in parts:
                raise SpecError("slurm.partition", f"unknown partition {name!r}; this cluster has: "
                                f"{', '.join(sorted(parts)) or '(none)'} (sinfo -s)")
        chosen = [parts[n] for n in res.partition.split(",")]
    else:
        chosen = [p for p in parts.values() if p.default] or list(parts.values())
    where = f"partition {res.partition!r}" if res.partition else "the default partition"
    if chosen:
        cpus = max(p.max_cpus for p in chosen)
        need = res.cpus_per_task * res.tasks_per_node
        if need > cpus:
            raise SpecError("slurm.cpus_per_task", f"cpus_per_task x tasks_per_node = {need} CPUs per node, but the "
                            f"largest node in {where} has {cpus}")
        mem = max(p.max_mem_mb for p in chosen)
        if res.mem_gb is not None and res.mem_gb * 1024 > mem:
            raise SpecError("slurm.mem_gb", f"{res.mem_gb:g} GB per node, but the largest node in {where} has "
                            f"{mem / 1024:.1f} GB; ask for at most {mem // 1024} GB")
        gpus = max(p.max_gpus for p in chosen)
        if res.gpus_per_node > gpus:
            raise SpecError("slurm.gpus_per_node", f"{res.gpus_per_node} GPUs per node, but the nodes in {where} "
                            f"have at most {gpus}")
    _test_only(res)


def _test_only(res: SlurmResources) -> None:
    """``sbatch --test-only`` with the options the worker jobs are submitted with: SLURM's own verdict on account,
    qos, constraint and limits, without submitting."""
    from sweeplight._slurm_jobs import run

    params = submitit_parameters(res, name="check", workers=1)
    options = {**{k: v for k, v in params.items() if k not in _NOT_SBATCH}, **params["additional_parameters"]}
    command = ["sbatch", "--test-only", "--wrap=true"]
    for key, value in options.items():
        flag = key.replace("_", "-")
        if flag not in _NOT_TESTED:
            command.append(f"--{flag}" + ("" if value is True else f"={value}"))
    out = run(command)
    if out is None:
        raise SpecError("slurm", "sbatch --test-only gave no answer; is slurmctld reachable from here?")
    if out.returncode != 0:
        message = " ".join(out.stderr.replace("sbatch: error:", "").split())[:300]
        raise SpecError("slurm", f"the cluster refuses this job: {message} (sbatch --test-only)")


__all__ = ["KEYS", "SlurmResources", "check_cluster", "parse_slurm", "partitions", "require_slurm",
           "submitit_parameters"]
