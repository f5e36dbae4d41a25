"""Which layers are decomposed: TRP's targets by default, or the ones named in the options."""
from __future__ import annotations

import torch.nn as nn

from .decompose import check, why_not
from .errors import LowRankError


def default_layers(model: nn.Module, scheme: str, *, stride2: bool = False, linear: bool = False,
                   ignore=()) -> list[str]:
    """Every Conv2d except 1x1 convs and the first conv (TRP's ``get_look_up_table``); stride-2 convs
    only with ``stride2`` (the official code leaves them dense); Linear layers only with ``linear`` (TRP
    keeps the classifier). Layers that cannot be factorized (grouped convs) and ignored ones are skipped."""
    out, first = [], True
    for name, m in model.named_modules():
        if any(name == i or name.startswith(i + ".") for i in ignore):
            continue
        if isinstance(m, nn.Conv2d):
            if first:
                first = False
                continue
            if tuple(m.kernel_size) == (1, 1) or (max(m.stride) > 1 and not stride2):
                continue
        elif not (linear and isinstance(m, nn.Linear)):
            continue
        if why_not(m, scheme) is None:
            out.append(name)
    return out


def named_layers(model: nn.Module, layers, scheme: str) -> list[str]:
    """The layers named in the ``layers`` option (a list or a comma-separated string), each checked."""
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    names = [n for n in names if n]
    if not names:
        raise LowRankError("layers is empty; name the conv/linear layers to decompose, e.g. layers=layer1.0.conv1")
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or name not in modules or not name:
            raise LowRankError(f"layers names {name!r}, which is not a module of this model")
        check(modules[name], name, scheme)
    if len(set(names)) != len(names):
        raise LowRankError("layers names a layer twice")
    return names
