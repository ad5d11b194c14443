"""Where a study lives: resolve the ``storage:`` field, open it, and create or resume the Optuna study.

One place masks passwords, so no log line, status table or error message ever shows one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from sweeplight._errors import SpecError, StorageError
from sweeplight._fields import did_you_mean, show, type_name

if TYPE_CHECKING:
    import optuna

    from sweeplight._spec import StudySpec

_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# user:password@ after '://', at the start of the text or after a space; the password runs to the last '@' of the
# word, so one holding '@', '/' or ':' is masked whole. ':' followed by '//' is a scheme, not a user.
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
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
        text, _, query = raw.partition("?")
        path = Path(text).expanduser()
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if path.suffix == ".log":
            return f"journal:///{path}" + (f"?{query}" if query else "")
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
        return Path(url.split(":///", 1)[1].split("?", 1)[0])
    return None


def expand_env(url: str) -> str:
    """Replace ``${NAME}`` with the environment variable NAME, at connect time only.

    The study file (and the ``spec.json`` copy of it) keeps ``${PGPASSWORD}``, so a password never lands on disk;
    libpq's own ``PGPASSWORD`` and ``~/.pgpass`` work as well when the URL has no password at all.
    """

    def value(match: re.Match[str]) -> str:
        name = match[1]
        if name not in os.environ:
            raise StorageError(f"storage: the URL uses ${{{name}}} but the environment variable {name} is not set; "
                               f"export {name}=... before launching (on SLURM: in the job's environment too)")
        return quote(os.environ[name], safe="/:")

    return _ENV.sub(value, url)


def mask_url(url: str) -> str:
    """Replace the password of ``scheme://user:password@host`` (also inside a longer message) with ``***``.

    >>> mask_url("postgresql://me:p@ss/word@db.example.org/study")
    'postgresql://me:***@db.example.org/study'
    """
    return _PASSWORD.sub(r"\1:***@", url)


def open_storage(url: str, *, create: bool = True, pool_size: int = 2) -> optuna.storages.BaseStorage:
    """Open the storage, tuned for many workers sharing it.

    SQLite waits up to 120 s on a locked file instead of failing; on a local disk it keeps a write-ahead log
    (``_write_ahead_log``). A journal file gets the lock that works on its file system (``journal_lock``). A server
    database keeps a small pool per process (``pool_size`` + 2 overflow, recycled hourly): 100 workers need about
    400 connections, not the 1,500 SQLAlchemy's defaults allow. No ``pool_pre_ping``: it costs a round trip on every
    storage call (a worker makes ~25 per trial), and a connection a restarted server dropped fails its first
    statement, which SQLAlchemy answers by discarding the pool; the worker's retrying storage then retries on a new
    connection, and short-lived readers (``status``) open fresh ones anyway. With ``create=False`` a missing SQLite
    or journal file is an error instead of a new empty file (``status`` must not leave files behind).
    """
    import optuna

    path = storage_file(url)
    created = _new_paths(url)
    if not create and path is not None and not path.is_file():
        raise StorageError(f"storage: {str(path)!r} does not exist; launch the study first: "
                           "sweeplight study launch STUDY.yaml")
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            lock = journal_lock(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
        if url.startswith("sqlite"):
            path.parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
        else:
            engine_kwargs = {"pool_size": pool_size, "max_overflow": 2, "pool_recycle": 3600}
        storage = optuna.storages.RDBStorage(expand_env(url), engine_kwargs=engine_kwargs,
                                             skip_compatibility_check=False)
        if url.startswith("sqlite"):
            _write_ahead_log(storage.engine, path)
        return storage
    except StorageError:
        _remove_new(created)
        raise
    except ImportError:
        scheme = url.split("://")[0].lower()
        hint = _DRIVERS.get(scheme, "install the SQLAlchemy driver the URL names")
        raise StorageError(f"storage: no database driver for {scheme}:// URLs; {hint}") from None
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one masked line
        _remove_new(created)
        raise StorageError(f"storage: cannot open {mask_url(url)!r}: {_first_line(exc)}; {advice(exc)}") from None


def _write_ahead_log(engine: Any, path: Path) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``, where the file is on a local disk.

    In SQLite's default mode every commit fsyncs the file and its rollback journal, and a writer blocks every
    reader: with a worker writing a dozen times per trial, the disk's fsync latency set the pace (4.6 trials/s on
    this project's VM disk against 12 in WAL mode, same Optuna loop). In WAL mode commits append to the log without
    an fsync and readers never wait for writers. A power cut (not a crashed process) can lose the last commits,
    never the file; every result is also in its trial's fsynced ``summary.json``, which ``study sync`` puts back.
    WAL needs shared memory between the processes, which network file systems do not give (nor were SQLite's locks
    safe there to begin with: ``storage_warnings``), so those files keep the default mode.
    """
    from sqlalchemy import event

    mount = filesystem(path)
    if mount is None or mount.networked:
        return

    def pragmas(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # kept in the file: once, for every later connection
            cursor.execute("PRAGMA synchronous=NORMAL")  # per connection
        finally:
            cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connection RDBStorage opened to create the tables predates the listener


_ADVICE = (
    (("disk is full", "no space left", "disk quota"), "free space on that file system (df -h), or point root or "
     "storage at another one"),
    (("not a database", "file is encrypted", "malformed"), "the file is not an SQLite database of Optuna; point "
     "storage at a new file"),
    (("password authentication failed", "access denied"), "check the user and password (keep the password out of "
     "the study file: ${PGPASSWORD} in the URL, the PGPASSWORD variable or ~/.pgpass)"),
    (("read-only file system", "permission denied", "unable to open database file"), "pick a directory you can write"),
    (("database \"", "unknown database"), "create the database first (createdb NAME, or CREATE DATABASE NAME)"),
    (("could not translate host name", "name or service not known"), "check the host name in the URL"),
)


def advice(exc: BaseException) -> str:
    """What to do about a storage error, from its message: one line for the user, not the driver's jargon."""
    text = str(exc).lower()
    for needles, hint in _ADVICE:
        if any(n in text for n in needles):
            return hint
    return "check the URL, that the server is running and reachable from this node, and the credentials"


def missing_top(path: Path) -> Path | None:
    """The topmost of ``path`` and its parents that does not exist yet (what ``mkdir -p path`` would create)."""
    return next((p for p in reversed([path, *path.parents]) if not p.exists()), None)


def _new_paths(url: str) -> tuple[Path | None, Path | None]:
    """What opening a file storage may create: (a new directory tree, a new file); ``_remove_new`` undoes it."""
    path = storage_file(url)
    if path is None:
        return None, None
    return missing_top(path.parent), None if path.exists() else path


def _remove_new(created: tuple[Path | None, Path | None]) -> None:
    """Undo what a failed open made: a new directory tree, or a new file in an existing one."""
    import shutil

    directory, file = created
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    elif file is not None:
        for leftover in file.parent.glob(file.name + "*"):  # also -journal / .lock companions
            leftover.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return mask_url(text)[:300]


def journal_lock(url: str, mounts: str = "/proc/mounts") -> Any:
    """The journal file's writer lock: ``?lock=open|symlink`` and ``?grace=SECONDS`` in the URL, else by file system.

    ``open`` (an O_EXCL lock file) is atomic on local disks, NFSv3+, Lustre, GPFS and SMB, which may not allow
    symlinks; ``symlink`` is for NFSv2. A writer that dies holding the lock blocks the others for ``grace`` seconds
    (default 30), after which the lock is broken (the lock is held only for the few milliseconds of an append).
    """
    from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock

    path = storage_file(url)
    query = parse_qs(url.split("?", 1)[1]) if "?" in url else {}
    unknown = sorted(set(query) - {"lock", "grace"})
    if unknown:
        raise StorageError(f"storage: unknown journal option {unknown[0]!r}; allowed: lock=open|symlink, "
                           "grace=SECONDS")
    kind = query.get("lock", [""])[-1]
    if kind not in ("", "open", "symlink"):
        raise StorageError(f"storage: lock={kind!r}; use lock=open (NFSv3+, local disks) or lock=symlink (NFSv2)")
    grace_text = query.get("grace", ["30"])[-1]
    try:
        grace = int(grace_text)
        if grace < 3:
            raise ValueError
    except ValueError:
        raise StorageError(f"storage: grace={grace_text!r}; give a whole number of seconds >= 3 (default 30)") from None
    if not kind:
        mount = filesystem(path, mounts)
        kind = "symlink" if mount is not None and "vers=2" in mount.options.split(",") else "open"
    lock = JournalFileOpenLock if kind == "open" else JournalFileSymlinkLock
    return lock(str(path), grace_period=grace)


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on, from /proc/mounts."""

    point: str
    fstype: str
    options: str

    @property
    def networked(self) -> bool:
        return self.fstype.split(".")[0] in NETWORK_FILESYSTEMS or self.fstype.startswith("fuse.")


# File systems where SQLite's fcntl locks are unreliable (the SQLite FAQ, and every HPC centre's wiki).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "cephfs", "ceph",
                       "glusterfs", "panfs", "wekafs", "9p", "afs")


def filesystem(path: Path, mounts: str = "/proc/mounts") -> Mount | None:
    """The mount holding ``path`` (the longest mount point that contains it), or None where /proc is missing."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: Mount | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = Mount(point=point, fstype=fields[2], options=fields[3])
    return best


def storage_warnings(url: str, mounts: str = "/proc/mounts") -> list[str]:
    """What is unsafe about this storage, one line each (launch prints them; ``storage check`` too)."""
    path = storage_file(url)
    if path is None or not url.startswith("sqlite"):
        return []
    mount = filesystem(path.parent if not path.exists() else path, mounts)
    if mount is None or not mount.networked:
        return []
    return [f"storage: the SQLite file {str(path)!r} is on {mount.fstype} ({mount.point}), where SQLite's file "
            f"locking is unsafe and concurrent workers can corrupt the study; use a journal file "
            f"(storage: {path.with_suffix('.log').name}) or PostgreSQL"]


_DRIVERS = {
    "postgresql": "pip install 'psycopg[binary]' (or pip install 'sweeplight[postgres]')",
    "postgresql+psycopg": "pip install 'psycopg[binary]'",
    "postgresql+psycopg2": "pip install psycopg2-binary",
    "mysql": "pip install mysqlclient, or use mysql+pymysql:// with pip install pymysql",
    "mysql+pymysql": "pip install pymysql",
}
SPACE_ATTR = "sweeplight:search_space"  # study system attr: the space the study was created with


def create_or_load_study(spec: StudySpec, *, sampler: Any = None, pruner: Any = None) -> optuna.Study:
    """Create the study, or resume it when it exists with the same direction and search space.

    A changed space would mix trials of two experiments under one name (and samplers would model them together),
    so it is refused before anything is written.
    """
    import json

    import optuna

    from sweeplight._space import describe, space_changes

    created = _new_paths(spec.storage)
    storage = open_storage(spec.storage)
    directions = [objective.direction for objective in spec.all_objectives]
    direction = ", ".join(directions)
    space = json.loads(json.dumps(describe(spec.search_space)))  # as it reads back from the storage
    try:
        existing = storage.get_all_studies()
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one masked line
        _remove_new(created)
        raise StorageError(f"storage: cannot read {mask_url(spec.storage)!r}: {_first_line(exc)}; {advice(exc)}"
                           ) from None
    summary = next((s for s in existing if s.study_name == spec.name), None)
    if summary is not None:
        stored = ", ".join(d.name.lower() for d in summary.directions)  # one per objective
        if stored != direction:
            raise StorageError(
                f"objective.direction: study {spec.name!r} already exists in {mask_url(spec.storage)!r} with "
                f"direction {stored}, not {direction}; rename the study or use another "
                "storage")
        old = summary.system_attrs.get(SPACE_ATTR)
        changes = space_changes(old, space) if old is not None else []
        if changes:
            raise StorageError(
                f"search_space: study {spec.name!r} already exists with a different search space ("
                f"{'; '.join(changes)[:400]}); to search the new space give the study a new name (name: "
                f"{spec.name}-2), or restore the old space to resume")
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
        if summary is None or summary.system_attrs.get(SPACE_ATTR) is None:
            study._storage.set_study_system_attr(study._study_id, SPACE_ATTR, space)
    except Exception as exc:  # noqa: BLE001 - a full disk, a lost connection: one line, and nothing left behind
        if summary is None:
            _remove_new(created)
        raise StorageError(f"storage: cannot create study {spec.name!r} in {mask_url(spec.storage)!r}: "
                           f"{_first_line(exc)}; {advice(exc)}") from None
    return study


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


def all_trials(study: optuna.Study) -> list:
    """``get_all_trials(deepcopy=False)``: the study's trials by number, the storage's own objects.

    Optuna's cached database storage sorts its trials with a Python key function on every read (4 ms at 10,000
    trials, before every ask); its cache is a dict keyed by trial number, so sorting the numbers gives the same list
    (same objects, same order) at a tenth of the cost. Any other storage, or an Optuna without that cache, is read
    the usual way. Retried like every storage call.
    """
    import optuna

    from sweeplight._retrying import RetryingStorage

    storage = study._storage
    inner = storage._inner if isinstance(storage, RetryingStorage) else storage
    if not (isinstance(inner, optuna.storages._CachedStorage) and hasattr(inner, "_read_trials_from_remote_storage")
            and hasattr(inner, "_studies") and hasattr(inner, "_lock")):
        return storage.get_all_trials(study._study_id, deepcopy=False)

    def read(study_id: int) -> list:
        inner._read_trials_from_remote_storage(study_id)
        with inner._lock:
            trials = inner._studies[study_id].trials
            return [trials[number] for number in sorted(trials)]

    return storage.retried(read, study._study_id) if storage is not inner else read(study._study_id)
