"""What ``sweeplight.analysis`` reads, fast: a study's trials as columns, each summary's part of a trials-frame row,
and a cache of both.

Storage. Optuna builds a ``FrozenTrial`` per trial (it replays a journal file record by record into them: ~7 s for
100,000 trials), while the trials frame needs a few fields of each. ``read_storage`` reads those directly: an Optuna
journal file by replaying its JSON lines here (the records Optuna 4.x and 5.x write), and SQLite, PostgreSQL or MySQL
databases of Optuna's schema 12 with a handful of SQL queries (``_status_read.query_rdb``). Whatever it does not know
-- another schema, an unknown record, a parameter whose distribution differs between trials, a line Optuna would
reject, a multi-objective study -- makes it answer None, and the caller reads through Optuna as before. Tests compare
the two views field for field.

Summaries. Building the Python objects of a summary's 20-epoch history is most of the cost of reading it, and the
trials frame never shows the history. ``Parts`` keeps what a row shows; ``read_part`` cuts the per-epoch lists out of
a summary written the way sweeplight writes it (``json.dump(indent=2)``: a top-level key is the only thing at two
spaces of indentation) before parsing it, and parses anything else whole.

Cache, in ``<study directory>/.sweeplight-cache/`` (for a study named by a storage URL: next to its SQLite or journal
file; none for a server database named by URL). ``<study>.<hash>.json`` holds each trial's summary part, keyed on
the summary file's inode, ``st_mtime_ns`` and size (and history.json's, where a running trial's curve was read
instead): an entry is used only while its file is exactly the one that was parsed, so new and rewritten summaries
are parsed again. Files changed in the last few seconds are not cached (an in-place rewrite within one timestamp tick
would look unchanged). ``journal.<hash>.json`` holds a journal's replay up to a byte offset: a journal only grows, so
the next read replays the lines after it, if the file still has the same inode and the same bytes at its start and
just before the offset. ``rdb.<hash>.json`` holds a database's finished trials (Optuna lets no one change one): a
later read fetches only the trials that are new, unfinished, or not the one cached (same id, number, state, start
and completion times). Cache files are replaced atomically (processes loading at once each write a complete file;
the last one stays) and rewritten only once ``REWRITE_AT`` of the study is new, so a growing study does not rewrite
100,000 rows for each trial. A directory that cannot be written, ``SWEEPLIGHT_ANALYSIS_CACHE=0`` or ``cache=False``
mean no cache: the same results, more slowly. The history is not cached: ``curves_frame`` reads the summaries.

Index, ``<study directory>/.sweeplight-cache/<study>.<hash>.index.jsonl``: a worker that writes a trial's summary
(``_summary.write_summary``) reads it back with ``read_part`` and appends a line holding the trial's number, the
summary's path, the key of the file it read and the row part ``row_part`` cut from it: what a load would take from
the file, so the first load of a study reads one file instead of every summary. A load takes a trial's row from its
last well-formed line only while that line's key is the summary's current key (a stat, as for a cache entry), and
reads the file otherwise. Lines are appended with O_APPEND, one ``write`` each, so workers writing at once do not mix
their lines; a line that does not parse or has another shape is skipped. The few-seconds rule of the cache does not
apply: it guards against a file rewritten in place within the timestamp tick it was last written in, after its key
was taken, and a line's key is taken just after the write. sweeplight never rewrites a summary in place (each write
is a new file renamed over the old one, with a new inode while the old one still exists, and its own later line),
so a line's key names one content for good; what the stat cannot tell is a summary rewritten in place, keeping its
size, by something else within that tick (a few milliseconds on file systems with nanosecond times). When a load
rewrites the cache it drops the lines of the trials the cache now holds, so the index holds the trials since (at most
about ``REWRITE_AT`` of the study, plus those whose files are too new to cache). ``SWEEPLIGHT_ANALYSIS_CACHE=0``
(where a worker runs: no index written; where a load runs: none read), ``cache=False`` and a directory that cannot
be written mean no index; a line that cannot be written fails nothing: its trial is read from its file.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import math
import operator
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# Summary fields copied as they are, in this order, after the parameters and metrics (the frame's columns).
SUMMARY_COLUMNS = ("epochs", "stop_reason", "wall_time_s", "peak_rss_mb", "peak_gpu_mem_mb", "param_count", "seed",
                   "precision", "devices", "strategy", "restarts", "epochs_lost", "slurm_job_id",
                   "slurm_array_task_id")
# Columns every row has, after the summary's.
ROW_COLUMNS = ("lr_find", "swa", "host", "worker", "retry_of", "synced_from", "started", "finished", "duration_s",
               "error", "checkpoint", "summary")
# The trial attributes the frame shows.
SYSTEM_KEYS = frozenset({"sweeplight:summary", "sweeplight:stop_reason", "sweeplight:epochs", "sweeplight:host",
                         "sweeplight:worker", "sweeplight:synced_from", "sweeplight:error",
                         "sweeplight:feasible"})
RETRY_OF = "sweeplight:retry_of"
FEASIBLE = "sweeplight:feasible"  # the trial met every constraint (studies with constraints)

CACHE_DIR = ".sweeplight-cache"
CACHE_ENV = "SWEEPLIGHT_ANALYSIS_CACHE"
CACHE_FORMAT = 2  # bump when Parts or _Replay change what they keep (2: sweeplight:feasible)
RACY_NS = 3_000_000_000  # files changed this recently are parsed but not cached
REWRITE_AT = 0.02  # rewrite the cache once this share of the trials (at least REWRITE_MIN) was parsed again
REWRITE_MIN = 64
JOURNAL_CHECK = 4096  # bytes compared at the start of the journal and before the cached offset
JOURNAL_REWRITE_MIN = 1 << 20  # rewrite the journal cache after this many new bytes (or REWRITE_AT of the file)

# A column the row does not have: this very NaN object (tested with ``is``; a real NaN value is another object), so
# the frame gets it as the NaN pandas puts where a row lacks a column, with no pass to replace it.
MISSING: Any = float("nan")
# Summary-part columns that are flags, not frame columns.
TESTS = "_tests"  # the summary has test metrics (else the frame shows the test_* user attributes)
ERROR = "_error"  # the summary has an error (else the frame shows the sweeplight:error attribute)
METRIC = "_metric"  # the summary's objective metric (a study read by URL takes its metric from the first summary)
FIXED = (*SUMMARY_COLUMNS, "lr_find", "swa", "hostname", "error", "checkpoint", TESTS, ERROR)
# Per-epoch lists read_part skips: the frame does not show them.
_BULKY = (b"history", b"intermediate_values", b"epoch_times_s")
_STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")  # Optuna's TrialState, by value
_DIRECTIONS = ("not_set", "minimize", "maximize")  # Optuna's StudyDirection, by value
_INT_DISTRIBUTIONS = frozenset({"IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"})
_FLOAT_DISTRIBUTIONS = frozenset({"FloatDistribution", "UniformDistribution", "LogUniformDistribution",
                                  "DiscreteUniformDistribution"})


class Unexpected(Exception):
    """Something the fast readers do not know; the caller reads through Optuna instead."""


@dataclass
class Trials:
    """A study's trials in the order of their numbers: what the trials frame and ``best_trial`` use."""

    name: str
    direction: str  # minimize, maximize (not_set)
    numbers: list[int]
    states: list[str]
    values: list[Any]  # the objective, None where there is none
    params: list[dict[str, Any]]  # in the user's terms (a categorical choice, not its index), in Optuna's order
    user: list[dict[str, Any]]  # test_* and sweeplight:retry_of user attributes
    system: list[dict[str, Any]]  # the SYSTEM_KEYS attributes
    started: Any  # datetime64[us] array of naive local times as Optuna gives them (NaT: unset), or a list
    finished: Any
    frozen: list[Any] | None = None  # Optuna's FrozenTrials, when they were read through Optuna
    # Multi-objective studies only (read through Optuna): every direction, and every trial's values (``values``
    # holds the first objective's).
    directions: list[str] | None = None
    all_values: list[list[float] | None] | None = None

    def __len__(self) -> int:
        return len(self.numbers)


