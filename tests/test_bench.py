import json

import pytest
import torch

from fastssl.cli import main


def test_bench_augment_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(
        [
            "bench",
            "augment",
            "--size",
            "16",
            "--seconds",
            "0.3",
            "--threads",
            "1",
            "--only",
            "fastssl-numba",
            "--only",
            "pil-chain",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    run = json.loads(out.read_text())
    assert run["size"] == 16 and run["threads"] == 1
    names = {r["name"]: r for r in run["results"]}
    assert set(names) == {"fastssl-numba", "pil-chain"}
    assert all(r["patches_per_s"] > 0 for r in run["results"])
    import numba

    assert names["fastssl-numba"]["setup"] == f"1 process x 1 threads, numba {numba.threading_layer()} threads"
    assert "vs numba" in capsys.readouterr().out


def test_rates_and_ratios_are_computed_from_what_was_done(monkeypatch):
    import time

    from fastssl import bench

    def make():
        def fn():
            time.sleep(0.01)

        return fn, 10  # 10 patches a call, 100 calls a second at most

    rate = bench._run_in_process(make, 0.3)
    assert 400 < rate <= 1000 * 1.02
    run = {
        "size": 64,
        "threads": 2,
        "results": [
            {"name": "fastssl-numba", "patches_per_s": 1000.0, "setup": "x"},
            {"name": "kornia", "patches_per_s": 40.0, "setup": "x"},
            {"name": "albumentations", "patches_per_s": 250.0, "setup": "x"},
        ],
        "skipped": [{"name": "torchvision-v2", "reason": "not installed"}],
    }
    table = bench.format_table(run)
    assert "fastssl-numba / fastest peer = 4.00x" in table and "0.250x" in table and "skipped: not installed" in table
    assert "fastssl-numba = 2 Mpix/s per core" in table  # 1000 x 64^2 / 2 threads


def test_bench_profile_and_agreement(tmp_path, capsys):
    assert main(["bench", "augment", "--profile", "--size", "16", "--threads", "1"]) == 0
    prof = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert set(prof["us_per_patch"]) == {"sample", "warp", "warp+colour"}
    png = tmp_path / "s.png"
    assert (
        main(
            ["bench", "agreement", "--size", "16", "--n", "16", "--json", str(tmp_path / "a.json"), "--plot", str(png)]
        )
        == 0
    )
    assert png.stat().st_size > 1000
    assert set(json.loads((tmp_path / "a.json").read_text())["spectrum_db"]) >= {"pil", "fastssl"}


def test_profile_of_the_torch_backend_names_its_ops(capsys):
    assert main(["bench", "augment", "--profile", "--backend", "torch", "--size", "16", "--threads", "1"]) == 0
    prof = json.loads([x for x in capsys.readouterr().out.splitlines() if x.startswith("{")][0])
    ops = [o["op"] for o in prof["top_ops"]]
    assert "aten::grid_sampler_2d" in ops or any("grid" in o for o in ops)
    assert 0 < sum(o["share"] for o in prof["top_ops"]) <= 1.0001


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "dry.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    r = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--json", str(out), "--seconds", "0.1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    done = {(a["backend"], a["size"]) for a in rep["augment"] if "patches_per_s" in a}
    assert {("numba", 16), ("numba", 32), ("torch", 16), ("torch", 32)} <= done
    assert rep["train"][0]["config"] == "eager-fp32" and rep["train"][-1]["speedup"] > 0
    assert all(0 <= d["data_wait_share"] <= 1 for d in rep["data_wait"] if "data_wait_share" in d)
    from fastssl.mono import backend_available

    dali = {"dali"} if backend_available("dali", torch.device("cpu")) is None else set()  # an optional extra
    assert {d["backend"] for d in rep["data_wait"] if "data_wait_share" in d} == {"numba", "torch"} | dali
    assert [r["size"] for r in rep["sampler"]] == [16, 32] and all(r["patches_per_s"] > 0 for r in rep["sampler"])
    verdict = {v["what"]: v for v in rep["verdict"]}
    sp = verdict["compiled bf16 channels-last / eager fp32"]
    assert sp["got"] == rep["train"][-1]["speedup"] and sp["met"] == (sp["got"] >= 2.0)
    assert "| target | wanted | measured | met |" in r.stdout


def test_kernel_roofline_reports_every_pass_and_finds_vector_loops(tmp_path):
    """The roofline script on a small patch: a time and a byte count for every pass, and the
    loops it reads out of the machine code are the compute loops (the blend and the
    coordinates vectorised: several pixels per trip)."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "roof.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_roofline.py"
    r = subprocess.run(
        [sys.executable, str(script), "--size", "32", "--seconds", "0.05", "--json", str(out), "--asm", "_blend"]
        + ["--threads", "2", "--batch", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    passes = {p["pass"]: p for p in rep["passes"]}
    assert {"_coords", "_taps", "_blend", "_blend_store"} <= {p.split()[0] for p in passes}
    assert all(p["ns_per_pixel"] > 0 and p["bytes_per_pixel"] > 0 for p in rep["passes"])
    assert passes["_blend"]["pixels_per_iteration"] >= 4 and passes["_coords"]["pixels_per_iteration"] >= 4
    assert passes["hue (_row_colour op 3)"]["pixels_per_iteration"] >= 4  # the hue op's loop, vectorised too
    assert "cvtdq2ps" in r.stdout  # the blend's loop, printed: int-to-float conversions of the texels
    assert rep["kernel_threads"] == 2 and rep["kernel_batch"] == 4
    assert all(v > 0 for v in rep["kernel_ns_per_pixel"].values())
    assert "fresh batches of 4 on 2 thread(s)" in r.stdout
