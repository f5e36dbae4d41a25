"""Latency budgets (prunekit.latency): cache reuse, feasibility, interpolation, parsing, allocators,
snapping and the CLI. Timings are replaced by a deterministic counter (MACs of the timed call), so
nothing here asserts a timing."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import prunekit
from prunekit import Budget, BudgetError, ConfigError, compress
from prunekit.cli import main
from prunekit.latency import LatencyConfig, interp2, measure, snap as snap_module
from prunekit.models import create_model
from prunekit.pipeline import prepare

X = torch.zeros(1, 1, 8, 8)
FAST = {"samples": 3, "min_run_time": 0.001, "model_run_time": 0.001, "batch": 2}


class FakeTimer:
    """Stands in for time_callable: counts calls and returns 1e-6 ms per MAC of one call plus 1 us."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn, threads, min_run_time, device="cpu"):
        self.calls += 1
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 2 * 1e-6 + 1e-3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # shared: later tests read the tables earlier ones measured


@pytest.fixture
def timer(monkeypatch, cache):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(cache))
    fake = FakeTimer()
    monkeypatch.setattr(measure, "time_callable", fake)
    return fake


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resnet20", in_channels=1).eval()


@pytest.fixture(scope="module")
def prepared(model, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEKIT_CACHE", str(cache))
        mp.setattr(measure, "time_callable", FakeTimer())
        return prepare(model, X, "l1", latency=FAST)


def test_second_call_reuses_the_cached_table(timer, prepared, monkeypatch, tmp_path):
    from prunekit.latency import attach
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))  # empty cache: measured once, then read back
    first = attach(prepared, FAST) and prepared.cost.latency
    n = timer.calls
    assert n > 0 and list((tmp_path / "latency").glob("*threads*.json"))
    attach(prepared, FAST)
    assert timer.calls == n  # every layer point and the whole-model timing came from disk
    w = prepared.cost.dense_widths * 0.6
    assert first(w) == prepared.cost.latency(w)
    attach(prepared, {**FAST, "threads": 3})  # another thread count is another table
    assert timer.calls > n
    attach(prepared, FAST)


def test_unreachable_speedup_is_one_line(timer, prepared):
    with pytest.raises(BudgetError) as e:
        prepared.targets(Budget(speedup=1000))  # what compress runs first, before any calibration
    msg = str(e.value)
    assert "\n" not in msg and "speedup=1000" in msg and "at most speedup=" in msg


def test_fixed_parts_bound_the_speedup(timer, prepared):
    from prunekit.pipeline import CLOSED_LOOP_SLACK
    p = prepared
    most = p.dense["latency"] / p.smallest["latency"]
    assert p.targets(Budget(speedup=most * 0.99))["latency"] >= p.smallest["latency"]
    # a little past the tables' floor: left to the closed loop, which times the smallest model first
    assert p.targets(Budget(speedup=most * 1.01))["latency"] == pytest.approx(p.smallest["latency"])
    with pytest.raises(BudgetError):
        p.targets(Budget(speedup=most * CLOSED_LOOP_SLACK * 1.01))
    untimed = p.latency
    try:  # without the closed loop the tables' floor is the limit
        p.latency = dataclasses.replace(untimed, feedback=0)
        with pytest.raises(BudgetError):
            p.targets(Budget(speedup=most * 1.01))
    finally:
        p.latency = untimed


def test_table_is_exact_at_sampled_points(timer, prepared):
    p = prepared
    lat = p.cost.latency
    for layer in lat.layers:
        for grid in (layer.xs, layer.ys):  # the ends and every multiple of step between: stair edges are measured
            assert 1 <= len(grid) <= lat.config.max_points + 2
            inner = [v for v in range(int(grid[0]) + 1, int(grid[-1])) if v % lat.config.step == 0]
            assert set(inner) <= set(grid.tolist())
        for i, a in enumerate(layer.xs):
            for j, b in enumerate(layer.ys):
                assert interp2(layer.xs, layer.ys, layer.V, a, b)[0] == pytest.approx(layer.V[i, j], rel=1e-12)
                direct = measure.layer_ms(layer.spec, a, b, lat.batch, lat.config, lat.store)  # from the cache
                assert layer.V[i, j] >= direct - 1e-12  # V is the running max of the raw points
    # the dense model's prediction is its measured latency (residual or scale fitted there)
    assert lat(p.cost.dense_widths) == pytest.approx(lat.dense_ms, rel=1e-9)