def from_frozen(name: str, direction: str, trials: list[Any], directions: list[str] | None = None) -> Trials:
    """The columns of Optuna's trials (the fallback, and StudyResults built by hand); ``directions`` for a
    multi-objective study."""
    several = directions is not None and len(directions) > 1
    return Trials(
        directions=list(directions) if several else None,
        all_values=[list(t.values) if t.values else None for t in trials] if several else None,
        name=name, direction=direction, numbers=[t.number for t in trials], states=[t.state.name for t in trials],
        values=[(t.values[0] if t.values else None) if several else t.value for t in trials],
        params=[t.params for t in trials],
        user=[{k: v for k, v in t.user_attrs.items() if k == RETRY_OF or k.startswith("test_")} for t in trials],
        system=[{k: v for k, v in t.system_attrs.items() if k in SYSTEM_KEYS} for t in trials],
        started=_naive_datetimes([t.datetime_start for t in trials]),
        finished=_naive_datetimes([t.datetime_complete for t in trials]), frozen=trials)


def read_storage(url: str, name: str | None = None, cache: Path | None = None) -> list[Trials] | None:
    """Every study in the storage (or the one named), without Optuna; None where Optuna has to read it. ``cache``:
    the cache directory (a journal's replay is kept there)."""
    from sweeplight._storage import storage_file

    if url.startswith("journal:///"):
        path = storage_file(url)
        if path is None or not path.is_file():
            return None
        studies = read_journal(path, cache / f"journal.{_digest(str(path).encode())[:10]}.json" if cache else None)
    elif url.startswith(("sqlite:///", "postgresql", "mysql")):
        studies = read_rdb(url, name, cache)
    else:
        return None
    if studies is None or name is None:
        return studies
    named = [s for s in studies if s.name == name]
    return named or None  # a missing study: Optuna's error


# ----------------------------------------------------------------------------------------------------- journal files


def read_journal(path: Path, cache: Path | None = None) -> list[Trials] | None:
    """Replay an Optuna journal file as ``JournalStorageReplayResult`` does, keeping only what the frame shows.

    A journal only grows, so with ``cache`` (a file in the cache directory) the replay as of some byte offset is
    kept, and a later read replays only the lines after it. The cache is used only while the journal is the same
    file (inode) and its first bytes and the bytes just before the offset are unchanged."""
    stored = _load_journal_cache(cache, path) if cache is not None else None
    try:
        if stored is None:
            replay, buffer, base, head = _Replay(), path.read_bytes(), 0, b""
        else:
            replay, buffer, base, head = stored
        end = base + replay.apply(buffer, replay.offset - base)
        studies = replay.studies()
    except OSError:
        return None
    except (Unexpected, LookupError, TypeError, ValueError, AttributeError):
        if stored is not None:  # the new lines, or the cache: from the start, without it
            return read_journal(path, None)
        return None
    if cache is not None and end > 0 and (stored is None or end - replay.offset >= max(
            JOURNAL_REWRITE_MIN, REWRITE_AT * end)):
        head = buffer[:min(JOURNAL_CHECK, end)] if base == 0 else head
        _save_journal_cache(cache, path, replay, end, head, buffer[max(0, end - base - JOURNAL_CHECK):end - base])
    return studies


