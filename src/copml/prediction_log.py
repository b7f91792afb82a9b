"""The durable log of every prediction, written and read a batch at a time.

A *batch* is one scoring run (or one group commit of the API): a header row with the
time, the model version and the input snapshot, then one narrow row per prediction. A
prediction id is the batch key followed by the row index in hex (``3f2a…0000001c``), so
it can be resolved without a per-row string index: that is what makes logging a million
predictions cost about as much as writing them to a file.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, func, insert, select, text

from copml.store import batches, bind_value, bulk_insert, feedback, predictions

KEY_HEX = 16
ROW_HEX = 8
ID_LENGTH = KEY_HEX + ROW_HEX


@dataclass(frozen=True)
class Batch:
    id: int
    key: str
    created_at: datetime
    model_version: str
    snapshot_id: str | None
    first_seq: int
    n_rows: int

    def prediction_ids(self) -> list[str]:
        return [f"{self.key}{i:08x}" for i in range(self.n_rows)]


def new_key() -> str:
    return secrets.token_hex(KEY_HEX // 2)


def split_id(prediction_id: str) -> tuple[str, int] | None:
    """(batch key, row) of a well-formed prediction id, else ``None``."""
    if len(prediction_id) != ID_LENGTH:
        return None
    try:
        return prediction_id[:KEY_HEX], int(prediction_id[KEY_HEX:], 16)
    except ValueError:
        return None


def _lock(conn: Connection) -> None:
    """Serialise writers so each batch gets a contiguous range of sequence numbers."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE batches IN SHARE ROW EXCLUSIVE MODE"))


@dataclass(frozen=True)
class Header:
    """What a batch says about all of its predictions."""

    key: str
    created_at: datetime
    model_name: str
    model_version: str
    snapshot_id: str | None
    origin: str


class _Abort(Exception):
    """Sent to the writer when the producer failed: roll everything back."""


class BatchWriter:
    """Writes one batch in one transaction from a background thread.

    Rows are inserted as the producer appends them (so logging overlaps prediction); the
    header, the caller's last statements (its event) and the commit come at :meth:`close`.
    Nothing is visible until then, and a failure anywhere rolls the whole batch back.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="copml-log-writer", daemon=True)
        self._result: Batch | BaseException | None = None
        self._ended = False  # the producer has sent close or abort
        self._thread.start()

    def append(self, label: np.ndarray, score: np.ndarray, review: np.ndarray) -> None:
        self._queue.put(("rows", (label, score, review)))

    def close(
        self, header: Header, before_commit: Callable[[Connection], None] | None = None
    ) -> Batch:
        """Run ``before_commit`` in the batch's transaction, write the header, commit."""
        self._queue.put(("close", (header, before_commit)))
        self._thread.join()
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result

    def abort(self) -> None:
        """Roll back whatever was written (a no-op once the batch is closed)."""
        if self._thread.is_alive():
            self._queue.put(("abort", None))
            self._thread.join()

    def _run(self) -> None:
        try:
            with self._engine.begin() as conn:
                self._result = self._write(conn)
        except _Abort:
            self._result = _Abort("aborted")
        except BaseException as exc:  # handed to the producer by close()
            self._result = exc
            while not self._ended:  # drain so the producer never blocks on a full queue
                kind, _ = self._queue.get()
                self._ended = kind != "rows"

    def _write(self, conn: Connection) -> Batch:
        _lock(conn)
        first = conn.execute(select(func.coalesce(func.max(predictions.c.seq), 0) + 1)).scalar_one()
        review_value = {b: bind_value(conn, predictions.c.review, b) for b in (False, True)}
        n = 0
        while True:
            kind, item = self._queue.get()
            self._ended = kind != "rows"
            if kind == "abort":
                raise _Abort()
            if kind == "close":
                break
            label, score, review = item
            rows = zip(
                range(first + n, first + n + len(score)),
                label.astype(int).tolist(),
                score.tolist(),
                [review_value[bool(r)] for r in review.tolist()],
                strict=True,
            )
            bulk_insert(conn, predictions, ("seq", "label", "score", "review"), rows)
            n += len(score)
        header, before_commit = item
        if before_commit is not None:
            before_commit(conn)  # e.g. the input snapshot the header refers to, and the event
        batch_id = conn.execute(
            insert(batches).values(
                key=header.key,
                created_at=header.created_at,
                model_name=header.model_name,
                model_version=header.model_version,
                snapshot_id=header.snapshot_id,
                origin=header.origin,
                first_seq=first,
                n_rows=n,
            )
        ).inserted_primary_key[0]
        batch = Batch(
            batch_id,
            header.key,
            header.created_at,
            header.model_version,
            header.snapshot_id,
            first,
            n,
        )
        return batch


def write(
    engine: Engine,
    header: Header,
    label: np.ndarray,
    score: np.ndarray,
    review: np.ndarray,
    before_commit: Callable[[Connection], None] | None = None,
) -> Batch:
    """Append a whole batch at once (see :class:`BatchWriter` to stream it)."""
    writer = BatchWriter(engine)
    writer.append(label, score, review)
    return writer.close(header, before_commit)


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
        ok = batch is not None and part is not None and part[1] < batch.n_rows
        seqs.append(batch.first_seq + part[1] if ok else None)  # type: ignore[union-attr]
    return pd.Series(seqs, dtype="Int64")


def read(engine: Engine, batch: Batch) -> pd.DataFrame:
    """A batch's predictions with their ground truth (``actual`` NaN when not yet known)."""
    p, f = predictions.c, feedback.c
    query = (
        select(p.seq, p.label, p.score, p.review, f.actual)
        .select_from(predictions.outerjoin(feedback, f.prediction_seq == p.seq))
        .where(p.seq.between(batch.first_seq, batch.first_seq + batch.n_rows - 1))
        .order_by(p.seq)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame.from_records(rows, columns=["seq", "label", "score", "review", "actual"])
    frame.insert(1, "row_index", frame["seq"] - batch.first_seq)
    frame["actual"] = pd.to_numeric(frame["actual"], errors="coerce")
    frame["review"] = frame["review"].astype(bool)
    frame.insert(0, "prediction_id", [f"{batch.key}{i:08x}" for i in frame["row_index"]])
    return frame
