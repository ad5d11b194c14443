"""The study's index of summary rows (``_rows.index_summary``, written by ``_summary.write_summary``) never changes a
result: the first load takes a row from the index only while the line names the summary file as it is, and reads
the file otherwise.

The studies are ``test_analysis_fast._fill``'s (every trial state, summaries missing, compact, broken or replaced by
history.json), with each summary that ``_fill`` writes the sweeplight way written through ``write_summary``, so it
has its line. Each frame is compared, exactly and dtypes included, with the frame read without the cache and index
and with ``_reference_frame`` (Optuna's trials and whole summaries).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import optuna
import orjson
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from sweeplight import _rows
from sweeplight._spec import load_spec
from sweeplight._storage import open_storage
from sweeplight._summary import write_json_atomic, write_summary
from sweeplight.analysis import trials_frame

from . import test_analysis_fast
from .conftest import BASE, _merge, run_cli
from .test_analysis_fast import _fill, _reference_frame, _same, _study_file, _summary, _url

INDEXED = [n for n in range(16) if n not in (4, 8, 11)]  # _fill: 4 has no summary, 8 and 11 are written by hand


@pytest.fixture
def indexed(monkeypatch: pytest.MonkeyPatch):
    """``_fill`` with its summaries written as a worker writes them (file, then index line)."""

    def write(path: Path, data: dict, *, durable: bool = True) -> None:
        if path.name != "summary.json":
            return write_json_atomic(path, data, durable=durable)
        return write_summary(path, data, study="s", study_dir=path.parents[2], number=int(path.parent.name),
                             durable=durable)

    monkeypatch.setattr(test_analysis_fast, "write_json_atomic", write)
    return _fill


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the loads read (summaries and history.json), in order."""
    seen: list[str] = []
    read_part = _rows.read_part

    def counting(path: str):
        seen.append(path)
        return read_part(path)

    monkeypatch.setattr(_rows, "read_part", counting)
    return seen


def _index(directory: Path) -> Path:
    return _rows.index_file(directory / _rows.CACHE_DIR, "s")


def _lines(directory: Path) -> list[list]:
    return [orjson.loads(line) for line in _index(directory).read_bytes().splitlines()]


def _summary_path(directory: Path, number: int) -> Path:
    return directory / "trials" / str(number) / "summary.json"


def _study(tmp_path: Path, request: pytest.FixtureRequest, fill, kind: str = "journal") -> tuple[str, Path, Path]:
    url = _url(kind, tmp_path, request)
    fill(url, tmp_path / "runs")
    path = _study_file(tmp_path, url)
    return url, path, load_spec(path).directory


# --------------------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_first_load_takes_every_indexed_row_from_the_index(kind, tmp_path, request, indexed, reads):
    url, path, directory = _study(tmp_path, request, indexed, kind)
    lines = _lines(directory)
    assert [line[1] for line in lines] == INDEXED and all(line[2] == 0 for line in lines)  # 0: the usual path
    for line in lines:
        summary = _summary_path(directory, line[1])
        assert line[3] == _rows._stat_key(str(summary))
        assert [line[4], line[5]] == list(_rows.row_part(_rows.read_part(str(summary))[0]))
    reference = _reference_frame(url, directory, "s")
    reads.clear()
    _same(trials_frame(path), reference)
    assert not {str(_summary_path(directory, n)) for n in INDEXED} & set(reads)
    assert str(_summary_path(directory, 8)) in reads and str(_summary_path(directory, 11)) in reads
    _same(trials_frame(path, cache=False), reference)
    assert _index(directory).read_bytes().count(b"\n") == len(INDEXED)  # its files are new: nothing cached yet
    _same(trials_frame(path), reference)


def test_the_cache_takes_over_the_index_and_the_index_keeps_only_what_it_lacks(tmp_path, request, indexed, reads,
                                                                            monkeypatch):
    monkeypatch.setattr(_rows, "RACY_NS", 0)  # the summaries were written a moment ago
    monkeypatch.setattr(_rows, "REWRITE_MIN", 1)
    url, path, directory = _study(tmp_path, request, indexed)
    ahead = _summary_path(directory, 99)  # a trial the storage does not show yet: its line stays
    write_summary(ahead, _summary(99), study="s", study_dir=directory, number=99)
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    assert [line[1] for line in _lines(directory)] == [99]
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    trial = study.ask()  # the waiting trial, 18
    study.tell(trial, 0.42)
    number = trial.number
    write_summary(_summary_path(directory, number), _summary(number, hostname="new"), study="s",
                  study_dir=directory, number=number)
    reads.clear()
    frame = trials_frame(path)
    _same(frame, _reference_frame(url, directory, "s"))
    assert str(_summary_path(directory, number)) not in reads and frame.loc[number, "host"] == "new"
    assert [line[1] for line in _lines(directory)] == [99]  # the new one went into the cache
    reads.clear()
    _same(trials_frame(path), frame)
    assert reads == []  # nothing new: the cache alone (the index is not even read)


