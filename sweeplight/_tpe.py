"""Optuna's TPE, proposing exactly what ``optuna.samplers.TPESampler`` proposes, without redoing per-trial work.

Where Optuna 5.0's ``TPESampler`` spends an ask on a study of 10,000 finished trials (studies/digits.yaml's space,
Hyperband; CPU ms per ask, benchmarks/RESULTS.md): splitting the trials into below/above, ~80-100 (per trial in
Python: the infeasibility score parses the trial's system attributes, the pruned score its intermediate values; then
sorts), building the observation arrays, ~45-55 (a Python loop over every trial, twice per ``_sample``, calling
``to_internal_repr`` per value), the estimator's ``log_pdf`` on 24 candidates x 10,000 kernels, ~39, reading the
study 3.5 times (each entry point reads it again, and a Hyperband bracket study has no trial cache), ~9, building
the two estimators, ~6. Only the last two steps depend on more than the finished trials, which never change.

So this sampler, given the same trials, hands Optuna's estimator the same inputs and gets the same numbers:

- one read of the study per trial sampled, shared by the entry points (the study's trial cache, which sweeplight's
  worker fills under the ask lock, else a storage read; at most ``READ_SECONDS`` old): the trials Optuna would read,
  unless another process finishes a trial in the milliseconds between;
- one row per finished trial, kept: its kind (complete, pruned, infeasible), value, pruned score, infeasibility and,
  per parameter and distribution, its internal value; an ask looks its trials up (only the new ones and those not
  finished at the last read), splits the rows with NumPy (a partial sort for the ~25 "below", ties in read order as
  Python's stable sort leaves them) and gathers the observation arrays by index, once per trial sampled;
- Optuna's ``_ParzenEstimator`` with two exact shortcuts: the inverse of the kernels' sort order is scattered, not
  sorted again, and ``log_pdf`` does the same IEEE operations in the same order on cache-sized blocks, takes each
  categorical weight's logarithm once, finds a discrete parameter's distinct kernels with one ``lexsort``, tests
  "out of range" only for candidates outside the parameter's range (rounding is monotonic) and writes the 0.0 of
  exponentials that underflow instead of computing them;
- candidate sampling, acquisition and the pick are Optuna's code.

tests/test_tpe.py checks the proposals against ``TPESampler`` with the same seed (pruned, failed, infeasible and
running trials, ties, conditional, categorical, int step, log parameters, both directions, Hyperband, independent,
group, no constant liar) and the estimator's numbers bit for bit. Where the same inputs are not guaranteed it runs
Optuna's own code: an Optuna other than ``CHECKED_OPTUNA`` (then it is ``TPESampler`` throughout), multi-objective
studies, a ``_parzen_estimator_cls`` set by the user, and studies with values that could sort or convert differently
(a NaN or non-float objective value, a parameter value its distribution rejects, a custom ``gamma`` that is not a
non-negative int).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe import _truncnorm
from optuna.samplers._tpe import parzen_estimator as _optuna_pe
from optuna.samplers._tpe import sampler as _optuna_tpe
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
from optuna.samplers._tpe.probability_distributions import (
    _BatchedCategoricalDistributions,
    _BatchedDiscreteTruncLogNormDistributions,
    _BatchedDiscreteTruncNormDistributions,
    _BatchedDistributions,
    _BatchedTruncLogNormDistributions,
    _BatchedTruncNormDistributions,
    _log_gauss_mass_unique,
    _MixtureOfProductDistribution,
    _unique_inverse_2d,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState

if TYPE_CHECKING:
    from collections.abc import Container, Sequence

    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

# The Optuna releases whose TPESampler._sample, _split_trials and _build_parzen_estimator this module reproduces.
CHECKED_OPTUNA = ("5.0.", "5.1.")  # 5.1 changed only comments in samplers/_tpe
_EXACT = optuna.__version__.startswith(CHECKED_OPTUNA)

READ_SECONDS = 1.0  # how long one read of the study serves the sampling of one trial
_COMPLETE, _PRUNED, _INFEASIBLE = 0, 1, 2
_INT = np.asarray([0]).dtype  # what np.asarray makes of Python ints (a categorical's internal values)


class CachedTPESampler(TPESampler):
    """``optuna.samplers.TPESampler`` (same options, same proposals) that reads the study once per trial and keeps
    what it derives from finished trials. ``fast_path_calls`` and ``optuna_path_calls`` count which way each
    ``_sample`` went."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if _EXACT:
            self._parzen_estimator_cls = _ParzenEstimatorSameNumbers
        self._rows: _FinishedRows | None = None
        self._read: _OneRead | None = None
        self._lock = threading.RLock()
        self.fast_path_calls = 0
        self.optuna_path_calls = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_rows=None, _read=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # The entry points get the study with one read of its trials for the trial being sampled: the study's trial
    # cache (what Optuna's own cached reads use; sweeplight's worker sets it under the ask lock), else a storage
    # read. Optuna reads the study again in each entry point and once more per parameter sampled alone (with
    # Hyperband, whose bracket study has no trial cache, each read goes to the storage): the same trials, unless
    # another process finishes one in between. The read serves one trial for at most READ_SECONDS (an objective
    # that suggests a parameter later gets a fresh read, as Optuna's constant liar would).

    def _one_read(self, study: Study, trial: FrozenTrial) -> Study:
        if not _EXACT:
            return study
        read = self._read
        key = (study._study_id, trial._trial_id)
        now = time.monotonic()
        if read is None or read.storage is not study._storage or read.key != key or now - read.at > READ_SECONDS:
            if read is None or read.key != key:
                source = getattr(study, "_study", study)  # a Hyperband bracket's own study holds the trial cache
                trials = source._get_trials(deepcopy=False, use_cache=True)
            else:
                trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            read = self._read = _OneRead(self, study._storage, key, trials, now)
        return cast("Study", _OneReadStudy(study, read))

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._read = None
        super().before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return super().infer_relative_search_space(self._one_read(study, trial), trial)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        return super().sample_relative(self._one_read(study, trial), trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return super().sample_independent(self._one_read(study, trial), trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
                    ) -> None:
        self._read = None
        super().after_trial(study, trial, state, values)

    def _sample(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._parzen_estimator_cls is not _ParzenEstimatorSameNumbers or study._is_multi_objective():
            self.optuna_path_calls += 1
            return super()._sample(study, trial, search_space)
        if self._gamma is None:
            self._gamma = _optuna_tpe.default_gamma  # single objective only here
        with self._lock:
            split = self._split(study, trial)
            below = above = None
            if split is not None:
                below = self._observations(study, split[0], [], search_space)
                above = self._observations(study, split[1], split[2], search_space)
        if below is None or above is None:
            self.optuna_path_calls += 1
            return super()._sample(study, trial, search_space)
        self.fast_path_calls += 1
        # TPESampler._sample from here on, with the observations _build_parzen_estimator would have built.
        parameters = self._parzen_estimator_parameters
        mpe_below = self._parzen_estimator_cls(below, search_space, parameters)
        mpe_above = self._parzen_estimator_cls(above, search_space, parameters)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    def _classify(self, study: Study, trials: list[FrozenTrial]) -> tuple[np.ndarray, list[FrozenTrial]]:
        """Per trial its row if finished (complete or pruned; a new one gets its row now), else -1; and the
        running trials. Call under the lock."""
        rows = self._rows
        if rows is None or not rows.serves(study):
            rows = self._rows = _FinishedRows(study)
        get = rows.row_of.get
        seen, seen_found = rows.last_read
        n = len(seen)
        if 0 < n <= len(trials) and trials[n - 1] is seen[-1] and trials[0] is seen[0] and trials[:n] == seen:
            # The read before this one, then new trials (a storage keeps its trial objects; a list comparison
            # looks at the pointers): only the new trials and those that were not finished are looked at.
            found = np.empty(len(trials), dtype=np.intp)
            found[:n] = seen_found
            found[n:] = [get(t._trial_id, -1) for t in trials[n:]]
        else:
            found = np.asarray([get(t._trial_id, -1) for t in trials], dtype=np.intp)
        running = []
        for i in np.flatnonzero(found < 0).tolist():
            t = trials[i]
            state = t.state
            if state == TrialState.COMPLETE or state == TrialState.PRUNED:
                found[i] = rows.add(t, study)
            elif state == TrialState.RUNNING:
                running.append(t)
        rows.sync()
        rows.last_read = (list(trials), found)
        return found, running

    def _split(self, study: Study, trial: FrozenTrial) -> _Split | None:
        """``_split_trials`` of the trials ``TPESampler._sample`` reads, as row numbers: (below rows by trial
        number, finished above rows by trial number, the running trials that go above); None where the rows cannot
        reproduce Optuna's sort. Once per trial sampled."""
        liar = self._constant_liar
        read = study._read if isinstance(study, _OneReadStudy) else None
        if read is not None:
            if read.split is not None and read.split[0] == liar:
                return read.split[1]
            found, running = read.classified()
        else:
            states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            trials = study._get_trials(deepcopy=False, states=states if liar else states[:2], use_cache=not liar)
            found, running = self._classify(study, trials)
        rows = self._rows
        assert rows is not None
        finished = found[found >= 0]  # in the order read: the order Python's stable sorts keep for ties
        # The constant liar counts every running trial but the one being sampled; without it, none.
        running = [t for t in running if t.number != trial.number] if liar else []
        if liar:
            finished = finished[rows.number[finished] != trial.number]
        split = self._split_rows(rows, finished, running)
        if read is not None:
            read.split = (liar, split)
        return split

    def _split_rows(self, rows: _FinishedRows, finished: np.ndarray, running: list[FrozenTrial]) -> _Split | None:
        if rows.exotic[finished].any():
            return None
        n_below = self._gamma(len(finished))
        if type(n_below) is not int or n_below < 0:  # Optuna would slice with it as given
            return None
        kind = rows.kind[finished]
        below = []
        for code in (_COMPLETE, _PRUNED, _INFEASIBLE):
            group = finished[kind == code]
            take = min(n_below, len(group))
            if take:
                if code == _COMPLETE:
                    keys = rows.value[group]
                    picked = _first_sorted(keys if rows.minimize else -keys, take)
                elif code == _PRUNED:  # by (-step, signed value): rarely needed, a full sort
                    picked = np.lexsort((rows.pruned_value[group], rows.pruned_step[group]))[:take]
                else:
                    picked = _first_sorted(rows.infeasibility[group], take)
                below.append(group[picked])
            n_below -= take
        below_rows = np.concatenate(below) if below else np.empty(0, dtype=np.intp)
        is_below = np.zeros(len(rows.number), dtype=bool)
        is_below[below_rows] = True
        above_rows = finished[~is_below[finished]]
        return _by_number(rows, below_rows), _by_number(rows, above_rows), running

    def _observations(self, study: Study, finished: np.ndarray, running: list[FrozenTrial],
                      search_space: dict[str, BaseDistribution]) -> dict[str, np.ndarray] | None:
        """``_get_internal_repr`` of the finished rows (sorted by trial number) and the running trials, merged by
        trial number; None where a value would not convert (Optuna's path raises then)."""
        rows = self._rows
        assert rows is not None
        columns = [rows.column(name, distribution) for name, distribution in search_space.items()]
        for column in columns:
            if column.missing:
                finished = finished[column.present.array[finished]]
        if any(column.bad and column.wrong.array[finished].any() for column in columns):
            return None
        extra: list[tuple[int, list[Any]]] = []
        for t in running:
            params = self._get_params(t, study)
            if search_space.keys() <= params.keys():
                try:
                    extra.append((t.number, [d.to_internal_repr(params[n]) for n, d in search_space.items()]))
                except ValueError:
                    return None
        if not len(finished) and not extra:
            return {name: np.asarray([]) for name in search_space}
        out = {name: column.values.array[finished] for name, column in zip(search_space, columns, strict=True)}
        if extra:
            numbers = np.concatenate([rows.number[finished], np.asarray([n for n, _ in extra], dtype=np.int64)])
            merged = np.argsort(numbers)
            for i, name in enumerate(search_space):
                tail = np.asarray([values[i] for _, values in extra])
                if len(finished) and out[name].dtype != tail.dtype:
                    return None
                out[name] = (np.concatenate([out[name], tail]) if len(finished) else tail)[merged]
        return out


def _first_sorted(keys: np.ndarray, take: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")[:take]`` without sorting all: every key up to the take-th smallest, in
    position order, then a stable sort of those."""
    if take < len(keys):
        candidates = np.flatnonzero(keys <= np.partition(keys, take - 1)[take - 1])
    else:
        candidates = np.arange(len(keys))
    return candidates[np.argsort(keys[candidates], kind="stable")[:take]]


def _by_number(rows: _FinishedRows, selected: np.ndarray) -> np.ndarray:
    numbers = rows.number[selected]
    if len(numbers) > 1 and not (numbers[1:] > numbers[:-1]).all():
        return selected[np.argsort(numbers)]
    return selected


_Split = tuple[np.ndarray, np.ndarray, list["FrozenTrial"]]


class _OneRead:
    """The study's trials read once for one trial's sampling, and what was derived from them."""

    def __init__(self, sampler: CachedTPESampler, storage: Any, key: tuple[int, int], trials: list[FrozenTrial],
                 at: float) -> None:
        self.sampler, self.storage, self.key, self.trials, self.at = sampler, storage, key, trials, at
        self.study: Study | None = None
        self.filtered: dict[tuple[TrialState, ...], list[FrozenTrial]] = {}
        self.split: tuple[bool, _Split | None] | None = None
        self._classified: tuple[np.ndarray, list[FrozenTrial]] | None = None

    def classified(self) -> tuple[np.ndarray, list[FrozenTrial]]:
        if self._classified is None:
            assert self.study is not None
            with self.sampler._lock:
                self._classified = self.sampler._classify(self.study, self.trials)
        return self._classified


_FINISHED = frozenset((TrialState.COMPLETE, TrialState.PRUNED))


class _OneReadStudy:
    """The study as the sampler's entry points get it, whose ``_get_trials`` answers from one read."""

    def __init__(self, study: Study, read: _OneRead) -> None:
        self._wrapped, self._read = study, read
        if read.study is None:
            read.study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        read = self._read
        trials = read.trials
        if states is not None:
            key = tuple(states)  # type: ignore[arg-type]
            if key not in read.filtered:
                if frozenset(key) == _FINISHED and not self._wrapped._is_multi_objective():
                    # the finished trials: those with a row, in the order read
                    found, _ = read.classified()
                    read.filtered[key] = list(itertools.compress(trials, (found >= 0).tolist()))
                else:
                    read.filtered[key] = [t for t in trials if t.state in states]
            trials = read.filtered[key]
        return copy.deepcopy(trials) if deepcopy else trials


class _Growing:
    """A 1-d array appended to in place (capacity doubles); ``array`` is the filled part."""

    __slots__ = ("_data", "_size")

    def __init__(self, dtype: Any) -> None:
        self._data = np.empty(256, dtype=dtype)
        self._size = 0

    def extend(self, values: Sequence[Any]) -> None:
        end = self._size + len(values)
        if end > len(self._data):
            data = np.empty(max(end, 2 * len(self._data)), dtype=self._data.dtype)
            data[: self._size] = self._data[: self._size]
            self._data = data
        self._data[self._size : end] = values
        self._size = end

    @property
    def array(self) -> np.ndarray:
        return self._data[: self._size]


class _Column:
    """One parameter (name and distribution) over the rows: whether the trial has it, its internal value (the
    dtype ``np.asarray`` gives a list of them), whether ``to_internal_repr`` rejects it."""

    __slots__ = ("bad", "integer", "missing", "present", "values", "wrong")

    def __init__(self, distribution: BaseDistribution) -> None:
        self.integer = isinstance(distribution, CategoricalDistribution)
        self.present, self.wrong = _Growing(bool), _Growing(bool)
        self.values = _Growing(_INT if self.integer else np.float64)
        self.missing = self.bad = 0


class _FinishedRows:
    """One row per finished (complete or pruned) trial of one study, in the order first seen."""

    def __init__(self, study: Study) -> None:
        self.storage, self.study_id = study._storage, study._study_id
        self.minimize = study.direction == StudyDirection.MINIMIZE
        self.row_of: dict[int, int] = {}
        self._new: list[tuple[int, int, float, float, float, float, bool]] = []
        self.params: list[dict[str, Any]] = []
        self._fields = {name: _Growing(dtype) for name, dtype in (
            ("number", np.int64), ("kind", np.int8), ("value", np.float64), ("pruned_step", np.float64),
            ("pruned_value", np.float64), ("infeasibility", np.float64), ("exotic", bool))}
        self._columns: dict[tuple[str, BaseDistribution], _Column] = {}
        self.last_read: tuple[list[FrozenTrial], np.ndarray] = ([], np.empty(0, dtype=np.intp))

    number = property(lambda self: self._fields["number"].array)
    kind = property(lambda self: self._fields["kind"].array)
    value = property(lambda self: self._fields["value"].array)
    pruned_step = property(lambda self: self._fields["pruned_step"].array)
    pruned_value = property(lambda self: self._fields["pruned_value"].array)
    infeasibility = property(lambda self: self._fields["infeasibility"].array)
    exotic = property(lambda self: self._fields["exotic"].array)

    def serves(self, study: Study) -> bool:
        return study._storage is self.storage and study._study_id == self.study_id

    def add(self, trial: FrozenTrial, study: Study) -> int:
        """A new finished trial's row: what ``_split_trials`` sorts it on, worked out once."""
        exotic = False
        value = step = inter = infeasibility = 0.0
        try:
            infeasibility = _optuna_tpe._get_infeasible_trial_score(trial)
            exotic |= not isinstance(infeasibility, (int, float)) or math.isnan(infeasibility)
            if infeasibility > 0:
                kind = _INFEASIBLE
            elif trial.state == TrialState.COMPLETE:
                kind = _COMPLETE
                value = trial.value
                exotic |= type(value) is not float or math.isnan(value)
            else:
                kind = _PRUNED
                step, inter = _optuna_tpe._get_pruned_trial_score(trial, study)
                exotic |= type(step) is not int or abs(step) > 2**52 or type(inter) is not float
        except (TypeError, ValueError):  # whatever Optuna would make of it, its own path does
            kind, exotic = _COMPLETE, True
        row = len(self.params)
        self.row_of[trial._trial_id] = row
        self.params.append(trial.params)
        if exotic:
            value = step = inter = infeasibility = 0.0
        self._new.append((trial.number, kind, value, step, inter, infeasibility, exotic))
        return row

    def sync(self) -> None:
        """Append the rows added since the last call to the arrays."""
        if self._new:
            for field, values in zip(self._fields.values(), zip(*self._new, strict=True), strict=True):
                field.extend(values)
            self._new = []

    def column(self, name: str, distribution: BaseDistribution) -> _Column:
        """The parameter's column, brought up to the current rows."""
        key = (name, distribution)
        column = self._columns.get(key)
        if column is None:
            column = self._columns[key] = _Column(distribution)
        start = len(column.present.array)
        if start < len(self.params):
            kind = int if column.integer else float
            present, values, wrong = [], [], []
            for params in self.params[start:]:
                has = name in params
                value: Any = 0
                bad = False
                if has:
                    try:
                        value = distribution.to_internal_repr(params[name])
                        bad = type(value) is not kind
                    except ValueError:
                        bad = True
                present.append(has)
                values.append(0 if bad else value)
                wrong.append(bad)
            column.present.extend(present)
            column.values.extend(values)
            column.wrong.extend(wrong)
            column.missing += present.count(False)
            column.bad += wrong.count(True)
        return column


class _ParzenEstimatorSameNumbers(_ParzenEstimator):
    """Optuna's ``_ParzenEstimator`` with the same numbers, sooner: the inverse of the kernels' sort order is
    scattered instead of sorted again, and ``log_pdf`` runs on ``_Mixture``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mixture = self._mixture_distribution
        self._mixture_distribution = _Mixture(mixture.weights, mixture.distributions)

    def _calculate_numerical_distributions(
        self,
        observations: np.ndarray,
        search_space: FloatDistribution | IntDistribution,
        parameters: _ParzenEstimatorParameters,
    ) -> _BatchedDistributions:
        # Optuna 5.0's code, but for the marked line.
        low = search_space.low
        high = search_space.high
        if search_space.step is not None:
            low -= search_space.step / 2
            high += search_space.step / 2
        if search_space.log:
            observations = np.log(observations)
            low = np.log(low)
            high = np.log(high)

        mus = observations

        def compute_sigmas() -> np.ndarray:
            sorted_indices = np.argsort(mus)
            sorted_mus = mus[sorted_indices]
            sorted_mus_with_endpoints = np.empty(len(mus) + 2, dtype=float)
            sorted_mus_with_endpoints[0] = low
            sorted_mus_with_endpoints[1:-1] = sorted_mus
            sorted_mus_with_endpoints[-1] = high

            sorted_sigmas = np.maximum(
                sorted_mus_with_endpoints[1:-1] - sorted_mus_with_endpoints[0:-2],
                sorted_mus_with_endpoints[2:] - sorted_mus_with_endpoints[1:-1],
            )

            if not parameters.consider_endpoints and sorted_mus_with_endpoints.shape[0] >= 4:
                sorted_sigmas[0] = sorted_mus_with_endpoints[2] - sorted_mus_with_endpoints[1]
                sorted_sigmas[-1] = sorted_mus_with_endpoints[-2] - sorted_mus_with_endpoints[-3]

            # sigmas = sorted_sigmas[np.argsort(sorted_indices)]: the inverse permutation, without a sort.
            sigmas = np.empty_like(sorted_sigmas)
            sigmas[sorted_indices] = sorted_sigmas

            # We adjust the range of the 'sigmas' according to the 'consider_magic_clip' flag.
            maxsigma = high - low
            if parameters.consider_magic_clip:
                n_kernels = len(observations) + 1  # NOTE(sawa3030): +1 for prior.
                minsigma = (high - low) / min(100.0, (1.0 + n_kernels))
            else:
                minsigma = _optuna_pe.EPS
            return np.asarray(np.clip(sigmas, minsigma, maxsigma))

        sigmas = compute_sigmas()
        mus = np.append(mus, [0.5 * (low + high)])
        sigmas = np.append(sigmas, [high - low])

        if search_space.step is None:
            if not search_space.log:
                return _BatchedTruncNormDistributions(mus, sigmas, search_space.low, search_space.high)
            else:
                return _BatchedTruncLogNormDistributions(mus, sigmas, search_space.low, search_space.high)
        else:
            if not search_space.log:
                return _BatchedDiscreteTruncNormDistributions(
                    mus, sigmas, search_space.low, search_space.high, search_space.step
                )
            else:
                return _BatchedDiscreteTruncLogNormDistributions(
                    mus, sigmas, search_space.low, search_space.high, search_space.step
                )


class _Mixture(_MixtureOfProductDistribution):
    """``_MixtureOfProductDistribution`` whose ``log_pdf`` gives the same float64 values with fewer passes over the
    (candidates x kernels) arrays: the same elementwise operations in the same order, in place and a few candidates
    at a time (cache-sized blocks), the logarithm of a categorical's weights taken once per kernel instead of once
    per candidate and kernel, a discrete parameter's distinct kernels found with one ``lexsort``, the out-of-range
    test of ``_truncnorm.logpdf`` made only for candidates outside ``[low, high]`` (one inside is inside every
    kernel's normalized bounds, rounding being monotonic), and the log-sum-exp's exponentials that underflow to 0.0
    written, not computed."""

    __slots__ = ()

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        weighted_log_pdf = np.zeros((len(x), len(self.weights)), dtype=np.float64)
        cont_dists = []
        x_cont = []
        lows_cont = []
        highs_cont = []
        for i, d in enumerate(self.distributions):
            if isinstance(d, _BatchedCategoricalDistributions):
                # np.log(take_along_axis(weights, x)): the same logarithms, taken once per kernel and choice.
                xi = x[:, i].astype(np.int64)
                weighted_log_pdf += np.log(np.ascontiguousarray(d.weights.T))[xi]
                continue
            is_log = d.is_log
            if (step := d.step) == 0.0:
                cont_dists.append(d)
                x_cont.append(np.log(x[:, i]) if is_log else x[:, i])
                lows_cont.append(d.adapted_low)
                highs_cont.append(d.adapted_high)
            else:  # Optuna's code, but for _unique_pairs and the gather
                xi_uniq, xi_inv = np.unique(x[:, i], return_inverse=True)
                mu_uniq, sigma_uniq, mu_sigma_inv = _unique_pairs(d.mu, d.sigma)
                left = np.log(xi_uniq - step / 2) if is_log else (xi_uniq - step / 2)
                right = np.log(xi_uniq + step / 2) if is_log else (xi_uniq + step / 2)
                weighted_log_pdf += _log_gauss_mass_unique(
                    (left[:, np.newaxis] - mu_uniq) / sigma_uniq,
                    (right[:, np.newaxis] - mu_uniq) / sigma_uniq,
                )[xi_inv][:, mu_sigma_inv]  # [np.ix_(xi_inv, mu_sigma_inv)], gathered in two steps
                weighted_log_pdf -= _truncnorm._log_gauss_mass(
                    (d.adapted_low - mu_uniq) / sigma_uniq, (d.adapted_high - mu_uniq) / sigma_uniq
                )[mu_sigma_inv]

        if len(x_cont):
            mus_cont = np.asarray([d.mu for d in cont_dists]).T
            sigmas_cont = np.asarray([d.sigma for d in cont_dists]).T
            lows, highs = np.asarray(lows_cont), np.asarray(highs_cont)
            weighted_log_pdf += _truncnorm_logpdf_sum(np.asarray(x_cont).T, lows, highs, mus_cont, sigmas_cont)

        weighted_log_pdf += np.log(self.weights[np.newaxis])
        max_ = weighted_log_pdf.max(axis=1)
        # We need to avoid (-inf) - (-inf) when the probability is zero.
        max_[np.isneginf(max_)] = 0
        np.subtract(weighted_log_pdf, max_[:, None], out=weighted_log_pdf)
        _exp_in_place(weighted_log_pdf)
        with np.errstate(divide="ignore"):  # Suppress warning in log(0).
            return np.log(weighted_log_pdf.sum(axis=1)) + max_


_UNDERFLOW = -800.0  # np.exp is 0.0 at and below: e**-800 is ~1e-24 of the smallest subnormal double
_EXP_UNDERFLOWS_TO_ZERO = bool((np.exp(np.array([_UNDERFLOW, -1e4, -np.inf])) == 0.0).all())
_EXP_FAST = -707.0  # NumPy's SIMD exp is ~10x slower below about -707.8 (results near and below DBL_MIN)


def _exp_in_place(values: np.ndarray) -> None:
    """``np.exp``, value for value, in place, without NumPy's slow path for tiny results, which most of a
    log-sum-exp over thousands of kernels needs: the values above ``_EXP_FAST`` computed as they are, those below
    ``_UNDERFLOW`` 0.0 (what np.exp gives), the few between computed apart (np.exp's value does not depend on the
    other values computed with it)."""
    low = values < _EXP_FAST  # NaN is not
    if not _EXP_UNDERFLOWS_TO_ZERO or not low.any():
        np.exp(values, out=values)
        return
    flat = values.reshape(-1)
    between = np.flatnonzero(low & (values > _UNDERFLOW))
    exp_between = np.exp(flat[between])
    np.maximum(values, _EXP_FAST, out=values)
    np.exp(values, out=values)
    np.multiply(values, ~low, out=values)  # 0.0 where low; x * 1.0 is x (inf, nan too)
    flat[between] = exp_between


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_unique_inverse_2d(a, b)``: the distinct (a, b) pairs in lexicographic order and each pair's index among
    them, which do not depend on how the pairs are sorted; one ``lexsort`` (fast on the few distinct values of a
    discrete parameter's kernels) instead of two argsorts. Where a NaN or a negative zero could make the order of
    equal keys show, Optuna's function."""
    if np.isnan(a).any() or np.isnan(b).any() or np.signbit(a[a == 0]).any() or np.signbit(b[b == 0]).any():
        return _unique_inverse_2d(a, b)
    order = np.lexsort((b, a))
    a_order = a[order]
    b_order = b[order]
    is_first_occurrence = np.empty_like(a, dtype=bool)
    is_first_occurrence[0] = True
    is_first_occurrence[1:] = (a_order[1:] != a_order[:-1]) | (b_order[1:] != b_order[:-1])
    inv = np.empty(a_order.size, dtype=int)
    inv[order] = np.cumsum(is_first_occurrence) - 1
    return a_order[is_first_occurrence], b_order[is_first_occurrence], inv


def _sum_is_sequential() -> bool:
    """Whether ``ndarray.sum(axis=-1)`` over fewer than 8 values adds them left to right (NumPy's pairwise sum
    does below 8), so that adding the columns one by one gives its values."""
    values = np.random.default_rng(0).standard_normal((4, 3, 7)) * np.logspace(-9, 9, 7)
    return all(np.array_equal(values[..., :d].sum(axis=-1), sum(values[..., j] for j in range(d))) for d in range(1, 8))


_SEQUENTIAL_SUM = _sum_is_sequential()


def _truncnorm_logpdf_sum(x: np.ndarray, lows: np.ndarray, highs: np.ndarray, mus: np.ndarray,
                          sigmas: np.ndarray) -> np.ndarray:
    """``_truncnorm.logpdf(x[:, None, :], a=(lows - mus) / sigmas, b=(highs - mus) / sigmas, loc=mus,
    scale=sigmas).sum(axis=-1)``, value for value: x is (candidates, dims), mus and sigmas (kernels, dims).

    One dimension at a time on contiguous (candidates, kernels) slabs instead of one strided (candidates, kernels,
    dims) array: the same IEEE operations element by element (the kernels' terms are Optuna's own, computed on the
    same (kernels, dims) arrays), summed over the dimensions left to right as ``sum(axis=-1)`` does."""
    a = (lows - mus) / sigmas
    b = (highs - mus) / sigmas
    a, b = np.atleast_1d(a, b)
    d = mus.shape[1]
    if not _SEQUENTIAL_SUM or d >= 8:
        return _truncnorm.logpdf(x[:, np.newaxis, :], a=a, b=b, loc=mus, scale=sigmas).sum(axis=-1)
    mass = _truncnorm._log_gauss_mass(a, b).T.copy()
    log_scale = np.log(sigmas).T.copy()
    mus_t, sigmas_t, a_t, b_t = mus.T.copy(), sigmas.T.copy(), a.T, b.T
    # np.select's cases: -inf where out of range, then nan where a == b; a candidate inside [low, high] is inside
    # every kernel's normalized bounds (subtraction and division by a positive sigma round monotonically).
    inside = (x >= lows) & (x <= highs)
    degenerate = [np.flatnonzero(a_t[j] == b_t[j]) for j in range(d)]
    n, k = len(x), len(mus)
    total = np.empty((n, k), dtype=np.float64)
    rows = max(1, _BLOCK // k)
    buf = np.empty((min(rows, n), k), dtype=np.float64)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = total[start:stop]
        for j in range(d):
            t = block if j == 0 else buf[: stop - start]
            np.subtract(x[start:stop, j, np.newaxis], mus_t[j], out=t)
            np.divide(t, sigmas_t[j], out=t)  # the normalized x
            outside = None if inside[start:stop, j].all() else (t < a_t[j]) | (t > b_t[j])
            np.square(t, out=t)  # _norm_logpdf: -(x**2) / 2.0 - C
            np.negative(t, out=t)
            np.divide(t, 2.0, out=t)
            np.subtract(t, _truncnorm._norm_pdf_logC, out=t)
            np.subtract(t, mass[j], out=t)
            np.subtract(t, log_scale[j], out=t)
            if outside is not None:
                t[outside] = -np.inf
            if len(degenerate[j]):
                t[:, degenerate[j]] = np.nan
            if j:
                block += t
    return total


_BLOCK = 1 << 15  # elements of a (candidates x kernels) block: 256 KiB of float64
