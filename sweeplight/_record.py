"""What it takes to redo a trial offline: ``trials/<number>/record.json``, written before the trial trains.

A summary says what a trial did; a record says how to do it again, even after the study file, the code or the
environment changed: the resolved study (embedded, not a path to a file that may be edited later), the parameters,
the seeds, the git commit and uncommitted changes of the repositories holding the user's model and data code, the
installed packages, the SLURM allocation, the command and the host. ``sweeplight trial rerun`` (``_rerun.py``) reads
it back.

Everything but the trial's own fields is the same for every trial of a worker, so it is gathered once per worker,
at its first trial (git, the package list), and serialised once; a trial costs one small file write. The package
list and the diffs are files of their own under ``<study>/env/``, named by a hash of their content, so a hundred
workers with the same environment leave one copy, and records name them.

    >>> begin_worker(spec, worker=0)  # doctest: +SKIP
    >>> write_record(spec, number=3, params={"lr": 0.01})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sweeplight._errors import SweeplightError

RECORD_FILE = "record.json"
RECORD_SCHEMA = 1
ENV_DIR = "env"
LAUNCH_COMMAND = "SWEEPLIGHT_LAUNCH_COMMAND"  # the launch's argv and cwd, inherited by its workers (local or SLURM)
GIT_TIMEOUT = 10.0  # seconds per git call: a hung network file system must not hold the worker
UNTRACKED_MAX_BYTES = 512 * 1024  # an untracked file larger than this is listed, not copied into the patch
UNTRACKED_MAX_FILES = 200
# Variables that change what a run computes or where it runs.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED",
            "SWEEPLIGHT_FASTPATH", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
SLURM_VARS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
              "node": "SLURMD_NODENAME", "nodelist": "SLURM_JOB_NODELIST", "partition": "SLURM_JOB_PARTITION",
              "cluster": "SLURM_CLUSTER_NAME", "ntasks": "SLURM_NTASKS", "procid": "SLURM_PROCID",
              "cpus_per_task": "SLURM_CPUS_PER_TASK", "cpus_on_node": "SLURM_CPUS_ON_NODE",
              "gpus": "SLURM_JOB_GPUS", "gpus_on_node": "SLURM_GPUS_ON_NODE", "restart_count": "SLURM_RESTART_COUNT"}

_worker_state: dict[str, Any] = {}  # study directory -> the worker's serialised context
_worker_index: dict[str, int] = {}  # study directory -> the worker index (its sampler seed is seed + index)


class RecordError(SweeplightError):
    """A trial's record is missing or unreadable: nothing can be re-run (exit code 2, like other bad input)."""

    exit_code = 2


def begin_worker(spec: Any, *, worker: int = 0) -> None:
    """Note this worker's index; what its trials share is gathered at its first trial, so a worker that finds the
    budget met leaves at once."""
    _worker_index[str(spec.directory)] = worker


