"""method="auto": held-out images apart from calibration, BatchNorm and test data; the choice is the
leaderboard's argmax; the result is the plain compress of the chosen method; search budget; refusals."""
import functools
import importlib
import json
from collections import defaultdict

import pytest
from hypothesis import given, strategies as st
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

import prunekit
from prunekit import ConfigError, compress
from prunekit.cli import main
from prunekit.criteria import CRITERIA
from prunekit.data import holdout_split
from prunekit.data.synthetic import synthetic

auto_module = importlib.import_module("prunekit.auto")
X = torch.zeros(1, 1, 8, 8)
CANDIDATES = ["l1", "bn_scale", "taylor+uniform", "l1+global"]  # 3 criteria, 3 allocators
FAST = {"calibration_batches": 1, "calibration_batch_size": 32, "bn_batches": 2}


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def train():
    return synthetic(size=(1, 8, 8), length=400)


def run_auto(model, train, seed=0, **options):
    return compress(model, X, 0.5, method="auto", data=train, seed=seed,
                    options={"candidates": CANDIDATES, **options}, **FAST)


def board(result) -> list[tuple]:
    rows = result.summary["auto"]["leaderboard"]
    return [(r["candidate"], r["heldout_accuracy"], r["macs"], r["params"]) for r in rows]


class Logged(Dataset):
    """Remembers, per phase, which items were read."""

    def __init__(self, data):
        self.data, self.phase, self.read = data, "calibration", defaultdict(set)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.read[self.phase].add(int(i))
        return self.data[i]


def root(data):
    while isinstance(data, Subset):
        data = data.dataset
    return data


def test_heldout_images_are_training_images_apart_from_calibration_and_batchnorm(model, train, monkeypatch):
    logged = Logged(train)
    roots = []

    def phase(name, f):
        @functools.wraps(f)
        def wrapped(m, data, *args, **kwargs):
            roots.append(root(data))
            logged.phase = name
            try:
                return f(m, data, *args, **kwargs)
            finally:
                logged.phase = "after"
        return wrapped

    monkeypatch.setattr(auto_module, "recalibrate_bn", phase("bn", auto_module.recalibrate_bn))
    monkeypatch.setattr(auto_module, "evaluate", phase("heldout", auto_module.evaluate))
    refit = auto_module.reconstruct_result

    def refit_logged(result, dense, graph, data, *args):  # scoring refits on the BatchNorm part, the result on all
        logged.phase = "refit" if data is not logged else "after"
        try:
            return refit(result, dense, graph, data, *args)
        finally:
            logged.phase = "after"
    monkeypatch.setattr(auto_module, "reconstruct_result", refit_logged)
    result = run_auto(model, logged)
    read = logged.read
    assert read["calibration"] and read["bn"] and read["heldout"]
    assert all(r is logged for r in roots)  # only ever the training data: the test split is never given
    assert not read["heldout"] & read["bn"]
    assert not read["heldout"] & read["calibration"]
    rest, held = holdout_split(train, 0.1, 0)
    assert read["heldout"] <= set(held.indices) and read["bn"] | read["refit"] <= set(rest.indices)
    assert read["refit"] and not read["heldout"] & read["refit"]
    heldout = set(held.indices) - read["calibration"]
    assert result.summary["auto"]["heldout_images"] == len(read["heldout"]) == len(heldout)
    assert result.summary["auto"]["calibration_images"] == 32 <= len(read["calibration"])


@given(n=st.integers(20, 400), fraction=st.floats(0.05, 0.5), seed=st.integers(0, 2**31 - 1),
       calibration=st.sets(st.integers(0, 399), max_size=60), images=st.none() | st.integers(1, 50))
def test_split_is_deterministic_and_keeps_calibration_out(n, fraction, seed, calibration, images):
    data = list(range(n))
    calibration = {i for i in calibration if i < n}
    try:
        rest, held = auto_module.split(data, calibration, fraction, images, seed)
    except ConfigError:  # every held-out item was a calibration image, or one side of the split is empty
        return
    again = auto_module.split(data, calibration, fraction, images, seed)
    assert held.indices == again[1].indices and rest.indices == again[0].indices
    assert not set(held.indices) & calibration and not set(held.indices) & set(rest.indices)
    assert set(held.indices) <= set(holdout_split(data, fraction, seed)[1].indices)
    assert images is None or len(held) <= images


