"""No data loss under bad input and faults: outputs that are folders, full disks, read-only
folders, truncated files, bad recipe values, signals, concurrent runs and resumes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clihelp import one_line, run
from PIL import Image

from fastssl.errors import FastSSLError

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def small_fs(tmp_path: Path, size: str, options: str = ""):
    """A tmpfs of ``size`` (a full disk, or read-only with ``options="ro"``); skips where this
    process may not mount (not root, or a container without the capability)."""
    mnt = tmp_path / f"mnt-{size}-{options or 'rw'}"
    mnt.mkdir()
    opts = f"size={size}" + (f",{options}" if options else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _folder(root: Path, classes=("a", "b"), per=6, side=20, noise=False):
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per):
            if noise:
                a = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            else:
                a = np.clip(rng.normal(60 + 90 * k, 30, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i:03d}.png")
    return root


# ---------------------------------------------------------------- 1. data loss
@pytest.mark.parametrize("target", ["dir", "."])
def test_preview_onto_an_existing_folder_is_refused_and_the_folder_kept(tmp_path, capsys, monkeypatch, target):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.tex").write_text("years of work")
    (keep / "sub").mkdir()
    (keep / "sub" / "data.csv").write_text("1,2,3")
    before = tree(keep)
    if target == ".":
        monkeypatch.chdir(keep)
        out = "."
    else:
        out = keep
    rc, err = run(["mono", "preview", "-o", out, "--size", 16, "--n", 4], capsys)
    one_line(rc, err, "is a folder")
    assert tree(keep) == before


def test_export_overwrite_replaces_its_own_output_never_an_unrelated_folder(tmp_path, capsys):
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"precious")
    rc, err = run(["mono", "export", "--n", 3, "--size", 16, "--out", unrelated, "--quiet", "--overwrite"], capsys)
    one_line(rc, err, "not an earlier output")
    assert (unrelated / "holiday.jpg").read_bytes() == b"precious"
    # an .npy export onto a folder, and a folder export onto a file: refused either way
    rc, err = run(["mono", "export", "--n", 3, "--size", 16, "--out", tmp_path, "--quiet", "--overwrite"], capsys)
    one_line(rc, err)
    notes = tmp_path / "notes"
    notes.write_text("keep me")
    rc, err = run(["mono", "export", "--n", 3, "--size", 16, "--out", notes, "--quiet", "--overwrite"], capsys)
    one_line(rc, err, "is a file")
    assert notes.read_text() == "keep me"
    # its own earlier export is replaced with --overwrite (and only with it)
    own = tmp_path / "patches"
    assert run(["mono", "export", "--n", 3, "--size", 16, "--out", own, "--quiet"], capsys)[0] == 0
    one_line(*run(["mono", "export", "--n", 2, "--size", 16, "--out", own, "--quiet"], capsys), "--overwrite")
    assert run(["mono", "export", "--n", 2, "--size", 16, "--out", own, "--quiet", "--overwrite"], capsys)[0] == 0
    assert sorted(os.listdir(own / "mono")) == ["0000000.jpg", "0000001.jpg"]
    # an .npy of another kind is not replaced by an export
    fake = tmp_path / "other.npy"
    fake.write_text("not numpy")
    one_line(*run(["mono", "export", "--n", 2, "--size", 16, "--out", fake, "--quiet", "--overwrite"], capsys))
    assert fake.read_text() == "not numpy"


def test_preview_replaces_a_png_but_not_another_kind_of_file(tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert run(["mono", "preview", "-o", png, "--size", 16, "--n", 4], capsys)[0] == 0
    assert run(["mono", "preview", "-o", png, "--size", 16, "--n", 9], capsys)[0] == 0
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    before = photo.read_bytes()
    one_line(*run(["mono", "preview", "-o", photo, "--size", 16, "--n", 4], capsys), "not an earlier output")
    assert photo.read_bytes() == before


def test_outputs_that_are_folders_are_refused_everywhere(tmp_path, capsys):
    pytest.importorskip("ffcv", reason="data convert needs FFCV (the ffcv extra)")
    data = _folder(tmp_path / "imgs")
    target = tmp_path / "x.beton"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    one_line(*run(["data", "convert", data, target, "--quiet", "--overwrite"], capsys), "is a folder")
    assert (target / "keep.txt").read_text() == "x"
    js = tmp_path / "res.json"
    js.mkdir()
    args = ["bench", "agreement", "--size", 16, "--n", 4, "--json", js]
    one_line(*run(args, capsys), "is a folder")
    f = tmp_path / "afile"
    f.write_text("x")
    one_line(*run(["train", "--preset", TINY, "--out", f, "--quiet"], capsys), "is a file")
    assert f.read_text() == "x"


# ------------------------------------------------------- 2, 3, 4, 8. full disk
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys):
    with small_fs(tmp_path, "1m") as mnt:
        rc, err = run(["mono", "export", "--n", 500, "--size", 64, "--out", mnt / "x.npy", "--quiet"], capsys)
        one_line(rc, err, "no space left on device")
        assert os.listdir(mnt) == []


def test_export_reserves_its_space_before_writing(tmp_path, capsys, monkeypatch):
    """Without a mount: a refused reservation is the one-line error (no memory-mapped write yet)."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    rc, err = run(["mono", "export", "--n", 10, "--size", 16, "--out", tmp_path / "x.npy", "--quiet"], capsys)
    one_line(rc, err, "no space left on device")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_convert_onto_a_full_disk_stops_with_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ffcv", reason="data convert needs FFCV (the ffcv extra)")
    from multiprocessing import shared_memory

    made = []  # the names of the segments this conversion creates

    class Recorded(shared_memory.SharedMemory):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self.name)

    monkeypatch.setattr(shared_memory, "SharedMemory", Recorded)
    data = _folder(tmp_path / "imgs", per=60, side=64, noise=True)  # 120 x 12 KiB raw: over 1 MiB

    def shm():  # FFCV's segments; another FFCV job on the machine may hold some of its own
        return {p for p in os.listdir("/dev/shm") if p.startswith("psm_")} if os.path.isdir("/dev/shm") else set()

    with small_fs(tmp_path, "1m") as mnt:
        before = shm()
        t0 = time.monotonic()
        args = ["data", "convert", data, mnt / "x.beton", "--write-mode", "raw", "--quiet", "--workers", 2]
        one_line(*run(args, capsys), "no space left on device")
        assert time.monotonic() - t0 < 60
        assert os.listdir(mnt) == []
    ours = {name.lstrip("/") for name in made}
    assert ours and not ours & shm(), (ours, shm() - before)  # this conversion's segments are gone


