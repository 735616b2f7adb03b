import json

import pytest

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
    assert "aten::index" in ops  # the texel gathers
    assert 0 < sum(o["share"] for o in prof["top_ops"]) <= 1.0001


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "dry.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--json", str(out), "--seconds", "0.1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(out.read_text())
    done = {(a["backend"], a["size"]) for a in rep["augment"] if "patches_per_s" in a}
    assert {("numba", 16), ("numba", 32), ("torch", 16), ("torch", 32)} <= done
    assert [r["size"] for r in rep["sampler"]] == [16, 32] and all(r["patches_per_s"] > 0 for r in rep["sampler"])
    # where the torch backend's time goes, per size: its torch ops, largest share first
    assert [r["size"] for r in rep["profile"]] == [16, 32]
    for r in rep["profile"]:
        shares = [o["share"] for o in r["top_ops"]]
        assert all(o["op"].startswith("aten::") for o in r["top_ops"]), r
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    peak = rep["environment"]["matmul_peak"]["tflops"]
    # the training rows: through the trainer, each with its FLOP rate and MFU against the peak
    steps = [r for r in rep["train"] + rep["methods"] if "method" in r]
    assert [r["method"] for r in steps] == ["rotnet"] * 3 + ["deepcluster", "bigan", "supervised", "probe", "distill"]
    for r in steps:
        assert "error" not in r, r
        assert r["flops_per_step"] > 0 and 0 <= r["data_share"] <= 1
        assert abs(r["tflops"] - r["flops_per_step"] / r["ms_per_step"] / 1e9) <= 0.02 * r["tflops"] + 1e-4
        assert abs(r["mfu"] - r["tflops"] / peak) <= 1e-3
    eager32, _, compiled = steps[:3]
    assert (eager32["compile"], eager32["amp"], compiled["compile"], compiled["amp"]) == ("off", "off", "on", "bf16")
    assert eager32["flops_per_step"] == compiled["flops_per_step"]  # the same step, counted the same
    sp = rep["train"][-1]["speedup"]
    assert sp == round(eager32["ms_per_step"] / compiled["ms_per_step"], 2)
    # plan: each paper row's hours, and the whole table counts supervised and its probe once
    pl = rep["plan"]
    assert set(pl["methods"]) == {"rotnet", "deepcluster", "bigan"}
    assert pl["table_s"] >= max(m["total_s"] for m in pl["methods"].values()) - 0.2
    assert pl["table_s"] < sum(m["total_s"] for m in pl["methods"].values())
    cl = rep["clustering"]
    assert (cl["n"], cl["k"]) == (2048, 64) and 1 <= cl["clusters_used"] <= 64
    assert cl["seconds_total"] >= cl["seconds_features"] + cl["seconds_kmeans"] - 0.01
    verdict = {v["what"]: v for v in rep["verdict"]}
    v = verdict["compiled bf16 channels-last / eager fp32, per step"]
    assert v["got"] == sp and v["met"] == (sp >= 2.0)
    v = verdict["data wait of a compiled bf16 channels-last RotNet step"]
    assert v["got"] == compiled["data_share"] and v["met"] == (v["got"] < 0.05)
    assert "| target | wanted | measured | met |" in proc.stdout and "| whole table |" in proc.stdout


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
