"""A compressed model is usable as saved: BatchNorm is re-estimated by compress itself, or the
result says that it is not."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import prunekit
from prunekit.cli import main
from prunekit.models import create_model
from prunekit.errors import ConfigError
from prunekit.report import write_report
from prunekit.train import recalibrate_bn

X = torch.zeros(1, 1, 28, 28)


def bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n}


def test_compress_reestimates_like_recalibrate_bn(resnet20, synthetic_train):
    result = prunekit.compress(resnet20, X, 0.5, method="l1", data=synthetic_train, seed=3, bn_batches=2)
    assert result.summary["batchnorm"] == "re-estimated" and result.summary["bn_batches"] == 2
    stale = prunekit.compress(resnet20, X, 0.5, method="l1", data=synthetic_train, seed=3, bn_batches=0)
    assert stale.summary["batchnorm"] == "stale"
    dense = dict(resnet20.named_buffers())
    got, before = bn_stats(result.model), bn_stats(stale.model)
    # unpruned BatchNorms (the stem's stream keeps its width here only if l1 left it whole) still change
    assert any(not torch.equal(got[n], before[n]) for n in got)
    for n, v in before.items():  # data-free: the dense statistics, sliced to the kept channels
        if v.shape == dense[n].shape:
            assert torch.equal(v, dense[n])
    recalibrate_bn(stale.model, synthetic_train, batches=2, seed=3)
    for n, v in bn_stats(stale.model).items():
        assert torch.equal(v, got[n]), n
    assert not result.model.training


def test_without_data_or_batchnorm(resnet20):
    assert prunekit.compress(resnet20, X, 0.5, method="l1").summary["batchnorm"] == "stale"
    no_bn = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    no_bn(X)
    assert prunekit.compress(no_bn, X, 0.5, method="l1").summary["batchnorm"] == "none"


@pytest.mark.parametrize("bad", [-1, 1.5, "20", True])
def test_bad_bn_batches(resnet20, bad):
    with pytest.raises(ConfigError, match="bn_batches"):
        prunekit.compress(resnet20, X, 0.5, bn_batches=bad)


def test_finetune_marks_batchnorm(resnet20, synthetic_train):
    result = prunekit.compress(resnet20, X, 0.5, data=synthetic_train, bn_batches=1)
    prunekit.finetune(result, synthetic_train, epochs=1, max_steps_per_epoch=1, batch_size=32, progress=False)
    assert result.summary["batchnorm"] == "fine-tuned"


def test_sweep_points_reestimated(resnet20, synthetic_train):
    sw = prunekit.sweep(resnet20, X, [0.5], method="l1", data=synthetic_train, bn_batches=2, seed=1)
    direct = prunekit.compress(resnet20, X, 0.5, method="l1", data=synthetic_train, bn_batches=2, seed=1)
    point = sw.points[0].result
    assert point.summary["batchnorm"] == "re-estimated"
    for n, v in bn_stats(direct.model).items():
        assert torch.equal(v, bn_stats(point.model)[n]), n


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


COMMON = ["--model", "resnet20", "--budget", "flops=0.5", "--method", "l1", "--bn-batches", "2"]


def test_cli_no_eval_saves_the_evaluated_weights(capsys, tmp_path, resnet20):
    a, b, dense = tmp_path / "a", tmp_path / "b", str(tmp_path / "dense.safetensors")
    prunekit.io.save_weights(resnet20, dense)
    common = [*COMMON, "--dataset", "synthetic", "--checkpoint", dense]
    assert _cli(capsys, "compress", *common, "--out", str(a), "--no-eval")[0] == 0
    code, out, _ = _cli(capsys, "compress", *common, "--out", str(b), "--json")
    assert code == 0
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "summary.json").read_text())["batchnorm"] == "re-estimated"
    printed = json.loads(out)["accuracy_pruned_bn"]
    code, out, err = _cli(capsys, "eval", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint", str(a),
                          "--json")
    assert code == 0 and "warning" not in err
    assert json.loads(out)["accuracy"] == pytest.approx(printed, abs=1e-9)


def test_cli_data_free_says_stale(capsys, tmp_path):
    out_dir = tmp_path / "free"
    code, _, err = _cli(capsys, "compress", *COMMON, "--in-channels", "1", "--input-size", "28", "--out", str(out_dir))
    assert code == 0
    assert "BatchNorm statistics" in err and "--bn-batches" in err
    assert json.loads((out_dir / "summary.json").read_text())["batchnorm"] == "stale"
    report = write_report(out_dir)
    assert 'id="batchnorm-state"' in report.read_text() and "dense model&#x27;s" in report.read_text()
    code, _, err = _cli(capsys, "eval", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint", str(out_dir))
    assert code == 0 and len([line for line in err.splitlines() if line.startswith("warning:")]) == 1
    code, out, err = _cli(capsys, "eval", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint", str(out_dir),
                          "--bn-batches", "2", "--json")
    assert code == 0 and "warning" not in err and json.loads(out)["batchnorm"] == "re-estimated"


def test_exported_onnx_matches_saved_model(capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out_dir = tmp_path / "x"
    code, _, _ = _cli(capsys, "compress", *COMMON, "--dataset", "synthetic", "--no-eval", "--export", "onnx",
                      "--out", str(out_dir))
    assert code == 0
    model = prunekit.load(out_dir, create_model("resnet20", in_channels=1, num_classes=10)).eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    session = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
