"""Shared test helpers: random legal keep-sets and the masked-dense reference."""
import copy

import torch

from prunekit.graph import UnitGraph, expand_groups


def random_keep(graph: UnitGraph, gen: torch.Generator, low: float = 0.0) -> dict[str, list[int]]:
    keep = {}
    for u in graph.units:
        size = u.width // u.groups
        k = int(torch.randint(max(1, int(low * size)), size + 1, (1,), generator=gen))
        keep[u.name] = expand_groups(u, torch.randperm(size, generator=gen)[:k].tolist())
    return keep


def masked_copy(model, graph: UnitGraph, keep: dict[str, list[int]]):
    """The dense model with every dropped channel's producers zeroed: what pruning must reproduce."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for u in graph.units:
            drop = torch.tensor(sorted(set(range(u.width)) - set(keep[u.name])), dtype=torch.long)
            if not len(drop):
                continue
            for s in u.slices:
                if s.role != "out":
                    continue
                p = masked.get_parameter(s.param)
                sel = torch.isin(s.channel, drop)
                p.index_fill_(s.dim, s.index[sel], 0.0)
    return masked
