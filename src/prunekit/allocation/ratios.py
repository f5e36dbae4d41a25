"""Fixed per-layer pruning ratios, written as in the CHIP paper (METHODS.md section 2.3).

CHIP does not search widths: its scripts take hand-set lists such as ``[0.]+[0.15]*2+[0.4]*27``
(fraction of channels removed per entry) and keep ``int(c * (1 - ratio))`` channels, exactly as
here. The list maps onto the built-in models as the official code maps it:

* CIFAR ResNet-20/56/110 (3n + 3 entries): the stem, the stage-1 and stage-2 streams, then each
  block's inner (conv1) width in order; the stage-3 stream is never pruned. Here the stem and the
  stage-1 stream are one Unit (the first block's shortcut is an identity), so the stem ratio must
  equal stage 1's, or be 0: the official loader copies the stem unpruned, so 0 is what every
  released list says, and the shared Unit then takes the stage-1 ratio (the stem loses those
  channels too, which the official model keeps by cropping the first shortcut by position).
* VGG-16-BN (12 entries): the first 12 convs; the 13th conv and the classifier never.

The budget is not solved for: the ratios fix every width. A budget, if given, is a ceiling the
ratios must meet (BudgetError otherwise); without one (CLI: ``--ratios`` and no ``--budget``) the
dense cost is the ceiling.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch.nn as nn

from ..budget import _human
from ..cost import CostModel
from ..errors import BudgetError, ConfigError
from ..graph import UnitGraph
from ..models.resnet_cifar import CifarResNet
from ..models.vgg import VGG
from ..signals import Signals
from . import register_allocator

MAX_ENTRIES = 10_000  # a repeat count beyond any real network is a typo, not a request for memory
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"  # unambiguous: no backtracking blow-up
_TERM = re.compile(rf"(\[\s*{_NUMBER}(?:\s*,\s*{_NUMBER})*\s*\]|{_NUMBER})(?:\s*\*\s*(\d+))?")
EXAMPLE = "[0.]+[0.15]*2+[0.4]*27"


def parse_ratios(spec: str | Sequence[float]) -> list[float]:
    """``"[0.]+[0.15]*2+[0.4]*27"`` -> [0.0, 0.15, 0.15, 0.4, ...], read without eval.

    Terms are bracketed number lists (or bare numbers, as the official regex also reads them) with
    an optional ``*count``, joined by ``+``; a sequence of numbers is taken as it is. Every ratio
    must be in [0, 1).
    """
    if isinstance(spec, str):
        ratios: list[float] = []
        for term in spec.split("+"):
            m = _TERM.fullmatch(term.strip())
            if not m:
                raise ConfigError(f"cannot read ratios term {term.strip()[:40]!r}; write terms like [0.15]*2 joined by +, "
                                  f"e.g. {EXAMPLE}")
            values, count = m.group(1).strip("[]").split(","), int(m.group(2) or 1)
            if count < 1 or len(ratios) + count * len(values) > MAX_ENTRIES:
                raise ConfigError(f"ratios term {term.strip()!r} repeats {count} times; use a count from 1 to the "
                                  "number of layers")
            ratios += [float(v) for v in values] * count
    else:
        try:
            ratios = [float(v) for v in spec]
        except (TypeError, ValueError):
            raise ConfigError(f"ratios must be a list of numbers or a string like {EXAMPLE}, got {spec!r}") from None
    for i, r in enumerate(ratios):
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"ratio {r} (entry {i}) is outside [0, 1): it is the fraction of a layer's channels "
                              "removed")
    return ratios


def paper_layout(model: nn.Module) -> list[list[str]]:
    """The layers each entry of a paper ratio list prunes, by the layer whose output it sets."""
    if isinstance(model, CifarResNet):
        blocks = [f"layer{s}.{j}" for s in (1, 2, 3) for j in range(len(getattr(model, f"layer{s}")))]
        return [["conv1"], ["layer1.0.conv2"], ["layer2.0.conv2"]] + [[f"{b}.conv1"] for b in blocks]
    if isinstance(model, VGG):
        names = {m: n for n, m in model.named_modules()}
        convs = [names[m] for m in model.features if isinstance(m, nn.Conv2d)]
        return [[n] for n in convs[:-1]]
    raise ConfigError(f"per-layer ratios follow the CHIP paper's layouts, defined for the built-in resnet20/56/110 and "
                      f"vgg16_bn, not {type(model).__name__}; give a budget instead")


def unit_ratios(graph: UnitGraph, ratios: list[float]) -> dict[str, float]:
    """Each Unit's ratio; Units no entry names keep every channel."""
    layout = paper_layout(graph.model)
    if len(ratios) != len(layout):
        raise ConfigError(f"{type(graph.model).__name__} takes {len(layout)} ratios in the paper's layout, got "
                          f"{len(ratios)}")
    owner = {p: u.name for u in graph.units for p in u.producers}
    out: dict[str, float] = {}
    for entry, (layers, r) in enumerate(zip(layout, ratios)):
        for layer in layers:
            if layer not in owner:
                if r > 0:
                    raise ConfigError(f"ratio {r} (entry {entry}) prunes {layer}, which is protected or ignored here; "
                                      "set it to 0 or stop ignoring the layer")
                continue
            unit = owner[layer]
            if entry == 1 and unit in out and out[unit] not in (0.0, r):
                raise ConfigError(f"the stem ratio {out[unit]} differs from stage 1's {r}, but here the stem and the "
                                  "stage-1 stream are one Unit; make them equal (or set the stem to 0, as the "
                                  "paper's lists do)")
            out[unit] = r
    return out


@register_allocator("ratios")
def ratios(graph: UnitGraph, cost: CostModel, targets: dict[str, float], scores, signals: Signals, seed: int = 0,
           ratios: str | Sequence[float] | None = None) -> np.ndarray:
    """Widths ``int(c * (1 - ratio))`` from a hand-set ratio list; the budget is only checked."""
    if ratios is None:
        raise ConfigError(f"the ratios allocator needs ratios=...; e.g. --ratios '{EXAMPLE}'")
    spec = ratios
    per_unit = unit_ratios(graph, parse_ratios(spec))
    widths = []
    for u in graph.units:
        r = per_unit.get(u.name, 0.0)
        keep = int(u.width * (1 - r))  # the official code's rounding (down)
        if keep < u.min_keep:
            raise ConfigError(f"ratio {r} keeps {keep} of {u.name}'s {u.width} channels, below its minimum "
                              f"{u.min_keep}; lower the ratio or min_width")
        widths.append(u.snap(keep))
    widths = np.array(widths, dtype=np.float64)
    for key, target in targets.items():
        have = getattr(cost, key)(widths)
        if have > target * (1 + 1e-12):
            name = "flops" if key == "macs" else key
            raise BudgetError(f"the ratios keep {_human(have)} {name}, above the budget's {_human(target)}; raise the "
                              "budget or drop it (with ratios it is only a ceiling)")
    signals.record["ratios"] = {"spec": spec if isinstance(spec, str) else list(map(float, spec)), "units": per_unit}
    return widths