@given(st.lists(st.floats(0, 10), min_size=2, max_size=4), st.lists(st.floats(0, 10), min_size=1, max_size=3),
       st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_interpolation_is_monotone_between_samples(dx, dy, u, v, t):
    xs = np.cumsum(np.array(dx) + 1.0)
    ys = np.cumsum(np.array(dy) + 1.0)
    V = np.maximum.accumulate(np.maximum.accumulate(
        np.add.outer(np.arange(len(xs)), np.arange(len(ys))).astype(float) ** 1.5, 0), 1)
    x0 = xs[0] + u * (xs[-1] - xs[0])
    x1 = x0 + t * (xs[-1] - x0)
    y = ys[0] + v * (ys[-1] - ys[0])
    a, gx, gy = interp2(xs, ys, V, x0, y)
    b = interp2(xs, ys, V, x1, y)[0]
    assert a <= b + 1e-9 and gx >= -1e-12 and gy >= -1e-12
    assert V.min() - 1e-9 <= a <= V.max() + 1e-9
    # linear between neighbouring samples along x
    i = int(np.clip(np.searchsorted(xs, x0, side="right"), 1, len(xs) - 1))
    lo, hi = (interp2(xs, ys, V, g, y)[0] for g in (xs[i - 1], xs[i]))
    s = (x0 - xs[i - 1]) / (xs[i] - xs[i - 1])
    assert a == pytest.approx(lo + s * (hi - lo), abs=1e-9)


@pytest.mark.parametrize("text, key, kind, value", [
    ("speedup=2", "latency", "speedup", 2.0), ("latency_ms=3", "latency", "ms", 3.0),
    ("latency_ms=2.5ms", "latency", "ms", 2.5), ("speedup=1", "latency", "speedup", 1.0)])
def test_budget_parses_latency_keys(text, key, kind, value):
    b = Budget.parse(text)
    assert b.needs_latency and b._parsed[key] == (kind, value)
    assert Budget.parse(b.describe())._parsed == b._parsed


def test_latency_combines_with_flops_and_params():
    b = Budget.parse("speedup=2,flops=0.5,params=100K")
    t = b.targets({"macs": 1e6, "params": 2e5, "latency": 8.0})
    assert t == {"macs": 5e5, "params": 1e5, "latency": 4.0}
    assert Budget(latency_ms=3).targets({"macs": 1, "params": 1, "latency": 9.0}) == {"latency": 3.0}
    with pytest.raises(BudgetError):  # no latency model: said in one line
        b.targets({"macs": 1e6, "params": 2e5})


@pytest.mark.parametrize("kw", [{"speedup": 0.5}, {"speedup": 0}, {"speedup": -2}, {"speedup": "fast"},
                                {"latency_ms": -3}, {"latency_ms": 0}, {"latency_ms": "3s"}, {"latency_ms": float("nan")},
                                {"speedup": 2, "latency_ms": 3}, {"speedup": True}])
def test_bad_latency_budgets_are_one_line(kw):
    with pytest.raises(BudgetError) as e:
        Budget(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("opts", [{"threads": 0}, {"samples": 1}, {"batch": 0}, {"min_run_time": 0}, {"feedback": -1},
                                  {"tolerance": 0}, {"step": 0}, {"max_points": 1},
                                  {"device": "tpu"}, {"nope": 1}])
def test_bad_latency_options(opts):
    with pytest.raises(ConfigError):
        LatencyConfig.of(opts)


@pytest.mark.parametrize("method", ["l1", "taylor+global", "l1+itpruner"])
def test_every_allocator_meets_a_latency_budget(timer, model, method):
    from prunekit.data import load_dataset
    data = load_dataset("synthetic", split="train") if "itpruner" in method or "taylor" in method else None
    r = compress(model, X, "speedup=1.5,params=0.9", method=method, data=data, latency=FAST, calibration_batches=1,
                 calibration_batch_size=8, bn_batches=0)
    s = r.summary
    lat = s["latency"]
    assert lat["predicted"]["2"]["pruned_ms"] <= lat["target_ms"] * (1 + 1e-9)
    assert s["params"]["pruned"] <= s["params"]["target"]
    assert s["binding"] in ("latency", "params")
    assert set(lat["measured"]) == {"1", "2"}  # measured next to the prediction at batch 1 and the budget's batch


def test_feedback_replans_until_the_measured_speedup_meets_the_target(timer, model, monkeypatch):
    """Whole models measured slower than the tables say (time ~ table time ** 0.7, as cache-cold layers
    inside a real model): the first plan misses speedup=1.6, the re-plans close the gap."""
    import prunekit.latency as latency

    def whole(m, x, batch, config, run_time=None):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.zeros(batch, *x.shape[1:]))
        return (fc.get_total_flops() / 2 * 1e-6) ** 0.7

    monkeypatch.setattr(latency, "pair_ms", paired(whole))
    r = compress(model, X, "speedup=1.6", latency={**FAST, "tolerance": 0.03, "feedback": 4}, round_to=1, bn_batches=0)
    fb = r.summary["latency"]["feedback"]
    rounds = fb["rounds"]
    assert rounds[0]["error"] > 0.1  # the table alone lands well short of the target
    assert len(rounds) > 1 and abs(rounds[fb["chosen"]]["error"]) <= 0.03
    assert fb["chosen"] == min(range(len(rounds)), key=lambda i: (abs(rounds[i]["error"]) > 0.03, abs(rounds[i]["error"])))
    assert r.summary["latency"]["measured"]["2"]["speedup"] == pytest.approx(1.6, rel=0.03 / 0.97)
    widths = {u["name"]: u["kept"] for u in r.summary["units"]}
    assert widths == r.plan.widths  # the chosen round's model is the one returned


def test_feedback_refuses_a_target_only_the_tables_reach(timer, model, monkeypatch):
    """Tables promise speedup=1.6, but whole models hardly speed up (a big fixed cost, as per-op
    overhead at batch 1 on a CPU): once the loop is at the smallest model, a one-line BudgetError."""
    import prunekit.latency as latency

    def whole(m, x, batch, config, run_time=None):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.zeros(batch, *x.shape[1:]))
        return 10.0 + fc.get_total_flops() / 2 * 1e-6

    monkeypatch.setattr(latency, "pair_ms", paired(whole))
    with pytest.raises(BudgetError) as e:
        compress(model, X, "speedup=1.6", latency={**FAST, "feedback": 4}, round_to=1, bn_batches=0)
    msg = str(e.value)
    assert "\n" not in msg and "out of reach" in msg and "smallest prunable model measured" in msg


