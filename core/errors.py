"""Typed errors. Every error a user can cause derives from IntentRecError, so the CLI can print it
as one clear line instead of a traceback."""

from __future__ import annotations


class IntentRecError(Exception):
    """Base class for errors that are the user's to fix (bad input, missing files, bad settings)."""


class DataError(IntentRecError):
    """Malformed input data. Names the file, the row (1-based, header = row 1) and the problem."""

    def __init__(self, problem: str, *, file: str | None = None, row: int | None = None):
        self.problem = problem
        self.file = file
        self.row = row
        where = []
        if file:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        prefix = ":".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class UnknownUserError(IntentRecError):
    def __init__(self, user_id: str, dataset: str | None = None):
        self.user_id = user_id
        self.dataset = dataset
        suffix = f" in dataset {dataset!r}" if dataset else ""
        super().__init__(f"unknown user {user_id!r}{suffix}")


class EmptyHistoryError(IntentRecError):
    def __init__(self, user_id: str, detail: str = ""):
        self.user_id = user_id
        super().__init__(f"user {user_id!r} has an empty behaviour history{(': ' + detail) if detail else ''}")
