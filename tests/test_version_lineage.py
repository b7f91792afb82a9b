"""A version's lineage reads back as one typed object, whichever record answers.

The registration event (copml's store) and the registry's tags (MLflow) record the same
lineage in two shapes; gate, explain, reproduce, audit, monitor and the model card read it
through ``registry.Lineage`` so none of them parses tag text of its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from copml import registry
from copml.project import Project, load_project


def test_the_store_and_the_tags_give_the_same_typed_lineage(
    churn: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mv = registry.champion(churn)
    assert mv is not None
    lineage = registry.recorded(churn, mv.version)
    assert lineage.origin == registry.TRAINED and not lineage.imported
    assert lineage.seed == churn.spec.model.seed and isinstance(lineage.seed, int)
    assert lineage.params == dict(churn.spec.model.params)
    assert (lineage.run_id, lineage.snapshot_id) == (mv.run_id, mv.snapshot_id)
    assert lineage.reference_snapshot_id == mv.snapshot_id
    assert lineage.artifact_sha256 == mv.artifact_sha256 and len(lineage.artifact_sha256) == 64
    assert lineage.git_commit and isinstance(lineage.git_dirty, bool)
    assert lineage.output_profile  # the holdout's output, what prediction drift compares with
    assert lineage.calibration  # the holdout's calibration, what estimation maps scores with
    # The registry's tags say the same, typed the same (they hold neither).
    assert mv.tagged_lineage == dataclasses.replace(lineage, output_profile=None, calibration=None)

    # A store that never saw the registration answers from the registry's tags.
    monkeypatch.setenv("COPML_DB_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    elsewhere = load_project(churn.root)
    assert registry.recorded(elsewhere, mv.version) == mv.tagged_lineage


def test_a_version_registered_without_copml_lineage_reads_as_not_recorded() -> None:
    """A model registered by plain MLflow (or with a hand-edited tag) has no copml lineage:
    what is missing or unreadable is ``None``, never a guess and never a crash."""
    bare = registry.Lineage.from_tags("run-1", {"mlflow.source.type": "LOCAL"})
    assert bare == registry.Lineage("run-1", "")
    assert bare.seed is None and bare.params is None and bare.git_dirty is None
    edited = registry.Lineage.from_tags(
        "run-2",
        {
            "copml.seed": "forty-two",
            "copml.params": "{not json",
            "copml.git_dirty": "false",
            "copml.flavors": "sklearn",
        },
    )
    assert edited.seed is None and edited.params is None and edited.git_dirty is False
    assert edited.flavors == ()
    assert registry.Lineage.from_tags("run-3", {"copml.seed": "0"}).seed_or(42) == 0
    assert bare.seed_or(42) == 42  # the spec's seed stands in for an unrecorded one