def test_feedback_off_and_latency_rounding(timer, model):
    r = compress(model, X, "speedup=1.3", latency={**FAST, "feedback": 0}, bn_batches=0)
    assert "feedback" not in r.summary["latency"]
    # round_to defaults to the tables' step under a latency budget: every width is a measured grid point
    for u in r.summary["units"]:
        assert u["kept"] % 8 == 0 or u["kept"] == u["width"]
    free = compress(model, X, "flops=0.77", bn_batches=0)  # no latency budget: widths stay free
    assert any(u["kept"] % 8 for u in free.summary["units"])


def staircase(spec, out_dim, in_dim, batch, config, store):  # latency rises every 8 channels
    return math.ceil(out_dim / 8) + math.ceil(in_dim / 8) * 0.5


def test_snap_moves_units_to_stair_ends(timer, model, monkeypatch):
    monkeypatch.setattr(snap_module, "layer_ms", staircase)
    r = compress(model, X, "flops=0.6", latency={**FAST, "snap": True, "snap_window": 4})
    s = r.summary
    moves = s["latency"]["snapped"]
    dense = {u["name"]: u["width"] for u in s["units"]}
    assert moves, "a staircase of 8 channels moves some of 16/32/64-wide Units"
    for m in moves:
        assert m["to"] % 8 == 0 or m["to"] == dense[m["unit"]]
    assert s["macs"]["pruned"] <= s["macs"]["target"]
    assert {u["name"]: u["kept"] for u in s["units"]} == r.plan.widths


