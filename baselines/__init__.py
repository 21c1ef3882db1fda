"""Baselines from the seed study: cell classification and coordinate regression."""