class _Replay:
    """Optuna's journal replay (optuna/storages/journal/_storage.py) for a reader, a column per trial field: it never
    issued a record, so a record Optuna would reject for another worker (an update of a finished trial, a trial of a
    deleted study) is skipped, as Optuna skips it."""

    FIELDS = ("study", "number", "state", "values", "params", "user", "system", "start", "complete")

    def __init__(self) -> None:
        self.offset = 0  # bytes of the journal replayed when the cache was read (0: none)
        self.studies_by_id: dict[int, list[Any]] = {}  # id -> [name, directions, trial ids]
        self.next_study = 0
        self.study: list[int] = []  # by trial id
        self.number: list[int] = []
        self.state: list[int] = []  # TrialState's value
        self.values: list[list[Any] | None] = []
        self.params: list[dict[str, Any]] = []
        self.user: list[dict[str, Any]] = []
        self.system: list[dict[str, Any]] = []
        self.start: list[str | None] = []  # isoformat, converted for the whole column at the end
        self.complete: list[str | None] = []
        self.distributions: dict[tuple[int, str], str] = {}  # (study id, parameter) -> distribution JSON
        self.kinds: dict[str, tuple[str, Any]] = {}  # distribution JSON -> how to turn a stored value into the user's
        self.exotic: set[int] = set()  # trials holding a value orjson cannot write exactly (NaN, inf, huge integers)

    def apply(self, data: bytes, start: int = 0) -> int:
        """Replay the lines of ``data[start:]``; returns the offset after the last line replayed."""
        chunk = data[start:] if start else data
        lines = chunk.split(b"\n")
        tail = lines.pop()  # b"" after a complete last line; else a line being written, which Optuna skips too
        end = start + len(chunk) - len(tail)
        last = len(lines) - 1
        loads = orjson.loads
        state = self.state
        for index, line in enumerate(lines):
            try:
                log = loads(_without_intermediate_values(line) if line.startswith(b'{"op_code":4,') else line)
            except ValueError:  # NaN, Infinity (Python's json writes them), or a broken line
                try:
                    log = json.loads(line)
                except ValueError:
                    if index == last and not tail:
                        end -= len(line) + 1  # Optuna skips an undecodable last line (it may be being written)
                        break
                    raise Unexpected("undecodable journal line") from None
            op = log["op_code"]
            if op == 9 or op == 8:  # SET_TRIAL_SYSTEM_ATTR, SET_TRIAL_USER_ATTR
                trial = self._updatable(log["trial_id"])
                field = "system_attr" if op == 9 else "user_attr"
                attr = log[field]
                if len(attr) != 1:
                    raise Unexpected("attribute record with several keys")
                if trial >= 0:
                    ((key, value),) = attr.items()
                    if key in SYSTEM_KEYS if op == 9 else (key == RETRY_OF or key.startswith("test_")):
                        if not _plain(value):
                            value = json.loads(line)[field][key]
                            if not _safe(value):
                                self.exotic.add(trial)
                        (self.system if op == 9 else self.user)[trial][key] = value
            elif op == 7:  # SET_TRIAL_INTERMEDIATE_VALUE: not shown
                pass
            elif op == 5:  # SET_TRIAL_PARAM
                trial = self._updatable(log["trial_id"])
                if trial >= 0:
                    name, distribution = log["param_name"], log["distribution"]
                    self._same_distribution(self.study[trial], name, distribution)
                    self.params[trial][name] = self._external(distribution, log["param_value_internal"], trial)
            elif op == 6:  # SET_TRIAL_STATE_VALUES
                trial = self._updatable(log["trial_id"])
                if trial < 0:
                    continue
                new = _state(log["state"])
                if new == 0 and state[trial] == 0:
                    continue  # already running: another process took it
                if new == 0:
                    self.start[trial] = _timestamp(log["datetime_start"])
                elif new in (1, 2, 3):
                    self.complete[trial] = _timestamp(log["datetime_complete"])
                state[trial] = new
                values = log["values"]
                if values is not None:
                    if not all(map(_plain, values)):
                        values = json.loads(line)["values"]
                        if not all(map(_safe, values)):
                            self.exotic.add(trial)
                    self.values[trial] = list(values)
            elif op == 4:  # CREATE_TRIAL
                self._create_trial(log, line)
            elif op == 0:  # CREATE_STUDY
                name, directions = log["study_name"], [_direction(d) for d in log["directions"]]
                if any(study[0] == name for study in self.studies_by_id.values()):
                    continue
                self.studies_by_id[self.next_study] = [name, directions, []]
                self.next_study += 1
            elif op == 1:  # DELETE_STUDY
                self.studies_by_id.pop(log["study_id"], None)
            elif op == 2 or op == 3:  # study attributes: not shown
                if log["study_id"] in self.studies_by_id and len(log["user_attr" if op == 2 else "system_attr"]) != 1:
                    raise Unexpected("attribute record with several keys")
            elif op != 10:  # DISCARD_TRIALS: Optuna ignores it too
                raise Unexpected(f"journal operation {op!r}")
        return end

    def _updatable(self, trial_id: Any) -> int:
        """The trial's id, or -1 for a trial that does not exist or is finished (Optuna skips the record)."""
        if type(trial_id) is not int:
            raise Unexpected(f"trial id {trial_id!r}")
        if not 0 <= trial_id < len(self.state) or self.state[trial_id] in (1, 2, 3):
            return -1
        return trial_id

    def _create_trial(self, log: dict[str, Any], line: bytes) -> None:
        study_id = log["study_id"]
        study = self.studies_by_id.get(study_id)
        if study is None:
            return
        trial = len(self.state)
        params = {}
        distributions = log.get("distributions", {})
        for name, distribution in distributions.items():
            self._same_distribution(study_id, name, distribution)
        for name, value in log.get("params", {}).items():
            params[name] = self._external(distributions[name], value, trial)
        value, values = log.get("value"), log.get("values")
        if value is not None and values is not None:
            raise Unexpected("a trial with value and values")
        values = [value] if value is not None else (list(values) if values is not None else None)
        user = {k: v for k, v in log.get("user_attrs", {}).items() if k == RETRY_OF or k.startswith("test_")}
        system = {k: v for k, v in log.get("system_attrs", {}).items() if k in SYSTEM_KEYS}
        if not (all(map(_plain, user.values())) and all(map(_plain, system.values()))
                and (values is None or all(map(_plain, values)))):
            exact = json.loads(line)
            user = {k: exact["user_attrs"][k] for k in user}
            system = {k: exact["system_attrs"][k] for k in system}
            values = [exact["value"]] if value is not None else values and list(exact["values"])
            if not all(map(_safe, (*user.values(), *system.values(), *(values or ())))):
                self.exotic.add(trial)
        started = log["datetime_start"]
        self.study.append(study_id)
        self.number.append(len(study[2]))
        self.state.append(_state(log.get("state", 0)))
        self.values.append(values)
        self.params.append(params)
        self.user.append(user)
        self.system.append(system)
        self.start.append(_timestamp(started) if started is not None else None)
        self.complete.append(_timestamp(log["datetime_complete"]) if "datetime_complete" in log else None)
        study[2].append(trial)

    def _same_distribution(self, study_id: int, name: str, distribution: str) -> None:
        """Optuna checks a new parameter against the first trial that has it, and drops an incompatible one; here
        every trial must have the very same distribution, else Optuna reads the study."""
        known = self.distributions.setdefault((study_id, name), distribution)
        if known != distribution:
            raise Unexpected(f"parameter {name!r} has several distributions")

    def _external(self, distribution: str, value: Any, trial: int) -> Any:
        kind = self.kinds.get(distribution)
        if kind is None:
            kind = self.kinds[distribution] = _distribution_kind(distribution)
        if kind[0] == "categorical":
            value = kind[1][int(value)]
        elif kind[0] == "int":
            return int(value)
        if not _safe(value):
            self.exotic.add(trial)
        return value

    def studies(self) -> list[Trials]:
        out = []
        for name, directions, trial_ids in self.studies_by_id.values():
            if len(directions) != 1:
                raise Unexpected("a multi-objective study")

            def column(values: list[Any], ids: list[int] = trial_ids) -> list[Any]:
                if len(ids) == len(values) and (not ids or ids[-1] == len(values) - 1):
                    return list(values)  # the only study in the journal
                return [values[i] for i in ids]

            values = []
            for trial_values in column(self.values):
                if trial_values is not None and len(trial_values) != 1:
                    raise Unexpected("a trial with several values")
                values.append(trial_values[0] if trial_values is not None else None)
            out.append(Trials(
                name=name, direction=directions[0], numbers=column(self.number),
                states=[_STATES[s] for s in column(self.state)], values=values, params=column(self.params),
                user=column(self.user), system=column(self.system), started=_local_times(column(self.start)),
                finished=_local_times(column(self.complete))))
        return out


