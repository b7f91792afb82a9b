"""The durable log of every prediction, written and read a batch at a time.

A *batch* is one scoring run (or one group commit of the API): a header row with the
time, the model version and the input snapshot, then one narrow row per prediction. A
prediction id is the batch key followed by the row index in hex (``3f2a…0000001c``), so
it can be resolved without a per-row string index: that is what makes logging a million
predictions cost about as much as writing them to a file.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, Engine, func, insert, select, text

from copml.store import (
    batches,
    bulk_insert,
    class_probabilities,
    feedback,
    lock_for_writing,
    prediction_inputs,
    predictions,
)
from copml.store.columns import read as read_columns

KEY_HEX = 16
ROW_HEX = 8
ID_LENGTH = KEY_HEX + ROW_HEX
# Exactly what prediction_ids() writes: int(x, 16) alone would also take '-1', '+1',
# '0x1', '1_0' and spaces, and resolve them to someone else's prediction.
_ID = re.compile(f"[0-9a-f]{{{ID_LENGTH}}}")


@dataclass(frozen=True)
class Batch:
    id: int
    key: str
    created_at: datetime
    model_version: str
    snapshot_id: str | None
    first_seq: int
    n_rows: int
    origin: str = "batch"
    arm: str = "champion"
    shadows: str | None = None

    def prediction_ids(self) -> list[str]:
        return prediction_ids(self.key, self.n_rows).to_pylist()


def new_key() -> str:
    return secrets.token_hex(KEY_HEX // 2)


def prediction_ids(key: str, n: int, start: int = 0) -> pa.Array:
    """``key`` followed by each row number in 8 hex digits, built without a Python loop;
    rows ``start .. start + n - 1`` (a partition or a chunk of a batch numbers its rows from
    its own first row)."""
    rows = np.arange(start, start + n, dtype=np.uint32)
    chars = np.empty((n, ID_LENGTH), dtype=np.uint8)
    chars[:, :KEY_HEX] = np.frombuffer(key.encode(), dtype=np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    for i in range(ROW_HEX):
        chars[:, KEY_HEX + i] = digits[(rows >> (4 * (ROW_HEX - 1 - i))) & 0xF]
    return pa.array(chars.view(f"S{ID_LENGTH}").ravel(), type=pa.binary(ID_LENGTH)).cast(
        pa.string()
    )


def split_id(prediction_id: str) -> tuple[str, int] | None:
    """(batch key, row) of a well-formed prediction id (24 lower-case hex digits, as
    :func:`prediction_ids` writes them), else ``None``. The row still has to be checked
    against its batch's size."""
    if not isinstance(prediction_id, str) or not _ID.fullmatch(prediction_id):
        return None
    return prediction_id[:KEY_HEX], int(prediction_id[KEY_HEX:], 16)


def _lock(conn: Connection) -> None:
    """Serialise writers so each batch gets a contiguous range of sequence numbers."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE batches IN SHARE ROW EXCLUSIVE MODE"))
    else:
        lock_for_writing(conn)


# Built once: an API group commit writes a batch every few milliseconds.
_NEXT_SEQ = select(func.coalesce(func.max(predictions.c.seq), 0) + 1)
_INSERT_BATCH = insert(batches)


@dataclass(frozen=True)
class Header:
    """What a batch says about all of its predictions."""

    key: str
    created_at: datetime
    model_name: str
    model_version: str
    snapshot_id: str | None
    origin: str
    arm: str = "champion"  # champion | canary | shadow
    shadows: str | None = None  # a shadow batch: the key of the batch it mirrors

    def mirrored_by(self, version: str) -> Header:
        """The header of the shadow batch in which ``version`` scores this batch's rows
        again: its own key, this batch's time, snapshot and origin."""
        return replace(self, key=new_key(), model_version=version, arm="shadow", shadows=self.key)


# One chunk of a batch's decisions: label codes, scores, review flags, class probabilities.
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


