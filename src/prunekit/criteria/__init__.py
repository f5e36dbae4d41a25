"""Channel criteria: rank the channels inside each Unit (higher = keep).

A criterion is a function ``score(graph, signals, seed) -> {unit name: tensor[width]}`` registered
by name; one file per family.
"""
from __future__ import annotations

from ..registry import Registry

CRITERIA = Registry("criterion")
register_criterion = CRITERIA.register

from . import magnitude, random, bn_scale, taylor, chip  # noqa: E402,F401  (registration)
from . import fisher  # noqa: E402,F401  (issue 16: Group Fisher)

__all__ = ["CRITERIA", "register_criterion"]
