"""``fastssl bench train``: the fields of a row, the table, and bad input. No speed is asserted."""

import json

import pytest
import torch
from clihelp import one_line, run

from fastssl.bench_train import Row, format_train_table, run_row, variants
from fastssl.data.loaders import ffcv_available

TINY = ["train.batch_size=8", "mono.epoch_length=64", "probe.batch_size=16"]


def _setup(**kw):
    return {
        "preset": "cpu-mini",
        "overrides": TINY,
        "image": None,
        "device": "cpu",
        "threads": 1,
        "warmup": 1,
        "steps": 3,
        **kw,
    }


def _check_row(r, batch):
    assert "error" not in r, r
    assert r["batch"] == batch and r["images_per_s"] > 0
    phases = sum(r["ms"].values())
    assert abs(phases - r["ms_per_step"]) <= 0.1 * r["ms_per_step"] + 0.5  # the split adds up to the step
    assert 0 <= r["data_share"] <= 1 and r["ms"]["backward"] > 0 and r["ms"]["optimiser"] > 0
    assert abs(r["images_per_s"] - 1e3 * batch / r["ms_per_step"]) <= 0.05 * r["images_per_s"] + 1
    assert r["peak_mib"] > 0 and r["peak_of"] == "process RSS"


@pytest.mark.slow
@pytest.mark.parametrize("base", [False, True])
def test_a_rotnet_row_splits_its_step_and_counts_source_images(base):
    r = run_row(Row("rotnet", "off", "bf16" if not base else "off", "channels_last", base=base), _setup(profile=4))
    _check_row(r, 8)
    ops = r["top_ops"]
    assert len(ops) == 4 and all(0 < o["share"] <= 1 for o in ops) and sum(o["share"] for o in ops) <= 1.001
    assert [o["share"] for o in ops] == sorted((o["share"] for o in ops), reverse=True)
    assert r["amp"] == ("off" if base else "bf16") and r["compile"] == "off" and r["compile_s"] is None
    assert r["augment_backend"] == "numba"  # auto on the CPU
    assert r["setup"].startswith("cpu, 1 threads")


@pytest.mark.slow
def test_deepcluster_rows_time_their_clustering_apart():
    r = run_row(
        Row("deepcluster", "off", "off", "contiguous", "resident"),
        _setup(overrides=TINY + ["deepcluster.settings.k=4"]),
    )
    _check_row(r, 8)
    assert r["ms"]["data"] < r["ms_per_step"] and r["layout"] == "contiguous"
    assert r["setup"].endswith("contiguous")


@pytest.mark.slow
@pytest.mark.skipif(not ffcv_available(), reason="FFCV is optional (pip install '.[ffcv]')")
def test_the_probe_supervised_and_full_data_rows_read_a_beton(tmp_path):
    from fastssl.bench_train import synthetic_beton

    beton = synthetic_beton(tmp_path, None, 32, per_class=8, classes=4)
    for name, batch, data in (("probe", 16, "source"), ("supervised", 8, "source"), ("rotnet", 8, "labelled")):
        _check_row(run_row(Row(name, "off", "off", "channels_last", data), _setup(data=str(beton))), batch)
    # distill: the student's step with an untrained teacher of the recipe's network, on both sources
    small = ["distill.batch_size=8", "supervised.settings.model=resnet-small", "distill.settings.model=resnet-small"]
    for data in ("source", "labelled"):
        row = Row("distill", "off", "off", "channels_last", data)
        _check_row(run_row(row, _setup(data=str(beton), overrides=TINY + small)), 8)


@pytest.mark.slow
def test_without_ffcv_the_labelled_rows_read_an_image_folder(tmp_path, monkeypatch):
    import fastssl.data.loaders as loaders
    from fastssl.bench_train import synthetic_labelled

    monkeypatch.setattr(loaders, "ffcv_available", lambda: False)
    folder = synthetic_labelled(tmp_path, None, 32, per_class=8, classes=3)
    assert folder.is_dir() and len(list(folder.glob("class*/*.jpg"))) == 24 and not list(tmp_path.glob("*.beton"))
    rows = {}
    for name, batch in (("supervised", 8), ("probe", 16)):
        r = run_row(Row(name, "off", "off", "channels_last"), _setup(data=str(folder), peak_tflops=1.0))
        _check_row(r, batch)
        assert r["augment_backend"] is None  # labelled data: nothing rendered
        rows[name] = r
    # FLOPs follow the network: the probe's frozen trunk costs no backward through its convs
    assert rows["supervised"]["flops_per_step"] / 8 > rows["probe"]["flops_per_step"] / 16
    assert all(r["mfu"] == pytest.approx(r["tflops"], abs=1e-4) for r in rows.values())  # a peak of 1 TFLOP/s


def test_a_step_counts_its_flops_in_proportion_to_its_batch():
    from fastssl.bench_train import Row, run_row

    def flops(bs):
        over = [f"train.batch_size={bs}", "mono.epoch_length=64"]
        return run_row(Row("rotnet", "off", "off", "channels_last"), _setup(overrides=over, steps=1))["flops_per_step"]

    assert flops(8) == 2 * flops(4) > 0


