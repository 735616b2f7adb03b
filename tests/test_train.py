"""AlexNet, the trainer, the methods, the probes and `fastssl repro` on tiny synthetic data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streams import Interrupt

from fastssl import AugmentSpec, FastSSLError, MonoSource
from fastssl.cli import main
from fastssl.data.adapters import MonoData
from fastssl.data.loaders import ffcv_available
from fastssl.methods import build_method
from fastssl.methods.rotnet import four_rotations
from fastssl.models import AlexNet, fold_bn
from fastssl.models.alexnet import LAYERS
from fastssl.pretrained import load_trunk
from fastssl.probe import LinearProbes, ProbeConfig, train_probes
from fastssl.train import TrainConfig, Trainer, load_checkpoint

TINY = str(Path(__file__).parent / "data" / "tiny.toml")
MODEL = dict(small=True, input_res=16, width=0.1, fc_width=32)


def test_paper_alexnet_geometry_and_probe_features():
    m = AlexNet(1000).eval()
    taps = m.taps(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert [tuple(t.shape[1:]) for t in taps] == [
        (96, 55, 55),
        (256, 27, 27),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
    ]
    probes = LinearProbes([tuple(t.shape[1:]) for t in taps], 1000, 9216, paper_pools=True)
    assert probes.features == [9600, 9216, 9600, 9600, 9216]  # the paper's probe feature counts
    assert m.head[-1].out_features == 1000 and m.head[1].out_features == 4096
    conv1 = m.convs[0]
    assert conv1.kernel_size == (11, 11) and conv1.stride == (4, 4) and conv1.padding == (2, 2)
    assert abs(conv1.weight.std().item() - (2 / (11 * 11 * 96)) ** 0.5) < 0.002


def test_small_variant_keeps_five_spatial_stages_and_bn_folds_exactly():
    m = AlexNet(10, small=True, input_res=32, width=0.25)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    m.train()
    for _ in range(3):
        m(x)  # non-trivial BN running statistics
    m.eval()
    shapes = [t.shape[2] for t in m.taps(x)]
    assert shapes == [32, 15, 7, 7, 7]
    f = fold_bn(m)
    assert not any(isinstance(b, torch.nn.BatchNorm2d) for b in f.modules())  # none left (cuDNN refuses eps 0)
    for a, b in zip(m.taps(x), f.taps(x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m(x), f(x), atol=1e-4, rtol=1e-4)
    s = AlexNet(2, small=True, input_res=32, sobel=True)
    assert s.convs[0].in_channels == 2 and s(x).shape == (6, 2)


def test_conv1_kernel_and_stride_change_conv1_alone_and_survive_a_checkpoint():
    m = AlexNet(10, small=True, input_res=32, width=0.25, conv1_width=12, conv1_kernel=11, conv1_stride=2)
    c = m.convs[0]
    assert c.kernel_size == (11, 11) and c.stride == (2, 2) and c.padding == (5, 5) and c.out_channels == 12
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert [t.shape[2] for t in m.taps(x)] == [16, 7, 3, 3, 3]
    again = AlexNet(**m.config)  # what a checkpoint's arch rebuilds
    assert again.convs[0].kernel_size == (11, 11) and again.convs[0].stride == (2, 2)
    from fastssl.config import load

    with pytest.raises(FastSSLError, match="conv1_stride"):
        load("cpu-mini", ["model.conv1_stride=0"])


@pytest.mark.parametrize("k,s,p,side", [(11, 2, 5, 32), (11, 4, 2, 67), (5, 2, 2, 20), (4, 3, 0, 17)])
def test_a_strided_conv_by_space_to_depth_is_the_plain_conv(k, s, p, side):
    """The CPU form of a strided conv (space-to-depth, then stride 1) gives the plain conv's
    output and gradients, for kernels that are and are not multiples of the stride."""
    from fastssl.models.alexnet import StridedConv

    torch.manual_seed(0)
    conv = StridedConv(3, 8, k, s, p).double()
    x = torch.randn(2, 3, side, side, dtype=torch.double, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, s, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # where the CPU form is taken; float64 stays float64
        ours = conv(x)
    assert ours.shape == plain.shape
    assert torch.allclose(ours, plain, atol=1e-12)
    g = torch.randn_like(plain)
    ga = torch.autograd.grad(ours, (x, conv.weight, conv.bias), g)
    gb = torch.autograd.grad(plain, (x, conv.weight, conv.bias), g)
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_four_rotations_are_the_rotations():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    r, y = four_rotations(x)
    assert r.shape == (8, 3, 4, 4) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(r[2], torch.rot90(x[0], 1, (1, 2))) and torch.equal(r[4], x[0].flip(1).flip(2))
    assert torch.equal(r[6], torch.rot90(x[0], 3, (1, 2)))


def _mono(n=64, bs=16, seed=0):
    return MonoData(MonoSource(None, AugmentSpec(size=16), batch_size=bs, epoch_length=n, seed=seed))


def _cfg(**kw):
    base = dict(
        epochs=2, batch_size=16, amp="off", compile="off", device="cpu", log_every=1, ckpt_every=1000, progress=False
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    return load_checkpoint(path)["nets"]["model"]


def test_rotnet_steps_and_checkpoints_are_plain_tensors(tmp_path):
    torch.manual_seed(0)
    m = build_method("rotnet", MODEL)
    before = {k: v.clone() for k, v in m.nets["model"].state_dict().items()}
    assert Trainer(m, _mono(n=64), _cfg(epochs=3), tmp_path).fit() == "done"
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # a checkpoint never runs code
    assert ck["epoch"] == 3 and ck["method"] == "rotnet" and ck["global_step"] == 12
    assert not torch.equal(before["convs.0.weight"], ck["nets"]["model"]["convs.0.weight"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(0 <= r["acc"] <= 1 and r["img_per_s"] > 0 for r in lines)
    assert all(0 <= r["data_wait"] <= 1 for r in lines)  # the share of the epoch spent waiting for batches


class _Labelled:
    """A labelled toy stream for the trainer (the _Toy problem below, batches of 32)."""

    def __init__(self, toy):
        self.toy = toy

    def __len__(self):
        return len(self.toy)

    def set_epoch(self, e):
        pass

    def iter_from(self, step):
        for i, b in enumerate(self.toy):
            if i >= step:
                yield b


def test_a_few_supervised_steps_learn_a_toy_problem(tmp_path):
    torch.manual_seed(0)
    # the paper's init (linear layers N(0, 0.01)) needs wide FC layers to get going quickly
    m = build_method("supervised", dict(MODEL, fc_width=1024), num_classes=2)
    cfg = _cfg(epochs=4)
    cfg.optim.lr = 0.05
    assert Trainer(m, _Labelled(_Toy(256, 0)), cfg, tmp_path).fit() == "done"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in lines[:4]]), np.mean([r["loss"] for r in lines[-4:]])
    assert last < 0.5 * first, (first, last)
    assert np.mean([r["acc"] for r in lines[-4:]]) > 0.9


def test_resume_after_ctrl_c_gives_the_same_weights_as_one_run(tmp_path):
    torch.manual_seed(0)
    Trainer(build_method("rotnet", MODEL), _mono(), _cfg(), tmp_path / "a").fit()
    torch.manual_seed(0)
    t = Trainer(build_method("rotnet", MODEL), Interrupt(_mono(), at=5), _cfg(), tmp_path / "b")
    assert t.fit() == "interrupted"
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["global_step"] == 5
    torch.manual_seed(123)  # resuming restores weights, optimiser, position and RNG: the seed here is irrelevant
    with pytest.raises(FastSSLError, match="`resume`"):
        Trainer(build_method("rotnet", MODEL), _mono(), _cfg(), tmp_path / "b").fit()
    assert Trainer(build_method("rotnet", MODEL), _mono(), _cfg(resume=True), tmp_path / "b").fit() == "done"
    a, b = _weights(tmp_path / "a" / "ckpt.pt"), _weights(tmp_path / "b" / "ckpt.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.manual_seed(0)
    Trainer(build_method("rotnet", MODEL), _mono(n=16), _cfg(epochs=1), tmp_path).fit()
    other = dict(MODEL, width=0.2)
    with pytest.raises(FastSSLError, match="another run"):
        Trainer(build_method("rotnet", other), _mono(n=16), _cfg(epochs=2, resume=True), tmp_path).fit()
    ck = load_checkpoint(tmp_path / "ckpt.pt")
    ck["arch"]["width"] = 0.3  # arch says one thing, weights another
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(FastSSLError, match="another architecture"):
        load_trunk(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FastSSLError, match="not a readable fastssl checkpoint"):
        load_trunk(tmp_path / "junk.pt")


def test_nan_loss_is_reported_with_its_step(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.optim.lr = 1e12
    cfg.optim.nesterov = False
    cfg.log_every = 20  # read later than it happens
    with pytest.raises(FastSSLError, match=r"loss became .* at epoch \d+ step \d+"):
        Trainer(build_method("rotnet", MODEL), _mono(n=256), cfg, tmp_path).fit()
    assert not (tmp_path / "ckpt.pt").exists()  # found at the epoch-end check, before its save


def test_a_nan_is_found_at_its_own_step_though_checked_later(tmp_path):
    """Losses are read once per log interval (no host sync per step): the error still names the
    exact step, and no checkpoint is written after it."""

    class NanAtStep5(type(build_method("rotnet", MODEL))):
        def train_step(self, batch, ctx):
            out = super().train_step(batch, ctx)
            if ctx.t.global_step == 5:  # a second loss this step, non-finite
                ctx.t._pending.append((torch.tensor(float("nan")), ctx.t.epoch, ctx.t.step, ctx.t.global_step))
            return out

    m = NanAtStep5(MODEL)
    t = Trainer(m, _mono(n=16 * 8), _cfg(epochs=3, log_every=100, ckpt_every=3), tmp_path)
    with pytest.raises(FastSSLError, match=r"loss became nan at epoch 0 step 5 \(global step 5\)"):
        t.fit()
    assert load_checkpoint(tmp_path / "ckpt.pt")["global_step"] == 3  # the one before the NaN


def test_compiled_training_step_runs_on_cpu(tmp_path):
    torch.manual_seed(0)
    m = build_method("rotnet", MODEL)
    assert Trainer(m, _mono(n=32), _cfg(epochs=1, compile="on"), tmp_path).fit() == "done"
    assert hasattr(m.nets["model"], "_orig_mod")  # it really went through torch.compile
    assert load_checkpoint(tmp_path / "ckpt.pt")["global_step"] == 2


class _Toy:
    """A linearly separable toy problem: the class is the image's colour (red vs blue), noisy."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        base = torch.stack([torch.tensor([200.0, 40, 40]), torch.tensor([40.0, 40, 200])])[self.y]
        x = base.view(n, 3, 1, 1) + 40 * torch.randn(n, 3, 16, 16, generator=g)
        self.x = x.clamp(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)

    def set_epoch(self, e):
        pass

    def __len__(self):
        return len(self.y) // 32

    def __iter__(self):
        for i in range(len(self)):
            yield self.x[i * 32 : (i + 1) * 32], self.y[i * 32 : (i + 1) * 32]


