"""compress(): budgets met within 1% and never exceeded; methods; reproducibility; bad input."""

import numpy as np
import pytest
import torch

from prunekit import BudgetError, ConfigError, compress, sweep
from prunekit.models import create_model

X28 = torch.randn(1, 1, 28, 28)


@pytest.mark.parametrize("model_name", ["resnet56", "mobilenetv2"])
@pytest.mark.parametrize("kind", ["flops", "params"])
@pytest.mark.parametrize("method", ["l1", "l1+global"])
def test_budgets_met_within_one_percent(request, model_name, kind, method):
    model = request.getfixturevalue(model_name)
    key, fracs = ("macs" if kind == "flops" else "params"), np.arange(0.1, 0.95, 0.1)
    # one prepare for every budget: each sweep point is the plan of a separate compress (test_sweep)
    for frac, point in zip(fracs, sweep(model, X28, [{kind: float(f)} for f in fracs], method=method).points):
        s = point.result.summary
        achieved = s[key]["pruned"] / s[key]["dense"]
        assert achieved <= frac + 1e-9, (frac, achieved)
        assert achieved >= frac * 0.99, (frac, achieved)


def test_several_budgets_at_once(resnet56):
    s = compress(resnet56, X28, "flops=0.5,params=0.3", method="l1+global").summary
    assert s["macs"]["pruned"] <= s["macs"]["target"] and s["params"]["pruned"] <= s["params"]["target"]
    assert s["within_tolerance"]


def test_input_model_is_untouched(resnet56):
    before = {k: v.clone() for k, v in resnet56.state_dict().items()}
    compress(resnet56, X28, 0.5)
    assert all(torch.equal(before[k], v) for k, v in resnet56.state_dict().items())


def test_budget_one_keeps_everything(resnet56):
    r = compress(resnet56, X28, 1.0)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(r.model.eval()(x), resnet56(x))


@pytest.mark.parametrize("method", ["l1", "l2", "random", "bn_scale", "next_layer", "taylor", "random+global",
                                    "next_layer+uniform"])
def test_every_method_runs_and_is_deterministic(resnet56, method):
    from prunekit.data import load_dataset
    data = load_dataset("synthetic", split="train")
    a = compress(resnet56, X28, 0.4, method=method, data=data, seed=3)
    b = compress(resnet56, X28, 0.4, method=method, data=data, seed=3)
    assert a.plan.keep == b.plan.keep
    assert a.summary["macs"]["pruned"] <= a.summary["macs"]["target"]


def test_criteria_change_which_channels_survive(resnet56):
    l1 = compress(resnet56, X28, 0.5, method="l1").plan.keep
    rnd = compress(resnet56, X28, 0.5, method="random").plan.keep
    assert l1 != rnd


def test_l1_keeps_the_largest_filters():
    model = create_model("resnet20", in_channels=1).eval()
    with torch.no_grad():
        model.layer1[0].conv1.weight[3].mul_(100.0)
        model.layer1[0].conv1.weight[5].mul_(0.0)
    keep = compress(model, X28, 0.5, method="l1").plan.keep["layer1.0.conv1"]
    assert 3 in keep and 5 not in keep


def test_taylor_without_data_says_what_to_do(resnet56):
    with pytest.raises(ConfigError, match="calibration data"):
        compress(resnet56, X28, 0.5, method="taylor")


@pytest.mark.parametrize("budget", ["flops=0", "flops=-1", "flops=1.2", "params=3"])
def test_bad_budget(resnet56, budget):
    with pytest.raises(BudgetError):
        compress(resnet56, X28, budget)


def test_unknown_method(resnet56):
    with pytest.raises(ConfigError, match="unknown"):
        compress(resnet56, X28, 0.5, method="magic")
    with pytest.raises(ConfigError, match="unknown allocator"):
        compress(resnet56, X28, 0.5, method="l1+magic")


def test_round_to_gives_multiples(resnet56):
    r = compress(resnet56, X28, 0.5, round_to=8, min_width=0.2)
    assert all(w % 8 == 0 for w in r.plan.widths.values())
