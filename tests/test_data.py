"""Labelled data: sources, untrusted archives, CIFAR-10 download, .beton writing, loaders."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl import FastSSLError
from fastssl.cli import main
from fastssl.data.loaders import Loader, ten_crop
from fastssl.data.sources import CifarBinarySource, cifar10, open_source, split_indices

needs_ffcv = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("ffcv"),
    reason="FFCV is not installed (CI installs it; see README for the apt packages it needs)",
)
CLASSES = ["cat", "dog", "emu"]


def make_folder(root: Path, per_class=6, size=(20, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            img = Image.fromarray(a)
            if k == 1:
                img = img.convert("L")  # non-RGB inputs are converted
            if k == 2:
                img.convert("P").save(root / c / f"{k:03d}.png")
                continue
            img.save(root / c / f"{k:03d}.png" if k % 2 else root / c / f"{k:03d}.jpg", quality=95)
    return root


def make_tar(folder: Path, dest: Path, mode="w:gz", prefix="train") -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(folder, arcname=prefix)
    return dest


def test_folder_and_archives_list_the_same_images(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    a = open_source(folder)
    assert a.classes == CLASSES and len(a) == 18 and a.counts() == {c: 6 for c in CLASSES}
    for mode, name in (("w", "x.tar"), ("w:gz", "x.tar.gz")):
        b = open_source(make_tar(folder, tmp_path / name, mode, prefix="imgs"))
        assert b.classes == a.classes and list(b.labels) == list(a.labels)
        for i in (0, 7, 17):
            np.testing.assert_array_equal(a.image(i), b.image(i))
            assert b.image(i).shape == (20, 24, 3)


def test_several_splits_need_a_choice(tmp_path):
    make_folder(tmp_path / "root" / "train")
    make_folder(tmp_path / "root" / "val", per_class=2)
    with pytest.raises(FastSSLError, match="`split`"):
        open_source(tmp_path / "root")
    assert len(open_source(tmp_path / "root", split="val")) == 6
    with pytest.raises(FastSSLError, match="no split"):
        open_source(tmp_path / "root", split="test")


def test_split_is_deterministic_last_n_per_class():
    labels = np.repeat([0, 1, 2], 5)
    train, val = split_indices(labels, 2)
    assert val.tolist() == [3, 4, 8, 9, 13, 14]
    assert sorted(train.tolist() + val.tolist()) == list(range(15))
    with pytest.raises(FastSSLError, match="no training images"):
        split_indices(labels, 5)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "fifo"])
def test_hostile_archive_members_are_refused(tmp_path, kind):
    arc = tmp_path / "evil.tar"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    with tarfile.open(arc, "w") as tf:
        ok = tarfile.TarInfo("cls/ok.png")
        ok.size = len(data)
        tf.addfile(ok, io.BytesIO(data))
        m = tarfile.TarInfo({"dotdot": "cls/../../escape.png", "absolute": "/tmp/abs.png"}.get(kind, "cls/bad.png"))
        if kind == "symlink":
            m.type, m.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            m.type, m.linkname = tarfile.LNKTYPE, "cls/ok.png"
        elif kind == "fifo":
            m.type = tarfile.FIFOTYPE
        else:
            m.size = len(data)
        tf.addfile(m, io.BytesIO(data) if m.isfile() else None)
    before = set(os.listdir(tmp_path))
    with pytest.raises(FastSSLError, match="refusing archive"):
        open_source(arc)
    assert set(os.listdir(tmp_path)) == before and not Path("/tmp/abs.png").exists()


def test_bad_folders_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastSSLError, match="no images found"):
        open_source(tmp_path / "empty")
    make_folder(tmp_path / "f")
    (tmp_path / "f" / "zebra").mkdir()
    with pytest.raises(FastSSLError, match="zebra has no images"):
        open_source(tmp_path / "f")
    make_folder(tmp_path / "g")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "g" / "stray.png")
    with pytest.raises(FastSSLError, match="outside class folders"):
        open_source(tmp_path / "g")
    with pytest.raises(FastSSLError, match="not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FastSSLError, match="unsupported data source"):
        open_source(tmp_path / "x.txt")


def _cifar_archive(path: Path, n_per_batch=7, seed=0):
    """A small archive in the official CIFAR-10 binary layout (1 label byte + 3072 bytes)."""
    rng = np.random.default_rng(seed)
    recs = {}
    with tarfile.open(path, "w:gz") as tf:
        names = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
        for name in names:
            lab = rng.integers(0, 10, n_per_batch, dtype=np.uint8)
            px = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            rec = np.concatenate([lab[:, None], px], axis=1)
            recs[name] = rec
            b = rec.tobytes()
            ti = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
        meta = "\n".join(
            ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        ).encode()
        ti = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        ti.size = len(meta)
        tf.addfile(ti, io.BytesIO(meta))
    return recs


def test_cifar10_download_verifies_and_decodes_the_binary_format(tmp_path, http_dir):
    served, base = http_dir
    recs = _cifar_archive(served / "cifar-10-binary.tar.gz")
    md5 = hashlib.md5((served / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    src = cifar10(cache, url=f"{base}/cifar-10-binary.tar.gz", md5=md5, progress=False)
    assert len(src) == 35 and src.classes[0] == "airplane"
    rec = recs["data_batch_2.bin"][3]
    np.testing.assert_array_equal(src.image(7 + 3), rec[1:].reshape(3, 32, 32).transpose(1, 2, 0))
    assert src.labels[10] == rec[0]
    test = cifar10(cache, train=False, url="http://127.0.0.1:9/unused", md5=md5, progress=False)  # from the cache
    assert len(test) == 7
    assert os.listdir(cache) == ["cifar-10-binary.tar.gz"]


def test_cifar10_download_with_bad_checksum_leaves_nothing(tmp_path, http_dir):
    served, base = http_dir
    _cifar_archive(served / "cifar-10-binary.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(FastSSLError, match="corrupt"):
        cifar10(cache, url=f"{base}/cifar-10-binary.tar.gz", md5="0" * 32, progress=False)
    assert os.listdir(cache) == []
    with pytest.raises(FastSSLError, match="cannot download"):
        cifar10(tmp_path / "c2", url=f"{base}/missing.tar.gz", md5="0" * 32, progress=False)


def test_cifar_binary_truncated_is_refused(tmp_path):
    arc = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for k in range(1, 6):
            b = bytes(3073 * 2 - 5)
            ti = tarfile.TarInfo(f"cifar-10-batches-bin/data_batch_{k}.bin")
            ti.size = len(b)
            tf.addfile(ti, io.BytesIO(b))
    with pytest.raises(FastSSLError, match="truncated"):
        CifarBinarySource(arc)


def test_ten_crop_corners_centre_and_mirrors():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    y = ten_crop(x, 4)
    assert y.shape == (20, 3, 4, 4) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y[0], x[0, :, :4, :4]) and torch.equal(y[3], x[0, :, 2:, 2:])
    assert torch.equal(y[4], x[0, :, 1:5, 1:5]) and torch.equal(y[9], x[0, :, 1:5, 1:5].flip(2))
    assert torch.equal(y[10], x[1, :, :4, :4])


def _check_batch(x, y, n, res):
    assert x.dtype == torch.uint8 and x.shape == (n, 3, res, res)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.shape[0] in (n, n // 10)


def test_pytorch_fallback_loader_contract(tmp_path):
    src = open_source(make_folder(tmp_path / "imgs"))
    tr = Loader(src, batch_size=4, train=True, res=16, workers=0, backend="pytorch")
    assert len(tr) == 4  # 18 images, drop_last for training
    batches = list(tr)
    for x, y in batches:
        _check_batch(x, y, 4, 16)
    ev = Loader(src, batch_size=5, train=False, res=16, workers=0)
    assert sum(x.shape[0] for x, _ in ev) == 18
    x, y = next(iter(Loader(src, batch_size=3, train=False, res=12, workers=0, ten_crop=True, crop_ratio=0.75)))
    assert x.shape == (30, 3, 12, 12) and y.shape == (3,)
    with pytest.raises(FastSSLError, match="FFCV loader reads a .beton"):
        Loader(src, batch_size=4, train=True, res=16, backend="ffcv")


@pytest.mark.slow
@needs_ffcv
def test_convert_info_and_ffcv_loader_match_the_fallback(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", per_class=8)
    dst = tmp_path / "d.beton"
    assert main(["data", "convert", str(folder), str(dst), "--write-mode", "raw", "--quiet", "--workers", "1"]) == 0
    info_index = json.loads((tmp_path / "d.classes.json").read_text())
    assert info_index["classes"] == CLASSES
    capsys.readouterr()
    assert main(["data", "info", str(dst)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"num_samples": 24, "classes": {c: 8 for c in CLASSES}}
    src = open_source(folder)
    ev = Loader(str(dst), batch_size=24, train=False, res=20, workers=1)
    ((x, y),) = list(ev)
    _check_batch(x, y, 24, 20)
    ref_x, ref_y = next(iter(Loader(src, batch_size=24, train=False, res=20, workers=0)))
    assert torch.equal(y, ref_y)
    # raw storage of the PIL-decoded pixels: FFCV's centre crop (20 of 20x24, no resize) is exact
    assert torch.equal(x, ref_x)
    tr = Loader(str(dst), batch_size=8, train=True, res=16, workers=1)
    got = [(a, b) for a, b in tr]
    assert len(got) == 3
    for a, b in got:
        _check_batch(a, b, 8, 16)
    assert sorted(torch.cat([b for _, b in got]).tolist()) == sorted(src.labels.tolist())


def _epoch_of(loader, epoch):
    loader.set_epoch(epoch)
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader], strict=True)
    return torch.cat(xs), torch.cat(ys)


@needs_ffcv
def test_ffcv_crops_and_flips_follow_seed_epoch_and_sample(tmp_path):
    folder = make_folder(tmp_path / "imgs", per_class=8, size=(28, 36))
    dst = tmp_path / "d.beton"
    assert main(["data", "convert", str(folder), str(dst), "--quiet", "--workers", "1"]) == 0

    def make(seed=3, batch_size=8, workers=1):
        return Loader(str(dst), batch_size=batch_size, train=True, res=12, workers=workers, seed=seed, scale=(0.2, 1))

    a = _epoch_of(make(), 1)
    # another loader with other batches and decoding threads: the same pixels (per sample draws)
    other = make(batch_size=6, workers=2)
    e2, e1 = _epoch_of(other, 2), _epoch_of(other, 1)  # an epoch is the same whatever came before
    assert torch.equal(e1[0], a[0]) and torch.equal(e1[1], a[1])
    assert not torch.equal(e2[0], a[0])
    assert not torch.equal(_epoch_of(make(seed=4), 1)[0], a[0])  # the seed matters
    # the flips: the whole image as the crop, so each sample is its image or its mirror image
    full = Loader(str(dst), batch_size=24, train=True, res=12, workers=1, seed=5, scale=(1, 1), ratio=(36 / 28,) * 2)
    first = {bytes(x.contiguous().numpy()) for x in _epoch_of(full, 0)[0]}
    flipped = 0
    for e in range(1, 11):
        for x in _epoch_of(full, e)[0]:
            same, mirror = bytes(x.contiguous().numpy()) in first, bytes(x.flip(2).contiguous().numpy()) in first
            assert same or mirror
            flipped += not same
    assert 70 <= flipped <= 170  # of 240: each flip relative to epoch 0 is a fair coin


@needs_ffcv
def test_a_cpu_ffcv_loader_runs_no_torch_copy_in_its_thread(tmp_path, monkeypatch):
    """On the CPU the batch stays where FFCV's pipeline wrote it. A torch copy in FFCV's thread
    (its ToDevice) starts an OpenMP team there that lives beside the training step's: more
    threads than cores, so libgomp no longer lets idle threads spin, and the step in the main
    thread ran 1.6x slower while the loader's thread was alive."""
    import threading

    folder = make_folder(tmp_path / "imgs", per_class=8, size=(28, 36))
    dst = tmp_path / "d.beton"
    assert main(["data", "convert", str(folder), str(dst), "--quiet", "--workers", "1"]) == 0
    threads = []
    real = torch.Tensor.copy_

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", spy)
    x, y = _epoch_of(Loader(str(dst), batch_size=8, train=True, res=12, workers=1, seed=0), 0)
    assert x.shape == (24, 3, 12, 12) and y.shape == (24,)
    assert all(t is threading.main_thread() for t in threads)


