import contextlib
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

import copml.score
from batches import month
from copml import prediction_log, registry, snapshots
from copml.errors import CopmlError, DataValidationError, NotFoundError
from copml.evaluation import positive_scores
from copml.project import Project, load_project
from copml.redaction import redact
from copml.score import score
from copml.store import events, open_store, predictions
from copml.store import snapshots as snapshots_table
from store_state import assert_unchanged, capture


def _count(project: Project, table) -> int:
    with open_store(project.db_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_every_row_scored_and_logged(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    out = churn.root / "out" / "scores.csv"
    result = score(churn, batch, out, at=datetime(2026, 2, 1, tzinfo=UTC))
    written = pd.read_csv(out)
    source = pd.read_csv(batch)
    assert list(written.columns) == [
        "customerID",
        "label",
        "score",
        "model_version",
        "prediction_id",
    ]
    assert len(written) == len(source) == result.rows == 500
    assert (written["customerID"] == source["customerID"]).all()
    assert set(written["label"]) <= {"Yes", "No"} and written["score"].between(0, 1).all()
    assert (written["label"].eq("Yes") == written["score"].ge(0.5)).all()
    assert written["prediction_id"].is_unique and (written["model_version"] == 1).all()
    engine = open_store(churn.db_url)
    (batch,) = prediction_log.batches_between(engine, None, datetime(2030, 1, 1, tzinfo=UTC))
    assert (batch.key, batch.model_version, batch.snapshot_id) == (
        result.prediction_batch,
        "1",
        result.snapshot_id,
    )
    assert batch.created_at == datetime(2026, 2, 1, tzinfo=UTC) and batch.n_rows == 500
    stored = prediction_log.read(engine, batch)
    merged = written.merge(stored, on="prediction_id", validate="one_to_one")
    assert len(merged) == 500 and (merged["score_x"] == merged["score_y"]).all()
    assert (merged["label_y"] == merged["label_x"].eq("Yes")).all()
    # each prediction points at its input row in the (redacted) batch snapshot
    frozen = snapshots.get(engine, result.snapshot_id).load()  # type: ignore[union-attr]
    row = frozen.iloc[merged["row_index"]].reset_index(drop=True)
    assert (row["tenure"].to_numpy() == source["tenure"].to_numpy()).all()
    seq = prediction_log.resolve(engine, [written["prediction_id"][7]]).tolist()
    assert seq == [batch.first_seq + 7]


def test_scores_match_the_registered_model(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    out = churn.root / "out.parquet"
    score(churn, batch, out)
    model = registry.load(churn, registry.champion(churn))  # type: ignore[arg-type]
    features = snapshots.read_files([batch])
    frame = snapshots.validate(features, churn.spec.data, require_target=False)
    expected = positive_scores(model, frame[churn.spec.data.features])  # the scoring rule
    assert (pq.read_table(out).to_pandas()["score"].to_numpy() == expected).all()


def test_pii_is_never_stored_in_clear(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    result = score(churn, batch, churn.root / "out.csv")
    ids = set(pd.read_csv(batch)["customerID"])
    frozen = pq.read_table(snapshots.get(open_store(churn.db_url), result.snapshot_id).path)
    keys = set(frozen.column("customerID").to_pylist())
    assert len(keys) == 500 and not keys & ids  # keyed hashes, one per customer
    # Every file under COPML_HOME (the database with its -wal and -shm, MLflow's store,
    # artifacts, snapshots), read as bytes and Parquet files decoded too: no raw id anywhere.
    assert (churn.home / "copml.db-wal").stat().st_size > 0  # the batch is (still) in the WAL
    assert _files_holding(churn.home, ids) == []
    assert (churn.home / "secret.key").stat().st_mode & 0o077 == 0


def _files_holding(home: Path, ids: set[str]) -> list[str]:
    """Files under ``home`` in which any of ``ids`` appears, in the raw bytes or (Parquet
    is compressed) in any decoded string column."""
    pattern = re.compile(b"|".join(re.escape(i.encode()) for i in sorted(ids)))
    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        hit = pattern.search(path.read_bytes()) is not None
        if not hit and path.suffix == ".parquet":
            table = pq.read_table(path)
            hit = any(
                ids & set(map(str, table.column(name).to_pylist()))
                for name, kind in zip(table.column_names, table.schema.types, strict=True)
                if pa.types.is_string(kind) or pa.types.is_large_string(kind)
            )
        if hit:
            found.append(str(path.relative_to(home)))
    return found


def test_score_before_any_model(fresh_churn: Project) -> None:
    batch, _ = month(fresh_churn.root / "in")
    with pytest.raises(NotFoundError, match=r"no champion model yet"):
        score(fresh_churn, batch, fresh_churn.root / "out.csv")
    assert not (fresh_churn.root / "out.csv").exists()
    assert _count(fresh_churn, predictions) == 0 and _count(fresh_churn, events) == 0


def test_bad_batch_changes_nothing(churn: Project) -> None:
    batch, _ = month(churn.root / "in")
    frame = pd.read_csv(batch, dtype=str, keep_default_na=False)
    frame.loc[7, "InternetService"] = "Satellite"
    frame.to_csv(batch, index=False)
    before = (_count(churn, predictions), _count(churn, snapshots_table), _count(churn, events))
    with pytest.raises(DataValidationError, match=r"InternetService.*'Satellite'.*line 9"):
        score(churn, batch, churn.root / "out.csv")
    after = (_count(churn, predictions), _count(churn, snapshots_table), _count(churn, events))
    assert before == after and not (churn.root / "out.csv").exists()


def test_tampered_artifact_is_refused(churn: Project) -> None:
    mv = registry.champion(churn)
    assert mv is not None
    pkl = registry.local_copy(churn, mv) / "model.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\0")
    registry._load.cache_clear()
    batch, _ = month(churn.root / "in")
    with pytest.raises(CopmlError, match=r"does not match .* recorded at registration"):
        score(churn, batch, churn.root / "out.csv")
    assert _count(churn, predictions) == 0


def test_output_is_written_only_after_commit(churn: Project, tmp_path: Path) -> None:
    """The database refuses the batch at its last statement, after the output was staged:
    no output appears and nothing of the run remains; then a run that commits writes it."""
    batch, _ = month(churn.root / "in")
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "scores.csv"
    with contextlib.closing(sqlite3.connect(churn.home / "copml.db")) as db, db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON batches "
            "BEGIN SELECT RAISE(ABORT, 'the store refused the batch'); END"
        )
    before = capture(churn)
    with pytest.raises(Exception, match="the store refused the batch"):
        score(churn, batch, out)
    assert list(folder.iterdir()) == []  # no output, not even the staged file
    # Every table as it was. (Files are not compared: the first score of a project also
    # creates its PII key and the model's local copy; the batch snapshot file frozen
    # before the refused commit is removed: test_a_refused_commit_of_many_chunks_leaves_no_file.)
    assert capture(churn)["tables"] == before["tables"]
    with contextlib.closing(sqlite3.connect(churn.home / "copml.db")) as db, db:
        db.execute("DROP TRIGGER refuse")
    result = score(churn, batch, out)
    written = pd.read_csv(out)
    engine = open_store(churn.db_url)
    assert (
        len(written) == result.rows
        and prediction_log.resolve(engine, written["prediction_id"].tolist()).notna().all()
    )  # what the output names is committed
    assert [p.name for p in folder.iterdir()] == ["scores.csv"]


def test_a_failure_before_commit_leaves_the_store_as_it_was(churn: Project, tmp_path: Path) -> None:
    """The output cannot be written (its folder is a file): nothing of the run remains."""
    batch, _ = month(churn.root / "in")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    before = (_count(churn, predictions), _count(churn, snapshots_table), _count(churn, events))
    with pytest.raises(OSError):
        score(churn, batch, blocker / "scores.csv")
    after = (_count(churn, predictions), _count(churn, snapshots_table), _count(churn, events))
    assert after == before
    engine = open_store(churn.db_url)
    assert prediction_log.batches_between(engine, None, datetime(2030, 1, 1, tzinfo=UTC)) == []
    # the next run is unaffected
    assert score(churn, batch, tmp_path / "scores.csv").rows == 500


# --------------------------------------------------------------------------- streaming


def _small_chunks(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Chunks of ``rows``, content-id batches of 512 rows and row groups of 1,024, so a
    2,000-row batch crosses many of each (in production: 262,144, 65,536 and 131,072).
    (Not smaller: under 512 rows a batch's bitmap fits Arrow's 64-byte padding, and
    the whole table's tail is written as it lies in memory, unlike a longer table's.)"""
    monkeypatch.setattr(copml.score, "_CHUNK_ROWS", rows)
    monkeypatch.setattr(snapshots, "_HASH_ROWS", 512)
    monkeypatch.setattr(snapshots, "ROW_GROUP_ROWS", 1024)


def _without_key(written: pd.DataFrame) -> pd.DataFrame:
    """The output with each prediction id's batch key cut off (a run's own random key)."""
    ids = written["prediction_id"].str
    assert ids.len().eq(prediction_log.ID_LENGTH).all() and ids[:16].nunique() == 1
    return written.assign(prediction_id=ids[16:])


def test_many_chunks_give_what_one_chunk_gives(
    churn: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scored 100 rows at a time, the batch has the snapshot id, the frozen rows and row
    groups, the output and the logged decisions of the same batch scored in one piece;
    and the id is the one the whole-table freezing (training snapshots, earlier batches)
    gives the same rows."""
    batch, _ = month(churn.root / "in", size=2000)
    engine = open_store(churn.db_url)
    _small_chunks(monkeypatch, 100)
    chunked = score(churn, batch, tmp_path / "chunked.csv")  # first: it writes the file
    frozen = pq.ParquetFile(snapshots.get(engine, chunked.snapshot_id).path)  # type: ignore[union-attr]
    monkeypatch.setattr(copml.score, "_CHUNK_ROWS", 10_000)
    whole = score(churn, batch, tmp_path / "whole.csv")
    assert chunked.snapshot_id == whole.snapshot_id and chunked.rows == whole.rows == 2000
    assert (chunked.positives, chunked.reviews) == (whole.positives, whole.reviews)
    # the id and the file that prepare() makes of the whole redacted frame
    data = churn.spec.data
    frame = snapshots.validate(
        snapshots.read_files([batch]), data, require_target=False, line_numbers=True
    )
    redacted = redact(
        frame.drop(columns=[data.target], errors="ignore"),
        sorted({data.id, *data.pii}),
        churn.pii_key,
    )
    prepared = snapshots.prepare(
        redacted, data, directory=tmp_path / "prepared", source=str(batch), kind="batch"
    )
    assert prepared.id == chunked.snapshot_id
    reference = pq.ParquetFile(prepared.path)
    sizes = [frozen.metadata.row_group(g).num_rows for g in range(frozen.num_row_groups)]
    assert (
        sizes
        == [1024, 976]
        == [reference.metadata.row_group(g).num_rows for g in range(reference.num_row_groups)]
    )
    assert frozen.read().equals(reference.read())
    # the output, row for row (each run's prediction ids carry its own batch key)
    outputs = [pd.read_csv(tmp_path / f"{name}.csv") for name in ("chunked", "whole")]
    pd.testing.assert_frame_equal(*map(_without_key, outputs))
    # the logged decisions
    logged = []
    for result in (chunked, whole):
        (found,) = [
            b
            for b in prediction_log.batches_between(engine, None, datetime(2100, 1, 1, tzinfo=UTC))
            if b.key == result.prediction_batch
        ]
        assert found.n_rows == 2000 and found.snapshot_id == result.snapshot_id
        logged.append(prediction_log.read(engine, found).drop(columns=["prediction_id", "seq"]))
    pd.testing.assert_frame_equal(*logged)


def test_parquet_row_groups_give_what_one_chunk_gives(
    churn: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Parquet input of 300-row groups read 256 rows at a time: the same snapshot and
    output as in one piece, and the output Parquet file holds every row once, in order."""
    csv, _ = month(churn.root / "in", size=2000)
    batch = tmp_path / "batch.parquet"
    pq.write_table(pa.Table.from_pandas(pd.read_csv(csv)), batch, row_group_size=300)
    _small_chunks(monkeypatch, 256)
    chunked = score(churn, batch, tmp_path / "chunked.parquet")
    monkeypatch.setattr(copml.score, "_CHUNK_ROWS", 10_000)
    whole = score(churn, batch, tmp_path / "whole.parquet")
    assert chunked.snapshot_id == whole.snapshot_id
    outputs = [pq.read_table(tmp_path / f"{n}.parquet").to_pandas() for n in ("chunked", "whole")]
    pd.testing.assert_frame_equal(*map(_without_key, outputs))
    assert outputs[0]["customerID"].tolist() == pd.read_csv(csv)["customerID"].tolist()
    row_numbers = outputs[0]["prediction_id"].str[16:].map(lambda h: int(h, 16))
    assert row_numbers.tolist() == list(range(2000))


def _refusal(batch: Path, data: object) -> str:
    """The message the whole-file validation gives ``batch``."""
    with pytest.raises(DataValidationError) as whole:
        snapshots.validate(
            snapshots.read_files([batch]),
            data,  # type: ignore[arg-type]
            require_target=False,
            line_numbers=True,
        )
    return str(whole.value)


def test_a_bad_value_in_the_last_chunk_changes_nothing(
    churn: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused on the last line after 71 good chunks: the whole-file message with the
    line numbers counted over the file, and no table or file changed (the model's local
    copy and the PII key included: the refusal comes before either is needed)."""
    batch, _ = month(churn.root / "in")
    frame = pd.read_csv(batch, dtype=str, keep_default_na=False)
    frame.loc[499, "InternetService"] = "Satellite"
    frame.loc[3, "tenure"] = "three"
    frame.to_csv(batch, index=False)
    expected = _refusal(batch, churn.spec.data)
    assert "line 501: 'Satellite'" in expected and "line 5: 'three'" in expected
    _small_chunks(monkeypatch, 7)
    before = capture(churn)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(DataValidationError) as refused:
        score(churn, batch, folder / "scores.csv")
    assert str(refused.value) == expected
    assert_unchanged(before, churn)
    assert list(folder.iterdir()) == []


def test_a_duplicate_id_across_chunks_changes_nothing(
    churn: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch, _ = month(churn.root / "in")
    frame = pd.read_csv(batch, dtype=str, keep_default_na=False)
    frame.loc[480, "customerID"] = frame.loc[2, "customerID"]
    frame.to_csv(batch, index=False)
    expected = _refusal(batch, churn.spec.data)
    assert "2 rows share a duplicate id (line 4: " in expected and "line 482: " in expected
    _small_chunks(monkeypatch, 7)
    before = capture(churn)
    with pytest.raises(DataValidationError) as refused:
        score(churn, batch, tmp_path / "out.csv")
    assert str(refused.value) == expected
    assert_unchanged(before, churn)


def test_a_refused_commit_of_many_chunks_leaves_no_file(
    churn: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After every chunk was frozen and written, the store refuses the batch: no output,
    no staged file, no snapshot file, no row (a first run made the key and model copy)."""
    _small_chunks(monkeypatch, 100)
    score(churn, month(churn.root / "in", seed=3)[0], tmp_path / "first.csv")
    batch, _ = month(churn.root / "in")
    folder = tmp_path / "out"
    folder.mkdir()
    with contextlib.closing(sqlite3.connect(churn.home / "copml.db")) as db, db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON batches "
            "BEGIN SELECT RAISE(ABORT, 'the store refused the batch'); END"
        )
    before = capture(churn)
    with pytest.raises(Exception, match="the store refused the batch"):
        score(churn, batch, folder / "scores.parquet")
    assert_unchanged(before, churn)
    assert list(folder.iterdir()) == []


def test_many_chunks_on_postgresql(
    trained_churn: Path, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL (COPY, explicit sequence numbers) the chunks of one batch are numbered
    on from each other: every output id resolves to its own logged decision."""
    monkeypatch.setenv("COPML_DB_URL", pg_url)
    shutil.copytree(trained_churn, tmp_path / "churn")
    project = load_project(tmp_path / "churn")
    _small_chunks(monkeypatch, 64)
    batch, _ = month(project.root / "in")
    result = score(project, batch, tmp_path / "scores.csv")
    written = pd.read_csv(tmp_path / "scores.csv")
    engine = open_store(project.db_url)
    seqs = prediction_log.resolve(engine, written["prediction_id"].tolist())
    (logged,) = prediction_log.batches_between(engine, None, datetime(2100, 1, 1, tzinfo=UTC))
    assert result.rows == logged.n_rows == 500
    assert seqs.tolist() == list(range(logged.first_seq, logged.first_seq + 500))
    stored = prediction_log.read(engine, logged)
    assert (stored["score"].to_numpy() == written["score"].to_numpy()).all()
