"""sweep(): calibration and scores once, each point == its own compress(), budgets met, CLI."""
import functools
import importlib
import json
import sys

import pytest
import torch

import prunekit
from prunekit import BudgetError, ConfigError, compress
from prunekit.cli import main
from prunekit.criteria import CRITERIA
from prunekit.data import load_dataset
from prunekit.models import create_model

sweep_module = importlib.import_module("prunekit.sweep")  # prunekit.sweep is the function
X = torch.zeros(1, 1, 28, 28)
KEYS = {"budget", "macs", "macs_dense", "params", "params_dense", "accuracy_pruned_bn", "accuracy_finetuned",
        "seconds_to_plan"}


@pytest.fixture
def counted(monkeypatch):
    """Counts of calibration-set constructions and criterion calls during the test."""
    calls = {"signals": 0, "criterion": 0}
    pipeline = importlib.import_module("prunekit.pipeline")
    original_signals = pipeline.Signals

    def signals(*args, **kwargs):
        calls["signals"] += 1
        return original_signals(*args, **kwargs)

    criterion = CRITERIA.get("taylor")

    @functools.wraps(criterion)
    def counting(*args, **kwargs):
        calls["criterion"] += 1
        return criterion(*args, **kwargs)

    monkeypatch.setattr(pipeline, "Signals", signals)
    monkeypatch.setitem(CRITERIA._items, "taylor", counting)
    return calls


def test_calibration_and_scores_are_computed_once(resnet20, synthetic_train, counted):
    result = prunekit.sweep(resnet20, X, [0.7, 0.5, 0.3], method="taylor", data=synthetic_train)
    assert counted == {"signals": 1, "criterion": 1}
    assert [p.budget for p in result.points] == ["0.7", "0.5", "0.3"]


@pytest.mark.parametrize("method", ["l1+global", "taylor", "random"])
def test_each_point_is_the_plan_of_a_separate_compress(resnet20, synthetic_train, method):
    budgets = [0.6, 0.25]
    result = prunekit.sweep(resnet20, X, budgets, method=method, data=synthetic_train, seed=3)
    for budget, point in zip(budgets, result.points):
        alone = compress(resnet20, X, budget, method=method, data=synthetic_train, seed=3)
        assert point.result.plan.keep == alone.plan.keep
        assert point.result.plan.widths == alone.plan.widths
        assert point.result.summary["macs"] == alone.summary["macs"]
        assert prunekit.count(point.result.model, X) == prunekit.count(alone.model, X)


def test_budgets_are_met_and_the_input_model_is_untouched(resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    result = prunekit.sweep(resnet20, X, ["0.8", 0.5, "0.2"], method="l1+global")
    assert all(torch.equal(before[k], v) for k, v in resnet20.state_dict().items())
    for fraction, point, made in zip((0.8, 0.5, 0.2), result.to_dict()["points"], result.points):
        assert set(point) == KEYS
        target = fraction * point["macs_dense"]
        assert 0.99 * target <= point["macs"] <= target
        assert (point["macs"], point["params"]) == prunekit.count(made.result.model, X)
        assert point["accuracy_pruned_bn"] is None and point["accuracy_finetuned"] is None
        assert point["seconds_to_plan"] > 0


@pytest.mark.parametrize("budgets,error,needle", [
    ([0.5, "abc"], BudgetError, "not a number"),
    ([0.5, 0.5], ConfigError, "given twice"),
    ([0.5, 0], BudgetError, "must be > 0"),
    ([], ConfigError, "list of budgets"),
])
def test_bad_budgets_are_refused_before_any_work(resnet20, synthetic_train, counted, budgets, error, needle):
    with pytest.raises(error, match=needle):
        prunekit.sweep(resnet20, X, budgets, method="taylor", data=synthetic_train)
    assert counted == {"signals": 0, "criterion": 0}


def test_an_infeasible_budget_is_refused_before_calibration(resnet20, synthetic_train, counted):
    with pytest.raises(BudgetError, match="below the smallest"):
        prunekit.sweep(resnet20, X, [0.5, 0.001], method="taylor", data=synthetic_train)
    assert counted == {"signals": 0, "criterion": 0}


def test_evaluation_needs_training_data(resnet20):
    with pytest.raises(ConfigError, match="needs training data"):
        prunekit.sweep(resnet20, X, [0.5], test_data=load_dataset("synthetic", split="test"))


def test_plot_is_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.warns(UserWarning, match="matplotlib"):
        assert sweep_module.plot_accuracy_vs_macs({"l1": [(1e6, 50.0)]}, tmp_path / "p.png") is None
    assert not (tmp_path / "p.png").exists()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("budgets,needle", [
    ("0.5,nope", "not a number"),
    ("0.5,0.5", "given twice"),
    ("0.5,2.5", "above 1"),
    ("0.5,0.0001", "below the smallest"),
    (",", "list of budgets"),
])
def test_cli_bad_budgets_one_line_error(capsys, tmp_path, budgets, needle):
    out = tmp_path / "out"
    code, _, err = run(capsys, "sweep", "--model", "resnet20", "--dataset", "synthetic", "--budgets", budgets,
                       "--out", str(out))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("prunekit: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


def test_cli_sweep_on_synthetic_data(capsys, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = run(capsys, "sweep", "--model", "resnet20", "--dataset", "synthetic", "--budgets", "0.7,0.3",
                            "--method", "l1+global", "--out", str(out), "--finetune-epochs", "1", "--max-steps", "1",
                            "--bn-batches", "2", "--eval-images", "128", "--device", "cpu", "--json")
    assert code == 0, err
    printed = json.loads(stdout)
    written = json.loads((out / "sweep.json").read_text())
    assert printed == written
    assert set(written) == {"method", "points"} and written["method"] == "l1+global"
    for point, fraction in zip(written["points"], (0.7, 0.3)):
        assert set(point) == KEYS
        assert isinstance(point["accuracy_pruned_bn"], float) and isinstance(point["accuracy_finetuned"], float)
        assert point["macs"] <= fraction * point["macs_dense"]
        pruned = prunekit.load(out / point["budget"], create_model("resnet20", in_channels=1))
        assert prunekit.count(pruned, X) == (point["macs"], point["params"])
        summary = json.loads((out / point["budget"] / "summary.json").read_text())
        assert summary["accuracy_finetuned"] == point["accuracy_finetuned"]
        assert isinstance(summary["accuracy_dense"], float)
        assert len(summary["finetune"]["epochs"]) == 1
    pytest.importorskip("matplotlib")
    assert (out / "accuracy_vs_macs.png").stat().st_size > 0
