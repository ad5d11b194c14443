"""A trial's JSON summary: written atomically so a reader never sees half a file, and before the study is told,
so a result survives a database outage."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def write_json_atomic(path: Path, data: dict[str, Any], *, durable: bool = True) -> None:
    """Readers see the old file or the new one, never half of one; ``durable`` also survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_clean(data), handle, indent=2, sort_keys=False, allow_nan=False)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_summary(path: Path, summary: dict[str, Any], *, study: str, study_dir: Path, number: int,
                  durable: bool = True) -> None:
    """Write trial ``number``'s summary (``write_json_atomic``), then add its row to the study's index in
    ``<study_dir>/.sweeplight-cache/``, from which ``sweeplight.analysis`` loads a study without opening every
    summary (``_rows.index_summary``; ``SWEEPLIGHT_ANALYSIS_CACHE=0`` turns it off)."""
    write_json_atomic(path, summary, durable=durable)
    try:
        from sweeplight._rows import index_summary

        index_summary(study_dir, study, number, path)
    except Exception:  # noqa: BLE001 - the index only makes loading faster: without a line, loads read the file
        pass


class Durability:
    """fsyncs files already written (atomically, without fsync) on a background thread, in order.

    A trial's summary is written before the study is told, so the result survives a storage outage; that ordering
    needs the file visible, not on the platters: a process that dies keeps its writes in the page cache. Only a
    power cut or kernel crash needs the fsync, and then the study's own storage (which fsyncs its tell) still holds
    the result. So the fsync (1-4 ms on a VM disk, more on network file systems) runs beside the next trial's ask
    instead of before the tell. ``wait`` makes everything queued durable (a worker calls it before exiting, and when
    the storage cannot be told, so the summary is the result's only copy).
    """

    def __init__(self) -> None:
        self._executor: Any = None
        self._pending: list[Any] = []

    def later(self, path: Path) -> None:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplight-fsync")
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._executor.submit(fsync_path, path))

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


def fsync_path(path: Path) -> None:
    """Make a file written earlier, and its name in its directory, survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # some file systems cannot open a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null rather than writing a file other tools cannot parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _clean(value.item())
        except (TypeError, ValueError):
            pass
    return value


@cache
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("sweeplight", "torch", "lightning", "pytorch-lightning", "optuna"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


@cache
def git_commit(directory: str) -> str | None:
    """The commit of the repository holding the study file, with '+dirty' when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", directory, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def host_context() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0) if "SLURM_JOB_ID" in os.environ
        else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark so each trial reports its own peak (Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
