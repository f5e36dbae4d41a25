"""Shared test helpers: random legal keep-sets and the masked-dense reference."""
import copy

import torch
import torch.nn as nn

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


class TinyResidual(nn.Module):
    """Stem -> one residual block -> classifier: a stream Unit (stem + block output) and an inner one."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        h = self.stem(x)
        return self.fc(torch.relu(h + self.b(self.a(h))).mean((2, 3)))


def randomized_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and shifts away from the identity (in eval mode), so a removed branch's
    constant is not zero, and some of its channels are negative (a ReLU after it then matters)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()
