"""``copml reproduce VERSION``: retrain from the recorded lineage and compare.

The recorded snapshot, params and seed, and the recorded code: a clean checkout of the
recorded commit when the project is in a git repository (a warning when the version was
trained from a dirty tree, whose exact code no commit holds), else the code as it is now
(with a warning). The retrained model is compared with the registered one on the holdout
metrics and on every prediction over the snapshot; within 1e-9 it is reproduced. Nothing
is registered: reproducing is a check, and its result is an event.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from copml import events, registry, snapshots
from copml.errors import CopmlError, UserCodeError
from copml.evaluation import split_holdout
from copml.kinds import kind_for
from copml.project import Project, load_project
from copml.store import open_store
from copml.train import seed_everything
from copml.usercode import load_function

TOLERANCE = 1e-9


@dataclass
class Reproduction:
    version: str
    reproduced: bool
    code: str
    warnings: list[str] = field(default_factory=list)
    metric_differences: dict[str, dict[str, float]] = field(default_factory=dict)
    max_prediction_difference: float = 0.0
    rows: int = 0


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _checkout(project: Project, commit: str, into: Path) -> Path:
    """The project folder as it was at ``commit`` (``git archive``: no working tree touched)."""
    top = Path(_git(project.root, "rev-parse", "--show-toplevel"))
    relative = project.root.resolve().relative_to(top.resolve())
    archive = subprocess.run(
        ["git", "-C", str(top), "archive", "--format=tar", commit],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / relative


def _forget(dotted: str) -> None:
    top = dotted.partition(":")[0].split(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[name]


def reproduce(project: Project, version: str, *, actor: str = "system") -> Reproduction:
    mv = registry.get(project, version)
    lineage = mv.tagged_lineage
    if lineage.imported:
        raise CopmlError(
            f"v{version} was imported from {lineage.source_uri}: it has no recorded snapshot and "
            "code, so copml cannot reproduce it (reproduce it where it was trained)"
        )
    engine = open_store(project.db_url)
    snap = snapshots.get(engine, mv.snapshot_id)
    if snap is None:
        raise CopmlError(f"the training snapshot of v{version} is not in this store")
    commit, dirty = lineage.git_commit or "none", bool(lineage.git_dirty)
    warnings = []
    with tempfile.TemporaryDirectory(prefix="copml-reproduce-") as tmp:
        code_root = project.root
        code = "the project folder as it is now"
        if commit != "none":
            try:
                code_root = _checkout(project, commit, Path(tmp) / "checkout")
                code = f"a clean checkout of commit {commit[:12]}"
            except (subprocess.CalledProcessError, ValueError, OSError) as exc:
                warnings.append(
                    f"cannot check out commit {commit[:12]} ({exc}); using the code as it is now"
                )
            if dirty:
                warnings.append(
                    f"v{version} was trained from a dirty tree: commit {commit[:12]} does not hold "
                    "its exact code"
                )
        else:
            warnings.append(
                f"v{version} was not trained from a git repository: its code is not versioned, "
                "so the code as it is now stands in for it"
            )
        recorded = load_project(code_root) if code_root != project.root else project
        spec = recorded.spec
        params = dict(spec.model.params) if lineage.params is None else lineage.params
        seed = lineage.seed_or(spec.model.seed)
        _forget(spec.model.train)  # read the code from disk, not an earlier import
        train_fn = load_function(code_root, spec.model.train, "train function")
        kind = kind_for(project.spec)
        frame = kind.training_frame(project, snap)
        holdout = split_holdout(frame, spec.data.target, spec.model.holdout, seed)
        seed_everything(seed)
        try:
            model = train_fn(frame.loc[~holdout].reset_index(drop=True), dict(params), seed)
        except Exception as exc:
            raise UserCodeError(f"train() failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path[:] = [p for p in sys.path if not p.startswith(tmp)]
            _forget(spec.model.train)
    original = registry.load(project, mv)
    features = frame[kind.model_inputs(project, frame)]
    mine, theirs = kind.scores(model, features), kind.scores(original, features)
    actual = frame.loc[holdout, spec.data.target].to_numpy()
    new_metrics = kind.holdout_metrics(
        project, model, features.loc[holdout].reset_index(drop=True), actual
    )[1]
    logged = registry.holdout_metrics(project, mv)
    differences = {
        name: {"recorded": value, "reproduced": float(new_metrics[name])}
        for name, value in logged.items()
        if name in new_metrics and not abs(float(new_metrics[name]) - value) <= TOLERANCE
    }
    gap = float(np.max(np.abs(mine - theirs))) if len(mine) else 0.0
    result = Reproduction(
        version, not differences and gap <= TOLERANCE, code, warnings, differences, gap, len(mine)
    )
    with engine.begin() as conn:
        events.record(
            conn,
            events.Kind.MODEL_REPRODUCED if result.reproduced else events.Kind.MODEL_NOT_REPRODUCED,
            actor=actor,
            subject=events.model_subject(project.spec.project, version),
            reason=code,
            evidence={
                "max_prediction_difference": gap,
                "metric_differences": differences,
                "rows": len(mine),
                "warnings": warnings,
            },
        )
    return result
