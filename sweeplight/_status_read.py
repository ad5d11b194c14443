"""What ``study status`` shows, read from the study's storage: counts, the best trial, the running trials.

Two readers return the same :class:`Snapshot`. The fast one queries an RDB storage's tables directly (stdlib
``sqlite3`` for SQLite files, SQLAlchemy Core for server databases) and never imports Optuna: ``import optuna``
(numpy) plus the first ``RDBStorage`` connection (SQLAlchemy ORM, Alembic's schema check) cost ~0.8 s on a 2-core
machine, and status is typed by hand again and again (target 0.3 s, ``benchmarks/cli_speed.py``). Optuna versions its
table layout (``version_info.schema_version``); the fast reader knows schema 12 and answers None for anything else,
and for journal files, so those go through Optuna as before. Tests compare the two readers field for field.
"""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from sweeplight._storage import expand_env, storage_file

SCHEMA_VERSION = 12  # Optuna's RDB schema the fast reader was written against (Optuna 4.x and 5.x)
STOPPED = "sweeplight:stopped"
WARM_COUNT = "sweeplight:warm_started"  # as sweeplight._warm.WARM_COUNT: trials copied by --warm-start
Query = Callable[[str, dict[str, Any]], list[Any]]
T = TypeVar("T")


@dataclass(frozen=True)
class TrialView:
    """The fields of a trial that status shows."""

    number: int
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # epoch seconds
    last_step: int | None = None
    last_value: float | None = None


@dataclass(frozen=True)
class Snapshot:
    counts: dict[str, int]
    best: TrialView | None
    running: list[TrialView]
    stopped: str
    warm_started: int = 0  # finished trials copied by --warm-start (the study attribute WARM_COUNT)


def read_fast(url: str, study_name: str, direction: str) -> Snapshot | None:
    """The snapshot from an SQLite or server database without Optuna; None when this reader cannot answer."""
    return query_rdb(url, lambda query: _read(query, study_name, direction))


def query_rdb(url: str, reader: Callable[[Query], T]) -> T | None:
    """``reader(query)`` on an SQLite file (opened read-only) or a server database of Optuna's schema
    ``SCHEMA_VERSION``; None for a journal file, a missing SQLite file, another schema or any driver error.
    ``query(sql, args)`` returns the rows as tuples; ``sql`` names its arguments ``:name``. Also used by
    ``sweeplight.analysis`` (``_rows.read_rdb``) to read every trial of a study."""
    def checked(query: Query) -> T | None:
        version = query("SELECT schema_version FROM version_info", {})
        return reader(query) if version and version[0][0] == SCHEMA_VERSION else None

    if url.startswith("sqlite:///"):
        path = storage_file(url)
        if path is None or not path.is_file():
            return None  # Optuna's reader gives the error ("launch the study first")
        try:
            with closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)) as conn:
                return checked(lambda sql, args: conn.execute(sql, args).fetchall())
        except sqlite3.Error:
            return None
    if url.startswith(("postgresql", "mysql")):
        try:
            import sqlalchemy
        except ImportError:
            return None
        try:
            engine = sqlalchemy.create_engine(expand_env(url), poolclass=sqlalchemy.pool.NullPool)
            with engine.connect() as conn:
                return checked(lambda sql, args: conn.execute(sqlalchemy.text(sql), args).all())
        except Exception:  # noqa: BLE001 - any driver error: Optuna's reader reports it properly
            return None
    return None


