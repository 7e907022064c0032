"""benchmarks/chaos.py: its checks catch a group trained twice, a group missing, a group sampled with other
weights and an image scored twice (unit); and a tiny schedule, on a private Ray head with the driver as a
subprocess, kills a rollout actor, a reward actor, the learner rank and the driver for real, resumes, and
still trains every group exactly once, ending with the undisturbed run's weights bit for bit (slow)."""

from __future__ import annotations

import pytest

from cluster.config import load_config
from tests.script_loader import load_script
from tests.tiny_models import FLOWGRPO, SMALL_EVAL


def _rows(iterations=3, groups=2):
    return [{"iteration": i, "groups": list(range(groups)), "policy_versions": [i] * groups,
             "reward/shapes_quality/scored": 8.0, "reward/shapes_quality/unscored": 0.0} for i in range(iterations)]


@pytest.mark.unit
def test_the_exactly_once_checks_catch_each_fault():
    report = load_script("benchmarks/chaos_report.py")
    cfg = load_config(FLOWGRPO, ["iterations=3", "data.images_per_iteration=8", "sampling.group_size=4",
                                 "rewards.scorers=[{name: shapes_quality}]"])
    assert all(v for v in report.exactly_once(_rows(), cfg).values() if isinstance(v, bool))
    twice = _rows()
    twice[1]["groups"] = [0, 0]  # group 0 of iteration 1 trained twice, group 1 never
    assert report.exactly_once(twice, cfg)["iterations_with_wrong_groups"] == [1]
    redone = _rows() + _rows()[2:]  # iteration 2 logged twice (a resume that did not drop its rows)
    assert not report.exactly_once(redone, cfg)["iterations_once"]
    stale = _rows()
    stale[2]["policy_versions"] = [2, 1]  # a resampled group met other weights
    assert report.exactly_once(stale, cfg)["iterations_with_wrong_versions"] == [2]
    scored_twice = _rows()
    scored_twice[0]["reward/shapes_quality/scored"] = 12.0  # 4 images' scores counted again
    assert report.exactly_once(scored_twice, cfg)["iterations_with_wrong_counts"] == [0]
    counts = report.reward_accounting([{"reward/duplicates_ignored": 1.0}, {"reward/duplicates_ignored": 2.0},
                                       {"reward/duplicates_ignored": 1.0}])  # a new driver process from row 3
    assert counts["duplicates_ignored"] == 3.0


@pytest.mark.job
@pytest.mark.slow
def test_a_tiny_schedule_kills_every_kind_and_trains_each_group_once(tiny_sd3_path, tmp_path):
    chaos = load_script("benchmarks/chaos.py")
    tiny = [f"model.path={tiny_sd3_path}", "model.guidance_scale=1.0", "model.lora.rank=4", "model.lora.alpha=8",
            "data.images_per_iteration=8", "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3",
            "data.eval_num_prompts=2", *SMALL_EVAL, "logging.tensorboard=false", "logging.checkpoint_every=2",
            "learner.micro_batch_size=8"]
    report = chaos.main(["--minutes", "1", "--iterations", "10", "--kills", "rollout=1,reward=1,learner=1,driver=1",
                         "--output-dir", str(tmp_path), "--sample-seconds", "5", "--config", str(FLOWGRPO), *tiny])
    assert sorted(k["kind"] for k in report["kills"]) == ["driver", "learner", "reward", "rollout"]
    assert not report["not_fired"]
    assert [e["cause"] for e in report["exits"]].count("finished") == 1 and report["resumes"]["performed"] == 2
    once = report["exactly_once"]
    assert once["iterations_once"] and once["groups_once"] and once["versions_ok"] and once["images_scored_once"]
    assert report["work"]["groups_trained"] == 10 * 2
    assert report["baseline"]["weights_identical"] and not report["baseline"]["iterations_with_different_metrics"]
    assert report["checks"]["all_passed"], report["checks"]
    assert {p["process"] for p in report["rss"]} >= {"driver", "learner-0", "rollout-0", "raylet", "gcs_server"}
    assert (tmp_path / "chaos_report.json").is_file() and "| kills fired / planned |" in (
        tmp_path / "chaos_report.md").read_text()
