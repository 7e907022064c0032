"""benchmarks/main_job.py: the report's arithmetic, and a smoke run of the whole job on the tiny model."""

from __future__ import annotations

import json

import pytest

from tests.script_loader import load_script
from tests.tiny_models import SMALL_EVAL


def _module():
    return load_script("benchmarks/main_job.py")


@pytest.mark.unit
def test_time_to_a_level_is_the_first_evaluation_reaching_it():
    main_job = _module()
    points = [(0.0, 0.40), (100.0, 0.55), (200.0, 0.91), (300.0, 0.88)]
    assert main_job.first_reaching(points, 0.90) == 200.0
    assert main_job.first_reaching(points, 0.65) == 200.0
    assert main_job.first_reaching(points, 0.95) is None


@pytest.mark.unit
def test_report_lists_each_category_with_intervals_the_paired_gain_and_the_quality_watch():
    main_job = _module()
    summary = {"num_prompts": 2, "num_images": 8, "images_per_tag": {"single_object": 8}}
    base = {**summary, "single_object": 0.5, "overall": 0.40,
            "ci": {"single_object": [0.2, 0.8], "overall": [0.3, 0.5]}}
    final = {**summary, "single_object": 1.0, "overall": 0.70,
             "ci": {"single_object": [1.0, 1.0], "overall": [0.6, 0.8]}}
    comparison = {"differences": {
        "accuracy": {"single_object": {"before": 0.5, "after": 1.0, "difference": 0.5, "ci": [0.2, 0.8]},
                     "overall": {"before": 0.4, "after": 0.7, "difference": 0.3, "ci": [0.12, 0.45]}},
        "reward/shapes_quality": {"overall": {"before": 0.98, "after": 0.90, "difference": -0.08, "ci": [-0.1, -0.05]}}},
        "verdicts": ["accuracy overall: +0.300 (95% CI +0.120 to +0.450): a real gain (the interval lies above zero)"]}
    text = main_job.report(base, final, comparison, None, [(0.0, 0.40), (60.0, 0.70)], [(0.0, 0.0), (60.0, 0.12)],
                           0.90, 0.10, 5, 90.0, 40)
    assert "| single_object | 0.500 [0.200, 0.800] | 1.000 [1.000, 1.000] | +0.500 [+0.200, +0.800] |" in text
    assert "| **overall** | 0.400 [0.300, 0.500] | 0.700 [0.600, 0.800] | +0.300 [+0.120, +0.450] |" in text
    assert "| 0.980 | 0.900 | -0.080 [-0.100, -0.050] |" in text  # the watch shows a drop in cleanliness
    assert "to overall >= 0.90: not reached" in text and ">= +0.10: 1.0 min of training" in text
    assert "a real gain" in text
    section = main_job.against_base_guidance(comparison, 4.5)
    assert "sampled with CFG 4.5" in section and "| **overall** | 0.400 | 0.700 | +0.300 [+0.120, +0.450] |" in section


@pytest.mark.system
def test_main_job_smoke_writes_every_output(tiny_sd3_path, tmp_path):
    main_job = _module()
    argv = [
        "--eval-every", "1", "--output", str(tmp_path), "--base-guidance", "1",
        f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "sampling.group_size=4", "data.images_per_iteration=8", "data.eval_num_prompts=2", *SMALL_EVAL,
        "data.eval_images_per_tag=2", "data.eval_train_images_per_tag=1", "iterations=2", "logging.tensorboard=false",
        "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5",
    ]  # fmt: skip
    result = main_job.main(argv)
    assert result["iterations"] == 2 and len(result["points"]) == 3  # base, iteration 1, final
    assert len(result["gain_points"]) == 3 and result["train_comparison"]["split"] == "train"
    for name in ("eval_base.json", "eval.json", "comparison.json", "metrics.jsonl", "curves.png", "before_after.png",
                 "main_job.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "main_job.json").read_text())
    assert saved["final"]["overall"] == result["final"]["overall"]
    assert "shapes_quality" in saved["final"]["rewards"]  # the default preset's watch is evaluated
    # --base-guidance: the base sampled CFG-free (the run used 2.0), paired with the final policy image by image
    base_cfg1 = json.loads((tmp_path / "eval_base_cfg1.json").read_text())
    assert base_cfg1["num_images"] == saved["base"]["num_images"]
    versus = saved["versus_base_guidance"]["differences"]["accuracy"]["overall"]
    assert (versus["before"], versus["after"]) == (base_cfg1["overall"], result["final"]["overall"])
    again = main_job.main(["--report-only", *argv])  # the report again, from the files alone
    assert (again["final"], again["points"], again["job_s"]) == (result["final"], result["points"], result["job_s"])
    assert not (tmp_path / "previous_runs").exists()  # nothing was trained, so nothing was archived


@pytest.mark.unit
def test_write_docs_fills_the_main_job_block_and_copies_the_figures_beside_the_page(tmp_path):
    main_job = _module()
    import readme_section  # benchmarks/ is on the path once main_job.py is loaded

    default = readme_section.page_of(main_job.BEGIN)
    assert default.name == "results.md" and default.parent.name == "docs" and main_job.BEGIN in default.read_text()
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(f"# Results\n\n{main_job.BEGIN}\nold report\n{main_job.END}\nafter\n")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("curves.png", "before_after.png"):
        (run / name).write_bytes(name.encode())
    assert main_job.write_docs("Generated by `python benchmarks/main_job.py`.\n\n| report |", run, page) == page
    text = page.read_text()
    assert "old report" not in text and "| report |" in text and text.endswith(f"{main_job.END}\nafter\n")
    assert "![curves](main_job_curves.png)" in text and "![before / after](main_job_before_after.png)" in text
    assert (page.parent / "main_job_curves.png").read_bytes() == b"curves.png"
    assert (page.parent / "main_job_before_after.png").read_bytes() == b"before_after.png"