def write(
    engine: Engine,
    header: Header,
    label: np.ndarray,
    score: np.ndarray,
    review: np.ndarray,
    before_commit: Callable[[Connection, int], None] | None = None,
    probabilities: np.ndarray | None = None,
) -> Batch:
    """Append a batch in one transaction; nothing is visible until it commits.
    ``probabilities`` (one row per prediction) keeps every class's probability of a
    multiclass decision.

    ``before_commit(conn, first_seq)`` runs inside the same transaction before the header
    is written (for the input snapshot the header refers to, per-row inputs, the event),
    so a failure there, or anywhere, rolls the whole batch back.
    """
    return write_chunks(engine, header, [(label, score, review, probabilities)], before_commit)


def write_chunks(
    engine: Engine,
    header: Header,
    chunks: Iterable[Chunk],
    before_commit: Callable[[Connection, int], None] | None = None,
) -> Batch:
    """:func:`write` for a batch that comes in chunks: still one transaction and one header,
    the rows inserted a chunk at a time (never a Python list of a whole large batch)."""

    def before(conn: Connection, firsts: list[int]) -> None:
        if before_commit is not None:
            before_commit(conn, firsts[0])

    return write_many(engine, [(header, chunks)], before)[0]


def write_many(
    engine: Engine,
    parts: list[tuple[Header, Iterable[Chunk]]],
    before_commit: Callable[[Connection, list[int]], None] | None = None,
) -> list[Batch]:
    """Several batches in one transaction (a group answered partly by the champion and
    partly by a canary): each its own contiguous range, all visible together or none.
    ``before_commit`` gets each batch's first sequence number."""
    with engine.begin() as conn:
        _lock(conn)
        first = conn.execute(_NEXT_SEQ).scalar_one()
        spans = []
        for _, chunks in parts:
            n = 0
            for label, score, review, probabilities in chunks:
                _insert(conn, first + n, label, score, review, probabilities)
                n += len(score)
            spans.append((first, n))
            first += n
        if before_commit is not None:
            before_commit(conn, [start for start, _ in spans])
        written = []
        for (header, _), (start, n) in zip(parts, spans, strict=True):
            batch_id = conn.execute(
                _INSERT_BATCH,
                {
                    "key": header.key,
                    "created_at": header.created_at,
                    "model_name": header.model_name,
                    "model_version": header.model_version,
                    "snapshot_id": header.snapshot_id,
                    "origin": header.origin,
                    "first_seq": start,
                    "n_rows": n,
                    "arm": header.arm,
                    "shadows": header.shadows,
                },
            ).inserted_primary_key[0]
            written.append(
                Batch(
                    batch_id,
                    header.key,
                    header.created_at,
                    header.model_version,
                    header.snapshot_id,
                    start,
                    n,
                    header.origin,
                    header.arm,
                    header.shadows,
                )
            )
    return written


def _insert(
    conn: Connection,
    first: int,
    label: np.ndarray,
    score: np.ndarray,
    review: np.ndarray,
    probabilities: np.ndarray | None,
) -> None:
    """Rows ``first``… of a batch, under the writer's lock."""
    n = len(score)
    label_ints = label.astype(np.int8).tolist()
    if conn.dialect.name == "postgresql":  # COPY: explicit numbers, real booleans
        columns = ("seq", "label", "score", "review")
        rows = zip(
            range(first, first + n), label_ints, score.tolist(), review.tolist(), strict=True
        )
    else:
        # SQLite numbers the rows itself (rowid = max + 1, under our write lock), and
        # binds exact ints far faster than bools: every parameter saved counts here.
        columns = ("label", "score", "review")
        rows = zip(label_ints, score.tolist(), review.astype(np.int8).tolist(), strict=True)
    bulk_insert(conn, predictions, columns, rows)
    if probabilities is not None:
        bulk_insert(
            conn,
            class_probabilities,
            ("seq", "probabilities"),
            zip(
                range(first, first + n),
                map(json.dumps, np.asarray(probabilities).tolist()),
                strict=True,
            ),
        )


def _batch(row: object) -> Batch:
    m = row._mapping  # type: ignore[attr-defined]
    return Batch(
        m["id"],
        m["key"],
        m["created_at"],
        m["model_version"],
        m["snapshot_id"],
        m["first_seq"],
        m["n_rows"],
        m["origin"],
        m["arm"],
        m["shadows"],
    )


