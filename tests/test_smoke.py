"""The paper preset end to end at its real shapes, a few steps per stage (fastssl repro --smoke)."""

import json

import numpy as np
import pytest
from PIL import Image

from fastssl.cli import main


def imagenet_tree(root, classes=2, train=260, val=3, seed=0):
    """An ImageNet-layout tree at tiny size: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (enough
    training images for two steps of the paper's largest batch, 256)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{1440764 + c:08d}"
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(rng.normal(80 + 90 * c, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"n{1440764 + c:08d}_{i}.JPEG", quality=90)
    return root


@pytest.mark.slow
def test_paper_preset_smoke_runs_every_stage_at_the_papers_shapes(tmp_path, capsys):
    data = imagenet_tree(tmp_path / "imagenet")
    out = tmp_path / "run"
    args = ["repro", "--preset", "paper", "--data", str(data), "--out", str(out), "--quiet", "--smoke"]
    assert main([*args, "--set", "device=cpu"]) == 0
    res = json.loads((out / "probes.json").read_text())
    assert list(res["rows"]) == ["random", "mono-rotnet", "full-rotnet", "supervised"]
    cfg = json.loads((out / "config.json").read_text())["recipe"]
    assert cfg["res"] == 224 and cfg["model"]["small"] is False and cfg["model"]["width"] == 1.0
    assert cfg["rotnet"]["batch_size"] == 192 and cfg["probe"]["ten_crop"] is True
    from fastssl.train import load_checkpoint

    ck = load_checkpoint(out / "seed-0" / "mono-rotnet" / "ckpt.pt")
    assert ck["global_step"] == 2 and ck["arch"]["input_res"] == 224
    probe = json.loads((out / "seed-0" / "probes" / "full-rotnet.json").read_text())
    assert probe["features"] == {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
    assert (out / "table.md").exists() and (out / "probes.png").exists()
    # a smoke run's numbers are never taken for results: every summary says so
    assert res["smoke"] is True and (out / "table.md").read_text().startswith("**SMOKE RUN**")
    assert main(["report", "--out", str(out)]) == 0  # rewritten from the folder: still marked
    assert json.loads((out / "probes.json").read_text())["smoke"] is True
