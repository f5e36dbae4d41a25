"""Core hardening (issue 11): never a wrong model, refusals in one line from prepare() before any data is read."""
import copy
import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from prunekit import compress
from prunekit.pipeline import prepare
from prunekit import CostModel, UnitGraph
from prunekit.cost import count
from prunekit.errors import CheckpointError, PrunekitError
from prunekit.models import create_model
from prunekit.plan import Plan
from tests.helpers import masked_copy, random_keep

X = torch.randn(1, 1, 16, 16)


class Untouchable(Dataset):
    """Calibration data that must never be read: every refusal happens before calibration."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        raise AssertionError("calibration data was read before the model was refused")


class NonLocal(nn.Module):
    def __init__(self, c, inner=4):
        super().__init__()
        self.theta, self.phi, self.g = nn.Conv2d(c, inner, 1), nn.Conv2d(c, inner, 1), nn.Conv2d(c, inner, 1)
        self.out = nn.Conv2d(inner, c, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        a = torch.softmax(self.theta(x).flatten(2).transpose(1, 2) @ self.phi(x).flatten(2), -1)
        y = (a @ self.g(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


class NonLocalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.nl = NonLocal(8)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.nl(F.relu(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(4, 8)
        self.conv2, self.gn2 = nn.Conv2d(8, 12, 3, padding=1), nn.GroupNorm(3, 12)
        self.conv3, self.gn3 = nn.Conv2d(12, 16, 3, padding=1), nn.GroupNorm(1, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return self.fc(F.relu(self.gn3(self.conv3(x))).mean((2, 3)))


class ConcatGrouped(nn.Module):
    def __init__(self, a=8, b=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, a, 3, padding=1), nn.Conv2d(1, b, 3, padding=1)
        self.g = nn.Conv2d(a + b, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.fc(F.relu(self.g(y)).mean((2, 3)))


class Shuffle(nn.Module):
    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.shuffle = Shuffle()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.shuffle(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


def _works_or_refused(model, budget=0.5, **kw):
    """Either a one-line PrunekitError from prepare() (which is given no data, so a refusal there comes
    before any calibration), or a pruned model that runs with predicted == measured costs."""
    try:
        prepare(model, X, **kw)
    except PrunekitError as e:
        assert "\n" not in str(e)
        return None
    r = compress(model, X, budget, **kw)
    with torch.no_grad():
        assert r.model.eval()(X).shape == model.eval()(X).shape
    assert (r.summary["macs"]["pruned"], r.summary["params"]["pruned"]) == count(r.model, X)
    return r


@pytest.fixture
def frozen_resnet20():
    return create_model("resnet20", in_channels=1, num_classes=10).eval().requires_grad_(False)


def test_frozen_model_keeps_its_classifier(frozen_resnet20):
    r = compress(frozen_resnet20, X, 0.99999)
    assert r.model.fc.out_features == 10 and r.model(X).shape == (1, 10)
    assert all(not p.requires_grad for p in frozen_resnet20.parameters())  # the caller's flags are restored


def test_no_grad_keeps_the_classifier():
    model = create_model("resnet20", in_channels=1, num_classes=10).eval()
    with torch.no_grad():
        r = compress(model, X, 0.5)
    assert r.model.fc.out_features == 10


def test_non_local_block_is_refused_naming_it_then_ignore_works():
    with pytest.raises(PrunekitError, match=r"matmul.*ignore=\['nl'\]"):
        compress(NonLocalNet(), X, 0.5, data=Untouchable())
    r = _works_or_refused(NonLocalNet(), ignore=["nl"])
    assert r is not None and r.summary["macs"]["pruned"] <= r.summary["macs"]["target"]
    assert r.model.nl.theta.out_channels == 4  # the ignored block is whole
    assert r.model.conv2.out_channels == 8  # and so is every width that reaches it


def test_groupnorm_widths_stay_multiples_of_num_groups():
    r = _works_or_refused(GroupNormNet())
    assert r is not None
    for gn in (r.model.gn1, r.model.gn2, r.model.gn3):
        assert gn.num_channels % gn.num_groups == 0


@pytest.mark.parametrize("widths", [(8, 8), (6, 10)])
def test_concat_into_grouped_conv_works_or_is_refused(widths):
    _works_or_refused(ConcatGrouped(*widths), budget=0.8)


def test_channel_shuffle_is_refused_naming_the_module():
    with pytest.raises(PrunekitError, match=r"channel shuffle.*ignore=\['shuffle'\]"):
        compress(ShuffleNet(), X, 0.5, data=Untouchable())


def test_matmul_outside_any_module_names_the_model():
    class Bare(NonLocalNet):
        def forward(self, x):
            x = F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            t = self.nl.theta(x).flatten(2)
            x = x + (t.transpose(1, 2) @ t).mean() * x
            return self.fc(F.relu(self.conv3(x)).mean((2, 3)))
    with pytest.raises(PrunekitError, match="matmul"):
        compress(Bare(), X, 0.5, data=Untouchable())


def test_surgery_failure_is_one_line_from_prepare(monkeypatch):
    import torch_pruning as tp

    def broken(self, *a, **k):
        raise IndexError("INDICES element is out of DATA bounds")
    monkeypatch.setattr(tp.dependency.Group, "prune", broken)
    with pytest.raises(PrunekitError, match=r"failed to prune unit .*IndexError"):
        compress(create_model("resnet20", in_channels=1), X, 0.5, data=Untouchable())


def test_callers_rng_is_unchanged():
    model = create_model("resnet20", in_channels=1).eval()
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,)))
    torch.manual_seed(1234)
    np.random.seed(5)
    random.seed(7)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a = compress(model, X, 0.5, method="random", data=data, seed=3, calibration_batch_size=8)
    assert torch.equal(before[0], torch.get_rng_state())
    assert np.array_equal(before[1], np.random.get_state()[1]) and before[2] == random.getstate()
    b = compress(model, X, 0.5, method="random", data=data, seed=3, calibration_batch_size=8)
    assert a.plan.keep == b.plan.keep  # still deterministic for a seed


def test_budget_gap_is_explained():
    model = create_model("resnet20", in_channels=1).eval()
    s = compress(model, X, 0.8, round_to=16).summary
    if s["within_tolerance"]:
        assert s["budget_note"] is None
    else:
        assert "round_to=16" in s["budget_note"] and f"{100 * s['budget_gap']:.1f}%" in s["budget_note"]
    assert compress(model, X, 0.5).summary["budget_note"] is None


@pytest.fixture(scope="module")
def plan_text():
    model = create_model("resnet20", in_channels=1).eval()
    return compress(model, X, 0.5).plan.to_json()


TAMPER = {
    "missing key": lambda d: d.pop("keep"),
    "unknown key": lambda d: d.__setitem__("evil", 1),
    "format": lambda d: d.__setitem__("format", 99),
    "huge input": lambda d: d.__setitem__("input_shape", [1, 1, 100000, 100000]),
    "negative input": lambda d: d.__setitem__("input_shape", [1, -1, 16, 16]),
    "input not ints": lambda d: d.__setitem__("input_shape", [1, "1", 16, 16]),
    "too many dims": lambda d: d.__setitem__("input_shape", [1] * 20),
    "width above dense": lambda d: d["widths"].__setitem__("conv1", 999),
    "keep out of range": lambda d: d["keep"]["conv1"].__setitem__(0, 10_000),
    "keep repeated": lambda d: d["keep"]["conv1"].__setitem__(1, d["keep"]["conv1"][0]),
    "keep length": lambda d: d["keep"]["conv1"].pop(),
    "bool width": lambda d: d["dense_widths"].__setitem__("conv1", True),
    "not an object": lambda d: d.clear() or d.__setitem__("format", [1]),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampered_plan_is_a_checkpoint_error(plan_text, how):
    d = json.loads(plan_text)
    TAMPER[how](d)
    with pytest.raises(CheckpointError) as e:
        Plan.from_json(json.dumps(d))
    assert "\n" not in str(e.value)


def test_untampered_plan_loads(plan_text):
    assert Plan.from_json(plan_text).to_json() == plan_text
    with pytest.raises(CheckpointError):
        Plan.from_json("[1, 2")


# -- follow-ups from the model zoo (GhostNet, ReXNet, auxiliary heads) ---------------------------------------


class Ghost(nn.Module):
    """timm's GhostModule: half the channels from a conv, half a depthwise copy of them, then a slice."""

    def __init__(self, cin, cout):
        super().__init__()
        self.cout, init = cout, (cout + 1) // 2
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), nn.BatchNorm2d(init),
                                   nn.ReLU())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, :self.cout]


