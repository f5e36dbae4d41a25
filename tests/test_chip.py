"""CHIP: the Gram-eigenvalue channel independence against the SVD definition, and its behaviour."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import compress
from prunekit.criteria import chip
from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.graph import UnitGraph
from prunekit.models import create_model
from prunekit.plan import select
from prunekit.signals import Signals


def _random(seed, n, c, p, rank=None):
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.randn(n, c, p, generator=g, dtype=torch.float64)
    return torch.randn(n, c, rank, generator=g, dtype=torch.float64) @ torch.randn(n, rank, p, generator=g, dtype=torch.float64)


@given(seed=st.integers(0, 10_000), c=st.integers(1, 12), p=st.integers(1, 20), rank=st.none() | st.integers(1, 4))
def test_matches_the_svd_definition(seed, c, p, rank):
    A = _random(seed, 3, c, p, rank)
    fast, ref = chip.channel_independence(A), chip.channel_independence_svd(A)
    assert torch.allclose(fast, ref, atol=1e-8, rtol=0)
    assert (fast >= -1e-10).all()


def test_chunking_gives_the_same_answer(monkeypatch):
    A = _random(0, 2, 9, 30)
    whole = chip.channel_independence(A)
    monkeypatch.setattr(chip, "CHUNK_BYTES", 1)  # one channel per chunk
    assert torch.equal(chip.channel_independence(A), whole)


def test_threaded_eigvalsh_equals_one_batched_call():
    """The split over threads keeps every matrix's eigenvalues in place (LAPACK's last bits may
    differ with memory alignment, so equal to rounding)."""
    X = _random(3, 2, 5 * 7, 6).view(2, 5, 7, 6)
    G = X @ X.transpose(-1, -2)
    torch.set_num_threads(2)
    assert torch.allclose(chip.eigvalsh(G), torch.linalg.eigvalsh(G), rtol=0, atol=1e-12)


def test_duplicated_channel_scores_lower():
    A = _random(1, 4, 6, 50)
    A[:, 5] = A[:, 4]  # channel 5 copies channel 4: either can be replaced by the other
    ci = chip.channel_independence(A).mean(0)
    assert ci[4] < ci[:4].min() and ci[5] < ci[:4].min()


def test_zero_channel_scores_zero():
    A = _random(2, 2, 5, 40)
    A[:, 2] = 0
    assert torch.allclose(chip.channel_independence(A)[:, 2], torch.zeros(2, dtype=torch.float64), atol=1e-10)


def test_chip_keeps_independent_channels():
    """A conv whose filters 0-3 are copies of filter 4 keeps filter 4 and drops copies first."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    with torch.no_grad():
        w = model.layer1[0].conv1.weight
        w[:4] = w[4]
    data = load_dataset("synthetic", split="train")
    r = compress(model, torch.randn(1, 1, 28, 28), 0.5, method="chip+uniform", data=data, calibration_batches=1,
                 calibration_batch_size=32)
    keep = r.plan.keep["layer1.0.conv1"]
    assert len(set(keep) & {0, 1, 2, 3, 4}) <= 2


def test_chip_method_runs_with_the_itpruner_allocator():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    data = load_dataset("synthetic", split="train")
    s = compress(model, torch.randn(1, 1, 28, 28), 0.5, method="chip", data=data, calibration_batches=1,
                 calibration_batch_size=32).summary
    assert s["method"]["criterion"] == "chip" and s["method"]["allocator"] == "itpruner"
    assert s["macs"]["pruned"] <= s["macs"]["target"]


@pytest.fixture(scope="module")
def scored():
    """ResNet-20, 2 x 8 calibration images, and CHIP scores in both modes."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    graph = UnitGraph(model, torch.zeros(1, 1, 28, 28))
    signals = Signals(load_dataset("synthetic", split="train"), batches=2, batch_size=8)
    return model, graph, signals, chip.chip(graph, signals), chip.chip(graph, signals, faithful="1")


def _ci_at(model, module, signals) -> torch.Tensor:
    """Mean CI of one module's output over the calibration images, computed directly."""
    total, n = 0, 0

    def hook(m, i, out):
        nonlocal total, n
        total = total + chip.channel_independence(out.detach().flatten(2)).sum(0)
        n += out.shape[0]

    h = module.register_forward_hook(hook)
    with torch.no_grad():
        for x, _ in signals.batches():
            model(x)
    h.remove()
    return total / n


def test_faithful_ranks_a_stream_by_its_first_block_output(scored):
    model, graph, signals, summed, faithful = scored
    first_writer = {"conv1": model.relu, "layer2.0.shortcut.0": model.layer2[0], "layer3.0.shortcut.0": model.layer3[0]}
    changed = 0
    for name, module in first_writer.items():
        assert len(graph[name].producers) > 1  # a residual stream
        assert torch.allclose(faithful[name], _ci_at(model, module, signals), rtol=1e-10, atol=1e-12)
        assert not torch.allclose(faithful[name], summed[name])
        half = graph[name].width // 2
        changed += select(graph[name], faithful[name], half) != select(graph[name], summed[name], half)
    assert changed  # the kept channels differ, not only the scores


def test_faithful_agrees_where_a_unit_has_one_producer(scored):
    _, graph, _, summed, faithful = scored
    single = [u.name for u in graph.units if len(u.producers) == 1]
    assert len(single) == 9  # every block's inner conv
    assert all(torch.equal(summed[n], faithful[n]) for n in single)


def test_faithful_reaches_chip_through_compress_options():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    data = load_dataset("synthetic", split="train")
    plans = [compress(model, torch.zeros(1, 1, 28, 28), 0.5, method="chip+uniform", data=data, calibration_batches=1,
                      calibration_batch_size=16, options=opts).plan for opts in ({}, {"faithful": 1})]
    assert plans[0].widths == plans[1].widths  # the uniform allocator ignores scores
    assert all(plans[0].keep[n] == plans[1].keep[n] for n in plans[0].keep if ".conv1" in n)
    assert any(plans[0].keep[n] != plans[1].keep[n] for n in plans[0].keep if ".conv1" not in n)


def test_faithful_must_be_on_or_off(scored):
    _, graph, signals, _, _ = scored
    with pytest.raises(ConfigError, match="faithful=1"):
        chip.chip(graph, signals, faithful="maybe")