def test_probes_learn_a_linearly_separable_problem():
    torch.manual_seed(0)
    trunk = AlexNet(2, **MODEL)
    cfg = ProbeConfig(epochs=3, batch_size=32, lr=0.05, milestones=[], target=64, device="cpu", progress=False)
    res = train_probes(trunk, _Toy(512, 0), _Toy(256, 1), 2, cfg)
    assert set(res["top1"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
    assert res["top1"]["conv1"] >= 95.0, res
    # adaptive pools keep each layer near the target feature count (64 here)
    assert all(0.4 * 64 <= n <= 2 * 64 for n in res["features"].values()), res["features"]
    # the result names the network it scored and the probe recipe
    assert res["network"] == {k: v for k, v in trunk.config.items() if k != "num_classes"}
    assert res["probe"]["target"] == 64 and res["probe"]["lr"] == 0.05


def _folder(root: Path, classes=("a", "b", "c"), per=10):
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per):
            a = np.clip(rng.normal(60 + 70 * k, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_repro_end_to_end_writes_table_json_and_figure(tmp_path, capsys):
    data = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["repro", "--preset", TINY, "--data", str(data), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "probes.json").read_text())
    assert list(res["rows"]) == ["random", "mono-rotnet", "full-rotnet", "supervised"]
    for row in res["rows"].values():
        assert set(row) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
        assert all(0 <= v <= 100 for v in row.values())
    assert (out / "table.md").read_text().count("\n") == 6 and (out / "probes.png").stat().st_size > 5000
    # a second run skips every finished stage
    capsys.readouterr()
    assert main(["repro", "--preset", TINY, "--data", str(data), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.count("already trained") == 3
    # DeepCluster rows in the same folder: random and supervised are reused
    capsys.readouterr()
    args = ["repro", "--preset", TINY, "--data", str(data), "--out", str(out), "--quiet", "--method", "deepcluster"]
    assert main(args) == 0
    res = json.loads((out / "probes.json").read_text())
    assert list(res["rows"]) == [
        "random",
        "mono-rotnet",
        "full-rotnet",
        "mono-deepcluster",
        "full-deepcluster",
        "supervised",
    ]
    assert (out / "table.md").read_text().count("\n") == 8
    # and BiGAN rows (streamed like RotNet, two optimisers)
    args = ["repro", "--preset", TINY, "--data", str(data), "--out", str(out), "--quiet", "--method", "bigan"]
    assert main(args) == 0
    rows = list(json.loads((out / "probes.json").read_text())["rows"])
    assert rows[-3:] == ["mono-bigan", "full-bigan", "supervised"] and len(rows) == 8
    logs = capsys.readouterr().out
    assert "supervised: already trained" in logs and "probes random: done already" in logs
    ck = load_checkpoint(out / "seed-0" / "full-deepcluster" / "ckpt.pt")
    assert ck["method"] == "deepcluster" and len(ck["method_state"]["targets"]) == 24  # 3 classes x (10 - 2 held out)
    if ffcv_available():  # a checkpoint probed on .beton files (a repro folder's data/)
        for part in ("train", "val"):
            conv = ["data", "convert", str(data), str(tmp_path / f"{part}.beton"), "--val-per-class", "2"]
            assert main([*conv, "--part", part]) == 0
        betons = ["--data", str(tmp_path / "train.beton"), "--eval-data", str(tmp_path / "val.beton")]
        args = ["probe", str(out / "seed-0" / "mono-bigan" / "ckpt.pt"), *betons, "--preset", TINY, "--quiet"]
        assert main([*args, "--out", str(tmp_path / "p")]) == 0
        assert set(json.loads((tmp_path / "p" / "probes.json").read_text())["top1"]) == set(LAYERS)
        capsys.readouterr()
        assert main([*args[:4], "--preset", TINY, "--out", str(tmp_path / "q")]) == 2  # no held-out split
        assert "give the held-out split as --eval-data" in capsys.readouterr().err and not (tmp_path / "q").exists()


@pytest.mark.slow
def test_repro_over_seeds_reports_mean_and_std(tmp_path, capsys):
    data = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    args = ["repro", "--preset", TINY, "--data", str(data), "--out", str(out), "--quiet", "--seeds", "0,1"]
    assert main(args) == 0
    res = json.loads((out / "probes.json").read_text())
    assert res["seeds"] == [0, 1] and set(res["n"].values()) == {2}
    for row, cells in res["rows"].items():
        per = [res["per_seed"][row][s] for s in ("0", "1")]
        for k, mean in cells.items():
            a, b = per[0][k], per[1][k]
            assert abs(mean - (a + b) / 2) < 0.01 and abs(res["std"][row][k] - abs(a - b) / 2**0.5) < 0.01
    # the seeds differ (the random row's init and the mono stream depend on them)
    assert res["per_seed"]["random"]["0"] != res["per_seed"]["random"]["1"]
    table = (out / "table.md").read_text()
    assert "mean ± std over 2 seeds" in table and table.count("±") >= 4 * 5
    assert (out / "seed-1" / "mono-rotnet" / "ckpt.pt").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["repro", "--preset", "nope", "--data", "{tmp}"], "unknown preset"),
        (["repro", "--preset", TINY, "--data", "{tmp}", "--seeds", "0,0"], "distinct"),
        (["repro", "--preset", TINY, "--data", "{tmp}", "--seeds", "a"], "--seeds takes integers"),
        (["repro", "--preset", TINY, "--data", "{tmp}/missing"], "not found"),
        (["repro", "--preset", TINY, "--data", "{tmp}", "--set", "probe.epochs=x"], "bad override"),
        (
            ["repro", "--preset", TINY, "--data", "{tmp}", "--method", "simclr"],
            "choose one of rotnet, deepcluster, bigan",
        ),
        (
            ["train", "--method", "bigan", "--out", "{tmp}/t", "--preset", TINY, "--set", "model.input_res=24"]
            + ["--set", "res=24", "--set", "mono.size=24"],
            "power of two",
        ),
        (["probe", "{tmp}/none.pt", "--data", "{tmp}", "--out", "{tmp}/p", "--preset", TINY], "checkpoint not found"),
        (["train", "--method", "supervised", "--out", "{tmp}/t", "--preset", TINY], "needs --data"),
        (
            [
                "train",
                "--method",
                "deepcluster",
                "--out",
                "{tmp}/t",
                "--preset",
                TINY,
                "--set",
                "mono.epoch_length=10000000000000",
            ],
            "lower [mono] epoch_length",
        ),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, words):
    if args[0] == "repro":  # never the default runs/repro in the working folder
        args = [*args, "--out", "{tmp}/r"]
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "r").exists()  # a refused repro leaves no folder, config or lock


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rotnet", "deepcluster", "bigan"])
def test_torchrun_two_processes_gloo(tmp_path, method):
    from clihelp import torchrun

    out = tmp_path / "ddp"
    torchrun(["train", "--method", method, "--preset", TINY, "--out", out, "--quiet"])
    ck = load_checkpoint(out / "ckpt.pt")
    # 64 patches per epoch, batch 16, 2 ranks: 2 steps per rank per epoch, 2 epochs
    assert ck["global_step"] == 4 and ck["epoch"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "img_per_s" in x]
    assert steps and all(x["img_per_s"] > 0 for x in steps)  # rank 0 alone writes
    if method == "deepcluster":  # clustered on rank 0, broadcast: one line per epoch
        assert [x["epoch"] for x in lines if "kmeans_mse" in x] == [0, 1]


def test_logged_metrics_are_means_over_the_steps_since_the_last_line(tmp_path):
    """With 3 steps per epoch and a line every 2 global steps, the first line of epoch 1 covers
    one step only: its mean must not be divided by 2."""
    from fastssl.methods import Method

    class Constant(Method):
        name = "constant"

        def __init__(self):
            super().__init__()
            self.nets["model"] = torch.nn.Linear(1, 1)

        def arch(self):
            return {}

        def train_step(self, batch, ctx):
            loss = self.nets["model"].weight.sum() * 0 + 1.0
            ctx.step(loss, "main")
            return {"one": torch.tensor(1.0)}

    Trainer(Constant(), _mono(n=48), _cfg(epochs=2, log_every=2), tmp_path).fit()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["global_step"] for x in lines] == [2, 4, 6]
    assert all(x["one"] == 1.0 for x in lines), lines


