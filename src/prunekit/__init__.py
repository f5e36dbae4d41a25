"""prunekit: compress a trained CNN to a FLOPs/params budget, physically, automatically."""
from .budget import Budget
from .cost import CostModel, count
from .errors import (BudgetError, CheckpointError, ConfigError, DataError, OutputError, PrunekitError,
                     UnsupportedLayerError)
from .fold import inference_form
from .graph import Unit, UnitGraph
from .io import export_onnx, export_torchscript, load, save
from .methods import list_methods
from .pipeline import Result, compress
from .plan import Plan
from .sweep import sweep
from .train import finetune

__version__ = "0.1.0"

__all__ = [
    "Budget", "BudgetError", "CheckpointError", "ConfigError", "CostModel", "DataError", "OutputError", "Plan",
    "PrunekitError", "Result", "Unit", "UnitGraph", "UnsupportedLayerError", "compress", "count",
    "export_onnx", "export_torchscript", "finetune", "inference_form", "list_methods", "load", "save", "sweep",
]
