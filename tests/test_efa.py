"""Issue 16: per-sample mask gradients, Group Fisher, effective-filter analysis, the efa allocator,
fisher_iterative, prunekit analyze and the report's spectra."""
import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import compress
from prunekit.allocation.efa import efa
from prunekit.allocation.fisher_iterative import fisher_iterative
from prunekit.analysis import analyze, analyze_gradients, effective_rank, singular_values
from prunekit.cli import main
from prunekit.cost import CostModel
from prunekit.criteria.fisher import Masks, channel_costs, fisher, mask_gradients, mask_points
from prunekit.errors import BudgetError, ConfigError
from prunekit.graph import UnitGraph
from prunekit.pipeline import prepare
from prunekit.plan import Plan
from prunekit.report.page import render
from prunekit.signals import Signals
from tests.helpers import TinyResidual

X16 = torch.zeros(1, 1, 16, 16)


def data(n: int = 256, size: int = 16, classes: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


class Tiny(nn.Module):
    """conv1 -> conv2 (no nonlinearity between, so linear dependencies survive) -> relu -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(self.conv1(x))).mean((2, 3)))


def block_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyResidual(classes=10).eval()


X8 = torch.zeros(1, 1, 8, 8)


def tiny_deficits(zero=(), dup=(), lin=()):
    """A float64 Tiny whose conv1 has zero filters ``zero``, copies ``dup`` = [(copy, of)] (filter and
    outgoing weights) and combinations ``lin`` = [(k, i, j, a, b)]: filter k = a f_i + b f_j, all three
    read by the same outgoing weights."""
    torch.manual_seed(0)
    m = Tiny().double().eval()
    w1, w2 = m.conv1.weight.data, m.conv2.weight.data
    for k in zero:
        w1[k] = 0
    for c, i in dup:
        w1[c], w2[:, c] = w1[i], w2[:, i]
    for k, i, j, a, b in lin:
        w1[k] = a * w1[i] + b * w1[j]
        w2[:, j] = w2[:, i]
        w2[:, k] = w2[:, i]
    return m


def conv1_deficit(model) -> tuple[int, int]:
    """(rank deficit of conv1's mask-gradient matrix over 64 samples, R from the analysis)."""
    x = torch.randn(64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(2))
    graph = UnitGraph(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    k = [u.name for u in graph.units].index("conv1")
    grads = mask_gradients(graph, [(x[:32], y[:32]), (x[32:], y[32:])])
    s = singular_values(grads[k])
    deficit = 8 - effective_rank(s, "relative", tol=1e-9)
    a = analyze_gradients(graph, CostModel(graph), grads, rank="relative", tol=1e-9)
    return deficit, a.units[k].removable


# -- per-sample gradients -------------------------------------------------------------------------
def test_per_sample_gradients_equal_a_batch_size_one_loop(resnet20):
    """One backward with an (N, c) mask gives each sample's own dL/dm, for every Unit, to 1e-6."""
    model = copy.deepcopy(resnet20).double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1, 9, 4])
    graph = UnitGraph(model, torch.zeros(1, 1, 8, 8, dtype=torch.float64))
    batched = mask_gradients(graph, [(x, y)])
    for n in range(5):  # independent reference: one shared (c,) mask per Unit, one sample at a time
        shared = {k: torch.ones(u.width, dtype=torch.float64, requires_grad=True) for k, u in enumerate(graph.units)}
        hooks = []
        for k, u in enumerate(graph.units):
            for p in mask_points(graph, u):
                def pre(mod, args, k=k, p=p):
                    full = torch.ones(args[0].shape[1], dtype=torch.float64).index_copy(0, p.position, shared[k][p.channel])
                    return (args[0] * full.view(1, -1, *[1] * (args[0].dim() - 2)),)
                hooks.append(p.module.register_forward_pre_hook(pre))
        try:
            nn.functional.cross_entropy(model(x[n:n + 1]), y[n:n + 1]).backward()
        finally:
            for h in hooks:
                h.remove()
        for k in shared:
            assert torch.allclose(batched[k][n], shared[k].grad, atol=1e-6, rtol=0), graph.units[k].name
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())  # hooks removed
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_masking_consumer_inputs_equals_removing_the_channels(resnet20):
    """What the masks zero is exactly what surgery removes (why dL/dm is the removal's gradient)."""
    graph = UnitGraph(copy.deepcopy(resnet20), X16)
    rng = torch.Generator().manual_seed(3)
    keep = {u.name: sorted(torch.randperm(u.width, generator=rng)[: max(1, u.width // 2)].tolist()) for u in graph.units}
    x = torch.randn(4, 1, 16, 16, generator=rng)
    masks = Masks(graph)
    for k, u in enumerate(graph.units):
        masks.keep[k].zero_()[keep[u.name]] = 1.0
    with masks, torch.no_grad():
        masked = graph.model(x)
    pruned = UnitGraph(copy.deepcopy(resnet20), X16)
    pruned.apply(keep)
    with torch.no_grad():
        assert torch.allclose(masked, pruned.model(x), atol=1e-5)


# -- rank deficits ----------------------------------------------------------------------------------
def test_full_rank_without_singularities():
    assert conv1_deficit(tiny_deficits()) == (0, 0)


@pytest.mark.parametrize("zero", [(5,), (1, 4, 6)])
def test_zero_filters_are_a_rank_deficit_of_their_count(zero):
    assert conv1_deficit(tiny_deficits(zero=zero)) == (len(zero), len(zero))


@pytest.mark.parametrize("dup", [[(6, 1)], [(6, 1), (7, 2)]])
def test_duplicated_filters_are_a_rank_deficit_of_their_count(dup):
    assert conv1_deficit(tiny_deficits(dup=dup)) == (len(dup), len(dup))


def test_linearly_dependent_filters_are_a_rank_deficit_of_their_count():
    assert conv1_deficit(tiny_deficits(lin=[(7, 2, 3, 0.5, 2.0)])) == (1, 1)
    assert conv1_deficit(tiny_deficits(lin=[(7, 2, 3, 0.5, 2.0), (6, 0, 1, -1.0, 3.0)])) == (2, 2)


def test_all_three_singularities_add_up():
    m = tiny_deficits(zero=(5,), dup=[(4, 0)], lin=[(7, 2, 3, 1.5, -0.5)])
    assert conv1_deficit(m) == (3, 3)


def test_effective_rank_rules():
    s = np.array([10.0, 5.0, 1.0, 1e-3, 0.0])
    assert effective_rank(s, "relative", tol=1e-3) == 3
    assert effective_rank(s, "energy", energy=0.79) == 1  # 100 of sum s^2 = 126.000001
    assert effective_rank(s, "energy", energy=0.99) == 2  # 125
    assert effective_rank(s, "energy", energy=0.999) == 3  # 126
    assert effective_rank(s, "energy", energy=1.0) == 4
    assert effective_rank(np.zeros(3)) == 0
    for bad in ({"rank": "nuclear"}, {"tol": 0}, {"tol": 1.5}, {"energy": 0}, {"energy": 1.1}):
        with pytest.raises(ConfigError):
            effective_rank(s, **{"rank": "relative", **bad})


# -- fisher criterion ----------------------------------------------------------------------------
def test_fisher_scores_are_half_mean_squared_gradients_over_memory(resnet20):
    graph = UnitGraph(copy.deepcopy(resnet20), X16)
    signals = Signals(data(64), batches=2, batch_size=32)
    grads = mask_gradients(graph, signals.batches())
    plain = fisher(graph, signals, norm="none")
    memory = fisher(graph, Signals(data(64), batches=2, batch_size=32), norm="memory")
    mem = channel_costs(graph, "memory")
    for k, u in enumerate(graph.units):
        want = (grads[k] ** 2).sum(0) / (2 * 64)
        assert torch.allclose(plain[u.name], want, rtol=1e-9, atol=0)
        assert torch.allclose(memory[u.name], want / mem[k], rtol=1e-6, atol=0)
    stem = [u.name for u in graph.units].index("conv1")  # stage-1 stream: stem + 3 block outputs, 16x16 each
    assert mem[stem] == 4 * 16 * 16
    with pytest.raises(ConfigError, match="norm must be one of"):
        fisher(graph, signals, norm="params")


# -- efa allocator -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def efa_setup(resnet20):
    prepared = prepare(resnet20, X16, "efa")
    prepared.score(data(), 0, 2, 64, False)
    return prepared


@given(st.floats(0.05, 1.0), st.sampled_from(["macs", "params"]))
def test_efa_never_exceeds_R_in_any_unit(efa_setup, fraction, key):
    p = efa_setup
    targets = {key: fraction * p.dense[key]}
    try:
        widths = efa(p.graph, p.cost, targets, dict(p.scores), p.signals)
    except BudgetError as e:
        msg = str(e)
        assert "\n" not in msg and "estimated maximum redundancy" in msg and "exceed=1" in msg
        R = p.signals.record["removable"]
        floor = np.array([u.width - R[u.name] for u in p.graph.units], dtype=float)
        assert getattr(p.cost, key)(floor) > targets[key]  # refused only when c - R cannot meet it
        wide = efa(p.graph, p.cost, targets, dict(p.scores), p.signals, exceed=1)
        assert getattr(p.cost, key)(wide) <= targets[key] * (1 + 1e-9)
        assert all(w >= u.min_keep for w, u in zip(wide, p.graph.units))
        return
    R = p.signals.record["removable"]
    for w, u in zip(widths, p.graph.units):
        assert u.width - w <= R[u.name], u.name
    assert getattr(p.cost, key)(widths) <= targets[key] * (1 + 1e-9)


def test_efa_compress_lands_on_budget_and_reports(resnet20, efa_setup):
    p = efa_setup
    efa(p.graph, p.cost, {"macs": p.dense["macs"]}, dict(p.scores), p.signals)
    target = 1 - 0.5 * p.signals.record["efa"]["max_redundancy"]["macs"]  # half the estimated redundancy
    r = compress(resnet20, X16, {"flops": target}, method="efa", data=data(), calibration_batches=2,
                 calibration_batch_size=64, bn_batches=0)
    R = r.summary["signals"]["removable"]
    for u in r.summary["units"]:
        assert u["width"] - u["kept"] <= R[u["name"]]
    assert r.summary["within_tolerance"]
    page = render(json.loads(json.dumps(r.summary, default=float)), None, None)
    assert 'id="efa"' in page and "Effective filters" in page and page.count("<svg") >= 3
    with pytest.raises(BudgetError, match=r"estimated maximum redundancy is \d+\.\d%"):
        compress(resnet20, X16, {"flops": 0.05}, method="efa", data=data(), calibration_batches=2,
                 calibration_batch_size=64, bn_batches=0)
    with pytest.raises(ConfigError, match="needs calibration data"):
        compress(resnet20, X16, {"flops": 0.9}, method="efa")


def test_efa_bad_options(efa_setup):
    p = efa_setup
    t = {"macs": 0.9 * p.dense["macs"]}
    for bad, msg in (({"exceed": 2}, "exceed must be 0 or 1"), ({"filters": "l1"}, "filters must be one of"),
                     ({"rank": "x"}, "rank must be one of"), ({"tol": -1.0}, "tol must be"),
                     ({"energy": 2.0}, "energy must be")):
        with pytest.raises(ConfigError, match=msg):
            efa(p.graph, p.cost, t, dict(p.scores), p.signals, **bad)


def test_efa_nullspace_filters_keep_the_effective_row_space(efa_setup):
    p = efa_setup
    scores = dict(p.scores)
    efa(p.graph, p.cost, {"macs": 0.98 * p.dense["macs"]}, scores, p.signals, filters="nullspace")
    for u in p.graph.units:
        s = scores[u.name]
        assert s.shape == (u.width,) and float(s.min()) >= -1e-12 and float(s.max()) <= 1 + 1e-9
        rank = p.signals.record["effective_rank"][u.name]
        assert abs(float(s.sum()) - rank) < 1e-6  # leverages of the top-r right singular vectors sum to r


def test_too_few_samples_is_refused(resnet20):
    with pytest.raises(ConfigError, match="at least as many samples as the widest unit"):
        analyze(resnet20, X16, data(), samples=32)


# -- fisher_iterative ----------------------------------------------------------------------------
FAST = {"interval": 2, "batch_size": 16, "lr": 0.01}


def test_fisher_iterative_masks_what_the_plan_drops_and_is_deterministic():
    net = block_net()
    graph = UnitGraph(copy.deepcopy(net), X8)
    cost = CostModel(graph)
    targets = {"macs": 0.7 * cost.macs(cost.dense_widths)}
    signals = Signals(data(size=8), batches=1, batch_size=16)
    scores = {u.name: torch.zeros(u.width) for u in graph.units}
    state = torch.get_rng_state()
    widths = fisher_iterative(graph, cost, targets, scores, signals, seed=0, land=0, **FAST)
    assert cost.macs(widths) <= targets["macs"]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in graph.model.modules())
    rec = signals.record["fisher_iterative"]
    assert rec["removals_while_training"] >= 1 and rec["steps"] == FAST["interval"] * rec["removals_while_training"]
    assert signals.record["seconds"]["fisher_iterative_training"] > 0
    masked = signals.record["masked_channels"]
    plan = Plan.from_widths(graph, widths, scores, method="", budget="", input_shape=[])
    for u, w in zip(graph.units, widths):
        assert u.width - w == masked[u.name]
        assert torch.all(scores[u.name][plan.keep[u.name]] >= 2)  # every kept channel was never masked
    # the same seed gives the same plan
    torch.set_rng_state(state)
    graph2 = UnitGraph(copy.deepcopy(net), X8)
    scores2 = {u.name: torch.zeros(u.width) for u in graph2.units}
    widths2 = fisher_iterative(graph2, CostModel(graph2), targets, scores2, Signals(data(size=8), batches=1, batch_size=16),
                               seed=0, land=0, **FAST)
    assert np.array_equal(widths, widths2)
    assert Plan.from_widths(graph2, widths2, scores2, method="", budget="", input_shape=[]).keep == plan.keep


def test_fisher_iterative_max_steps_finishes_at_once():
    net = block_net()
    graph = UnitGraph(copy.deepcopy(net), X8)
    cost = CostModel(graph)
    signals = Signals(data(size=8), batches=1, batch_size=16)
    targets = {"macs": 0.6 * cost.macs(cost.dense_widths)}
    widths = fisher_iterative(graph, cost, targets, {u.name: torch.zeros(u.width) for u in graph.units}, signals,
                              max_steps=3, **FAST)
    rec = signals.record["fisher_iterative"]
    assert rec["steps"] == 3 and rec["removals_while_training"] == 1 and rec["removals_at_once"] >= 1
    assert cost.macs(widths) <= targets["macs"]


def test_fisher_iterative_compress_and_refusals():
    net = block_net()
    state = torch.get_rng_state()
    r = compress(net, X8, {"flops": 0.85}, method="fisher_iterative", data=data(size=8), options=FAST,
                 calibration_batches=1, bn_batches=0)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert r.summary["macs"]["pruned"] <= 0.85 * r.summary["macs"]["dense"]
    assert r.summary["seconds"]["fisher_iterative_training"] > 0
    with pytest.raises(ConfigError, match="trains while it prunes"):
        compress(net, X8, {"flops": 0.85}, method="fisher_iterative", options=FAST)
    for bad, msg in (({"interval": 0}, "interval must be"), ({"lr": -1}, "lr must be"),
                     ({"norm": "x"}, "norm must be"), ({"land": 3}, "land must be"), ({"max_steps": 0}, "max_steps")):
        with pytest.raises(ConfigError, match=msg):
            compress(net, X8, {"flops": 0.85}, method="fisher_iterative", data=data(size=8), options={**FAST, **bad})


def test_fisher_preset_is_one_shot_global_fisher(resnet20):
    r = compress(resnet20, X16, {"flops": 0.6}, method="fisher", data=data(), calibration_batches=1,
                 bn_batches=0)
    assert r.summary["method"] == {"name": "fisher", "criterion": "fisher", "allocator": "global_raw"}
    assert r.summary["within_tolerance"]


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_analyze_table_json_and_report(tmp_path, capsys):
    args = ["analyze", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "16", "--samples", "64",
            "--batch-size", "64"]
    assert main(args + ["--report", str(tmp_path / "a.html"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert "can be removed before losing effective filters" in obj["total"] and obj["total"].startswith("at most")
    page = (tmp_path / "a.html").read_text()
    assert "Effective filters" in page and "<svg" in page and "layer3.0.conv1" in page
    assert len(obj["units"]) == 12 and 0 <= obj["max_redundancy"]["macs"] < 1
    assert obj["reduced"]["macs"] <= obj["dense"]["macs"]


@pytest.mark.parametrize("extra, msg", [([], "needs labelled training data"),
                                        (["--dataset", "synthetic", "--samples", "8"], "at least as many samples"),
                                        (["--dataset", "synthetic", "--energy", "0"], "energy must be")])
def test_cli_analyze_errors_are_one_line(extra, msg, capsys):
    assert main(["analyze", "--model", "resnet20", "--input-size", "16", *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("analyzing ")]
    assert len(err) == 1 and err[0].startswith("prunekit: error:") and msg in err[0]
