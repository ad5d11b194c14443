"""The fast reads behind ``sweeplight.analysis`` equal Optuna's view, and the summary cache never changes a result.

The studies here are written with Optuna directly (no training) and hold what makes readers disagree: every trial
state, infinite values, categorical choices of mixed types, conditional parameters, test metrics from the summary or
from user attributes, running trials read from history.json, summaries missing, broken or written by hand, journal
records Optuna skips. Each frame is compared, exactly, with ``_reference_frame``: the trials frame as sweeplight built
it before these readers (Optuna's FrozenTrials and whole summaries, one row dict per trial).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import multiprocessing
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import orjson
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeplight import _rows
from sweeplight._spec import load_spec
from sweeplight._storage import open_storage, storage_file
from sweeplight._summary import write_json_atomic
from sweeplight.analysis import StudyResults, best_trial, curves_frame, load_results, trials_frame

from .conftest import BASE, _merge

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": IntDistribution(32, 256, step=32),
                 "optimizer": CategoricalDistribution(["adam", "sgd", None]),
                 "bias": CategoricalDistribution([True, 2.5, "x"]), "momentum": FloatDistribution(0.5, 0.9)}
START = datetime.datetime(2026, 3, 8, 4, 0, tzinfo=datetime.timezone.utc)  # a DST change in some zones (below)


# ------------------------------------------------------------------------------------------------------ the studies


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "journal":
        return f"journal:///{tmp_path / 'store' / 'study.log'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'study.db'}"
    return request.getfixturevalue("postgres_url")


def _study_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, {"name": "s", "root": str(tmp_path / "runs"), "storage": url})))
    return path


def _summary(number: int, **extra: object) -> dict:
    history = [{"epoch": e, "time_s": 0.5, "val_loss": 1 / (e + 1), "val_acc": 0.5 + e / 10 + number / 1000}
               for e in range(3)]
    return {"schema_version": 1, "trial": number, "params": {"lr": 0.01}, "history": history,
            "intermediate_values": {str(h["epoch"]): h["val_acc"] for h in history},
            "metrics": {"best": history[-1], "last": history[-1], "test": {}}, "objective": {"metric": "val_acc"},
            "epochs": 3, "stop_reason": "max_epochs", "wall_time_s": 1.5 + number, "peak_rss_mb": 300.0,
            "peak_gpu_mem_mb": None, "epoch_times_s": [0.5, 0.5, 0.5], "hostname": f"node{number % 3}",
            "checkpoints": {"best": f"/ckpt/{number}.ckpt", "last": None}, "swa": number % 4 == 0,
            "lr_find": {"suggestion": 0.003} if number == 2 else None, "error": None, **extra}


def _fill(url: str, runs: Path) -> optuna.Study:
    """Study "s" (maximize) with every case below, and a second study "other" (minimize) in the same storage."""
    directory = runs / "s"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trials = []
    for number in range(16):
        params = {"lr": 10 ** -(1 + number % 3), "width": 32 * (1 + number % 8),
                  "optimizer": ["adam", "sgd", None][number % 3], "bias": [True, 2.5, "x"][number % 3]}
        if params["optimizer"] == "sgd":
            params["momentum"] = 0.5 + number / 100  # a conditional parameter
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE][number % 4]
        value = (math.inf if number == 7 else 0.5 + (number % 5) / 10) if state == TrialState.COMPLETE else None
        system = {"sweeplight:worker": number % 2, "sweeplight:host": "storage-host", "sweeplight:epochs": 3,
                  "sweeplight:stop_reason": "from-storage", "sweeplight:heartbeat": 1.7e9}
        if number % 5 != 1:  # else the study directory's trials/<n>/summary.json, found without the attribute
            system["sweeplight:summary"] = str(directory / "trials" / str(number) / "summary.json")
        if state == TrialState.FAIL:
            system["sweeplight:error"] = f"  \nValueError: storage {number}\ntraceback"
        user = {"test_acc": 0.8 + number / 100, "note": [1, "x"]}
        if number == 9:
            user["sweeplight:retry_of"] = 5
        begin = START + datetime.timedelta(minutes=13 * number)
        trial = create_trial(state=state, value=value, params=params,
                             distributions={k: DISTRIBUTIONS[k] for k in params}, user_attrs=user,
                             system_attrs=system, intermediate_values={e: 0.1 * e for e in range(number % 4)})
        trial.datetime_start, trial.datetime_complete = begin, begin + datetime.timedelta(seconds=61.25 + number)
        trials.append(trial)
    study.add_trials(trials)
    for _ in (16, 17):  # RUNNING
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "sweeplight:worker", 3)
        trial.report(0.25, 0)
    study.enqueue_trial({"lr": 0.01})  # 18: WAITING
    summaries = {n: _summary(n) for n in range(16)}
    summaries[3].update(metrics={"best": {"val_acc": 0.9, "epoch": 2}, "last": {"val_acc": 0.8, "epoch": 2},
                                 "test": {"test_acc": 0.77, "test_loss": 0.3}})  # test metrics: the summary's
    summaries[2].update(error="RuntimeError: from the summary\n  File x", stop_reason=None, epochs=None,
                        hostname=None)
    summaries[5].update(params={"lr": 0.01, "layers": [64, 32], "extra": {"a": 1}, "fixed": "yes"})
    summaries[6] = {}  # an empty summary
    summaries[10].update(slurm_job_id="123", slurm_array_task_id="4", devices=2, precision="bf16-mixed")
    for number, summary in summaries.items():
        path = directory / "trials" / str(number) / "summary.json"
        if number == 4:
            continue  # no summary
        if number == 8:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary))  # compact: parsed whole
        elif number == 11:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2)[:200])  # cut short: unreadable
        else:
            write_json_atomic(path, summary, durable=False)
    write_json_atomic(directory / "trials" / "11" / "history.json", {"history": summaries[11]["history"]},
                      durable=False)  # read instead of the broken summary
    write_json_atomic(directory / "trials" / "17" / "history.json", {"history": summaries[1]["history"][:1]},
                      durable=False)  # a running trial's curve so far
    other = optuna.create_study(study_name="other", storage=open_storage(url), direction="minimize")
    other.add_trial(create_trial(value=2.0, params={"x": 1}, distributions={"x": IntDistribution(0, 3)}))
    other.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    return study


def _reference_frame(url: str, directory: Path | None, name: str | None = None) -> pd.DataFrame:
    """``trials_frame`` as sweeplight built it before ``_rows``: Optuna's trials and whole summaries, a dict a row."""
    storage = open_storage(url, create=False)
    rows = []
    for study_name in [name] if name else [s.study_name for s in storage.get_all_studies()]:
        study = optuna.load_study(study_name=study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        best = _reference_best(study, trials)
        constrained = any("sweeplight:feasible" in t.system_attrs for t in trials)
        for t in trials:
            path = t.system_attrs.get("sweeplight:summary")
            if path is None and directory is not None:
                path = directory / "trials" / str(t.number) / "summary.json"
            summary = _reference_json(Path(path)) if path else None
            if summary is None and directory is not None:
                summary = _reference_json(directory / "trials" / str(t.number) / "history.json")
            rows.append(_reference_row(study_name, t, summary or {}))
            feasible = t.system_attrs.get("sweeplight:feasible")
            rows[-1]["pareto"] = (t.state.name == "COMPLETE" and feasible is not False and best is not None
                                  and t.value == best)
            rows[-1]["feasible"] = feasible if constrained else True
    frame = pd.DataFrame.from_records(rows)
    params = sorted(c for c in frame.columns if c.startswith("params."))
    metrics = sorted(c for c in frame.columns if c.split(".", 1)[0] in ("best", "last", "test"))
    first = ["study", "number", "state", "objective", "pareto", "feasible", *params, *metrics]
    return frame[first + [c for c in frame.columns if c not in first]].reset_index(drop=True)


def _reference_best(study: optuna.Study, trials: list) -> float | None:
    """The best finite value of the complete trials not marked infeasible: the frame's ``pareto`` rows hold it."""
    values = [t.value for t in trials if t.state.name == "COMPLETE" and t.system_attrs.get("sweeplight:feasible")
              is not False and t.value is not None and math.isfinite(t.value)]
    return (max if study.direction.name == "MAXIMIZE" else min)(values) if values else None


def _reference_json(path: Path) -> dict | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _reference_row(name: str, t: optuna.trial.FrozenTrial, summary: dict) -> dict:
    row = {"study": name, "number": t.number, "state": t.state.name,
           "objective": t.value if t.value is not None else math.nan}
    params = dict(t.params)
    for key, value in (summary.get("params") or {}).items():
        params.setdefault(key, value if not isinstance(value, (list, dict)) else json.dumps(value))
    row.update({f"params.{k}": v for k, v in params.items()})
    metrics = summary.get("metrics") or {}
    for kind in ("best", "last"):
        row.update({f"{kind}.{k}": v for k, v in (metrics.get(kind) or {}).items() if k not in ("epoch", "time_s")})
    tests = metrics.get("test") or {k: v for k, v in t.user_attrs.items() if k.startswith("test_")}
    row.update({f"test.{k}": v for k, v in tests.items()})
    for key in _rows.SUMMARY_COLUMNS:
        row[key] = summary.get(key)
    attrs = t.system_attrs
    row["stop_reason"] = row["stop_reason"] or attrs.get("sweeplight:stop_reason")
    row["epochs"] = row["epochs"] if row["epochs"] is not None else attrs.get("sweeplight:epochs")
    row["lr_find"] = (summary.get("lr_find") or {}).get("suggestion")
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
    row["error"] = error.strip().splitlines()[0][:300] if error and error.strip() else None
    row["checkpoint"] = (summary.get("checkpoints") or {}).get("best")
    row["summary"] = attrs.get("sweeplight:summary")
    return row


def _same(frame: pd.DataFrame, reference: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(frame, reference, check_exact=True)


def _same_trials(fast: _rows.Trials, frozen: list[optuna.trial.FrozenTrial]) -> None:
    """The fast reader's view of every trial is Optuna's, field for field (dict order included)."""
    reference = _rows.from_frozen(fast.name, fast.direction, frozen)
    assert fast.numbers == reference.numbers and fast.states == reference.states
    assert [repr(v) for v in fast.values] == [repr(v) for v in reference.values]  # inf, and int vs float
    assert [list(p.items()) for p in fast.params] == [list(p.items()) for p in reference.params]
    assert [type(v) for p in fast.params for v in p.values()] == [type(v) for p in reference.params
                                                                   for v in p.values()]
    for mine, theirs in ((fast.user, reference.user), (fast.system, reference.system)):  # in any order; NaN
        assert [repr(sorted(d.items())) for d in mine] == [repr(sorted(d.items())) for d in theirs]
    for mine, theirs in ((fast.started, reference.started), (fast.finished, reference.finished)):
        assert mine.dtype == theirs.dtype and mine.tolist() == theirs.tolist()


# --------------------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_fast_reader_equals_optuna_and_the_frame_equals_the_old_one(kind, tmp_path, request):
    url = _url(kind, tmp_path, request)
    study = _fill(url, tmp_path / "runs")
    stored = _rows.read_storage(url)
    assert stored is not None and [s.name for s in stored] == ["s", "other"]
    _same_trials(stored[0], study.get_trials(deepcopy=False))
    assert stored[0].direction == "maximize" and stored[1].direction == "minimize"
    path = _study_file(tmp_path, url)
    directory = load_spec(path).directory
    reference = _reference_frame(url, directory, "s")
    assert reference["state"].tolist().count("RUNNING") == 2 and "test.test_loss" in reference
    for cache in (False, True, True):  # without the cache, writing it, reading it
        _same(trials_frame(path, cache=cache), reference)
    assert (directory / _rows.CACHE_DIR / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f")
    by_url = trials_frame(url)  # every study; no study directory: no history.json, no default summary path
    _same(by_url, _reference_frame(url, None))
    cache_at = storage_file(url).parent / _rows.CACHE_DIR if kind != "postgresql" else None
    assert cache_at is None or any(cache_at.glob("s.*.json"))
    best = best_trial(path)
    assert (best.number, best.value, best.params["lr"]) == (7, math.inf, 0.01)  # the summary's params
    assert best.summary == directory / "trials" / "7" / "summary.json"
    results = load_results(path)[0]
    assert [t.number for t in results.trials] == list(range(19))  # FrozenTrials on demand
    assert results.summaries[11]["history"] == _summary(11)["history"]  # history.json, read whole
    curves = curves_frame(results)
    assert set(curves["trial"]) == set(range(16)) - {4, 6} | {17}


def test_the_cache_follows_new_rewritten_and_removed_summaries(tmp_path, request, monkeypatch):
    monkeypatch.setattr(_rows, "RACY_NS", 0)  # this test rewrites files within a second
    monkeypatch.setattr(_rows, "REWRITE_MIN", 1)
    url = _url("journal", tmp_path, request)
    study = _fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    directory = load_spec(path).directory
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    cache = _rows.study_cache(directory / _rows.CACHE_DIR, "s")
    written = cache.stat().st_mtime_ns
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    assert cache.stat().st_mtime_ns == written  # nothing changed: not rewritten

    trials = directory / "trials"
    write_json_atomic(trials / "0" / "summary.json", _summary(0, stop_reason="rewritten", wall_time_s=9.0))
    (trials / "3" / "summary.json").unlink()
    summary = trials / "12" / "summary.json"  # rewritten in place, same size: the inode and mtime tell
    summary.write_text(summary.read_text().replace('"node0"', '"nodeX"'))
    future = time.time_ns() + 5_000_000_000
    os.utime(summary, ns=(future, future))
    write_json_atomic(trials / "4" / "summary.json", _summary(4, hostname="late"))  # a summary appears
    trial = study.ask()  # a new trial, then its summary
    study.tell(trial, 0.42)
    write_json_atomic(trials / str(trial.number) / "summary.json", _summary(trial.number))
    frame = trials_frame(path)
    _same(frame, _reference_frame(url, directory, "s"))
    rows = frame.set_index("number")
    assert rows.loc[0, "stop_reason"] == "rewritten" and rows.loc[4, "host"] == "late"
    assert rows.loc[12, "host"] == "nodeX" and rows.loc[3, "host"] == "storage-host"
    _same(trials_frame(path), frame)  # and again, from the cache just written

    cache.write_bytes(b'{"format": 1, "study": "s", "numbers": [1, 2]')  # a broken cache is read around
    _same(trials_frame(path), frame)
    monkeypatch.setenv(_rows.CACHE_ENV, "0")
    cache.unlink()
    _same(trials_frame(path), frame)
    assert not cache.exists()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` cannot be written inside the block. root ignores permission bits (CI runs as root): there the
    directory is made immutable instead."""
    mode = directory.stat().st_mode
    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(mode)


def test_a_read_only_study_directory_is_read_without_a_cache(tmp_path, request):
    url = _url("sqlite", tmp_path, request)
    _fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    directory = load_spec(path).directory
    with read_only(directory):
        with pytest.raises(OSError):
            (directory / "probe").write_text("")
        _same(trials_frame(path), _reference_frame(url, directory, "s"))
        assert not (directory / _rows.CACHE_DIR).exists()


def test_a_cache_that_cannot_be_written_changes_nothing(tmp_path, request):
    url = _url("sqlite", tmp_path, request)
    _fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    directory = load_spec(path).directory
    (directory / _rows.CACHE_DIR).write_text("a file where the cache directory would be")
    _same(trials_frame(path), _reference_frame(url, directory, "s"))


def _load_in_process(path: str) -> str:
    return trials_frame(path).to_json()


def test_processes_loading_at_once_agree(tmp_path, request):
    url = _url("journal", tmp_path, request)
    _fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        frames = pool.map(_load_in_process, [str(path)] * 6)
    assert len(set(frames)) == 1
    directory = load_spec(path).directory
    assert not list((directory / _rows.CACHE_DIR).glob(".*.tmp"))  # every writer replaced or removed its file
    _same(trials_frame(path), _reference_frame(url, directory, "s"))


def test_journal_records_optuna_skips_and_a_line_being_written(tmp_path, request):
    url = _url("journal", tmp_path, request)
    _fill(url, tmp_path / "runs")
    journal = storage_file(url)
    late = [  # updates of a finished trial (another worker's), a NaN and a big integer, a study deleted
        {"op_code": 9, "worker_id": "w", "trial_id": 0, "system_attr": {"sweeplight:host": "late"}},
        {"op_code": 5, "worker_id": "w", "trial_id": 0, "param_name": "lr", "param_value_internal": 0.5,
         "distribution": optuna.distributions.distribution_to_json(DISTRIBUTIONS["lr"])},
        {"op_code": 8, "worker_id": "w", "trial_id": 17, "user_attr": {"test_nan": math.nan}},
        {"op_code": 8, "worker_id": "w", "trial_id": 18, "user_attr": {"test_big": 2**70}},
        {"op_code": 10, "worker_id": "w", "trial_ids": [1]},
        {"op_code": 1, "worker_id": "w", "study_id": 1},
        {"op_code": 4, "worker_id": "w", "study_id": 1, "datetime_start": None},  # a trial of the deleted study
    ]
    with journal.open("a") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in late))
        handle.write('{"op_code": 9, "worker_id": "w", "trial_id": 17, "system_a')  # being written
    frozen = optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # read, read and cache, from the cache
        fast = _rows.read_storage(url, None, cache)
        assert [s.name for s in fast] == ["s"]
        _same_trials(fast[0], frozen)
        assert fast[0].user[18]["test_big"] == 2**70 and math.isnan(fast[0].user[17]["test_nan"])


def test_a_template_trials_intermediate_values_are_skipped_only_where_they_are_its_last_member():
    line = (b'{"op_code":4,"system_attrs":{"x":{"intermediate_values":{"0":1}}},"intermediate_values":{"0":0.5,'
            b'"1":NaN}}')
    assert _rows._without_intermediate_values(line) == b'{"op_code":4,"system_attrs":{"x":{"intermediate_values":' \
        b'{"0":1}}}}'
    for kept in (b'{"op_code":4,"intermediate_values":{"0":0.5},"state":1}',  # not the last member
                 b'{"op_code":4,"system_attrs":{"x":{"a":1,"intermediate_values":{"0":1}}}}',  # nested
                 b'{"op_code":4,"intermediate_values":{"0":{"a":1}}}',  # not flat
                 b'{"op_code":4,"user_attrs":{"s":"}"},"intermediate_values":{"0":1}'):  # cut short
        assert _rows._without_intermediate_values(kept) == kept


def test_the_journal_cache_replays_only_new_lines_and_notices_a_changed_file(tmp_path, request, monkeypatch):
    monkeypatch.setattr(_rows, "JOURNAL_REWRITE_MIN", 1)
    monkeypatch.setattr(_rows, "REWRITE_AT", 0)
    url = _url("journal", tmp_path, request)
    study = _fill(url, tmp_path / "runs")
    journal = storage_file(url)
    cache_dir = tmp_path / "cache"

    def check() -> None:
        cached = _rows.read_storage(url, "s", cache_dir)
        _same_trials(cached[0], optuna.load_study(study_name="s", storage=open_storage(url)).get_trials())

    check()
    (cache_file,) = cache_dir.glob("journal.*.json")
    assert orjson.loads(cache_file.read_bytes())["offset"] == journal.stat().st_size
    trial = study.ask()  # new lines after the cached offset
    study.tell(trial, 0.1)
    check()
    assert orjson.loads(cache_file.read_bytes())["offset"] == journal.stat().st_size
    replayed = []
    apply = _rows._Replay.apply

    def counting(self: _rows._Replay, data: bytes, start: int = 0) -> int:
        replayed.append(len(data) - start)
        return apply(self, data, start)

    monkeypatch.setattr(_rows._Replay, "apply", counting)
    check()
    assert replayed == [0]  # nothing new: nothing replayed
    content = journal.read_bytes()
    changed = content.replace(b'"sweeplight:worker":1', b'"sweeplight:worker":7')  # the same size, other bytes
    assert changed != content
    journal.write_bytes(changed)
    check()
    assert replayed[-1] == len(content)  # replayed from the start
    journal.write_bytes(content[:len(content) // 2])  # shorter than the cached offset
    check()
    assert replayed[-1] == len(content) // 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_database_cache_refetches_only_trials_that_are_new_or_were_not_finished(kind, tmp_path, request,
                                                                                    monkeypatch):
    monkeypatch.setattr(_rows, "REWRITE_MIN", 1)
    url = _url(kind, tmp_path, request)
    study = _fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    directory = load_spec(path).directory
    fetched = []
    fetch = _rows._fetch_trials

    def counting(query, study_id, rows, rows_to_fetch, fields, kinds):
        fetched.append([rows[row][1] for row in rows_to_fetch])
        return fetch(query, study_id, rows, rows_to_fetch, fields, kinds)

    monkeypatch.setattr(_rows, "_fetch_trials", counting)
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    assert fetched == [list(range(19)), [16, 17, 18]]  # then only the running and waiting trials
    study._storage.set_trial_user_attr(study.trials[16]._trial_id, "test_nan", math.nan)
    study.tell(16, 0.33)  # finished since
    trial = study.ask()  # 18, the waiting one
    study.tell(trial, state=TrialState.PRUNED)
    study.ask()  # 19, new
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    assert fetched[2:] == [[16, 17, 18, 19], [17, 19]]
    assert trials_frame(path).loc[16, "objective"] == 0.33


def test_a_database_made_again_is_not_taken_for_the_cached_one(tmp_path, request):
    url = _url("sqlite", tmp_path, request)
    _fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    directory = load_spec(path).directory
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    storage_file(url).unlink()  # the same study again: the same trial ids and numbers, other values and times
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    for number in range(19):
        study.add_trial(create_trial(value=float(number), params={"lr": 0.01},
                                     distributions={"lr": DISTRIBUTIONS["lr"]}))
    frame = trials_frame(path)
    _same(frame, _reference_frame(url, directory, "s"))
    assert frame["objective"].tolist() == [float(n) for n in range(19)]


def test_a_distribution_that_changes_goes_through_optuna(tmp_path, request):
    url = _url("journal", tmp_path, request)
    _fill(url, tmp_path / "runs")
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    study.add_trial(create_trial(value=0.1, params={"lr": 0.5}, distributions={"lr": FloatDistribution(0.1, 1.0)}))
    assert _rows.read_storage(url) is None
    path = _study_file(tmp_path, url)
    _same(trials_frame(path), _reference_frame(url, load_spec(path).directory, "s"))


@pytest.mark.parametrize("zone", ["America/St_Johns", "Europe/Berlin", "UTC"])
def test_journal_times_are_optunas_local_times(zone, tmp_path, request, monkeypatch):
    """Optuna turns a journal's UTC times into naive local ones; St John's changes its offset at :30 UTC."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        url = _url("journal", tmp_path, request)
        study = optuna.create_study(study_name="s", storage=open_storage(url))
        trials = []
        for minute in range(0, 60 * 26, 7):  # 26 hours around 2026-03-08 and 2026-03-29 04:00 UTC
            for day in (0, 21):
                begin = START + datetime.timedelta(days=day, minutes=minute - 60 * 13, seconds=0.123457)
                trial = create_trial(value=1.0)
                trial.datetime_start, trial.datetime_complete = begin, begin + datetime.timedelta(minutes=47)
                trials.append(trial)
        study.add_trials(trials)
        _same_trials(_rows.read_storage(url)[0],
                     optuna.load_study(study_name="s", storage=open_storage(url)).get_trials())
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_summary_without_its_history_is_the_summary(tmp_path):
    summary = _summary(3, error='a "quoted"\n  "history": [ inside ]', layers=[[1, 2], {"a": []}],
                       history=[{"epoch": 0, "x": [1, {"y": "]"}]}], tail={})
    for layout in (dict(indent=2), dict(indent=2, sort_keys=True), dict(indent=4), {}):
        data = json.dumps(summary, **layout).encode()
        whole = orjson.loads(data)
        slim = _rows._parse_slim(data)
        assert slim == {k: v for k, v in whole.items() if k not in ("history", "intermediate_values",
                                                                       "epoch_times_s")} or slim == whole
    last = json.dumps({"a": 1, "history": [{"epoch": 0}]}, indent=2).encode()
    assert _rows._drop_bulky(last) == b'{\n  "a": 1\n}'
    only = json.dumps({"history": [1]}, indent=2).encode()
    assert _rows._parse_slim(only) == {"history": [1]}  # nothing before it to drop it with: read whole


def test_hand_built_results_still_make_a_frame():
    study = optuna.create_study(direction="minimize")
    study.add_trial(create_trial(value=1.5, params={"x": 2}, distributions={"x": IntDistribution(0, 3)}))
    results = StudyResults(name="memory", direction="minimize", metric="loss", directory=None, trials=study.trials,
                           summaries={0: _summary(0)})
    frame = trials_frame(results)
    assert frame.loc[0, "params.x"] == 2 and frame.loc[0, "params.lr"] == 0.01 and frame.loc[0, "epochs"] == 3
    assert best_trial(results).number == 0
