"""The halt a server obeys (:mod:`copml.oversight`): read from the store every second and
at once after this server's own ``POST /v1/admin/halt``, so that every worker and replica
is in the safe state within a second or two of the record."""

from __future__ import annotations

import threading

from fastapi import HTTPException
from sqlalchemy import Engine

from copml import oversight
from copml.project import Project


class HaltSlot:
    def __init__(self, project: Project, engine: Engine) -> None:
        self._project = project
        self._engine = engine
        # A read and its assignment under one lock: a poll that read the store before a
        # halt committed must not overwrite the halt this server has just set.
        self._lock = threading.Lock()
        self.current: oversight.Halt | None = None

    def refresh(self) -> oversight.Halt | None:
        with self._lock:
            self.current = oversight.current(self._engine, self._project)
            return self.current

    def set(self, found: oversight.Halt | None) -> None:
        with self._lock:
            self.current = found

    def refuse_if_halted(self) -> None:
        """A 503 with ``Retry-After`` when the project is halted into ``refuse``."""
        found = self.current
        if found is not None and found.refuses:
            raise HTTPException(
                503,
                f"halted by {found.actor}: {found.reason} (nothing is scored until resumed)",
                headers={"Retry-After": str(found.retry_after_seconds)},
            )

    def reviews_all(self) -> bool:
        """Whether every decision must go to a person (halted into ``review_all``)."""
        found = self.current
        return found is not None and not found.refuses
