"""Keyed hashes for PII: records can be joined on an identity without ever storing it.

BLAKE2b in keyed mode (a MAC, like HMAC but faster), with the project's secret from
``COPML_HOME/secret.key``; without the key a hash cannot be reversed by guessing ids.
Any Python string hashes: a lone surrogate (valid JSON, not valid UTF-8) is encoded with
``surrogatepass`` rather than raising, which leaves every valid string's hash as it was.
"""

from __future__ import annotations

from hashlib import blake2b

import numpy as np
import pandas as pd

_ENCODING = ("utf-8", "surrogatepass")


def keyed_hash(value: object, key: bytes) -> str:
    return blake2b(str(value).encode(*_ENCODING), key=key[:64], digest_size=16).hexdigest()


def redact_series(values: pd.Series, key: bytes) -> pd.Series:
    """Keyed hash of every non-missing value (missing stays missing)."""
    keyed = blake2b(key=key[:64], digest_size=16).copy  # copying skips re-keying per value
    present = values.notna().to_numpy()
    hashes: list[str] = []
    append = hashes.append
    for value in values[present].tolist():
        h = keyed()
        h.update(str(value).encode(*_ENCODING))
        append(h.hexdigest())
    out = np.full(len(values), None, dtype=object)
    out[present] = hashes
    return pd.Series(out, index=values.index, dtype="string")


def redact(frame: pd.DataFrame, columns: list[str], key: bytes) -> pd.DataFrame:
    """``frame`` with the named columns replaced by their keyed hashes (others shared)."""
    replaced = {c: redact_series(frame[c], key) for c in columns if c in frame.columns}
    return frame.assign(**replaced)
