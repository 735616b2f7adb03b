"""fastssl plan: the stages of a repro run, their steps and images from the recipe, timed."""

import json
from pathlib import Path

from fastssl.cli import main

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def test_plan_lists_every_stage_with_steps_from_the_recipe_and_a_total(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["plan", "--preset", TINY, "--method", "deepcluster", "--steps", "2", "--train-images", "480", "--json"]
    assert main([*args, str(out)]) == 0
    res = json.loads(out.read_text())
    names = [s["name"] for s in res["stages"]]
    assert names == [
        "mono-deepcluster",
        "mono-deepcluster clustering",
        "full-deepcluster",
        "full-deepcluster clustering",
        "supervised",
        "probes (4 rows)",  # random, mono, full, supervised (tiny's DeepCluster keeps the network: no random-sobel)
    ]
    st = {s["name"]: s for s in res["stages"]}
    # tiny: 64 patches per epoch, batch 16, 2 epochs; 480 labelled images; supervised batch 8; probes 2 epochs of 8
    assert st["mono-deepcluster"]["steps"] == 2 * (64 // 16) and st["mono-deepcluster"]["images"] == 2 * 4 * 16
    assert st["full-deepcluster"]["steps"] == 2 * (480 // 16)
    assert st["supervised"]["steps"] == 2 * (480 // 8)
    assert st["probes (4 rows)"]["steps"] == 4 * 2 * (480 // 8)
    for s in res["stages"]:
        assert s["seconds_per_step"] > 0 and s["peak_memory_bytes"] > 0
        assert abs(s["estimated_seconds"] - s["steps"] * s["seconds_per_step"]) <= 0.05 + 0.01 * s["estimated_seconds"]
    assert abs(res["total_estimated_seconds"] - sum(s["estimated_seconds"] for s in res["stages"])) < 0.5


def test_plan_of_distill_times_the_teacher_and_three_students(tmp_path):
    out = tmp_path / "plan.json"
    args = ["plan", "--preset", TINY, "--method", "distill", "--steps", "1", "--train-images", "480", "--json"]
    assert main([*args, str(out), "--set", "supervised.settings.model=resnet-small"]) == 0
    st = {s["name"]: s for s in json.loads(out.read_text())["stages"]}
    assert list(st) == ["teacher", "student-mono", "student-full", "student-noise"]
    assert st["teacher"]["steps"] == 2 * (480 // 8)  # supervised: batch 8
    assert st["student-mono"]["steps"] == 2 * (64 // 16) and st["student-full"]["steps"] == 2 * (480 // 16)
    assert main(["plan", "--preset", TINY, "--method", "distill"]) == 2  # the teacher is AlexNet: refused


def test_plan_costs_the_rows_of_each_image_ablation_and_n_images_options(tmp_path):
    out = tmp_path / "plan.json"
    args = ["plan", "--preset", TINY, "--steps", "1", "--train-images", "480", "--json", str(out)]
    assert main([*args, "--ablation", "--n-images", "10"]) == 0
    st = {s["name"]: s for s in json.loads(out.read_text())["stages"]}
    ones = ["mono-rotnet", "mono-rotnet-no-scale", "mono-rotnet-no-rotation", "mono-rotnet-no-colour", "deka-rotnet"]
    assert list(st) == [*ones, "full-rotnet", "supervised", "probes (8 rows)"]
    assert {st[r]["seconds_per_step"] for r in ones} == {st["mono-rotnet"]["seconds_per_step"]}  # timed once
    assert {st[r]["steps"] for r in ones} == {2 * (64 // 16)}
    assert st["probes (8 rows)"]["steps"] == 8 * 2 * (480 // 8)
    photos = ["--image", "paper:ameyoko", "--image", "paper:animals", "--each-image"]
    distill = ["--method", "distill", "--set", "supervised.settings.model=resnet-small"]
    assert main([*args, *distill, *photos]) == 0
    st = {s["name"]: s for s in json.loads(out.read_text())["stages"]}
    assert list(st) == ["teacher", "student-mono@ameyoko", "student-mono@animals", "student-full", "student-noise"]
    before = out.read_text()
    for bad in (["--each-image"], ["--n-images", "10,10"], [*distill, "--ablation"]):
        assert main([*args, *bad]) == 2  # refused as repro refuses it, nothing written
        assert out.read_text() == before
