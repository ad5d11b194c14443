"""``sweeplight storage check``: can the workers use this storage, and is it a good choice where it lives?

Connects the way a worker does, times a round trip, and says what to change: SQLite on a network file system,
a slow database, a server with too few connections for the planned workers.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweeplight._errors import StorageError
from sweeplight._storage import (
    filesystem,
    mask_url,
    missing_top,
    open_storage,
    resolve_storage_url,
    storage_file,
    storage_warnings,
)

SLOW_MS = 100.0  # a round trip slower than this makes the ask of every trial noticeably slower


@dataclass
class CheckReport:
    """What ``check_storage`` found; ``url`` is masked."""

    url: str
    backend: str
    latency_ms: float | None
    studies: list[str] = field(default_factory=list)
    file: str | None = None
    filesystem: str | None = None
    server: str | None = None
    max_connections: int | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_url_for(target: str) -> str:
    """A storage URL, a .db/.log path, a study file or a study directory, as the storage URL it names."""
    from sweeplight._status import resolve

    path = Path(target)
    if path.suffix in (".yaml", ".yml") or (path.is_dir() and (path / "spec.json").is_file()):
        return resolve(target).storage
    cwd = Path.cwd()
    return resolve_storage_url(target, cwd, cwd)


def check_storage(url: str, *, rounds: int = 5) -> CheckReport:
    """Connect, list the studies, time ``rounds`` round trips (the median), and collect warnings."""
    backend = url.split(":", 1)[0].split("+", 1)[0]
    report = CheckReport(url=mask_url(url), backend=backend, latency_ms=None, warnings=storage_warnings(url))
    path = storage_file(url)
    probe: Path | None = None
    if path is not None:
        report.file = str(path)
        mount = filesystem(path if path.exists() else path.parent)
        report.filesystem = None if mount is None else f"{mount.fstype} on {mount.point}"
        if not path.exists():
            # Time a throw-away file of the same kind in the nearest existing directory: what the study will see.
            probe = _writable_directory(path.parent) / f".sweeplight-check-{os.getpid()}{path.suffix}"
            url = url.replace(str(path), str(probe), 1)
            report.warnings.append(f"storage: {str(path)!r} does not exist yet; launch creates it")
    try:
        storage = open_storage(url)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            studies = storage.get_all_studies()
            times.append((time.perf_counter() - start) * 1000)
        report.latency_ms = round(statistics.median(times), 3)
        report.studies = sorted(s.study_name for s in studies) if probe is None else []
        if hasattr(storage, "engine") and backend in ("postgresql", "mysql"):
            report.server, report.max_connections = _server_info(storage.engine, backend)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - one masked line, whatever the driver raised
        text = mask_url(" ".join(str(exc).split()))[:300]
        raise StorageError(f"storage: cannot use {mask_url(url)!r}: {text}; check the URL, that the server is "
                           "running and reachable, and the credentials") from None
    finally:
        if probe is not None:
            for leftover in probe.parent.glob(probe.name + "*"):
                leftover.unlink(missing_ok=True)
    if report.latency_ms is not None and report.latency_ms > SLOW_MS:
        report.warnings.append(f"storage: {report.latency_ms:.0f} ms per round trip is slow (every ask and tell "
                               f"pays it several times); put the storage closer to the compute nodes")
    if report.max_connections is not None:
        report.warnings.append(f"storage: the server allows {report.max_connections} connections; each worker "
                               f"holds up to 8, so plan for at most {report.max_connections // 8} workers at once")
    return report


def format_report(report: CheckReport) -> str:
    lines = [f"storage:     {report.url}", f"backend:     {report.backend}"]
    if report.file:
        lines.append(f"file:        {report.file}")
        lines.append(f"file system: {report.filesystem or 'unknown'}")
    if report.server:
        lines.append(f"server:      {report.server}")
    lines.append(f"round trip:  {report.latency_ms:.1f} ms" if report.latency_ms is not None else "round trip:  -")
    lines.append(f"studies:     {', '.join(report.studies) if report.studies else '(none)'}")
    lines += [f"note: {w}" for w in report.warnings]
    if not any(w for w in report.warnings if "does not exist" not in w and "allows" not in w):
        lines.append("ok: workers can share this storage")
    return "\n".join(lines)


def _writable_directory(directory: Path) -> Path:
    top = missing_top(directory)
    existing = directory if top is None else top.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise StorageError(f"storage: cannot create files in {str(existing)!r} (permission denied); pick a directory "
                           "you can write, e.g. under your home or scratch space")
    return existing


def _server_info(engine: Any, backend: str) -> tuple[str | None, int | None]:
    from sqlalchemy import text

    with engine.connect() as connection:
        version = connection.execute(text("SELECT version()")).scalar()
        query = "SHOW max_connections" if backend == "postgresql" else "SELECT @@max_connections"
        limit = connection.execute(text(query)).scalar()
    return (str(version).split(" on ")[0].split(",")[0], int(limit) if limit is not None else None)
