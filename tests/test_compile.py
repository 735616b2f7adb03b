"""The training step of every method and of the probes compiles whole: dynamo finds no graph
break in what the trainer compiles and compiles nothing anew after the first steps (so the
CUDA compile path is known-good before a GPU runs it). Dynamo's graphs are checked with the
``aot_eager`` backend (forward and backward traced, no code generated); one method also goes
through inductor, as the trainer runs it."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch._dynamo.utils import counters

from fastssl.data.adapters import TensorData
from fastssl.methods import build_method
from fastssl.probe import ProbeConfig, probe_method
from fastssl.train import TrainConfig, Trainer

MODEL = dict(small=True, input_res=16, width=0.1, fc_width=32)
METHODS = ("rotnet", "deepcluster", "bigan", "supervised", "distill", "probe")


class Labelled:
    """Random labelled batches of 16 px images (the batch contract: uint8, channels-last)."""

    def __init__(self, n_batches=8, batch=16, classes=4):
        g = torch.Generator().manual_seed(0)
        self.batches = [
            (
                torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8, generator=g).contiguous(
                    memory_format=torch.channels_last
                ),
                torch.randint(0, classes, (batch,), generator=g),
            )
            for _ in range(n_batches)
        ]

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass

    def iter_from(self, step):
        return iter(self.batches[step:])


def _trainer(name, tmp_path, amp="off"):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=16, amp=amp, compile="on", device="cpu", progress=False)
    if name == "probe":
        from fastssl.models import AlexNet

        method = probe_method(AlexNet(4, **MODEL), 4, ProbeConfig(target=64), torch.device("cpu"))
        data = Labelled()
    elif name == "distill":  # a resnet-small student of an (untrained) resnet-small teacher
        teacher = build_method("supervised", {}, 4, {"model": "resnet-small"})
        t = Trainer(teacher, Labelled(1), TrainConfig(epochs=1, batch_size=16, device="cpu"), tmp_path / "teacher")
        t.ckpt_path.parent.mkdir(parents=True)
        t.save()
        method = build_method(name, {}, method_kw=dict(teacher=str(t.ckpt_path), model="resnet-small"))
        data = Labelled()
    elif name == "deepcluster":
        method = build_method(name, MODEL, method_kw=dict(k=4, pca_dim=4, iters=3, crop_scale=[1.0, 1.0]))
        data = TensorData(torch.cat([b[0] for b in Labelled().batches]), 16, "cpu")
    else:
        method = build_method(name, MODEL, num_classes=4 if name == "supervised" else None)
        data = Labelled()
    return Trainer(method, data, cfg, tmp_path)


def _steps(tr, n):
    tr.method.on_epoch_start(0, tr.ctx)
    for net in tr.method.nets.values():
        net.train()
    batches = itertools.cycle(list(tr.data.iter_from(0)))
    for _ in range(n):
        tr.method.train_step(tr.prepare(next(batches)), tr.ctx)
    tr.check_finite()


@pytest.fixture
def compiled_with(monkeypatch):
    """torch.compile, as the trainer calls it, with the given backend; dynamo's counters reset."""
    real = torch.compile

    def use(backend):
        torch._dynamo.reset()
        counters.clear()
        monkeypatch.setattr(torch, "compile", functools.partial(real, backend=backend))

    yield use
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("name", METHODS)
def test_a_training_step_compiles_without_breaks_or_recompiles(name, amp, tmp_path, compiled_with):
    compiled_with("aot_eager")
    tr = _trainer(name, tmp_path, amp)
    _steps(tr, 2)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1, "nothing was compiled"
    _steps(tr, 4)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == graphs, "recompiled after the first steps"


@pytest.mark.slow
def test_the_inductor_step_matches_the_eager_one(tmp_path, compiled_with, monkeypatch):
    """RotNet through inductor (the trainer's compile on the CPU): no break, no recompile, and
    the same loss as the eager step from the same weights and batch."""
    compiled_with("inductor")
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # eager's dropout masks
    tr = _trainer("rotnet", tmp_path / "c")
    eager = _trainer("rotnet", tmp_path / "e")
    eager_net = eager.method.nets["model"]._orig_mod  # the same weights, run eagerly
    eager.method.nets["model"] = eager_net
    torch.manual_seed(1)
    m1 = tr.method.train_step(tr.prepare(next(tr.data.iter_from(0))), tr.ctx)
    torch.manual_seed(1)
    m2 = eager.method.train_step(eager.prepare(next(eager.data.iter_from(0))), eager.ctx)
    assert torch.allclose(m1["loss"], m2["loss"], rtol=1e-4, atol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    _steps(tr, 3)
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == graphs
