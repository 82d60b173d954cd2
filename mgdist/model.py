"""The model contract (docs/models.md): what mgdist needs of a user's micrograd model, and a
trained model ready to predict.

A model is a class whose constructor takes the number of input features (and keyword
arguments of its own) and builds, over the placeholders "X" (n, features) and "y" (n,):
`loss`, a scalar Value (the mean loss over the rows fed), `prediction`, a Value over X
alone, and `parameters()`, the trainable Values. Optional: `outputs` (names of the
prediction's columns) and `metrics(dataset)` (validation figures beyond the mean loss).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from micrograd import Value
from micrograd.nn import flatten
from mgdist.data import Dataset
from mgdist.errors import ModelError
from mgdist.preprocess import Preprocessing

PREDICT_ROWS = 65536  # rows per forward pass when predicting


class Metrics(Protocol):
    """Validation figures kept as sums, so that several workers' rows add up."""

    def add(self, X: np.ndarray, y: np.ndarray, pred: np.ndarray) -> None: ...
    def merge(self, other: Metrics) -> None: ...
    def summary(self) -> dict[str, float | dict[str, float]]: ...


@dataclass(frozen=True)
class ModelSpec:
    """A model class and its keyword arguments (JSON values, so that a checkpoint can hold them)."""
    cls: type
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.cls, type):
            raise ModelError(f"a model must be a class, got {self.cls!r}")
        try:  # as a checkpoint will give them back: tuples become lists
            object.__setattr__(self, "args", json.loads(json.dumps(dict(self.args))))
        except (TypeError, ValueError) as e:
            raise ModelError(f"model arguments of {self.path} must be JSON values: {e}") from None

    @property
    def path(self) -> str:
        """Where the class is imported from: package.module:Name."""
        return f"{self.cls.__module__}:{self.cls.__qualname__}"

    @classmethod
    def from_path(cls, path: str, args: dict[str, Any] | None = None) -> ModelSpec:
        """The class named `package.module:Name` (importable here), with its arguments."""
        module, _, name = path.partition(":")
        if not module or not name:
            raise ModelError(f"a model is named package.module:Name, got {path!r}")
        try:
            found: Any = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
        except ImportError as e:
            raise ModelError(f"cannot import model {path}: {e}") from None
        except AttributeError:
            raise ModelError(f"cannot import model {path}: module {module} has no {name}") from None
        return cls(found, args or {})

    def build(self, features: int) -> Any:
        """A new model for `features` inputs, checked against the contract."""
        try:
            model = self.cls(features, **self.args)
        except TypeError as e:
            raise ModelError(f"{self.path}({features}, **{self.args}) failed: {e}") from None
        for name in ("loss", "prediction"):
            if not isinstance(getattr(model, name, None), Value):
                raise ModelError(f"{self.path} has no micrograd Value `{name}` (see docs/models.md)")
        params = model.parameters() if callable(getattr(model, "parameters", None)) else None
        if not params or not all(isinstance(p, Value) for p in params):
            raise ModelError(f"{self.path}.parameters() must return the model's trainable Values")
        return model

    def describe(self, model: Any, features: int) -> dict:
        """What a checkpoint of this model records and what another run must match."""
        return {"class": self.path, "args": self.args, "features": features,
                "shapes": [list(p.data.shape) for p in model.parameters()]}


def predict(model: Any, X: np.ndarray, rows: int = PREDICT_ROWS) -> np.ndarray:
    """model.prediction for every row of X, `rows` at a time, float32."""
    parts = [model.prediction.forward(X=X[i:i + rows]) for i in range(0, max(len(X), 1), rows)]  # no rows: one empty pass
    return np.concatenate(parts)


def loss_sum(model: Any, X: np.ndarray, y: np.ndarray, rows: int = PREDICT_ROWS) -> float:
    """The loss summed over every row (model.loss is a mean), forward only."""
    return sum(float(model.loss.forward(X=X[i:i + rows], y=y[i:i + rows])) * len(y[i:i + rows])
               for i in range(0, len(X), rows))


def output_names(model: Any, columns: int) -> list[str]:
    """Names of the prediction's columns: the model's `outputs`, else prediction or prediction_0..."""
    names = list(getattr(model, "outputs", None) or
                 (["prediction"] if columns == 1 else [f"prediction_{j}" for j in range(columns)]))
    if len(names) != columns:
        raise ModelError(f"{type(model).__name__}.outputs names {len(names)} columns, its prediction has {columns}")
    return names


def make_metrics(model: Any, dataset: Dataset) -> Metrics | None:
    """The model's own validation metrics for rows of `dataset`, if it has any."""
    return model.metrics(dataset) if callable(getattr(model, "metrics", None)) else None


class Trained:
    """A model with trained weights and the run's preprocessing, ready to predict in this process."""

    def __init__(self, spec: ModelSpec, prep: Preprocessing, params: np.ndarray):
        self.spec, self.prep, self.features = spec, prep, prep.inputs
        self.model = spec.build(self.features)
        self.params, _ = flatten(self.model.parameters())
        if params.shape != self.params.shape:
            raise ModelError(f"{spec.path} has {self.params.size} parameters, the weights given {params.size}")
        np.copyto(self.params, params)

    def predict(self, data: Any) -> np.ndarray:
        """Predictions, in the target's units, for raw rows: an array (n, columns) of the training
        columns in order (prep.columns: numeric features, then categorical ones as integer codes),
        or a table of columns by name (dict of arrays, pyarrow Table, pandas DataFrame)."""
        columns = self.prep.columns
        if isinstance(data, np.ndarray) or not hasattr(data, "__getitem__") or isinstance(data, (list, tuple)):
            data = np.asarray(data)
            if data.ndim != 2 or data.shape[1] != len(columns):
                raise ModelError(f"{self.spec.path} takes rows of {len(columns)} columns ({', '.join(columns)}), "
                                 f"got shape {data.shape}")
            data = {name: data[:, j] for j, name in enumerate(columns)}
        missing = [n for n in columns if n not in _keys(data)]
        if missing:
            raise ModelError(f"{self.spec.path} needs columns {', '.join(missing)}, not given")
        X = np.column_stack([np.asarray(data[n], np.float32) for n in self.prep.features]) \
            if self.prep.features else np.empty((len(np.asarray(data[columns[0]])), 0), np.float32)
        return self.predict_raw(X, [np.asarray(data[n]) for n in self.prep.categorical])

    def predict_raw(self, X: np.ndarray, categories: list[np.ndarray]) -> np.ndarray:
        """Predictions, in the target's units, for numeric features X (n, features) and the values
        of each categorical column."""
        inputs = self.prep.inputs_of(np.ascontiguousarray(X, np.float32), categories)
        return self.prep.target_out(predict(self.model, inputs))

    def __reduce__(self):  # rebuilt where it is unpickled: its graph's closures do not travel
        return Trained, (self.spec, self.prep, self.params)

    def __repr__(self) -> str:
        return (f"Trained({self.spec.path}, args={self.spec.args}, columns={list(self.prep.columns)}, "
                f"inputs={self.features}, params={self.params.size})")


def _keys(data: Any) -> set[str]:
    """Column names of a dict, pyarrow Table or pandas DataFrame."""
    names = getattr(data, "column_names", None) or getattr(data, "columns", None)
    return set(names if names is not None else data.keys())
