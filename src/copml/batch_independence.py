"""A prediction's score depends on its input and its model, never on the rest of its batch.

Every score copml computes (serving, batch scoring, replay, reproduce, a training's holdout and
calibration) goes through :func:`scores`, so that a decision logged from a batch of 1,000
replays bit for bit from its input alone.

Why it is needed: the kernels under a model are chosen by the shape of each call and split by
the number of threads, and different kernels round differently in the last bits. numpy computes
a one-row ``X @ w`` with ``dot`` and a many-row one with ``gemv``; oneDNN runs a one-image
convolution differently from a 256-image one; OpenBLAS splits a large ``gemv`` across threads.
On this project's 2-core AMD EPYC, before this rule, 19 of 37 churn scores computed alone
differed from the same rows scored together (by 2e-16), and 3 of 37 x-ray scores (by 6e-8).

The rule: score in chunks of exactly ``rows`` inputs (the last chunk padded with copies of its
last input, the padding's scores dropped), with BLAS and torch held at one thread.

Why that holds on any CPU, not just the one it was tested on:
- A library's choice of kernel and of work split is a function of the CPU, its own build, the
  shapes and dtypes of the call, and the thread count. Fixing the chunk shape and the thread
  count leaves only the CPU and the build, which are the same for every call in a process: every
  chunk runs the same instructions, whatever the batch was.
- Within a chunk, inference never mixes rows: a GEMM/GEMV keeps one accumulator per output and
  walks the reduction (feature) axis in the same blocked order for every row; a convolution
  reduces over one image's channels and taps; scalers, encoders and link functions are
  element-wise and correctly rounded. What could still treat a row by its place in the chunk is
  a thread's share boundary (ruled out by one thread) or an edge kernel for the rows left after
  the last full micro-tile: ``rows`` is a multiple of every common micro-tile height (2 to 64,
  and 3, 6, 12, 24, 48, 96 for BLIS-style kernels), so there are none. This is how BLAS, MKL and
  oneDNN are built, not a promise they document, so the tests check it (alone, 37, 1,000) on
  each CPU that runs them.
- Where even that is too much to assume, or the model itself looks at its batch (for example a
  ``ColumnTransformer`` choosing sparse or dense output by the chunk's density), one input per
  chunk (``rows=1``) removes the question: the input is always computed alone. The x-ray
  networks use it, since an image costs far more than a call.
- Tree ensembles (scikit-learn's, XGBoost, LightGBM) never mix rows either: their OpenMP
  threads share out rows, and each row sums its trees in the same order (tests/test_boosters.py
  checks alone = batch = one thread). What breaks them is their input changing form: XGBoost
  reads a sparse matrix's absent entries as missing, not 0, so a ``ColumnTransformer`` that
  turns sparse or dense by a chunk's density (``sparse_threshold``) changes a row's score.
- So a model known to be row-exact by its structure (scikit-learn's HistGradientBoosting
  and decision trees, alone or after column preparation that works row by row: see
  :mod:`copml.compiled`) is scored unpadded, in one call per batch: the fixed shape buys
  it nothing (``tests/test_compiled.py`` checks 100,000 rows against the padded rule).
- The rule does not make two different CPUs or library builds agree (AVX2 and AVX-512 kernels
  round differently): a replay on another machine may still differ in the last bits.

Cost (``benchmarks/batch_independence.py``: CPU time, best of 5, on the shared 2-core AMD EPYC
test machine; "before" is one call per batch and 256-image batches at 2 threads): per 1,000
rows of a 20,000-row batch, churn's logistic pipeline 8.7 → 24.3 ms and the
HistGradientBoosting pipeline of benchmarks/score.py 16.1 → 27.8 ms (a call costs ~24 ms of
scikit-learn overhead whatever its size, now paid per 1,536 rows); a one-row request 23.8 →
34.6 ms and 24.1 → 42.8 ms (the padding is scored too); 1,000 x-rays 4.62 → 5.58 s, one
x-ray 8.1 → 6.1 ms. ``ROWS`` trades the two: larger makes batches cheaper and requests dearer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from copml import compiled

ROWS = 1536  # 2**9 * 3: a whole number of micro-tiles for every common GEMM kernel

# One scoring at a time per process: the thread limits are process-wide settings, and a second
# scoring restoring them mid-call would change the first one's kernels.
_LOCK = threading.RLock()


@cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded in this process (numpy's and scipy's, loaded before any model
    can be scored); built once, as scanning the loaded libraries costs tens of milliseconds."""
    return ThreadpoolController().select(user_api="blas")


