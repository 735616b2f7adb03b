"""Recipes as differences from the defaults: expansion, overrides, validation."""

from pathlib import Path

import pytest
import torch

from fastssl.config import defaults, expand, load
from fastssl.errors import FastSSLError
from fastssl.methods import METHODS

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def test_train_block_is_the_base_of_every_method_and_a_method_section_wins(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[train]\nbatch_size = 96\n[train.optim]\nlr = 0.07\n"
        '[bigan.optim]\nname = "adam"\nlr = 3e-4\n[deepcluster.optim]\nnesterov = false\n'
        "[deepcluster.settings]\nk = 30\n"
    )
    rc = load(str(recipe))
    assert rc["rotnet"]["batch_size"] == rc["deepcluster"]["batch_size"] == 96  # from [train]
    assert rc["rotnet"]["optim"]["lr"] == 0.07 and rc["bigan"]["optim"]["lr"] == 3e-4  # bigan's own
    assert rc["rotnet"]["optim"]["nesterov"] is True and rc["deepcluster"]["optim"]["nesterov"] is False
    assert rc["deepcluster"]["settings"]["k"] == 30 and rc["deepcluster"]["settings"]["pca_dim"] == 256  # default


def test_set_reaches_any_key_of_the_schema_and_train_reaches_every_method():
    rc = load(TINY, ["train.epochs=5", "rotnet.optim.betas=[0.9, 0.99]", "bigan.settings.d_dropout=0.2"])
    assert {rc[m]["epochs"] for m in METHODS} == {5}
    assert rc["rotnet"]["optim"]["betas"] == [0.9, 0.99] and rc["bigan"]["settings"]["d_dropout"] == 0.2
    rc = load(TINY, ["rotnet.epochs=7", "train.epochs=5"])  # a method's own value wins over [train]
    assert rc["rotnet"]["epochs"] == 7 and rc["deepcluster"]["epochs"] == 5


def test_one_image_size_for_res_patches_and_networks():
    with pytest.raises(FastSSLError, match=r"image sizes disagree \(res 24, mono.size 16, model.input_res 16"):
        load(TINY, ["res=24"])
    rc = load(TINY, ["res=32", "mono.size=32", "model.input_res=32"])
    assert rc["rotnet"]["model"]["input_res"] == 32


def test_set_and_spec_share_one_value_syntax():
    from fastssl.cli import parse_spec

    rc = load(TINY, ["rotnet.optim.milestones=5", "rotnet.optim.betas=0.9,0.99", "mono.scale=[0.1, 1]"])
    assert rc["rotnet"]["optim"]["milestones"] == [5] and rc["rotnet"]["optim"]["betas"] == [0.9, 0.99]
    spec = parse_spec(None, ["scale=[0.1, 1]", "initial_crop=none", "rotation=0"])
    assert spec.scale == (0.1, 1.0) and spec.initial_crop is None and spec.rotation == 0.0
    assert parse_spec(None, ["scale=0.1,1"]) == spec.replace(initial_crop=0.5, rotation=30.0)


def test_a_recipe_can_start_from_another_and_change_only_what_it_names(tmp_path):
    (tmp_path / "long.toml").write_text('base = "cpu-mini"\n[rotnet]\nepochs = 16\n[rotnet.optim]\nmilestones = [12]\n')
    (tmp_path / "longer.toml").write_text('base = "long.toml"\n[model]\nwidth = 0.5\n')
    rc, mini = load(str(tmp_path / "longer.toml")), load("cpu-mini")
    assert rc["rotnet"]["epochs"] == 16 and rc["rotnet"]["optim"]["milestones"] == [12]
    assert rc["model"]["width"] == 0.5 and rc["model"]["conv1_kernel"] == mini["model"]["conv1_kernel"] == 11
    assert rc["rotnet"]["optim"]["lr"] == mini["rotnet"]["optim"]["lr"]  # a section merged, not replaced
    changed = {k for k in rc if rc[k] != mini[k]}
    assert changed == {"model", "rotnet", "deepcluster", "bigan", "supervised", "distill"}  # every method
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(FastSSLError, match="its own base"):
        load(str(tmp_path / "a.toml"))
    (tmp_path / "c.toml").write_text("base = 3\n")
    with pytest.raises(FastSSLError, match="recipe value base must be the name of a preset"):
        load(str(tmp_path / "c.toml"))


def test_every_preset_expands_to_every_key():
    from fastssl.config import RECIPES

    keys = defaults()
    presets = sorted(p.stem for p in RECIPES.glob("*.toml"))
    assert {"cpu-mini", "cpu-mini-long", "cpu-mini-conv1", "paper"} <= set(presets)
    for preset in (*presets, TINY):
        rc = load(preset)
        assert rc.keys() == keys.keys()
        for m in METHODS:
            assert rc[m].keys() == keys[m].keys()


