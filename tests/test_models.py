"""Built-in models: shapes, the published ResNet-56 size, and the tv:/timm: name forms."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit import ConfigError
from prunekit.models import create_model, list_models

BUILTIN = ["mobilenetv2", "resnet110", "resnet20", "resnet56", "vgg16_bn"]


def test_builtins_are_listed():
    assert list_models() == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32)])
def test_forward_shape(name, channels, side):
    model = create_model(name, in_channels=channels, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, side, side)).shape == (2, 7)


def test_resnet56_size_on_fashion_mnist():
    model = create_model("resnet56", in_channels=1, num_classes=10).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == 855_482
    assert counter.get_total_flops() // 2 == 96_050_048  # MACs of every conv and the linear layer


def test_resnet_shortcuts_project_only_where_the_shape_changes():
    model = create_model("resnet20")
    projections = [name for name, m in model.named_modules() if name.endswith("shortcut") and not isinstance(m, nn.Identity)]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_mobilenetv2_width_mult():
    thin = create_model("mobilenetv2", width_mult=0.5)
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in create_model("mobilenetv2").parameters())
    with torch.no_grad():
        assert thin.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_same_seed_same_weights():
    torch.manual_seed(0)
    a = create_model("resnet20").state_dict()
    torch.manual_seed(0)
    b = create_model("resnet20").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name,needle", [("resnet999", "resnet56"), ("tv:nope", "torchvision"),
                                         ("foo:resnet18", "tv:<torchvision name>")])
def test_unknown_names(name, needle):
    with pytest.raises(ConfigError, match=needle):
        create_model(name)


def test_torchvision_by_name():
    pytest.importorskip("torchvision")
    model = create_model("tv:resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_torchvision_in_channels_replaces_the_stem():
    pytest.importorskip("torchvision")
    model = create_model("tv:resnet18", in_channels=1, num_classes=10).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_timm_by_name():
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", in_channels=1, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)