def test_cosine_schedule_falls_from_lr_to_near_zero_over_the_epochs(tmp_path):
    from fastssl.train import OptimConfig

    cfg = _cfg(epochs=4, log_every=4, optim=OptimConfig(lr=0.2, schedule="cosine", milestones=[1]))
    Trainer(build_method("rotnet", MODEL), _mono(n=64), cfg, tmp_path).fit()
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.2, 0.2 * (1 + 2**-0.5) / 2, 0.1, 0.2 * (1 - 2**-0.5) / 2])  # milestones unused
    with pytest.raises(FastSSLError, match="schedule must be step or cosine"):
        OptimConfig(schedule="linear").check()


def test_report_rewrites_the_summary_from_the_probe_files(tmp_path, capsys):
    probes = tmp_path / "seed-3" / "probes"
    probes.mkdir(parents=True)
    layers = ("conv1", "conv2", "conv3", "conv4", "conv5")
    for row, v in (("supervised", 60.0), ("random", 50.0), ("mono-rotnet", 55.0)):
        (probes / f"{row}.json").write_text(json.dumps({"top1": {k: v + i for i, k in enumerate(layers)}}))
    assert main(["report", "--out", str(tmp_path), "--preset", "cpu-mini"]) == 0
    res = json.loads((tmp_path / "probes.json").read_text())
    assert list(res["rows"]) == ["random", "mono-rotnet", "supervised"] and res["seeds"] == [3]
    assert res["rows"]["mono-rotnet"]["conv3"] == 57.0 and (tmp_path / "probes.png").stat().st_size > 5000
    assert main(["report", "--out", str(tmp_path / "empty")]) == 2