@pytest.mark.parametrize(
    "recipe, words",
    [
        ({"model": {"widht": 1.0}}, "unknown recipe key model.widht"),
        ({"rotnet": {"optim": {"lr": 0.1, "lf": 2}}}, "unknown recipe key rotnet.optim.lf"),
        ({"nosuch": {}}, "unknown recipe key nosuch"),
        ({"model": 3}, "model must be a section"),
    ],
)
def test_unknown_keys_in_a_recipe_are_named(recipe, words):
    with pytest.raises(FastSSLError, match=words.replace(".", r"\.")):
        expand(recipe)


def test_a_method_checks_the_recipe_it_runs_with():
    load("paper")  # 224 px is fine for rotnet
    with pytest.raises(FastSSLError, match="power of two"):
        load("paper", methods=("bigan",))
    load("paper", ["model.input_res=64", "res=64", "mono.size=64"], methods=("bigan",))


def test_a_method_is_one_class_and_one_registry_line(monkeypatch, tmp_path, capsys):
    """A toy method registered with one line trains through the CLI, with its own recipe
    section (defaults from [train], its settings dataclass checked) and no other change."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    import fastssl.methods as methods
    from fastssl.cli import main
    from fastssl.methods.base import Method
    from fastssl.models import AlexNet
    from fastssl.train import load_checkpoint

    @dataclass
    class ToySettings:
        classes: int = 3

        def check(self, where=""):
            if self.classes < 2:
                raise FastSSLError(f"{where}classes must be >= 2")

    class Toy(Method):
        """Predict which third of the batch an image is in (a pretext task for the test)."""

        name = "toy"
        Settings = ToySettings

        def __init__(self, model_kw, settings=None, *, num_classes=None, seed=0):
            super().__init__()
            self.c = (settings or ToySettings()).classes
            self.nets["model"] = AlexNet(self.c, **model_kw)

        def train_step(self, batch, ctx):
            x, _ = batch
            y = (torch.arange(len(x)) * self.c // len(x)).to(x.device)
            with ctx.autocast():
                loss = F.cross_entropy(self.nets["model"](x), y)
            ctx.step(loss, "main")
            return {"loss": loss.detach()}

    monkeypatch.setitem(methods.METHODS, "toy", Toy)  # the one line
    assert load(TINY)["toy"]["settings"] == {"classes": 3}
    with pytest.raises(FastSSLError, match="toy.settings.classes must be >= 2"):
        load(TINY, ["toy.settings.classes=1"])
    out = tmp_path / "toy"
    args = ["train", "--method", "toy", "--preset", TINY, "--out", str(out), "--quiet", "--set", "toy.epochs=1"]
    assert main(args) == 0
    ck = load_checkpoint(out / "ckpt.pt")
    assert ck["method"] == "toy" and ck["epoch"] == 1 and ck["arch"]["num_classes"] == 3


def test_a_method_can_change_the_network_and_gets_a_random_row_of_its_own():
    from fastssl.config import build_for, model_changes
    from fastssl.report import row_order
    from fastssl.repro import random_rows

    rc = load(TINY, ["deepcluster.model.sobel=true", "model.width=0.5"])
    assert rc["deepcluster"]["model"]["sobel"] is True and rc["rotnet"]["model"]["sobel"] is False
    assert rc["deepcluster"]["model"]["width"] == 0.5  # the rest of [model] still reaches the method
    assert model_changes(rc, "deepcluster") == {"sobel": True} and model_changes(rc, "rotnet") == {}
    assert build_for(rc, "deepcluster").trunk().convs[0].in_channels == 2  # Sobel's two gradients
    assert build_for(rc, "rotnet").trunk().convs[0].in_channels == 3
    rows = random_rows(rc, "deepcluster")
    assert list(rows) == ["random", "random-sobel"] and rows["random-sobel"]["sobel"] is True
    assert list(random_rows(rc, "rotnet")) == ["random"]
    names = ["supervised", "full-deepcluster", "random-sobel", "mono-deepcluster", "random"]
    assert row_order(names) == ["random", "random-sobel", "mono-deepcluster", "full-deepcluster", "supervised"]
    # a global change reaches every method: no method differs, no extra random row
    rc = load(TINY, ["model.sobel=true"])
    assert all(rc[m]["model"]["sobel"] for m in METHODS) and list(random_rows(rc, "deepcluster")) == ["random"]
    with pytest.raises(FastSSLError, match=r"deepcluster\.model\.width"):
        load(TINY, ["deepcluster.model.width=-1"])
