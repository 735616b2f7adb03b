"""The same repro command twice gives the same bytes: every random draw follows the seed
(FFCV's crops and flips included), and the summary holds no timings."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.cli import main
from fastssl.train import load_checkpoint

TINY = str(Path(__file__).parent / "data" / "tiny.toml")
HAS_FFCV = importlib.util.find_spec("ffcv") is not None


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, c in enumerate("abc"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            a = np.clip(rng.normal(60 + 70 * k, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i:03d}.jpg", quality=90)
    return root


def _nets(ckpt: Path) -> dict:
    return load_checkpoint(ckpt)["nets"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rotnet", "deepcluster", "bigan"])
def test_the_same_repro_twice_gives_identical_probes_json(tmp_path, method):
    data = _folder(tmp_path / "imgs")
    loader = "auto" if HAS_FFCV else "pytorch"  # the .beton path where FFCV is installed
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        args = ["repro", "--preset", TINY, "--method", method, "--data", str(data), "--out", str(out), "--quiet"]
        assert main([*args, "--set", f"loader={loader}", "--set", "workers=1"]) == 0
    if HAS_FFCV:
        assert (outs[0] / "data" / "train.beton").exists()
    assert (outs[0] / "probes.json").read_bytes() == (outs[1] / "probes.json").read_bytes()
    # the trained weights too, bit for bit: a coarser score could agree by chance
    rows = sorted(p.parent.name for p in (outs[0] / "seed-0").glob("*/ckpt.pt"))
    assert f"full-{method}" in rows and "supervised" in rows
    for row in rows:
        a, b = (_nets(o / "seed-0" / row / "ckpt.pt") for o in outs)
        for net in a:
            for k, v in a[net].items():
                assert torch.equal(v, b[net][k]), f"{row}: {net}.{k} differs"