def test_table_marks_a_row_measured_on_fewer_seeds():
    from fastssl.report import markdown_table

    rows = {"random": dict.fromkeys(LAYERS, 50.0), "mono-rotnet-no-scale": dict.fromkeys(LAYERS, 55.0)}
    std = {"random": dict.fromkeys(LAYERS, 0.5), "mono-rotnet-no-scale": dict.fromkeys(LAYERS, 0.0)}
    lines = markdown_table(rows, std, n=2, counts={"random": 2, "mono-rotnet-no-scale": 1}).splitlines()
    assert lines[2] == "| random | " + " | ".join(["50.0 ± 0.5"] * 5) + " |"
    assert lines[3] == "| mono-rotnet-no-scale (1 seed) | " + " | ".join(["55.0"] * 5) + " |"  # no ± 0.0


def test_conv1_colour_share_splits_grey_from_colour_filters():
    from fastssl.filters import colour_shares

    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 1, 5, 5))
    grey = np.repeat(g, 3, 1)  # the same weights in R, G and B: luminance only
    opponent = np.concatenate([g, -g, np.zeros_like(g)], 1)  # R - G: channel sums are 0
    np.testing.assert_allclose(colour_shares(grey), 0.0, atol=1e-12)
    np.testing.assert_allclose(colour_shares(opponent), 1.0, atol=1e-12)
    mixed = grey + opponent  # orthogonal parts: energies add
    np.testing.assert_allclose(colour_shares(mixed), 2.0 / 5.0)
    np.testing.assert_array_equal(colour_shares(np.zeros((2, 3, 3, 3))), 0.0)  # a dead filter: no NaN
    assert colour_shares(g.repeat(2, 1)) is None  # two input channels (Sobel): not RGB


