"""Training and fine-tuning: seeded SGD with one-cycle LR, label smoothing, distillation, checkpoints and resume.

Scale-out is Accelerate's: the same code runs in one process or in each process ``torchrun`` starts.
"""
from .checkpoint import CHECKPOINT
from .evaluate import evaluate, recalibrate_bn
from .finetune import finetune
from .loop import distillation_loss, fit, make_optimizer, make_scheduler
from .recipe import Recipe

__all__ = ["CHECKPOINT", "Recipe", "distillation_loss", "evaluate", "finetune", "fit", "make_optimizer",
           "make_scheduler", "recalibrate_bn"]