def _load_journal_cache(cache: Path, journal: Path) -> tuple[_Replay, bytes, int, bytes] | None:
    """The cached replay and the journal's bytes from just before its offset, when both are still the same file."""
    try:
        data = orjson.loads(cache.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        if data.get("format") != CACHE_FORMAT or data.get("journal") != str(journal):
            return None
        offset = data["offset"]
        with open(journal, "rb") as handle:
            if os.fstat(handle.fileno()).st_ino != data["inode"]:
                return None
            head = handle.read(JOURNAL_CHECK)
            back = max(0, offset - JOURNAL_CHECK)
            handle.seek(back)
            rest = handle.read()
        if (len(rest) < offset - back or _digest(head[:min(JOURNAL_CHECK, offset)]) != data["head"]
                or _digest(rest[:offset - back]) != data["check"]):
            return None
        replay = _Replay()
        replay.offset = offset  # the replay ends there: read_journal replays the journal's bytes after it
        replay.next_study = data["next_study"]
        replay.studies_by_id = {sid: [name, directions, ids] for sid, name, directions, ids in data["studies"]}
        replay.distributions = {(sid, name): d for sid, name, d in data["distributions"]}
        trials = data["trials"]
        for name in _Replay.FIELDS:
            setattr(replay, name, trials[name])
        if len({len(trials[name]) for name in _Replay.FIELDS}) != 1:
            return None
        for trial_id, exact in data["exotic"].items():  # written by Python's json
            values, params, user, system = json.loads(exact)
            trial = int(trial_id)
            replay.values[trial], replay.params[trial], replay.user[trial], replay.system[trial] = (
                values, params, user, system)
            replay.exotic.add(trial)
        return replay, rest, back, head[:min(JOURNAL_CHECK, offset)]
    except (OSError, LookupError, TypeError, ValueError, AttributeError):
        return None


def _save_journal_cache(cache: Path, journal: Path, replay: _Replay, end: int, head: bytes, check: bytes) -> None:
    try:
        inode = journal.stat().st_ino
    except OSError:
        return
    exotic = {}
    values, params, user, system = replay.values, replay.params, replay.user, replay.system
    if replay.exotic:
        values, params, user, system = list(values), list(params), list(user), list(system)
    for trial in replay.exotic:
        exotic[str(trial)] = json.dumps([values[trial], params[trial], user[trial], system[trial]])
        values[trial], params[trial], user[trial], system[trial] = None, {}, {}, {}
    trials = {name: getattr(replay, name) for name in _Replay.FIELDS}
    trials.update(values=values, params=params, user=user, system=system)
    data = {"format": CACHE_FORMAT, "written_by": "sweeplight.analysis", "journal": str(journal), "inode": inode,
            "offset": end, "head": _digest(head), "check": _digest(check), "next_study": replay.next_study,
            "studies": [[sid, *study] for sid, study in replay.studies_by_id.items()],
            "distributions": [[sid, name, d] for (sid, name), d in replay.distributions.items()],
            "trials": trials, "exotic": exotic}
    try:
        blob = orjson.dumps(data)
    except (TypeError, ValueError):
        return
    _write_atomic(cache, blob)


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _state(value: Any) -> int:
    if value not in (0, 1, 2, 3, 4) or isinstance(value, bool):
        raise Unexpected(f"trial state {value!r}")
    return value


_INTERMEDIATE = b',"intermediate_values":{'


def _without_intermediate_values(line: bytes) -> bytes:
    """A CREATE_TRIAL record without its intermediate values (not shown; a third of what a template trial's record
    costs to parse), when they are the record's last member, a flat mapping: Optuna's layout. ``,"`` cannot occur
    inside a JSON string (its quote would end the string), so the last ``,"intermediate_values":{`` followed by one
    ``{`` and two ``}`` (the mapping's and the record's) is that member; anything else is parsed whole."""
    at = line.rfind(_INTERMEDIATE)
    if at < 0 or not line.endswith(b"}}") or line.count(b"}", at) != 2 or line.count(b"{", at) != 1:
        return line
    return line[:at] + b"}"


def _plain(value: Any) -> bool:
    """Whether orjson read ``value`` as Python's json does (it reads integers beyond 64 bits as floats), and writes
    it back the same (a line json read, for its NaN, may hold an integer orjson cannot write)."""
    kind = type(value)
    return (kind is str or value is None or kind is bool or (kind is int and -2**63 <= value < 2**64)
            or (kind is float and -2**63 < value < 2**63))


def _safe(value: Any) -> bool:
    """Whether orjson writes ``value`` so that it reads back the same (it writes NaN and infinities as null)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -2**63 <= value < 2**64
    if kind is float:
        return math.isfinite(value)
    return False


def _direction(value: Any) -> str:
    if value not in (0, 1, 2) or isinstance(value, bool):
        raise Unexpected(f"study direction {value!r}")
    return _DIRECTIONS[value]


def _distribution_kind(distribution: str) -> tuple[str, Any]:
    data = json.loads(distribution)
    name = data["name"]
    if name == "CategoricalDistribution":
        return "categorical", tuple(data["attributes"]["choices"])
    if name in _INT_DISTRIBUTIONS:
        return "int", None
    if name in _FLOAT_DISTRIBUTIONS:
        return "float", None
    raise Unexpected(f"distribution {name!r}")


def _timestamp(text: Any) -> Any:
    """A journal time as Optuna writes it (``isoformat`` of a UTC time), checked now, converted in bulk later."""
    if type(text) is not str:
        raise Unexpected(f"journal time {text!r}")
    return text


def _local_times(texts: list[str | None]) -> Any:
    """Optuna's ``fromisoformat(text).astimezone().replace(tzinfo=None)`` for a column, as datetime64[us]."""
    if all(t is None or (len(t) == 32 and t.endswith("+00:00")) for t in texts):
        try:  # "YYYY-MM-DDTHH:MM:SS.ffffff+00:00": the first 26 characters are the UTC time
            utc = np.array(["NaT" if t is None else t for t in texts], dtype="U26").astype("datetime64[us]")
        except ValueError:
            pass
        else:
            return _utc_to_local(utc)
    return _naive_datetimes([None if t is None else datetime.datetime.fromisoformat(t).astimezone().replace(
        tzinfo=None) for t in texts])


def _utc_to_local(utc: np.ndarray) -> np.ndarray:
    """Naive local times of UTC times, as ``datetime.astimezone()`` computes them: the UTC offset of the local zone
    at the whole second (``time.localtime``). Offsets are looked up once per hour of the times: a zone's offset does
    not change twice within an hour, and an hour whose two ends differ is looked up second by second."""
    present = ~np.isnat(utc)
    if not present.any():
        return utc
    micros = utc[present].astype(np.int64)
    seconds = micros // 1_000_000
    hours, where = np.unique(seconds // 3600, return_inverse=True)
    first = np.array([time.localtime(int(h) * 3600).tm_gmtoff for h in hours], dtype=np.int64)
    last = np.array([time.localtime(int(h) * 3600 + 3599).tm_gmtoff for h in hours], dtype=np.int64)
    offsets = first[where]
    for index in np.flatnonzero(first != last):  # a change of offset within this hour
        inside = np.flatnonzero(where == index)
        offsets[inside] = [time.localtime(int(s)).tm_gmtoff for s in seconds[inside]]
    local = utc.copy()
    local[present] = (micros + offsets * 1_000_000).astype("datetime64[us]")
    return local


def _naive_datetimes(values: list[Any]) -> Any:
    """datetime64[us] for naive datetimes (None: NaT); any other list stays a list (pandas infers it)."""
    if all(v is None or (type(v) is datetime.datetime and v.tzinfo is None) for v in values):
        return np.array(["NaT" if v is None else v for v in values], dtype="datetime64[us]")
    return list(values)


# -------------------------------------------------------------------------------------------------- RDB (schema 12)


def read_rdb(url: str, name: str | None, cache: Path | None = None) -> list[Trials] | None:
    """The studies of an SQLite, PostgreSQL or MySQL database of Optuna's schema 12. With ``cache`` (the cache
    directory), finished trials are kept there (Optuna lets no one change a finished trial): a later read takes
    from the database only the trials that are new, or were not finished, or are not the trial cached (same id,
    number, state, start and completion times)."""
    from sweeplight._status_read import query_rdb

    def read(query: Any) -> list[Trials] | None:
        try:
            return _rdb_studies(query, name, url, cache)
        except (Unexpected, LookupError, TypeError, ValueError, AttributeError):
            return None

    return query_rdb(url, read)


_RDB_FIELDS = ("value", "params", "user", "system")  # what the cache keeps of a finished trial, besides its row
_IN_CHUNK = 500  # trial ids per "IN (...)" query (SQLite allows 999 parameters in old versions)


def _rdb_studies(query: Any, name: str | None, url: str, cache: Path | None) -> list[Trials]:
    if name is None:
        studies = query("SELECT study_id, study_name FROM studies ORDER BY study_id", {})
    else:
        studies = query("SELECT study_id, study_name FROM studies WHERE study_name = :name", {"name": name})
    out = []
    kinds: dict[str, tuple[str, Any]] = {}
    for study_id, study_name in studies:
        args = {"s": study_id}
        directions = query("SELECT direction FROM study_directions WHERE study_id = :s", args)
        if len(directions) != 1:
            raise Unexpected("a multi-objective study")
        direction = str(directions[0][0]).rsplit(".", 1)[-1].lower()
        if direction not in _DIRECTIONS:
            raise Unexpected(f"study direction {direction!r}")
        rows = query("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                     "WHERE study_id = :s ORDER BY trial_id", args)
        states = [str(row[2]).rsplit(".", 1)[-1] for row in rows]
        if not set(states) <= set(_STATES):
            raise Unexpected("unknown trial state")
        # A trial as the cache knows it: id, number, state and its times as the database gives them.
        idents = [[row[0], row[1], state, _time_text(row[3]), _time_text(row[4])] for row, state in zip(
            rows, states, strict=True)]
        file = cache / f"rdb.{_digest(repr((url, study_name)).encode())[:10]}.json" if cache is not None else None
        stored = _load_rdb_cache(file, study_id) if file is not None else None
        fields: dict[str, list[Any]] = {"value": [None] * len(rows), "params": [{} for _ in rows],
                                        "user": [{} for _ in rows], "system": [{} for _ in rows]}
        fetch = list(range(len(rows)))
        if stored is not None:
            at = {tuple(ident): i for i, ident in enumerate(stored["idents"])}
            fetch = []
            for row, ident in enumerate(idents):
                i = at.get(tuple(ident)) if ident[2] in ("COMPLETE", "PRUNED", "FAIL") else None
                if i is None:
                    fetch.append(row)
                else:
                    for field in _RDB_FIELDS:
                        fields[field][row] = stored[field][i]
        if fetch:
            _fetch_trials(query, study_id, rows, fetch, fields, kinds)
        if file is not None and (stored is None or sum(idents[row][2] in ("COMPLETE", "PRUNED", "FAIL")
                                                       for row in fetch) >= max(REWRITE_MIN, REWRITE_AT * len(rows))):
            _save_rdb_cache(file, study_id, idents, fields)
        out.append(Trials(name=study_name, direction=direction, numbers=[row[1] for row in rows], states=states,
                          values=fields["value"], params=fields["params"], user=fields["user"],
                          system=fields["system"], started=_stored_times([row[3] for row in rows]),
                          finished=_stored_times([row[4] for row in rows])))
    return out


def _fetch_trials(query: Any, study_id: int, rows: list[Any], fetch: list[int], fields: dict[str, list[Any]],
                  kinds: dict[str, tuple[str, Any]]) -> None:
    """Values, parameters and attributes of the ``fetch`` rows: the whole study at once, or by trial id.

    Each query sees the database as it is then (as Optuna's reads do): rows of a trial created since the trials
    were listed are left out."""
    at = {rows[row][0]: row for row in fetch}
    if len(fetch) > len(rows) // 4:
        scopes = [("JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = :s", {"s": study_id})]
    else:
        ids = [rows[row][0] for row in fetch]
        scopes = []
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = {f"i{i}": trial_id for i, trial_id in enumerate(ids[start:start + _IN_CHUNK])}
            scopes.append((f"WHERE x.trial_id IN ({', '.join(':' + k for k in chunk)})", chunk))
    values, params, user, system = fields["value"], fields["params"], fields["user"], fields["system"]
    keys = {f"k{i}": key for i, key in enumerate(sorted(SYSTEM_KEYS))}
    for scope, args in scopes:
        for trial_id, objective, value, kind in query(
                f"SELECT x.trial_id, x.objective, x.value, x.value_type FROM trial_values x {scope}", args):
            row = at.get(trial_id)
            if row is None:
                continue
            kind = str(kind).rsplit(".", 1)[-1]
            if objective != 0 or values[row] is not None:
                raise Unexpected("a trial with several values")
            if kind == "FINITE" and value is not None:
                values[row] = value
            elif kind in ("INF_POS", "INF_NEG") and value is None:
                values[row] = math.inf if kind == "INF_POS" else -math.inf
            else:
                raise Unexpected(f"stored value {value!r} of type {kind!r}")
        for trial_id, param, value, distribution in query(
                "SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x "
                f"{scope} ORDER BY x.param_id", args):
            row = at.get(trial_id)
            if row is None:
                continue
            kind = kinds.get(distribution)
            if kind is None:
                kind = kinds[distribution] = _distribution_kind(distribution)
            params[row][param] = (kind[1][int(value)] if kind[0] == "categorical" else
                                  int(value) if kind[0] == "int" else value)
        for trial_id, key, value in query(
                f"SELECT x.trial_id, x.key, x.value_json FROM trial_user_attributes x {scope} "
                "AND (x.key = :retry OR substr(x.key, 1, 5) = 'test_') "
                "ORDER BY x.trial_user_attribute_id", {**args, "retry": RETRY_OF}):
            row = at.get(trial_id)
            if row is not None:
                user[row][key] = _json_value(value)
        for trial_id, key, value in query(
                f"SELECT x.trial_id, x.key, x.value_json FROM trial_system_attributes x {scope} "
                f"AND x.key IN ({', '.join(':' + k for k in keys)}) ORDER BY x.trial_system_attribute_id",
                {**args, **keys}):
            row = at.get(trial_id)
            if row is not None:
                system[row][key] = _json_value(value)


def _time_text(value: Any) -> str | None:
    """A stored time as text: SQLite's as it is, a server's datetime in ISO format."""
    return value if value is None or isinstance(value, str) else value.isoformat()


def _load_rdb_cache(file: Path, study_id: int) -> dict[str, Any] | None:
    try:
        data = orjson.loads(file.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        if data.get("format") != CACHE_FORMAT or data.get("study_id") != study_id:
            return None
        stored = {name: data[name] for name in ("idents", *_RDB_FIELDS)}
        if len({len(column) for column in stored.values()}) != 1:
            return None
        for index, exact in data["exotic"].items():  # written by Python's json
            for name, value in zip(_RDB_FIELDS, json.loads(exact), strict=True):
                stored[name][int(index)] = value
        return stored
    except (LookupError, TypeError, ValueError, AttributeError):
        return None


def _save_rdb_cache(file: Path, study_id: int, idents: list[list[Any]], fields: dict[str, list[Any]]) -> None:
    """The finished trials (the others change)."""
    rows = [row for row, ident in enumerate(idents) if ident[2] in ("COMPLETE", "PRUNED", "FAIL")]
    data: dict[str, Any] = {"format": CACHE_FORMAT, "written_by": "sweeplight.analysis", "study_id": study_id,
                            "idents": [idents[row] for row in rows], "exotic": {}}
    for name in _RDB_FIELDS:
        data[name] = [fields[name][row] for row in rows]
    for index, row in enumerate(rows):
        value, params, user, system = (fields[name][row] for name in _RDB_FIELDS)
        if not (_safe(value) and all(map(_safe, params.values())) and all(map(_safe, user.values()))
                and all(map(_safe, system.values()))):
            data["exotic"][str(index)] = json.dumps([value, params, user, system])
            for name, empty in zip(_RDB_FIELDS, (None, {}, {}, {}), strict=True):
                data[name][index] = empty
    try:
        blob = orjson.dumps(data)
    except (TypeError, ValueError):
        return
    _write_atomic(file, blob)


def _json_value(text: str) -> Any:
    """``json.loads`` (what Optuna uses), through orjson where the two agree."""
    try:
        value = orjson.loads(text)
    except ValueError:
        return json.loads(text)
    return value if _plain(value) else json.loads(text)


_SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


def _stored_times(values: list[Any]) -> Any:
    """An RDB's naive times: datetimes from a server, text from sqlite3 (SQLAlchemy's format for SQLite)."""
    if all(v is None or (type(v) is str and len(v) == 26 and _SQLITE_TIME.fullmatch(v)) for v in values):
        return np.array(["NaT" if v is None else v for v in values], dtype="datetime64[us]")
    return _naive_datetimes([datetime.datetime.fromisoformat(v) if type(v) is str else v for v in values])


# --------------------------------------------------------------------------------------------------------- summaries


def summary_paths(trials: Trials, directory: Path | None) -> tuple[list[str | None], list[str | None]]:
    """Each trial's summary file (its sweeplight:summary attribute, else where the study directory keeps it) and,
    with a study directory, its history.json (read instead while the trial runs)."""
    base = f"{directory}/trials/" if directory is not None else None
    paths: list[str | None] = []
    for number, system in zip(trials.numbers, trials.system, strict=True):
        path = system.get("sweeplight:summary")
        if path is None and base is not None:
            path = f"{base}{number}/summary.json"
        paths.append(os.fspath(path) if path else None)
    histories = [f"{base}{n}/history.json" for n in trials.numbers] if base else [None] * len(trials)
    return paths, histories


def read_json(path: str | None) -> dict[str, Any] | None:
    """A whole summary (with its history); None for a missing or unreadable file or one that is not an object."""
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_summary(path: str | None, history: str | None) -> dict[str, Any] | None:
    """The trial's summary, or while it runs its curve so far (history.json)."""
    summary = read_json(path)
    return summary if summary is not None or history is None else read_json(history)


class Parts:
    """Summary parts as columns, built a summary at a time: what a trials-frame row takes from its trial's summary
    (``analysis._trial_row`` before the cache, column by column). Columns a summary may lack (parameters, metrics,
    the objective's metric) are kept as (rows, values) until ``columns`` fills the gaps with MISSING."""

    def __init__(self) -> None:
        self.n = 0
        self.fixed: dict[str, list[Any]] = {name: [] for name in FIXED}
        self.sparse: dict[str, tuple[list[int], list[Any]]] = {}
        self._copied = [(name, self.fixed[name]) for name in SUMMARY_COLUMNS]
        self._empty = [(self.fixed[name], value) for name, value in _EMPTY.items()]
        self._fixed_lists = list(self.fixed.values())  # in FIXED's order
        self._unordered: set[str] = set()  # sparse columns whose rows were not added in order (add_rows)

    def add(self, summary: dict[str, Any] | None) -> None:
        row = self.n
        self.n += 1
        if not summary:
            for column, value in self._empty:
                column.append(value)
            return
        fixed, sparse = self.fixed, self.sparse
        get = summary.get
        for key, value in (get("params") or {}).items():  # fixed lists/mappings are not Optuna params
            column = sparse.get(name := "params." + key)
            if column is None:
                column = sparse[name] = ([], [])
            column[0].append(row)
            column[1].append(value if not isinstance(value, (list, dict)) else json.dumps(value))
        metrics = get("metrics") or {}
        for kind in ("best.", "last."):
            for key, value in (metrics.get(kind[:-1]) or {}).items():
                if key != "epoch" and key != "time_s":
                    column = sparse.get(name := kind + key)
                    if column is None:
                        column = sparse[name] = ([], [])
                    column[0].append(row)
                    column[1].append(value)
        tests = metrics.get("test")
        for key, value in (tests or {}).items():
            column = sparse.get(name := "test." + key)
            if column is None:
                column = sparse[name] = ([], [])
            column[0].append(row)
            column[1].append(value)
        for key, column in self._copied:
            column.append(get(key))
        fixed["lr_find"].append((get("lr_find") or {}).get("suggestion"))
        fixed["swa"].append(bool(get("swa")))
        fixed["hostname"].append(get("hostname"))
        error = get("error")
        fixed["error"].append(first_line(error) if error else None)
        fixed["checkpoint"].append((get("checkpoints") or {}).get("best"))
        fixed[TESTS].append(bool(tests))
        fixed[ERROR].append(bool(error))
        column = sparse.get(METRIC)
        if column is None:
            column = sparse[METRIC] = ([], [])
        column[0].append(row)
        column[1].append((get("objective") or {}).get("metric"))

    def add_rows(self, fixed_rows: list[list[Any]], others_rows: list[dict[str, Any]]) -> None:
        """Add rows as ``row_part`` gives them (the FIXED columns' values, and the other columns the summary has), a
        column at a time: the rows with the same other columns (most of them) go in together."""
        if not fixed_rows:
            return
        start = self.n
        self.n += len(fixed_rows)
        for column, values in zip(self._fixed_lists, zip(*fixed_rows, strict=True), strict=True):
            column.extend(values)
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, others in enumerate(others_rows):
            names = tuple(others)
            group = groups.get(names)
            if group is None:
                groups[names] = [row]
            else:
                group.append(row)
        sparse = self.sparse
        for names, rows in groups.items():
            numbers = [start + row for row in rows]
            for name, values in zip(names, zip(*[others_rows[row].values() for row in rows], strict=True), strict=True):
                pair = sparse.get(name)
                if pair is None:
                    pair = sparse[name] = ([], [])
                elif pair[0][-1] > numbers[0]:
                    self._unordered.add(name)  # another group went first: columns() places each value
                pair[0].extend(numbers)
                pair[1].extend(values)

    def columns(self) -> dict[str, list[Any]]:
        n = self.n
        out = dict(self.fixed)
        for name, (rows, values) in self.sparse.items():
            if len(rows) == n and name not in self._unordered:
                out[name] = values
            else:
                dense = [MISSING] * n
                for row, value in zip(rows, values, strict=True):
                    dense[row] = value
                out[name] = dense
        return out


def parts_of(summaries: list[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """The summary parts of whole summaries (a StudyResults built by hand)."""
    parts = Parts()
    for summary in summaries:
        parts.add(summary)
    return parts.columns()


_EMPTY = {**dict.fromkeys(FIXED), TESTS: False, ERROR: False}  # a trial without a summary


def row_part(summary: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any]]:
    """One summary's part of its row, as ``Parts.add`` makes it: the FIXED columns' values in FIXED's order, and the
    other columns the summary has (``Parts.add_rows`` takes both)."""
    one = Parts()
    one.add(summary)
    return [column[0] for column in one._fixed_lists], {name: values[0] for name, (_, values) in one.sparse.items()}


def first_line(error: Any) -> str | None:
    """The exception line ("ValueError: ..."), which summaries put first; the traceback stays in summary.json."""
    return error.strip().splitlines()[0][:300] if error and error.strip() else None


def read_part(path: str) -> tuple[dict[str, Any] | None, list[int] | None]:
    """The summary at ``path`` without its per-epoch lists, and the file's cache key (inode, mtime, size; None for a
    file that could not be read, or that changed while it was read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (OSError, ValueError):
        return None, None
    try:
        stat = os.fstat(fd)
        data = os.read(fd, stat.st_size + 1)
        key: list[int] | None = [stat.st_ino, stat.st_mtime_ns, stat.st_size]
        if len(data) > stat.st_size:  # still being written: read the rest, do not cache it
            key, chunks = None, [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    return _parse_slim(data), key


def _parse_slim(data: bytes) -> dict[str, Any] | None:
    if data.startswith(b'{\n  "') and not data.startswith(b'{\n   '):
        slim = _drop_bulky(data)
        if slim is not None:
            try:
                value = orjson.loads(slim)
            except ValueError:
                pass
            else:
                return value if isinstance(value, dict) else None
    try:
        value = orjson.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _drop_bulky(data: bytes) -> bytes | None:
    """``data`` (``json.dump(indent=2)`` of an object) without the _BULKY keys; None when there is nothing to drop.

    In that layout a raw newline only separates tokens (strings escape theirs), so ``\n  "key": `` is a top-level
    key, and a top-level list or mapping value closes with the first ``]`` / ``}`` that follows ``\n  `` (deeper
    ones follow more spaces), after which comes ``,\n  "`` (the next key) or ``\n}`` (the end). Anything else:
    None, and the summary is parsed whole. The dropped values are not parsed, so a summary broken only inside its
    history still yields its row (read whole, as curves_frame reads it, it is unreadable)."""
    spans = []
    hint = 0
    for key in _BULKY:
        marker = b'\n  "' + key + b'": '
        start = data.find(marker, hint)
        if start < 0:
            start = data.find(marker, 0, hint + len(marker))
            if start < 0:
                continue
        value = start + len(marker)
        opener = data[value:value + 1]
        closer = b"]" if opener == b"[" else b"}" if opener == b"{" else None
        if closer is None:
            return None
        end = data.find(closer, value + 1)
        while end > value + 1 and data[end - 3:end] != b"\n  ":  # a nested list or mapping closes here
            end = data.find(closer, end + 1)
        if end < 0:
            return None
        follows = data[end + 1:end + 6]
        if follows == b',\n  "':
            spans.append((start, end + 2))  # drop '\n  "key": value,'
        elif follows[:2] == b"\n}" and data[start - 1:start] == b",":
            spans.append((start - 1, end + 1))  # the last key: drop ',\n  "key": value'
        else:
            return None
        hint = end
    if not spans:
        return None
    spans.sort()
    pieces, at = [], 0
    for start, end in spans:
        if start < at:
            return None
        pieces.append(data[at:start])
        at = end
    pieces.append(data[at:])
    return b"".join(pieces)


def _stat_key(path: str | None) -> list[int] | None:
    if not path:
        return None
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return [stat.st_ino, stat.st_mtime_ns, stat.st_size]


# ------------------------------------------------------------------------------------------------------------- cache


def cache_enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir(directory: Path | None, storage: str | None) -> Path | None:
    """Where a study's cache lives: its directory's .sweeplight-cache/, else next to its SQLite or journal file
    (a study named by a storage URL); None for a server database named by URL, or with the cache turned off."""
    from sweeplight._storage import storage_file

    if not cache_enabled():
        return None
    if directory is None and storage is not None:
        path = storage_file(storage)
        directory = path.parent if path is not None else None
    return directory / CACHE_DIR if directory is not None else None


def study_cache(directory: Path, study: str) -> Path:
    """The file holding a study's summary parts."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", study)[:60]
    return directory / f"{slug}.{_digest(study.encode())[:10]}.json"


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: reading builds millions of small containers and no cycles, and each
    collection would walk all of them (a third of the time of a 100,000-trial read)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def summary_parts(trials: Trials, directory: Path | None, cache: Path | None) -> dict[str, list[Any]]:
    """The summary part of every trial's row, as columns (MISSING where a row lacks the column), from the cache where
    its files are unchanged, else from the index where its line names the file as it is, else from the file; writes
    the cache back when enough changed (and then drops the index lines the cache now holds)."""
    paths, histories = summary_paths(trials, directory)
    n = len(trials)
    stored = _load_cache(cache, trials.name) if cache is not None else None
    now = time.time_ns()
    reused: list[int] = []  # rows taken from the cache, and their positions in it
    positions: list[int] = []
    fresh: list[int] = []
    if stored is not None:
        at = {number: i for i, number in enumerate(stored["numbers"])}
        c_paths, c_keys, c_history = stored["paths"], stored["keys"], stored["history"]
        for row, number in enumerate(trials.numbers):
            i = at.get(number)
            if i is not None and c_paths[i] == paths[row] and _stat_key(paths[row]) == c_keys[i] and (
                    c_history[i] == 0 or _stat_key(histories[row]) == c_history[i]):
                reused.append(row)
                positions.append(i)
            else:
                fresh.append(row)
    else:
        fresh = list(range(n))
    index = _Index.read(cache, directory, paths, trials.name) if cache is not None and fresh else None
    lines = index.lines if index is not None else {}
    parts = Parts()
    keys: list[Any] = []
    history_keys: list[Any] = []
    numbers = trials.numbers
    indexed: tuple[list[Any], list[Any]] = ([], [])  # rows from the index not yet added: added together
    for row in fresh:
        path = paths[row]
        line = lines.get(numbers[row]) if lines else None
        if line is not None and line[2] == path:
            key = _stat_key(path)
            if key == line[3]:  # the very file the line was made from
                indexed[0].append(line[4])
                indexed[1].append(line[5])
                keys.append(key)
                history_keys.append(0)
                continue
        summary, key, history_key = _read_part_of(path, histories[row])
        parts.add_rows(*indexed)
        indexed = ([], [])
        parts.add(summary)
        keys.append(key)
        history_keys.append(history_key)
    parts.add_rows(*indexed)
    columns = _merge_columns(n, reused, positions, stored["columns"] if stored else {}, fresh, parts.columns())
    if cache is not None and (stored is None or len(fresh) >= max(REWRITE_MIN, REWRITE_AT * n)):
        cached_keys: list[Any] = [None] * n
        cached_history: list[Any] = [0] * n
        for row, i in zip(reused, positions, strict=True):
            cached_keys[row], cached_history[row] = stored["keys"][i], stored["history"][i]
        for row, key, history_key in zip(fresh, keys, history_keys, strict=True):
            cached_keys[row], cached_history[row] = key, history_key
        saved = _save_cache(cache, trials, paths, cached_keys, cached_history, columns, now)
        if saved and index is not None:
            index.compact({numbers[row] for row in saved})
    return columns


def _read_part_of(path: str | None, history: str | None) -> tuple[Any, ...]:
    """(summary without its per-epoch lists, its file's key, history.json's key or 0 where it was not read)."""
    summary, key = read_part(path) if path else (None, None)
    history_key: Any = 0
    if summary is None and history is not None:
        summary, history_key = read_part(history)
    return summary, key, history_key


def _merge_columns(n: int, reused: list[int], positions: list[int], stored: dict[str, list[Any]],
                   fresh: list[int], parts: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The cached columns at the reused rows and the parts just read at the fresh ones."""
    names = list(stored) if reused else []
    names += [name for name in parts if name not in stored or not reused]
    prefix = reused == list(range(len(reused)))  # the usual case: the new trials come after the cached ones
    identity = prefix and len(reused) == n and positions == reused
    take = operator.itemgetter(*positions) if len(positions) > 1 else None

    def gather(column: list[Any]) -> list[Any]:
        return list(take(column)) if take else [column[p] for p in positions]

    columns = {}
    for name in names:
        old = stored.get(name) if reused else None
        new = parts.get(name) if fresh else None
        if not reused:
            out = new if new is not None else [MISSING] * n
        elif identity and old is not None:
            out = old if len(old) == n else old[:n]
        elif prefix:
            out = gather(old) if old is not None else [MISSING] * len(reused)
            out.extend(new if new is not None else [MISSING] * len(fresh))
        else:
            out = [MISSING] * n
            if old is not None:
                for row, value in zip(reused, gather(old), strict=True):
                    out[row] = value
            for row, value in zip(fresh, new or (), strict=False):
                out[row] = value
        if name in _EMPTY or any(v is not MISSING for v in out):
            columns[name] = out
    return columns


def _load_cache(path: Path, study: str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        if data.get("format") != CACHE_FORMAT or data.get("study") != study:
            return None
        n = len(data["numbers"])
        columns = {}
        for name, encoded in data["columns"].items():
            column = [encoded["constant"]] * n if "constant" in encoded else encoded["values"]
            for i in encoded.get("missing", ()):
                column[i] = MISSING
            if len(column) != n:
                return None
            columns[name] = column
        base = data["base"]
        paths = [p if p != 0 else f"{base}{number}/summary.json"
                 for p, number in zip(data["paths"], data["numbers"], strict=True)]
        if not (len(paths) == len(data["keys"]) == len(data["history"]) == n):
            return None
        return {"numbers": data["numbers"], "paths": paths, "keys": data["keys"], "history": data["history"],
                "columns": columns}
    except (LookupError, TypeError, ValueError, AttributeError):
        return None


def _save_cache(path: Path, trials: Trials, paths: list[str | None], keys: list[Any], history: list[Any],
                columns: dict[str, list[Any]], now: int) -> list[int]:
    """Write the cache atomically; rows whose files are new, changed too recently, or unreadable are left out.
    Returns the rows written (none when the cache could not be written)."""
    recent = now - RACY_NS
    rows = [row for row, (key, h) in enumerate(zip(keys, history, strict=True))
            if (not key or key[1] < recent) and (not h or h[1] < recent)]
    if not rows:
        return []
    everything = len(rows) == len(keys)
    pick = (lambda column: column) if everything else (
        (lambda column, getter=operator.itemgetter(*rows): list(getter(column))) if len(rows) > 1 else
        (lambda column: [column[rows[0]]]))
    base = f"{path.parent.parent}/trials/"  # the study directory's (when the cache lives there)
    numbers = pick(trials.numbers)
    encoded = {}
    for name, column in columns.items():
        values = pick(column)
        missing = values.count(MISSING)
        if missing == len(values):
            continue
        entry: dict[str, Any] = {}
        if missing:
            entry["missing"] = [i for i, v in enumerate(values) if v is MISSING]
            values = [None if v is MISSING else v for v in values]
        first = values[0]
        if values.count(first) == len(values) and (first is None or type(first) is str  # 1 == 1.0 == True
                                                   or len(set(map(type, values))) == 1):
            entry["constant"] = first
        else:
            entry["values"] = values
        encoded[name] = entry
    data = {"format": CACHE_FORMAT, "study": trials.name, "written_by": "sweeplight.analysis", "base": base,
            "numbers": numbers,
            "paths": [0 if p == f"{base}{number}/summary.json" else p
                      for p, number in zip(pick(paths), numbers, strict=True)],
            "keys": pick(keys), "history": pick(history), "columns": encoded}
    try:
        blob = orjson.dumps(data)
    except (TypeError, ValueError):  # a value JSON cannot hold exactly: no cache
        return []
    return rows if _write_atomic(path, blob) else []


_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# sweeplight.analysis keeps a cache of the trials' summaries here (CACHEDIR.TAG: backups may skip it).\n"
        "# Safe to delete at any time; SWEEPLIGHT_ANALYSIS_CACHE=0 turns it off.\n")


def _cache_folder(folder: Path) -> bool:
    """Make the cache directory (tagged, so backups may skip it); False where it cannot be made."""
    try:
        folder.mkdir(exist_ok=True)
        tag = folder / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_text(_TAG)
    except OSError:
        return False
    return True


def _write_atomic(path: Path, blob: bytes) -> bool:
    """Replace ``path`` at once (a reader sees the old cache or the new one); no cache where it cannot be written.
    Returns whether it was written."""
    if not _cache_folder(path.parent):
        return False
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as handle:
            # As readable as the study directory's files (mkstemp makes it private to this user).
            os.fchmod(handle.fileno(), path.parent.parent.stat().st_mode & 0o666)
            handle.write(blob)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False
    return True


# ------------------------------------------------------------------------------------------------------------- index


def index_file(folder: Path, study: str) -> Path:
    """The study's index in the cache directory ``folder``: a line per summary written (``index_summary``)."""
    return study_cache(folder, study).with_suffix(".index.jsonl")


def index_summary(study_dir: Path, study: str, number: int, path: Path) -> None:
    """Append the row part of trial ``number``'s summary, just written at ``path``, to the study's index, so that the
    first load of a study reads one file instead of every summary. The part is what a load would take from the file
    (``read_part`` reads it back, ``row_part`` cuts the row), keyed on the file ``read_part`` read. Each line is a
    single ``write`` to a file opened with O_APPEND, so the lines of workers writing at once do not interleave. Raises
    OSError where the index cannot be written; the caller goes on without it."""
    if not cache_enabled():
        return
    name = os.fspath(path)
    summary, key = read_part(name)
    if summary is None or key is None:
        return
    fixed, others = row_part(summary)
    where = 0 if name == f"{study_dir}/trials/{number}/summary.json" else name  # 0: where the worker writes it
    try:
        line = orjson.dumps([CACHE_FORMAT, number, where, key, fixed, others]) + b"\n"
    except (TypeError, ValueError):  # a value JSON cannot hold exactly: the load reads the file
        return
    folder = study_dir / CACHE_DIR
    if not _cache_folder(folder):
        return
    mode = study_dir.stat().st_mode & 0o666  # as readable as the study directory's files, as the cache
    fd = os.open(index_file(folder, study), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class _Index:
    """The index lines a load may use: the last complete, well-formed line of each trial (later lines win). A line is
    ``[CACHE_FORMAT, number, summary path (0: <study directory>/trials/<number>/summary.json), [inode, mtime_ns,
    size], FIXED values, {other column: value}]``; what does not parse or has another shape (a line cut short by a
    full disk, a line being written, another format) is skipped."""

    def __init__(self) -> None:
        self.lines: dict[int, list[Any]] = {}
        self.raw: dict[int, bytes] = {}  # the lines as written, to keep those the cache does not hold
        self.file: Path | None = None  # the index next to the cache, and what of it was read
        self.identity: tuple[int, int] | None = None  # (inode, bytes read)
        self.seen: set[tuple[int, int]] = set()  # (device, inode) of the files read (two names, one file)

    @classmethod
    def read(cls, cache: Path, directory: Path | None, paths: list[str | None], study: str) -> _Index | None:
        """The index in the study directory, where workers write it: ``directory``, or for a study named by URL the
        directory its summaries are in (``<directory>/trials/<n>/summary.json``). Only an index in the cache's own
        directory is compacted (``compact``)."""
        index = cls()
        if directory is not None:
            folders = [str(directory)]
        else:
            folders = []
            for path in (next((p for p in paths if p), None), next((p for p in reversed(paths) if p), None)):
                trial = os.path.dirname(path) if path else ""
                if path and os.path.basename(path) == "summary.json" and os.path.basename(
                        os.path.dirname(trial)) == "trials":
                    folders.append(os.path.dirname(os.path.dirname(trial)))
        try:
            own = os.stat(index_file(cache.parent, study))
        except OSError:
            own = None
        for folder in folders:  # spelled as the summaries' paths are, which the lines' 0 stands for
            index._add(index_file(Path(folder) / CACHE_DIR, study), f"{folder}/trials/",
                       (own.st_dev, own.st_ino) if own is not None else None)
        return index if index.lines else None

    def _add(self, file: Path, base: str, own: tuple[int, int] | None) -> None:
        try:
            with open(file, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if (stat.st_dev, stat.st_ino) in self.seen:
                    return
                self.seen.add((stat.st_dev, stat.st_ino))
                data = handle.read()
        except OSError:
            return
        mine = (stat.st_dev, stat.st_ino) == own
        if mine:
            self.file, self.identity = file, (stat.st_ino, len(data))
        loads, lines, raw, width = orjson.loads, self.lines, self.raw, len(FIXED)
        for text in data.split(b"\n"):
            try:
                line = loads(text)
            except ValueError:
                continue
            if not (type(line) is list and len(line) == 6 and line[0] == CACHE_FORMAT and type(number := line[1])
                    is int and type(line[4]) is list and len(line[4]) == width and type(line[5]) is dict):
                continue
            if line[2] == 0:
                line[2] = f"{base}{number}/summary.json"
            lines[number] = line
            if mine:
                raw[number] = text

    def compact(self, cached: set[int]) -> None:
        """Drop the lines of the trials the cache just written holds: keep the others (a file changed too recently
        to be cached, a trial the storage did not show yet) and whatever was appended since the index was read. Lines
        appended between that last read and the replacement are lost: their trials are read from their files."""
        if self.file is None or self.identity is None:
            return
        kept = [text + b"\n" for number, text in self.raw.items() if number not in cached]
        try:
            with open(self.file, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != self.identity[0] or stat.st_size < self.identity[1]:
                    return  # compacted by another load meanwhile
                handle.seek(self.identity[1])
                kept.append(handle.read())
        except OSError:
            return
        _write_atomic(self.file, b"".join(kept))
