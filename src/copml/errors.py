"""Errors a user can act on: each carries what went wrong and where, never a traceback."""

from __future__ import annotations


class CopmlError(Exception):
    """A failed check or bad input: the CLI prints the message and exits with ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)


class SpecError(CopmlError):
    """``copml.yaml`` is invalid; details name the field path and line."""


class DataValidationError(CopmlError):
    """Data does not match the declared ``data`` section; details list every violation."""


class NotFoundError(CopmlError):
    """A snapshot, model version or prediction that the command needs does not exist."""


class UnknownPrediction(NotFoundError):
    """No prediction has this id. The CLI names the id; the API answers without it."""

    def __init__(self, prediction_id: str) -> None:
        super().__init__(f"no prediction {prediction_id!r}")


class UserCodeError(CopmlError):
    """The team's ``train`` or KPI function could not be imported or failed."""
