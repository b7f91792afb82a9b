"""The x-ray application's own table in copml's store, beside each prediction: the second
answer of the cascade (model 2: the type of pneumonia; the prediction row holds model 1's
label and score), the image's sha256 and the registered versions of both networks.

Created by the application's own Alembic branch (``migrations/``), registered through the
``copml.migrations`` entry-point group, so copml's core schema never names it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import JSON, Column, Float, ForeignKey, MetaData, String, Table

from copml.store import Migrations, predictions
from copml.store.schema import Seq

metadata = MetaData()

cascade_answers = Table(
    "cascade_answers",
    metadata,
    Column("seq", Seq, ForeignKey(predictions.c.seq), primary_key=True, autoincrement=False),
    Column("type", String(32), nullable=True),
    Column("type_probability", Float, nullable=True),
    Column("image_sha256", String(64), nullable=False),
    Column("models", JSON, nullable=False),
)

MIGRATIONS = Migrations(
    folder=Path(__file__).parent / "migrations", head="xray_0001", tables=(cascade_answers,)
)
