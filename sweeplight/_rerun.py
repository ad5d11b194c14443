"""``sweeplight trial rerun``: train one trial again from its record and say whether it reproduced its objective.

The spec is rebuilt from the study embedded in the trial's ``record.json`` (not the study file as it is now), the
parameters and seed are the recorded ones, and the trial runs through the same runner a worker uses, in a fresh
directory (``<study>/reruns/<number>-<k>/``). The study's storage is never opened: nothing is asked, reported or
told, so the rerun cannot change the study or be pruned by it. A trial the pruner stopped is stopped at the same
epoch instead (a stand-in for the Optuna trial prunes there), and its last reported value is compared.

Reproduced means the same state and an objective within ``tolerance`` (absolute; 0, the default, asks for exactly
equal values, which deterministic CPU runs give). Differences in the code (commit, uncommitted changes) and the
installed packages since the trial ran are reported as warnings: they explain a mismatch, they do not cause one.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweeplight._record import RecordError, code_context, freeze, parse_freeze, read_record

RERUN_FILE = "rerun.json"


@dataclass(frozen=True)
class RerunResult:
    """The original trial next to its rerun."""

    study: str
    trial: int
    metric: str
    direction: str
    original_state: str
    original_value: float | None
    rerun_state: str
    rerun_value: float | None
    reproduced: bool
    difference: float | None  # the largest |rerun - original| over the objectives, when both have values
    tolerance: float
    directory: str  # where the rerun wrote its summary, checkpoints and TensorBoard logs
    epochs: tuple[int, int]  # validated epochs: original, rerun
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # the rerun's error, when it failed
    values: tuple[list, list] | None = None  # multi-objective studies: every objective's value, original and rerun


class _Replay:
    """What the trial runner is handed instead of an Optuna trial: it reports nowhere and prunes only at the epoch
    where the pruner stopped the original trial."""

    def __init__(self, number: int, prune_at: int | None) -> None:
        self.number = number
        self.prune_at = prune_at
        self.params: dict[str, Any] = {}
        self.user_attrs: dict[str, Any] = {}
        self._step: int | None = None

    def report(self, value: float, step: int) -> None:
        self._step = step

    def should_prune(self) -> bool:
        return self.prune_at is not None and self._step is not None and self._step >= self.prune_at

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def study_directory(target: str | Path) -> Path:
    """A study directory, or the directory a study file's runs go to."""
    path = Path(target)
    if path.is_dir():
        if not (path / "spec.json").is_file() and not (path / "trials").is_dir():
            raise RecordError(f"{path} is not a study directory (no spec.json, no trials/); pass runs/<name> or the "
                              "study file")
        return path.resolve()
    from sweeplight._status import resolve

    return resolve(path).directory


def rerun(target: str | Path, number: int, *, out: str | Path | None = None, tolerance: float = 0.0,
          quiet: bool = False) -> RerunResult:
    """Re-run trial ``number`` of the study at ``target`` from its record; ``quiet`` sends training output to stderr.

    >>> result = rerun("runs/digits", 3)  # doctest: +SKIP
    >>> result.reproduced  # doctest: +SKIP
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise RecordError(f"--tolerance: must be a finite number >= 0, got {tolerance}")
    study_dir = study_directory(target)
    trial_dir = study_dir / "trials" / str(number)
    if not trial_dir.is_dir():
        known = sorted(int(p.name) for p in (study_dir / "trials").glob("*") if p.name.isdigit())
        shown = f"{known[0]}-{known[-1]}" if known else "none yet"
        raise RecordError(f"trial {number}: no such trial in {study_dir} (trials: {shown}); give one of those numbers")
    if not (trial_dir / "record.json").is_file():
        raise RecordError(f"trial {number}: {trial_dir / 'record.json'} does not exist; the trial ran before "
                          "sweeplight wrote records, so it cannot be re-run from one")
    record = read_record(trial_dir)
    original = _original(trial_dir, number)
    from sweeplight._spec import spec_from_json
    from sweeplight._summary import write_json_atomic
    from sweeplight._worker import LightningRunner

    spec = spec_from_json(record["spec"])
    directory = _out_dir(study_dir, number, out)
    try:
        runner = LightningRunner(spec)  # imports the model and data code before their files are looked up
    except BaseException:
        with contextlib.suppress(OSError):
            directory.rmdir()
        raise
    warnings = _drift(spec, record, study_dir)
    if record.get("resumed_from"):
        warnings.append(f"trial {number} continued trial {record['resumed_from']['trial']} from its checkpoint; the "
                        "rerun trains from scratch, so its values may differ")
    prune_at = original["history"][-1]["epoch"] if original["state"] == "PRUNED" and original.get("history") else None
    _set_threads(original.get("torch_threads") or record.get("torch_threads"))
    redirect = contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext()
    with redirect:
        outcome = runner(spec, _Replay(number, prune_at), dict(record["params"]), directory, None)
    write_json_atomic(directory / "summary.json", outcome.summary)
    result = _compare(spec, number, original, outcome, tolerance, directory, warnings)
    write_json_atomic(directory / RERUN_FILE, asdict(result))
    return result


def _original(trial_dir: Path, number: int) -> dict[str, Any]:
    path = trial_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except OSError:
        raise RecordError(f"trial {number} has no summary.json yet: it is still running or its worker died; "
                          "re-run it once it has finished") from None
    except ValueError:
        raise RecordError(f"{path} is not valid JSON; the original result cannot be compared") from None
    if summary.get("stop_reason") == "interrupted" or summary.get("state") not in ("COMPLETE", "PRUNED", "FAIL"):
        raise RecordError(f"trial {number} was interrupted before it finished (no result to compare); re-run the "
                          "trial that continued it instead")
    return summary


def _compare(spec: Any, number: int, original: dict[str, Any], outcome: Any, tolerance: float, directory: Path,
             warnings: list[str]) -> RerunResult:
    """Same state, and every objective's value within ``tolerance`` (a failed trial: the same error)."""
    before, after = _values(original), _values(outcome.summary)
    same_state = original["state"] == outcome.state
    pairs = list(zip(before, after, strict=False)) if len(before) == len(after) else []
    scored = bool(pairs) and all(a is not None and b is not None for a, b in pairs)
    difference = max(abs(b - a) for a, b in pairs) if scored else None
    if original["state"] == "FAIL":  # the same failure: the error's first line (exception and message) matches
        reproduced = same_state and _first_line(original.get("error")) == _first_line(outcome.summary.get("error"))
    else:
        reproduced = same_state and scored and (before == after or difference <= tolerance)
    return RerunResult(
        study=spec.name, trial=number, metric=spec.objective.metric, direction=spec.objective.direction,
        original_state=original["state"], original_value=before[0] if before else None, rerun_state=outcome.state,
        rerun_value=after[0] if after else None, reproduced=bool(reproduced), difference=difference,
        tolerance=tolerance, directory=str(directory),
        epochs=(int(original.get("epochs") or 0), int(outcome.summary.get("epochs") or 0)), warnings=warnings,
        error=outcome.summary.get("error"), values=(before, after) if len(before) > 1 else None)


