import pytest
import torch

import prunekit
from prunekit import CheckpointError, compress
from prunekit.io import load_weights, read_state
from prunekit.models import create_model

X = torch.randn(1, 1, 28, 28)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16_bn"])
def test_save_load_roundtrip_is_exact(tmp_path, name):
    torch.manual_seed(1)
    r = compress(create_model(name, in_channels=1), X, 0.4, method="l1+global")
    prunekit.save(r, tmp_path)
    torch.manual_seed(2)  # a different fresh initialization: the weights must come from the file
    loaded = prunekit.load(tmp_path, create_model(name, in_channels=1)).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), r.model.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "plan.json", "summary.json"]


def test_load_into_wrong_architecture(tmp_path):
    prunekit.save(compress(create_model("resnet20", in_channels=1), X, 0.5), tmp_path)
    with pytest.raises(CheckpointError):
        prunekit.load(tmp_path, create_model("resnet56", in_channels=1))


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state(bad)


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(create_model("resnet56"), path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(create_model("resnet20"), path)  # a whole pickled module, not a state dict
    with pytest.raises(CheckpointError):
        read_state(path)


def test_export_onnx_and_torchscript(tmp_path):
    onnx = pytest.importorskip("onnx")
    r = compress(create_model("resnet20", in_channels=1), X, 0.5)
    prunekit.export_onnx(r.model, X, tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    prunekit.export_torchscript(r.model, X, tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(X), r.model.eval()(X))


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os
    prunekit.save(compress(create_model("resnet20", in_channels=1), X, 0.5), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in tmp_path.iterdir())