def batches_between(engine: Engine, start: datetime | None, end: datetime) -> list[Batch]:
    """Batches created in ``[start, end)``, oldest first."""
    query = select(batches).where(batches.c.created_at < end).order_by(batches.c.created_at)
    if start is not None:
        query = query.where(batches.c.created_at >= start)
    with engine.connect() as conn:
        return [_batch(r) for r in conn.execute(query)]


def resolve(engine: Engine, prediction_ids: list[str]) -> pd.Series:
    """Sequence number of each prediction id (``NA`` for ids that name no prediction)."""
    parts = [split_id(p) for p in prediction_ids]
    keys = sorted({p[0] for p in parts if p is not None})
    found: dict[str, Batch] = {}
    with engine.connect() as conn:
        for i in range(0, len(keys), 500):
            query = select(batches).where(batches.c.key.in_(keys[i : i + 500]))
            found.update((b.key, b) for b in map(_batch, conn.execute(query)))
    seqs: list[int | None] = []
    for part in parts:
        batch = found.get(part[0]) if part else None
        ok = batch is not None and part is not None and 0 <= part[1] < batch.n_rows
        seqs.append(batch.first_seq + part[1] if ok else None)  # type: ignore[union-attr]
    return pd.Series(seqs, dtype="Int64")


_DECIDED = pa.schema(
    [("seq", pa.int64()), ("label", pa.int16()), ("score", pa.float64()), ("review", pa.bool_())]
)
_TRUTH = pa.schema([("seq", pa.int64()), ("actual", pa.float64())])


def decisions(engine: Engine, first: int, last: int) -> pd.DataFrame:
    """Predictions ``first`` … ``last`` (sequence numbers) in order, with their ground truth
    (``actual`` NaN when not yet known), read as columns: a window of millions of rows costs
    seconds, not minutes. Other predictions may lie in the range (another batch's)."""
    p, f = predictions.c, feedback.c
    n = last - first + 1
    # Both at once (each a scan of its own table): a window's read takes the longer of two.
    with ThreadPoolExecutor(2) as pool:
        reading = pool.submit(
            read_columns,
            engine,
            select(p.seq, p.label, p.score, p.review)
            .where(p.seq.between(first, last))
            .order_by(p.seq),
            _DECIDED,
            n,
        )
        known = read_columns(
            engine,
            select(f.prediction_seq, f.actual)
            .where(f.prediction_seq.between(first, last))
            .order_by(f.prediction_seq),
            _TRUTH,
            n,
        )
        made = reading.result()
    frame = made.to_pandas(split_blocks=True, self_destruct=True)
    del made
    seq = frame["seq"].to_numpy()
    actual = np.full(len(seq), np.nan)
    truth_seq = known.column("seq").to_numpy()
    if np.array_equal(seq, truth_seq):  # every prediction's truth has landed
        actual[:] = known.column("actual").to_numpy()
    else:
        at = np.minimum(np.searchsorted(seq, truth_seq), max(len(seq) - 1, 0))
        found = (seq[at] == truth_seq) if len(seq) else np.zeros(0, dtype=bool)
        actual[at[found]] = known.column("actual").to_numpy()[found]
    frame["actual"] = actual
    return frame


def batches_decisions(engine: Engine, found: list[Batch]) -> tuple[pd.DataFrame, np.ndarray]:
    """The decisions of ``found`` (sorted by first sequence number) in one read over their
    range, and each row's index in ``found``; rows of other batches that took numbers in
    between are left out."""
    first = np.array([b.first_seq for b in found], dtype=np.int64)
    size = np.array([b.n_rows for b in found], dtype=np.int64)
    frame = decisions(engine, int(first[0]), int((first + size).max() - 1))
    seq = frame["seq"].to_numpy()
    owner = np.searchsorted(first, seq, side="right") - 1
    inside = seq < first[owner] + size[owner]
    if not inside.all():
        frame, owner = frame[inside].reset_index(drop=True), owner[inside]
    return frame, owner


