"""The concave allocation (itpruner's default solver): importance shapes the widths, exactly and stably."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import compress
from prunekit.allocation import concave
from prunekit.cost import Polynomial

X28 = torch.randn(1, 1, 28, 28)


def star(rng, k: int = 4) -> tuple[Polynomial, np.ndarray]:
    """A residual stage: one stream (index 0) joined to k identical blocks by bilinear costs only
    (each block's two convs read and write the stream), plus a linear term per block. Blocks are
    symmetric: swapping two of them leaves the cost unchanged."""
    q, a = rng.uniform(1, 3), rng.uniform(0, 20)
    Q = np.zeros((k + 1, k + 1))
    Q[0, 1:] = Q[1:, 0] = q  # 2 q w_s w_i: both convs of a block
    return Polynomial(0.0, np.r_[rng.uniform(0, 20), np.full(k, a)], Q), np.r_[32.0, np.full(k, 16.0)]


def widths(cost, W, value, frac=0.4, tol=concave.TOL, eta=concave.ETA):
    targets = {"macs": frac * cost(W)}
    lo, steps = np.ones_like(W), np.ones_like(W)
    x = concave.solve({"macs": cost}, targets, value, W, lo, tol, eta)
    return x, concave.round_widths({"macs": cost}, targets, x, value, steps, lo, W, eta)


values = st.lists(st.floats(0.2, 5.0), min_size=5, max_size=5).map(np.array)


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), value=values, frac=st.floats(0.15, 0.9))
def test_the_budget_is_met_and_the_optimum_is_interior(seed, value, frac):
    """A linear objective put every bilinear stage at a vertex; the concave one keeps all widths inside."""
    cost, W = star(np.random.default_rng(seed))
    x, w = widths(cost, W, value, frac)
    assert cost(w) <= frac * cost(W) * (1 + 1e-12)
    assert cost(x) == pytest.approx(frac * cost(W), rel=1e-6)  # the budget binds
    assert np.all(x > 1.0 + 1e-6) and np.any(x < W - 1e-6)  # nothing collapses to its minimum


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), value=values, unit=st.integers(0, 4), factor=st.floats(1.01, 20.0),
       frac=st.floats(0.15, 0.9))
def test_raising_one_importance_never_lowers_its_width(seed, value, unit, factor, frac):
    cost, W = star(np.random.default_rng(seed))
    x, w = widths(cost, W, value, frac)
    raised = value.copy()
    raised[unit] *= factor
    x2, w2 = widths(cost, W, raised, frac)
    assert x2[unit] >= x[unit] - 1e-6 and w2[unit] >= w[unit]


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), a=st.floats(0.2, 5.0), s=st.floats(0.2, 5.0), frac=st.floats(0.15, 0.9))
def test_equal_importances_on_symmetric_units_give_equal_widths(seed, a, s, frac):
    cost, W = star(np.random.default_rng(seed))
    x, w = widths(cost, W, np.r_[s, a, a, a, a], frac)
    assert np.ptp(x[1:]) < 1e-6 and np.ptp(w[1:]) == 0


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), value=values, perm=st.permutations(range(4)), frac=st.floats(0.15, 0.9))
def test_permuting_importances_permutes_the_widths(seed, value, perm, frac):
    cost, W = star(np.random.default_rng(seed))
    order = np.r_[0, 1 + np.array(perm)]  # the stream stays, the symmetric blocks trade places
    _, w = widths(cost, W, value, frac)
    _, wp = widths(cost, W, value[order], frac)
    assert np.array_equal(wp, w[order])


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), value=values, frac=st.floats(0.15, 0.9))
def test_the_widths_do_not_depend_on_the_solver_tolerance(seed, value, frac):
    cost, W = star(np.random.default_rng(seed))
    assert np.array_equal(widths(cost, W, value, frac, tol=1e-9)[1], widths(cost, W, value, frac, tol=1e-13)[1])


def test_log_utility_is_degenerate_on_bilinear_costs():
    """Why eta > 1: with U = log x a stream and its blocks trade width at no cost (only w_s w_i is
    charged), so the log optimum runs the stream to its bound whenever its weight beats theirs."""
    Q = np.zeros((3, 3))
    Q[0, 1:] = Q[1:, 0] = 1.0
    cost, W = Polynomial(0.0, np.zeros(3), Q), np.array([16.0, 16.0, 16.0])
    value = np.array([3.0, 1.0, 1.0])
    log_x, _ = widths(cost, W, value, 0.25, eta=1.0)
    x, _ = widths(cost, W, value, 0.25)
    assert log_x[0] == pytest.approx(16.0, rel=1e-6)  # at the bound
    assert 1.0 < x[0] < 16.0 - 1e-3


def test_uniform_costs_and_importances_give_proportional_widths():
    """One linear cost per Unit, equal weight per cost: U = 1 - 1/x puts x_u ~ sqrt(v_u / c_u)."""
    cost, W = Polynomial(0.0, np.array([1.0, 1.0]), np.zeros((2, 2))), np.array([100.0, 100.0])
    x, _ = widths(cost, W, np.array([4.0, 1.0]), 0.3)
    assert x[0] / x[1] == pytest.approx(2.0, rel=1e-6)


# -- on a model -----------------------------------------------------------------------------------
def _inner(summary, stage):
    return [u["kept"] for u in summary["units"] if u["name"].startswith(f"layer{stage}.") and u["name"].endswith("conv1")]


def test_beta_zero_gives_symmetric_blocks_equal_widths(resnet20, synthetic_train):
    """Blocks 2 and 3 of a stage cost the same and read and write the same stream: equal importance,
    equal width (block 1 differs: in stages 2 and 3 it downsamples)."""
    s = compress(resnet20, X28, 0.5, method="itpruner", data=synthetic_train, options={"beta": 0}).summary
    assert s["signals"]["solver"] == "concave"
    for stage in (1, 2, 3):
        assert len(set(_inner(s, stage)[1:])) == 1, _inner(s, stage)


def test_importance_moves_the_widths_and_is_recorded_next_to_them(resnet20, synthetic_train):
    flat = compress(resnet20, X28, 0.5, method="itpruner", data=synthetic_train, options={"beta": 0}).summary
    tilted = compress(resnet20, X28, 0.5, method="itpruner", data=synthetic_train, options={"beta": 200}).summary
    assert [u["kept"] for u in flat["units"]] != [u["kept"] for u in tilted["units"]]
    record = tilted["signals"]
    assert set(record["importance"]) == set(record["widths"]) == {u["name"] for u in tilted["units"]}
    assert record["widths"] == {u["name"]: u["kept"] for u in tilted["units"]}


def test_chip_uses_the_concave_allocation(resnet20, synthetic_train):
    s = compress(resnet20, X28, 0.5, method="chip", data=synthetic_train, calibration_batches=1,
                 calibration_batch_size=16).summary
    assert s["signals"]["solver"] == "concave" and "importance" in s["signals"]