def test_writing_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        ctx = small_fs(tmp_path, "1m", "ro")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        ctx = contextlib.nullcontext(ro)
    with ctx as ro:
        one_line(*run(["mono", "preview", "-o", ro / "g.png", "--size", 16, "--n", 4], capsys), "could not write")
        one_line(*run(["mono", "export", "--n", 4, "--size", 16, "--out", ro / "x.npy", "--quiet"], capsys))
        assert os.listdir(ro) == []


def test_a_checkpoint_that_does_not_fit_is_one_line_and_the_old_one_survives(tmp_path):
    from fastssl.train import atomic_save, load_checkpoint

    big = {"format": "fastssl-ckpt-1", "w": torch.zeros(160_000)}  # 640 KB
    with small_fs(tmp_path, "1m") as mnt:
        atomic_save(big, mnt / "ckpt.pt")
        big["w"] = torch.ones(160_000)
        with pytest.raises(FastSSLError, match="no space left on device; the previous checkpoint is kept"):
            atomic_save(big, mnt / "ckpt.pt")
        assert torch.equal(load_checkpoint(mnt / "ckpt.pt")["w"], torch.zeros(160_000))
        assert os.listdir(mnt) == ["ckpt.pt"]


# ------------------------------------------------------------ 5. batch size
@pytest.mark.parametrize("bs", [0, -2])
def test_export_batch_size_must_be_positive(tmp_path, capsys, bs):
    out = tmp_path / "x.npy"
    one_line(*run(["mono", "export", "--n", 4, "--size", 16, "--out", out, "--batch-size", bs], capsys), "--batch-size")
    assert not out.exists()
    from fastssl.mono import export

    with pytest.raises(FastSSLError) as e:  # the library names its parameter; the CLI maps it to the flag
        export(None, 4, out, batch_size=bs)
    assert "`batch_size`" in str(e.value) and "--" not in str(e.value)


# ------------------------------------------------------- 6. truncated .beton
@pytest.mark.parametrize("cut", [1, 24, 100, 5000])
def test_a_truncated_beton_is_refused_by_info_and_by_the_loader(tmp_path, capsys, cut):
    pytest.importorskip("ffcv", reason=".beton files need FFCV (the ffcv extra)")
    from fastssl.data.loaders import Loader

    data = _folder(tmp_path / "imgs", per=8, side=48, noise=True)
    full = tmp_path / "full.beton"
    assert run(["data", "convert", data, full, "--quiet", "--write-mode", "raw"], capsys)[0] == 0
    cut_file = tmp_path / "cut.beton"
    cut_file.write_bytes(full.read_bytes()[:-cut])
    (tmp_path / "cut.classes.json").write_text((tmp_path / "full.classes.json").read_text())
    one_line(*run(["data", "info", cut_file], capsys), "truncated")
    with pytest.raises(FastSSLError, match="truncated"):
        Loader(str(cut_file), batch_size=4, train=False, res=16, workers=1)
    assert run(["data", "info", full], capsys)[0] == 0


