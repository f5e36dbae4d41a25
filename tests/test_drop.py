"""Width 0 on a residual branch's inner Unit removes the branch (prunekit.drop): which Units may go
there, the exact function and costs of the result, saving, exporting, training and the latency
tables' zero-width point."""
import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import ConfigError, compress
from prunekit.cost import CostModel, count
from prunekit.depth import _between
from prunekit.drop import ConstantOutput, EmptyOutput
from prunekit.graph import UnitGraph
from prunekit.models import create_model
from tests.helpers import randomized_batchnorm

X = torch.zeros(1, 1, 16, 16)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomized_batchnorm(create_model("resnet20", in_channels=1))


def test_only_residual_branches_are_droppable(resnet):
    g = UnitGraph(copy.deepcopy(resnet), X)
    assert g.droppable == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    assert all(u.min_keep >= 1 for u in g.units)  # width 0 only when asked
    asked = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    assert {u.name for u in asked.units if u.min_keep == 0} == g.droppable
    vgg = UnitGraph(create_model("vgg16_bn", in_channels=1).eval(), torch.zeros(1, 1, 32, 32))
    assert vgg.droppable == set()  # a plain chain: its output would be a constant


def test_mobilenetv2_drops_only_blocks_with_a_shortcut():
    model = create_model("mobilenetv2", in_channels=1).eval()
    x = torch.zeros(1, 1, 32, 32)
    g = UnitGraph(copy.deepcopy(model), x)
    assert g.droppable  # the expansions of the stride-1, same-width blocks
    for name in g.droppable:
        block = model.get_submodule(name.rsplit(".", 2)[0])
        assert getattr(block, "use_res", getattr(block, "use_res_connect", True))
    g.apply({name: [] for name in g.droppable})  # every branch at once: the stream still flows
    cost = CostModel(UnitGraph(copy.deepcopy(model), x))
    assert count(g.model, x) == tuple(round(v) for v in cost.evaluate({n: 0 for n in g.droppable}).values())


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_dropping_equals_zeroing_the_readers_and_costs_what_is_predicted(resnet, data):
    """Dropped branches compute what the dense model computes with those branches' second conv zeroed;
    every other Unit pruned to a random keep-set at the same time; MACs and params exact."""
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    cost = CostModel(g)
    dropped = data.draw(st.sets(st.sampled_from(sorted(g.droppable)), min_size=1))
    keep, ref = {}, copy.deepcopy(resnet)
    for u in g.units:
        if u.name in dropped:
            keep[u.name] = []
            ref.get_submodule(u.name.replace("conv1", "conv2")).weight.data.zero_()
        elif data.draw(st.booleans()):
            k = data.draw(st.integers(1, u.width))
            keep[u.name] = sorted(data.draw(st.permutations(range(u.width)))[:k])
    g.apply(keep)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        if all(len(keep[n]) == 0 for n in keep):  # only drops: the function is the zeroed dense one
            torch.testing.assert_close(g.model(x), ref(x), rtol=0, atol=0)
        assert g.model(x).shape == (3, 10)
    widths = {n: len(v) for n, v in keep.items()}
    predicted = cost.evaluate(widths)
    assert count(g.model, X) == (round(predicted["macs"]), round(predicted["params"]))
    for name in dropped:
        assert isinstance(g.model.get_submodule(name), EmptyOutput)
        assert isinstance(g.model.get_submodule(name.replace("conv1", "conv2")), ConstantOutput)


def test_a_non_droppable_unit_cannot_be_emptied(resnet):
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    with pytest.raises(ConfigError, match="not empty"):
        g.apply({"conv1": []})


