"""Several source images (the paper's N-image rows) and the augmentation ablation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastssl import AugmentSpec, MonoSource
from fastssl.cli import main
from fastssl.mono import Renderer
from fastssl.repro import row_prefix
from fastssl.spec import sample_params


@pytest.fixture(scope="module")
def three(photo):
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    return [photo, noise, np.ascontiguousarray(photo[100:300, 50:400])]


def test_one_image_keeps_its_stream():
    spec = AugmentSpec(size=24)
    a = sample_params(spec, 600, 512, 100, 900, seed=3, epoch=2)
    b = sample_params(spec, [600], [512], 100, 900, seed=3, epoch=2)
    for k in ("matrix", "box", "level", "factors", "order", "image"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert not a.image.any()


def test_each_patch_draws_its_image_and_is_that_image_rendered(three):
    spec = AugmentSpec(size=24)
    rend = Renderer(three, spec, "numba")
    p = rend.params(0, 600, seed=1)
    counts = np.bincount(p.image, minlength=3)
    assert counts.min() > 150  # every image drawn, about uniformly
    # patch i of the several-image stream is patch i of its own image's renderer, same parameters
    out = rend.render_nhwc(p).copy()
    for j in range(3):
        idx = np.flatnonzero(p.image == j)[:20]
        alone = Renderer(three[j], spec, "numba")
        np.testing.assert_array_equal(out[idx], alone.render_nhwc(p.subset(idx)))
    # crops lie inside their own image
    x0, y0, w, h = p.crop.T
    H = np.array([a.shape[0] for a in three])[p.image]
    W = np.array([a.shape[1] for a in three])[p.image]
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= W).all() and (y0 + h <= H).all()


def test_the_stream_is_the_same_for_any_batch_size_and_backend(three):
    spec = AugmentSpec(size=16)
    a = MonoSource(three, spec, batch_size=32, epoch_length=96, backend="numba", seed=5)
    b = MonoSource(three, spec, batch_size=96, epoch_length=96, backend="torch", seed=5)
    xa = torch.cat(list(a))
    xb = next(iter(b))
    assert xa.shape == xb.shape == (96, 3, 16, 16)
    assert (xa.int() - xb.int()).abs().max() <= 1


def test_a_folder_of_images_is_several_sources(tmp_path, three, capsys):
    from PIL import Image

    for k, a in enumerate(three):
        Image.fromarray(a).save(tmp_path / f"{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = MonoSource(str(tmp_path), AugmentSpec(size=16), batch_size=8, epoch_length=8)
    assert src.renderer.num_images == 3
    out = tmp_path / "g.png"
    assert (
        main(["mono", "preview", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "-o", str(out), "--size", "16"]) == 0
    )


def test_rows_are_named_by_image_count():
    assert [row_prefix(n) for n in (1, 10, 1000, 50)] == ["mono", "deka", "kilo", "n50"]


@pytest.mark.slow
def test_repro_trains_the_n_image_and_ablation_rows(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, c in enumerate("abc"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            a = np.clip(rng.normal(60 + 70 * k, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "imgs" / c / f"{i:03d}.png")
    out = tmp_path / "run"
    tiny = str(Path(__file__).parent / "data" / "tiny.toml")
    args = ["repro", "--preset", tiny, "--data", str(tmp_path / "imgs"), "--out", str(out), "--quiet"]
    assert main([*args, "--n-images", "2,10", "--ablation"]) == 0
    rows = list(json.loads((out / "probes.json").read_text())["rows"])
    assert rows == [
        "random",
        "mono-rotnet",
        "mono-rotnet-no-colour",
        "mono-rotnet-no-rotation",
        "mono-rotnet-no-scale",
        "deka-rotnet",
        "n2-rotnet",
        "full-rotnet",
        "supervised",
    ]
    assert (out / "seed-0" / "mono-rotnet-no-rotation" / "ckpt.pt").exists()
    # 20 px sources: half their side (10 px) is below the 16 px patches, and the run says so
    assert "median short side 20 px" in capsys.readouterr().out
    assert main([*args, "--n-images", "100"]) == 2  # more than the 24 training images

    # the N-image rows from a folder of full-size photos instead of the labelled images
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    capsys.readouterr()
    # the n2 row of this --out came from the labelled images: not reused for photos, refused
    assert main([*args, "--n-images", "2", "--n-images-from", str(photos)]) == 2
    err = capsys.readouterr().err  # both the photos' digest and their name differ
    assert "another recipe (" in err and "mono.source_sha256" in err and "sources None there" in err
    args[args.index(str(out))] = str(tmp_path / "run-photos")
    assert main([*args, "--n-images", "2", "--n-images-from", str(photos)]) == 0
    assert "median short side" not in capsys.readouterr().out  # 48-64 px photos, 16 px patches
    cfg = json.loads((tmp_path / "run-photos" / "config.json").read_text())
    assert cfg["n_images_from"] == str(photos)
    assert "n2-rotnet" in json.loads((tmp_path / "run-photos" / "probes.json").read_text())["rows"]


@pytest.mark.slow
def test_repro_each_image_trains_one_row_per_photo(tmp_path, capsys):
    from PIL import Image

    from fastssl.train import load_checkpoint

    rng = np.random.default_rng(2)
    for c in "ab":
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("left", "right"):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(photos / f"{name}.png")
    out = tmp_path / "run"
    tiny = str(Path(__file__).parent / "data" / "tiny.toml")
    args = ["repro", "--preset", tiny, "--data", str(tmp_path / "imgs"), "--out", str(out), "--quiet", "--each-image"]
    left, right = str(photos / "left.png"), str(photos / "right.png")
    assert main([*args, "--image", left, "--image", right]) == 0
    rows = list(json.loads((out / "probes.json").read_text())["rows"])
    assert rows == ["random", "mono-rotnet@left", "mono-rotnet@right", "full-rotnet", "supervised"]
    sha = [load_checkpoint(out / "seed-0" / r / "ckpt.pt")["recipe"]["mono"]["source_sha256"] for r in rows[1:3]]
    assert sha[0] != sha[1]  # each row trained on its own photo
    assert json.loads((out / "config.json").read_text())["each_image"] is True
    # the folder of the same photos names the same rows: reused (another photo would be refused)
    capsys.readouterr()
    assert main([*args, "--image", str(photos)]) == 0
    said = capsys.readouterr().out
    assert "mono-rotnet@left: already trained" in said and "mono-rotnet@right: already trained" in said
    # refused before anything is written: one photo, or two photos of one name
    before = (out / "probes.json").read_bytes()
    (photos / "sub" / "left.png").write_bytes((photos / "left.png").read_bytes())
    assert main([*args, "--image", left]) == 2
    assert "at least two photos" in capsys.readouterr().err
    assert main([*args, "--image", left, "--image", str(photos / "sub" / "left.png")]) == 2
    assert "named 'left'" in capsys.readouterr().err
    # without --each-image a folder of two photos is one row, n2-rotnet: as the N-image row of 2
    (photos / "sub" / "left.png").unlink()
    assert main([*args[:-1], "--image", str(photos), "--n-images", "2"]) == 2
    assert "two rows would be named n2-rotnet" in capsys.readouterr().err
    assert (out / "probes.json").read_bytes() == before


def test_n_image_photos_are_drawn_from_the_photo_folder(tmp_path):
    from PIL import Image

    from fastssl.config import load
    from fastssl.data.prepare import source_images
    from fastssl.errors import FastSSLError

    shapes = [(40 + i, 50, 3) for i in range(5)]
    for i, sh in enumerate(shapes):
        Image.fromarray(np.full(sh, 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    rc = load(str(Path(__file__).parent / "data" / "tiny.toml"), None, methods=("rotnet", "supervised"))
    got = source_images(None, None, rc, [2, 5], photos=tmp_path)
    assert sorted(a.shape for a in got[5]) == sorted(shapes)  # every photo, at full size
    assert all(any(np.array_equal(a, b) for b in got[5]) for a in got[2])  # the 2 are among the 5
    assert source_images(None, None, rc, [2], photos=tmp_path)[2][0].shape == got[2][0].shape  # fixed order
    with pytest.raises(FastSSLError, match="exceeds the 5 photos"):
        source_images(None, None, rc, [6], photos=tmp_path)
    assert main(["repro", "--data", str(tmp_path), "--n-images-from", str(tmp_path)]) == 2  # counts missing


def test_precomputed_depths_give_the_same_parameters():
    from fastssl.spec import num_levels

    rng = np.random.default_rng(1)
    hs, ws = rng.integers(60, 300, 40), rng.integers(60, 300, 40)
    spec = AugmentSpec(size=24)
    a = sample_params(spec, hs, ws, 500, 900, seed=2)
    depths = [num_levels(int(h), int(w)) for h, w in zip(hs, ws, strict=True)]
    b = sample_params(spec, hs, ws, 500, 900, seed=2, depths=depths)
    for k in ("matrix", "box", "level", "image", "factors"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