@pytest.fixture(scope="module")
def prepared8(model, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEKIT_CACHE", str(cache))
        mp.setattr(measure, "time_callable", FakeTimer())
        return prepare(model, X, "l1", round_to=8, latency=FAST)


@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.booleans())
def test_snap_spends_the_budget_moving_down_freed(prepared8, seed, slack, with_scores):
    """With steps of 8 on a staircase of 8 every width is a stair end, so snapping is the refill alone:
    from widths that leave ``slack`` of the MACs budget unspent it only grows, keeps the budget, and
    stops when no Unit's next step fits (the budget is met from below as closely as the steps allow),
    whether it ranks moves by importance (random scores) or by budget per ms."""
    from prunekit.allocation.fit import limits
    from prunekit.latency import snap_widths
    cost, graph = prepared8.cost, prepared8.graph
    steps, lo, hi = limits(graph)
    rng = np.random.default_rng(seed)
    w = lo + steps * np.floor(rng.random(len(lo)) * ((hi - lo) / steps + 1))
    target = cost.macs(w) + slack * (cost.macs(hi) - cost.macs(w))
    gen = torch.Generator().manual_seed(seed % 2**31)
    scores = {u.name: torch.rand(u.width, generator=gen) for u in graph.units} if with_scores else None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snap_module, "layer_ms", staircase)
        out, moves = snap_widths(graph, cost, {"macs": target}, w, scores)
    assert np.all(out >= w) and cost.macs(out) <= target * (1 + 1e-12)
    assert {m["unit"] for m in moves} == {u.name for u, a, b in zip(graph.units, w, out) if a != b}
    for i in range(len(out)):
        if cost.latency.by_unit.get(i) and out[i] < hi[i]:
            grown = out.copy()
            grown[i] += steps[i]
            assert cost.macs(grown) > target
        elif not cost.latency.by_unit.get(i):
            assert out[i] == w[i]


def test_snap_leaves_the_depth_plan_alone(model, cache):
    """Snapping moves widths only: removed branches stay removed (a stair end at 0 or a free refill
    step would otherwise revive or remove one), kept ones stay at or above their minimum."""
    from prunekit.allocation.fit import limits
    from prunekit.latency import snap_widths
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEKIT_CACHE", str(cache))
        mp.setattr(measure, "time_callable", FakeTimer())
        mp.setattr(snap_module, "layer_ms", staircase)
        prep = prepare(model, X, "l1", round_to=8, latency=FAST, drop_blocks=True)
        graph, cost = prep.graph, prep.cost
        steps, lo, hi = limits(graph)
        w = hi.copy()
        names = [u.name for u in graph.units]
        for k, name in enumerate(sorted(graph.droppable)):
            w[names.index(name)] = 0 if k % 2 else graph.branch_min[name]
        out, _ = snap_widths(graph, cost, {"macs": cost.macs(w) * 1.3}, w)  # room to grow every Unit
    for name in graph.droppable:
        i = names.index(name)
        assert (out[i] == 0) == (w[i] == 0) and (out[i] == 0 or out[i] >= graph.branch_min[name])
    assert any(out[names.index(n)] > w[names.index(n)] for n in graph.droppable if w[names.index(n)] > 0)


