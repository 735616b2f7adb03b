import json

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
    assert "vs numba" in capsys.readouterr().out


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
