"""Where a study lives: resolve the ``storage:`` field, open it, and create or resume the Optuna study.

One place masks passwords, so no log line, status table or error message ever shows one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError, StorageError
from sweeplight._fields import did_you_mean, show, type_name

if TYPE_CHECKING:
    import optuna

    from sweeplight._spec import StudySpec

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# user:password@ after '://', at the start of the text or after a space; the password runs to the last '@' of the
# word, so one holding '@', '/' or ':' is masked whole. ':' followed by '//' is a scheme, not a user.
_PASSWORD = re.compile(r"((?:^|://|\s)[^\s/:]*):(?!//)\S*@")


def resolve_storage_url(raw: Any, study_dir: Path, base_dir: Path) -> str:
    """Turn the ``storage:`` field into a URL; default: an SQLite file in the study directory.

    A bare path ending in ``.log`` (or a ``journal:///path`` URL) is an Optuna journal file, the safe choice on
    NFS; a bare path ending in ``.db``/``.sqlite`` is an SQLite file. Relative paths start at the study file.
    """
    if raw is None:
        return f"sqlite:///{study_dir / 'study.db'}"
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise SpecError("storage", f"expected an SQLAlchemy URL or a file path, got {type_name(raw)} {show(raw)}")
    match = _URL.match(raw)
    if match is None:
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if path.suffix == ".log":
            return f"journal:///{path}"
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return f"sqlite:///{path}"
        raise SpecError("storage", f"got {show(mask_url(raw))}; use a URL (sqlite:///, postgresql://, mysql://, "
                        "journal:///) or a path ending in .db (SQLite) or .log (journal file)")
    scheme = match["scheme"]
    dialect = scheme.split("+")[0].lower()
    if dialect not in _SCHEMES:
        # Only the scheme is quoted: the rest of a mistyped URL may hold a password in a form mask_url misses.
        raise SpecError("storage", f"unknown URL scheme {show(scheme)}{did_you_mean(dialect, _SCHEMES)}; allowed: "
                        "sqlite:///path.db, postgresql://user@host/db, mysql://user@host/db, journal:///path.log")
    if dialect in ("sqlite", "journal"):
        relative = raw[len(scheme) + len("://"):]
        if dialect == "sqlite" and (relative in ("", "/", "/:memory:") or relative.startswith("/:memory:?")):
            raise SpecError("storage", f"{show(raw)} is an in-memory database, which the worker processes cannot "
                            "share; give a file: sqlite:///path.db or a path ending in .db")
        if relative.startswith("/") and not relative.startswith("//"):
            return f"{scheme}:///{(base_dir / relative[1:]).resolve()}"
    return raw


def storage_file(url: str) -> Path | None:
    """The file behind an SQLite or journal URL (``scheme:////abs/path``, as SQLAlchemy writes it), else None."""
    if url.startswith(("sqlite:///", "journal:///")):
        return Path(url.split(":///", 1)[1])
    return None


def mask_url(url: str) -> str:
    """Replace the password of ``scheme://user:password@host`` (also inside a longer message) with ``***``.

    >>> mask_url("postgresql://me:p@ss/word@db.example.org/study")
    'postgresql://me:***@db.example.org/study'
    """
    return _PASSWORD.sub(r"\1:***@", url)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """Open the storage; SQLite gets a long busy timeout so concurrent workers wait instead of failing.

    With ``create=False`` a missing SQLite or journal file is an error instead of a new empty file (``status``
    must not leave files behind).
    """
    import optuna

    if not create and url.startswith(("sqlite:///", "journal:///")):
        path = storage_file(url)
        if not path.is_file():
            raise StorageError(f"storage: {str(path)!r} does not exist; launch the study first: "
                               "sweeplight study launch STUDY.yaml")

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = storage_file(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 120}}
            storage_file(url).parent.mkdir(parents=True, exist_ok=True)
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
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one masked line
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


def load_study(spec: StudySpec, *, sampler: Any = None, pruner: Any = None, max_wait: float = 0) -> optuna.Study:
    """Load an existing study; with ``max_wait`` > 0 every storage call waits out outages that long (workers)."""
    import optuna

    storage = open_storage(spec.storage, create=False)
    if max_wait > 0:
        from sweeplight._retrying import retrying

        storage = retrying(storage, max_wait=max_wait, label=spec.storage)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise StorageError(f"study {spec.name!r} does not exist in {mask_url(spec.storage)!r}; launch it first: "
                           "sweeplight study launch STUDY.yaml") from None
