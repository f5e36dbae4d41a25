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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import suite  # noqa: E402

X = torch.zeros(1, 1, 28, 28)


def run(method, target, seed, acc_final, acc_bn=50.0, macs=50, family=None):
    return {"method": method, "family": family or ("torch-pruning" if method.startswith("tp:") else "prunekit"),
            "target": target, "seed": seed, "accuracy_final": acc_final, "accuracy_bn": acc_bn, "macs": macs,
            "macs_target": 100 * target, "seconds_to_plan": 1.0}


@pytest.mark.parametrize("method,target", [("tp:l1-layer", 0.5), ("tp:lamp-global", 0.3),
                                           ("tp:group-taylor-global", 0.85)])
def test_torch_pruning_baseline_lands_within_one_percent_below_the_target(resnet20, method, target):
    """Per-layer ratios move every layer at once (the last step is then applied group by group);
    Taylor needs gradients at every step (16 calibration images here). Coarse steps keep it fast."""
    calibration = Subset(load_dataset("synthetic", split="train"), range(16))
    model, extra = suite.prune_tp(resnet20, X, method, target, 0, calibration, steps=20, halvings=3)
    macs, goal = prunekit.count(model, X)[0], target * prunekit.count(resnet20, X)[0]
    assert extra["tp_reached_target"] and 0.99 * goal <= macs <= goal
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_undoing_a_torch_pruning_step_replays_its_history_exactly(resnet20):
    model, pruner = suite.tp_restore(resnet20, X, "tp:l1-layer")
    for ratio in (0.2, 0.35):
        pruner.current_step, pruner.per_step_pruning_ratio = 0, [0.0, ratio]
        pruner.step()
    again, _ = suite.tp_restore(resnet20, X, "tp:l1-layer", pruner.pruning_history(), pruner._scope_initial_channels)
    x = torch.randn(3, 1, 28, 28)
    assert prunekit.count(again, X) == prunekit.count(model, X) < prunekit.count(resnet20, X)
    assert torch.equal(again(x), model(x))


def test_accuracy_goal_needs_two_seeds_and_a_margin_beyond_the_spread():
    agg = lambda runs: suite.aggregate(runs, "accuracy_final")  # noqa: E731
    ahead = [run("chip", 0.2, 0, 94.0), run("chip", 0.2, 1, 94.2), run("tp:l1-layer", 0.2, 0, 93.6),
             run("tp:l1-layer", 0.2, 1, 93.7)]
    assert suite.goal_accuracy_20(agg(ahead))["met"] is True
    overlapping = [run("chip", 0.2, 0, 93.5), run("chip", 0.2, 1, 95.5)] + ahead[2:]  # mean 94.5, spread 1.0
    assert suite.goal_accuracy_20(agg(overlapping))["met"] is False
    assert suite.goal_accuracy_20(agg(ahead[::2]))["met"] is None  # one seed: not judged


def test_one_shot_goals_need_every_model_and_a_five_point_lead():
    def runs(model, pk, ref, auto=None):
        rs = [run("chip", 0.5, 0, None, acc_bn=pk), run("tp:l1-layer", 0.5, 0, None, acc_bn=ref)]
        rs += [run("auto", 0.5, 0, None, acc_bn=auto)] if auto is not None else []
        return [{**r, "model": model} for r in rs]

    assert suite.goal_oneshot_50({"a": runs("a", 70, 64)})["met"] is True
    assert suite.goal_oneshot_50({"a": runs("a", 70, 66)})["met"] is False
    assert suite.goal_oneshot_50({"a": runs("a", 70, 64), "b": []})["met"] is None  # one model not measured
    assert suite.goal_oneshot_50({"a": runs("a", 70, 66), "b": []})["met"] is False
    assert suite.goal_auto_50({"a": runs("a", 70, 64, auto=65)})["met"] is True
    assert suite.goal_auto_50({"a": runs("a", 70, 64, auto=63)})["met"] is False
    assert suite.goal_auto_50({"a": runs("a", 70, 64)})["met"] is None


def test_losses_name_where_prunekit_is_behind_and_by_how_much():
    rs = [{**r, "model": "resnet20", "phase": "oneshot"} for r in (
        run("chip", 0.5, 0, None, acc_bn=70.0), run("tp:l1-layer", 0.5, 0, None, acc_bn=60.0),
        run("chip", 0.2, 0, None, acc_bn=20.0), run("tp:l1-layer", 0.2, 0, None, acc_bn=22.5))]
    text = " ".join(suite.losses({"models": ["resnet20"], "runs": rs}))
    assert "resnet20 at 20% MACs one-shot by 2.50 points (chip 20.00 vs tp:l1-layer 22.50)" in text
    assert "other 1 setting measured" in text


def test_budget_goal_is_within_one_percent_and_never_above():
    assert suite.goal_budget([run("l1", 0.5, 0, None, macs=49.6)])["met"] is True
    assert suite.goal_budget([run("l1", 0.5, 0, None, macs=50.1)])["met"] is False
    assert suite.goal_budget([run("l1", 0.5, 0, None, macs=49.0)])["met"] is False
    assert suite.goal_budget([run("tp:l1-layer", 0.5, 0, None, macs=40.0)])["met"] is None


def test_results_of_other_settings_are_not_continued(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"config": suite.asdict(suite.QUICK), "runs": [], "dense": {}}))
    assert suite.load_results(path, replace(suite.QUICK, targets=(0.3,), models=()), fresh=False)["runs"] == []
    with pytest.raises(ConfigError, match="bn_batches"):
        suite.load_results(path, replace(suite.QUICK, bn_batches=7), fresh=False)
    assert suite.load_results(path, replace(suite.QUICK, bn_batches=7), fresh=True) is None