def test_rounds_report_the_median_run_of_a_row():
    from fastssl.bench_train import _median

    runs = [{"images_per_s": v, "k": i} for i, v in enumerate([30.0, 10.0, 20.0])]
    m = _median(runs + [{"error": "x"}])
    assert m["images_per_s"] == 20.0 and m["k"] == 2 and m["rounds"] == [10.0, 20.0, 30.0]
    assert _median([{"error": "x"}]) == {"error": "x"}


def test_the_variants_are_those_the_device_supports():
    cpu = variants("cpu")
    assert len(cpu) == 8 and {a for _, a, _ in cpu} == {"off", "bf16"}
    assert variants("cpu", compiles=("off",), amps=["fp16", "bf16"], layouts=("contiguous",)) == [
        ("off", "bf16", "contiguous")
    ]


def test_the_table_names_the_machine_and_compares_with_the_base_row():
    row = {
        "method": "rotnet",
        "compile": "off",
        "amp": "off",
        "layout": "channels_last",
        "data": "source",
        "images_per_s": 100.0,
        "ms_per_step": 80.0,
        "ms": {"data": 1.0, "forward": 30.0, "backward": 40.0, "optimiser": 9.0},
        "data_share": 0.0125,
        "peak_mib": 500.0,
        "peak_of": "process RSS",
        "compile_s": None,
    }
    fast = {**row, "amp": "bf16", "images_per_s": 250.0, "base": False}
    run_ = {
        "machine": {"cpu": "Some CPU", "cpu_flags": ["amx_bf16"], "torch": "2.x"},
        "preset": "cpu-mini",
        "overrides": [],
        "setup": {"threads": 2, "warmup": 3, "steps": 10},
        "rows": [{**row, "base": True}, fast, {**row, "method": "probe", "error": "ValueError: x"}],
    }
    text = format_train_table(run_)
    assert "Some CPU (amx_bf16), 2 threads" in text
    lines = text.splitlines()
    assert any("bf16" in ln and "2.50x" in ln for ln in lines)
    assert any(ln.split()[:2] == ["rotnet", "base"] and "1.00x" in ln for ln in lines)
    assert any("probe" in ln and "failed: ValueError: x" in ln for ln in lines)


@pytest.mark.parametrize(
    "args,words",
    [
        (["--method", "simclr"], "unknown method 'simclr'"),
        (["--compile", "maybe"], "--compile takes off, on"),
        (["--amp", "fp8"], "--amp takes off, bf16, fp16"),
        (["--steps", "0"], "--warmup, --steps and --rounds must be >= 1"),
        (["--rounds", "0"], "--warmup, --steps and --rounds must be >= 1"),
        (["--set", "train.batch_size=0"], "batch_size"),
        (["--data", "x.tar", "--method", "probe"], "--data must be a .beton (fastssl data convert makes one) or"),
    ],
)
def test_bad_input_is_one_line(args, words, capsys, tmp_path):
    out = tmp_path / "b.json"
    rc, err = run(["bench", "train", *args, "--json", out], capsys)
    one_line(rc, err, words)
    assert not out.exists()


def test_the_run_is_written_as_json(tmp_path, capsys, monkeypatch):
    """The CLI writes what bench_train returned (rows measured elsewhere in this file)."""
    import fastssl.bench_train as bt

    fake = {
        "machine": {"cpu": "c", "cpu_flags": [], "torch": torch.__version__},
        "preset": "cpu-mini",
        "overrides": [],
        "setup": {"threads": 1, "warmup": 1, "steps": 1},
        "rows": [],
    }
    seen = {}

    def fake_bench(methods, **kw):
        seen.update(kw, methods=methods)
        return fake

    monkeypatch.setattr(bt, "bench_train", fake_bench)
    out = tmp_path / "b.json"
    rc, _ = run(["bench", "train", "--method", "rotnet", "--compile", "off", "--amp", "bf16", "--json", out], capsys)
    assert rc == 0 and json.loads(out.read_text()) == fake
    assert seen["methods"] == ["rotnet"] and seen["compiles"] == ["off"] and seen["amps"] == ["bf16"]


def test_a_row_whose_process_dies_is_reported_at_once_not_waited_for():
    """A row's process that ends without a result (killed, a crash in native code) is reported
    with its exit code as soon as it has ended, not after the row's timeout."""
    import multiprocessing as mp
    import os
    import time

    from fastssl.bench_train import _result

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=os._exit, args=(3,))
    p.start()
    t0 = time.monotonic()
    assert _result(queue, p, timeout=120) == 3
    assert time.monotonic() - t0 < 30
    p.join()
    ok = ctx.Process(target=queue.put, args=({"images_per_s": 1.0},))
    ok.start()
    assert _result(queue, ok, timeout=120) == {"images_per_s": 1.0}
    ok.join()
