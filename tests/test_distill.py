"""Distillation from patches (``--method distill``) and the model registry."""

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
from fastssl.methods import build_method
from fastssl.methods.distill import DistillSettings, cutmix, distill_loss, pad_crop
from fastssl.models import NAMED, build_model, model_key
from fastssl.pretrained import load_network
from fastssl.train import TrainConfig, Trainer, load_checkpoint

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def _batch(b=6, side=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, generator=g)
    return x.contiguous(memory_format=torch.channels_last)


def test_named_networks_build_classify_and_rebuild_from_their_config():
    for name in ("wrn-16-4", "resnet-small"):
        net = build_model(name, 7)
        y = net(_batch(2, 32))
        assert y.shape == (2, 7)
        again = type(net)(**net.config)
        again.load_state_dict(net.state_dict())  # the config alone rebuilds the shape
    assert set(NAMED) >= {"wrn-16-4", "wrn-40-4", "resnet-small", "resnet18", "resnet50"}
    assert model_key(build_model("resnet18", 3)) == "resnet"
    with pytest.raises(FastSSLError, match="unknown model"):
        build_model("vgg", 3)
    n = sum(p.numel() for p in build_model("wrn-16-4", 10).parameters())
    assert 2.7e6 < n < 2.8e6  # WRN-16-4 of the wide-ResNet paper: 2.7M


def test_an_alexnet_student_or_teacher_takes_the_recipes_model_section(tmp_path):
    ck = _teacher(tmp_path)
    kw = {"small": True, "input_res": 16, "width": 0.1, "fc_width": 32}
    for name, settings, classes in (("distill", {"teacher": str(ck)}, None), ("supervised", {}, 3)):
        m = build_method(name, kw, classes, {**settings, "model": "alexnet"})
        assert model_key(m.nets["model"]) == "alexnet" and m.nets["model"].config["fc_width"] == 32
        m = build_method(name, kw, classes, {**settings, "model": "resnet-small"})
        assert model_key(m.nets["model"]) == "resnet"  # a named network keeps its own shape


def test_kl_of_identical_logits_is_zero_and_grows_apart():
    t = torch.randn(5, 10)
    assert distill_loss(t, t.clone(), 8.0).item() == 0.0
    s = torch.randn(5, 10, requires_grad=True)
    loss = distill_loss(s, t, 8.0)
    assert loss.item() > 0
    loss.backward()
    with torch.no_grad():  # a step down the gradient moves the student towards the teacher
        assert distill_loss(s - 50 * s.grad, t, 8.0) < loss


