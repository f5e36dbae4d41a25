"""Low-rank decompositions and TRP (prunekit.lowrank): exact identities, exact costs, the saved and
exported model, and one-line refusals."""
import copy
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import prunekit
from prunekit import ConfigError, compress, count
from prunekit.cli import main
from prunekit.errors import CheckpointError
from prunekit.lowrank import (CONV_SCHEMES, LowRankError, TRPHook, UndecomposableLayerError, energy_rank, factorize,
                              max_rank, reconstruct, spectrum)
from prunekit.lowrank.cost import make_factor, positions
from prunekit.lowrank.decompose import replace
from prunekit.models import create_model
from prunekit.pipeline import prepare

X = torch.randn(1, 1, 16, 16)


def conv(c, n, k, stride=1, padding=1, dilation=1, bias=True):
    torch.manual_seed(0)
    return nn.Conv2d(c, n, k, stride, padding, dilation, bias=bias).double()


@settings(max_examples=40)
@given(n=st.integers(1, 9), c=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       scheme=st.sampled_from(CONV_SCHEMES))
def test_energy_one_reconstructs_every_weight_exactly(n, c, kh, kw, scheme):
    w = torch.randn(n, c, kh, kw, dtype=torch.float64)
    spec = spectrum(_with_weight(c, n, kh, kw, w), scheme)
    r = energy_rank(spec, 1.0)
    assert r == max_rank(_with_weight(c, n, kh, kw, w), scheme)
    torch.testing.assert_close(reconstruct(w, scheme, r), w, rtol=0, atol=1e-10)


def _with_weight(c, n, kh, kw, w):
    m = nn.Conv2d(c, n, (kh, kw), bias=False).double()
    with torch.no_grad():
        m.weight.copy_(w)
    return m


def test_energy_one_keeps_every_nonzero_singular_value_of_a_low_rank_weight():
    w = (torch.randn(8, 2, dtype=torch.float64) @ torch.randn(2, 27, dtype=torch.float64)).reshape(8, 3, 3, 3)
    m = _with_weight(3, 8, 3, 3, w)
    assert energy_rank(spectrum(m, "channel"), 0.999999) == 2  # a rank-2 matrix needs two
    torch.testing.assert_close(reconstruct(w, "channel", energy_rank(spectrum(m, "channel"), 1.0)), w, rtol=0,
                               atol=1e-10)


@pytest.mark.parametrize("scheme", CONV_SCHEMES)
@pytest.mark.parametrize("geometry", [dict(k=3), dict(k=3, stride=2), dict(k=(3, 5), padding=(1, 2)),
                                      dict(k=3, dilation=2, padding=2, bias=False), dict(k=(1, 3), stride=(2, 1),
                                                                                         padding=(0, 1))])
def test_full_rank_decomposition_reproduces_the_conv(scheme, geometry):
    g = dict(geometry)
    m = conv(5, 7, g.pop("k"), **g)
    x = torch.randn(2, 5, 11, 9, dtype=torch.float64)
    seq = factorize(m, scheme, max_rank(m, scheme))
    assert all(type(layer) is nn.Conv2d for layer in seq)
    torch.testing.assert_close(seq(x), m(x), rtol=0, atol=1e-6)


def test_full_rank_svd_reproduces_a_linear_layer():
    torch.manual_seed(0)
    m = nn.Linear(12, 5).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(factorize(m, "svd", 5)(x), m(x), rtol=0, atol=1e-6)


def test_truncated_channel_factorization_is_the_best_rank_r_approximation():
    m = conv(6, 8, 3)
    seq = factorize(m, "channel", 3)
    x = torch.randn(1, 6, 8, 8, dtype=torch.float64)
    truncated = copy.deepcopy(m)
    with torch.no_grad():
        truncated.weight.copy_(reconstruct(m.weight, "channel", 3))
    torch.testing.assert_close(seq(x), truncated(x), rtol=0, atol=1e-9)


