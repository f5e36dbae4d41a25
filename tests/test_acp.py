"""ACP: clustering start, particle swarm over widths, held-out fitness, budget repair, bad input."""
import json

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from prunekit import compress
from prunekit.allocation import acp as acp_module
from prunekit.allocation import fitness as fitness_module
from prunekit.allocation.acp import acp, cluster_widths, cosine_distances, mean_feature_maps, parse_search_budget
from prunekit.budget import Budget
from prunekit.cli import main
from prunekit.cost import CostModel
from prunekit.errors import BudgetError, ConfigError, PrunekitError
from prunekit.graph import UnitGraph
from prunekit.signals import Signals
from tests.helpers import TinyResidual

X = torch.randn(1, 1, 8, 8)
FAST = {"particles": 3, "cycles": 2, "holdout_images": 32, "fitness_batches": 1, "train_steps": 2,
        "train_batch_size": 16, "cluster_images": 32}


def data(n: int = 160, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyResidual().eval()


def chain(seed: int = 0) -> nn.Sequential:
    """Four conv Units of different widths: enough freedom for the swarm to find distinct structures."""
    torch.manual_seed(seed)
    layers, c = [], 1
    for w in (8, 12, 8, 12):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4)).eval()


def setup(model, budget="flops=0.5", n=160):
    graph = UnitGraph(model, X)
    cost = CostModel(graph)
    targets = Budget.parse(budget).targets(cost.evaluate())
    scores = {u.name: torch.arange(u.width, 0, -1).double() for u in graph.units}
    signals = Signals(data(n), batches=2, batch_size=32)
    return graph, cost, targets, scores, signals


# -- clustering ----------------------------------------------------------------------------------
@pytest.mark.parametrize("m,k", [(2, 5), (3, 6), (1, 7)])
def test_k_duplicates_of_m_prototype_filters_cluster_to_m_channels(m, k):
    torch.manual_seed(m)
    model = nn.Sequential(nn.Conv2d(1, m * k, 3, padding=1), nn.BatchNorm2d(m * k), nn.ReLU(),
                          nn.Conv2d(m * k, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 4)).eval()
    proto_w, proto_b = torch.randn(m, 1, 3, 3), torch.randn(m)
    with torch.no_grad():
        model[0].weight.copy_(proto_w.repeat(k, 1, 1, 1))  # channel j is prototype j % m
        model[0].bias.copy_(proto_b.repeat(k))
    graph = UnitGraph(model, X)
    unit = [i for i, u in enumerate(graph.units) if u.name == "0"][0]
    widths = cluster_widths(graph, Signals(data(), batches=2, batch_size=32), eps=1e-3, images=40)
    assert widths[unit] == m


@given(m=st.integers(1, 6), k=st.integers(5, 8), positions=st.integers(3, 12), seed=st.integers(0, 2**16))
def test_scaled_duplicates_of_m_prototype_maps_cluster_to_m(m, k, positions, seed):
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((m, positions))
    X = np.repeat(protos, k, axis=0) * rng.uniform(0.5, 2.0, (m * k, 1))  # cosine ignores the scale
    assume(m == 1 or cosine_distances(protos)[~np.eye(m, dtype=bool)].min() > 0.01)
    assert acp_module.cluster_count(X[rng.permutation(m * k)], eps=0.005) == m