def probabilities_between(engine: Engine, first: int, last: int) -> dict[int, Any]:
    """Each class's probabilities of the multiclass decisions among ``first`` … ``last``."""
    c = class_probabilities.c
    with engine.connect() as conn:
        # Apart, not joined: a range of the primary key, nothing to read for other tasks.
        return dict(
            conn.execute(select(c.seq, c.probabilities).where(c.seq.between(first, last))).all()
        )


def read(engine: Engine, batch: Batch) -> pd.DataFrame:
    """A batch's predictions with their ground truth (``actual`` NaN when not yet known)
    and, for multiclass decisions, each class's probabilities (a list per row)."""
    last = batch.first_seq + batch.n_rows - 1
    frame = decisions(engine, batch.first_seq, last)
    weighed = probabilities_between(engine, batch.first_seq, last)
    if weighed:
        frame["probabilities"] = pd.Series([weighed.get(s) for s in frame["seq"].tolist()])
    frame.insert(1, "row_index", (frame["seq"] - batch.first_seq).astype("int64"))
    ids = prediction_ids(batch.key, batch.n_rows).to_numpy(zero_copy_only=False)
    frame.insert(0, "prediction_id", ids[frame["row_index"].to_numpy()])
    return frame


def record_by_seq(engine: Engine, seq: int) -> dict[str, Any] | None:
    """The record of the prediction with sequence number ``seq``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(batches.c.key, batches.c.first_seq).where(
                batches.c.first_seq <= seq, batches.c.first_seq + batches.c.n_rows > seq
            )
        ).first()
    return None if row is None else record(engine, f"{row[0]}{seq - row[1]:08x}")


def record(engine: Engine, prediction_id: str) -> dict[str, Any] | None:
    """One decision as stored: what was decided, by which version, when, on what input."""
    part = split_id(prediction_id)
    if part is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(batches).where(batches.c.key == part[0])).first()
        if row is None or not 0 <= part[1] < row._mapping["n_rows"]:
            return None
        batch = _batch(row)
        seq = batch.first_seq + part[1]
        p, f, i, c = predictions.c, feedback.c, prediction_inputs.c, class_probabilities.c
        found = (
            conn.execute(
                select(
                    p.label,
                    p.score,
                    p.review,
                    f.actual,
                    i.input,
                    i.input_hash,
                    i.latency_ms,
                    c.probabilities,
                )
                .select_from(
                    predictions.outerjoin(feedback, f.prediction_seq == p.seq)
                    .outerjoin(prediction_inputs, i.seq == p.seq)
                    .outerjoin(class_probabilities, c.seq == p.seq)
                )
                .where(p.seq == seq)
            )
            .one()
            ._mapping
        )
    out: dict[str, Any] = {
        "prediction_id": prediction_id,
        "seq": seq,
        "model_version": batch.model_version,
        "created_at": batch.created_at.isoformat(),
        "origin": row._mapping["origin"],
        "label": found["label"],
        "score": found["score"],
        "review": bool(found["review"]),
        "actual": found["actual"],
        "input": found["input"],
        "input_hash": found["input_hash"],
        "latency_ms": found["latency_ms"],
        "snapshot_id": batch.snapshot_id,
        "snapshot_row": part[1] if batch.snapshot_id else None,
    }
    if found["probabilities"] is not None:  # a multiclass decision's, by class
        out["probabilities"] = found["probabilities"]
    if out["input"] is None and batch.snapshot_id:
        from copml import snapshots

        snap = snapshots.get(engine, batch.snapshot_id)
        assert snap is not None
        out["input"] = json.loads(snap.row(part[1]).to_json(orient="records"))[0]
    return out


def read_inputs(engine: Engine, first: int, last: int) -> pd.DataFrame:
    """The stored (redacted) inputs and latencies of the API predictions among ``first`` …
    ``last``, one row per prediction."""
    i = prediction_inputs.c
    query = select(i.seq, i.latency_ms, i.input).where(i.seq.between(first, last)).order_by(i.seq)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    inputs = pd.DataFrame([r[2] for r in rows])
    inputs.insert(0, "latency_ms", [r[1] for r in rows])
    inputs.insert(0, "seq", [r[0] for r in rows])
    return inputs
