"""A fitted pipeline's column preparation in NumPy, used only where it gives the very array
scikit-learn's gives.

Why: a ``ColumnTransformer`` costs about 17 ms per call whatever its rows (per-column
validation, pandas indexing and container checks), against 3.7 ms for 200 trees on a few
rows: at serving's groups of ~16 rows it was four fifths of the model's time. The steps it
runs are simple (look a category up, subtract and divide, copy a column), so copml runs them
itself with the fitted parameters, and hands the final estimator the same ``float64`` array:

- only fitted ``Pipeline([ColumnTransformer, estimator])`` with dense output and default
  output containers, whose transformers are ``OrdinalEncoder``, ``OneHotEncoder`` with dense
  output, ``StandardScaler``, ``"passthrough"`` or ``"drop"`` (no infrequent categories, no
  dropped one-hot column) are compiled; anything else is scored by scikit-learn as before;
- a call whose input the compiled steps cannot take exactly (a missing value, an unknown
  category the encoder would refuse, a column of another type than at compile time) is
  handed to scikit-learn whole, which answers or raises as it always did;
- the first call (its first 2,048 rows) is computed both ways and compared element by
  element; any difference turns the compiled path off for that model for good
  (``tests/test_compiled.py`` compares 100,000 rows).

It also says which models need no padding (:func:`plan`): a tree ensemble sums each
row's trees in a fixed order and never mixes rows, so the batch-independence rule's fixed
chunk shape (:mod:`copml.batch_independence`) buys nothing for it but cost. And for the
few rows of a served group it walks a HistGradientBoosting model's trees all at once
(:class:`_Forest`), where scikit-learn calls them one by one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_log = logging.getLogger(__name__)

# Estimators whose score for a row is computed from that row alone, in an order that does not
# depend on the batch: each tree is walked per row and the trees are added in their order.
_ROW_EXACT = {
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
}

_WALKED = {n for n in _ROW_EXACT if "HistGradientBoosting" in n}

Block = Callable[["_Rows"], np.ndarray | None]  # None: this input needs scikit-learn

_CHECK_ROWS = 2048  # rows of a model's first call also prepared by scikit-learn, to compare
_SMALL = 256  # rows up to which a dict lookup per value beats building a hash index


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _kind_of_dtype(dtype: Any) -> str:
    """The families a lookup treats alike: text, integers, floats, booleans."""
    kind = dtype.kind
    if kind in "OUT":  # object, NumPy text, and pandas' string dtypes
        return "text"
    return {"i": "int", "u": "int", "f": "float", "b": "bool"}.get(kind, str(dtype))


def _kind_of_values(values: list[Any]) -> str:
    types = {type(v) for v in values}
    if types <= {str}:
        return "text"
    if types <= {int}:
        return "int"
    if types <= {float}:
        return "float"
    if types <= {bool}:
        return "bool"
    return "mixed"


class _Rows:
    """The input of one call: a frame, or columns of plain values as the server parses them
    (building a frame of a few rows costs more than the model)."""

    def __init__(self, data: pd.DataFrame | Mapping[str, list[Any]]) -> None:
        self.data = data
        self.is_frame = isinstance(data, pd.DataFrame)
        self.n = len(data) if self.is_frame else len(next(iter(data.values()), []))  # type: ignore[arg-type]

    def head(self, n: int) -> _Rows:
        if self.n <= n:
            return self
        if self.is_frame:
            return _Rows(self.data.iloc[:n])  # type: ignore[union-attr]
        return _Rows({k: v[:n] for k, v in self.data.items()})  # type: ignore[union-attr]

    def frame(self) -> pd.DataFrame:
        return self.data if self.is_frame else pd.DataFrame(self.data)  # type: ignore[return-value]

    def column(self, name: str) -> tuple[str, Any]:
        """Its kind and values: a list for a few rows, an array for many."""
        if self.is_frame:
            series = self.data[name]  # type: ignore[index]
            kind = _kind_of_dtype(series.dtype)
            if self.n <= _SMALL:
                return kind, series.tolist()
            arrow = isinstance(series.dtype, pd.StringDtype) and series.dtype.storage == "pyarrow"
            if arrow:  # looked up in Arrow, without a Python object per value
                return kind, pa.array(series)
            return kind, series.to_numpy()
        values = self.data[name]  # type: ignore[index]
        return _kind_of_values(values), values

    def numeric(self, names: list[str]) -> np.ndarray | None:
        """The columns side by side as one array, as scikit-learn gets them from a frame;
        None for text or float32 (scikit-learn's conversions decide)."""
        if self.is_frame:
            part = self.data[names]  # type: ignore[index]
            if not all(
                isinstance(t, np.dtype) and (t.kind in "biu" or t == np.float64)
                for t in part.dtypes
            ):
                return None
            return part.to_numpy()
        arrays = []
        for name in names:
            array = _number_array(self.data[name])  # type: ignore[index]
            if array is None:
                return None
            arrays.append(array)
        return np.column_stack(arrays)


def _number_array(values: list[Any]) -> np.ndarray | None:
    """A column of plain numbers as pandas would type it (None as NaN among numbers, which
    scikit-learn reads as NaN however pandas typed it); None for anything else."""
    types = {type(v) for v in values}
    if types <= {bool}:
        return np.asarray(values, dtype=bool)
    if not types <= {int, float, type(None)}:
        return None
    try:
        if types <= {int}:
            return np.asarray(values, dtype=np.int64)
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    except OverflowError:
        return None


def _codes(
    columns: list[str], categories: list[np.ndarray]
) -> Callable[[_Rows], tuple[np.ndarray, bool] | None]:
    """Each column's category index (-1 where unseen) and whether an unseen one is missing:
    a dict lookup per value for a few rows (as scikit-learn's own lookup for text), a hash
    index for many."""
    lookups = [{v: i for i, v in enumerate(c.tolist())} for c in categories]
    indexes = [pd.Index(c) for c in categories]
    kinds = [_kind_of_dtype(c.dtype) for c in categories]

    def codes(rows: _Rows) -> tuple[np.ndarray, bool] | None:
        out = np.empty((rows.n, len(columns)), dtype=np.intp)
        missing = False
        for j, column in enumerate(columns):
            kind, values = rows.column(column)
            if kind != kinds[j]:
                return None  # a lookup across types, or a missing value: scikit-learn decides
            if isinstance(values, list):
                get = lookups[j].get
                out[:, j] = [get(v, -1) for v in values]
            elif isinstance(values, pa.Array | pa.ChunkedArray):
                known = pa.array(categories[j].tolist(), type=values.type)
                found = pc.index_in(values, value_set=known)
                out[:, j] = np.asarray(found.fill_null(-1))
                if values.null_count:  # a missing text: scikit-learn decides
                    missing = True
                continue
            else:
                out[:, j] = indexes[j].get_indexer(values)
            unseen = np.flatnonzero(out[:, j] < 0)
            if len(unseen):
                missing = missing or bool(pd.isna(np.asarray(values, dtype=object)[unseen]).any())
        return out, missing

    return codes


def _lookup(
    encoder: Any, columns: list[str], refuse_unknown: bool
) -> Callable[[_Rows], np.ndarray | None]:
    """The encoder's category indexes (-1 where unseen), or None where scikit-learn must
    decide: a value of another type, a missing one, an unknown one the encoder refuses."""
    codes = _codes(columns, list(encoder.categories_))

    def lookup(rows: _Rows) -> np.ndarray | None:
        found = codes(rows)
        if found is None:
            return None
        index, missing = found
        if missing or (refuse_unknown and (index < 0).any()):
            return None
        return index

    return lookup


def _ordinal(encoder: Any, columns: list[str]) -> Block | None:
    if getattr(encoder, "_infrequent_enabled", False):
        return None
    lookup = _lookup(encoder, columns, encoder.handle_unknown != "use_encoded_value")

    def block(rows: _Rows) -> np.ndarray | None:
        index = lookup(rows)
        if index is None:
            return None
        out = index.astype(encoder.dtype, copy=False)
        out[index < 0] = encoder.unknown_value  # only reached where the encoder allows it
        return out

    return block


def _one_hot(encoder: Any, columns: list[str]) -> Block | None:
    dense = getattr(encoder, "sparse_output", True) is False
    if not dense or encoder.drop is not None or getattr(encoder, "_infrequent_enabled", False):
        return None
    if encoder.handle_unknown not in ("error", "ignore"):
        return None
    sizes = [len(c) for c in encoder.categories_]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    lookup = _lookup(encoder, columns, encoder.handle_unknown == "error")

    def block(rows: _Rows) -> np.ndarray | None:
        index = lookup(rows)
        if index is None:
            return None
        out = np.zeros((rows.n, int(sum(sizes))), dtype=encoder.dtype)
        at, col = np.nonzero(index >= 0)  # an unseen category ("ignore"): all zeros
        out[at, offsets[col] + index[at, col]] = 1
        return out

    return block


def _scaler(scaler: Any, columns: list[str]) -> Block:
    def block(rows: _Rows) -> np.ndarray | None:
        values = rows.numeric(columns)
        if values is None:
            return None
        values = values.astype(np.float64)  # a copy, as scikit-learn's check_array makes
        if scaler.with_mean:
            values -= scaler.mean_
        if scaler.with_std:
            values /= scaler.scale_
        return values

    return block


def _passthrough(columns: list[str]) -> Block:
    return lambda rows: rows.numeric(columns)


def _blocks(prepare: Any) -> list[Block] | None:
    """One block per output part of a fitted ColumnTransformer, in its output's order."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
    from sklearn.utils._set_output import _get_output_config

    if type(prepare) is not ColumnTransformer or not hasattr(prepare, "transformers_"):
        return None
    if prepare.sparse_output_ or _get_output_config("transform", prepare)["dense"] != "default":
        return None
    names = list(getattr(prepare, "feature_names_in_", []))
    if not names:
        return None  # fitted on an array: columns are positions, not names
    builders: dict[type, Callable[[Any, list[str]], Block | None]] = {
        OrdinalEncoder: _ordinal,
        OneHotEncoder: _one_hot,
        StandardScaler: _scaler,
    }
    blocks: list[Block] = []
    for _, transformer, selected in prepare.transformers_:
        columns = [names[c] for c in selected] if _positions(selected) else list(selected)
        if transformer == "drop" or not columns:
            continue
        if transformer == "passthrough" or _is_identity(transformer):
            found: Block | None = _passthrough(columns)
        else:
            builder = builders.get(type(transformer))
            found = builder(transformer, columns) if builder is not None else None
        if found is None:
            return None  # a step not compiled: the whole pipeline stays scikit-learn's
        blocks.append(found)
    return blocks or None


def _positions(selected: Any) -> bool:
    values = list(selected)
    return bool(values) and all(isinstance(v, int | np.integer) for v in values)


def _is_identity(transformer: Any) -> bool:
    """The ColumnTransformer's own passthrough remainder (an identity FunctionTransformer)."""
    return (
        _name(transformer).endswith("FunctionTransformer")
        and getattr(transformer, "func", "x") is None
        and getattr(transformer, "inverse_func", "x") is None
        and getattr(transformer, "validate", True) is False
    )


_WALK_ROWS = 128  # rows up to which walking every tree at once in NumPy beats per-tree calls


class _Forest:
    """A fitted HistGradientBoosting model's trees as flat arrays, walked for every tree of a
    few rows at once: scikit-learn calls each of 200 trees in turn (~16 µs a call), which
    is most of a small group's time. Each row meets the same tests (``x <= threshold``, NaN
    by the node's missing side) and gets the same leaf values, added to the baseline in the
    trees' order (``cumsum`` adds one after another), so the raw scores are scikit-learn's."""

    def __init__(self, model: Any) -> None:
        trees = [p for iteration in model._predictors for p in iteration]
        sizes = [len(t.nodes) for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        nodes = np.concatenate([t.nodes for t in trees])
        at = np.repeat(offsets, sizes)
        self.value = nodes["value"].astype(np.float64)
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.leaf = nodes["is_leaf"].astype(bool)
        self.left = nodes["left"].astype(np.intp) + at
        self.right = nodes["right"].astype(np.intp) + at
        self.roots = offsets
        self.per_iteration = int(model.n_trees_per_iteration_)
        self.baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        self.n_features = int(model.n_features_in_)

    @staticmethod
    def fits(model: Any) -> bool:
        """Numeric splits only, on an array the model validates itself."""
        return (
            getattr(model, "_preprocessor", "x") is None
            and hasattr(model, "_predictors")
            and not any(p.nodes["is_categorical"].any() for it in model._predictors for p in it)
        )

    def raw(self, x: np.ndarray) -> np.ndarray:
        """``model._raw_predict(x)``: shape (rows, trees per iteration), Fortran order."""
        n, trees = len(x), len(self.roots)
        node = np.tile(self.roots, n)  # row by row, each row's trees in order
        row = np.repeat(np.arange(n) * x.shape[1], trees)
        flat = x.ravel()
        active = np.flatnonzero(~self.leaf[node])  # only walks that have not reached a leaf
        while len(active):
            at = node[active]
            value = flat[row[active] + self.feature[at]]
            left = np.where(np.isnan(value), self.missing_left[at], value <= self.threshold[at])
            nxt = np.where(left, self.left[at], self.right[at])
            node[active] = nxt
            active = active[~self.leaf[nxt]]
        node = node.reshape(n, trees)
        leaves = self.value[node]
        raw = np.zeros((n, self.per_iteration), dtype=np.float64, order="F")
        raw += self.baseline
        for k in range(self.per_iteration):
            added = np.concatenate([raw[:, k : k + 1], leaves[:, k :: self.per_iteration]], axis=1)
            raw[:, k] = np.cumsum(added, axis=1)[:, -1]
        return raw


class _Trees:
    """Calls a HistGradientBoosting model's own link on raw scores walked by :class:`_Forest`
    for a few rows, and the model itself for more."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._forest = _Forest(model)

    def _walk(self, x: Any) -> bool:
        return (
            isinstance(x, np.ndarray)
            and x.dtype == np.float64
            and x.ndim == 2
            and x.flags.c_contiguous
            and x.shape[1] == self._forest.n_features
            and len(x) <= _WALK_ROWS
        )

    def predict_proba(self, x: Any) -> np.ndarray:
        if not self._walk(x):
            return self._model.predict_proba(x)
        return self._model._loss.predict_proba(self._forest.raw(x))

    def predict(self, x: Any, **params: Any) -> np.ndarray:
        if params or not self._walk(x) or hasattr(self._model, "classes_"):
            return self._model.predict(x, **params)
        return self._model._loss.link.inverse(self._forest.raw(x).ravel())


class _Compiled:
    """Stands in for a ``Pipeline([ColumnTransformer, estimator])`` when scoring; takes a
    frame or the server's columns of plain values."""

    def __init__(self, pipeline: Any, blocks: list[Block]) -> None:
        # Weakly: the plans' cache is keyed weakly by the pipeline, and must not keep it.
        self._pipeline = weakref.ref(pipeline)
        final = pipeline.steps[-1][1]
        self._final = _Trees(final) if _name(final) in _WALKED and _Forest.fits(final) else final
        self._blocks: list[Block] | None = blocks
        self._checked = False
        self._lock = threading.Lock()

    def _prepared(self, rows: _Rows) -> np.ndarray | None:
        if self._blocks is None:
            return None
        parts = []
        for block in self._blocks:
            part = block(rows)
            if part is None:
                return None
            parts.append(part)
        return np.hstack(parts)  # as ColumnTransformer._hstack stacks dense parts

    def _checked_prepared(self, rows: _Rows) -> np.ndarray | None:
        prepared = self._prepared(rows)
        if prepared is None or self._checked:
            return prepared
        with self._lock:
            expected = self._pipeline()[:-1].transform(rows.head(_CHECK_ROWS).frame())
            prepared_head = prepared[:_CHECK_ROWS]
            # As the estimator reads it: an object array (a column of None) becomes floats.
            same = (
                isinstance(expected, np.ndarray)
                and expected.shape == prepared_head.shape
                and np.array_equal(
                    np.asarray(expected, dtype=prepared.dtype), prepared_head, equal_nan=True
                )
            )
            if not same:
                _log.warning("compiled preparation differs from scikit-learn's: not used")
                self._blocks = None
                return None
            self._checked = True
        return prepared

    def predict_proba(self, features: Any) -> np.ndarray:
        rows = _Rows(features)
        prepared = self._checked_prepared(rows)
        if prepared is None:
            return self._pipeline().predict_proba(rows.frame())
        return self._final.predict_proba(prepared)

    def predict(self, features: Any, **params: Any) -> np.ndarray:
        rows = _Rows(features)
        prepared = self._checked_prepared(rows)
        if prepared is None:
            return self._pipeline().predict(rows.frame(), **params)
        return self._final.predict(prepared, **params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline(), name)


_PLANS: weakref.WeakKeyDictionary[Any, tuple[Any, bool]] = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.Lock()


def plan(model: Any) -> tuple[Any, bool]:
    """What to call for ``model``'s scores: the model or its compiled stand-in (the same
    ``predict``/``predict_proba`` answers, bit for bit), and whether it is row-exact (each
    row's score computed from that row alone, whatever the batch: a tree model, alone or
    after column preparation that works row by row). Worked out once per model object."""
    with _PLANS_LOCK:
        try:
            return _PLANS[model]
        except (KeyError, TypeError):
            pass
        found = _plan(model)
        with contextlib.suppress(TypeError):  # not weakly referable: worked out each time
            _PLANS[model] = found
        return found


def _plan(model: Any) -> tuple[Any, bool]:
    steps = getattr(model, "steps", None)
    if _name(model) != "sklearn.pipeline.Pipeline" or not steps:
        return model, _name(model) in _ROW_EXACT
    if len(steps) != 2:
        return model, False
    blocks = _blocks(steps[0][1])
    if blocks is None:
        return model, False
    return _Compiled(model, blocks), _name(steps[-1][1]) in _ROW_EXACT