class GhostNet(nn.Module):
    """A depthwise conv reads the ghost concat (Torch-Pruning then roots the group at it, with tied channels),
    and a ghost module ends a residual block."""

    def __init__(self, mid=8):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.g1, self.dw, self.g2 = Ghost(8, mid), nn.Conv2d(mid, mid, 3, padding=1, groups=mid), Ghost(mid, 8)
        self.head, self.fc = nn.Conv2d(8, 16, 1), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.g2(F.relu(self.dw(self.g1(x))))
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


def _random_bn(model):
    for m in model.modules():  # non-trivial statistics, so masking is a real test
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_ghost_module_prunes_exactly(seed):
    """Tied channels (a depthwise copy concatenated to its source) are one Unit channel each: the group is
    re-rooted at the primary/cheap conv, and pruned == masked dense with predicted == measured costs."""
    torch.manual_seed(0)
    model = _random_bn(GhostNet())
    dense = copy.deepcopy(model)
    graph = UnitGraph(model, X)
    assert {"g1.cheap.0": 4, "g2.cheap.0": 4} == {u.name: u.width for u in graph.units if "cheap" in u.name}
    cost = CostModel(graph)
    keep = random_keep(graph, torch.Generator().manual_seed(seed))
    predicted = cost.evaluate({k: len(v) for k, v in keep.items()})
    graph.apply(keep)
    assert (round(predicted["macs"]), round(predicted["params"])) == count(model, X)
    reference = masked_copy(dense, UnitGraph(dense, X), keep)
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), rtol=1e-4, atol=1e-4)


