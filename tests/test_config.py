"""Recipes as differences from the defaults: expansion, overrides, validation."""

from pathlib import Path

import pytest

from fastssl.config import defaults, expand, load
from fastssl.errors import FastSSLError
from fastssl.methods import METHODS

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def test_train_block_is_the_base_of_every_method_and_a_method_section_wins():
    rc = load("cpu-mini")
    assert rc["rotnet"]["batch_size"] == rc["deepcluster"]["batch_size"] == 128  # from [train]
    assert rc["rotnet"]["optim"]["lr"] == 0.05 and rc["bigan"]["optim"]["lr"] == 2e-4  # bigan's own
    assert rc["rotnet"]["optim"]["nesterov"] is True and rc["deepcluster"]["optim"]["nesterov"] is False
    assert rc["deepcluster"]["settings"]["k"] == 200 and rc["deepcluster"]["settings"]["pca_dim"] == 256  # default


def test_set_reaches_any_key_of_the_schema_and_train_reaches_every_method():
    rc = load(TINY, ["train.epochs=5", "rotnet.optim.betas=[0.9, 0.99]", "bigan.settings.d_dropout=0.2"])
    assert {rc[m]["epochs"] for m in METHODS} == {5}
    assert rc["rotnet"]["optim"]["betas"] == [0.9, 0.99] and rc["bigan"]["settings"]["d_dropout"] == 0.2
    rc = load(TINY, ["rotnet.epochs=7", "train.epochs=5"])  # a method's own value wins over [train]
    assert rc["rotnet"]["epochs"] == 7 and rc["deepcluster"]["epochs"] == 5


def test_every_preset_expands_to_every_key():
    keys = defaults()
    for preset in ("cpu-mini", "paper", TINY):
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