def test_cli_speedup_budget_reports_predicted_and_measured(timer, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compress", "--model", "resnet20", "--in-channels", "1", "--input-size", "8", "--budget", "speedup=1.3",
            "--threads", "1", "--latency-batch", "2", "--latency-samples", "2", "--out", str(out), "--report"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "predicted" in text and "measured" in text and "speed-up" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"] == "speedup=1.3" and summary["latency"]["threads"] == 1
    assert set(summary["latency"]["predicted"]) == set(summary["latency"]["measured"]) == {"1", "2"}
    html = (out / "report.html").read_text()
    assert 'id="latency"' in html and "measured speed-up" in html
    assert main(["bench-latency", str(out), "--batches", "1,2", "--seconds", "0.001", "--onnx", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj["batches"]) == {"1", "2"} and all(r["onnxruntime_ms"] > 0 for r in obj["batches"].values())


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "speedup=0.5"], "speedup=0.5 must be >= 1"),
    (["--budget", "latency_ms=-3"], "latency_ms"),
    (["--budget", "speedup=2", "--threads", "0"], "threads"),
    (["--budget", "speedup=1000"], "at most speedup="),
    (["--budget", "flops=0.5", "--method", "svd", "--drop-blocks"], "drop_blocks"),
])
def test_cli_bad_latency_input(timer, tmp_path, capsys, argv, needle):
    base = ["compress", "--model", "resnet20", "--in-channels", "1", "--input-size", "8", "--latency-samples", "2",
            "--out", str(tmp_path / "o")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "compressing ..." progress line
    assert err.startswith("prunekit: error:") and needle in err


def test_bench_latency_refuses_a_non_run(tmp_path, capsys):
    for extra in ([], ["--batches", "0"]):
        assert main(["bench-latency", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("prunekit: error:") and "\n" not in err


def test_public_budget_api_is_exported():
    assert prunekit.Budget(speedup=2).describe() == "speedup=2"


def test_onnxruntime_runtime_times_the_exported_layer_and_keeps_its_own_cache(timer, monkeypatch):
    pytest.importorskip("onnxruntime")
    config = LatencyConfig(runtime="onnxruntime", threads=1, **FAST)
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6)
    run = measure.runner(layer, x, config)
    with torch.no_grad():
        np.testing.assert_allclose(run()[0], layer(x).numpy(), rtol=1e-4, atol=1e-5)  # what runs is the layer
    from prunekit.drop import ConstantOutput
    stand_in = ConstantOutput(torch.nn.Conv2d(0, 5, 3, padding=1), torch.nn.BatchNorm2d(5).eval()).eval()
    with torch.no_grad():  # a removed branch's reader ignores its input: the export has none to feed
        np.testing.assert_allclose(measure.runner(stand_in, x[:, :0], config)()[0], stand_in(x[:, :0]).numpy(),
                                   rtol=1e-5)
    from prunekit.latency import Store
    torch_store, ort_store = Store("cpu", 1), Store("cpu", 1, runtime="onnxruntime")
    assert torch_store.path != ort_store.path and "onnxruntime" in ort_store.path.name
    # a layer timed alone pays one session call, which inside a model it does not: it is subtracted
    calls = iter([0.5, 0.2])  # the layer, then the Identity graph on the same input
    monkeypatch.setattr(measure, "time_callable", lambda *a, **k: next(calls))
    spec = measure.layer_specs(layer, x)[0]
    assert measure.layer_ms(spec, 5, 3, 2, config, ort_store) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="runtime"):
        LatencyConfig(runtime="tensorrt")


def test_tables_are_calibrated_on_the_dense_and_the_smallest_model(timer, prepared):
    from prunekit.latency.table import calibrate
    residual, scale = calibrate(10.0, 8.0, 4.0, 2.0)  # through (8, 10) and (2, 4)
    assert residual + scale * 8 == pytest.approx(10) and residual + scale * 2 == pytest.approx(4)
    assert calibrate(12.0, 10.0, 2.0, 4.0) == (2.0, 1.0)  # a negative residual: the dense residual instead
    assert calibrate(5.0, 10.0, None, 4.0) == (0.0, 0.5)  # layers alone above the model: a scale
    lat = prepared.cost.latency
    ratios = [v for k, v in lat.store.entries.items() if "|ratio to|" in k and f"|b{lat.batch}|" in k]
    assert len(ratios) == 1  # measured once (as its ratio to the dense model), then cached with the tables
    lo = prepared.cost.vector({u.name: u.min_keep for u in prepared.graph.units})
    parts = [sum(t.at(w)[0] for t in lat.layers) for w in (prepared.cost.dense_widths, lo)]
    assert (lat.residual, lat.scale) == calibrate(lat.dense_ms, parts[0], lat.dense_ms / ratios[0], parts[1])
    assert lat.branch_ms == 0 and lat.branches == []  # no branch may be removed here
    assert lat(prepared.cost.dense_widths) == pytest.approx(lat.dense_ms, rel=1e-9)


def test_pairs_alternate_and_their_ratio_resists_a_slow_moment(monkeypatch):
    """pair_ms: blocks a b, b a, ...; a slow moment that hits one model's block moves one pair's ratio,
    not the median."""
    a, b = nn_linear(), nn_linear()
    order, slow = [], {3, 8}  # the 4th and 9th blocks run at a third of the speed

    def fake(fn, threads, min_run_time, device="cpu"):  # a's runner (timed first) takes 10 ms, b's 5
        order.append(fn)
        base = 10.0 if fn is order[0] else 5.0
        return base * (3 if len(order) - 1 in slow else 1)

    monkeypatch.setattr(measure, "time_callable", fake)
    config = LatencyConfig(**{**FAST, "repeats": 1})
    ms_a, ms_b, ratio = measure.pair_ms(a, b, torch.zeros(1, 4), 2, config)
    assert len(order) == 2 * measure.PAIRS_PER_REPEAT
    first, second = order[0], order[1]
    assert order[2:4] == [second, first] and order[4:6] == [first, second]  # a b, b a, a b, ...
    # a's blocks: 10, 30 (slow), 10, 10, 30 (slow); b's all 5: pair ratios 2, 6, 2, 2, 6
    assert ratio == pytest.approx(2.0) and ms_a == pytest.approx(10.0) and ms_b == pytest.approx(5.0)


def nn_linear():
    return torch.nn.Linear(4, 4)


def test_calibration_and_the_closed_loop_time_in_pairs(timer, prepared, monkeypatch):
    from prunekit.latency import Store, measure_result, table
    import prunekit.latency as latency
    calls = []
    monkeypatch.setattr(table, "pair_ms", lambda a, b, x, batch, c: calls.append((a, b)) or (8.0, 4.0, 2.5))
    store = Store("cpu", 2, True)
    lo = prepared.cost.vector({u.name: u.min_keep for u in prepared.graph.units})
    config = LatencyConfig(**FAST)
    assert table.whole_ms(prepared.graph, lo, "d", "s", 2, config, store) == (8.0, 3.2)  # smallest: 8 / 2.5
    assert calls[0][0] is prepared.graph.model and calls[0][1] is not prepared.graph.model
    assert table.whole_ms(prepared.graph, lo, "d", "s", 2, config, store) == (8.0, 3.2) and len(calls) == 1  # cached

    monkeypatch.setattr(latency, "pair_ms", lambda a, b, x, batch, c: (8.0, 4.0, 2.5))
    result = type("R", (), {"model": None, "summary": {}})()
    rows = measure_result(result, None, X, LatencyConfig(**{**FAST, "batch": 1}))
    assert rows == {"1": {"dense_ms": 8.0, "pruned_ms": 4.0, "speedup": 2.5}}  # the pairs' ratio, not 8 / 4
    assert Budget(speedup=2.0).latency_error(rows["1"]) == pytest.approx(2.0 / 2.5 - 1)
    assert Budget(latency_ms=5.0).latency_error(rows["1"]) == pytest.approx(4.0 / 5.0 - 1)


def paired(whole):
    """A pair_ms from a model_ms-like function (the closed-loop tests time models by their MACs)."""
    def pair(a, b, x, batch, config):
        ta, tb = whole(a, x, batch, config), whole(b, x, batch, config)
        return ta, tb, ta / tb
    return pair