def test_bad_command_line_is_one_line(capsys):
    assert suite.main(["--quick", "--methods", "l1,nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "suite: error: unknown method 'nope'; choose from " + ", ".join(suite.all_methods()))
    assert suite.main(["--quick", "--targets", "0.5,x"]) == 2
    assert "cannot read --targets" in capsys.readouterr().err


def tiny_cpu_profile(tmp_path, resnet20) -> suite.Config:
    """The CPU profile's shape (a model with fine-tuning seeds, an optional absent one) at toy size."""
    ckpt = tmp_path / "r20.safetensors"
    prunekit.io.save_weights(resnet20, ckpt)
    recipe = suite.Recipe(epochs=1, lr=0.05, batch_size=32, max_steps_per_epoch=1).to_dict()
    return suite.Config(models=(suite.ModelSpec("resnet20", str(ckpt), (0.5,), (0, 1)),
                                suite.ModelSpec("resnet56", str(tmp_path / "absent.safetensors"), (0.5,), (0,),
                                                optional=True)),
                        dataset="synthetic", targets=(0.5,), finetune_recipe=recipe, train_images=64, test_images=32,
                        bn_batches=1, cpu_batches=(1, 2), gpu_batches=(), latency_seconds=0.01, tp_steps=10,
                        tp_halvings=1)


def test_cpu_profile_resumes_after_an_interruption_without_redoing_rows(tmp_path, resnet20, monkeypatch):
    cfg, base = tiny_cpu_profile(tmp_path, resnet20), tmp_path / "cpu_suite"
    methods = ["l1", "tp:l1-layer"]
    calls = []
    real_finetune = suite.run_finetune

    def interrupted(*args, **kwargs):
        calls.append(args[2:5])
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. the machine's time limit, mid-run
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(suite, "run_finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        suite.execute(cfg, methods, list(suite.PHASES), base, "cpu", "first")
    first = json.loads(base.with_suffix(".json").read_text())
    assert [(r["phase"], r["method"]) for r in first["runs"]] == [
        ("oneshot", "l1"), ("oneshot", "tp:l1-layer"), ("finetune", "l1")]  # one-shot rows first
    assert all(0 <= suite.landing(r) <= 0.01 for r in first["runs"])  # both sides land within 1% below

    monkeypatch.setattr(suite, "run_finetune", real_finetune)
    done = []
    monkeypatch.setattr(suite, "run_oneshot", lambda *a, **k: done.append(a) or pytest.fail("redid a one-shot row"))
    assert suite.execute(cfg, methods, list(suite.PHASES), base, "cpu", "second", stop_after=0)["runs"] == first["runs"]
    results = suite.execute(cfg, methods, list(suite.PHASES), base, "cpu", "third")
    keys = [suite.row_key(r) for r in results["runs"]]
    assert len(keys) == len(set(keys)) == 2 + 4 and keys[:3] == [suite.row_key(r) for r in first["runs"]]
    assert [s["command"] for s in results["sessions"]] == ["first", "second", "third"]
    assert suite.wall_seconds(results) == sum(s["seconds"] for s in results["sessions"]) > 0
    assert all(r["load_average"]["start"] and r["load_average"]["end"] for r in results["runs"])
    md = base.with_suffix(".md").read_text()
    assert "resnet56" in md and "checkpoint" in md and "absent" in md  # skipped with a clear message
    assert "| **" in md and "Commands:" in md and "`third`" in md
    assert not done


def test_merge_adds_the_rows_of_a_parallel_run_once(tmp_path, resnet20):
    cfg = tiny_cpu_profile(tmp_path, resnet20)
    main, side = tmp_path / "cpu_suite", tmp_path / "side" / "cpu_suite"
    side.parent.mkdir()
    suite.execute(cfg, ["l1"], ["oneshot"], main, "cpu", "main run")
    suite.execute(cfg, ["l1", "random"], ["oneshot"], side, "cpu", "side run")  # l1 again: the main file's row stays
    ours = json.loads(main.with_suffix(".json").read_text())["runs"]
    merged = suite.merge(main, [side.with_suffix(".json")], cfg, "cpu")
    assert [r["method"] for r in merged["runs"]] == ["l1", "random"] and merged["runs"][0] == ours[0]
    assert [s["command"] for s in merged["sessions"]] == ["main run", "side run"]
    assert "random" in main.with_suffix(".md").read_text()
    assert suite.merge(main, [side.with_suffix(".json")], cfg, "cpu")["runs"] == merged["runs"]  # idempotent
    theirs = json.loads(side.with_suffix(".json").read_text())["runs"]
    replaced = suite.merge(main, [side.with_suffix(".json")], cfg, "cpu", replace=True)["runs"]
    assert sorted(map(json.dumps, replaced)) == sorted(map(json.dumps, theirs))  # the side run's l1 row now


def test_readme_block_between_the_markers_is_all_that_changes(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{suite.README_BEGIN}\nold table\n{suite.README_END}\nafter\n")
    rs = [{**run("chip", 0.5, 0, None, acc_bn=70.0), "model": "resnet20", "phase": "oneshot"},
          {**run("tp:l1-layer", 0.5, 0, None, acc_bn=60.0), "model": "resnet20", "phase": "oneshot"}]
    results = {"models": ["resnet20", "resnet56"], "methods": ["chip", "tp:l1-layer"], "runs": rs,
               "dense": {"resnet20": {"accuracy": 94.42, "macs": 31e6}}, "absent": {"resnet56": "skipped: absent"}}
    suite.write_readme(results, readme)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{suite.README_END}\nafter\n")
    assert "old table" not in text and "| chip | **70.00** |" in text and "resnet56: skipped: absent" in text
    readme.write_text("no markers\n")
    with pytest.raises(ConfigError, match="markers"):
        suite.write_readme(results, readme)