@needs_ffcv
def test_convert_skips_corrupt_images_or_fails_with_strict(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs")
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dst = tmp_path / "d.beton"
    assert main(["data", "convert", str(folder), str(dst), "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["skipped"] == 1 and "skipped 1" in out.err
    assert (
        main(["data", "convert", str(folder), str(tmp_path / "s.beton"), "--strict", "--quiet", "--workers", "1"]) == 2
    )
    assert "unreadable image" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["d.beton", "d.classes.json", "imgs"]


@needs_ffcv
def test_damaged_or_foreign_betons_and_indexes_are_refused(tmp_path):
    from ffcv.fields import FloatField, IntField
    from ffcv.writer import DatasetWriter

    from fastssl.data.beton import convert, read_info

    src = open_source(make_folder(tmp_path / "imgs"))
    good = tmp_path / "g.beton"
    convert(src, good, workers=1, progress=False)
    data = good.read_bytes()
    cut = tmp_path / "cut.beton"
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.classes.json").write_text((tmp_path / "g.classes.json").read_text())
    with pytest.raises(FastSSLError, match="truncated|not a readable"):
        read_info(cut)
    other = tmp_path / "o.beton"

    class DS:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return float(i), int(i)

    DatasetWriter(str(other), {"x": FloatField(), "label": IntField()}, num_workers=1).from_indexed_dataset(DS())
    with pytest.raises(FastSSLError, match="another schema"):
        read_info(other)
    idx = json.loads((tmp_path / "g.classes.json").read_text())
    idx["counts"]["cat"] += 1
    (tmp_path / "g.classes.json").write_text(json.dumps(idx))
    with pytest.raises(FastSSLError, match="does not match"):
        read_info(good)
    (tmp_path / "g.classes.json").unlink()
    with pytest.raises(FastSSLError, match="missing"):
        read_info(good)
    (tmp_path / "junk.beton").write_bytes(b"hello")
    with pytest.raises(FastSSLError, match="not a readable|truncated"):
        read_info(tmp_path / "junk.beton")


def test_convert_without_ffcv_or_to_a_bad_path_is_one_line(tmp_path, capsys, monkeypatch):
    folder = make_folder(tmp_path / "imgs")
    rc = main(["data", "convert", str(folder), str(tmp_path / "out.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert ".beton" in err or "FFCV is not installed" in err


def _ffcv_rank(rank, world, port, beton, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tr = Loader(beton, batch_size=2, train=True, res=8, workers=1, distributed=True, seed=3)
        labels = [int(v) for _, y in tr for v in y]
        got = [None] * world
        dist.all_gather_object(got, labels)
        if rank == 0:
            Path(out).write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@needs_ffcv
def test_ffcv_loader_shards_across_ranks_under_torch_distributed(tmp_path):
    import socket

    import torch.multiprocessing as tmp

    from fastssl.data.beton import convert

    root = tmp_path / "imgs"
    for k in range(12):  # one image per class: the label identifies the sample
        (root / f"c{k:02d}").mkdir(parents=True)
        Image.fromarray(np.full((10, 10, 3), k * 20, np.uint8)).save(root / f"c{k:02d}" / "a.png")
    beton = tmp_path / "d.beton"
    convert(open_source(root), beton, workers=1, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "got.json"
    tmp.spawn(_ffcv_rank, args=(2, port, str(beton), str(out)), nprocs=2, join=True)
    r0, r1 = json.loads(out.read_text())
    assert len(r0) == len(r1) == 6
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(12))


@pytest.mark.slow
@needs_ffcv
def test_shared_cifar10_archive_converts_and_loads(tmp_path, capsys, cifar_archive):
    dst = tmp_path / "val.beton"
    args = ["data", "convert", str(cifar_archive), str(dst), "--val-per-class", "500", "--part", "val", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["data", "info", str(dst)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_samples"] == 5000 and set(info["classes"].values()) == {500}
    assert "airplane" in info["classes"] and "truck" in info["classes"]
    n = 0
    for x, y in Loader(str(dst), batch_size=500, train=True, res=32, workers=2):
        _check_batch(x, y, 500, 32)
        n += len(y)
    assert n == 5000
    src = open_source(cifar_archive)
    _, val = split_indices(src.labels, 500)
    x, y = next(iter(Loader(src, batch_size=64, train=False, res=32, indices=val, workers=0)))
    _check_batch(x, y, 64, 32)


@pytest.mark.slow
def test_bench_loader_json(tmp_path, capsys):
    pytest.importorskip("ffcv", reason="FFCV is not installed (CI installs it)")
    folder = make_folder(tmp_path / "imgs", per_class=20)
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "loader",
                "--data",
                str(folder),
                "--res",
                "16",
                "--batch-size",
                "8",
                "--threads",
                "1",
                "--write-mode",
                "raw",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    run = json.loads(out.read_text())
    names = [r["name"] for r in run["results"]]
    assert names == ["ffcv-raw", "dataloader-pil"]
    assert all(r["images"] == 56 and r["images_per_s"] > 0 for r in run["results"])  # 60 images, drop_last
    assert run["conversion"][0]["bytes"] > 0 and run["source_bytes"] > 0


def test_importing_ffcv_leaves_thread_counts_alone():
    import numba

    from fastssl.data.loaders import ffcv_available

    before = (torch.get_num_threads(), numba.get_num_threads())
    ffcv_available()
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


@needs_ffcv
def test_an_ffcv_loader_leaves_the_training_threads_alone(tmp_path):
    """FFCV's loader sets the process's torch and Numba threads to its worker count when built
    and at every epoch: one worker made a training step single-threaded."""
    import numba

    folder = make_folder(tmp_path / "imgs", per_class=4, size=(20, 20))
    dst = tmp_path / "d.beton"
    assert main(["data", "convert", str(folder), str(dst), "--quiet", "--workers", "1"]) == 0
    old = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(2)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        loader = Loader(str(dst), batch_size=4, train=True, res=12, workers=1, seed=0)
        assert (torch.get_num_threads(), numba.get_num_threads()) == before
        for epoch in range(2):
            loader.set_epoch(epoch)
            assert len(list(loader)) == len(loader)
            assert (torch.get_num_threads(), numba.get_num_threads()) == before
    finally:
        torch.set_num_threads(old[0])
        numba.set_num_threads(old[1])


def test_workers_zero_loads_in_this_process(tmp_path):
    import multiprocessing

    folder = make_folder(tmp_path / "imgs", per_class=4)
    ld = Loader(str(folder), batch_size=4, train=True, res=8, workers=0, backend="pytorch")
    seen = 0
    for x, _ in ld:
        assert multiprocessing.active_children() == []  # no worker process
        seen += x.shape[0]
    assert seen == len(ld) * 4 > 0
    with pytest.raises(FastSSLError, match="workers"):
        Loader(str(folder), batch_size=4, train=True, res=8, workers=-1, backend="pytorch")
