"""Keyed hashes for PII: records can be joined on an identity without ever storing it.

BLAKE2b in keyed mode (a MAC, like HMAC but faster), with the project's secret from
``COPML_HOME/secret.key``; without the key a hash cannot be reversed by guessing ids.
"""

from __future__ import annotations

from hashlib import blake2b

import pandas as pd


def keyed_hash(value: object, key: bytes) -> str:
    return blake2b(str(value).encode(), key=key[:64], digest_size=16).hexdigest()


def redact_series(values: pd.Series, key: bytes) -> pd.Series:
    """Keyed hash of every non-missing value (missing stays missing)."""
    k = key[:64]
    out = [
        None
        if v is None or v is pd.NA
        else blake2b(str(v).encode(), key=k, digest_size=16).hexdigest()
        for v in values.tolist()
    ]
    return pd.Series(out, index=values.index, dtype="string")


def redact(frame: pd.DataFrame, columns: list[str], key: bytes) -> pd.DataFrame:
    """A copy of ``frame`` with the named columns replaced by their keyed hashes."""
    out = frame.copy()
    for column in columns:
        if column in out.columns:
            out[column] = redact_series(out[column], key)
    return out