# ------------------------------------------------------ 7. recipe validation
@pytest.mark.parametrize(
    "setting, words",
    [
        ("rotnet.ckpt_every=0", "rotnet.ckpt_every must be >= 1"),
        ("rotnet.log_every=0", "rotnet.log_every must be >= 1"),
        ("rotnet.optim.lr=-0.1", "rotnet.optim.lr must be in (0"),
        ("rotnet.optim.momentum=-1", "rotnet.optim.momentum must be in [0, 1)"),
        ("rotnet.optim.milestones=3,1", "rotnet.optim.milestones must be epochs >= 0 in increasing order"),
        ("rotnet.optim.milestones=a", "rotnet.optim.milestones takes a value like"),
        ("rotnet.optim.milestones=[1.5]", "rotnet.optim.milestones[0] must be an integer"),
        ("model.width=0", "model.width must be in (0"),
        ("rotnet.epochs=1.5", "rotnet.epochs takes a value like"),
        ("train.batch_size=0", "rotnet.batch_size must be >= 1"),
        ("probe.gamma=0", "probe.gamma must be in (0"),
        ("model.input_res=8", "model.input_res is too small"),
        ("device=gpu", "device must be"),
        ("workers=-1", "workers must be >= 0"),
        ("mono.size=0", "[mono]"),
        ("nosuch.key=1", "no section 'nosuch'"),
    ],
)
def test_bad_recipe_values_are_refused_before_anything_starts(tmp_path, capsys, setting, words):
    out = tmp_path / "run"
    one_line(*run(["train", "--preset", TINY, "--out", out, "--set", setting, "--quiet"], capsys), words)
    assert not out.exists()  # a refused command leaves no empty --out


def test_a_failure_after_the_start_leaves_no_empty_out(tmp_path, capsys):
    out = tmp_path / "run"
    one_line(*run(["train", "--preset", TINY, "--out", out, "--image", tmp_path / "none.jpg", "--quiet"], capsys))
    assert not out.exists()


