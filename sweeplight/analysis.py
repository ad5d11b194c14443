"""Results as pandas DataFrames: one row per trial, and the learning curves in long format.

Values come from the storage (state, objective, parameters, timing, links between trials) and from each trial's
``summary.json`` (metrics, epochs, stop reason, memory, versions), joined on the trial. A study is named by its
study file, its directory (``runs/<name>``) or a storage URL (every study inside)::

    from sweeplight.analysis import trials_frame, curves_frame
    trials = trials_frame("studies/digits.yaml")
    trials.sort_values("objective", ascending=False)[["number", "params.lr", "objective", "stop_reason"]]
    curves = curves_frame("runs/digits")          # study, trial, epoch, metric, value

Reading is fast and does not go through Optuna's ``FrozenTrial``s: the storage's tables or journal lines are read
directly (``sweeplight/_rows.py``; anything unusual is read through Optuna as before), and each summary's part of its
row is cached per study in ``<study directory>/.sweeplight-cache/`` (next to the SQLite or journal file for a study
named by URL), keyed on each summary file's inode, modification time and size, so new and rewritten summaries are
read again and everything else is not. Workers append each finished trial's row to an index there as they write its
summary, so even the first load reads one file rather than one per trial (a line counts only while its summary's
key still matches). The cache holds no history: ``curves_frame`` reads the summaries.
``SWEEPLIGHT_ANALYSIS_CACHE=0`` or ``cache=False`` reads everything every time; a directory that cannot be written
is simply not cached. ``benchmarks/analysis_load.py`` measures it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplight import _rows
from sweeplight._rows import MISSING, ROW_COLUMNS, SUMMARY_COLUMNS

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__all__ = ["BestTrial", "StudyResults", "best_trial", "best_trials", "curves_frame", "export", "load_best_model",
           "load_results", "trials_frame", "write_html"]

class StudyResults:
    """One study read once: its trials and the summaries they point to (None where a trial has none).

    ``trials`` (Optuna's FrozenTrials) and ``summaries`` (whole summaries, with their history) are read on first use:
    ``trials_frame`` and ``best_trial`` need neither, which is what makes them fast on large studies.
    """

    def __init__(self, name: str, direction: str, metric: str | None, directory: Path | None,
                 trials: list[optuna.trial.FrozenTrial] | None = None,
                 summaries: dict[int, dict[str, Any] | None] | None = None, storage: str | None = None) -> None:
        self.name = name
        self.direction = direction
        self.metric = metric
        self.directory = directory
        self.storage = storage  # the storage URL (may hold a password: show it through mask_url)
        self._trials = trials
        self._summaries = summaries
        self._stored: _rows.Trials | None = None  # what load_results read, as columns
        self._parts: dict[str, list[Any]] | None = None  # each trial's summary part (cached per study)
        self._metrics: list[str] | None = None  # every objective's metric, from the study file

    @property
    def directions(self) -> list[str]:
        """Every objective's direction: one for a single-objective study."""
        return list(self._columns().directions or [self.direction])

    @property
    def metrics(self) -> list[str]:
        """Every objective's metric, in order (``objective_<i>`` where no study file names them)."""
        count = len(self.directions)
        if self._metrics is not None and len(self._metrics) == count:
            return list(self._metrics)
        return [self.metric or "objective", *(f"objective_{i}" for i in range(1, count))]

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    def __repr__(self) -> str:
        return (f"StudyResults(name={self.name!r}, direction={self.direction!r}, metric={self.metric!r}, "
                f"directory={self.directory!r}, trials={len(self._columns())})")

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """Optuna's trials of the study (read through Optuna on first use)."""
        if self._trials is None:
            if self._stored is not None and self._stored.frozen is not None:
                self._trials = self._stored.frozen
            elif self.storage is not None:
                self._trials = _optuna_trials(self.storage, self.name)
            else:
                self._trials = []
        return self._trials

    @trials.setter
    def trials(self, value: list[optuna.trial.FrozenTrial]) -> None:
        self.summaries  # noqa: B018 - read them for the trials read so far, before those are replaced
        self._trials, self._stored, self._parts = value, None, None

    @property
    def summaries(self) -> dict[int, dict[str, Any] | None]:
        """Every trial's summary (history.json for a running trial), by number (read on first use)."""
        if self._summaries is None:
            if self._stored is None:
                self._summaries = {}
            else:
                paths, histories = _rows.summary_paths(self._stored, self.directory)
                self._summaries = {number: _rows.read_summary(path, history) for number, path, history in
                                   zip(self._stored.numbers, paths, histories, strict=True)}
        return self._summaries

    @summaries.setter
    def summaries(self, value: dict[int, dict[str, Any] | None]) -> None:
        self._summaries, self._parts = value, None  # the frame takes them from now on

    def _columns(self) -> _rows.Trials:
        if self._stored is None:
            self._stored = _rows.from_frozen(self.name, self.direction, self.trials)
        return self._stored

    def _summary(self, number: int) -> dict[str, Any] | None:
        """One trial's whole summary, without reading the others."""
        if self._summaries is not None or self._stored is None:
            return self.summaries.get(number)
        stored = self._stored
        row = stored.numbers.index(number)
        paths, histories = _rows.summary_paths(stored, self.directory)
        return _rows.read_summary(paths[row], histories[row])

    def _summary_parts(self) -> dict[str, list[Any]]:
        if self._parts is None:
            self._parts = _rows.parts_of([self.summaries.get(n) for n in self._columns().numbers])
        return self._parts


def load_results(*targets: str | Path, cache: bool = True) -> list[StudyResults]:
    """Read every study the targets name: study files, study directories, or storage URLs (all their studies).
    ``cache=False`` neither reads nor writes the summary cache (nor does ``SWEEPLIGHT_ANALYSIS_CACHE=0``)."""
    results: list[StudyResults] = []
    for target in targets:
        results.extend(_load_target(target, cache))
    return results


def trials_frame(*targets: str | Path | StudyResults, cache: bool = True) -> pd.DataFrame:
    """One row per trial of every named study; see the module docstring."""
    import pandas as pd

    studies = _results(targets, cache)
    if not sum(len(study._columns()) for study in studies):
        return pd.DataFrame(columns=["study", "number", "state", "objective", "pareto", "feasible", *SUMMARY_COLUMNS,
                                     *ROW_COLUMNS])
    with _rows.no_gc():
        return pd.DataFrame(_frame_columns(studies))


def curves_frame(*targets: str | Path | StudyResults, cache: bool = True) -> pd.DataFrame:
    """Learning curves in long format: study, trial, epoch, metric, value (every metric logged per epoch)."""
    import pandas as pd

    rows: list[tuple[str, int, int, str, float]] = []
    for study in _results(targets, cache):
        for number, summary in study.summaries.items():
            for entry in (summary or {}).get("history") or []:
                epoch = entry.get("epoch")
                if not isinstance(epoch, int):
                    continue
                for key, value in entry.items():
                    if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append((study.name, number, epoch, key, float(value)))
    frame = pd.DataFrame.from_records(rows, columns=["study", "trial", "epoch", "metric", "value"])
    return frame.astype({"trial": "int64", "epoch": "int64"}) if not frame.empty else frame


@dataclass(frozen=True)
class BestTrial:
    """The best finished trial of a study, and how to run exactly that configuration again."""

    study: str
    number: int
    value: float
    metric: str | None
    direction: str
    params: dict[str, Any]
    checkpoint: Path | None
    summary: Path | None
    rerun_file: Path | None  # a study file with every parameter fixed to the best trial's value
    test_metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)  # every objective's value, by metric
    constraints: list[dict[str, Any]] = field(default_factory=list)  # {constraint, metric, value, violation}

    @property
    def rerun_command(self) -> str | None:
        return None if self.rerun_file is None else f"sweeplight study launch {self.rerun_file}"