@pytest.mark.parametrize("scheme", CONV_SCHEMES)
def test_predicted_costs_of_factorized_models_equal_flopcountermode(scheme):
    """Random channel widths and random ranks, every target conv and the classifier factorized: the
    CostModel's factorized terms equal torch's FlopCounterMode and the parameter count exactly."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1).eval()
    prepared = prepare(model, X, "l1")
    gen = torch.Generator().manual_seed(3)
    keep = {u.name: sorted(torch.randperm(u.width, generator=gen)[:max(1, u.width // 2)].tolist())
            for u in prepared.graph.units}
    pruned = prepared.graph.apply(keep)
    widths = {k: len(v) for k, v in keep.items()}
    names = {n: scheme for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1"}
    names["fc"] = "svd"
    where = positions(pruned, X, names)
    factors = []
    for name, s in names.items():
        m = pruned.get_submodule(name)
        dense = model.get_submodule(name).weight.shape[:2]
        r = int(torch.randint(1, max_rank(m, s) + 1, (1,), generator=gen))
        factors.append(make_factor(name, m, s, r, tuple(dense), where[name]))
        replace(pruned, name, factorize(m, s, r))
    predicted = prepared.cost.factorized(factors, widths)
    assert (round(predicted["macs"]), round(predicted["params"])) == count(pruned, X)


@pytest.mark.parametrize("method,scheme", [("svd", "channel"), ("svd", "decoupled"), ("l1+global,svd", "spatial")])
def test_compress_decomposes_to_the_budget_and_verifies(resnet20, method, scheme):
    r = compress(resnet20, X, "flops=0.4", method=method, options={"scheme": scheme})
    s = r.summary
    assert s["macs"]["pruned"] <= s["macs"]["target"] and s["within_tolerance"]
    assert (s["macs"]["pruned"], s["params"]["pruned"]) == count(r.model, X)
    ranks = r.plan.extras["lowrank"]["layers"]
    assert ranks and all(isinstance(r.model.get_submodule(n), nn.Sequential) for n in ranks)
    assert sum(row["macs_pruned"] for row in s["layers"]) == s["macs"]["pruned"]
    assert resnet20.layer1[0].conv1.__class__ is nn.Conv2d  # the caller's model is untouched


def test_energy_rule_keeps_its_ranks_when_under_the_budget(resnet20):
    r = compress(resnet20, X, "flops=1.0", method="svd", options={"energy": 0.5})
    for name, spec in r.plan.extras["lowrank"]["layers"].items():
        assert spec["rank"] == energy_rank(spectrum(resnet20.get_submodule(name), "channel"), 0.5)


@pytest.fixture(scope="module")
def saved(resnet20, tmp_path_factory):
    """A pruned-then-decomposed ResNet-20, saved: (result, run directory)."""
    r = compress(resnet20, X, "flops=0.3", method="l1+global,svd", options={"scheme": "channel"})
    return r, prunekit.save(r, tmp_path_factory.mktemp("run"))


def test_pruned_then_decomposed_model_saves_loads_and_exports(saved):
    ort = pytest.importorskip("onnxruntime")
    x = X
    r, tmp_path = saved
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["method"] == "l1+global,svd" and plan["extras"]["lowrank"]["layers"]
    torch.manual_seed(5)  # another initialization: the weights must come from the file
    loaded = prunekit.load(tmp_path, create_model("resnet20", in_channels=1)).eval()
    xs = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        expected = r.model.eval()(xs)
        assert torch.equal(loaded(xs), expected)
    onnx_path = prunekit.export_onnx(loaded, x, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": xs.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)
    ts = torch.jit.load(str(prunekit.export_torchscript(loaded, x, tmp_path / "model.pt")))
    torch.testing.assert_close(ts(xs), expected, rtol=1e-5, atol=1e-5)
    from prunekit.report import write_report
    html = write_report(tmp_path).read_text()
    assert "channel rank" in html and "ranks" in html


def test_tampered_rank_in_plan_is_refused(tmp_path, saved):
    import shutil
    shutil.copytree(saved[1], tmp_path, dirs_exist_ok=True)
    plan = json.loads((tmp_path / "plan.json").read_text())
    name = next(iter(plan["extras"]["lowrank"]["layers"]))
    plan["extras"]["lowrank"]["layers"][name]["rank"] = 10_000
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(CheckpointError, match="above"):
        prunekit.load(tmp_path, create_model("resnet20", in_channels=1))
    plan["extras"]["lowrank"]["layers"][name] = {"scheme": "bogus", "rank": 1}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(CheckpointError, match="scheme"):
        prunekit.load(tmp_path, create_model("resnet20", in_channels=1))


def test_trp_hook_truncates_and_adds_the_nuclear_subgradient():
    m = conv(4, 6, 3).float()
    w0 = m.weight.detach().clone()
    hook = TRPHook({"c": m}, "channel", energy=0.6, nuclear=0.5, period=2)
    hook.before_forward(0)
    u, s, vh = torch.linalg.svd(w0.reshape(6, -1), full_matrices=False)
    r = hook.ranks["c"]
    assert r < 6 and torch.linalg.matrix_rank(m.weight.detach().reshape(6, -1)) == r
    torch.testing.assert_close(m.weight.detach(), ((u[:, :r] * s[:r]) @ vh[:r]).reshape_as(w0), rtol=1e-5, atol=1e-5)
    m.weight.grad = torch.zeros_like(w0)
    hook.before_step(0)
    torch.testing.assert_close(m.weight.grad, 0.5 * (u[:, :r] @ vh[:r]).reshape_as(w0), rtol=1e-5, atol=1e-5)
    w1 = m.weight.detach().clone()
    hook.before_forward(1)  # off-period: plain SGD, nothing touched
    m.weight.grad.zero_()
    hook.before_step(1)
    assert torch.equal(m.weight.detach(), w1) and not m.weight.grad.any()


def test_trp_trains_then_decomposes(resnet20, synthetic_train):
    opts = {"steps": 3, "batch_size": 16, "threshold": 0.05}
    r = compress(resnet20, torch.zeros(1, 1, 28, 28), "flops=0.5", method="trp", data=synthetic_train,
                 options=opts, bn_batches=1)
    t = r.summary["trp"]
    assert t["steps"] == 3 and t["trp_steps"] == 3 and t["seconds_per_step"] > 0
    assert r.summary["seconds"]["trp_training"] > 0
    assert (r.summary["macs"]["pruned"], r.summary["params"]["pruned"]) == count(r.model, torch.zeros(1, 1, 28, 28))
    assert r.summary["macs"]["pruned"] <= r.summary["macs"]["target"]
    # default targets: 3x3 stride-1 convs but the first
    assert set(r.summary["lowrank"]["candidates"]) == {
        n for n, m in resnet20.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
        and m.stride == (1, 1) and n != "conv1"}


def test_lowrank_methods_are_listed():
    assert {"svd", "trp"} <= set(prunekit.list_methods()["methods"])
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import suite
    assert "svd" in suite.prunekit_methods() and suite.METHOD_OPTIONS["trp"]["steps"] >= 100


@pytest.mark.parametrize("options,match", [
    ({"energy": 0.0}, "energy must be in"), ({"energy": 1.5}, "energy must be in"), ({"energy": -0.2}, "energy"),
    ({"threshold": -1.0}, "threshold"), ({"rank": 17}, "larger than layer"), ({"scheme": "tucker"}, "scheme"),
    ({"layers": "layer1.0.bn1"}, "cannot be decomposed"), ({"layers": "nope"}, "not a module"),
    ({"energy": 0.9, "threshold": 0.1}, "one of"), ({"beta": 3}, "takes no option"),
])
def test_bad_options_are_one_line_config_errors(resnet20, options, match):
    with pytest.raises(ConfigError, match=match) as e:
        compress(resnet20, X, "flops=0.5", method="svd", options=options)
    assert "\n" not in str(e.value)


def test_grouped_conv_named_is_refused(mobilenetv2):
    grouped = next(n for n, m in mobilenetv2.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    with pytest.raises(UndecomposableLayerError, match="grouped"):
        compress(mobilenetv2, X, "flops=0.8", method="svd", options={"layers": grouped})
    with pytest.raises(LowRankError, match="outside"):
        factorize(nn.Conv2d(3, 4, 3), "channel", 28)


@pytest.mark.parametrize("args,match", [
    (["--method", "svd", "--option", "energy=1.5"], "energy must be in"),
    (["--method", "svd", "--option", "layers=layer1.0.bn1"], "cannot be decomposed"),
    (["--method", "l1+global,svd", "--option", "rank=99"], "larger than layer"),
    (["--method", "svd,l1"], "cannot read method"),
])
def test_cli_bad_lowrank_input_exits_2_with_one_line(capsys, tmp_path, args, match):
    code = main(["compress", "--model", "resnet20", "--input-size", "16", "--budget", "flops=0.5", *args,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("prunekit: error:")]
    assert code == 2 and len(errors) == 1 and match in errors[0] and "Traceback" not in err
