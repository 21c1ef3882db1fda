"""The Python API, in one import: `from retrieval.api import Locator`.

Locator.load(RUN) loads a trained (or zero-shot) embedding run once: model, index, the vote mode and the
cells prior and geometric rerank it answers with; locate() answers paths, folders, PIL images or arrays
(Answer, with the Neighbours that voted), locate_route() photos taken in order (Route). The classes live
in retrieval.answering; this module only hands them out, so a script needs no map of the packages.
"""
from retrieval.answering.locator import Answer, Locator, Neighbour
from retrieval.answering.route import Route
from retrieval.run import Run

__all__ = ["Answer", "Locator", "Neighbour", "Route", "Run"]
