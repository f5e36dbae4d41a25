"""Criteria: the group L1 norm and per-batch Taylor scores, against direct computations."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from prunekit import compress
from prunekit.criteria import CRITERIA
from prunekit.errors import ConfigError
from prunekit.graph import UnitGraph
from prunekit.signals import Signals

X = torch.randn(1, 1, 8, 8)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_group_l1_is_the_mean_of_every_layers_norm():
    model = tiny()
    graph = UnitGraph(model, X)
    scores = CRITERIA.get("l1")(graph, Signals())
    m = graph.model
    producer = m[0].weight.abs().sum((1, 2, 3))
    consumer = m[3].weight.abs().sum((0, 2, 3))
    norm = m[1].weight.abs()
    unit = next(u for u in graph.units if u.width == 4)
    assert torch.allclose(scores[unit.name], ((producer + consumer + norm) / 3).double(), atol=1e-12)
    filters = CRITERIA.get("l1")(graph, Signals(), scope="filters")
    assert torch.allclose(filters[unit.name], producer.double(), atol=1e-12)


def test_group_l1_drops_a_channel_nobody_reads():
    """The filter-norm defect: behind a BatchNorm a filter's scale changes nothing the model computes,
    and a large filter can feed a channel the next layer ignores. The group norm ranks it last; the
    filter norm ranks it first."""
    model = tiny()
    with torch.no_grad():
        model[0].weight[2] *= 2 * model[0].weight.abs().sum((1, 2, 3)).max() / model[0].weight[2].abs().sum()  # the largest filter...
        model[3].weight[:, 2] = 0  # ...that no one reads
        model[1].weight[2] = 0.01
    graph = UnitGraph(model, X)
    unit = next(u for u in graph.units if u.width == 4)
    assert int(CRITERIA.get("l1")(graph, Signals())[unit.name].argmin()) == 2
    assert int(CRITERIA.get("l1")(graph, Signals(), scope="filters")[unit.name].argmax()) == 2


def test_per_batch_taylor_is_the_sum_of_each_batchs_saliency():
    model = tiny()
    data = TensorDataset(torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,)))
    signals = Signals(data, batches=3, batch_size=4)
    graph = UnitGraph(model, X)
    scores = CRITERIA.get("taylor")(graph, signals)
    m = graph.model
    expected = torch.zeros(6, dtype=torch.float64)
    for x, y in signals.batches():
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for p in (m[3].weight, m[3].bias, m[4].weight, m[4].bias):
            expected += (p * p.grad).abs().double().reshape(6, -1).sum(1)
        expected += (m[8].weight * m[8].weight.grad).abs().double().sum(0)
    m.zero_grad()
    unit = next(u for u in graph.units if u.width == 6)
    assert torch.allclose(scores[unit.name], expected, rtol=1e-6)


def test_per_batch_taylor_bounds_the_summed_gradient_score():
    """sum_b |w g_b| >= |w sum_b g_b| entry by entry: summing gradients first can only cancel."""
    model = tiny()
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))
    signals = Signals(data, batches=4, batch_size=4)
    graph = UnitGraph(model, X)
    per_batch = CRITERIA.get("taylor")(graph, signals)
    summed = CRITERIA.get("taylor")(graph, signals, accumulate="gradient")
    for name in per_batch:
        assert (per_batch[name] >= summed[name] - 1e-9).all()
        assert (per_batch[name] > summed[name]).any()


@pytest.mark.parametrize("method,options,needle", [("l1", {"scope": "all"}, "scope must be"),
                                                   ("taylor", {"accumulate": "mean"}, "accumulate must be"),
                                                   ("l1+global", {"normalize": "max"}, "normalize must be")])
def test_bad_options(resnet20, synthetic_train, method, options, needle):
    with pytest.raises(ConfigError, match=needle):
        compress(resnet20, torch.randn(1, 1, 28, 28), 0.5, method=method, data=synthetic_train, options=options)