def best_trial(target: str | Path | StudyResults, *, write_rerun: bool = False) -> BestTrial:
    """The best COMPLETE trial (a feasible one, when the study has constraints). With ``write_rerun`` (``study best``
    sets it) a study file fixing its parameters is written next to the study (``runs/<name>/best-<number>.yaml``,
    study name ``<name>-best-<number>``) so one command re-runs it; without, nothing is written.

    In a multi-objective study: the trial of the Pareto front that is best in the first objective (see
    ``best_trials`` for the whole front)."""
    study = _one_study(target)
    rows = _best_rows(study)
    if study.multi_objective:
        pick = max if study.direction == "maximize" else min
        rows = [pick(rows, key=lambda row: study._columns().values[row])]
    return _best_of(study, rows[0], write_rerun)


def best_trials(target: str | Path | StudyResults, *, write_rerun: bool = False) -> list[BestTrial]:
    """Every trial of the Pareto front (feasible COMPLETE trials no other trial beats in every objective), best in
    the first objective first; ``[best_trial(...)]`` for a single-objective study. ``write_rerun`` as in
    ``best_trial``, one study file per trial."""
    study = _one_study(target)
    if not study.multi_objective:
        return [best_trial(study, write_rerun=write_rerun)]
    stored = study._columns()
    rows = sorted(_best_rows(study), key=lambda row: stored.values[row], reverse=study.direction == "maximize")
    return [_best_of(study, row, write_rerun) for row in rows]


