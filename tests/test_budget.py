import pytest

from prunekit import Budget, BudgetError


@pytest.mark.parametrize("kw,dense,expected", [
    ({"flops": 0.5}, {"macs": 100.0, "params": 10.0}, {"macs": 50.0}),
    ({"params": "200K"}, {"macs": 1e9, "params": 1e6}, {"params": 2e5}),
    ({"flops": "20M", "params": 0.4}, {"macs": 1e8, "params": 1e6}, {"macs": 2e7, "params": 4e5}),
    ({"flops": 1}, {"macs": 7.0, "params": 1.0}, {"macs": 7.0}),
    ({"flops": 30_000_000}, {"macs": 1e8, "params": 1.0}, {"macs": 3e7}),
])
def test_targets(kw, dense, expected):
    assert Budget(**kw).targets(dense) == pytest.approx(expected)


def test_parse_cli_form():
    b = Budget.parse("flops=0.5, params=1.5M")
    assert b.targets({"macs": 10.0, "params": 1e7}) == {"macs": 5.0, "params": 1.5e6}


@pytest.mark.parametrize("kw", [{"flops": 0}, {"flops": -0.5}, {"flops": 1.5}, {"params": "lots"}, {},
                                {"flops": float("nan")}, {"flops": True}])
def test_bad_budgets(kw):
    with pytest.raises(BudgetError):
        Budget(**kw)


@pytest.mark.parametrize("text", ["flops", "speed=2", "flops=", ""])
def test_bad_cli_budgets(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_infeasible_is_refused_with_the_smallest_model_named():
    b = Budget(flops="1K")
    with pytest.raises(BudgetError, match="below the smallest"):
        b.check_feasible(b.targets({"macs": 1e6, "params": 1}), {"macs": 5e3, "params": 1}, {"macs": 1e6, "params": 1})
