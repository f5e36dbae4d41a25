"""bench/suite.py: the Torch-Pruning baseline reaches its target, the goals are judged right, resume is safe."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

import prunekit
from prunekit import ConfigError
from prunekit.data import load_dataset
from prunekit.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import suite  # noqa: E402

X = torch.zeros(1, 1, 28, 28)


def run(method, target, seed, acc_final, acc_bn=50.0, macs=50, family=None):
    return {"method": method, "family": family or ("torch-pruning" if method.startswith("tp:") else "prunekit"),
            "target": target, "seed": seed, "accuracy_final": acc_final, "accuracy_bn": acc_bn, "macs": macs,
            "macs_target": 100 * target, "seconds_to_plan": 1.0}


def test_torch_pruning_baseline_steps_until_the_target():
    """Group-Taylor, the baseline that needs gradients at every step (16 calibration images here)."""
    torch.manual_seed(0)
    dense = create_model("resnet20", in_channels=1).eval()
    calibration = Subset(load_dataset("synthetic", split="train"), range(16))
    model, extra = suite.prune_tp(dense, X, "tp:group-taylor-global", 0.85, 0, calibration)
    macs, dense_macs = prunekit.count(model, X)[0], prunekit.count(dense, X)[0]
    assert extra["tp_reached_target"] and 1 < extra["tp_steps"] < suite.TP_STEPS
    assert 0.9 * 0.85 * dense_macs < macs <= 0.85 * dense_macs
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_accuracy_goal_needs_two_seeds_and_a_margin_beyond_the_spread():
    agg = lambda runs: suite.aggregate(runs, "accuracy_final")  # noqa: E731
    ahead = [run("chip", 0.2, 0, 94.0), run("chip", 0.2, 1, 94.2), run("tp:l1-layer", 0.2, 0, 93.6),
             run("tp:l1-layer", 0.2, 1, 93.7)]
    assert suite.goal_accuracy_20(agg(ahead))["met"] is True
    overlapping = [run("chip", 0.2, 0, 93.5), run("chip", 0.2, 1, 95.5)] + ahead[2:]  # mean 94.5, spread 1.0
    assert suite.goal_accuracy_20(agg(overlapping))["met"] is False
    assert suite.goal_accuracy_20(agg(ahead[::2]))["met"] is None  # one seed: not judged


def test_no_finetuning_goal_compares_with_torch_pruning_and_random():
    bn = lambda runs: suite.aggregate(runs, "accuracy_bn")  # noqa: E731

    def runs(tp_accuracy):
        return [run(m, 0.1, seed, None, acc_bn=a) for seed in (0, 1)
                for m, a in (("l1+global", 40.0), ("random", 20.0), ("tp:l1-layer", tp_accuracy))]

    assert suite.goal_no_finetuning_10(bn(runs(39.5)))["met"] is False  # only 0.5 ahead of Torch-Pruning
    assert suite.goal_no_finetuning_10(bn(runs(30.0)))["met"] is True
    assert suite.goal_no_finetuning_10(bn(runs(30.0)[:3]))["met"] is None  # one seed: not judged


def test_budget_goal_is_within_one_percent_and_never_above():
    assert suite.goal_budget([run("l1", 0.5, 0, None, macs=49.6)])["met"] is True
    assert suite.goal_budget([run("l1", 0.5, 0, None, macs=50.1)])["met"] is False
    assert suite.goal_budget([run("l1", 0.5, 0, None, macs=49.0)])["met"] is False
    assert suite.goal_budget([run("tp:l1-layer", 0.5, 0, None, macs=40.0)])["met"] is None


def test_results_of_other_settings_are_not_continued(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"config": suite.asdict(suite.QUICK), "runs": [], "dense": {}}))
    assert suite.load_results(path, replace(suite.QUICK, targets=(0.3,)), fresh=False)["runs"] == []
    with pytest.raises(ConfigError, match="bn_batches"):
        suite.load_results(path, replace(suite.QUICK, bn_batches=7), fresh=False)
    assert suite.load_results(path, replace(suite.QUICK, bn_batches=7), fresh=True) is None


def test_bad_command_line_is_one_line(capsys):
    assert suite.main(["--quick", "--methods", "l1,nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "suite: error: unknown method 'nope'; choose from " + ", ".join(suite.all_methods()))
    assert suite.main(["--quick", "--targets", "0.5,x"]) == 2
    assert "cannot read --targets" in capsys.readouterr().err