def test_choice_is_the_leaderboards_argmax_and_the_plain_compress_of_it(model, train):
    result = run_auto(model, train, seed=1)
    a = result.summary["auto"]
    rows = a["leaderboard"]
    assert sorted(r["candidate"] for r in rows) == sorted(CANDIDATES)
    assert a["chosen"] == max(rows, key=lambda r: r["heldout_accuracy"])["candidate"] == rows[0]["candidate"]
    assert set(rows[0]) == {"candidate", "heldout_accuracy", "macs", "params", "seconds", "criterion_seconds"}
    plain = compress(model, X, 0.5, method=a["chosen"], data=train, seed=1, **FAST)
    assert result.plan.widths == plain.plan.widths and result.plan.keep == plain.plan.keep
    assert result.summary["method"] == plain.summary["method"] and result.summary["signals"] == plain.summary["signals"]
    assert result.summary["batchnorm"] == plain.summary["batchnorm"] == "re-estimated"
    state, other = result.model.state_dict(), plain.model.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    chosen_row = next(r for r in rows if r["candidate"] == a["chosen"])
    assert (chosen_row["macs"], chosen_row["params"]) == prunekit.count(result.model, X)


def test_deterministic_for_a_seed_and_one_calibration_one_scoring_per_criterion(model, train, monkeypatch):
    calls = defaultdict(int)
    original = auto_module.Signals

    def signals(*args, **kwargs):
        calls["signals"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(auto_module, "Signals", signals)
    for name in ("l1", "bn_scale", "taylor"):
        f = CRITERIA.get(name)
        monkeypatch.setitem(CRITERIA._items, name, functools.wraps(f)(
            lambda *a, f=f, name=name, **k: (calls.__setitem__(name, calls[name] + 1), f(*a, **k))[1]))
    first = run_auto(model, train, seed=2)
    assert dict(calls) == {"signals": 1, "l1": 1, "bn_scale": 1, "taylor": 1}
    assert board(run_auto(model, train, seed=2)) == board(first)


def test_search_budget_stops_with_the_best_so_far(model, train):
    result = run_auto(model, train, search_budget=1e-9)
    a = result.summary["auto"]
    assert [r["candidate"] for r in a["leaderboard"]] == [CANDIDATES[0]] and a["chosen"] == CANDIDATES[0]
    assert a["stopped_early"] and [s["candidate"] for s in a["skipped"]] == CANDIDATES[1:]
    plain = compress(model, X, 0.5, method=CANDIDATES[0], data=train, **FAST)
    assert result.plan.keep == plain.plan.keep


def test_candidates_that_cannot_plan_are_skipped_with_the_reason(model, train):
    result = compress(model, X, 0.5, method="auto", data=train, options={"candidates": "l1,l1+ratios"}, **FAST)
    a = result.summary["auto"]
    assert a["chosen"] == "l1" and [s["candidate"] for s in a["skipped"]] == ["l1+ratios"]
    assert "ratios=" in a["skipped"][0]["reason"] and not a["stopped_early"]


def test_default_candidates_are_every_criterion_by_allocator_but_the_control_and_training_searches_last():
    names = auto_module.default_candidates()
    methods = list(map(prunekit.methods.resolve, names))
    pairs = {(m.criterion, m.allocator) for m in methods}
    assert len(pairs) == len(names)
    left_out = {"random", "ratios", "dagger", "fisher_iterative"}
    assert set(auto_module.NOT_BY_DEFAULT) == left_out and set(auto_module.PRESETS_ONLY) == {"global_raw", "acp"}
    crossed = {(c, a) for c in CRITERIA.names() for a in prunekit.allocation.ALLOCATORS.names()
               if c not in left_out and a not in left_out | {"global_raw", "acp"}}
    assert pairs == crossed | {("fisher", "global_raw"), ("l1", "acp")}  # the presets fisher and acp
    presets = [p for p in prunekit.methods.PRESETS.names() if p in names and p != "acp"]
    assert len(presets) >= 9 and names[:len(presets)] == presets  # presets first
    assert names[-1] == "acp" and auto_module.candidate_options_of("acp", None) == auto_module.CANDIDATE_OPTIONS["acp"]


def test_a_search_candidate_plans_with_its_options_and_is_scored_on_images_it_did_not_search_on(model, train):
    acp = {"particles": 2, "cycles": 1, "fitness_batches": 1, "holdout_images": 20, "cluster_images": 32}
    result = compress(model, X, 0.5, method="auto", data=train, seed=1, options={
        "candidates": ["l1", "acp"], "candidate_options": {"acp": acp}}, **FAST)
    a = result.summary["auto"]
    rows = {r["candidate"]: r for r in a["leaderboard"]}
    assert rows["acp"]["options"] == acp and "options" not in rows["l1"]
    assert a["excluded_searched_images"] > 0
    searched = set(holdout_split(train, 0.1, 1)[1].indices[:20])
    _, held = auto_module.split(train, searched, 0.1, 5000, 1)
    assert a["heldout_images"] <= len(held)
    plain = compress(model, X, 0.5, method=a["chosen"], data=train, seed=1, options=a["options"] or None, **FAST)
    assert result.plan.keep == plain.plan.keep
    state, other = result.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_finetune_proxy_ranks_the_finalists_after_distillation(model, train, monkeypatch):
    trained = []
    original = auto_module.distilled_accuracy

    def proxy(result, *args, **kwargs):
        trained.append(result.summary["method"]["name"])
        return original(result, *args, **kwargs)

    monkeypatch.setattr(auto_module, "distilled_accuracy", proxy)
    result = run_auto(model, train, finetune_steps=2, finalists=2)
    a = result.summary["auto"]
    rows = a["leaderboard"]
    proxied = [r for r in rows if "finetuned_accuracy" in r]
    assert len(proxied) == a["finalists"] == 2 and a["finetune_steps"] == 2
    assert len(trained) == 4  # each finalist with and without its refit
    oneshot = sorted(rows, key=lambda r: -r["heldout_accuracy"])
    assert {r["candidate"] for r in proxied} == {r["candidate"] for r in oneshot[:2]}  # the one-shot best two
    assert rows[:2] == sorted(proxied, key=lambda r: -r["finetuned_accuracy"])  # ranked after distillation
    for r in proxied:
        both = (r["finetuned_with_refit"], r["finetuned_without_refit"])
        assert r["finetuned_accuracy"] == max(both) and r["refit"] == (both[0] >= both[1])
    assert a["chosen"] == rows[0]["candidate"]
    assert a["reconstruct"] == (512 if rows[0]["refit"] else 0)
    plain = compress(model, X, 0.5, method=a["chosen"], data=train, reconstruct=a["reconstruct"], **FAST)
    assert result.plan.keep == plain.plan.keep
    assert result.summary["reconstruction"] == {**plain.summary["reconstruction"],
                                                "seconds": result.summary["reconstruction"]["seconds"]}
    state, other = result.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)