# ---------------------------------------------------------------- 9. minor
def test_an_image_claiming_a_huge_size_is_one_line_without_a_warning(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastssl.cli",
            "mono",
            "preview",
            str(tmp_path / "bomb.png"),
            "-o",
            str(tmp_path / "g.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("fastssl: error:"), err
    assert not (tmp_path / "g.png").exists()


def test_a_corrupt_checkpoint_message_never_suggests_unsafe_loading(tmp_path):
    from fastssl.train import load_checkpoint

    p = tmp_path / "ckpt.pt"
    torch.save({"format": "fastssl-ckpt-1", "x": torch.zeros(3)}, p)
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(FastSSLError) as e:
        load_checkpoint(p)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "fastssl.cli", "train", "--preset", TINY, "--out", str(out), "--quiet", *extra]


def _slow_recipe(tmp_path) -> str:
    """The tiny recipe, long enough to be interrupted (many epochs of small steps)."""
    p = tmp_path / "slow.toml"
    p.write_text(
        Path(TINY)
        .read_text()
        .replace("[train]\nepochs = 2", "[train]\nepochs = 400")
        .replace("ckpt_every = 3", "ckpt_every = 7")
    )
    return str(p)


def _wait_for(path: Path, timeout=120):
    t0 = time.monotonic()
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


@pytest.mark.slow
def test_three_quick_ctrl_c_end_with_exit_130_and_a_checkpoint(tmp_path):
    from fastssl.train import load_checkpoint

    out = tmp_path / "run"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastssl.cli",
            "train",
            "--preset",
            _slow_recipe(tmp_path),
            "--out",
            str(out),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(out / "metrics.jsonl")
    for _ in range(3):
        p.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err
    ck = load_checkpoint(out / "ckpt.pt")
    assert 0 < ck["global_step"] < 400 * 4


@pytest.mark.slow
def test_resume_after_a_kill_logs_every_step_once(tmp_path):
    out = tmp_path / "run"
    recipe = _slow_recipe(tmp_path)
    cmd = [sys.executable, "-m", "fastssl.cli", "train", "--preset", recipe, "--out", str(out), "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not (out / "ckpt.pt").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 5:
        assert time.monotonic() - t0 < 120 and p.poll() is None
        time.sleep(0.01)
    p.kill()
    p.wait()
    killed_at = len((out / "metrics.jsonl").read_text().splitlines())
    # resume, to a nearer end (20 epochs of 4 steps, a line every 2 steps)
    r = subprocess.run([*cmd, "--resume", "--set", "train.epochs=20"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(x)["global_step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 81, 2)), (killed_at, steps)  # each logged step once, in order


# ------------------------------------------------------------ 10. one run per folder
def test_a_second_run_into_a_busy_folder_is_refused_with_the_holders_pid(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom fastssl.atomic import run_lock\n"
            f"with run_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = run(["train", "--preset", TINY, "--out", out, "--quiet"], capsys)
        one_line(rc, err, f"PID {holder.pid}")
        assert not (out / "ckpt.pt").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run(["train", "--preset", TINY, "--out", out, "--quiet"], capsys)[0] == 0  # free again


# ------------------------------------------------------- 11. exact Ctrl-C resume
def test_ctrl_c_in_the_middle_of_a_step_resumes_bit_identical(tmp_path):
    """SIGINT arrives after the forward pass of step 5 (BatchNorm statistics and the RNG already
    moved): the checkpoint must still be the state after a completed step, so interrupted +
    resumed == uninterrupted for every tensor of the networks and the optimisers."""
    from fastssl.data.adapters import MonoData
    from fastssl.methods import build_method
    from fastssl.methods.rotnet import RotNet
    from fastssl.mono import MonoSource
    from fastssl.spec import AugmentSpec
    from fastssl.train import TrainConfig, Trainer, load_checkpoint

    model = dict(small=True, input_res=16, width=0.1, fc_width=32)

    class SignalMidStep(RotNet):
        def train_step(self, batch, ctx):
            if ctx.t.global_step != 5:
                return super().train_step(batch, ctx)
            update = ctx.step

            def step(loss, name="main"):
                os.kill(os.getpid(), signal.SIGINT)  # after the forward (BN moved, RNG drawn), before the update
                update(loss, name)

            ctx.step = step
            try:
                return super().train_step(batch, ctx)
            finally:
                del ctx.step

    def data():
        return MonoData(MonoSource(None, AugmentSpec(size=16), batch_size=16, epoch_length=64))

    def cfg(**kw):
        return TrainConfig(
            epochs=3, batch_size=16, amp="off", compile="off", device="cpu", log_every=1, progress=False, **kw
        )

    torch.manual_seed(0)
    Trainer(build_method("rotnet", model), data(), cfg(), tmp_path / "a").fit()
    torch.manual_seed(0)
    m = SignalMidStep(model)
    assert Trainer(m, data(), cfg(), tmp_path / "b").fit() == "interrupted"
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["global_step"] == 6  # the step it was in completed
    torch.manual_seed(99)
    assert Trainer(build_method("rotnet", model), data(), cfg(resume=True), tmp_path / "b").fit() == "done"
    a, b = load_checkpoint(tmp_path / "a" / "ckpt.pt"), load_checkpoint(tmp_path / "b" / "ckpt.pt")
    for k, v in a["nets"]["model"].items():
        assert torch.equal(v, b["nets"]["model"][k]), k
    sa, sb = a["optims"]["main"]["state"], b["optims"]["main"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert torch.equal(a["torch_rng"], b["torch_rng"])


def test_repro_refuses_to_reuse_a_row_trained_with_another_network(tmp_path):
    # a folder of an earlier run holds mono-deepcluster trained on RGB; the recipe now gives
    # DeepCluster Sobel input: reusing (or resuming) that row would mix two networks in a table
    from fastssl.config import load
    from fastssl.rows import train_row
    from fastssl.train import CKPT_FORMAT

    rc = load(str(Path(__file__).parent / "data" / "tiny.toml"), ["deepcluster.model.sobel=true"])
    row = tmp_path / "mono-deepcluster"
    row.mkdir()
    arch = {**rc["model"], "num_classes": 10}  # sobel False: the run's [model]
    torch.save({"format": CKPT_FORMAT, "arch": arch, "epoch": 99}, row / "ckpt.pt")
    with pytest.raises(FastSSLError, match=r"trained with another network \(sobel False there, True now\)"):
        train_row("mono-deepcluster", rc, "deepcluster", None, tmp_path, None, False)
    arch["sobel"] = True  # the same network: the finished row is reused, nothing retrained
    torch.save({"format": CKPT_FORMAT, "arch": arch, "epoch": 99}, row / "ckpt.pt")
    assert train_row("mono-deepcluster", rc, "deepcluster", None, tmp_path, None, False) == row / "ckpt.pt"