def test_ghost_module_compresses():
    r = _works_or_refused(GhostNet())
    assert r is not None and r.summary["macs"]["pruned"] <= r.summary["macs"]["target"]


def test_partial_channel_slice_is_refused_naming_the_module_then_ignore_works():
    """An odd ghost width slices a channel away: Torch-Pruning maps that slice wrongly."""
    with pytest.raises(PrunekitError, match=r"'g1' takes 7 of the 8 channels.*ignore=\['g1'\]"):
        compress(GhostNet(mid=7), X, 0.5, data=Untouchable())
    r = _works_or_refused(GhostNet(mid=7), budget=0.9, ignore=["g1"])
    assert r is not None and r.model.g1.primary[0].out_channels == 4 and r.model.head.out_channels < 16


class PartialResidual(nn.Module):
    """ReXNet's block: the shortcut is added to the first channels only (Torch-Pruning's grouping never ends)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.cin, self.conv = cin, nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y[:, :self.cin] + x, y[:, self.cin:]], 1)


class ReXNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.b1, self.b2 = PartialResidual(8, 12), PartialResidual(12, 16)
        self.head, self.fc = nn.Conv2d(16, 64, 3, padding=1), nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.b2(F.relu(self.b1(F.relu(self.stem(x))))))
        return self.fc(F.relu(self.head(x)).mean((2, 3)))


def test_partial_residual_is_refused_before_grouping_naming_every_block():
    with pytest.raises(PrunekitError, match=r"'b1' takes 8 of the 12 channels.*ignore=\['b1', 'b2'\]"):
        compress(ReXNetLike(), X, 0.5, data=Untouchable())
    r = _works_or_refused(ReXNetLike(), budget=0.7, ignore=["b1", "b2"])
    assert r is not None and r.model.head.out_channels < 64 and r.model.b2.conv.out_channels == 16


def test_rexnet_is_refused_in_one_line():
    """The real model (Torch-Pruning's grouping hung on it): refused while tracing, every block named."""
    pytest.importorskip("timm")
    model = create_model("timm:rexnet_100", num_classes=10).eval()
    with pytest.raises(PrunekitError, match=r"partial channel slice.*ignore=\['features.2', 'features.4'") as e:
        prepare(model, torch.randn(1, 3, 32, 32))
    assert "\n" not in str(e.value)


class AuxNet(nn.Module):
    """GoogLeNet's pattern: an auxiliary head that runs only in training mode."""

    def __init__(self, pool=2):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.aux = nn.Sequential(nn.AvgPool2d(pool), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.Flatten(),
                                 nn.Dropout(0.5), nn.LazyLinear(10))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        aux = self.aux(x) if self.training else None
        out = self.fc(F.relu(self.conv2(x)).mean((2, 3)))
        return (out, aux) if self.training else out


def _aux_net(pool=2):
    model = AuxNet(pool)
    model.train()(torch.randn(2, *X.shape[1:]))  # materialize the lazy layer
    return model.eval()


def test_training_only_head_is_pruned_with_its_inputs():
    """The eval-mode trace never reaches the head: the model is traced in training mode, so the head's
    inputs shrink with conv1 and the pruned model still runs in training mode (fine-tuning)."""
    model = _aux_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = _works_or_refused(model)
    assert r is not None and r.model.conv1.out_channels < 8
    assert r.model.aux[1].in_channels == r.model.conv1.out_channels and r.model.aux[5].out_features == 10
    out, aux = copy.deepcopy(r.model).train()(torch.randn(2, *X.shape[1:]))
    assert out.shape == aux.shape == (2, 10)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # no BatchNorm statistics moved


def test_ignored_training_only_head_keeps_its_inputs():
    r = _works_or_refused(_aux_net(), ignore=["aux"])
    assert r is not None and r.model.conv1.out_channels == 8 and r.model.aux[1].in_channels == 8
    copy.deepcopy(r.model).train()(torch.randn(2, *X.shape[1:]))


def test_training_only_head_that_cannot_run_is_refused_naming_it():
    model = _aux_net()
    model.aux[0] = nn.AvgPool2d(32)  # larger than the 16x16 example: the training-mode forward fails
    with pytest.raises(PrunekitError, match=r"module 'aux' never runs in eval mode.*aux_logits=False"):
        compress(model, X, 0.5, data=Untouchable())