def _one_study(target: str | Path | StudyResults) -> StudyResults:
    from sweeplight._errors import SweeplightError

    studies = _results((target,))
    if len(studies) != 1:
        raise SweeplightError(f"{target} holds {len(studies)} studies; name one: its study file or runs/<name>")
    return studies[0]


def _best_rows(study: StudyResults) -> list[int]:
    """The rows of the feasible complete trials on the front (single objective: the best one, first of equals)."""
    from sweeplight._errors import SweeplightError

    stored = study._columns()
    columns = _front_columns(study)
    complete = [row for row, (state, value) in enumerate(zip(stored.states, stored.values, strict=True))
                if state == "COMPLETE" and value is not None]
    if not complete:
        raise SweeplightError(f"study {study.name!r} has no completed trial yet ({len(stored)} trials); "
                              "see sweeplight study status")
    feasible = [row for row in complete if columns["feasible"][row] is not False]
    if not feasible:
        raise SweeplightError(f"study {study.name!r} has no feasible completed trial: all {len(complete)} break a "
                              "constraint; see the feasible column of sweeplight study export")
    if study.multi_objective:
        return [row for row in feasible if columns["pareto"][row]]
    pick = max if study.direction == "maximize" else min
    return [pick(feasible, key=lambda row: stored.values[row])]  # the first of equals, as over Optuna's trials


def _best_of(study: StudyResults, row: int, write_rerun: bool) -> BestTrial:
    stored = study._columns()
    number, value = stored.numbers[row], stored.values[row]
    summary = study._summary(number) or {}
    params = dict(summary.get("params") or stored.params[row])
    checkpoint = (summary.get("checkpoints") or {}).get("best")
    summary_path = stored.system[row].get("sweeplight:summary")
    rerun = (_write_rerun(study, number, value, params) if write_rerun and study.directory is not None else None)
    every = stored.all_values[row] if stored.all_values is not None else [value]
    return BestTrial(study=study.name, number=number, value=float(value), metric=study.metric,
                     direction=study.direction, params=params, checkpoint=Path(checkpoint) if checkpoint else None,
                     summary=Path(summary_path) if summary_path else None, rerun_file=rerun,
                     test_metrics=dict((summary.get("metrics") or {}).get("test") or {}),
                     values=dict(zip(study.metrics, (float(v) for v in every), strict=True)),
                     constraints=list(summary.get("constraints") or []))


def load_best_model(target: str | Path | StudyResults) -> Any:
    """The best trial's model, loaded from its best checkpoint with the study's model class (in eval mode)."""
    from sweeplight._check import resolve_components
    from sweeplight._errors import SweeplightError
    from sweeplight._status import resolve
    from sweeplight._trial_resume import weights_only

    best = best_trial(target, write_rerun=False)
    if best.checkpoint is None or not best.checkpoint.is_file():
        raise SweeplightError(f"trial {best.number} of study {best.study!r} has no checkpoint on disk "
                              f"({best.checkpoint}); re-run it: sweeplight study best {target}")
    components = resolve_components(resolve(target.directory if isinstance(target, StudyResults) else target))
    model = components.model_cls.load_from_checkpoint(str(best.checkpoint), map_location="cpu",
                                                      weights_only=weights_only(best.checkpoint))
    return model.eval()


