"""The networks: AlexNet (the paper's trunk, with its small-input variant), BiGAN's parts, and
the residual classifiers of distillation (wide-ResNets, ResNets).

:data:`MODELS` names the network classes a checkpoint or pretrained file may hold; a new one
is its own file and one line there (it takes its ``config`` dict as keywords and exposes it
as ``.config``). :data:`NAMED` gives the named shapes ``--model`` accepts (``wrn-16-4``,
``resnet18``, ...); :func:`build_model` makes either.
"""

from torch import nn

from ..errors import FastSSLError
from .alexnet import AlexNet, fold_bn
from .resnet import NAMED, ResNet, WideResNet  # NAMED: name -> (MODELS key, keywords)

MODELS = {"alexnet": AlexNet, "wrn": WideResNet, "resnet": ResNet}  # name -> class


def model_names() -> list[str]:
    return [*NAMED, *MODELS]


def build_model(name: str, num_classes: int, **kw) -> nn.Module:
    """The network ``name`` (a named shape of :data:`NAMED`, or a class of :data:`MODELS` with
    ``kw`` its keywords) with a ``num_classes``-way output."""
    if name in NAMED:
        key, shape = NAMED[name]
        return MODELS[key](num_classes, **{**shape, **kw})
    if name in MODELS:
        return MODELS[name](num_classes, **kw)
    raise FastSSLError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")


def classifier(name: str, num_classes: int, alexnet_kw: dict) -> nn.Module:
    """The classifier a method trains: AlexNet shaped by the run's ``[model]`` keywords
    (``alexnet_kw``), or a named network of its own fixed shape."""
    return build_model(name, num_classes, **(alexnet_kw if name == "alexnet" else {}))


def model_key(net: nn.Module) -> str:
    """The :data:`MODELS` name of ``net``'s class (through DDP's and torch.compile's wrappers)."""
    while hasattr(net, "module") or hasattr(net, "_orig_mod"):
        net = getattr(net, "module", None) or net._orig_mod
    for key, cls in MODELS.items():
        if type(net) is cls:
            return key
    raise FastSSLError(f"{type(net).__name__} is not a registered model")


__all__ = [
    "MODELS",
    "NAMED",
    "AlexNet",
    "ResNet",
    "WideResNet",
    "build_model",
    "classifier",
    "fold_bn",
    "model_key",
    "model_names",
]
