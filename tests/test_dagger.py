"""Dagger: weight-only gates, the soft cost on the CostModel's polynomial, the regularizer, exact budgets."""
import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import compress
from prunekit.allocation.dagger import (GateGenerator, dagger, install_gates, marginal_keys, regularizer,
                                        soft_cost, start_widths, train_gates)
from prunekit.budget import Budget
from prunekit.cli import main
from prunekit.cost import CostModel, count
from prunekit.errors import BudgetError, ConfigError, PrunekitError
from prunekit.graph import UnitGraph, expand_groups
from prunekit.models import create_model
from prunekit.report.page import render
from prunekit.signals import Signals

X = torch.randn(1, 1, 8, 8)
FAST = {"steps": 4, "batch_size": 16, "log_every": 2}


def data(n: int = 96, seed: int = 0) -> TensorDataset:
    """Four classes, each a fixed 8x8 pattern plus noise: learnable, so the task loss has a say."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.arange(n) % 4
    return TensorDataset(patterns[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g), y)


def resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet20", in_channels=1, num_classes=4).eval()


class Net(nn.Module):
    """Stem -> residual block -> conv -> classifier: a stream Unit, two inner Units of other widths and a
    Unit read by a linear layer; small enough to train for dozens of steps in a test."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.c = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b(self.a(x)))
        return self.fc(self.c(x).mean((2, 3)))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


@pytest.fixture(scope="module")
def setup():
    graph = UnitGraph(resnet(), X)
    return graph, CostModel(graph)


def signals(n: int = 96) -> Signals:
    return Signals(data(n), batches=1, batch_size=16, seed=0)


