"""Width allocators: choose every Unit's width under the Budget using the CostModel.

An allocator is ``allocate(graph, cost, targets, scores, signals, seed) -> np.ndarray`` of widths
(one per Unit, in graph order), registered by name; one file each.
"""
from __future__ import annotations

from ..registry import Registry

ALLOCATORS = Registry("allocator")
register_allocator = ALLOCATORS.register

from . import uniform, global_threshold, itpruner, ratios, acp, dagger  # noqa: E402,F401  (registration)
from . import efa, fisher_iterative, global_raw  # noqa: E402,F401  (issue 16: effective filters, Group Fisher)

__all__ = ["ALLOCATORS", "register_allocator"]