def _values(summary: dict[str, Any]) -> list[float | None]:
    """The objective values a summary holds: every objective's in a multi-objective study, else the one."""
    several = summary.get("objectives")
    if isinstance(several, list) and len(several) > 1:
        return [item.get("value") for item in several]
    return [(summary.get("objective") or {}).get("value")]


def _first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def _drift(spec: Any, record: dict[str, Any], study_dir: Path) -> list[str]:
    """What changed since the trial ran: the code's commits and uncommitted changes, and the installed packages."""
    warnings = []
    now = code_context(spec, study_dir=None)
    current = {repo["root"]: repo for repo in now["repos"]}
    for repo in record.get("code", {}).get("repos", []):
        mine = current.get(repo["root"])
        if mine is None:
            warnings.append(f"code: {repo['root']} is no longer a git repository holding the model or data code")
            continue
        if mine["commit"] != repo["commit"]:
            warnings.append(f"code: {repo['root']} is at commit {str(mine['commit'])[:12]}, the trial ran at "
                            f"{str(repo['commit'])[:12]}")
        if mine["diff_sha256"] != repo.get("diff_sha256"):
            saved = f" (the trial's are in {study_dir / repo['diff']})" if repo.get("diff") else ""
            warnings.append(f"code: the uncommitted changes in {repo['root']} differ from the trial's{saved}")
    recorded = [repo["root"] for repo in record.get("code", {}).get("repos", [])]
    for root in current:
        if root not in recorded:
            warnings.append(f"code: {root} is now a git repository holding the model or data code; the trial's was not")
    packages = record.get("packages") or {}
    try:
        then = parse_freeze((study_dir / packages["freeze"]).read_text())
    except (KeyError, TypeError, OSError):
        return [*warnings, "packages: the trial's package list is missing; installed versions cannot be compared"]
    current_packages = parse_freeze(freeze())
    changed = [f"{then.get(name, name + ' (absent)')} -> {current_packages.get(name, '(absent)')}"
               for name in sorted(set(then) | set(current_packages)) if then.get(name) != current_packages.get(name)]
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        warnings.append(f"packages: {len(changed)} differ from the trial's: {'; '.join(changed[:5])}{more}")
    return warnings


def _out_dir(study_dir: Path, number: int, out: str | Path | None) -> Path:
    if out is not None:
        path = Path(out).resolve()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RecordError(f"--out: {path} exists and is not an empty directory; give a new directory")
        path.mkdir(parents=True, exist_ok=True)
        return path
    parent = study_dir / "reruns"
    parent.mkdir(parents=True, exist_ok=True)
    k = 0
    while True:
        path = parent / f"{number}-{k}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1


def _set_threads(threads: Any) -> None:
    """As many torch threads as the trial had: a sum split over another number of threads can round differently."""
    if isinstance(threads, int) and threads > 0:
        import torch

        torch.set_num_threads(threads)


def format_result(result: RerunResult) -> str:
    def shown(state: str, value: float | None, epochs: int) -> str:
        text = f"{value:.10g}" if value is not None else "(no value)"
        return f"{state} {text} ({epochs} epochs)"

    if result.reproduced:
        verdict = "yes (equal)" if not result.difference else (
            f"yes (difference {result.difference:.3g} <= tolerance {result.tolerance:g})")
        if result.rerun_state == "FAIL":
            verdict = "yes (the same error)"
    elif result.original_state != result.rerun_state:
        verdict = f"NO (the trial was {result.original_state}, the rerun {result.rerun_state})"
    elif result.difference is not None:
        verdict = f"NO (difference {result.difference:.3g} > tolerance {result.tolerance:g})"
    else:
        verdict = "NO (a different error)"
    lines = [f"trial {result.trial} of study {result.study!r}, {result.metric} ({result.direction}); rerun in "
             f"{result.directory}",
             f"original:   {shown(result.original_state, result.original_value, result.epochs[0])}",
             f"rerun:      {shown(result.rerun_state, result.rerun_value, result.epochs[1])}",
             f"reproduced: {verdict}"]
    if result.error and not result.reproduced:
        lines.append(f"rerun error: {_first_line(result.error)}")
    return "\n".join(lines)
