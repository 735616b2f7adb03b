"""Trained trunks for other code: one file with the weights, the model's name and its config.

    fastssl pretrained runs/mono/ckpt.pt --out alexnet-mono.pt
    net = fastssl.load_pretrained("alexnet-mono.pt")   # an nn.Module in eval mode

The file is a plain ``torch.save`` dict (``format``, ``model``, ``config``, ``state_dict`` and
where it came from) that ``torch.load(weights_only=True)`` reads, so code without fastssl can
use the state dict too. :func:`load_pretrained` also takes a training checkpoint directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .atomic import ZIP, check_destination
from .errors import FastSSLError
from .models import MODELS, AlexNet, model_key
from .train import atomic_save, load_checkpoint

PRETRAINED_FORMAT = "fastssl-pretrained-1"


def load_network(path: str | os.PathLike) -> torch.nn.Module:
    """The trained network of a fastssl training checkpoint (any method, any registered
    model), weights loaded."""
    ck = load_checkpoint(path)
    if "model" not in ck["nets"]:
        raise FastSSLError(f"{path} holds no trained network (networks: {', '.join(ck['nets'])})")
    arch = dict(ck["arch"])
    key = arch.pop("model", "alexnet")
    if key not in MODELS:
        raise FastSSLError(f"{path} holds a {key!r} network; known: {', '.join(MODELS)}")
    try:
        model = MODELS[key](**arch)
        model.load_state_dict(ck["nets"]["model"])
    except (TypeError, RuntimeError) as e:
        raise FastSSLError(f"{path} is a checkpoint of another architecture: {str(e).splitlines()[0]}") from None
    return model


def load_trunk(path: str | os.PathLike) -> AlexNet:
    """The AlexNet of a fastssl training checkpoint (any method), weights loaded."""
    model = load_network(path)
    if not isinstance(model, AlexNet):
        raise FastSSLError(f"{path} holds a {model_key(model)} network, not an AlexNet trunk with probe taps")
    return model


def export_pretrained(ckpt: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write the trunk of training checkpoint ``ckpt`` to ``out``; returns what was written
    (without the weights)."""

    check_destination(out, overwrite=overwrite, replace=ZIP, what="output")
    ck = load_checkpoint(ckpt)
    trunk = load_network(ckpt)
    info = {
        "format": PRETRAINED_FORMAT,
        "model": model_key(trunk),
        "config": dict(trunk.config),
        "method": ck.get("method"),
        "epoch": ck.get("epoch"),
        "source": str(Path(ckpt).resolve()),
    }
    atomic_save({**info, "state_dict": trunk.state_dict()}, Path(out))
    return info


def load_pretrained(path: str | os.PathLike, device="cpu") -> torch.nn.Module:
    """The network of a pretrained file (or of a training checkpoint), weights loaded, in
    eval mode on ``device``."""
    p = Path(path)
    if not p.is_file():
        raise FastSSLError(f"pretrained file not found: {p}")
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        raise FastSSLError(f"{p} is not a readable pretrained file or checkpoint") from None
    if isinstance(d, dict) and d.get("format") == PRETRAINED_FORMAT:
        if d.get("model") not in MODELS:
            raise FastSSLError(f"{p} holds a {d.get('model')!r} network; known: {', '.join(MODELS)}")
        try:
            net = MODELS[d["model"]](**d["config"])
            net.load_state_dict(d["state_dict"])
        except (TypeError, RuntimeError) as e:
            raise FastSSLError(f"{p} does not match its model's config: {str(e).splitlines()[0]}") from None
    else:
        net = load_network(p)  # a training checkpoint (checked there)
    return net.to(device).eval()
