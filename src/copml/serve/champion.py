"""The model a server answers with, and how it changes without dropping a request.

A new champion is loaded beside the current one, its artifact checked against the sha256
recorded at registration, warmed with its own input example, and only then swapped in by
replacing one reference. A group already being scored keeps the model it started with; a
version that fails any step is refused and the current one keeps serving.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from copml import events, registry
from copml.kinds import INPUT_PROFILE, kind_for
from copml.project import Project


@dataclass(frozen=True)
class Champion:
    version: str
    model: Any
    features: list[str]
    models: dict[str, str] = field(default_factory=dict)  # a composite model's parts
    profile: dict[str, Any] | None = None  # its training inputs' profile (None: not recorded)


def load_model(project: Project, mv: registry.ModelVersion) -> Champion:
    """``mv`` loaded, its artifact checked against its sha256 and warmed."""
    kind = kind_for(project.spec)
    path = registry.local_copy(project, mv)  # refuses a tampered artifact
    model = registry.load(project, mv)
    features = project.spec.data.features
    kind.warm(model, path, features)  # the first request pays nothing
    models = kind.served_models(mv.version, registry.parts(mv))
    return Champion(mv.version, model, features, models, input_profile(path))


def input_profile(path: Path) -> dict[str, Any] | None:
    """The input profile saved in a (verified) model folder; None for a version trained
    before profiles were recorded, or imported: its requests cannot be screened."""
    found = path / INPUT_PROFILE
    return json.loads(found.read_text()) if found.exists() else None


@dataclass(frozen=True)
class Refresh:
    model_version: str | None
    swapped: bool
    refused: str | None = None


class ChampionSlot:
    def __init__(self, project: Project, engine: Engine) -> None:
        self._project = project
        self._engine = engine
        self._lock = threading.Lock()  # one load at a time; reads never wait
        self.current: Champion | None = None

    def _subject(self, version: str) -> str:
        return events.model_subject(self._project.spec.project, version)

    def _retired(self, version: str) -> bool:
        """Only a recorded retirement unloads a model: a registry that does not answer
        (also ``None`` from ``champion()``) must never stop the service."""
        retired = events.latest(self._engine, events.Kind.MODEL_RETIRED, self._subject(version))
        return retired is not None

    def _load(self, mv: registry.ModelVersion) -> Champion:
        return load_model(self._project, mv)

    def refresh(self, actor: str = "system") -> Refresh:
        """Follow the registry's ``champion`` alias; swap when it moved and the new one works."""
        with self._lock:
            mv = registry.champion(self._project)
            current = self.current
            if mv is None and current is not None and self._retired(current.version):
                self.current = None  # a retired model stops answering (readyz turns 503)
                with self._engine.begin() as conn:
                    events.record(
                        conn,
                        events.Kind.SERVE_STOPPED,
                        actor=actor,
                        subject=self._subject(current.version),
                        reason="the model was retired",
                    )
                return Refresh(None, True)
            if mv is None or (current is not None and current.version == mv.version):
                return Refresh(current.version if current else None, False)
            subject = self._subject(mv.version)
            try:
                loaded = self._load(mv)
            except Exception as exc:  # whatever fails, the current model keeps serving
                reason = f"{type(exc).__name__}: {exc}"
                with self._engine.begin() as conn:
                    events.record(
                        conn,
                        events.Kind.SERVE_REFUSED,
                        actor=actor,
                        subject=subject,
                        reason=reason[:500],
                    )
                return Refresh(current.version if current else None, False, reason)
            self.current = loaded
            with self._engine.begin() as conn:
                events.record(
                    conn,
                    events.Kind.SERVE_DEPLOYED,
                    actor=actor,
                    subject=subject,
                    reason="the registry's champion moved",
                    evidence={"previous": current.version if current else None},
                )
            return Refresh(loaded.version, True)