@contextmanager
def _one_thread() -> Iterator[None]:
    torch = sys.modules.get("torch")  # only when a model brought it: copml does not need it
    before = torch.get_num_threads() if torch is not None else None
    with _blas().limit(limits=1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)


def _taker(inputs: Any) -> Callable[[np.ndarray | slice], Any]:
    """How to take a chunk of ``inputs`` by row. A frame of one numeric type is given one
    memory layout (its values column-major, as a frame built column by column has them),
    whether its rows came from a CSV file, a Parquet snapshot or a request: a model's arrays
    inherit the layout and with it the BLAS kernel (``gemv_n`` or ``gemv_t``), so without
    this a ridge regression's replay from its snapshot differed from its batch score by an
    ulp. (Frames of mixed types reach a model through a ``ColumnTransformer``, whose output
    is built anew.)"""
    if isinstance(inputs, pd.Series):
        return lambda index: inputs.iloc[index]
    if not isinstance(inputs, pd.DataFrame):
        return lambda index: inputs[index]
    dtypes = set(inputs.dtypes)
    if len(dtypes) != 1 or not all(isinstance(t, np.dtype) and t.kind in "fiu" for t in dtypes):
        return lambda index: inputs.iloc[index]
    by_column = np.ascontiguousarray(inputs.to_numpy().T)  # no copy for a frame of one block

    def take(index: np.ndarray | slice) -> pd.DataFrame:
        values = np.ascontiguousarray(by_column[:, index])  # one row per column
        return pd.DataFrame(values.T, columns=inputs.columns, index=inputs.index[index], copy=False)

    return take


def model_scores(model: Any, predict: Callable[[Any, Any], Any], inputs: Any) -> np.ndarray:
    """``predict(model, chunk)`` over ``inputs`` under the rule, with the model's compiled
    stand-in where it has one (:mod:`copml.compiled`), in chunks of the model's own
    ``score_rows`` if it says so, unpadded for a row-exact model, else of :data:`ROWS`.
    ``inputs`` may be columns of plain values (the server's), which a compiled row-exact
    model takes as they are and anything else as a frame."""
    stand_in, exact = compiled.plan(model)
    declared = getattr(model, "score_rows", None)
    rows = int(declared) if declared is not None else (None if exact else ROWS)
    if isinstance(inputs, Mapping) and (rows is not None or stand_in is model):
        inputs = pd.DataFrame(inputs)
    return scores(lambda part: predict(stand_in, part), inputs, rows)


def scores(predict: Callable[[Any], Any], inputs: Any, rows: int | None = ROWS) -> np.ndarray:
    """``predict`` (one score per input, or one row of scores per input: 1-D or 2-D) over
    ``inputs`` (a frame or an array, by row), called only on chunks of exactly ``rows``
    inputs, one thread each: every input gets the scores it would get alone. ``rows=None``
    is for a row-exact model: one call on ``inputs`` as they are."""
    if rows is None:
        with _LOCK, _one_thread():
            return np.asarray(predict(inputs), dtype=np.float64)
    n = len(inputs)
    out = np.empty(0, dtype=np.float64)
    _take = _taker(inputs)
    with _LOCK, _one_thread():
        for start in range(0, n, rows):
            size = min(rows, n - start)
            if size == rows:
                chunk = _take(slice(start, start + rows))
            else:  # the last chunk: padded with its last input, always the same shape
                chunk = _take(np.minimum(np.arange(start, start + rows), n - 1))
            part = np.asarray(predict(chunk), dtype=np.float64)[:size]
            if start == 0:
                out = np.empty((n, *part.shape[1:]), dtype=np.float64)
            out[start : start + size] = part
    return out