def test_filters_cli_prints_stats_and_draws_the_filters(tmp_path, capsys):
    torch.manual_seed(0)
    Trainer(build_method("rotnet", MODEL), _mono(n=16), _cfg(epochs=1), tmp_path / "a").fit()
    ck = str(tmp_path / "a" / "ckpt.pt")
    png = tmp_path / "f.png"
    assert main(["filters", ck, ck, "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    stats = [json.loads(x) for x in lines[:2]]
    w = load_trunk(ck).convs[0].weight
    assert stats[0]["filters"] == w.shape[0] and stats[0]["in_channels"] == 3
    assert 0.0 <= stats[0]["colour_share_median"] <= 1.0 and stats[0] == stats[1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = tmp_path / "one.png"
    assert main(["filters", ck, "--png", str(one)]) == 0
    width = lambda f: int.from_bytes(f.read_bytes()[16:20], "big")  # noqa: E731  (IHDR)
    assert width(png) == 2 * width(one)  # a panel per argument, even for the same folder name
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["filters", ck, "--png", str(tmp_path / "notes.txt")]) == 2  # not a PNG: kept
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["filters", str(tmp_path / "missing.pt")]) == 2
    assert "fastssl: error: checkpoint not found" in capsys.readouterr().err


def test_an_optim_key_added_later_at_its_default_is_no_recipe_change():
    from fastssl.train import recipe_changes

    old = {"seed": 0, "supervised": {"epochs": 4, "optim": {"lr": 0.05, "milestones": [3]}}}
    same = {"seed": 0, "supervised": {"epochs": 4, "optim": {"lr": 0.05, "milestones": [3], "schedule": "step"}}}
    assert recipe_changes(old, same) == {}  # a run recorded before `schedule` was a key: it stepped
    cosine = json.loads(json.dumps(same))
    cosine["supervised"]["optim"]["schedule"] = "cosine"
    assert recipe_changes(old, cosine) == {"supervised.optim.schedule": [None, "cosine"]}
    lr = json.loads(json.dumps(same))
    lr["supervised"]["optim"]["lr"] = 0.1  # a key both hold is compared as before
    assert recipe_changes(old, lr) == {"supervised.optim.lr": [0.05, 0.1]}


def test_a_run_recorded_before_its_source_photos_were_is_taken_as_it_is():
    from fastssl.train import recipe_changes

    old = {"seed": 0, "mono": {"size": 32}}
    assert recipe_changes(old, {"seed": 0, "mono": {"size": 32, "source_sha256": "ab"}}) == {}
    recorded = {"seed": 0, "mono": {"size": 32, "source_sha256": "ab"}}
    other = {"seed": 0, "mono": {"size": 32, "source_sha256": "cd"}}
    assert recipe_changes(recorded, other) == {"mono.source_sha256": ["ab", "cd"]}
