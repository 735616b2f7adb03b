"""What a researcher takes away from a run: the trained trunk as a plain file loadable in one
call, and the run's metrics in TensorBoard."""

import json
from pathlib import Path

import pytest
import torch
from clihelp import one_line, run

import fastssl
from fastssl.cli import main

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_a_trained_trunk_exports_and_loads_in_one_call(trained, tmp_path, capsys):
    from fastssl.pretrained import load_trunk

    dst = tmp_path / "alexnet.pt"
    assert main(["pretrained", str(trained / "ckpt.pt"), "--out", str(dst)]) == 0
    net = fastssl.load_pretrained(dst)
    assert not net.training and isinstance(net, torch.nn.Module)
    x = torch.rand(2, 3, 16, 16)
    want = load_trunk(trained / "ckpt.pt").eval()
    with torch.no_grad():
        assert torch.equal(net(x), want(x))
        assert torch.equal(fastssl.load_pretrained(trained / "ckpt.pt")(x), want(x))  # a checkpoint too
    plain = torch.load(dst, weights_only=True)  # readable without fastssl
    assert plain["model"] == "alexnet" and plain["config"]["input_res"] == 16 and plain["method"] == "rotnet"
    assert set(plain["state_dict"]) == set(want.state_dict())
    capsys.readouterr()
    one_line(*run(["pretrained", trained / "ckpt.pt", "--out", dst], capsys), "--overwrite")
    junk = tmp_path / "junk.pt"
    junk.write_text("nope")
    with pytest.raises(fastssl.FastSSLError, match="not a readable"):
        fastssl.load_pretrained(junk)


def test_metrics_reach_tensorboard_when_it_is_installed(trained):
    pytest.importorskip("tensorboard", reason="TensorBoard event files need the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "tensorboard"))
    acc.Reload()
    logged = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    steps = [e.step for e in acc.Scalars("rotnet/loss")]
    assert steps == [r["global_step"] for r in logged if "loss" in r]
    assert [round(e.value, 5) for e in acc.Scalars("rotnet/loss")] == [round(r["loss"], 5) for r in logged]
