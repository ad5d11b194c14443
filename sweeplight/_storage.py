"""Where a study lives: resolve the ``storage:`` field, open it, and create or resume the Optuna study.

One place masks passwords, so no log line, status table or error message ever shows one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError, StorageError

if TYPE_CHECKING:
    import optuna

    from sweeplight._spec import StudySpec

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def resolve_storage_url(raw: Any, study_dir: Path, base_dir: Path) -> str:
    """Turn the ``storage:`` field into a URL; default: an SQLite file in the study directory.

    A bare path ending in ``.log`` (or a ``journal:///path`` URL) is an Optuna journal file, the safe choice on
    NFS; a bare path ending in ``.db``/``.sqlite`` is an SQLite file. Relative paths start at the study file.
    """
    if raw is None:
        return f"sqlite:///{study_dir / 'study.db'}"
    if not isinstance(raw, str) or not raw.strip():
        raise SpecError("storage", f"expected an SQLAlchemy URL or a file path, got {raw!r}")
    match = _URL.match(raw)
    if match is None:
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if path.suffix == ".log":
            return f"journal:///{path}".replace("////", "///")
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return f"sqlite:///{path}"
        raise SpecError("storage", f"got {raw!r}; use a URL (sqlite:///, postgresql://, mysql://, journal:///) "
                        "or a path ending in .db (SQLite) or .log (journal file)")
    dialect = match["scheme"].split("+")[0].lower()
    if dialect not in _SCHEMES:
        raise SpecError("storage", f"unknown scheme {match['scheme']!r} in {mask_url(raw)!r}; allowed: "
                        "sqlite:///path.db, postgresql://user@host/db, mysql://user@host/db, journal:///path.log")
    if dialect == "sqlite" and raw.startswith("sqlite:///") and not raw.startswith("sqlite:////"):
        relative = raw[len("sqlite:///"):]
        if relative and relative != ":memory:":
            return f"sqlite:///{(base_dir / relative).resolve()}"
    return raw


def mask_url(url: str) -> str:
    """Replace the password of ``scheme://user:password@host`` with ``***``."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open the storage; SQLite gets a long busy timeout so concurrent workers wait instead of failing."""
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.split("://", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 120}}
            Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_compatibility_check=False)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one masked line
        text = mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise StorageError(f"storage: cannot open {mask_url(url)!r}: {text}; check the URL, that the server is "
                           "running and reachable, and the credentials") from None


def create_or_load_study(spec: StudySpec, *, sampler: Any = None, pruner: Any = None) -> optuna.Study:
    """Create the study, or resume it when it exists with the same direction."""
    import optuna

    storage = open_storage(spec.storage)
    direction = spec.objective.direction
    try:
        existing = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"storage: cannot read {mask_url(spec.storage)!r}: {mask_url(str(exc))[:200]}") from None
    for summary in existing:
        if summary.study_name == spec.name:
            if summary.direction.name.lower() != direction:
                raise StorageError(
                    f"objective.direction: study {spec.name!r} already exists in {mask_url(spec.storage)!r} with "
                    f"direction {summary.direction.name.lower()}, not {direction}; rename the study or use another "
                    "storage")
            break
    return optuna.create_study(study_name=spec.name, storage=storage, direction=direction, sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def load_study(spec: StudySpec, *, sampler: Any = None, pruner: Any = None) -> optuna.Study:
    import optuna

    storage = open_storage(spec.storage)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise StorageError(f"study {spec.name!r} does not exist in {mask_url(spec.storage)!r}; launch it first: "
                           "sweeplight study launch STUDY.yaml") from None
