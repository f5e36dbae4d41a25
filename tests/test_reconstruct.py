"""Layer reconstruction: exact where the pruned model can express the dense one, a no-op where nothing
was pruned, never worse than the kept weights on the layer it refits, and its bad inputs refused."""
import copy

import pytest
from hypothesis import given, settings, strategies as st
import torch
from torch import nn

from prunekit import ConfigError, compress
from prunekit.cli import main
from prunekit.data.synthetic import synthetic
from prunekit.graph import UnitGraph
from prunekit.reconstruct import kept_outputs, reconstruct

X = torch.zeros(1, 1, 8, 8)


def chain(width: int = 8, bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=bias), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 6, 3, padding=1, stride=2, bias=bias), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10)).eval()


def pruned(model: nn.Module, keep: dict[str, list[int]]):
    """(pruned copy, kept output positions) of ``model`` with ``keep`` applied by the UnitGraph."""
    graph = UnitGraph(copy.deepcopy(model), X)
    kept = kept_outputs(graph, keep)
    return graph.apply(keep), kept


def images(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_a_duplicated_channel_is_folded_into_its_twin_exactly():
    model = chain(bias=True)
    with torch.no_grad():  # channel 7 is channel 6: the consumer can read it twice from channel 6
        for p in (model[0].weight, model[0].bias, model[1].weight, model[1].bias, model[1].running_mean,
                  model[1].running_var):
            p[7] = p[6]
    small, kept = pruned(model, {"0": list(range(7))})
    x = images()
    assert not torch.allclose(small(x), model(x), atol=1e-3)
    refit = reconstruct(small, model, kept, x, ridge=1e-9)
    assert refit == ["3"]  # the stem computes the dense outputs already; the head reads unchanged inputs then
    torch.testing.assert_close(small(x), model(x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        w = model[3].weight
        torch.testing.assert_close(small[3].weight, torch.cat([w[:, :6], w[:, 6:7] + w[:, 7:8]], 1), atol=1e-4, rtol=1e-4)


def test_nothing_pruned_is_nothing_refit():
    model = chain()
    same, kept = pruned(model, {})
    x = images()
    assert reconstruct(same, model, kept, x) == []
    assert torch.equal(same(x), model(x))
    result = compress(model, X, 1.0, data=synthetic(size=(1, 8, 8), length=128), bn_batches=0, reconstruct=64)
    assert result.summary["reconstruction"]["layers"] == 0
    assert torch.equal(result.model(x), model(x))


@settings(max_examples=15)
@given(keep=st.sets(st.integers(0, 7), min_size=1, max_size=7))
def test_the_refit_layer_fits_the_dense_outputs_no_worse_than_the_kept_weights(keep):
    model = chain()
    small, kept = pruned(model, {"0": sorted(keep)})
    x = images()  # 64 images x 16 positions: every row of the refit layer is used
    inner = lambda m: m[:4](x)  # noqa: E731  the refit conv's output (its BatchNorm's input)
    before = (inner(small) - inner(model)).pow(2).mean()
    assert reconstruct(small, model, kept, x, ridge=1e-9)[0] == "3"
    after = (inner(small) - inner(model)).pow(2).mean()
    assert after <= before * (1 + 1e-4) + 1e-7
    assert kept["0"].tolist() == sorted(keep)


def test_fewer_sampled_rows_than_unknowns_leave_the_layer_as_it_was():
    model = chain()
    small, kept = pruned(model, {"0": [0, 1, 2]})
    weight = small[3].weight.clone()
    assert "3" not in reconstruct(small, model, kept, images(), max_rows=3 * 9 - 1)  # the head (6 inputs) is refit
    assert torch.equal(small[3].weight, weight)


def test_compress_refits_by_default_with_data_and_records_it():
    model, data = chain(), synthetic(size=(1, 8, 8), length=256)
    on = compress(model, X, 0.5, data=data, bn_batches=2, reconstruct=32)
    off = compress(model, X, 0.5, data=data, bn_batches=2, reconstruct=0)
    assert on.plan.keep == off.plan.keep
    assert on.summary["reconstruction"]["images"] == 32 and on.summary["reconstruction"]["layers"] >= 1
    assert off.summary["reconstruction"] == {"images": 0, "layers": 0, "seconds": 0.0}
    assert not torch.equal(on.model[3].weight, off.model[3].weight)
    again = compress(model, X, 0.5, data=data, bn_batches=2, reconstruct=32)  # deterministic for a seed
    assert all(torch.equal(a, b) for a, b in zip(on.model.state_dict().values(), again.model.state_dict().values()))
    without_data = compress(model, X, 0.5)
    assert without_data.summary["reconstruction"]["images"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "512"])
def test_bad_image_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="reconstruct must be"):
        compress(chain(), X, 0.5, reconstruct=bad)


@pytest.mark.parametrize("command", [["compress", "--budget", "flops=0.5"], ["sweep", "--budgets", "0.5"]])
def test_cli_refuses_a_negative_count_in_one_line(capsys, tmp_path, command):
    code = main([*command, "--model", "resnet20", "--reconstruct", "-1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code != 0 and "Traceback" not in err and len(errors) == 1 and "reconstruct must be" in errors[0]
    assert not (tmp_path / "o").exists()


class Twice(nn.Module):
    """One conv applied twice: it has no single input to be refit on, so it is left alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.shared, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.shared(torch.relu(self.shared(x)))
        return self.head(x.mean((2, 3)))


def test_a_layer_run_twice_is_not_refit():
    model = Twice().eval()
    x = images()
    refit = reconstruct(model, copy.deepcopy(model).eval(), {}, x)
    assert refit == []
    with torch.no_grad():
        model.stem.weight[0] = 0  # upstream change: only the layers run once are refit
    assert "shared" not in reconstruct(model, Twice().eval(), {}, x)
