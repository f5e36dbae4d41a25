"""Models by name: the built-in CIFAR-style networks, ``tv:<name>`` (torchvision) and ``timm:<name>``.

Weights are never downloaded: pruning starts from a checkpoint the user passes, or from scratch.
"""
from __future__ import annotations

import difflib
import importlib

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

MODELS = Registry("model")
register_model = MODELS.register

from . import mobilenetv2, resnet_cifar, vgg  # noqa: E402,F401  (registration)

_EXTERNAL = {"tv": "torchvision", "timm": "timm"}


def list_models() -> list[str]:
    """Built-in names; every torchvision/timm model is available too, as ``tv:<name>``/``timm:<name>``."""
    return MODELS.names()


def create_model(name: str, **kw) -> nn.Module:
    """A freshly initialized model; ``in_channels`` and ``num_classes`` work for every family."""
    prefix, sep, inner = name.partition(":")
    if not sep and name in MODELS:
        return MODELS.get(name)(**kw)
    if not sep or prefix not in _EXTERNAL:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}, "
                          "tv:<torchvision name> or timm:<timm name>")
    try:
        lib = importlib.import_module(_EXTERNAL[prefix])
    except ImportError:
        raise ConfigError(f"model {name!r} needs {_EXTERNAL[prefix]}: pip install {_EXTERNAL[prefix]}") from None
    return _torchvision(lib, inner, **kw) if prefix == "tv" else _timm(lib, inner, **kw)


def _torchvision(tv, name: str, in_channels: int = 3, **kw) -> nn.Module:
    if name not in tv.models.list_models():
        raise ConfigError(f"unknown torchvision model {name!r}{_close(name, tv.models.list_models())}; "
                          "see torchvision.models.list_models()")
    model = tv.models.get_model(name, weights=None, **kw)
    if in_channels != 3:
        _replace_stem(model, name, in_channels)
    return model


def _replace_stem(model: nn.Module, name: str, in_channels: int) -> None:
    """Swap the first RGB conv (torchvision registers the stem first) for one with ``in_channels`` inputs."""
    for qualname, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1:
            parent, _, attr = qualname.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Conv2d(
                in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                bias=conv.bias is not None, padding_mode=conv.padding_mode))
            return
    raise ConfigError(f"cannot adapt tv:{name} to {in_channels} input channels; use 3-channel inputs")


def _timm(timm, name: str, in_channels: int = 3, **kw) -> nn.Module:
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}{_close(name, timm.list_models())}; see timm.list_models()")
    return timm.create_model(name, pretrained=False, in_chans=in_channels, **kw)


def _close(name: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


__all__ = ["MODELS", "create_model", "list_models", "register_model"]
