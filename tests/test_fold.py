"""The inference form (prunekit.fold): runs of removed residual blocks become one StreamShift and
BatchNorm goes into the conv before it, with the same outputs; the model itself is left as it is."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import prunekit
from prunekit import ConfigError, inference_form
from prunekit.drop import ConstantOutput, EmptyOutput
from prunekit.fold import StreamShift
from prunekit.graph import UnitGraph
from prunekit.latency import measure
from prunekit.latency.measure import LatencyConfig
from prunekit.models import create_model
from tests.helpers import randomized_batchnorm

X = torch.zeros(1, 1, 16, 16)
BLOCKS = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]  # resnet20's branches, in order


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomized_batchnorm(create_model("resnet20", in_channels=1))


def _runs(removed: set[str]) -> int:
    """Maximal runs of consecutive removed blocks within a stage (a stage's first block reads the
    projection shortcut, which starts a new run)."""
    return sum(1 for i, name in enumerate(BLOCKS) if name in removed
               and (i % 3 == 0 or BLOCKS[i - 1] not in removed))


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_folded_model_computes_the_same_with_one_shift_per_run(resnet, data):
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    removed = data.draw(st.sets(st.sampled_from(BLOCKS), min_size=1))
    keep = {name: [] for name in removed}
    for u in g.units:  # the other Units at random keep-sets
        if u.name not in removed and data.draw(st.booleans()):
            k = data.draw(st.integers(1, u.width))
            keep[u.name] = sorted(data.draw(st.permutations(range(u.width)))[:k])
    g.apply(keep)
    model = g.model.eval()
    folded = inference_form(model)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    kinds = [type(m) for m in folded.modules()]
    assert kinds.count(StreamShift) == _runs(removed)
    assert not {ConstantOutput, EmptyOutput, nn.BatchNorm2d} & set(kinds)
    assert all(isinstance(model.get_submodule(n), EmptyOutput) for n in removed)  # the model keeps its form


def test_a_run_takes_the_relu_before_it_and_stays_exact_where_that_relu_is_read_again(resnet):
    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    g.apply({"layer1.0.conv1": [], "layer1.1.conv1": []})
    folded = inference_form(g.model.eval())
    relus = [n for n in folded.graph.nodes if n.op == "call_module" and isinstance(folded.get_submodule(n.target), nn.ReLU)]
    dense_relus = 1 + 2 * 9  # the stem's, and two per block
    assert len(relus) == dense_relus - 1 - 2 * 2  # the stem's went into the shift, the removed blocks' with them

    class Reread(nn.Module):  # the stream before a removed block is read again after it
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)
            self.gone = ConstantOutput(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))

        def forward(self, x):
            s = self.relu(self.bn(self.conv(x)))
            return torch.relu(s + self.gone(s)) * 2 + s

    m = randomized_batchnorm(Reread())
    m.gone.norm.bias.data.fill_(-0.3)
    folded = inference_form(m)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), m(x), rtol=1e-5, atol=1e-6)
    assert sum(isinstance(mod, StreamShift) for mod in folded.modules()) == 1


def test_nothing_to_fold_untraceable_or_training_models(resnet):
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    assert inference_form(plain) is plain

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    branchy = Branchy().eval()
    assert inference_form(branchy) is branchy
    with pytest.raises(ConfigError, match="eval"):
        inference_form(copy.deepcopy(resnet).train())


def test_export_and_timing_use_the_inference_form(resnet, tmp_path, monkeypatch):
    import onnx
    import onnxruntime as ort

    g = UnitGraph(copy.deepcopy(resnet), X, drop_blocks=True)
    g.apply({"layer2.1.conv1": [], "layer2.2.conv1": []})
    model = g.model.eval()
    x = torch.randn(2, 1, 16, 16)
    path = prunekit.io.export_onnx(model, X, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], want, rtol=1e-4, atol=1e-4)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Max" in ops and "BatchNormalization" not in ops
    calls = []
    real = measure.inference_form
    monkeypatch.setattr(measure, "inference_form", lambda m: calls.append(m) or real(m))
    run = measure.runner(model, x, LatencyConfig(threads=1))
    assert calls == [model]
    np.testing.assert_allclose(run().numpy(), want, rtol=1e-5, atol=1e-5)