def test_a_proxy_that_scores_higher_without_the_refit_drops_it_from_the_winner(model, train, monkeypatch):
    def proxy(result, *args, refit=None, **kwargs):  # the unrefit copy always scores higher
        return 50.0 if refit else 60.0

    monkeypatch.setattr(auto_module, "distilled_accuracy", proxy)
    result = run_auto(model, train, finetune_steps=2, finalists=2)
    a = result.summary["auto"]
    assert a["reconstruct"] == 0 and not a["leaderboard"][0]["refit"]
    assert result.summary["reconstruction"]["layers"] == 0
    plain = compress(model, X, 0.5, method=a["chosen"], data=train, reconstruct=0, **FAST)
    state, other = result.model.state_dict(), plain.model.state_dict()
    assert result.plan.keep == plain.plan.keep and all(torch.equal(state[k], other[k]) for k in state)
    refit = compress(model, X, 0.5, method=a["chosen"], data=train, **FAST).model.state_dict()
    assert not all(torch.equal(state[k], refit[k]) for k in state)  # the refit would have changed the weights


def test_finetune_proxy_without_a_refit_scores_each_finalist_once(model, train, monkeypatch):
    calls = []
    original = auto_module.distilled_accuracy
    monkeypatch.setattr(auto_module, "distilled_accuracy", lambda *a, **k: calls.append(1) or original(*a, **k))
    result = compress(model, X, 0.5, method="auto", data=train, reconstruct=0, **FAST,
                      options={"candidates": CANDIDATES, "finetune_steps": 2, "finalists": 2})
    assert len(calls) == 2 and result.summary["auto"]["reconstruct"] == 0
    assert all("refit" not in r for r in result.summary["auto"]["leaderboard"])


