"""Faults that must neither hang, corrupt nor lose data: signals during a conversion, special
files given as images, damaged .beton files and checkpoints, concurrent writers, reused result
folders, resume drift, shadowed overrides. Signals and hangs run in subprocesses with a timeout."""

from __future__ import annotations

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

from fastssl.cli import main
from fastssl.errors import FastSSLError

TINY = str(Path(__file__).parent / "data" / "tiny.toml")
needs_ffcv = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import ffcv"], capture_output=True).returncode != 0,
    reason="needs FFCV (the ffcv extra)",
)


def _folder(root: Path, classes=("a", "b"), per=6, side=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    return root


def _shm() -> set:
    return {p for p in os.listdir("/dev/shm") if p.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


def _mapped_shm() -> set:
    """The ``psm_*`` segments some living process has mapped (another FFCV job's, not a leak)."""
    names = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                maps = Path(f"/proc/{d}/maps").read_text()
            except OSError:
                continue
            names.update(line.rsplit("/", 1)[1].split()[0] for line in maps.splitlines() if "/dev/shm/psm_" in line)
    return names


def _leaked_shm(before: set) -> set:
    """Segments new since ``before`` that no living process maps: left by a dead one."""
    new = _shm() - before
    return new - _mapped_shm() if new else new


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` now (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gone_within(pids, seconds: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


# a conversion slow enough to be interrupted: 3000 generated images, 3 ms each to decode
SLOW_CONVERT = """
import sys, time
import numpy as np
import fastssl.data.sources as S

class Slow(S.LabelledSource):
    def __init__(self):
        n = 3000
        super().__init__("slow", ["a", "b"], [f"k{i}" for i in range(n)], np.arange(n) % 2)

    def image(self, i):
        time.sleep(0.003)
        return np.full((24, 24, 3), i % 256, np.uint8)

S.open_source = lambda *a, **k: Slow()
from fastssl.cli import run
sys.argv = ["fastssl", "data", "convert", "slow", sys.argv[1], "--workers", "2", "--quiet"]
run()
"""


@needs_ffcv
@pytest.mark.slow
@pytest.mark.parametrize("phase", ["check", "write"])
@pytest.mark.parametrize("sig", ["INT", "TERM", "KILL"])
def test_a_stopped_conversion_ends_its_workers_and_leaves_nothing(tmp_path, sig, phase):
    out = tmp_path / "out"
    out.mkdir()
    shm_before = _shm()
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERT, str(out / "d.beton")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    # check: while the images are decoded (worker processes, nothing on disk yet); write: once
    # FFCV's writer has its temporary file
    while True:
        assert p.poll() is None and time.monotonic() - t0 < 120, p.communicate()
        workers = _children(p.pid)
        if (phase == "check" and len(workers) >= 2) or (phase == "write" and any(out.glob("*.partial"))):
            break
        time.sleep(0.02)
    time.sleep(0.2)
    workers = _children(p.pid)
    assert workers
    p.send_signal(getattr(signal, f"SIG{sig}"))
    _, err = p.communicate(timeout=30)  # never hangs
    if sig == "KILL":
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == 130, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "fastssl: interrupted", err
    assert _gone_within(workers, 10), [w for w in workers if _alive(w)]  # no orphan writers
    t1 = time.monotonic()
    while (os.listdir(out) or _leaked_shm(shm_before)) and time.monotonic() - t1 < 10:
        time.sleep(0.05)
    assert os.listdir(out) == []  # no .partial, no lock, no half index
    assert _leaked_shm(shm_before) == set()  # FFCV's shared memory freed (another job's still mapped)


@needs_ffcv
def test_a_stop_swallowed_where_it_landed_still_stops_the_conversion(tmp_path, capsys, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt is lost (inside a compiled callback) still ends the
    command with 130 before its output is renamed into place."""
    from fastssl import signals

    data = _folder(tmp_path / "imgs")
    real = signals.check_stop
    calls = []

    def swallowed():
        signals._state["stopping"] = True  # what the first Ctrl-C leaves, its exception lost
        calls.append(1)
        real()

    import fastssl.data.beton as beton

    monkeypatch.setattr(beton, "block_checksums", lambda p, f=beton.block_checksums: (swallowed(), f(p))[1])
    rc = main(["data", "convert", str(data), str(tmp_path / "d.beton"), "--quiet", "--workers", "1"])
    assert rc == 130 and calls
    assert sorted(os.listdir(tmp_path)) == ["imgs"]


# --------------------------------------------------------------- special files
@pytest.mark.parametrize("where", ["image", "class folder"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, where):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    if where == "image":
        cmd = ["mono", "preview", str(fifo), "-o", str(tmp_path / "g.png"), "--size", "16", "--n", "4"]
    else:
        pytest.importorskip("ffcv", reason="data convert needs FFCV (the ffcv extra)")
        data = _folder(tmp_path / "imgs")
        os.mkfifo(data / "a" / "zz.png")
        cmd = ["data", "convert", str(data), str(tmp_path / "d.beton"), "--quiet", "--workers", "1", "--strict"]
    r = subprocess.run([sys.executable, "-m", "fastssl.cli", *cmd], capture_output=True, text=True, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "not a regular file" in err[0], r.stderr


# ---------------------------------------------------------------- damaged data
@pytest.fixture
def beton(tmp_path):
    pytest.importorskip("ffcv", reason="needs FFCV (the ffcv extra)")
    data = _folder(tmp_path / "imgs", per=10)
    dst = tmp_path / "d.beton"
    assert main(["data", "convert", str(data), str(dst), "--quiet", "--workers", "1"]) == 0
    return dst


def _damaged_copy(beton: Path, name: str, edit) -> Path:
    import shutil

    from ffcv.reader import Reader

    r = Reader(str(beton))
    b = bytearray(beton.read_bytes())
    edit(b, r)
    out = beton.with_name(f"{name}.beton")
    out.write_bytes(bytes(b))
    shutil.copy(beton.with_name("d.classes.json"), out.with_name(f"{name}.classes.json"))
    return out


def _meta_offset(r, sample: int, field: str) -> int:
    """Byte offset of one metadata field of one sample in the file."""
    from ffcv.types import HeaderType

    fd_size = r.header["num_fields"] * np.dtype(__import__("ffcv.types").types.FieldDescType).itemsize
    start = HeaderType.itemsize + fd_size
    dt = r.metadata.dtype
    return start + sample * dt.itemsize + dt.fields["f0"][1] + dt["f0"].fields[field][1]


def _set_meta(b: bytearray, r, sample: int, field: str, value: int) -> None:
    off = _meta_offset(r, sample, field)
    width = r.metadata.dtype["f0"].fields[field][0].itemsize
    b[off : off + width] = int(value).to_bytes(width, "little")


@pytest.mark.parametrize(
    "damage, words",
    [
        ("pixels", "differ from what `data convert` wrote"),
        ("pointer", "data pointer"),
        ("side", "image sides"),
    ],
)
def test_a_damaged_beton_is_found_by_info_and_by_the_loader(beton, tmp_path, capsys, damage, words):
    from fastssl.data.loaders import Loader

    def edit(b, r):
        if damage == "pixels":  # bytes inside one sample's image data
            at = int(r.alloc_table["ptr"][3]) + 5
            b[at : at + 64] = bytes(64)
        elif damage == "pointer":  # a data pointer beyond the file
            _set_meta(b, r, 2, "data_ptr", len(b) + 10**6)
        else:  # a width that would allocate far more than the image
            _set_meta(b, r, 4, "width", 65535)

    bad = _damaged_copy(beton, damage, edit)
    one_line(*run(["data", "info", bad], capsys), words)
    with pytest.raises(FastSSLError, match="damaged"):
        Loader(str(bad), batch_size=4, train=True, res=16, device=torch.device("cpu"), workers=1)
    # the original still reads, verified in full
    assert run(["data", "info", beton, "--verify"], capsys)[0] == 0


@pytest.mark.parametrize("field, value", [("num_samples", 2**62), ("alloc_table_ptr", 2**63 + 5)])
def test_a_damaged_header_is_one_line_without_warnings(beton, capsys, field, value):
    from ffcv.types import HeaderType

    def edit(b, r):
        off, width = HeaderType.fields[field][1], HeaderType.fields[field][0].itemsize
        b[off : off + width] = value.to_bytes(width, "little")

    bad = _damaged_copy(beton, field, edit)
    one_line(*run(["data", "info", bad], capsys))  # exactly one stderr line: no numpy warnings


def test_a_checkpoint_with_damaged_weights_is_refused(tmp_path):
    from fastssl.train import CKPT_FORMAT, atomic_save, load_checkpoint

    p = tmp_path / "ckpt.pt"
    atomic_save({"format": CKPT_FORMAT, "w": torch.randn(64, 1024)}, p)
    assert load_checkpoint(p)["w"].shape == (64, 1024)
    b = bytearray(p.read_bytes())
    at = b.index(b"data/0") + 200  # inside the tensor's bytes, past its name
    b[at : at + 4096] = bytes(4096)
    p.write_bytes(bytes(b))
    with pytest.raises(FastSSLError, match="damaged"):
        load_checkpoint(p)


# ------------------------------------------------------------- decoding limits
def test_convert_scales_16_bit_pngs_instead_of_saturating(tmp_path, capsys):
    pytest.importorskip("ffcv", reason="needs FFCV (the ffcv extra)")
    from fastssl.data.sources import open_source

    data = _folder(tmp_path / "imgs")
    a = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 160).astype(np.uint16)
    Image.fromarray(a).save(data / "a" / "deep.png")  # a 16-bit grey PNG
    src = open_source(data)
    img = src.image(src.keys.index("a/deep.png"))
    want = np.round(a.astype(np.float64) * 255 / 65535)
    assert np.abs(img[..., 0].astype(np.int64) - want).max() <= 1
    assert (img == 255).mean() < 0.01


def test_a_decompression_bomb_in_a_class_folder_is_skipped_with_one_line(tmp_path, capsys):
    pytest.importorskip("ffcv", reason="needs FFCV (the ffcv extra)")
    data = _folder(tmp_path / "imgs")
    Image.new("L", (1, 1)).save(data / "a" / "bomb.png")
    raw = bytearray((data / "a" / "bomb.png").read_bytes())
    import struct
    import zlib

    # IHDR claims 40000 x 40000 (1.6 Gpx: above PIL's error limit)
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    raw[8:33] = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (data / "a" / "bomb.png").write_bytes(bytes(raw))
    rc = main(["data", "convert", str(data), str(tmp_path / "d.beton"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err and "skipped 1" in err, err


def test_a_huge_member_of_a_compressed_archive_is_never_read(tmp_path, monkeypatch):
    import tarfile

    import fastssl.data.sources as S

    data = _folder(tmp_path / "imgs")
    monkeypatch.setattr(S, "MAX_MEMBER", 4096)  # a 20 px PNG is far below; the big one above
    big = data / "b" / "big.bmp"
    big.write_bytes(b"BM" + bytes(64 * 1024))
    arc = tmp_path / "d.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(data, arcname="imgs")
    src = S.open_source(arc)
    assert all(len(v) < 4096 for v in src._data.values())  # the big member was not read
    with pytest.raises(FastSSLError, match="not read"):
        src.image(src.keys.index("imgs/b/big.bmp"))


# ------------------------------------------------------------ results folders
def _ckpt(tmp_path, name: str, seed: int) -> Path:
    out = tmp_path / name
    assert main(["train", "--preset", TINY, "--out", str(out), "--quiet", "--set", f"seed={seed}"]) == 0
    return out / "ckpt.pt"


def test_a_probe_folder_is_never_reused_for_another_checkpoint(tmp_path, capsys):
    data = _folder(tmp_path / "imgs", per=8)
    a, b = _ckpt(tmp_path, "a", 0), _ckpt(tmp_path, "b", 1)
    capsys.readouterr()
    probe = ["probe", "--preset", TINY, "--data", data, "--out", tmp_path / "p", "--quiet"]
    assert run([probe[0], a, *probe[1:]], capsys)[0] == 0
    before = (tmp_path / "p" / "probes.json").read_bytes()
    one_line(*run([probe[0], b, *probe[1:]], capsys), "another checkpoint")
    assert (tmp_path / "p" / "probes.json").read_bytes() == before  # A's results kept
    assert run([probe[0], a, *probe[1:]], capsys)[0] == 0  # the same checkpoint: reused


@needs_ffcv
def test_two_writers_to_one_destination_one_is_refused(tmp_path):
    """Two conversions to one .beton at once: exactly one writes it, the other is refused with
    one line (never both "succeed")."""
    out = tmp_path / "d.beton"
    code = SLOW_CONVERT.replace("n = 3000", "n = 600")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    res = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], res
    err = [e for (_, e), p in zip(res, procs, strict=True) if p.returncode == 2][0]
    assert "being written by another fastssl command" in err or "exists" in err, err
    assert sorted(os.listdir(tmp_path)) == ["d.beton", "d.classes.json"]


def test_two_exports_at_once_one_is_refused_with_the_holders_pid(tmp_path, capsys):
    from fastssl.atomic import claim

    out = tmp_path / "p.npy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time\nfrom fastssl.atomic import claim\nwith claim({str(out)!r}):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = run(["mono", "export", "--n", 4, "--size", 16, "--out", out, "--quiet"], capsys)
        one_line(rc, err, f"PID {holder.pid}")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    with claim(out):  # free again, and re-entrant within one process
        assert run(["mono", "export", "--n", 4, "--size", 16, "--out", out, "--quiet"], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["p.npy"]  # no lock file left beside it


def test_a_class_index_of_other_content_is_not_replaced(tmp_path, capsys):
    pytest.importorskip("ffcv", reason="needs FFCV (the ffcv extra)")
    data = _folder(tmp_path / "imgs")
    side = tmp_path / "d.classes.json"
    side.write_text('{"my": "notes"}')
    rc, err = run(["data", "convert", data, tmp_path / "d.beton", "--quiet", "--workers", 1], capsys)
    one_line(rc, err, "class index")
    rc, err = run(["data", "convert", data, tmp_path / "d.beton", "--quiet", "--workers", 1, "--overwrite"], capsys)
    one_line(rc, err, "not an earlier output")
    assert side.read_text() == '{"my": "notes"}' and not (tmp_path / "d.beton").exists()


def test_a_lock_file_that_is_a_symlink_is_never_followed(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".fastssl.lock").symlink_to(target)
    one_line(*run(["train", "--preset", TINY, "--out", out, "--quiet"], capsys), "symbolic link")
    assert target.read_text() == "keep"


def test_an_export_larger_than_the_free_space_is_refused_before_reserving(tmp_path, capsys, monkeypatch):
    import shutil

    import fastssl.atomic

    calls = []
    monkeypatch.setattr(fastssl.atomic, "reserve", lambda *a: calls.append(a))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 << 20))
    rc, err = run(["mono", "export", "--n", 20000, "--size", 32, "--out", tmp_path / "x.npy", "--quiet"], capsys)
    one_line(rc, err, "MiB are free; nothing was written")
    assert calls == [] and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_sigterm_during_an_export_leaves_no_partial(tmp_path):
    out = tmp_path / "x.npy"
    cmd = [sys.executable, "-m", "fastssl.cli", "mono", "export", "--n", "400000", "--size", "32", "--out", str(out)]
    p = subprocess.Popen([*cmd, "--quiet", "--batch-size", "64"], stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list(tmp_path.glob("*.partial")):
        assert p.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.02)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_sigkill_during_an_export_leaves_no_partial(tmp_path):
    out = tmp_path / "x.npy"
    cmd = [sys.executable, "-m", "fastssl.cli", "mono", "export", "--n", "400000", "--size", "32", "--out", str(out)]
    p = subprocess.Popen([*cmd, "--quiet", "--batch-size", "64"], stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not list(tmp_path.glob("*.partial")):
        assert p.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.02)
    p.kill()
    p.wait()
    t1 = time.monotonic()
    while os.listdir(tmp_path) and time.monotonic() - t1 < 10:
        time.sleep(0.05)
    assert os.listdir(tmp_path) == []  # the reaper removed the temporary and the claim


def test_a_full_disk_while_logging_keeps_whole_lines(tmp_path, monkeypatch):
    from fastssl.train import Trainer

    t = Trainer.__new__(Trainer)
    t.rank, t.global_step, t.out, t._tb = 0, 7, tmp_path, False
    t.log({"epoch": 0, "step": 1})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real_write = os.write

    def full(fd, data):
        real_write(fd, data[: len(data) // 2])  # half the line lands, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(FastSSLError, match="no space left"):
        t.log({"epoch": 0, "step": 2, "loss": 1.0})
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_report_writes_all_three_files_or_none(tmp_path, monkeypatch):
    from fastssl import report as rep
    from fastssl.report import report

    pr = tmp_path / "seed-0" / "probes"
    pr.mkdir(parents=True)
    cells = {k: 10.0 for k in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    (pr / "random.json").write_text(json.dumps({"top1": cells}))
    report(tmp_path, [0])
    before = {n: (tmp_path / n).read_bytes() for n in ("probes.json", "table.md", "probes.png")}
    (pr / "random.json").write_text(json.dumps({"top1": {k: 20.0 for k in cells}}))

    def no_room(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rep, "_save_figure", no_room)
    with pytest.raises(FastSSLError, match="no space left"):
        report(tmp_path, [0])
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # all three kept, none replaced


def test_a_conversion_failing_at_the_class_index_leaves_no_beton(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ffcv", reason="needs FFCV (the ffcv extra)")
    import fastssl.data.beton as beton

    def full(*a, **k):
        raise FastSSLError("could not write d.classes.json: no space left on device (nothing was kept)")

    monkeypatch.setattr(beton, "write_json", full)
    data = _folder(tmp_path / "imgs")
    one_line(*run(["data", "convert", data, tmp_path / "d.beton", "--quiet", "--workers", 1], capsys), "no space")
    assert sorted(os.listdir(tmp_path)) == ["imgs"]


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_then_resume_logs_each_step_once(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastssl.cli", "train", "--preset", TINY, "--out", str(out), "--quiet"]
    # one epoch far longer than the test: no checkpoint before the kill
    long = ["--set", "mono.epoch_length=1000000", "--set", "train.ckpt_every=1000000"]
    p = subprocess.Popen([*cmd, *long], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert p.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    p.kill()
    p.wait()
    assert not (out / "ckpt.pt").exists()
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(x)["global_step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8], steps  # 2 epochs of 4 steps, a line every 2: each once


# ------------------------------------------------------------------ drift
@pytest.mark.parametrize(
    "change, key",
    [
        ("train.batch_size=8", "batch_size"),
        ("seed=3", "seed"),
        ("mono.rotation=0", "mono.rotation"),
        ("train.optim.lr=0.01", "optim.lr"),
        ("train.optim.name=adam", "optim.name"),
    ],
)
def test_resume_refuses_a_changed_recipe_unless_allowed(tmp_path, capsys, change, key):
    out = tmp_path / "run"
    assert main(["train", "--preset", TINY, "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    args = ["train", "--preset", TINY, "--out", out, "--quiet", "--resume", "--set", change]
    one_line(*run(args, capsys), key)
    rc = main([*map(str, args), "--allow-changes"])
    assert rc == 0
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(key in json.dumps(r.get("recipe_changed", {})) for r in log)
    # a longer run of the same recipe is not a change
    assert main(["train", "--preset", TINY, "--out", str(tmp_path / "r2"), "--quiet", "--set", "train.epochs=1"]) == 0
    rc = main(["train", "--preset", TINY, "--out", str(tmp_path / "r2"), "--quiet", "--resume"])
    assert rc == 0


def test_a_run_on_other_source_photos_is_not_taken_for_the_same_run(tmp_path, capsys):
    photo = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "run"
    assert main(["train", "--preset", TINY, "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    before = (out / "ckpt.pt").read_bytes()
    args = ["train", "--preset", TINY, "--out", out, "--quiet", "--resume", "--image", photo]
    one_line(*run(args, capsys), "mono.source_sha256")
    assert (out / "ckpt.pt").read_bytes() == before
    # the same photo again is the same run: resumed (here: already done)
    assert main(["train", "--preset", TINY, "--out", str(out), "--quiet", "--resume"]) == 0


def test_repro_does_not_reuse_a_one_image_row_of_another_photo(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    rng = np.random.default_rng(1)
    for f in (a, b):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(f)
    data = tmp_path / "data"
    _folder(data, per=12)
    common = ["repro", "--preset", TINY, "--data", data, "--out", tmp_path / "r", "--quiet"]
    assert main([str(x) for x in [*common, "--image", a]]) == 0
    capsys.readouterr()
    probes = (tmp_path / "r" / "probes.json").read_bytes()
    one_line(*run([*common, "--image", b], capsys), "mono.source_sha256")
    assert (tmp_path / "r" / "probes.json").read_bytes() == probes


# ------------------------------------------------------ arguments that clash
@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--preset", "cpu-mini", "--set", "train.epochs=10"], "rotnet.epochs"),
        (["train", "--image", "x.png", "--data", "y"], "--image"),
        (["mono", "preview", "-o", "g.png", "--size", "48", "--spec", "size=16"], "--size"),
        (["mono", "preview", "-o", "g.jpg"], ".png"),
        (["bench", "augment", "--seconds", "-1", "--size", "16"], "--seconds"),
        (["bench", "agreement", "--n", "0", "--size", "16"], "--n"),
    ],
)
def test_overrides_that_change_nothing_and_exclusive_arguments_are_one_line(tmp_path, capsys, args, words):
    args = [a if a not in ("g.png", "g.jpg") else str(tmp_path / a) for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "run")]
    one_line(*run(args, capsys), words)
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("g.*"))


@pytest.mark.parametrize("how", ["recipe", "set"])
def test_deep_nesting_is_one_line(tmp_path, how):
    # in a subprocess: a RecursionError leaves this interpreter's recursion bookkeeping behind
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    args = ["--preset", str(deep)] if how == "recipe" else ["--set", "model.width=" + "[" * 30000 + "]" * 30000]
    r = subprocess.run([sys.executable, "-m", "fastssl.cli", "recipe", *args], capture_output=True, text=True)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "nested" in err[0], r.stderr[-500:]


def test_a_cache_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("")
    monkeypatch.setenv("FASTSSL_CACHE", str(cache))
    one_line(*run(["mono", "preview", "paper:bridge", "-o", tmp_path / "g.png"], capsys), "FASTSSL_CACHE")


def test_a_closed_pipe_is_no_traceback():
    r = subprocess.run(
        f"{sys.executable} -m fastssl.cli recipe --preset cpu-mini | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.stdout.strip() == "{" and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_a_refused_repro_leaves_its_out_as_it_was(tmp_path, capsys):
    data = _folder(tmp_path / "imgs", per=8)
    out = tmp_path / "out"
    out.mkdir()
    args = ["repro", "--preset", TINY, "--data", data, "--image", tmp_path / "missing.png", "--out", out, "--quiet"]
    one_line(*run(args, capsys), "not found")
    assert os.listdir(out) == []  # no config.json, no lock
    one_line(*run([*args[:-3], "--out", tmp_path / "new", "--quiet"], capsys), "not found")
    assert not (tmp_path / "new").exists()


def test_a_smoke_run_says_so_in_every_output(tmp_path):
    from fastssl.report import markdown_table

    assert (
        "smoke"
        in markdown_table(
            {"random": {k: 1.0 for k in ("conv1", "conv2", "conv3", "conv4", "conv5")}}, smoke=True
        ).lower()
    )


def test_default_workers_follow_the_cores():
    from fastssl.config import load

    rc = load(TINY, ["workers=none"])
    from fastssl.config import loader_workers

    assert loader_workers(rc) == min(8, len(os.sched_getaffinity(0)))
    assert loader_workers(load(TINY)) == 0


# ------------------------------------------------------------------ first use
def _readme_install() -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Install", 1)[1].split("\n## ", 1)[0]
    return [line.split("#")[0].strip() for line in section.split("```bash", 1)[1].split("```", 1)[0].splitlines()]


def test_the_readme_install_order_and_first_command_work_offline(tmp_path):
    lines = [x for x in _readme_install() if x]
    torch_cpu = next(i for i, x in enumerate(lines) if "torch" in x and "cpu" in x)
    editable = next(i for i, x in enumerate(lines) if x.startswith("pip install -e"))
    assert torch_cpu < editable  # the CPU build before anything that would pull CUDA torch
    first = next(x for x in lines if x.startswith("fastssl "))
    assert "paper:" not in first  # the built-in photo: no download
    r = subprocess.run(
        [sys.executable, "-m", "fastssl.cli", *first.split()[1:]], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_names_the_extras_ci_installs():
    root = Path(__file__).parents[1]
    ci = (root / ".ci" / "run").read_text()
    extras = ci.split("pip install -q -e '.[", 1)[1].split("]", 1)[0]
    assert f"`.[{extras}]`" in (root / "README.md").read_text()
    assert "apt-get update" in ci and "apt-get update" in (root / "README.md").read_text()
