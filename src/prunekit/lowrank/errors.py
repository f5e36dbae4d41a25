"""One-line errors of the low-rank methods (ConfigError subclasses: the CLI exits 2)."""
from ..errors import ConfigError


class LowRankError(ConfigError):
    """A bad low-rank setting: energy or threshold out of range, an unknown scheme, a rank too large."""


class UndecomposableLayerError(LowRankError):
    """A layer named for decomposition that no scheme can factorize exactly (grouped, transposed...)."""
