"""ITPruner: nHSIC identities, importance, budgets, speed and bad calibration data."""
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from prunekit import BudgetError, ConfigError, DataError, compress
from prunekit.allocation import itpruner as itp
from prunekit.data import load_dataset
from prunekit.models import create_model

X28 = torch.randn(1, 1, 28, 28)


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    return create_model("resnet56", in_channels=1).eval()


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", split="train")


def _features(seed, n=12, d=20):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["linear", "gaussian"])
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_nhsic_identity_and_invariances(kernel, seed, scale):
    X = _features(seed)
    Q, _ = torch.linalg.qr(_features(seed + 1, n=20, d=20))  # an orthogonal d x d matrix
    assert itp.nhsic(X, X, kernel) == pytest.approx(1.0, abs=1e-12)
    assert itp.nhsic(X, scale * X, kernel) == pytest.approx(1.0, abs=1e-9)
    Y = _features(seed + 2)
    ref = itp.nhsic(X, Y, kernel)
    assert 0.0 <= ref <= 1.0 + 1e-12
    assert itp.nhsic(scale * X, Y, kernel) == pytest.approx(ref, abs=1e-9)
    assert itp.nhsic(X @ Q, Y, kernel) == pytest.approx(ref, abs=1e-9)


def test_linear_nhsic_is_linear_cka():
    X, Y = _features(3), _features(4, d=7)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    cka = (Xc.T @ Yc).norm() ** 2 / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm())
    assert itp.nhsic(X, Y) == pytest.approx(float(cka), abs=1e-12)


def test_importance_orders_by_redundancy():
    S = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]], dtype=torch.float64)
    a = itp.importance(S, beta=10.0)
    assert a.max() == 1.0 and a[2] > a[0] > a[1]  # the least redundant unit matters most
    assert np.array_equal(itp.importance(S, 0.0), np.ones(3))


def test_beta_zero_is_driven_by_cost_alone(resnet56, data):
    """With beta = 0 every unit is equally important: the features (here: other images) change nothing."""
    other = TensorDataset(torch.randn(256, 1, 28, 28), torch.zeros(256, dtype=torch.long))
    a = compress(resnet56, X28, 0.5, method="itpruner", data=data, options={"beta": 0})
    b = compress(resnet56, X28, 0.5, method="itpruner", data=other, options={"beta": 0})
    assert a.plan.widths == b.plan.widths
    assert set(a.summary["signals"]["importance"].values()) == {1.0}


@pytest.mark.parametrize("kind", ["flops", "params"])
def test_budgets_met_within_one_percent(resnet56, data, kind):
    key = "macs" if kind == "flops" else "params"
    for frac in np.arange(0.1, 0.95, 0.1):
        s = compress(resnet56, X28, {kind: float(frac)}, method="itpruner", data=data).summary
        achieved = s[key]["pruned"] / s[key]["dense"]
        assert frac * 0.99 <= achieved <= frac + 1e-9, (frac, achieved)


def test_importance_and_beta_are_in_the_summary(resnet56, data):
    s = compress(resnet56, X28, 0.5, method="itpruner", data=data, options={"beta": "resnet56"}).summary
    assert s["signals"]["beta"] == 500.0
    assert len(s["signals"]["importance"]) == len(s["units"])


def test_allocation_for_resnet56_takes_under_two_seconds(resnet56, data):
    compress(resnet56, X28, 0.5, method="itpruner", data=data)  # warm-up (first-call overheads)
    s = compress(resnet56, X28, 0.5, method="itpruner", data=data).summary
    assert s["seconds"]["allocation"] < 2.0


def test_auto_beta_picks_from_the_grid(data):
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    s = compress(model, X28, 0.5, method="itpruner", data=data, options={"beta": "auto"}).summary
    tried = s["signals"]["beta_grid_accuracy"]
    assert len(tried) == len(itp.AUTO_GRID) and str(s["signals"]["beta"]) in tried


def test_any_criterion_combines_with_itpruner(resnet56, data):
    a = compress(resnet56, X28, 0.5, method="itpruner", data=data)
    b = compress(resnet56, X28, 0.5, method="random+itpruner", data=data)
    assert a.plan.widths == b.plan.widths and a.plan.keep != b.plan.keep


def test_one_image_is_refused(resnet56):
    one = TensorDataset(torch.randn(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="at least 2 images"):
        compress(resnet56, X28, 0.5, method="itpruner", data=one)


def test_nan_activations_are_refused(resnet56):
    bad = TensorDataset(torch.full((8, 1, 28, 28), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(DataError, match="NaN"):
        compress(resnet56, X28, 0.5, method="itpruner", data=bad)


def test_unreachable_budget_is_refused(resnet56, data, monkeypatch):
    class Stuck:  # what SLSQP returns when it fails: still at the start, x = 1
        def __init__(self, n):
            self.x, self.message = np.ones(n), "Iteration limit reached"
    monkeypatch.setattr(itp, "minimize", lambda f, x0, **kw: Stuck(len(x0)))
    with pytest.raises(BudgetError, match="SLSQP could not reach the budget"):
        compress(resnet56, X28, 0.5, method="itpruner", data=data)


@pytest.mark.parametrize("beta,needle", [(-1, "beta must be"), ("hot", "beta must be")])
def test_bad_beta(resnet56, data, beta, needle):
    with pytest.raises(ConfigError, match=needle):
        compress(resnet56, X28, 0.5, method="itpruner", data=data, options={"beta": beta})


def test_unknown_kernel(resnet56, data):
    with pytest.raises(ConfigError, match="unknown kernel"):
        compress(resnet56, X28, 0.5, method="itpruner", data=data, options={"kernel": "cubic"})
