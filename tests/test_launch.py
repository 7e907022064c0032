"""launch.py's command line: --dry-run on presets, config errors, and `eval` in-process."""

from __future__ import annotations

import json

import pytest

import launch
from cluster.config import REPO_ROOT
from tests.tiny_models import SMALL_EVAL

pytestmark = pytest.mark.component


def test_dry_run_of_a_gpu_preset_against_assumed_cluster(capsys):
    rc = launch.main(["--config", str(REPO_ROOT / "configs" / "sd35_ocr.yaml"), "--dry-run",
                      "--assume-resources", json.dumps({"CPU": 256, "GPU": 32})])
    out = capsys.readouterr().out
    assert rc == 0, out
    rc = launch.main(["--config", str(REPO_ROOT / "configs" / "sd35_ocr.yaml"), "--dry-run",
                      "--assume-resources", json.dumps({"CPU": 256, "GPU": 1})])
    assert rc == 1 and "GPU" in capsys.readouterr().out


def test_config_error_exits_2_naming_the_key(capsys):
    assert launch.main(["learner.learning_rate=-1", "--dry-run"]) == 2
    assert "learner.learning_rate" in capsys.readouterr().err


def test_eval_command_writes_eval_json_per_category(tiny_sd3_path, tmp_path):
    args = ["eval", f"model.path={tiny_sd3_path}", "sampling.eval_num_steps=3", *SMALL_EVAL, "data.eval_images_per_tag=6"]
    assert launch.main([*args, "--output-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "eval.json").read_text())
    for tag in ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"):
        assert 0.0 <= summary[tag] <= 1.0
        lo, hi = summary["ci"][tag]
        assert lo <= summary[tag] <= hi
    assert summary["images_per_tag"]["single_object"] == 6 and summary["images_per_tag"]["color_attr"] == 24
    assert (tmp_path / "eval_grid.png").stat().st_size > 0
    again = tmp_path / "again"
    assert launch.main([*args, "--output-dir", str(again), "--against", str(tmp_path)]) == 0
    assert json.loads((again / "eval.json").read_text()) == summary  # fixed seeds: evaluations agree exactly
    comparison = json.loads((again / "comparison.json").read_text())
    assert comparison["differences"]["accuracy"]["overall"] == {
        "before": summary["overall"], "after": summary["overall"], "difference": 0.0, "ci": [0.0, 0.0],
        "ci_prompts": [0.0, 0.0]}


def test_eval_against_an_unpaired_evaluation_exits_2_naming_the_seed(tiny_sd3_path, tmp_path, capsys):
    args = ["eval", f"model.path={tiny_sd3_path}", "sampling.eval_num_steps=2", "data.eval_num_prompts=3", *SMALL_EVAL]
    assert launch.main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    rc = launch.main([*args, "data.eval_seed=7", "--output-dir", str(tmp_path / "b"), "--against", str(tmp_path / "a")])
    assert rc == 2 and "data.eval_seed" in capsys.readouterr().err


def test_eval_too_small_for_its_interval_target_exits_2_naming_the_key(capsys):
    rc = launch.main(["eval", "data.eval_images_per_tag=50", "data.eval_max_halfwidth=0.07", "--output-dir", "unused"])
    assert rc == 2 and "data.eval_images_per_tag" in capsys.readouterr().err
