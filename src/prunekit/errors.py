"""Errors a user can cause. Each message is one line that says what to change."""


class PrunekitError(Exception):
    """Base class: the CLI prints the message without a traceback and exits non-zero."""


class ConfigError(PrunekitError, ValueError):
    """A bad argument: unknown name, value out of range."""


class BudgetError(PrunekitError, ValueError):
    """A budget that is malformed or cannot be met by any model of this architecture."""


class DataError(PrunekitError):
    """Missing or unreadable dataset files."""


class CheckpointError(PrunekitError):
    """A checkpoint that is corrupt or belongs to another architecture."""


class UnsupportedLayerError(PrunekitError):
    """A layer that Torch-Pruning cannot prune consistently."""


class OutputError(PrunekitError):
    """An output location that cannot be written."""
