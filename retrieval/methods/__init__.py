"""The three methods a run can train and answer with, as real functions: the registry the CLI, the
benchmark and evaluation call.

train(cfg, run_dir, resume) -> summary dict; predict(run_dir, cfg, test manifest) -> metrics.Predictions.
The embedding (this package) trains with its optional cells prior, which the cells baseline's trainer
trains: this registry is the one place where retrieval reaches into baselines. Importing it loads the
training stack; the settings (retrieval.config) read the methods' names from retrieval.choices instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from baselines import cells, regression
from retrieval import GeolocError
from retrieval.choices import METHODS as KINDS
from retrieval.methods import embedding


@dataclass(frozen=True)
class Method:
    train: Callable  # (cfg, run_dir, resume) -> summary dict
    predict: Callable  # (run_dir, cfg, test manifest) -> metrics.Predictions


METHODS: dict[str, Method] = {
    "cells": Method(cells.train_cells, cells.predict),
    "regression": Method(regression.train_regression, regression.predict),
    "embedding": Method(partial(embedding.train_embedding_and_prior, train_cells=cells.train_cells),
                        embedding.predict_test),
}
assert tuple(METHODS) == KINDS, "retrieval.choices.METHODS and the registry name the same methods"


def method_kind(name: str) -> str:
    """A benchmark method's kind: the first word of its name (the rest tells variants apart)."""
    kind = name.split("_", 1)[0]
    if kind not in METHODS:
        raise GeolocError(f"bench.methods: {name!r} must start with one of {', '.join(METHODS)}")
    return kind


def trainer(kind: str) -> Callable:
    return METHODS[method_kind(kind)].train


def predictor(kind: str) -> Callable:
    if kind not in METHODS:
        raise GeolocError(f"run kind {kind!r} has no predictor (known: {', '.join(sorted(METHODS))})")
    return METHODS[kind].predict
