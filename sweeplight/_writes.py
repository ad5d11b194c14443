"""Batched storage writes: one round trip where Optuna's storage API makes one per value.

Optuna commits each ``set_trial_system_attr`` on its own, after reading the trial back: an fsync on SQLite and
journal files, a round trip to a database server, two SQL statements per attribute. A worker stamps each trial with
five or six attributes when it asks and records three or more with the result, so one write per attribute was most
of sweeplight's cost per trial. Here a trial's attributes go in one transaction (one multi-row upsert per table) or
one journal append, and a result's attributes go with the trial's final state.

The functions reach into Optuna's RDB and journal storages (their sessions, models and log records); a storage they
do not know gets the plain one-call-per-value API. Each takes the worker's retrying storage and waits out outages
like any storage call: a transaction is all or nothing, and journal records replay idempotently.

    trial_id = create_running_trial(storage, study_id, {"sweeplight:heartbeat": time.time()})
    set_trial_attrs(storage, trial_id, system={"sweeplight:pid": 123}, user={"test_acc": 0.9})
    finish_trial(storage, trial_id, TrialState.COMPLETE, [0.93], system={"sweeplight:epochs": 20})
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator, Sequence
from typing import Any


def set_trial_attrs(storage: Any, trial_id: int, *, system: dict[str, Any] | None = None,
                    user: dict[str, Any] | None = None) -> None:
    """Write several attributes of a running trial at once; like the single calls, raises
    ``UpdateFinishedTrialError`` for a finished trial (and writes nothing then)."""
    _write(storage, trial_id, system or {}, user or {}, None)


def finish_trial(storage: Any, trial_id: int, state: Any, values: Sequence[float] | None, *,
                 system: dict[str, Any] | None = None, user: dict[str, Any] | None = None) -> bool:
    """``set_trial_state_values`` for a finished state, the trial's last attributes written with it: either all of
    it is stored or none (``UpdateFinishedTrialError`` when the trial was already finished)."""
    return _write(storage, trial_id, system or {}, user or {}, (state, values))


def create_running_trial(storage: Any, study_id: int, system: dict[str, Any]) -> int:
    """A new RUNNING trial carrying ``system`` attributes (a worker's stamp), in the fewest round trips.

    A journal takes the trial and its attributes as one record. Optuna writes a template trial's attributes to a
    database one by one, reading the trial back before each: a plain new trial, then one batch, is cheaper there.
    """
    import optuna
    from optuna.trial import FrozenTrial, TrialState

    if isinstance(_backend(storage), optuna.storages.RDBStorage):
        trial_id = storage.create_new_trial(study_id)
        set_trial_attrs(storage, trial_id, system=system)
        return trial_id
    template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
                           datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs=system,
                           intermediate_values={}, trial_id=-1)
    return storage.create_new_trial(study_id, template_trial=template)


def _backend(storage: Any) -> Any:
    """The storage under sweeplight's retrying wrapper and Optuna's cache."""
    import optuna

    from sweeplight._retrying import RetryingStorage

    if isinstance(storage, RetryingStorage):
        storage = storage._inner
    return storage._backend if isinstance(storage, optuna.storages._CachedStorage) else storage


def _write(storage: Any, trial_id: int, system: dict, user: dict, final: tuple | None) -> Any:
    import optuna

    from sweeplight._retrying import RetryingStorage

    if isinstance(storage, RetryingStorage):
        return storage.retried(_write, storage._inner, trial_id, system, user, final)
    backend = _backend(storage)
    if isinstance(backend, optuna.storages.RDBStorage) and backend.engine.name in ("sqlite", "postgresql"):
        return _rdb_write(backend, trial_id, system, user, final)
    if isinstance(backend, optuna.storages.JournalStorage) and hasattr(backend, "_replay_result"):
        return _journal_write(backend, trial_id, system, user, final)
    for key, value in system.items():
        storage.set_trial_system_attr(trial_id, key, value)
    for key, value in user.items():
        storage.set_trial_user_attr(trial_id, key, value)
    return storage.set_trial_state_values(trial_id, *final) if final else None


def _rdb_write(storage: Any, trial_id: int, system: dict, user: dict, final: tuple | None) -> Any:
    """One check of the trial, one multi-row upsert per attribute table, then the state: one transaction."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.exc import IntegrityError

    if storage.engine.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    try:
        with _create_scoped_session(storage.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=final is not None)
            storage.check_trial_is_updatable(trial_id, trial.state)
            for model, attrs in ((models.TrialSystemAttributeModel, system), (models.TrialUserAttributeModel, user)):
                if attrs:
                    rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
                    statement = insert(model).values(rows)
                    session.execute(statement.on_conflict_do_update(
                        index_elements=[model.trial_id, model.key], set_={"value_json": statement.excluded.value_json}))
            if final is None:
                return None
            state, values = final
            for objective, value in enumerate(values or ()):  # as RDBStorage.set_trial_state_values does
                storage._set_trial_value_without_commit(session, trial, objective, value)
            trial.state = state
            trial.datetime_complete = datetime.datetime.now()
    except IntegrityError:  # as Optuna: another process wrote the same rows first
        return False
    return True if final is not None else None


def _journal_write(storage: Any, trial_id: int, system: dict, user: dict, final: tuple | None) -> Any:
    """The journal's own records (one attribute each, as its replay expects), appended under one lock."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages.journal._storage import UNUPDATABLE_MSG, JournalOperation

    worker = storage._replay_result.worker_id
    logs = [{"op_code": JournalOperation.SET_TRIAL_SYSTEM_ATTR, "worker_id": worker, "trial_id": trial_id,
             "system_attr": {key: value}} for key, value in system.items()]
    logs += [{"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "worker_id": worker, "trial_id": trial_id,
              "user_attr": {key: value}} for key, value in user.items()]
    if final is not None:
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        logs.append({"op_code": JournalOperation.SET_TRIAL_STATE_VALUES, "worker_id": worker, "trial_id": trial_id,
                     "state": final[0], "values": final[1],
                     "datetime_complete": now.isoformat(timespec="microseconds")})
    if not logs:
        return None
    with storage._thread_lock:
        # As of the last read (the tell, or taking a waiting trial, has just read the log): a trial finished since
        # is caught after the append.
        trial = storage._replay_result.get_trial(trial_id)  # KeyError for an unknown trial, as the single calls
        if trial.state.is_finished():
            raise UpdateFinishedTrialError(UNUPDATABLE_MSG.format(trial_number=trial.number))
        storage._backend.append_logs(logs)
        finished = False
        while True:  # finished by another worker since the check: the replay raises once for each record of ours
            try:
                storage._sync_with_backend()
                break
            except UpdateFinishedTrialError:
                finished = True
    if finished:
        raise UpdateFinishedTrialError(UNUPDATABLE_MSG.format(trial_number=trial.number))
    return True if final is not None else None


def set_trial_params(storage: Any, trial_id: int, params: list[tuple[str, float, Any]]) -> None:
    """Write a running trial's sampled parameters, (name, internal value, distribution) each, in one transaction or
    one journal append: Optuna writes each one as ``Trial.suggest_*`` returns it (a commit, or an fsynced append,
    per parameter: 8 per ask on the digits study). Checked as Optuna checks them (the trial is running, the
    distribution fits the study's earlier ones)."""
    import optuna

    from sweeplight._retrying import RetryingStorage

    if not params:
        return
    if isinstance(storage, RetryingStorage):
        storage.retried(set_trial_params, storage._inner, trial_id, params)
        return
    backend = _backend(storage)
    if isinstance(storage, optuna.storages._CachedStorage) and isinstance(backend, optuna.storages.RDBStorage) and (
            hasattr(storage, "_studies") and hasattr(backend, "_set_trial_param_without_commit")):
        _rdb_params(storage, backend, trial_id, params)
    elif isinstance(backend, optuna.storages.JournalStorage) and hasattr(backend, "_replay_result"):
        _journal_params(backend, trial_id, params)
    else:
        for name, value, distribution in params:
            storage.set_trial_param(trial_id, name, value, distribution)


def _rdb_params(cached: Any, storage: Any, trial_id: int, params: list[tuple[str, float, Any]]) -> None:
    """What ``_CachedStorage.set_trial_param`` does for each parameter, in one session: the trial is read and
    checked once, each distribution is checked against the study's (as Optuna, a query for a parameter this process
    has not seen yet), and the rows go in with one commit."""
    from optuna.distributions import check_distribution_compatibility, distribution_to_json
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with cached._lock:
        study_id, _ = cached._trial_id_to_study_id_and_number[trial_id]
        known = cached._studies[study_id].param_distribution
        with _create_scoped_session(storage.scoped_session, True) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            storage.check_trial_is_updatable(trial_id, trial.state)
            for name, value, distribution in params:
                previous = known.get(name)
                if previous is None:  # Optuna's own call: it looks the study's first record of the name up
                    storage._set_trial_param_without_commit(session, trial_id, name, value, distribution, None)
                    continue
                check_distribution_compatibility(previous, distribution)
                session.add(models.TrialParamModel(trial_id=trial_id, param_name=name, param_value=value,
                                                   distribution_json=distribution_to_json(distribution)))
        for name, _, distribution in params:
            known.setdefault(name, distribution)


def _journal_params(storage: Any, trial_id: int, params: list[tuple[str, float, Any]]) -> None:
    """The journal's SET_TRIAL_PARAM records, appended at once; its replay checks each as the single call's does."""
    from optuna.distributions import distribution_to_json
    from optuna.storages.journal._storage import JournalOperation

    worker = storage._replay_result.worker_id
    logs = [{"op_code": JournalOperation.SET_TRIAL_PARAM, "worker_id": worker, "trial_id": trial_id,
             "param_name": name, "param_value_internal": value, "distribution": distribution_to_json(distribution)}
            for name, value, distribution in params]
    with storage._thread_lock:
        storage._backend.append_logs(logs)
        storage._sync_with_backend()


class _HeldParams:
    """The trial's storage while its space is sampled: parameter writes are held, everything else goes through."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.params: list[tuple[str, float, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: Any) -> None:
        self.params.append((name, value, distribution))


@contextlib.contextmanager
def params_in_one_write(trial: Any) -> Iterator[None]:
    """Sample a trial's whole space with one parameter write at the end (``set_trial_params``) instead of one per
    ``suggest_*`` call. The parameters sampled are written even when sampling stops with an error, so a failed
    trial still shows what it was given."""
    storage = trial.storage
    held = _HeldParams(storage)
    trial.storage = held
    try:
        yield
    finally:
        trial.storage = storage
        set_trial_params(storage, trial._trial_id, held.params)
