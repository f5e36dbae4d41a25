"""Methods: a criterion (which channels) plus an allocator (how many per Unit).

``"l1"`` is a preset, ``"taylor+global"`` combines any criterion with any allocator.
"""
from __future__ import annotations

from dataclasses import dataclass

from .allocation import ALLOCATORS
from .criteria import CRITERIA
from .errors import ConfigError
from .registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    criterion: str
    allocator: str
    description: str = ""


PRESETS: Registry[Method] = Registry("method")


def preset(name: str, criterion: str, allocator: str, description: str) -> None:
    PRESETS.register(name)(Method(name, criterion, allocator, description))


preset("l1", "l1", "uniform", "filter L1 norm, same fraction per layer (Li et al. 2017)")
preset("l2", "l2", "uniform", "filter L2 norm, same fraction per layer")
preset("random", "random", "uniform", "random channels, same fraction per layer (the control)")
preset("bn_scale", "bn_scale", "global", "BatchNorm |gamma| with one global threshold (Network Slimming)")
preset("taylor", "taylor", "global", "first-order Taylor |w*g| with one global threshold (needs data)")
preset("chip", "chip", "itpruner", "channel independence (nuclear norm) inside itpruner's widths (Sui et al.)")
preset("itpruner", "l1", "itpruner", "nHSIC layer importance + concave allocation under the cost polynomials (Zheng et al.)")
preset("next_layer", "next_layer", "global", "filter + next-layer input magnitude, global ranking (CPMC)")
preset("acp", "l1", "acp", "feature-map clustering start + particle swarm over widths, scored on held-out "
       "training data (Chang et al.; needs data)")
preset("dagger", "l1", "dagger", "gates from the pretrained weights by a shared MLP, trained toward the budget with a "
       "cost regularizer, then the highest gates kept (Su et al.; needs data)")
preset("fisher", "fisher", "global_raw", "Group Fisher importance per unit of memory, one global threshold "
       "(Liu et al., one-shot; needs data)")
preset("efa", "fisher", "efa", "effective-filter analysis: no Unit loses more than its gradient-matrix rank deficit, "
       "Fisher picks the filters (Zhou et al., reconstructed; needs data)")
preset("fisher_iterative", "l1", "fisher_iterative", "Group Fisher while training: mask the least important channel "
       "step every 25 iterations until the budget is met (Liu et al.; needs data, trains)")


# Not a preset: compress(method="auto") plans every candidate and returns the best (prunekit.auto).
AUTO = Method("auto", "", "", "every criterion x allocator, scored on held-out training data after BatchNorm "
              "re-estimation; returns the best (needs data)")

# Not presets either: low-rank decompositions, alone or after channel pruning ("l1+global,svd"); prunekit.lowrank.
LOWRANK = {"svd": Method("svd", "", "", "low-rank decomposition of the 3x3 convs (channel/spatial/decoupled), ranks "
                         "chosen to meet the budget; 'CHANNEL_METHOD,svd' prunes channels first"),
           "trp": Method("trp", "", "", "trained rank pruning: train with energy truncation + nuclear norm, then "
                         "decompose (Xu et al.; needs data, trains)")}


def is_lowrank(name) -> bool:
    """``svd``, ``trp`` or ``CHANNEL_METHOD,svd|trp``: compress hands these to prunekit.lowrank."""
    return isinstance(name, str) and any(part.strip() in LOWRANK for part in name.split(","))


def resolve(name: str) -> Method:
    """A preset name, or ``criterion+allocator``."""
    if name == AUTO.name:
        raise ConfigError("method 'auto' chooses one method per budget and runs only in compress; "
                          "here choose a method (prunekit methods)")
    if is_lowrank(name):
        raise ConfigError(f"method {name!r} decomposes layers and runs only in compress; here choose a channel "
                          "method (prunekit methods)")
    if "+" in name:
        crit, _, alloc = name.partition("+")
        CRITERIA.get(crit)
        ALLOCATORS.get(alloc)
        return Method(name, crit, alloc, "")
    if name in PRESETS:
        return PRESETS.get(name)
    if name in CRITERIA:
        return Method(name, name, "uniform", "")
    raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(PRESETS.names())} "
                      f"or criterion+allocator with criteria {CRITERIA.names()} and allocators {ALLOCATORS.names()}")


def list_methods() -> dict[str, list[str]]:
    return {"methods": PRESETS.names() + [AUTO.name] + list(LOWRANK), "criteria": CRITERIA.names(),
            "allocators": ALLOCATORS.names()}