@pytest.mark.parametrize("kwargs,needle", [
    ({"data": None}, "data="),
    ({"data": None}, "--dataset"),
    ({"options": {"beta": 3}}, "takes no option 'beta'"),
    ({"options": {"candidates": ["l1", "l1+uniform"]}}, "same method"),
    ({"options": {"candidates": ["auto"]}}, "not a method"),
    ({"options": {"candidates": ["nope"]}}, "unknown method"),
    ({"options": {"search_budget": 0}}, "search_budget"),
    ({"options": {"finetune_steps": -1}}, "finetune_steps"),
    ({"options": {"finalists": 0}}, "finalists"),
    ({"options": {"finetune_lr": 0}}, "finetune_lr"),
    ({"options": {"candidate_options": {"nope": {}}}}, "candidate_options"),
    ({"options": {"candidates": ["l1"], "candidate_options": {"l1": {"beta": 1}}}}, "takes no option 'beta'"),
])
def test_refusals_are_one_line_config_errors(model, train, kwargs, needle):
    args = {"data": train, **kwargs}
    with pytest.raises(ConfigError, match="^[^\n]*$") as e:
        compress(model, X, 0.5, method="auto", **args)
    assert needle in str(e.value)


def test_sweep_refuses_auto(model, train):
    with pytest.raises(ConfigError, match="only in compress"):
        prunekit.sweep(model, X, [0.5], method="auto", data=train)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_refuses_auto_without_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "compress", "--model", "resnet20", "--budget", "flops=0.5", "--method", "auto",
                       "--out", str(tmp_path / "o"))
    lines = [line for line in err.splitlines() if line.startswith("prunekit: error:")]
    assert code == 2 and len(lines) == 1 and "--dataset" in lines[0]


def test_cli_json_prints_the_leaderboard_and_the_report_shows_it(capsys, tmp_path):
    out = tmp_path / "o"
    code, stdout, err = run(capsys, "compress", "--model", "resnet20", "--dataset", "synthetic", "--input-size", "8",
                            "--budget", "flops=0.5", "--method", "auto", "--option", "candidates=l1,l2",
                            "--search-budget", "600", "--calibration-batches", "1", "--bn-batches", "1", "--no-eval",
                            "--out", str(out), "--report", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    a = summary["auto"]
    assert [r["candidate"] for r in a["leaderboard"]] in (["l1", "l2"], ["l2", "l1"])
    assert a["chosen"] == a["leaderboard"][0]["candidate"] == summary["method"]["name"] and a["search_budget"] == 600
    assert json.loads((out / "summary.json").read_text())["auto"] == a
    page = (out / "report.html").read_text()
    assert 'id="auto"' in page and all(f"<td>{r['candidate']}</td>" in page for r in a["leaderboard"])


def test_cli_fine_tuning_turns_the_distillation_proxy_on():
    from prunekit.cli import _auto_options, parser
    base = ["compress", "--model", "resnet20", "--dataset", "synthetic", "--budget", "flops=0.5", "--method", "auto",
            "--out", "unused"]
    assert "finetune_steps" not in _auto_options(parser().parse_args(base))
    tuned = _auto_options(parser().parse_args(base + ["--finetune-epochs", "2", "--finetune-lr", "0.01"]))
    assert tuned["finetune_steps"] == auto_module.PROXY_STEPS and tuned["finetune_lr"] == 0.01
    mine = _auto_options(parser().parse_args(base + ["--finetune-epochs", "2", "--option", "finetune_steps=0"]))
    assert mine["finetune_steps"] == 0
