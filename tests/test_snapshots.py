from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, create_engine, func, select

from copml import snapshots
from copml.errors import DataValidationError
from copml.project import Project
from copml.store import events, open_store
from copml.store import snapshots as snapshots_table


def _store(project: Project) -> Engine:
    project.ensure_home()
    return open_store(project.db_url)


def _create(project: Project, source: str | None = None, **kw) -> snapshots.Snapshot:
    return snapshots.create(
        _store(project),
        project.spec.data,
        root=project.root,
        directory=project.snapshots_dir,
        source=source,
        **kw,
    )


def _rows(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def _customers(project: Project) -> pd.DataFrame:
    return pd.read_csv(project.root / "data" / "customers.csv", dtype=str, keep_default_na=False)


def _write(project: Project, frame: pd.DataFrame, name: str = "bad.csv") -> str:
    path = project.root / "data" / name
    frame.to_csv(path, index=False)
    return str(path)


def test_same_content_same_id(fresh_churn: Project) -> None:
    first = _create(fresh_churn)
    again = _create(fresh_churn)
    assert first.id == again.id and first.created and not again.created
    assert len(first.id) == 64 and Path(first.path).name == f"{first.id}.parquet"
    # the same rows written as Parquet freeze to the same id: the hash is of the content
    parquet = fresh_churn.root / "data" / "customers.parquet"
    snap = snapshots.read_files([fresh_churn.root / "data" / "customers.csv"])
    snap.to_parquet(parquet)
    assert _create(fresh_churn, str(parquet)).id == first.id
    assert _rows(_store(fresh_churn), snapshots_table) == 1


def test_changed_content_new_id(fresh_churn: Project) -> None:
    first = _create(fresh_churn)
    frame = _customers(fresh_churn)
    frame.loc[0, "tenure"] = str(int(frame.loc[0, "tenure"]) + 1)
    assert _create(fresh_churn, _write(fresh_churn, frame, "changed.csv")).id != first.id


def test_types_profile_and_blanks(fresh_churn: Project) -> None:
    snap = _create(fresh_churn)
    frame = snap.load()
    assert frame["tenure"].dtype == "int64" and frame["MonthlyCharges"].dtype == "float64"
    blanks = int((_customers(fresh_churn)["TotalCharges"] == " ").sum())
    assert blanks > 0 and frame["TotalCharges"].isna().sum() == blanks  # na_values: [" "]
    assert snap.profile["tenure"]["kind"] == "numeric" and len(snap.profile["tenure"]["bins"]) > 3
    assert set(snap.profile["Contract"]["counts"]) == {"Month-to-month", "One year", "Two year"}
    assert snap.profile["customerID"]["kind"] == "identifier"
    assert "counts" not in snap.profile["customerID"]  # ids never copied into the profile
    assert 0 < snap.profile["__target__"]["positive_rate"] < 1
    assert snap.schema["target"] == "Churn"


def _refused(project: Project, frame: pd.DataFrame, *fragments: str) -> str:
    source = _write(project, frame)
    with pytest.raises(DataValidationError) as info:
        _create(project, source)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    engine = _store(project)
    assert _rows(engine, snapshots_table) == 0 and _rows(engine, events) == 0
    assert not list(project.snapshots_dir.glob("*")) if project.snapshots_dir.exists() else True
    return message


def test_missing_column(fresh_churn: Project) -> None:
    _refused(
        fresh_churn, _customers(fresh_churn).drop(columns=["Contract"]), "missing columns: Contract"
    )


def test_wrong_type_names_lines(fresh_churn: Project) -> None:
    frame = _customers(fresh_churn)
    frame.loc[[3, 10], "tenure"] = ["abc", "12.5"]
    message = _refused(fresh_churn, frame, "tenure: 1 values are not integers (line 5: 'abc')")
    assert "tenure: 1 values are not whole numbers (line 12: '12.5')" in message


def test_unseen_category(fresh_churn: Project) -> None:
    frame = _customers(fresh_churn)
    frame.loc[0, "Contract"] = "Three year"
    _refused(
        fresh_churn,
        frame,
        "Contract: 1 values outside the declared categories",
        "'Three year'",
        "line 2",
    )


def test_duplicate_ids(fresh_churn: Project) -> None:
    frame = _customers(fresh_churn)
    frame.loc[5, "customerID"] = frame.loc[4, "customerID"]
    _refused(fresh_churn, frame, "customerID: 2 rows share a duplicate id", "line 6", "line 7")


def test_nulls_and_range(fresh_churn: Project) -> None:
    frame = _customers(fresh_churn)
    frame.loc[0, "MonthlyCharges"] = ""
    frame.loc[1, "MonthlyCharges"] = "-5"
    _refused(
        fresh_churn,
        frame,
        "MonthlyCharges: 1 missing values (the column is not nullable)",
        "MonthlyCharges: 1 values are below the minimum 0.0",
    )


def test_every_violation_reported_at_once(fresh_churn: Project) -> None:
    frame = _customers(fresh_churn).drop(columns=["gender"])
    frame.loc[0, "Contract"] = "Forever"
    frame.loc[2, "SeniorCitizen"] = "2"
    message = _refused(fresh_churn, frame, "3 problems")
    assert "gender" in message and "Forever" in message and "SeniorCitizen" in message


def test_empty_file(fresh_churn: Project) -> None:
    path = fresh_churn.root / "data" / "empty.csv"
    path.write_text(",".join(fresh_churn.spec.data.columns) + "\n")
    with pytest.raises(DataValidationError, match="no rows"):
        _create(fresh_churn, str(path))
    path.write_text("")
    with pytest.raises(DataValidationError, match="no rows"):
        _create(fresh_churn, str(path))
    engine = _store(fresh_churn)
    assert _rows(engine, snapshots_table) == 0 and _rows(engine, events) == 0


def test_sql_source(fresh_churn: Project, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    frame = snapshots.read_files([fresh_churn.root / "data" / "customers.csv"])
    engine = create_engine(url)
    frame.to_sql("customers", engine, index=False)
    engine.dispose()
    snap = snapshots.create(
        _store(fresh_churn),
        fresh_churn.spec.data,
        root=fresh_churn.root,
        directory=fresh_churn.snapshots_dir,
        source=url,
        query="SELECT * FROM customers",
    )
    assert snap.id == _create(fresh_churn).id  # same rows from a file: same snapshot
    with pytest.raises(DataValidationError, match="needs a query"):
        _create(fresh_churn, url)


def test_by_reference_keeps_a_manifest_and_detects_changes(fresh_churn: Project) -> None:
    snap = _create(fresh_churn, by_reference=True)
    assert snap.storage == "reference" and snap.manifest is not None
    entry = snap.manifest[0]
    assert entry["path"].endswith("customers.csv") and len(entry["sha256"]) == 64
    assert not fresh_churn.snapshots_dir.exists() or not list(fresh_churn.snapshots_dir.iterdir())
    assert len(snap.load()) == snap.n_rows
    Path(entry["path"]).write_text(Path(entry["path"]).read_text().replace("Yes", "No", 1))
    with pytest.raises(DataValidationError, match="changed since it was frozen"):
        snap.load()


def test_one_row_of_parts_by_reference_reads_and_checks_its_part_alone(
    fresh_churn: Project, tmp_path: Path
) -> None:
    """A partitioned batch's input is a snapshot by reference to its Parquet parts; an audit
    of one decision reads the part that holds the row (checked against its sha256), never
    the whole batch."""
    source = snapshots.read_source(fresh_churn.spec.data.source, fresh_churn.root)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, first in enumerate(range(0, len(source), 2500)):
        source.iloc[first : first + 2500].to_parquet(parts / f"part-{i:03d}.parquet")
    snap = _create(fresh_churn, str(parts), by_reference=True)
    assert snap.manifest is not None and len(snap.manifest) == 3
    whole = snap.load()
    for index in (0, 2499, 2500, 5999):
        pd.testing.assert_frame_equal(snap.row(index), whole.iloc[[index]].reset_index(drop=True))
    with pytest.raises(IndexError):
        snap.row(6000)
    last = Path(snap.manifest[2]["path"])
    source.iloc[5000:].head(10).to_parquet(last)  # the third part altered
    pd.testing.assert_frame_equal(snap.row(2500), whole.iloc[[2500]].reset_index(drop=True))
    with pytest.raises(DataValidationError, match="changed since it was frozen"):
        snap.row(5000)


def test_snapshot_on_postgresql_store(fresh_churn: Project, engine: Engine) -> None:
    """The same snapshot on either backend (``engine`` is SQLite and PostgreSQL)."""
    snap = snapshots.create(
        engine, fresh_churn.spec.data, root=fresh_churn.root, directory=fresh_churn.snapshots_dir
    )
    stored = snapshots.get(engine, snap.id[:12])
    assert stored is not None and stored.profile == snap.profile and stored.n_rows == 6000
    assert snapshots.latest(engine).id == snap.id
