"""Results as pandas DataFrames: one row per trial, and the learning curves in long format.

Values come from the storage (state, objective, parameters, timing, links between trials) and from each trial's
``summary.json`` (metrics, epochs, stop reason, memory, versions), joined on the trial. A study is named by its
study file, its directory (``runs/<name>``) or a storage URL (every study inside)::

    from sweeplight.analysis import trials_frame, curves_frame
    trials = trials_frame("studies/digits.yaml")
    trials.sort_values("objective", ascending=False)[["number", "params.lr", "objective", "stop_reason"]]
    curves = curves_frame("runs/digits")          # study, trial, epoch, metric, value

Summaries are read once per call with orjson (``benchmarks/analysis_load.py``: 10,000 summaries of 20 epochs each;
``pd.read_json`` per file would be 25x slower than a plain ``json`` loop).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__all__ = ["BestTrial", "StudyResults", "best_trial", "curves_frame", "export", "load_best_model", "load_results",
           "trials_frame", "write_html"]

# Summary fields copied as they are, in this order, after the parameters and metrics.
_SUMMARY_COLUMNS = ("epochs", "stop_reason", "wall_time_s", "peak_rss_mb", "peak_gpu_mem_mb", "param_count", "seed",
                    "precision", "devices", "strategy", "restarts", "epochs_lost", "slurm_job_id",
                    "slurm_array_task_id")


# Columns every row has, after the summary's (see _trial_row).
_ROW_COLUMNS = ("lr_find", "swa", "host", "worker", "retry_of", "synced_from", "started", "finished", "duration_s",
                "error", "checkpoint", "summary")


@dataclass
class StudyResults:
    """One study read once: its Optuna trials and the summaries they point to (None where a trial has none)."""

    name: str
    direction: str
    metric: str | None
    directory: Path | None
    trials: list[optuna.trial.FrozenTrial]
    summaries: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    storage: str | None = None  # the storage URL (may hold a password: show it through mask_url)


def load_results(*targets: str | Path) -> list[StudyResults]:
    """Read every study the targets name: study files, study directories, or storage URLs (all their studies)."""
    results: list[StudyResults] = []
    for target in targets:
        results.extend(_load_target(target))
    return results


def trials_frame(*targets: str | Path | StudyResults) -> pd.DataFrame:
    """One row per trial of every named study; see the module docstring."""
    import pandas as pd

    rows = [_trial_row(study, t) for study in _results(targets) for t in study.trials]
    frame = pd.DataFrame.from_records(rows)
    if frame.empty:
        return pd.DataFrame(columns=["study", "number", "state", "objective", *_SUMMARY_COLUMNS, *_ROW_COLUMNS])
    params = sorted(c for c in frame.columns if c.startswith("params."))
    metrics = sorted(c for c in frame.columns if c.split(".", 1)[0] in ("best", "last", "test"))
    first = ["study", "number", "state", "objective", *params, *metrics]
    rest = [c for c in frame.columns if c not in first]
    return frame[first + rest].reset_index(drop=True)


def curves_frame(*targets: str | Path | StudyResults) -> pd.DataFrame:
    """Learning curves in long format: study, trial, epoch, metric, value (every metric logged per epoch)."""
    import pandas as pd

    rows: list[tuple[str, int, int, str, float]] = []
    for study in _results(targets):
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

    @property
    def rerun_command(self) -> str | None:
        return None if self.rerun_file is None else f"sweeplight study launch {self.rerun_file}"


def best_trial(target: str | Path | StudyResults, *, write_rerun: bool = False) -> BestTrial:
    """The best COMPLETE trial. With ``write_rerun`` (``study best`` sets it) a study file fixing its parameters is
    written next to the study (``runs/<name>/best-<number>.yaml``, study name ``<name>-best-<number>``) so one
    command re-runs it; without, nothing is written."""
    from sweeplight._errors import SweeplightError

    studies = _results((target,))
    if len(studies) != 1:
        raise SweeplightError(f"{target} holds {len(studies)} studies; name one: its study file or runs/<name>")
    study = studies[0]
    complete = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        raise SweeplightError(f"study {study.name!r} has no completed trial yet ({len(study.trials)} trials); "
                              "see sweeplight study status")
    pick = max if study.direction == "maximize" else min
    best = pick(complete, key=lambda t: t.value)
    summary = study.summaries.get(best.number) or {}
    checkpoint = (summary.get("checkpoints") or {}).get("best")
    summary_path = best.system_attrs.get("sweeplight:summary")
    rerun = _write_rerun(study, best) if write_rerun and study.directory is not None else None
    return BestTrial(study=study.name, number=best.number, value=float(best.value), metric=study.metric,
                     direction=study.direction, params=dict(summary.get("params") or best.params),
                     checkpoint=Path(checkpoint) if checkpoint else None,
                     summary=Path(summary_path) if summary_path else None, rerun_file=rerun,
                     test_metrics=dict((summary.get("metrics") or {}).get("test") or {}))


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
    studies = _results((target,))
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


def _results(targets: tuple[Any, ...]) -> list[StudyResults]:
    out: list[StudyResults] = []
    for target in targets:
        out.extend([target] if isinstance(target, StudyResults) else _load_target(target))
    return out


def _load_target(target: str | Path) -> list[StudyResults]:
    import optuna

    from sweeplight._status import resolve
    from sweeplight._storage import _URL, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    text = str(target)
    if _URL.match(text) and not Path(text).exists():
        storage = open_storage(text, create=False)
        return [_read(storage, s.study_name, None, None, text) for s in storage.get_all_studies()]
    spec = resolve(target)
    storage = open_storage(spec.storage, create=False)
    return [_read(storage, spec.name, spec.objective.metric, spec.directory, spec.storage)]


def _read(storage: Any, name: str, metric: str | None, directory: Path | None, url: str) -> StudyResults:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    summaries: dict[int, dict[str, Any] | None] = {}
    for t in trials:
        path = t.system_attrs.get("sweeplight:summary")
        if path is None and directory is not None:
            path = directory / "trials" / str(t.number) / "summary.json"
        summary = _read_json(Path(path)) if path else None
        if summary is None and directory is not None:  # still running: the curve so far, rewritten every epoch
            summary = _read_json(directory / "trials" / str(t.number) / "history.json")
        summaries[t.number] = summary
    if metric is None:
        metric = next(((s.get("objective") or {}).get("metric") for s in summaries.values() if s), None)
    return StudyResults(name=name, direction=study.direction.name.lower(), metric=metric, directory=directory,
                        trials=trials, summaries=summaries, storage=url)


def _read_json(path: Path) -> dict[str, Any] | None:
    import orjson  # 3-4x faster than json on summaries: 10,000 of them in well under a second

    try:
        with open(path, "rb") as handle:
            return orjson.loads(handle.read())
    except (OSError, ValueError):
        return None


def _trial_row(study: StudyResults, t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    summary = study.summaries.get(t.number) or {}
    row: dict[str, Any] = {"study": study.name, "number": t.number, "state": t.state.name,
                           "objective": t.value if t.value is not None else math.nan}
    params = dict(t.params)
    for key, value in (summary.get("params") or {}).items():  # fixed lists/mappings are not Optuna params
        params.setdefault(key, value if not isinstance(value, (list, dict)) else json.dumps(value))
    row.update({f"params.{k}": v for k, v in params.items()})
    metrics = summary.get("metrics") or {}
    for kind in ("best", "last"):
        row.update({f"{kind}.{k}": v for k, v in (metrics.get(kind) or {}).items() if k not in ("epoch", "time_s")})
    tests = metrics.get("test") or {k: v for k, v in t.user_attrs.items() if k.startswith("test_")}
    row.update({f"test.{k}": v for k, v in tests.items()})
    for key in _SUMMARY_COLUMNS:
        row[key] = summary.get(key)
    attrs = t.system_attrs
    row["stop_reason"] = row["stop_reason"] or attrs.get("sweeplight:stop_reason")
    row["epochs"] = row["epochs"] if row["epochs"] is not None else attrs.get("sweeplight:epochs")
    lr_find = summary.get("lr_find") or {}
    row["lr_find"] = lr_find.get("suggestion")
    row["swa"] = bool(summary.get("swa")) if summary else None
    row["host"] = summary.get("hostname") or attrs.get("sweeplight:host")
    row["worker"] = attrs.get("sweeplight:worker")
    row["retry_of"] = t.user_attrs.get("sweeplight:retry_of")
    row["synced_from"] = attrs.get("sweeplight:synced_from")
    row["started"] = t.datetime_start
    row["finished"] = t.datetime_complete
    row["duration_s"] = ((t.datetime_complete - t.datetime_start).total_seconds()
                         if t.datetime_start and t.datetime_complete else None)
    error = summary.get("error") or attrs.get("sweeplight:error")
    # The exception line ("ValueError: ..."), which summaries put first; the traceback stays in summary.json.
    row["error"] = error.strip().splitlines()[0][:300] if error and error.strip() else None
    row["checkpoint"] = (summary.get("checkpoints") or {}).get("best")
    row["summary"] = attrs.get("sweeplight:summary")
    return row


def _write_rerun(study: StudyResults, best: optuna.trial.FrozenTrial) -> Path | None:
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
    summary = study.summaries.get(best.number) or {}
    params = dict(summary.get("params") or best.params)
    raw["name"] = f"{study.name}-best-{best.number}"
    raw["root"] = str(study.directory.parent)
    raw["search_space"] = {k: {"type": "fixed", "value": v} for k, v in params.items()}
    raw["sampler"] = {"name": "random", "seed": (raw.get("sampler") or {}).get("seed")
                      if isinstance(raw.get("sampler"), dict) else None}
    raw["pruner"] = "none"
    raw["budget"] = {"n_trials": 1}
    raw["executor"] = {"kind": "local", "workers": 1}
    path = study.directory / f"best-{best.number}.yaml"
    header = (f"# Trial {best.number} of study {study.name!r} ({study.metric} = {best.value:.6g}), every parameter "
              f"fixed.\n# Re-run it: sweeplight study launch {path}\n")
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    return path


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    from sweeplight._errors import SpecError

    try:
        frame.to_parquet(path, index=False)
    except ImportError:
        raise SpecError("--format", "parquet needs pyarrow: pip install pyarrow, or use --format csv") from None
