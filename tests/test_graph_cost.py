"""UnitGraph + CostModel identities: predicted == measured, exact surgery, on many architectures."""
import copy
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import CostModel, Plan, Result, UnitGraph, count
from prunekit.models import create_model
from tests.helpers import masked_copy, random_keep

BUILTIN = ["resnet20", "resnet56", "resnet110", "vgg16_bn", "mobilenetv2"]
TORCHVISION = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "googlenet", "regnet_x_400mf",
               "convnext_tiny"]


def _roundtrip(model, graph, keep, x, fresh):
    """save() then load() into a freshly initialized dense model must give the same outputs."""
    plan = Plan(method="random", budget="", input_shape=list(x.shape), keep=keep,
                widths={k: len(v) for k, v in keep.items()}, dense_widths={u.name: u.width for u in graph.units})
    with tempfile.TemporaryDirectory() as d:
        prunekit.save(Result(model, plan, {}), d)
        loaded = prunekit.load(d, fresh).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _prune_and_check(model, x, seed):
    graph = UnitGraph(model, x)
    cost = CostModel(graph)
    dense = cost.evaluate()
    assert (round(dense["macs"]), round(dense["params"])) == count(model, x)
    keep = random_keep(graph, torch.Generator().manual_seed(seed))
    predicted = cost.evaluate({k: len(v) for k, v in keep.items()})
    graph.apply(keep)
    macs, params = count(model, x)
    assert round(predicted["macs"]) == macs
    assert round(predicted["params"]) == params
    return graph, keep


@pytest.mark.parametrize("name", BUILTIN)
@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1))
def test_builtin_random_keep_matches_masked_dense(name, seed):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so masking is a real test
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1, 28, 28)
    dense = copy.deepcopy(model)
    graph, keep = _prune_and_check(model, x[:1], seed)
    reference = masked_copy(dense, UnitGraph(dense, x[:1]), keep)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    _roundtrip(model, graph, keep, x, create_model(name, in_channels=1, num_classes=10))


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
@settings(max_examples=2)
@given(seed=st.integers(0, 2**31 - 1))
def test_torchvision_random_keep_exact_costs(name, seed):
    tv = pytest.importorskip("torchvision")
    model = tv.models.get_model(name, weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    graph, keep = _prune_and_check(model, x, seed)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
    _roundtrip(model, graph, keep, x, tv.models.get_model(name, weights=None, num_classes=10))


def test_classifier_output_is_protected():
    model = create_model("resnet20", in_channels=1, num_classes=7)
    graph = UnitGraph(model, torch.randn(1, 1, 28, 28))
    assert graph.protected == {"fc"}
    assert all(u.name != "fc" for u in graph.units)


def test_resnet56_units_follow_the_architecture():
    graph = UnitGraph(create_model("resnet56", in_channels=1), torch.randn(1, 1, 28, 28))
    widths = sorted(u.width for u in graph.units)
    # 27 block-internal widths + 3 residual streams (each stage's stream is one unit)
    assert len(graph) == 30
    assert widths.count(16) == 10 and widths.count(32) == 10 and widths.count(64) == 10
    stream = max(graph.units, key=lambda u: len(u.producers) if u.width == 64 else 0)
    assert len(stream.producers) == 10  # 9 block conv2 + the stage's 1x1 projection


def test_grouped_conv_units_keep_group_structure():
    tv = pytest.importorskip("torchvision")
    model = tv.models.get_model("regnet_x_400mf", weights=None, num_classes=10).eval()
    graph = UnitGraph(model, torch.randn(1, 3, 64, 64))
    grouped = [u for u in graph.units if u.groups > 1]
    assert grouped
    u = grouped[0]
    with pytest.raises(Exception, match="same offsets"):
        graph.apply({u.name: [0]})


def test_ignored_layers_are_not_pruned():
    model = create_model("resnet20", in_channels=1)
    graph = UnitGraph(model, torch.randn(1, 1, 28, 28), ignore=["layer1.0.conv1"])
    assert "layer1.0.conv1" not in {u.name for u in graph.units}
    assert all("layer1.0.conv1" not in u.producers for u in graph.units)


def test_ignore_unknown_layer_is_a_clear_error():
    from prunekit import ConfigError
    with pytest.raises(ConfigError, match="unknown layer"):
        UnitGraph(create_model("resnet20"), torch.randn(1, 3, 32, 32), ignore=["nope"])


class _FunctionalMix(torch.nn.Module):
    """A functional conv with a bare weight between two layers: Torch-Pruning cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.w = torch.nn.Parameter(torch.randn(4, 8, 1, 1))
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.nn.functional.conv2d(self.conv(x), self.w).mean((2, 3)))


class _MatmulMix(_FunctionalMix):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8 * 6 * 6, 4))

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1) @ self.w)


@pytest.mark.parametrize("cls", [_FunctionalMix, _MatmulMix])
def test_untraceable_layer_is_named_before_any_surgery(cls):
    from prunekit import UnsupportedLayerError
    with pytest.raises(UnsupportedLayerError, match=r"ignore=\['conv'\]"):
        UnitGraph(cls(), torch.randn(1, 3, 8, 8))


def test_ignoring_the_named_layer_makes_it_work():
    from prunekit import ConfigError, compress
    with pytest.raises(ConfigError, match="no prunable layers"):
        compress(_FunctionalMix(), torch.randn(1, 3, 8, 8), 0.9, ignore=["conv"])