def test_cutmix_keeps_the_batch_and_pastes_one_box_of_a_partner():
    torch.manual_seed(3)
    x = _batch()
    out, perm, (top, bottom, left, right) = cutmix(x, 1.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    inside = torch.zeros(x.shape[2:], dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert torch.equal(out[:, :, inside], x[perm][:, :, inside])
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert sorted(perm.tolist()) == list(range(x.shape[0]))


def test_pad_crop_shifts_each_image_within_its_zero_padding():
    torch.manual_seed(1)
    x = _batch(8, 10)
    out = pad_crop(x, 2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        windows = [padded[i, :, dy : dy + 10, dx : dx + 10] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)  # a window of its own padded image


def _teacher(tmp_path, classes=3):
    """A trained-for-a-step checkpoint of a small classifier, as `train --method supervised --model`."""
    torch.manual_seed(0)
    m = build_method("supervised", {}, classes, {"model": "resnet-small"})
    x, y = _batch(8, 16), torch.arange(8) % classes
    cfg = TrainConfig(epochs=1, batch_size=8, amp="off", compile="off", device="cpu", progress=False)

    class One:
        def __len__(self):
            return 1

        def set_epoch(self, e):
            pass

        def iter_from(self, step):
            yield from [(x, y)][step:]

    Trainer(m, One(), cfg, tmp_path / "teacher").fit()
    return tmp_path / "teacher" / "ckpt.pt"


def test_the_teacher_labels_the_mixed_images_themselves(tmp_path):
    ck = _teacher(tmp_path)
    m = build_method("distill", {}, None, {"teacher": str(ck), "model": "resnet-small"})
    assert m.num_classes == 3 and not any(p.requires_grad for p in m.teacher.parameters())

    class Ctx:
        def autocast(self):
            return torch.autocast("cpu", enabled=False)

    torch.manual_seed(2)
    x = m.augment(_batch(6, 16))
    t = m.targets(x, Ctx())
    with torch.no_grad():
        assert torch.allclose(t, load_network(ck).eval()(x), atol=1e-5)


def test_distill_needs_a_teacher_and_the_same_classes(tmp_path):
    with pytest.raises(FastSSLError, match="needs a teacher"):
        build_method("distill", {}, None, {})
    ck = _teacher(tmp_path)
    with pytest.raises(FastSSLError, match="3 classes"):
        build_method("distill", {}, 10, {"teacher": str(ck)})
    with pytest.raises(FastSSLError, match="model"):
        DistillSettings(model="vgg").check("distill.settings.")


def _agreement(student, teacher, x) -> float:
    with torch.no_grad():
        return (student.eval()(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean().item()


@pytest.mark.slow
def test_a_short_distillation_moves_the_student_towards_the_teacher(tmp_path, capsys):
    """Teacher: supervised resnet-small on a colour-coded labelled set; student: patches of one
    photo only. Its agreement with the teacher on the labelled images goes up."""
    rng = np.random.default_rng(0)
    root = _colour_classes(tmp_path / "imgs")
    base = ["train", "--preset", TINY, "--quiet", "--set", "loader=pytorch"]
    assert main([*base, "--method", "supervised", "--model", "resnet-small", "--data", str(root), "--out",
                 str(tmp_path / "t"), "--set", "supervised.epochs=6"]) == 0  # fmt: skip
    teacher = tmp_path / "t" / "ckpt.pt"
    capsys.readouterr()
    assert main(["score", str(teacher), "--data", str(root), "--preset", TINY, "--set", "loader=pytorch"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] > 60  # it learnt the colours

    photo = tmp_path / "photo.png"  # one image of red, green and blue regions (none of the labelled images)
    a = np.zeros((96, 96, 3), np.uint8)
    for k in range(3):
        a[:, 32 * k : 32 * k + 32, k] = 160 + 20 * k
    Image.fromarray(np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)).save(photo)
    sets = ["--set", "distill.epochs=8", "--set", "distill.optim.name=adam", "--set", "distill.optim.lr=0.003",
            "--set", "distill.optim.weight_decay=0", "--set", "distill.optim.milestones=[]"]  # fmt: skip
    args = [*base, "--method", "distill", "--teacher", str(teacher), "--model", "resnet-small", "--image", str(photo)]
    assert main([*args, "--out", str(tmp_path / "s"), *sets]) == 0
    ck = load_checkpoint(tmp_path / "s" / "ckpt.pt")
    assert ck["method"] == "distill" and ck["arch"]["model"] == "resnet"
    from fastssl.data.sources import open_source

    src = open_source(root)
    x = torch.from_numpy(np.stack([src.image(i) for i in range(len(src))])).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    t = load_network(teacher)
    torch.manual_seed(0)
    before = _agreement(build_model("resnet-small", 3), t, x)
    after = _agreement(load_network(tmp_path / "s" / "ckpt.pt"), t, x)
    assert after > before + 0.2, (before, after)


def test_distill_resumes_bit_exactly(tmp_path):
    ck = _teacher(tmp_path)
    settings = {"teacher": str(ck), "model": "resnet-small"}

    def mono():
        return MonoData(MonoSource(None, AugmentSpec(size=16), batch_size=8, epoch_length=32, seed=0))

    def cfg(**kw):
        return TrainConfig(epochs=2, batch_size=8, amp="off", compile="off", device="cpu", progress=False, **kw)

    torch.manual_seed(0)
    Trainer(build_method("distill", {}, None, settings), mono(), cfg(), tmp_path / "a").fit()
    torch.manual_seed(0)
    assert Trainer(build_method("distill", {}, None, settings), Interrupt(mono(), 5), cfg(), tmp_path / "b").fit() == (
        "interrupted"
    )
    torch.manual_seed(9)
    t = Trainer(build_method("distill", {}, None, settings), mono(), cfg(resume=True), tmp_path / "b")
    assert t.fit() == "done"
    a, b = (load_checkpoint(tmp_path / r / "ckpt.pt")["nets"]["model"] for r in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_distill_under_torchrun_trains_one_student_on_two_ranks(tmp_path):
    """Two gloo ranks train one student (DDP) beside a frozen teacher; only the student is saved."""
    from clihelp import torchrun

    ck = _teacher(tmp_path)
    out = tmp_path / "ddp"
    torchrun(["train", "--method", "distill", "--teacher", ck, "--model", "resnet-small", "--preset", TINY,
              "--out", out, "--quiet"])  # fmt: skip
    got = load_checkpoint(out / "ckpt.pt")
    # 64 patches per epoch, batch 16, 2 ranks: 2 steps per rank per epoch, 2 epochs
    assert got["method"] == "distill" and got["global_step"] == 4 and got["epoch"] == 2
    assert set(got["nets"]) == {"model"}  # the teacher is not saved with the student
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in steps if "loss" in x]
    assert steps and all(np.isfinite(x["loss"]) for x in steps)


def test_a_student_resumes_with_its_teacher_moved_but_not_with_another(tmp_path, capsys):
    from clihelp import one_line, run

    ck = _teacher(tmp_path)
    base = ["train", "--method", "distill", "--model", "resnet-small", "--preset", TINY, "--quiet"]
    out = tmp_path / "s"
    assert main([*map(str, base), "--teacher", str(ck), "--out", str(out), "--set", "distill.epochs=1"]) == 0
    moved = tmp_path / "moved.pt"
    moved.write_bytes(ck.read_bytes())
    assert main([*map(str, base), "--teacher", str(moved), "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "ckpt.pt")["epoch"] == 2  # the same teacher, from another path
    other = _teacher(tmp_path / "b", classes=3)
    net = load_checkpoint(other)  # the same shape, other weights
    net["nets"]["model"]["fc.bias"] += 1
    torch.save(net, other)
    capsys.readouterr()
    one_line(
        *run([*base, "--teacher", other, "--out", out, "--resume", "--set", "distill.epochs=3"], capsys),
        "teacher_sha256",
    )


def test_bad_distill_and_score_arguments_are_one_line(tmp_path, capsys):
    from clihelp import one_line, run

    ck = _teacher(tmp_path)
    base = ["train", "--preset", TINY, "--quiet", "--out", tmp_path / "x"]
    one_line(*run([*base, "--method", "distill"], capsys), "needs a teacher")
    one_line(*run([*base, "--method", "rotnet", "--model", "wrn-16-4"], capsys), "trains AlexNet")
    one_line(*run([*base, "--method", "supervised", "--teacher", ck, "--data", tmp_path], capsys), "--method distill")
    one_line(*run([*base, "--method", "distill", "--teacher", ck, "--model", "vgg"], capsys), "distill.settings.model")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    root = tmp_path / "imgs"
    for c in "ab":
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / c / "0.png")
    one_line(*run(["score", ck, "--data", root, "--preset", TINY], capsys), "classifies 3 classes")


def _colour_classes(root: Path, per_class=12, side=16, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for k, c in enumerate("abc"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            a = np.zeros((side, side, 3), np.uint8)
            a[..., k] = 200
            Image.fromarray(np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


@pytest.mark.slow
def test_repro_distill_trains_and_scores_its_four_rows(tmp_path, capsys):
    from fastssl.repro_distill import ROWS

    root = _colour_classes(tmp_path / "imgs")
    out = tmp_path / "run"
    args = ["repro", "--method", "distill", "--preset", TINY, "--data", root, "--out", out, "--quiet"]
    args += ["--set", "supervised.settings.model=resnet-small", "--set", "distill.settings.model=resnet-small"]
    assert main([str(a) for a in args]) == 0
    res = json.loads((out / "scores.json").read_text())
    assert list(res["rows"]) == list(ROWS)
    assert all(0 <= r["mean"] <= 100 for r in res["rows"].values())
    assert "of_teacher" in res["rows"]["student-mono"] and "of_teacher" not in res["rows"]["teacher"]
    assert "| student-noise |" in (out / "scores.md").read_text() and (out / "scores.png").stat().st_size > 0
    for row in ROWS[1:]:  # every student learnt from that seed's teacher
        ck = load_checkpoint(out / "seed-0" / row / "ckpt.pt")
        assert ck["recipe"]["distill"]["settings"]["teacher"] == str(out / "seed-0" / "teacher" / "ckpt.pt")
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0  # again: every row reused, the same summary
    said = capsys.readouterr().out
    assert "teacher: already trained" in said and "score student-noise: done already" in said
    assert json.loads((out / "scores.json").read_text()) == res
    assert main([str(a) for a in [*args, "--n-images", "10"]]) == 2
    # one student per photo: the teacher, full-data and noise rows reused, two students trained
    rng = np.random.default_rng(4)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    photos = ["--image", tmp_path / "a.png", "--image", tmp_path / "b.png", "--each-image"]
    capsys.readouterr()
    assert main([str(a) for a in [*args, *photos]]) == 0
    said = capsys.readouterr().out
    assert "teacher: already trained" in said and "student-noise: already trained" in said
    rows = list(json.loads((out / "scores.json").read_text())["rows"])
    assert rows == ["teacher", "student-mono", "student-mono@a", "student-mono@b", "student-full", "student-noise"]