def masks(graph: UnitGraph, seed: int) -> list[torch.Tensor]:
    """A random 0/1 gate vector per Unit with at least min_keep ones (grouped Units: whole offsets)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for u in graph.units:
        size = u.width // u.groups
        k = int(torch.randint(max(1, u.min_keep // u.groups), size + 1, (1,), generator=gen))
        m = torch.zeros(u.width, dtype=torch.float64)
        m[expand_groups(u, torch.randperm(size, generator=gen)[:k].tolist())] = 1.0
        out.append(m)
    return out


# -- gates depend on the weights only ---------------------------------------------------------------
def test_gates_are_identical_for_two_different_input_batches_and_follow_the_weights(setup):
    graph, _ = setup
    gates = GateGenerator(graph, seed=3)
    handles = install_gates(graph, gates)
    seen = []
    try:
        for seed in (1, 2):
            x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * seed
            gates()
            graph.model(x)
            seen.append(torch.cat(gates.current).detach().clone())
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(seen[0], seen[1])
    assert not torch.equal(seen[0], torch.full_like(seen[0], seen[0][0]))  # not a constant: they read the weights
    # the same generator on other weights gives other gates
    other = UnitGraph(copy.deepcopy(graph.model), X)
    with torch.no_grad():
        other.model.get_submodule(other.units[1].name).weight.mul_(torch.linspace(0.1, 3, other.units[1].width)
                                                                    .reshape(-1, 1, 1, 1))
    moved = GateGenerator(other, seed=3)
    moved.load_state_dict({k: v for k, v in gates.state_dict().items() if k != "features"}, strict=False)
    assert not torch.equal(torch.cat(moved()).detach(), seen[0])


def test_hooks_at_zero_one_gates_compute_exactly_the_pruned_model(setup):
    """A gate of 0 is the channel removed: the gated dense model equals the physically pruned one."""
    graph, cost = setup
    dense = UnitGraph(copy.deepcopy(graph.model), X)
    gates = GateGenerator(dense)
    handles = install_gates(dense, gates)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed in range(2):
        m = masks(graph, seed)
        gates.current = [t.float() for t in m]
        with torch.no_grad():
            gated = dense.model(x)
        pruned = UnitGraph(copy.deepcopy(graph.model), X)
        pruned.apply({u.name: torch.nonzero(t).flatten().tolist() for u, t in zip(graph.units, m)})
        with torch.no_grad():
            assert torch.allclose(gated, pruned.model(x), atol=1e-5, rtol=1e-4)
        assert count(pruned.model, X) == tuple(round(float(soft_cost(cost, m)[k])) for k in ("macs", "params"))
    for h in handles:
        h.remove()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in dense.model.modules())


# -- the soft cost is the CostModel's polynomial -------------------------------------------------------
@settings(max_examples=40)
@given(st.integers(0, 10_000))
def test_soft_cost_at_zero_one_gates_equals_the_cost_model_exactly(setup, seed):
    graph, cost = setup
    m = masks(graph, seed)
    widths = {u.name: int(t.sum()) for u, t in zip(graph.units, m)}
    hard = cost.evaluate(widths)
    soft = soft_cost(cost, m)
    assert float(soft["macs"]) == hard["macs"] and float(soft["params"]) == hard["params"]


@settings(max_examples=40)
@given(st.integers(0, 10_000))
def test_soft_cost_gradient_is_the_polynomials_gradient(setup, seed):
    graph, cost = setup
    w = torch.rand(len(graph.units), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    w = (w * torch.tensor(cost.dense_widths)).requires_grad_()
    cost.macs.tensor(w).backward()
    assert np.allclose(w.grad.numpy(), cost.macs.grad(w.detach().numpy()), rtol=1e-12, atol=1e-9)


def test_regularizer_forms():
    r = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert torch.equal(regularizer(r, "two_sided"), torch.tensor([0.25, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(regularizer(r, "one_sided"), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(regularizer(r, "log"), torch.tensor([np.log(2), 0.0, np.log(2)], dtype=torch.float64))


# -- the regularizer drives the soft cost to the target ------------------------------------------------
def train(graph, cost, target, steps, lam, form, **kw):
    options = dict(polarize=0.0, lr=0.05, batch_size=16, hidden=16, temperature=1.0, init_gate=0.9,
                   descriptors_kind="stats", source="pretrained", train_weights=False, weight_lr=0.01,
                   weight_decay=0.0, distill=0.0, bn="train", log_every=10)
    return train_gates(graph, cost, target, signals(), 0, steps=steps, lam=lam, form=form, **{**options, **kw})


@pytest.mark.parametrize("form,key,fraction", [("two_sided", "macs", 0.4), ("log", "params", 0.5)])
def test_the_regularizer_drives_the_soft_cost_to_the_target_within_2_percent(form, key, fraction):
    graph = UnitGraph(net(), X)
    cost = CostModel(graph)
    target = {key: fraction * cost.evaluate()[key]}
    gates, path = train(graph, cost, target, 60, 2.0, form)
    final = float(soft_cost(cost, gates.current, (key,))[key]) / target[key]
    assert abs(final - 1) <= 0.02, path
    assert path[0][key] > 1.5 and path[-1][key] == pytest.approx(final) and path[-1]["step"] == 60


def test_without_the_regularizer_the_soft_cost_stays_high_and_one_sided_is_a_ceiling():
    graph = UnitGraph(net(), X)
    cost = CostModel(graph)
    target = {"macs": 0.4 * cost.evaluate()["macs"]}
    free, _ = train(graph, cost, target, 20, 0.0, "two_sided")
    assert float(soft_cost(cost, free.current, ("macs",))["macs"]) / target["macs"] > 1.5
    capped, _ = train(graph, cost, target, 30, 2.0, "one_sided", lr=0.02)
    assert float(soft_cost(cost, capped.current, ("macs",))["macs"]) / target["macs"] <= 1.02


def test_training_leaves_the_dense_copy_as_it_was_unless_weights_are_trained():
    graph = UnitGraph(net(), X)
    cost = CostModel(graph)
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    dagger(graph, cost, {"macs": 0.5 * cost.evaluate()["macs"]}, {}, signals(), 0, **FAST)
    assert all(torch.equal(before[k], v) for k, v in graph.model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in graph.model.modules())
    assert all(p.requires_grad for p in graph.model.parameters())
    dagger(graph, cost, {"macs": 0.5 * cost.evaluate()["macs"]}, {}, signals(), 0, train_weights="true",
           distill=0.5, source="current", descriptors="quantiles", bn="eval", **FAST)
    changed = [k for k, v in graph.model.state_dict().items() if not torch.equal(before[k], v)]
    assert "a.0.weight" in changed and "fc.weight" in changed
    assert not any("running" in k for k in changed)  # bn="eval": the dense statistics are used, not updated


# -- from gates to an exact budget ----------------------------------------------------------------------
def test_widths_from_gates_and_a_global_gate_ranking(setup):
    graph, _ = setup
    g = [np.linspace(0, 1, u.width) for u in graph.units]
    soft = start_widths(graph, g, "sum")
    assert all(s == max(u.min_keep, round(u.width / 2 / u.step) * u.step) or abs(s - u.width / 2) <= u.step
               for u, s in zip(graph.units, soft))
    assert list(start_widths(graph, g, "threshold")) == [max(u.min_keep, int((x > 0.5).sum())) for u, x in
                                                          zip(graph.units, g)]
    assert list(start_widths(graph, g, "global")) == [u.width for u in graph.units]
    shrink, grow = marginal_keys(graph, [np.full(u.width, 0.1 * (k + 1)) for k, u in enumerate(graph.units)])
    w = np.array([u.width for u in graph.units], dtype=float)
    assert int(np.argmin(shrink(w, None))) == 0  # the lowest gates go first
    assert grow(w, None).max() == -np.inf  # nothing left to grow at dense widths


@pytest.mark.parametrize("budget", ["flops=0.5", "params=0.4", "flops=0.3,params=0.6"])
def test_the_pruned_model_meets_the_budget_exactly_and_keeps_the_highest_gates(budget):
    r = compress(net(), X, budget, method="dagger", data=data(), options={**FAST, "steps": 10}, bn_batches=1,
                 calibration_batches=1, calibration_batch_size=16)
    s = r.summary
    measured = count(r.model, X)
    assert (s["macs"]["pruned"], s["params"]["pruned"]) == measured  # verify: predicted == measured
    for key in ("macs", "params"):
        if s[key]["target"] is not None:
            assert s[key]["pruned"] <= s[key]["target"]
    # on the budget as closely as the steps allow: no Unit can grow one more channel within every target
    graph = UnitGraph(net(), X)
    cost = CostModel(graph)
    for u in graph.units:
        if r.plan.widths[u.name] < u.width:
            grown = cost.evaluate({**r.plan.widths, u.name: r.plan.widths[u.name] + u.step})
            assert any(grown[k] > s[k]["target"] for k in ("macs", "params") if s[k]["target"] is not None)
    d = s["signals"]["dagger"]
    assert s["seconds"]["gate_training"] == d["seconds"] > 0
    assert set(d["gates"]) == set(r.plan.widths) and len(d["path"]) == 6
    for name, stats in d["gates"].items():
        assert 0 <= stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"] <= 1


def test_same_seed_same_plan_and_the_callers_rng_is_untouched():
    models = [net(), net()]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    runs = [compress(m, X, "flops=0.5", method="dagger", data=data(), options=FAST, bn_batches=0,
                     calibration_batches=1, calibration_batch_size=16) for m in models]
    assert torch.equal(torch.get_rng_state(), state)
    assert runs[0].plan.keep == runs[1].plan.keep
    assert runs[0].summary["signals"]["dagger"]["path"] == runs[1].summary["signals"]["dagger"]["path"]


def test_cli_options_summary_and_report(capsys, tmp_path):
    code = main(["compress", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "8", "--budget",
                 "flops=0.5", "--method", "dagger", "--option", "steps=4,lam=3,form=log,batch_size=16,log_every=2",
                 "--calibration-batches", "1", "--bn-batches", "1", "--no-eval", "--out", str(tmp_path / "o"),
                 "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads(stdout)
    d = s["signals"]["dagger"]
    assert (d["steps"], d["lam"], d["form"]) == (4, 3.0, "log")
    assert [p["step"] for p in d["path"]] == [0, 2, 4] and s["seconds"]["gate_training"] > 0
    assert set(s["signals"]["gate_mean"]) == {u["name"] for u in s["units"]}  # a column of the widths table
    # the report's section from the summary alone (the whole page is render's: only this section is drawn here)
    page = render({"signals": {"dagger": d}}, None, None)
    assert page.count('<section id="dagger">') == 1 and 'id="dagger-path' in page and 'id="dagger-gates' in page
    assert "soft MACs / target" in page and all(f">{name}<" in page for name in d["gates"])
    broken = render({"signals": {"dagger": {"path": "x", "gates": {"a": {"min": "?"}}}}}, None, None)
    assert 'id="dagger"' not in broken  # a malformed record draws nothing rather than failing


# -- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,needle", [
    ({"lam": -1}, "lam must be a number >= 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": 2.5}, "steps must be an integer >= 1"),
    ({"form": "square"}, "form must be one of"),
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"init_gate": 1.0}, "init_gate must be a number in (0, 1)"),
    ({"distill": 2}, "distill must be a number in [0, 1]"),
    ({"train_weights": "maybe"}, "train_weights must be true or false"),
    ({"start": "best"}, "start must be one of"),
    ({"lr": float("nan")}, "lr must be a number > 0"),
])
def test_bad_options_are_one_line_errors(setup, options, needle):
    graph, cost = setup
    with pytest.raises(ConfigError) as e:  # checked before any training or data
        dagger(graph, cost, {"macs": 0.5 * cost.evaluate()["macs"]}, {}, Signals(), 0, **options)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if set(options) <= {"lam", "steps"}:  # and through compress's option routing
        with pytest.raises(ConfigError, match=needle.split(" must")[0]):
            compress(net(), X, "flops=0.5", method="dagger", data=data(), options=options, calibration_batches=1)


def test_a_target_below_the_minimum_widths_is_refused_in_one_line(setup):
    graph, cost = setup
    with pytest.raises(BudgetError) as e:
        compress(net(), X, Budget(flops=0.001), method="dagger", data=data())
    assert "\n" not in str(e.value)
    with pytest.raises(BudgetError, match="below what the minimum widths reach") as e:
        dagger(graph, cost, {"macs": 1.0}, {}, signals(), 0, **FAST)
    assert "\n" not in str(e.value)


def test_dagger_without_data_is_a_one_line_error():
    with pytest.raises(ConfigError, match="dagger needs calibration data") as e:
        compress(net(), X, "flops=0.5", method="dagger")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("option", ["lam=-1", "steps=0"])
def test_cli_bad_options_exit_2_with_one_line(capsys, tmp_path, option):
    code = main(["compress", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "8", "--budget",
                 "flops=0.5", "--method", "dagger", "--option", option, "--calibration-batches", "1", "--no-eval",
                 "--out", str(tmp_path / "o")])
    _, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("prunekit: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err and option.split("=")[0] in errors[0]
    assert issubclass(ConfigError, PrunekitError)