def export(target: str | Path, out_dir: str | Path, *, fmt: str = "parquet") -> list[Path]:
    """Write ``trials.<fmt>`` and ``curves.<fmt>`` (parquet or csv) into ``out_dir``; returns their paths."""
    from sweeplight._errors import SpecError

    if fmt not in ("parquet", "csv"):
        raise SpecError("--format", f"got {fmt!r}; use parquet or csv")
    studies = _results((target,), True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("trials", trials_frame(*studies)), ("curves", curves_frame(*studies))):
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            _to_parquet(frame, path)
        paths.append(path)
    return paths


def write_html(figures: list[Any], path: str | Path, title: str) -> Path:
    """One page holding Plotly figures, plotly.js inlined once: it opens offline, unlike include_plotlyjs="cdn"."""
    import html

    parts = [figure.to_html(full_html=False, include_plotlyjs=index == 0) for index, figure in enumerate(figures)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
    path.write_text(head + "<body>\n" + "\n".join(parts) + "\n</body></html>\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------- loading


def _results(targets: tuple[Any, ...], cache: bool = True) -> list[StudyResults]:
    out: list[StudyResults] = []
    for target in targets:
        out.extend([target] if isinstance(target, StudyResults) else _load_target(target, cache))
    return out


def _load_target(target: str | Path, cache: bool) -> list[StudyResults]:
    from sweeplight._status import resolve
    from sweeplight._storage import _URL

    text = str(target)
    metrics = None
    if _URL.match(text) and not Path(text).exists():
        directory, metric, url, name = None, None, text, None
    else:
        spec = resolve(target)
        directory, metric, url, name = spec.directory, spec.objective.metric, spec.storage, spec.name
        metrics = [objective.metric for objective in spec.all_objectives]
    cache_dir = _rows.cache_dir(directory, url) if cache else None
    with _rows.no_gc():
        stored = _rows.read_storage(url, name, cache_dir) or _optuna_studies(url, name)
        studies = [_study(s, metric, directory, url, cache_dir) for s in stored]
    for study in studies:
        study._metrics = metrics
    return studies


def _optuna_studies(url: str, name: str | None = None) -> list[_rows.Trials]:
    """The studies through Optuna: what the fast readers do not know, and the errors (a missing file or study)."""
    import optuna

    from sweeplight._storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, create=False)
    names = [name] if name is not None else [s.study_name for s in storage.get_all_studies()]
    out = []
    for study_name in names:
        study = optuna.load_study(study_name=study_name, storage=storage)
        directions = [d.name.lower() for d in study.directions]  # one per objective
        out.append(_rows.from_frozen(study_name, directions[0], study.get_trials(deepcopy=False), directions))
    return out


def _optuna_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return _optuna_studies(url, name)[0].frozen or []


def _study(stored: _rows.Trials, metric: str | None, directory: Path | None, url: str,
           cache_dir: Path | None) -> StudyResults:
    results = StudyResults(stored.name, stored.direction, metric, directory, storage=url)
    results._stored = stored
    file = _rows.study_cache(cache_dir, stored.name) if cache_dir is not None else None
    results._parts = _rows.summary_parts(stored, directory, file)
    if metric is None:  # the first summary's objective (a storage URL names no study file)
        results.metric = next((m for m in results._parts.get(_rows.METRIC, ()) if m is not MISSING), None)
    return results


# ----------------------------------------------------------------------------------------------------- trials frame


def _frame_columns(studies: list[StudyResults]) -> dict[str, Any]:
    """The trials frame as columns: what one row per trial (``_trial_row`` before the cache) gave, column by
    column, so pandas infers the same types."""
    blocks = [{**_block(study.name, study._columns(), study._summary_parts()), **_front_columns(study)}
              for study in studies]
    sizes = [len(study._columns()) for study in studies]
    names: list[str] = []
    seen: set[str] = set()
    for block in blocks:
        for name in block:
            if name not in seen:
                seen.add(name)
                names.append(name)
    params = sorted(name for name in names if name.startswith("params."))
    metrics = sorted(name for name in names if name.split(".", 1)[0] in ("best", "last", "test"))
    # objective.<metric> per objective (multi-objective studies, in the study's order), pareto, feasible
    front = [name for name in names if name.startswith("objective.")] + ["pareto", "feasible"]
    columns: dict[str, Any] = {}
    for name in ["study", "number", "state", "objective", *front, *params, *metrics, *SUMMARY_COLUMNS,
                 *ROW_COLUMNS]:
        chunks = [block.get(name) for block in blocks]
        if name in ("started", "finished", "duration_s"):
            continue
        if len(chunks) == 1:
            column = chunks[0]
        else:
            column = []
            for chunk, size in zip(chunks, sizes, strict=True):
                column.extend(chunk if chunk is not None else [MISSING] * size)
        columns[name] = column  # MISSING is a NaN: what pandas puts where a row lacks a column
    started, finished = (_times([block[name] for block in blocks]) for name in ("started", "finished"))
    columns["started"], columns["finished"] = started.column, finished.column
    columns["duration_s"] = _durations(started, finished)
    return {name: columns[name] for name in
            ["study", "number", "state", "objective", *front, *params, *metrics, *SUMMARY_COLUMNS, *ROW_COLUMNS]}


def _front_columns(study: StudyResults) -> dict[str, list[Any]]:
    """``objective.<metric>`` for each objective of a multi-objective study; ``pareto``: on the front of the
    feasible complete trials (with one objective: the best trial, and its equals); ``feasible``: the trial met every
    constraint (True in a study without constraints; None where a constrained study's trial has no verdict)."""
    from sweeplight._pareto import front

    trials = study._columns()
    marks = [s.get(_rows.FEASIBLE) for s in trials.system]
    constrained = any(mark is not None for mark in marks)
    feasible = [mark if constrained else True for mark in marks]
    values = trials.all_values if trials.all_values is not None else [
        [v] if v is not None else None for v in trials.values]
    columns: dict[str, list[Any]] = {}
    if study.multi_objective:
        for index, metric in enumerate(study.metrics):
            columns[f"objective.{metric}"] = [v[index] if v is not None else math.nan for v in values]
    columns["pareto"] = front(trials.states, values, study.directions, feasible)
    columns["feasible"] = feasible
    return columns


def _block(name: str, trials: _rows.Trials, parts: dict[str, list[Any]]) -> dict[str, Any]:
    """One study's columns, MISSING where a row lacks the column."""
    n = len(trials)
    block: dict[str, Any] = {"study": [name] * n, "number": list(trials.numbers), "state": list(trials.states),
                             "objective": [v if v is not None else math.nan for v in trials.values]}
    stored: dict[str, list[Any]] = {}  # Optuna's parameters first, then the summary's fixed lists and mappings
    for row, params in enumerate(trials.params):
        for key, value in params.items():
            column = stored.get(key)
            if column is None:
                column = stored[key] = [MISSING] * n
            column[row] = value
    for key, column in stored.items():
        block[f"params.{key}"] = column
    for key, column in parts.items():
        if key.startswith("params."):
            mine = block.get(key)
            block[key] = column if mine is None else [
                a if a is not MISSING else b for a, b in zip(mine, column, strict=True)]
    for key, column in parts.items():
        if key.startswith(("best.", "last.", "test.")):
            block[key] = column
    for row, (has_tests, user) in enumerate(zip(parts[_rows.TESTS], trials.user, strict=True)):
        if not has_tests:  # the summary has no test metrics: the test_* user attributes
            for key, value in user.items():
                if key.startswith("test_"):
                    column = block.get(f"test.{key}")
                    if column is None:
                        column = block[f"test.{key}"] = [MISSING] * n
                    elif column is parts.get(f"test.{key}"):
                        column = block[f"test.{key}"] = list(column)  # parts stay as read (and cached)
                    column[row] = value
    system, user = trials.system, trials.user
    for key in SUMMARY_COLUMNS:
        block[key] = parts[key]
    block["stop_reason"] = [r or s.get("sweeplight:stop_reason") for r, s in
                            zip(parts["stop_reason"], system, strict=True)]
    block["epochs"] = [e if e is not None else s.get("sweeplight:epochs") for e, s in
                       zip(parts["epochs"], system, strict=True)]
    block["lr_find"] = parts["lr_find"]
    block["swa"] = parts["swa"]
    block["host"] = [h or s.get("sweeplight:host") for h, s in zip(parts["hostname"], system, strict=True)]
    block["worker"] = [s.get("sweeplight:worker") for s in system]
    block["retry_of"] = [u.get(_rows.RETRY_OF) for u in user]
    block["synced_from"] = [s.get("sweeplight:synced_from") for s in system]
    block["started"], block["finished"] = trials.started, trials.finished
    block["error"] = [e if has else _rows.first_line(s.get("sweeplight:error")) for e, has, s in
                      zip(parts["error"], parts[_rows.ERROR], system, strict=True)]
    block["checkpoint"] = parts["checkpoint"]
    block["summary"] = [s.get("sweeplight:summary") for s in system]
    return block


@dataclass
class _Times:
    column: Any  # what the frame gets: datetime64 values, or a list (None everywhere: a column of None)
    array: Any = None  # datetime64[us], NaT where unset; None when the times came as a list


def _times(chunks: list[Any]) -> _Times:
    """Optuna's datetimes as one column: a row per trial gave pandas datetimes (None: NaT), or None everywhere."""
    import numpy as np

    if all(isinstance(chunk, np.ndarray) for chunk in chunks):
        array = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        if np.isnat(array).all():
            return _Times([None] * len(array))
        return _Times(array.astype(_datetime_dtype()), array)
    values: list[Any] = []
    for chunk in chunks:
        values.extend(chunk.tolist() if isinstance(chunk, np.ndarray) else chunk)
    return _Times(values)


def _durations(started: _Times, finished: _Times) -> Any:
    import numpy as np

    if started.array is None or finished.array is None:
        begin = started.array.tolist() if started.array is not None else started.column
        end = finished.array.tolist() if finished.array is not None else finished.column
        return [(c - s).total_seconds() if s and c else None for s, c in zip(begin, end, strict=True)]
    took = finished.array - started.array
    present = ~np.isnat(took)
    if not present.any():
        return [None] * len(took)
    seconds = took.astype(np.int64) / 1e6  # exactly timedelta.total_seconds(): microseconds / 10**6
    seconds[~present] = np.nan
    return seconds


_DATETIME_DTYPE: list[Any] = []


def _datetime_dtype() -> Any:
    """The type pandas gives a column of datetimes (datetime64[us] in pandas 3, [ns] in pandas 2)."""
    if not _DATETIME_DTYPE:
        import datetime

        import pandas as pd

        _DATETIME_DTYPE.append(pd.DataFrame.from_records([{"t": datetime.datetime(2000, 1, 1)}])["t"].dtype)
    return _DATETIME_DTYPE[0]


def _write_rerun(study: StudyResults, number: int, value: float, params: dict[str, Any]) -> Path | None:
    """A copy of the study's resolved file with the search space fixed to the best parameters."""
    import yaml

    spec_file = study.directory / "spec.json"
    if not spec_file.is_file():
        return None
    data = json.loads(spec_file.read_text())
    raw = dict(data.get("raw") or {})
    if not raw:
        return None
    for part in ("model", "data"):  # class paths relative to the study file become absolute
        component = dict(raw.get(part) or {})
        module, _, name = str(component.get("class", "")).rpartition(":")
        if module.endswith(".py") and not Path(module).is_absolute():
            component["class"] = f"{(Path(data['base_dir']) / module).resolve()}:{name}"
        raw[part] = component
    raw.pop("storage", None)  # its own default SQLite file next to the original study
    raw["name"] = f"{study.name}-best-{number}"
    raw["root"] = str(study.directory.parent)
    raw["search_space"] = {k: {"type": "fixed", "value": v} for k, v in params.items()}
    raw["sampler"] = {"name": "random", "seed": (raw.get("sampler") or {}).get("seed")
                      if isinstance(raw.get("sampler"), dict) else None}
    raw["pruner"] = "none"
    raw["budget"] = {"n_trials": 1}
    raw["executor"] = {"kind": "local", "workers": 1}
    path = study.directory / f"best-{number}.yaml"
    header = (f"# Trial {number} of study {study.name!r} ({study.metric} = {value:.6g}), every parameter "
              f"fixed.\n# Re-run it: sweeplight study launch {path}\n")
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    return path


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    from sweeplight._errors import SpecError

    try:
        frame.to_parquet(path, index=False)
    except ImportError:
        raise SpecError("--format", "parquet needs pyarrow: pip install pyarrow, or use --format csv") from None
