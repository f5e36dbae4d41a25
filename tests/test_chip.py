"""CHIP: the Gram-eigenvalue channel independence against the SVD definition, and its behaviour."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prunekit import compress
from prunekit.criteria import chip
from prunekit.data import load_dataset
from prunekit.models import create_model


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
    r = compress(model, torch.randn(1, 1, 28, 28), 0.5, method="chip+uniform", data=data, calibration_batches=1)
    keep = r.plan.keep["layer1.0.conv1"]
    assert len(set(keep) & {0, 1, 2, 3, 4}) <= 2


def test_chip_method_runs_with_the_itpruner_allocator():
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    data = load_dataset("synthetic", split="train")
    s = compress(model, torch.randn(1, 1, 28, 28), 0.5, method="chip", data=data, calibration_batches=1).summary
    assert s["method"]["criterion"] == "chip" and s["method"]["allocator"] == "itpruner"
    assert s["macs"]["pruned"] <= s["macs"]["target"]