def test_a_summary_changed_after_its_line_is_read_from_its_file(tmp_path, request, indexed, reads):
    url, path, directory = _study(tmp_path, request, indexed)
    # Replaced by something else than write_summary, the same size: a new inode.
    old = _summary_path(directory, 0).stat().st_size
    write_json_atomic(_summary_path(directory, 0), _summary(0, hostname="nodeX"))
    assert _summary_path(directory, 0).stat().st_size == old
    # Rewritten in place, the same size, in a later timestamp tick: the inode stays, the mtime tells.
    summary = _summary_path(directory, 3)
    before = summary.stat()
    with summary.open("r+b") as handle:
        content = handle.read().replace(b'"node0"', b'"nodeY"')
        handle.seek(0)
        handle.write(content)
    later = before.st_mtime_ns + 10_000_000
    os.utime(summary, ns=(later, later))
    after = summary.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    # Rewritten by write_summary: a later line for the trial, which wins.
    write_summary(_summary_path(directory, 5), _summary(5, hostname="nodeZ"), study="s", study_dir=directory,
                  number=5)
    assert [line[1] for line in _lines(directory)].count(5) == 2
    reads.clear()
    frame = trials_frame(path)
    _same(frame, _reference_frame(url, directory, "s"))
    assert frame.loc[[0, 3, 5], "host"].tolist() == ["nodeX", "nodeY", "nodeZ"]
    assert str(_summary_path(directory, 0)) in reads and str(summary) in reads
    assert str(_summary_path(directory, 5)) not in reads


def test_lines_that_are_broken_cut_short_or_of_another_shape_are_skipped(tmp_path, request, indexed, reads):
    url, path, directory = _study(tmp_path, request, indexed)
    index = _index(directory)
    line_of = {orjson.loads(line)[1]: line for line in index.read_bytes().splitlines()}
    parsed = {number: orjson.loads(line) for number, line in line_of.items()}
    odd = [
        b"garbage",
        line_of[0][:len(line_of[0]) // 2],  # cut short (a full disk): the earlier line of trial 0 stands
        line_of[2][:-1] + line_of[3],  # a line cut short, then the next one written after it
        b"{}",
        orjson.dumps([_rows.CACHE_FORMAT - 1, *parsed[5][1:]]),  # another format
        orjson.dumps([*parsed[6], 1]),  # another shape
        orjson.dumps([*parsed[7][:4], [*parsed[7][4], 1], parsed[7][5]]),  # a FIXED value too many
        orjson.dumps([_rows.CACHE_FORMAT, 9, 0, [1, 2, 3], [None] * len(_rows.FIXED), {}]),  # another file's key
    ]
    with index.open("ab") as handle:
        handle.write(b"\n".join(odd) + b"\n")
        handle.write(line_of[10][:30])  # a line being written
    reads.clear()
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    read = {str(_summary_path(directory, n)) for n in INDEXED} & set(reads)
    assert read == {str(_summary_path(directory, 9))}  # its last well-formed line names another file


def _write_many(args: tuple[str, int, int]) -> None:
    directory, first, count = args
    for number in range(first, first + count):
        summary = _summary(number, params={"lr": 0.01, "note": "x" * 5000})  # lines longer than a pipe's atomic
        # write (4096 bytes)
        write_summary(_summary_path(Path(directory), number), summary, study="s", study_dir=Path(directory),
                      number=number, durable=False)


def test_workers_appending_at_once_leave_whole_lines(tmp_path, reads):
    url = f"journal:///{tmp_path / 'runs' / 's' / 'study.log'}"
    directory = tmp_path / "runs" / "s"
    directory.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    study.add_trials([create_trial(value=n / 200, params={"lr": 0.01}, distributions={"lr": FloatDistribution(
        1e-4, 1e-1, log=True)}) for n in range(200)])
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_write_many, [(str(directory), first, 50) for first in range(0, 200, 50)])
    lines = _index(directory).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(len(line) > 5000 for line in lines[:-1])
    assert sorted(orjson.loads(line)[1] for line in lines[:-1]) == list(range(200))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, {"name": "s", "root": str(tmp_path / "runs"), "storage": url})))
    reads.clear()
    frame = trials_frame(path)
    assert reads == [] and frame["params.note"].str.len().tolist() == [5000] * 200
    _same(frame, trials_frame(path, cache=False))
    _same(frame, _reference_frame(url, directory, "s"))


