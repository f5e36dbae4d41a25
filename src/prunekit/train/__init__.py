"""Training and fine-tuning: a seeded SGD loop with one-cycle LR, label smoothing and distillation."""
from .evaluate import evaluate, recalibrate_bn
from .loop import distillation_loss, fit, make_optimizer, make_scheduler
from .recipe import Recipe

__all__ = ["Recipe", "distillation_loss", "evaluate", "fit", "make_optimizer", "make_scheduler", "recalibrate_bn"]
