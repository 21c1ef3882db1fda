"""The methods a run can train and answer with: one registry, read by config validation, the CLI, the
benchmark and evaluation.

Each method names its train and predict functions as "module:function", imported when first used.
Naming rather than importing them is what keeps the layers straight: every method's module imports
the config, and the config validates bench.methods against these kinds, so the config cannot import
the methods; it also keeps torch out of `geoloc --help` and of config parsing.

train(cfg, run_dir, resume) -> summary dict; predict(run_dir, cfg, test manifest) -> metrics.Predictions.
"""
from __future__ import annotations

import importlib
from typing import Callable

from retrieval import GeolocError

METHODS: dict[str, tuple[str, str]] = {
    "cells": ("baselines.cells:train_cells", "baselines.cells:predict"),
    "regression": ("baselines.regression:train_regression", "baselines.regression:predict"),
    # The embedding trains with its optional cells prior (retrieval.answering.prior) and answers through the Locator.
    "embedding": ("retrieval.answering.prior:train_embedding_and_prior", "retrieval.answering.locator:predict_test"),
}


def import_target(target: str):
    """The object named by "package.module:name", imported on use."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def method_kind(name: str) -> str:
    """A benchmark method's kind: the first word of its name (the rest tells variants apart)."""
    kind = name.split("_", 1)[0]
    if kind not in METHODS:
        raise GeolocError(f"bench.methods: {name!r} must start with one of {', '.join(METHODS)}")
    return kind


def trainer(kind: str) -> Callable:
    return import_target(METHODS[method_kind(kind)][0])


def predictor(kind: str) -> Callable:
    if kind not in METHODS:
        raise GeolocError(f"run kind {kind!r} has no predictor (known: {', '.join(sorted(METHODS))})")
    return import_target(METHODS[kind][1])
