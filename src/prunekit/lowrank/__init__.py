"""Low-rank compression: conv/linear factorizations (channel, spatial, network decoupling, SVD),
ranks by energy, singular-value threshold or to a budget, and TRP training (docs/lowrank.md)."""
from .cost import Factor, factorized_cost
from .decompose import CONV_SCHEMES, SCHEMES, factorize, max_rank, reconstruct, spectrum
from .errors import LowRankError, UndecomposableLayerError
from .ranks import energy_rank, threshold_rank
from .trp import TRPHook

__all__ = ["CONV_SCHEMES", "Factor", "LowRankError", "SCHEMES", "TRPHook", "UndecomposableLayerError",
           "energy_rank", "factorize", "factorized_cost", "max_rank", "reconstruct", "spectrum", "threshold_rank"]
