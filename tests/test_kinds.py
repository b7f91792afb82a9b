"""The model-kind contract: kinds found by ``model.task`` through the ``copml.kinds`` entry
points (an installed distribution, built here as a real dist-info folder on ``sys.path``)
or copml's own table; the layers it keeps apart."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from copml import kinds
from copml.errors import CopmlError
from copml.kinds import ModelKind, kind_named, names
from copml.project import Project

SRC = Path(__file__).parents[1] / "src" / "copml"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` where a test installs distributions (dist-info + module)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    kind_named.cache_clear()
    yield tmp_path
    kind_named.cache_clear()
    for name in [m for m in sys.modules if m.startswith("acme_")]:
        del sys.modules[name]


def _install(site: Path, package: str, entry_points: str, module: str) -> None:
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    (site / f"{package}.py").write_text(module)


def test_copml_s_own_kinds_are_found_by_task_and_honour_the_contract() -> None:
    binary, cascade = kind_named("binary"), kind_named("cascade")
    assert (binary.name, binary.data_kind) == ("binary", "table")
    assert (cascade.name, cascade.data_kind) == ("cascade", "images")
    assert isinstance(binary, ModelKind) and isinstance(cascade, ModelKind)
    assert {"binary", "cascade"} <= set(names())
    assert kinds.kind_reading("images") is cascade
    # Each kind's metric table says which way is better; the gate compares by it.
    assert binary.metrics.metrics["recall"] == "higher"
    assert "type_accuracy" in cascade.metrics.metrics
    assert "type_accuracy" not in binary.metrics.metrics


def test_a_kind_installed_through_the_entry_point_group_is_found(installed: Path) -> None:
    _install(
        installed,
        "acme_kinds",
        "[copml.kinds]\nacme = acme_kinds:AcmeKind\n",
        "from copml.kinds.binary import BinaryKind\n\n\n"
        "class AcmeKind(BinaryKind):\n    name = 'acme'\n",
    )
    assert "acme" in names()
    found = kind_named("acme")
    assert type(found).__name__ == "AcmeKind" and isinstance(found, ModelKind)
    assert found.name == "acme"


def test_an_installed_entry_point_overrides_the_built_in_table(installed: Path) -> None:
    _install(
        installed,
        "acme_binary",
        "[copml.kinds]\nbinary = acme_binary:Mine\n",
        "from copml.kinds.binary import BinaryKind\n\n\nclass Mine(BinaryKind):\n    pass\n",
    )
    assert type(kind_named("binary")).__name__ == "Mine"


def test_an_entry_point_that_is_not_a_kind_is_refused_by_name(installed: Path) -> None:
    _install(
        installed,
        "acme_broken",
        "[copml.kinds]\nbroken = acme_broken:NotAKind\n",
        "class NotAKind:\n    name = 'broken'\n",
    )
    with pytest.raises(CopmlError, match=r"'broken'.*does not implement copml's ModelKind"):
        kind_named("broken")


def test_an_unknown_task_names_the_field_and_the_kinds_available() -> None:
    with pytest.raises(CopmlError, match=r"model\.task: no model kind 'ranking'.*binary"):
        kind_named("ranking")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_platform_never_imports_an_application() -> None:
    """Only the applications themselves and the CLI's ``demo`` (a face over them) may."""
    offenders = {
        str(path.relative_to(SRC)): sorted(m for m in _imports(path) if m.startswith("copml.apps"))
        for path in SRC.rglob("*.py")
        if "apps" not in path.relative_to(SRC).parts and path.name != "cli.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_services_that_use_a_model_do_not_load_the_training_service() -> None:
    """serve, score, the gate, explain and audit measure and replay models through the
    core (copml.evaluation, the kinds), so importing them leaves train.py unloaded."""
    code = (
        "import sys\n"
        "import copml.audit, copml.explain, copml.score, copml.serve.app\n"
        "import copml.operate.lifecycle, copml.model_card, copml.kinds.binary\n"
        "loaded = [m for m in sys.modules if m == 'copml.train' or m.startswith('copml.apps')]\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_third_party_kind_is_served_without_touching_copml(
    churn: Project, tmp_path: Path
) -> None:
    """An installed package registers its own ``binary`` kind (one that sends every decision
    to a person) through the entry point group; a real ``copml serve`` process finds it and
    decides by it, with no change to copml's code."""
    import httpx

    from test_serve import _instances, start

    site = tmp_path / "site"
    site.mkdir()
    _install(
        site,
        "acme_review",
        "[copml.kinds]\nbinary = acme_review:ReviewEverything\n",
        "import dataclasses\n\nimport numpy as np\n\n"
        "from copml.kinds.binary import BinaryKind\n\n\n"
        "class ReviewEverything(BinaryKind):\n"
        "    def decide(self, project, model, scores):\n"
        "        decided = super().decide(project, model, scores)\n"
        "        return dataclasses.replace(decided, review=np.ones(len(scores), dtype=bool))\n",
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    server = start(churn, env={"PYTHONPATH": path})
    try:
        reply = httpx.post(
            f"{server.url}/v1/predict",
            json={"instances": _instances(churn, 3)},
            headers=server.headers("service"),
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert [p["review"] for p in reply.json()["predictions"]] == [True, True, True]
    finally:
        server.kill()
    # The same project served by copml's own binary kind reviews none of these (no band).
    assert churn.spec.serving.review_band is None


def test_rows_unlike_the_training_table_go_to_a_person(churn: Project, tmp_path: Path) -> None:
    """Issue 17 item 6 for tables: a value outside its trained range and a category never
    seen in training are answered review: true with reason out_of_distribution, queued with
    that cause (kept when a person resolves it; ground truth never clears it), and counted
    in the window's ood_rate; rows like the training data are not flagged."""
    import httpx

    from copml import audit, feedback, keys, registry, reviews
    from copml.kinds import kind_for
    from copml.monitor.window import monitor
    from copml.serve.champion import load_model
    from copml.store import open_store
    from test_serve import _instances, start

    # A category outside the declared ones is refused at the edge (422); one declared but
    # absent from the training rows reaches the model, and the kind's screen names it.
    champion = load_model(churn, registry.required_champion(churn))
    assert champion.profile is not None
    rows = _instances(churn, 6)
    columns = {c: [r[c] for r in rows] for c in champion.features}
    columns["Contract"][1] = "Ten year"
    screened = kind_for(churn.spec).screen(churn, champion.model, champion.profile, columns)
    assert screened[1] == ("Contract 'Ten year' never seen in training",)
    rows[0]["MonthlyCharges"] = 10_000.0  # trained on 18.25 … 118.75
    rows[1]["tenure"] = 119  # declared up to 120, trained up to 72
    server = start(churn)
    try:
        answer = httpx.post(
            f"{server.url}/v1/predict",
            json={"instances": rows},
            headers=server.headers("service"),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        found = answer.json()["predictions"]
        operator = {"Authorization": f"Bearer {keys.create(open_store(churn.db_url), 'operator')}"}
        queue = httpx.get(f"{server.url}/v1/reviews", headers=operator).json()["reviews"]
    finally:
        server.kill()
    high, unseen, *alike = found
    for said in (high, unseen):
        assert said["review"] is True and said["reason"] == "out_of_distribution", said
    assert "MonthlyCharges 10000.0 outside the trained range" in high["unlike_training"][0]
    assert unseen["unlike_training"] == ["tenure 119 outside the trained range [0, 72]"]
    assert all("reason" not in said and not said["review"] for said in alike)  # no band
    causes = {item["prediction_id"]: item["reason"] for item in queue}
    assert causes[high["prediction_id"]].startswith("out_of_distribution: MonthlyCharges")
    # Ground truth landing does not clear the review; a person's resolution keeps the cause.
    truth = tmp_path / "truth.csv"
    truth.write_text(f"prediction_id,actual\n{high['prediction_id']},Yes\n")
    feedback.load(churn, truth)
    engine = open_store(churn.db_url)
    still = {item["prediction_id"] for item in reviews.open_items(engine)}
    assert {high["prediction_id"], unseen["prediction_id"]} <= still
    reviews.resolve(engine, churn.spec, unseen["prediction_id"], "No", actor="user:ana",
                    reason="a long customer")  # fmt: skip
    kept = audit.record(churn, unseen["prediction_id"], explanation=False)["human_review"]
    assert kept["reason"] == (
        "out_of_distribution: tenure 119 outside the trained range [0, 72]\na long customer"
    )
    window = monitor(churn)
    assert window.metrics["ood_rate"] == pytest.approx(2 / 6)