def _read(query: Query, study_name: str, direction: str) -> Snapshot | None:
    found = query("SELECT study_id FROM studies WHERE study_name = :name", {"name": study_name})
    if not found:
        return None
    study = {"s": found[0][0]}
    counts = {state: int(n) for state, n in query(
        "SELECT state, COUNT(*) FROM trials WHERE study_id = :s GROUP BY state", study)}
    best = None
    complete = query("SELECT t.trial_id, t.number, v.value, v.value_type FROM trials t JOIN trial_values v "
                     "ON v.trial_id = t.trial_id AND v.objective = 0 WHERE t.study_id = :s AND t.state = 'COMPLETE' "
                     "ORDER BY t.number", study)
    scored = [(trial_id, number, _value(value, kind)) for trial_id, number, value, kind in complete]
    scored = [row for row in scored if row[2] is not None]
    if scored:
        pick = max if direction == "maximize" else min
        trial_id, number, value = pick(scored, key=lambda row: row[2])  # the first of equals, as Optuna's order
        best = TrialView(number=number, value=value, params=_params(query, trial_id),
                         user_attrs=_attrs(query, "trial_user_attributes", trial_id))
    running = []
    rows = query("SELECT trial_id, number, datetime_start FROM trials WHERE study_id = :s AND state = 'RUNNING' "
                 "ORDER BY number", study)
    for trial_id, number, started in rows:
        steps = query("SELECT step, intermediate_value, intermediate_value_type FROM trial_intermediate_values "
                      "WHERE trial_id = :t ORDER BY step DESC LIMIT 1", {"t": trial_id})
        running.append(TrialView(
            number=number, system_attrs=_attrs(query, "trial_system_attributes", trial_id), started=_epoch(started),
            last_step=steps[0][0] if steps else None, last_value=_value(steps[0][1], steps[0][2]) if steps else None))
    stopped = query("SELECT value_json FROM study_system_attributes WHERE study_id = :s AND key = :k",
                    {**study, "k": STOPPED})
    copied = query("SELECT value_json FROM study_system_attributes WHERE study_id = :s AND key = :k",
                   {**study, "k": WARM_COUNT})
    return Snapshot(counts=counts, best=best, running=running, stopped=json.loads(stopped[0][0]) if stopped else "",
                    warm_started=int(json.loads(copied[0][0])) if copied else 0)


def _value(value: float | None, kind: str) -> float | None:
    """Optuna stores infinities and NaN as a type next to a NULL value."""
    return {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}.get(kind, value)


def _attrs(query: Any, table: str, trial_id: int) -> dict[str, Any]:
    rows = query(f"SELECT key, value_json FROM {table} WHERE trial_id = :t ORDER BY {table[:-1]}_id",
                 {"t": trial_id})
    return {key: json.loads(value) for key, value in rows}


def _params(query: Any, trial_id: int) -> dict[str, Any]:
    """Parameter values in the user's terms: Optuna stores a categorical choice as its index."""
    params = {}
    for name, value, distribution_json in query(
            "SELECT param_name, param_value, distribution_json FROM trial_params WHERE trial_id = :t "
            "ORDER BY param_id", {"t": trial_id}):
        distribution = json.loads(distribution_json)
        kind, attributes = distribution["name"], distribution["attributes"]
        if kind == "CategoricalDistribution":
            params[name] = attributes["choices"][int(value)]
        elif kind in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
            params[name] = int(value)
        else:
            params[name] = float(value)
    return params


def _epoch(stored: Any) -> float | None:
    """Optuna's RDB keeps naive UTC datetimes (SQLite returns them as text)."""
    if stored is None:
        return None
    moment = stored if isinstance(stored, datetime.datetime) else datetime.datetime.fromisoformat(str(stored))
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def read_optuna(study: Any, trials: list[Any] | None = None) -> Snapshot:
    """The same snapshot through Optuna: journal files, other schema versions, and the fast reader's reference.
    ``trials``: the study's trials when the caller read them already."""
    from optuna.trial import TrialState

    if trials is None:
        trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    multi = study._is_multi_objective()  # no single best: the caller shows the Pareto front (sweeplight._pareto)
    complete = [] if multi else [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = None
    if complete:
        pick = max if study.direction.name == "MAXIMIZE" else min
        t = pick(complete, key=lambda t: t.value)
        best = TrialView(number=t.number, value=t.value, params=dict(t.params), user_attrs=dict(t.user_attrs))
    running = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        last = t.last_step
        running.append(TrialView(
            number=t.number, system_attrs=dict(t.system_attrs), last_step=last,
            started=t.datetime_start.timestamp() if t.datetime_start else None,
            last_value=t.intermediate_values.get(last) if last is not None else None))
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return Snapshot(counts=counts, best=best, running=running, stopped=attrs.get(STOPPED) or "",
                    warm_started=int(attrs.get(WARM_COUNT) or 0))

