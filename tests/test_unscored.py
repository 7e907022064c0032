"""Failures are not rewards: the unscored representation (rewards/base.py), the advantage stage that leaves
unscored images out and never trains them as zeros (cluster/stages.py), and the share that stops a run
(rewards/unscored.py), wired into the driver's reward stage."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rewards.base import ScoreResult, ScorerInputError
from rewards.unscored import UnscoredShareError, UnscoredWindow
from rewards.worker import RewardWorker

pytestmark = pytest.mark.unit


def test_an_unscored_image_is_nan_under_its_mask_whatever_number_the_scorer_left():
    result = ScoreResult([0.3, 0.0, 0.9], {"d": [1.0, 2.0, 3.0]}, scored=np.array([True, False, True]))
    assert np.isnan(result.reward[1]) and result.valid.tolist() == [True, False, True]
    returned_nan = ScoreResult([np.nan, 1.0])  # a scorer's own NaN: scored, but not valid
    assert returned_nan.scored.all() and returned_nan.valid.tolist() == [False, True]
    with pytest.raises(ValueError, match="scored must be bool"):
        ScoreResult([1.0, 2.0], scored=np.array([1, 0]))


def test_concat_keeps_masks_and_fills_a_failed_parts_diagnostics_with_nan():
    ok = ScoreResult([1.0, 2.0], {"strict": [1.0, 0.0]})
    failed = ScoreResult.unscored(3, "HTTP 500")
    joined = ScoreResult.concat([ok, failed, ok])
    assert joined.valid.tolist() == [True, True, False, False, False, True, True]
    assert np.isnan(joined.diagnostics["strict"][2:5]).all() and joined.diagnostics["strict"][5] == 1.0
    assert joined.errors == ("HTTP 500",)


def test_worker_flags_input_errors_and_retries_a_failed_request_instead_of_caching_it():
    calls = []

    def scorer(images, prompts, metadata):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("transient")
        if metadata and metadata[0].get("bad"):
            raise ScorerInputError("bad record")
        return ScoreResult(np.ones(len(prompts)))

    worker = RewardWorker("fake", factory=lambda: scorer)
    images = np.zeros((2, 4, 4, 3), np.uint8)
    first = worker.score("r", images, ["a", "b"])
    assert first.error.startswith("RuntimeError: transient") and not first.input_error
    again = worker.score("r", images, ["a", "b"])  # not the cached error: scored again
    assert again.error is None and len(calls) == 2
    assert worker.score("r", images, ["a", "b"]) is again  # an answer is cached
    assert worker.score("s", images, ["a", "b"], [{"bad": 1}, {}]).input_error


# -- the advantage stage ---------------------------------------------------------------------------------

def _scored(groups: list[list[float]], scored: list[list[bool]], overrides=()):
    """Scored groups of the shapes Flow-GRPO preset: each image its own sample, one scorer."""
    from cluster.config import load_config
    from cluster.stages import Scored
    from models.types import Rollout, Transitions
    from rollout.worker import GroupRequest, GroupResult
    from tests.tiny_models import FLOWGRPO

    cfg = load_config(FLOWGRPO, ["rewards.scorers=[{name: shapes_geneval}]", *overrides])
    out = []
    for i, (rewards, mask) in enumerate(zip(groups, scored, strict=True)):
        g = len(rewards)
        empty = Transitions(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), torch.zeros(0, 1),
                            *(torch.zeros(0) for _ in range(3)), *(torch.zeros(0, dtype=torch.long) for _ in range(2)))
        rollout = Rollout("flow_grpo", empty, torch.zeros(g, 1), torch.zeros(g, dtype=torch.long), torch.arange(g), g,
                          "flow_grpo", 0.7, 0, 0)  # fmt: skip
        result = GroupResult(GroupRequest(i, f"p{i}", {}, i, 0), rollout, np.zeros((g, 1, 1, 3), np.uint8), 0, "a", 0.0)
        score = ScoreResult(np.array(rewards, float), scored=np.array(mask))
        out.append(Scored(result, {"shapes_geneval": score}))
    return out, cfg


def test_unscored_images_are_left_out_of_their_group_and_never_trained():
    from cluster.stages import iteration_advantages

    # The unscored image's number (0.0) must not enter the group's statistics, nor be trained as a zero.
    scored, cfg = _scored([[1.0, 0.0, 0.5, 0.0]], [[True, False, True, True]])
    groups, metrics = iteration_advantages(scored, cfg)
    kept = [1.0, 0.5, 0.0]
    z = (np.array(kept) - np.mean(kept)) / (np.std(kept) + cfg.learner.adv_eps)
    np.testing.assert_allclose(groups[0].advantages[[0, 2, 3]].numpy(), z, rtol=1e-5)
    assert groups[0].advantages[1] == 0.0 and groups[0].keep.tolist() == [True, False, True, True]
    assert metrics["reward/unscored_images"] == 1.0 and metrics["advantage/samples_kept"] == 3.0


def test_a_group_with_fewer_than_two_scored_images_is_dropped_even_when_zero_std_groups_are_kept():
    from cluster.stages import iteration_advantages

    scored, cfg = _scored([[1.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.4, 0.1]],
                          [[True, False, False, False], [True, True, True, True]],
                          ["learner.drop_zero_std_groups=false"])
    groups, metrics = iteration_advantages(scored, cfg)
    assert not groups[0].keep.any() and (groups[0].advantages == 0).all()  # its lone image is not a comparison
    assert groups[1].keep.all() and groups[1].advantages.abs().sum() > 0
    assert metrics["advantage/groups_too_few_scored"] == 1.0


def test_an_iteration_with_nothing_scored_trains_nothing_and_does_not_crash():
    from cluster.stages import iteration_advantages

    scored, cfg = _scored([[0.0, 0.0], [0.0, 0.0]], [[False, False], [False, False]])
    groups, metrics = iteration_advantages(scored, cfg)
    assert not any(g.keep.any() for g in groups) and metrics["reward/unscored_images"] == 4.0


def test_a_watch_scorers_failures_drop_no_trained_image():
    from cluster.stages import iteration_advantages

    scored, cfg = _scored([[1.0, 0.0, 0.5, 0.2]], [[True] * 4])
    cfg = cfg.model_copy(update={"rewards": cfg.rewards.model_validate(
        {"scorers": [{"name": "shapes_geneval"}, {"name": "shapes_quality", "weight": 0.0}]})})
    scored[0].scores["shapes_quality"] = ScoreResult.unscored(4, "watch down")
    groups, _ = iteration_advantages(scored, cfg)
    assert groups[0].keep.all()


# -- the share that stops a run --------------------------------------------------------------------------

def _results(unscored: int, total: int, error: str = "HTTP 500") -> list[ScoreResult]:
    return [ScoreResult.concat([ScoreResult(np.ones(total - unscored)), ScoreResult.unscored(unscored, error)])
            if unscored else ScoreResult(np.ones(total))]


def test_the_window_stops_the_run_naming_scorer_share_and_last_error():
    window = UnscoredWindow(max_share=0.1, window=3)
    window.observe({"judge": _results(1, 10)})  # 10%: at the limit, not past it
    window.observe({"judge": _results(0, 10)})
    assert window.shares() == {"reward/judge/unscored_share_window": pytest.approx(0.05)}
    with pytest.raises(UnscoredShareError, match=r"'judge' left 13\.3% .* last 3 iteration\(s\).*"
                       r"rewards\.max_unscored_share=0\.1; last error: timed out"):
        window.observe({"judge": _results(3, 10, "timed out")})  # 4 / 30


def test_the_window_forgets_old_iterations_and_a_dead_service_stops_at_once():
    window = UnscoredWindow(max_share=0.5, window=2)
    for _ in range(2):
        window.observe({"s": _results(4, 10)})
    window.observe({"s": _results(0, 10)})
    assert window.shares()["reward/s/unscored_share_window"] == pytest.approx(0.2)  # the first 40% is gone
    with pytest.raises(UnscoredShareError, match="100.0%"):
        UnscoredWindow(max_share=0.1, window=10).observe({"s": _results(8, 8)})
    UnscoredWindow(0.1, 10, watches=["s"]).observe({"s": _results(8, 8)})  # a watch never stops the run


def test_the_drivers_reward_stage_stops_past_the_limit():
    """Trainer.reward feeds every gathered result to the window (the one driver line that does)."""
    from cluster.stages import Scored
    from cluster.trainer import Trainer

    batch = SimpleNamespace(results={"remote": ScoreResult.unscored(4, "connection refused")})
    driver = SimpleNamespace(rewards=SimpleNamespace(gather=lambda handle: batch, pools={"remote": None}),
                             unscored=UnscoredWindow(0.1, 10))
    with pytest.raises(UnscoredShareError, match="'remote' left 100.0%.*connection refused"):
        Trainer.reward(driver, [SimpleNamespace()], {"handles": [object()]})
    driver.unscored = UnscoredWindow(1.0, 10)
    [row] = Trainer.reward(driver, [SimpleNamespace()], {"handles": [object()]})
    assert isinstance(row, Scored) and not row.scores["remote"].valid.any()


def test_config_fields_have_descriptions_and_bounds():
    from rewards.config import RewardsConfig

    cfg = RewardsConfig()
    assert cfg.max_unscored_share == 0.1 and cfg.unscored_window == 10
    with pytest.raises(ValueError, match="max_unscored_share"):
        RewardsConfig(max_unscored_share=1.5)
    with pytest.raises(ValueError, match="unscored_window"):
        RewardsConfig(unscored_window=0)