def test_compress_drops_blocks_saves_loads_exports_and_trains(resnet, tmp_path):
    r = compress(resnet, X, 0.3, method="l1+global", drop_blocks=True, bn_batches=0, reconstruct=0)
    assert r.summary["macs"]["pruned"] <= 0.3 * r.summary["macs"]["dense"] and "depth" in r.summary
    # force a drop the allocator may not have chosen, through a saved plan
    plan = r.plan
    name = "layer2.1.conv1"
    plan.keep[name], plan.widths[name] = [], 0
    g = UnitGraph(copy.deepcopy(resnet), X)
    plan.apply(g)
    out = tmp_path / "run"
    prunekit.io.save(prunekit.Result(g.model, plan, {"model": "resnet20"}), out)
    loaded = prunekit.io.load(out, create_model("resnet20", in_channels=1), X).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), g.model.eval()(x))
    assert isinstance(loaded.get_submodule(name), EmptyOutput)
    # ONNX: the stand-ins export and onnxruntime agrees
    ort = pytest.importorskip("onnxruntime")
    path = prunekit.io.export_onnx(copy.deepcopy(loaded), X, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, loaded(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    # training mode: gradients reach the remaining layers
    loaded.train()
    loss = loaded(torch.randn(4, 1, 16, 16)).logsumexp(1).mean()
    loss.backward()
    assert loaded.layer2[1].conv2.norm.weight.grad is not None and loaded.conv1.weight.grad is not None


def test_drop_blocks_is_refused_where_it_does_not_apply(resnet):
    with pytest.raises(ConfigError, match="drop_blocks"):
        compress(resnet, X, 0.5, method="auto", drop_blocks=True)
    with pytest.raises(ConfigError, match="drop_blocks"):
        compress(resnet, X, 0.5, method="svd", drop_blocks=True)


def test_plan_json_accepts_width_zero_and_checks_it():
    from prunekit.plan import _invalid
    base = {"format": 1, "method": "l1", "budget": "flops=0.5", "input_shape": [1, 1, 8, 8], "keep": {"a": []},
            "widths": {"a": 0}, "dense_widths": {"a": 4}}
    assert _invalid(base) is None
    assert "exactly 0" in _invalid({**base, "keep": {"a": [1]}})
    assert "[0, 4]" in _invalid({**base, "widths": {"a": -1}})


def test_latency_tables_time_the_dropped_branch_and_lower_the_floor(resnet, monkeypatch, tmp_path):
    """The tables measure each droppable layer at width 0 as its stand-in runs (a deterministic
    stand-in timer: 1 us per call plus the MACs), so the smallest model predicts less than with
    every branch kept at its minimum width."""
    from torch.utils.flop_counter import FlopCounterMode

    from prunekit.latency import measure
    from prunekit.pipeline import prepare

    def fake(fn, threads, min_run_time, device="cpu"):
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 2 * 1e-6 + 1e-3

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(measure, "time_callable", fake)
    lat = {"samples": 3, "min_run_time": 0.001, "model_run_time": 0.001}
    kept = prepare(resnet, X, "l1", latency=lat, round_to=8)
    dropped = prepare(resnet, X, "l1", latency=lat, round_to=8, drop_blocks=True)
    table = {t.name: t for t in dropped.cost.latency.layers}
    for name in dropped.graph.droppable:
        assert table[name].xs[0] == 0 and table[name].V[0, 0] == pytest.approx(1e-3)  # no MACs, one call
        reader = table[name.replace("conv1", "conv2")]
        assert reader.ys[0] == 0
        layer, x = reader.spec.build(int(reader.xs[-1]), 0, 2, "cpu")
        assert isinstance(layer[0], ConstantOutput) and layer(x).shape[1] == reader.xs[-1]
    assert dropped.smallest["latency"] < kept.smallest["latency"]
    assert dropped.smallest["macs"] < kept.smallest["macs"]


def test_a_dropped_branch_trains_like_the_zeroed_dense_branch(resnet):
    """In training mode too: same outputs and the folded BatchNorm's running statistics move as the
    dense one's do on the constant map."""
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    g.apply({"layer3.1.conv1": []})
    ref = copy.deepcopy(resnet)
    ref.layer3[1].conv2.weight.data.zero_()
    g.model.train(), ref.train()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(g.model(x), ref(x))
    norm = g.model.layer3[1].conv2.norm
    torch.testing.assert_close(norm.running_mean, ref.layer3[1].bn2.running_mean)
    torch.testing.assert_close(norm.running_var, ref.layer3[1].bn2.running_var)
    g.model.eval(), ref.eval()
    with torch.no_grad():
        first = g.model(x)
        torch.testing.assert_close(first, ref(x))
        norm.weight.mul_(2)  # a changed parameter is not served from the eval-mode cache
        ref.layer3[1].bn2.weight.mul_(2)
        torch.testing.assert_close(g.model(x), ref(x))


# -- which branches (prunekit.depth) ------------------------------------------------------------------
def test_pinned_cost_holds_the_pinned_widths_at_zero(resnet):
    from prunekit.depth import Pinned, pinned
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    cost = CostModel(g)
    index = [i for i, u in enumerate(g.units) if u.name in ("layer1.1.conv1", "layer3.2.conv1")]
    view = pinned(cost, index)
    w = cost.dense_widths * 0.7
    zeroed = w.copy()
    zeroed[index] = 0
    for key in ("macs", "params"):
        poly, pin = getattr(cost, key), getattr(view, key)
        assert pin(w) == poly(zeroed) and pin(w) < poly(w)
        assert np.all(pin.grad(w)[index] == 0) and np.all(pin.step_deltas(w, np.ones(len(w)))[index] == 0)
        other = [i for i in range(len(w)) if i not in index]
        np.testing.assert_allclose(pin.grad(w)[other], poly.grad(zeroed)[other])
        assert float(pin.tensor(torch.tensor(w))) == pytest.approx(poly(zeroed))
    assert not isinstance(cost.macs, Pinned) and cost.macs(w) > view.macs(w)  # the model's own cost is untouched


def test_a_dead_branch_is_the_least_important(resnet):
    from prunekit.depth import branch_importance
    model = copy.deepcopy(resnet)
    model.layer2[1].conv2.weight.data.zero_()  # removing it changes nothing
    g = UnitGraph(model, X, drop_blocks=True)
    importance = branch_importance(g, None, seed=0)
    assert set(importance) == g.droppable
    assert importance["layer2.1.conv1"] == pytest.approx(0, abs=1e-7)
    assert min(v for n, v in importance.items() if n != "layer2.1.conv1") > 1e-6


def test_without_data_the_least_branches_that_reach_the_budget_go(resnet):
    """No data: the least count of branches (least important first) that makes the budget reachable,
    and the widths of the rest from the method's allocator on the pinned costs."""
    from prunekit.pipeline import prepare
    prepared = prepare(resnet, X, "l1+global", drop_blocks=True)
    plain = prepare(resnet, X, "l1+global")
    budget = prunekit.Budget(flops=0.9 * plain.smallest["macs"] / plain.dense["macs"])  # below any width plan
    with pytest.raises(prunekit.BudgetError):
        plain.targets(budget)
    targets = prepared.targets(budget)
    prepared.score(None, 0, 1, 8, False)
    result = prepared.prune(budget, targets, 0, fresh=True)
    depth = result.summary["depth"]
    assert depth["selected_by"] == "least count reaching the budget" and len(depth["candidates"]) == 1
    k = depth["chosen"]
    order = sorted(depth["importance"], key=lambda n: (depth["importance"][n], n))
    assert k >= 1 and {n for n, w in result.plan.widths.items() if w == 0} == set(order[:k])
    assert result.summary["macs"]["pruned"] <= targets["macs"]
    less = {u.name: (0 if u.name in order[:k - 1] else u.min_keep if u.name not in prepared.graph.droppable
                     else prepared.graph.branch_min[u.name]) for u in prepared.graph.units}
    assert prepared.cost.evaluate(less)["macs"] > targets["macs"]  # one branch fewer could not reach it


def test_with_data_the_count_with_the_best_heldout_score_wins(resnet, monkeypatch):
    from torch.utils.data import TensorDataset

    from prunekit.allocation import fitness as fitness_module
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(300, 1, 16, 16, generator=g), torch.randint(0, 10, (300,), generator=g))
    scored = []
    real = fitness_module.HeldOut.__call__
    monkeypatch.setattr(fitness_module.HeldOut, "__call__", lambda self, m: scored.append(real(self, m)) or scored[-1])
    r = compress(resnet, X, 0.3, method="l1+global", data=data, drop_blocks=True, bn_batches=1, reconstruct=0,
                 calibration_batches=1, calibration_batch_size=16)
    depth = r.summary["depth"]
    rows = depth["candidates"]
    assert len(rows) >= 2 and [row["fitness"] for row in rows] == scored
    best = max(rows, key=lambda row: row["fitness"])
    assert depth["chosen"] == best["dropped"] == sum(1 for w in r.plan.widths.values() if w == 0)
    assert depth["selected_by"].startswith("held-out")
    # the coarse grid (ascending), then the counts halfway to its best one's neighbours
    counts = [row["dropped"] for row in rows]
    n = next((i for i in range(1, len(counts)) if counts[i] <= counts[i - 1]), len(counts))
    coarse = counts[:n]
    top = max(rows[:n], key=lambda row: row["fitness"])["dropped"]
    assert counts[n:] == _between(coarse, top) and len(coarse) >= 3


def test_cli_drop_blocks_writes_the_plan_summary_and_report(tmp_path, capsys):
    import json

    from prunekit.cli import main
    out = tmp_path / "run"
    argv = ["compress", "--model", "resnet20", "--in-channels", "1", "--input-size", "8", "--budget", "flops=0.15",
            "--min-width", "0.5", "--method", "l1+global", "--drop-blocks", "--out", str(out), "--report"]
    assert main(argv) == 0
    assert "residual branches, chosen by least count reaching the budget" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    chosen = summary["depth"]["chosen"]
    assert chosen >= 1 and sum(1 for u in summary["units"] if u["kept"] == 0) == chosen
    html = (out / "report.html").read_text()
    assert 'id="depth"' in html and "Removed residual branches" in html
    loaded = prunekit.io.load(out, create_model("resnet20", in_channels=1))  # width 0 round-trips
    assert sum(isinstance(m, EmptyOutput) for m in loaded.modules()) == chosen


def test_hold_keeps_the_count_of_removed_branches_for_the_closed_loop(resnet):
    from prunekit.depth import hold
    from prunekit.pipeline import prepare
    prepared = prepare(resnet, X, "l1+global", drop_blocks=True, min_width=0.5)
    budget = prunekit.Budget(flops=0.15)
    targets = prepared.targets(budget)
    prepared.score(None, 0, 1, 8, False)
    first = prepared.prune(budget, targets, 0, fresh=True)
    k = first.summary["depth"]["chosen"]
    looser = {**targets, "macs": targets["macs"] * 3}  # without a hold, fewer branches would do
    assert prepared.prune(budget, looser, 0, fresh=True).summary["depth"]["chosen"] < k
    with hold(prepared) as held:
        held.set(first)
        again = prepared.prune(budget, looser, 0, fresh=True).summary["depth"]
        assert again["chosen"] == k and len(again["candidates"]) == 1
    assert "count" not in prepared.depth_state  # released after the loop


def test_a_dropped_branch_in_eval_mode_with_gradients_keeps_no_graph(resnet):
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    g.apply({"layer1.2.conv1": []})
    g.model.eval()
    x = torch.randn(2, 1, 16, 16)
    for _ in range(2):  # a cached constant with a graph would fail the second backward
        g.model(x).sum().backward()
    assert g.model.layer1[2].conv2.norm.bias.grad is not None


def test_closed_loop_searches_the_count_twice_then_holds_it(resnet, monkeypatch, tmp_path):
    """The first plan's count is searched on the tables' target, the second's again on the corrected
    one, and later rounds keep the second's."""
    from torch.utils.flop_counter import FlopCounterMode
    import prunekit.latency as latency
    from prunekit.latency import measure

    def macs_ms(m, x=X, batch=2, config=None):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.zeros(batch, *X.shape[1:]))
        return (fc.get_total_flops() / 2 * 1e-6) ** 0.5 + 1e-3  # whole models speed up less than their layers

    def pair(a, b, x, batch, config):
        ta, tb = macs_ms(a, x, batch), macs_ms(b, x, batch)
        return ta, tb, ta / tb

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    def layer_ms(fn, threads, min_run_time, device="cpu"):  # tables: the MACs of the call
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 2 * 1e-6 + 1e-3

    monkeypatch.setattr(measure, "time_callable", layer_ms)
    monkeypatch.setattr(latency, "pair_ms", pair)
    r = compress(resnet, X, "speedup=1.5", method="l1+global", drop_blocks=True, bn_batches=0,
                 latency={"samples": 3, "min_run_time": 0.001, "model_run_time": 0.001, "feedback": 3,
                          "tolerance": 0.03})
    rounds = r.summary["latency"]["feedback"]["rounds"]
    assert len(rounds) >= 3
    assert [x["count_held"] for x in rounds[:3]] == [False, False, True]
    assert all(x["dropped"] == rounds[1]["dropped"] for x in rounds[2:])


