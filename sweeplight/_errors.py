"""The error tree.

Every error a user can cause is a :class:`SweeplightError` whose message is one line naming the field, the value
received, what is allowed and the fix. The CLI prints that line (no traceback unless ``--debug``) and exits with
the error's ``exit_code``.
"""

from __future__ import annotations

__all__ = ["SpecError", "StorageError", "StudyStopped", "SweeplightError", "TrialConfigError"]


class SweeplightError(Exception):
    """Base class of every error sweeplight raises on purpose."""

    exit_code = 1


class SpecError(SweeplightError):
    """The study file (or a ``--set`` override) is invalid; nothing has been created."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class StorageError(SweeplightError):
    """The study's storage cannot be reached or holds an incompatible study."""

    exit_code = 2


class TrialConfigError(SweeplightError):
    """A trial showed the study is misconfigured (e.g. the objective metric is never logged).

    Every trial would fail the same way, so the worker stops the whole study instead of burning the budget.
    """

    exit_code = 2


class StudyStopped(SweeplightError):
    """The study stopped before its budget was met (too many failed trials)."""

    exit_code = 1
