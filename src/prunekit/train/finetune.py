"""Recovery training after pruning, the step that turns a pruned model into a usable one."""
from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from .loop import fit
from .recipe import Recipe


def finetune(target, data: Dataset, epochs: int = 10, teacher: nn.Module | None = None, *, lr: float = 0.05,
             eval_data: Dataset | None = None, checkpoint: str | Path | None = None, resume: bool = False,
             device=None, progress: bool = True, **recipe) -> list[dict]:
    """Fine-tune a pruned model (or a ``compress`` Result) in place; returns the per-epoch history.

    With ``teacher`` (the dense model) the loss distills its soft targets into the pruned model
    (KL at temperature ``kd_temperature`` mixed with cross-entropy, weight ``kd_weight``). Other
    keyword arguments are ``Recipe`` fields; the defaults are BENCHMARKS.md's fine-tuning recipe.
    """
    model = getattr(target, "model", target)
    if not isinstance(model, nn.Module):
        from ..errors import ConfigError
        raise ConfigError(f"finetune takes a model or the Result of compress, not {type(target).__name__}")
    plan = Recipe(epochs=epochs, lr=lr, **recipe)
    history = fit(model, data, plan, eval_data=eval_data, teacher=teacher, checkpoint=checkpoint, resume=resume,
                  device=device, progress=progress)
    if hasattr(target, "summary"):
        target.summary["finetune"] = {"recipe": plan.to_dict(), "distilled": teacher is not None, "epochs": history}
        target.summary["batchnorm"] = "fine-tuned"
    model.eval()
    return history
