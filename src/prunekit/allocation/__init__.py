"""Width allocators: choose every Unit's width under the Budget using the CostModel.

An allocator is ``allocate(graph, cost, targets, scores, signals, seed) -> np.ndarray`` of widths
(one per Unit, in graph order), registered by name; one file each.
"""
from __future__ import annotations

from ..registry import Registry

ALLOCATORS = Registry("allocator")
register_allocator = ALLOCATORS.register

from . import uniform, global_threshold, itpruner, ratios, acp  # noqa: E402,F401  (registration)

__all__ = ["ALLOCATORS", "register_allocator"]