def _shared(spec: Any) -> str:
    """The record's fields shared by the worker's trials, serialised once. Never fails the trial: a record is a
    help, not a need."""
    key = str(spec.directory)
    if key not in _worker_state:
        try:
            context = worker_context(spec, worker=_worker_index.get(key, 0))
            _worker_state[key] = json.dumps(context, indent=1, default=str)[1:-1].strip()
        except Exception as exc:  # noqa: BLE001 - a broken git or file system must not stop the trials
            print(f"warning: cannot gather the trials' reproducibility record: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            _worker_state[key] = ""
    return _worker_state[key]


def write_record(spec: Any, *, number: int, params: dict[str, Any], resume: Any = None) -> Path | None:
    """Write ``trials/<number>/record.json`` before the trial trains, so a crashed trial has one too."""
    shared = _shared(spec)
    trial_fields = {
        "schema_version": RECORD_SCHEMA,
        "study": spec.name,
        "trial": number,
        "params": params,
        "seed": {"trainer": params.get("trainer.seed", spec.trainer.seed), "sampler": spec.sampler.seed},
        "resumed_from": None if resume is None else {"trial": resume.from_trial, "checkpoint": str(resume.checkpoint)},
        "written_at": time.time(),
        "pid": os.getpid(),
        "torch_threads": _torch_threads(),
    }
    path = spec.directory / "trials" / str(number) / RECORD_FILE
    try:
        head = json.dumps(trial_fields, indent=1, default=str, allow_nan=False)[:-1].rstrip()
        _write_text(path, f"{head},\n {shared}\n}}\n" if shared else f"{head}\n}}\n")
    except (OSError, ValueError) as exc:
        print(f"warning: trial {number}: cannot write {path}: {exc}", file=sys.stderr, flush=True)
        return None
    return path


def worker_context(spec: Any, *, worker: int = 0) -> dict[str, Any]:
    """The record's fields shared by a worker's trials."""
    from sweeplight._storage import mask_url
    from sweeplight._summary import versions

    raw = dict(spec.raw)
    if isinstance(raw.get("storage"), str):
        raw["storage"] = mask_url(raw["storage"])
    freeze_text = freeze()
    freeze_path = write_env_file(spec.directory, "freeze", ".txt", freeze_text)
    sampler_seed = spec.sampler.seed
    return {
        # What spec.json holds (storage password masked): `trial rerun` rebuilds the exact spec from it.
        "spec": {"raw": raw, "base_dir": str(spec.base_dir), "root": str(spec.root),
                 "storage": mask_url(spec.storage)},
        "sampler": {"name": spec.sampler.name, "seed": sampler_seed, "worker": worker,
                    "worker_seed": None if sampler_seed is None else (sampler_seed + worker) % 2**32},
        "code": code_context(spec, study_dir=spec.directory),
        "packages": {"freeze": freeze_path, "sha256": _sha(freeze_text), "count": len(freeze_text.splitlines())},
        "versions": versions(),
        "slurm": slurm_context(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                 "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        "command": {"worker": {"argv": _argv(), "cwd": os.getcwd(), "python": sys.executable},
                    "launch": _launch_command()},
    }


def note_launch_command() -> None:
    """Put this process's command in the environment its workers inherit (local processes and SLURM jobs alike)."""
    os.environ.setdefault(LAUNCH_COMMAND, json.dumps({"argv": _argv(), "cwd": os.getcwd()}))


def _argv() -> list[str]:
    """The command as it was started, interpreter and ``-m module`` included (``sys.argv`` loses both)."""
    return list(getattr(sys, "orig_argv", sys.argv))


def _launch_command() -> dict[str, Any] | None:
    try:
        return json.loads(os.environ[LAUNCH_COMMAND])
    except (KeyError, ValueError):
        return None


def slurm_context() -> dict[str, Any] | None:
    """The SLURM allocation this process runs in, or None outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {key: os.environ.get(name) for key, name in SLURM_VARS.items()}


def code_context(spec: Any, *, study_dir: Path | None) -> dict[str, Any]:
    """The model's and data module's source files and, per git repository holding them, its commit, branch and
    uncommitted changes (saved in ``<study_dir>/env/`` as a patch, by hash; None: only hashed, nothing written)."""
    places = {"model": source_file(spec.model.target, spec.base_dir), "data": source_file(spec.data.target,
                                                                                           spec.base_dir)}
    components = {}
    repos: dict[str, dict[str, Any]] = {}
    for name, file in places.items():
        repo = git_state(file.parent if file else spec.base_dir, exclude=spec.root)
        components[name] = {"target": getattr(spec, name).target, "file": str(file) if file else None,
                            "repo": repo["root"] if repo else None}
        if repo and repo["root"] not in repos:
            patch = repo.pop("patch")
            repo["diff_sha256"] = _sha(patch) if patch else None
            repo["diff"] = write_env_file(study_dir, "diff", ".patch", patch) if patch and study_dir else None
            repos[repo["root"]] = repo
    return {"components": components, "repos": list(repos.values())}


def source_file(target: str, base_dir: Path) -> Path | None:
    """The file defining ``target`` ('file.py:Class' or 'package.module:Class'), without importing it."""
    module, _, _ = target.rpartition(":")
    if module.endswith(".py") or "/" in module:
        path = Path(module).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        return path.resolve() if path.is_file() else None
    loaded = sys.modules.get(module)
    origin = getattr(loaded, "__file__", None)
    if origin is None:
        import importlib.util

        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        origin = found.origin if found is not None else None
    return Path(origin).resolve() if origin and os.path.isfile(origin) else None


def git_state(directory: Path, *, exclude: Path | None = None) -> dict[str, Any] | None:
    """Commit, branch, dirty flag and a patch of the uncommitted changes (tracked changes against HEAD, plus the
    content of small untracked text files) of the repository holding ``directory``; None when it is not in one or
    git is not installed. ``exclude`` (the runs directory) is left out of the untracked files: it changes with
    every trial."""
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    root = Path(top.strip())
    commit = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD") if commit else None
    tracked = (_git(root, "diff", "HEAD", "--no-color", "--no-ext-diff") if commit else "") or ""
    pathspec = ["--", "."]
    if exclude is not None:
        with contextlib.suppress(ValueError):  # the runs are outside this repository
            pathspec.append(f":(exclude){Path(exclude).resolve().relative_to(root)}")
    listing = _git(root, "ls-files", "--others", "--exclude-standard", "-z", *pathspec) or ""
    untracked = sorted(p for p in listing.split("\0") if p)
    added, skipped = _untracked_patch(root, untracked[:UNTRACKED_MAX_FILES])
    return {"root": str(root), "commit": commit.strip() if commit else None,
            "branch": branch.strip() if branch and branch.strip() != "HEAD" else None,
            "dirty": bool(tracked), "untracked": untracked[:UNTRACKED_MAX_FILES], "untracked_count": len(untracked),
            "untracked_not_in_patch": skipped, "patch": tracked + added}


def _untracked_patch(root: Path, files: list[str]) -> tuple[str, list[str]]:
    """A patch that creates the untracked text files (``git apply`` takes it); large or binary files, and names git
    would quote, are listed instead."""
    parts, skipped = [], []
    for name in files:
        text = None
        if name.isascii() and not any(c.isspace() or c in "\"\\" for c in name):
            try:
                path = root / name
                data = path.read_bytes() if path.stat().st_size <= UNTRACKED_MAX_BYTES else None
                text = data.decode() if data is not None and b"\0" not in data else None
            except (OSError, UnicodeDecodeError):
                text = None
        if text is None:
            skipped.append(name)
            continue
        header = f"diff --git a/{name} b/{name}\nnew file mode 100644\n"
        if not text:
            parts.append(header)
            continue
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        tail = "" if text.endswith("\n") else "\\ No newline at end of file\n"
        body = "".join(f"+{line}\n" for line in lines)
        parts.append(f"{header}--- /dev/null\n+++ b/{name}\n@@ -0,0 +1,{len(lines)} @@\n{body}{tail}")
    return "".join(parts), skipped


def _git(directory: Path, *args: str) -> str | None:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(directory), *args], capture_output=True,
                              text=True, errors="replace", timeout=GIT_TIMEOUT, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):  # no git, a hang, a binary file name
        return None
    return done.stdout if done.returncode == 0 else None


def freeze() -> str:
    """``pip freeze`` from the installed distributions' metadata, without starting pip (one line per package,
    ``name==version``; editable installs and VCS checkouts say where they come from)."""
    from importlib.metadata import distributions

    lines: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = name.lower().replace("_", "-")
        if key in lines:  # shadowed by one earlier on sys.path, as import would
            continue
        line = f"{name}=={dist.version}"
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "null")
        except ValueError:
            direct = None
        if isinstance(direct, dict):
            if direct.get("dir_info", {}).get("editable"):
                line += f"  # editable install of {direct.get('url')}"
            elif "vcs_info" in direct:
                vcs = direct["vcs_info"]
                line = f"{name} @ {vcs.get('vcs', 'git')}+{direct.get('url')}@{vcs.get('commit_id')}"
        lines[key] = line
    return "".join(f"{lines[key]}\n" for key in sorted(lines))


def parse_freeze(text: str) -> dict[str, str]:
    """Package name (normalised) -> its freeze line, comments left out."""
    out = {}
    for line in text.splitlines():
        body = line.split("  #", 1)[0].strip()
        if not body or body.startswith("#"):
            continue
        name = body.split("==", 1)[0].split(" @ ", 1)[0].strip()
        out[name.lower().replace("_", "-")] = body
    return out


def write_env_file(study_dir: Path, prefix: str, suffix: str, text: str) -> str:
    """Write ``env/<prefix>-<hash><suffix>`` once; returns its path relative to the study directory."""
    name = f"{ENV_DIR}/{prefix}-{_sha(text)[:16]}{suffix}"
    path = Path(study_dir) / name
    if not path.is_file():
        _write_text(path, text, shared=True)
    return name


def read_record(trial_dir: Path) -> dict[str, Any]:
    path = Path(trial_dir) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise RecordError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise RecordError(f"{path} is not valid JSON ({exc}); it was cut short or edited by hand") from None
    if not isinstance(record, dict) or record.get("schema_version") != RECORD_SCHEMA or "spec" not in record:
        raise RecordError(f"{path} is not a sweeplight trial record of schema {RECORD_SCHEMA}; it was written by "
                          "another version or its worker could not gather it")
    return record


def _write_text(path: Path, text: str, *, shared: bool = False) -> None:
    """Atomic (readers never see half a record), not fsynced: the record matters once the trial has run. A trial's
    directory has one writer, so its scratch name is fixed (mkstemp's random name costs more than the write);
    ``shared`` files (``env/``) may be written by several workers at once."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    if shared:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        handle = os.fdopen(fd, "w")
    else:
        tmp = str(path.parent / f".{path.name}.tmp")
        handle = open(tmp, "w")  # noqa: SIM115 - closed below
    try:
        with handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None