def test_without_an_index_every_summary_is_read(tmp_path, request, indexed, reads):
    url, path, directory = _study(tmp_path, request, indexed)
    _index(directory).unlink()
    reads.clear()
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    assert {str(_summary_path(directory, n)) for n in INDEXED} <= set(reads)


def test_with_the_cache_off_the_index_is_neither_written_nor_read(tmp_path, request, indexed, monkeypatch):
    monkeypatch.setenv(_rows.CACHE_ENV, "0")
    url, path, directory = _study(tmp_path, request, indexed)
    assert not (directory / _rows.CACHE_DIR).exists()
    reference = _reference_frame(url, directory, "s")
    _same(trials_frame(path), reference)
    assert not (directory / _rows.CACHE_DIR).exists()
    monkeypatch.delenv(_rows.CACHE_ENV)
    # A line whose row is not its file's (write_summary cannot make one) shows whether a load read the index.
    summary = _summary_path(directory, 0)
    fixed, others = _rows.row_part(_rows.read_part(str(summary))[0])
    fixed[_rows.FIXED.index("hostname")] = "from the index"
    _rows._cache_folder(directory / _rows.CACHE_DIR)
    _index(directory).write_bytes(orjson.dumps([_rows.CACHE_FORMAT, 0, 0, _rows._stat_key(str(summary)), fixed,
                                                others]) + b"\n")
    _same(trials_frame(path, cache=False), reference)
    monkeypatch.setenv(_rows.CACHE_ENV, "0")
    _same(trials_frame(path), reference)
    monkeypatch.delenv(_rows.CACHE_ENV)
    assert trials_frame(path).loc[0, "host"] == "from the index"


def test_an_index_that_cannot_be_written_fails_nothing(tmp_path, request, indexed):
    url, path, directory = _study(tmp_path, request, indexed)
    cache = directory / _rows.CACHE_DIR
    index = _index(directory)
    index.unlink()
    index.mkdir()  # a directory where the index would be
    write_summary(_summary_path(directory, 0), _summary(0), study="s", study_dir=directory, number=0)
    index.rmdir()
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    cache.write_text("a file where the cache directory would be")
    write_summary(_summary_path(directory, 1), _summary(1, hostname="late"), study="s", study_dir=directory,
                  number=1)
    _same(trials_frame(path), _reference_frame(url, directory, "s"))
    cache.unlink()
    with test_analysis_fast.read_only(directory):
        with pytest.raises(OSError):
            cache.mkdir()
        write_summary(_summary_path(directory, 3), _summary(3, hostname="later"), study="s", study_dir=directory,
                      number=3)
        frame = trials_frame(path)
        _same(frame, _reference_frame(url, directory, "s"))
        assert frame.loc[[1, 3], "host"].tolist() == ["late", "later"]
    assert not cache.exists()


def test_a_study_named_by_its_storage_url_finds_the_index_in_its_directory(tmp_path, request, indexed, reads):
    url, _, directory = _study(tmp_path, request, indexed)  # the journal is in tmp_path/store, not the directory
    reads.clear()
    _same(trials_frame(url), _reference_frame(url, None))
    assert not {str(_summary_path(directory, n)) for n in INDEXED if n % 5 != 1} & set(reads)  # by their attribute


@pytest.mark.slow
def test_a_real_study_indexes_each_trial(tmp_path, reads):
    data = _merge(BASE, {"root": str(tmp_path / "runs"), "budget": {"n_trials": 4}, "trainer": {"max_epochs": 1},
                         "executor": {"workers": 2}})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("study", "launch", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    directory = load_spec(path).directory
    lines = [orjson.loads(line) for line in _rows.index_file(directory / _rows.CACHE_DIR, "tiny").read_bytes()
             .splitlines()]
    assert sorted(line[1] for line in lines) == [0, 1, 2, 3]
    for line in lines:
        summary = _summary_path(directory, line[1])
        assert line[2] == 0 and line[3] == _rows._stat_key(str(summary))
        assert [line[4], line[5]] == list(_rows.row_part(_rows.read_part(str(summary))[0]))
        assert line[4][_rows.FIXED.index("epochs")] == json.loads(summary.read_text())["epochs"] == 1
    reads.clear()
    frame = trials_frame(path)
    assert reads == [] and len(frame) == 4 and frame["best.val_acc"].notna().all()
    _same(frame, trials_frame(path, cache=False))