def test_tables_charge_a_kept_branch_its_stream_work(resnet, monkeypatch, tmp_path):
    """Removed branches take their block's add and ReLU with them (prunekit.fold), which no layer table
    holds: the fit through the dense model and the smallest one with the branches kept and removed
    gives each kept branch that time, and predicts all three models exactly. The stand-in timer:
    1 us per MAC-million plus 0.1 ms per elementwise add or ReLU."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from prunekit.latency import measure
    from prunekit.latency.table import calibrate_branches
    from prunekit.pipeline import prepare

    class Stream(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += func.__name__.split(".")[0] in ("add", "add_", "relu", "relu_", "clamp_min_", "maximum")
            return func(*args, **(kwargs or {}))

    def fake(fn, threads, min_run_time, device="cpu"):
        with FlopCounterMode(display=False) as fc, Stream() as st:
            fn()
        return fc.get_total_flops() / 2 * 1e-6 + 0.1 * st.ops + 1e-3

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(measure, "time_callable", fake)
    p = prepare(resnet, X, "l1", latency={"samples": 3, "min_run_time": 0.001, "model_run_time": 0.001}, round_to=8,
                drop_blocks=True)
    lat, graph = p.cost.latency, p.graph
    assert len(lat.branches) == 9 and lat.branch_ms > 0.1  # at least its add (the ReLU may go into a layer's table)
    lo = p.cost.vector({u.name: u.min_keep for u in graph.units})
    kept = lo.copy()
    kept[lat.branches] = [graph.branch_min[graph.units[i].name] for i in lat.branches]
    for w in (p.cost.dense_widths, lo, kept):
        g = UnitGraph(copy.deepcopy(resnet), X)
        g.apply({u.name: list(range(int(v))) for u, v in zip(g.units, w) if v < u.width})
        assert lat(w) == pytest.approx(measure.model_ms(g.model, X, lat.batch, lat.config), rel=1e-6)
    # the fit itself: exact on a model that is linear in layers and kept branches, else the two-point fit
    assert calibrate_branches(2 + 3 * 10 + 0.5 * 4, 10, 2 + 3 * 4 + 0.5 * 4, 4, 2 + 3 * 1, 1, 4, (9, 9)) == \
        pytest.approx((2, 3, 0.5))
    assert calibrate_branches(10, 10, 4, 4, 9.5, 1, 4, (1.0, 0.5)) == (1.0, 0.5, 0.0)  # kept branches cost < 0
