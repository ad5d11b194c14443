"""A storage wrapper that waits out outages: a PostgreSQL restart, a locked SQLite file, a flaky NFS mount.

Optuna's storages raise on the first failed call; a worker that crashed on a 20-second database restart would lose
its running trial. Every storage call here retries transient errors with capped exponential backoff for up to
``max_wait`` seconds, then raises. Errors that are answers (a missing study, a finished trial) pass through at once.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import optuna
from optuna.storages import BaseStorage

from sweeplight._storage import mask_url

_last_recovery = float("-inf")  # monotonic time when this process last saw an outage end


def last_recovery() -> float:
    """When (``time.monotonic()``) a storage call last succeeded after failing; -inf if none ever failed."""
    return _last_recovery


# Every public method of BaseStorage: forwarded to the wrapped storage with retries.
_METHODS = sorted(n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n)))


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later retry can cure: lost connections, locks, timeouts, I/O hiccups.

    Optuna wraps driver errors in ``StorageInternalError``; the cause decides.
    """
    if isinstance(exc, optuna.exceptions.StorageInternalError):
        cause = exc.__cause__ or exc.__context__
        return cause is not None and is_transient(cause)
    try:
        import sqlalchemy.exc as sa
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        sa = None
    if sa is not None:
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


class _Retrying:
    def __init__(self, inner: BaseStorage, *, max_wait: float = 300.0, label: str = "storage") -> None:
        self._inner = inner
        self._max_wait = max_wait
        self._label = mask_url(label)

    def __getattr__(self, name: str) -> Any:  # anything else (e.g. RDB helpers) goes straight through
        return getattr(self._inner, name)

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        return self.retried(getattr(self._inner, name), *args, **kwargs)

    def retried(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, retried like every storage method (for helpers that batch calls)."""
        start, delay, warned = time.monotonic(), 0.25, False
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                waited = time.monotonic() - start
                if not is_transient(exc) or waited >= self._max_wait:
                    raise
                if not warned:
                    first = mask_url(" ".join(str(exc).split()))[:160]
                    print(f"sweeplight: {self._label} unavailable ({type(exc).__name__}: {first}); retrying for up "
                          f"to {self._max_wait:.0f} s", file=sys.stderr, flush=True)
                    warned = True
                time.sleep(min(delay, max(0.0, self._max_wait - waited)))
                delay = min(delay * 2, 10.0)
                continue
            if warned:
                global _last_recovery
                _last_recovery = time.monotonic()
                print(f"sweeplight: {self._label} is back after {time.monotonic() - start:.1f} s", file=sys.stderr,
                      flush=True)
            return result


def _forward(name: str) -> Any:
    def method(self: _Retrying, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    method.__name__ = name
    method.__doc__ = getattr(BaseStorage, name).__doc__
    return method


# Built with type() so the forwarding methods exist before ABCMeta checks for abstract methods.
RetryingStorage: type = type("RetryingStorage", (_Retrying, BaseStorage), {n: _forward(n) for n in _METHODS})


def retrying(storage: BaseStorage, *, max_wait: float = 300.0, label: str = "storage") -> BaseStorage:
    """Wrap an opened Optuna storage so every call survives transient outages."""
    if isinstance(storage, optuna.storages.RDBStorage):
        storage = optuna.storages._CachedStorage(storage)  # what Optuna itself does for RDB storages
    return RetryingStorage(storage, max_wait=max_wait, label=label)


def unwrapped(storage: BaseStorage) -> BaseStorage:
    """The storage inside a retrying wrapper (calls on it fail at once), or ``storage`` itself."""
    return storage._inner if isinstance(storage, _Retrying) else storage