def test_candidates_inherit_the_criterions_channels():
    graph = UnitGraph(chain(), X)
    gen = torch.Generator().manual_seed(0)
    scores = {u.name: torch.randn(u.width, generator=gen) for u in graph.units}
    widths = np.array([max(1, u.width // 2) for u in graph.units], dtype=float)
    pruned = fitness_module.pruned_copy(graph, widths, scores)
    first = graph.units[[u.name for u in graph.units].index("0")]
    keep = torch.sort(-scores["0"], stable=True).indices[: first.width // 2].sort().values
    assert torch.equal(pruned[0].weight, graph.model[0].weight[keep])
    assert all(torch.equal(p, q) for p, q in zip(graph.model.parameters(), chain().parameters()))  # still dense


def test_dead_channels_cluster_together_and_distances_are_cosine():
    rng = np.random.default_rng(0)
    live = rng.random((4, 9))
    X = np.vstack([live, np.zeros((3, 9))])
    D = cosine_distances(X)
    unit = live / np.linalg.norm(live, axis=1, keepdims=True)
    expect = 1 - unit @ unit.T
    np.testing.assert_allclose(D[:4, :4], np.clip(expect, 0, 2), atol=1e-12)
    assert (D[4:, 4:] == 0).all() and (D[:4, 4:] == 1).all()


def test_a_stream_unit_clusters_on_every_tensor_its_consumers_read():
    graph, _, _, _, signals = setup(net())
    maps = mean_feature_maps(graph, signals, images=40)
    by_name = {u.name: X_ for u, X_ in zip(graph.units, maps)}
    stream = [u.name for u in graph.units if len(u.consumers) > 1][0]
    # the stem's output read by block a (8 x 8 positions, averaged over the images) and the pooled
    # block output read by fc (one value per image)
    assert by_name[stream].shape == (8, 64 + 40)
    x = torch.cat([b[0] for b in signals.batches()])[:40]
    m = graph.model
    with torch.no_grad():
        stem = m.stem(x)
        out = torch.relu(stem + m.b(m.a(stem))).mean((2, 3))
    np.testing.assert_allclose(by_name[stream][:, :64], stem.mean(0).reshape(8, -1).double().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(by_name[stream][:, 64:], out.T.double().numpy(), rtol=1e-5, atol=1e-6)


# -- the search ----------------------------------------------------------------------------------
def test_best_fitness_never_decreases_and_every_candidate_meets_the_budget():
    graph, cost, targets, scores, signals = setup(chain(), "flops=0.6,params=0.7")
    widths = acp(graph, cost, targets, scores, signals, seed=1, eps=0.05, **FAST)
    a = signals.record["acp"]
    best = a["fitness_per_cycle"]
    assert len(best) == FAST["cycles"] + 1 and all(x <= y for x, y in zip(best, best[1:]))
    assert best[-1] == a["best_fitness"] == max(c["fitness"] for c in a["candidates"])
    assert a["evaluations"] == len(a["candidates"]) and a["evaluations"] + a["cache_hits"] == 3 * 3
    for c in a["candidates"]:
        assert c["macs"] <= targets["macs"] and c["params"] <= targets["params"]
    assert cost.macs(widths) <= targets["macs"] and cost.params(widths) <= targets["params"]
    lo = np.array([u.min_keep for u in graph.units])
    assert (widths >= lo).all() and (widths <= cost.dense_widths).all() and (widths == np.rint(widths)).all()
    assert set(signals.record["cluster_widths"]) == {u.name for u in graph.units}


def test_scored_candidates_are_cached(monkeypatch):
    graph, cost, targets, scores, signals = setup(chain())
    scored = []
    real = fitness_module.HeldOut.__call__
    monkeypatch.setattr(fitness_module.HeldOut, "__call__", lambda self, m: scored.append(1) or real(self, m))
    acp(graph, cost, targets, scores, signals, eps=0.05, **{**FAST, "particles": 4, "cycles": 3, "max_velocity": 0.1})
    a = signals.record["acp"]
    assert len(scored) == a["evaluations"] and a["cache_hits"] > 0  # tiny velocities revisit structures


@pytest.mark.parametrize("budget,evaluations", [("2evals", 2), (1e-9, 1)])
def test_search_budget_stops_early_with_the_best_so_far(budget, evaluations):
    graph, cost, targets, scores, signals = setup(chain())
    widths = acp(graph, cost, targets, scores, signals, eps=0.05, search_budget=budget, **FAST)
    a = signals.record["acp"]
    assert a["stopped_early"] and a["evaluations"] == evaluations
    best = max(a["candidates"], key=lambda c: c["fitness"])
    assert a["best_fitness"] == best["fitness"] and cost.macs(widths) == best["macs"]


def test_the_heldout_split_never_overlaps_the_fitness_training_data(monkeypatch):
    class Recorder(Dataset):
        def __init__(self, d):
            self.d, self.phase, self.reads = d, "calibration", {}

        def __len__(self):
            return len(self.d)

        def __getitem__(self, i):
            self.reads.setdefault(self.phase, set()).add(int(i))
            return self.d[i]

    rec = Recorder(data(200))
    tune, score = fitness_module.HeldOut.tune, fitness_module.HeldOut.score

    def spy(phase, f):
        def run(self, model):
            rec.phase = phase
            try:
                return f(self, model)
            finally:
                rec.phase = "other"
        return run

    monkeypatch.setattr(fitness_module.HeldOut, "tune", spy("fit", tune))
    monkeypatch.setattr(fitness_module.HeldOut, "score", spy("score", score))
    result = compress(chain(), X, 0.5, method="l1+acp", data=rec, calibration_batches=1, calibration_batch_size=32,
                      bn_batches=1, options={**FAST, "fitness": "train", "train_steps": 12})
    assert result.summary["signals"]["acp"]["fitness"] == "train"
    fit, held = rec.reads["fit"], rec.reads["score"]
    assert fit and held and not fit & held
    judge = fitness_module.HeldOut(rec, "train", 0.1, 32, seed=0)  # the split the allocator made
    assert held == set(judge.held.indices) and fit <= set(judge.rest.indices)


def test_train_fitness_changes_the_weights_and_bn_fitness_does_not():
    model = chain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode, changed in (("bn", False), ("train", True)):
        m = chain()
        judge = fitness_module.HeldOut(data(200), mode, 0.2, None, seed=0, bn_batches=1, train_steps=3, batch_size=16)
        assert 0 <= judge(m) <= 100
        moved = any(not torch.equal(m.state_dict()[k], before[k]) for k in before if k.endswith("weight"))
        assert moved == changed


# -- API and CLI ---------------------------------------------------------------------------------
def test_acp_preset_and_any_criterion_plus_acp_through_compress():
    first = compress(chain(), X, 0.5, method="acp", data=data(), calibration_batches=1, calibration_batch_size=32,
                     bn_batches=1, options={**FAST, "eps": 0.1})
    assert first.summary["method"] == {"name": "acp", "criterion": "l1", "allocator": "acp"}
    assert first.summary["macs"]["pruned"] <= first.summary["macs"]["target"]
    again = compress(chain(), X, 0.5, method="acp", data=data(), calibration_batches=1, calibration_batch_size=32,
                     bn_batches=1, options={**FAST, "eps": 0.1})
    assert again.plan.keep == first.plan.keep  # the same seed gives the same plan
    other = compress(chain(), X, 0.5, method="l2+acp", data=data(), calibration_batches=1, calibration_batch_size=32,
                     bn_batches=1, options={**FAST, "search_budget": "1evals"})
    assert other.summary["method"]["criterion"] == "l2" and other.summary["signals"]["acp"]["evaluations"] == 1


def test_cli_takes_comma_separated_options_and_the_report_shows_the_search(capsys, tmp_path):
    out = tmp_path / "o"
    code = main(["compress", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "8", "--budget",
                 "flops=0.5", "--method", "acp", "--option", "eps=0.05,particles=2,cycles=1,holdout_images=16",
                 "--option", "fitness_batches=1,cluster_images=16", "--search-budget", "600",
                 "--calibration-batches", "1", "--bn-batches", "1", "--no-eval", "--out", str(out), "--report",
                 "--json"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    a = json.loads(stdout)["signals"]["acp"]
    assert (a["eps"], a["particles"], a["cycles"], a["heldout_images"], a["search_budget"]) == (0.05, 2, 1, 16, 600)
    page = (out / "report.html").read_text()
    assert 'id="search"' in page and "best fitness so far per cycle" in page


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,needle", [
    ({"eps": 0}, "eps must be a number > 0"),
    ({"eps": -0.1}, "eps must be a number > 0"),
    ({"holdout_images": 0}, "holdout_images must be >= 1"),
    ({"holdout": 0.001}, "leaves one side empty"),
    ({"fitness": "test"}, "fitness must be one of"),
    ({"particles": 0}, "particles must be an integer > 0"),
    ({"cycles": 1.5}, "cycles must be an integer >= 0"),
    ({"search_budget": "soon"}, "search_budget must be"),
    ({"search_budget": 0}, "search_budget must be"),
])
def test_bad_options_are_one_line_errors(options, needle):
    graph, cost, targets, scores, signals = setup(chain(), n=160)
    with pytest.raises(ConfigError) as e:
        acp(graph, cost, targets, scores, signals, **{**FAST, **options})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_budget_below_the_minimum_widths_is_refused_in_one_line():
    graph, cost, targets, scores, signals = setup(chain())
    lo = np.array([u.min_keep for u in graph.units], dtype=float)
    with pytest.raises(BudgetError) as e:
        acp(graph, cost, {"macs": cost.macs(lo) * 0.5}, scores, signals, **FAST)
    assert "below the smallest prunable model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BudgetError, match="below the smallest"):  # compress refuses it before any data is read
        compress(chain(), X, {"flops": 0.001}, method="acp", data=data(), options=FAST)


def test_acp_without_data_is_a_one_line_error():
    with pytest.raises(PrunekitError) as e:
        compress(chain(), X, 0.5, method="acp", options=FAST)
    assert "data=" in str(e.value) and "\n" not in str(e.value)


def test_search_budget_forms():
    assert parse_search_budget(None) == (None, None)
    assert parse_search_budget(90) == (90.0, None) and parse_search_budget("90s") == (90.0, None)
    assert parse_search_budget("40evals") == (None, 40) and parse_search_budget("7 evaluations") == (None, 7)
    assert acp_module.inertia(0, 8) == pytest.approx(0.6) and acp_module.inertia(7, 8) == pytest.approx(0.425)
