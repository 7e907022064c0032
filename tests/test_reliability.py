"""Reliability on a real local Ray (CPU): a rollout actor killed mid-iteration, a learner rank killed,
exact resume, and partial checkpoints."""

from __future__ import annotations

import json
import os
import signal

import pytest
import ray
from safetensors.torch import load_file

from cluster import checkpoints
from cluster.trainer import LearnerRankError, Trainer
from tests.test_system import _config

pytestmark = pytest.mark.system


def _single_rank(tiny_sd3_path, out, **over):
    return _config(tiny_sd3_path, out, **{"cluster.num_learner_ranks": 1, "learner.zero_stage": 0, **over})


def test_rollout_actor_killed_mid_iteration_groups_counted_once(local_ray, tiny_sd3_path, tmp_path):
    cfg = _single_rank(tiny_sd3_path, tmp_path, iterations=2)
    with Trainer(cfg) as trainer:
        pid = ray.get(trainer.rollouts[0].pid.remote())
        pending = trainer.submit_rollout(0)
        os.kill(pid, signal.SIGKILL)
        results, pending_rewards = trainer.rollout(pending)
        assert sorted(r.request.group_index for r in results) == [0, 1]
        assert ray.get(trainer.rollouts[0].pid.remote()) != pid  # a restarted process
        assert ray.get(trainer.rollouts[0].get_version.remote()) == trainer.version  # it got the weights back
        trainer.iteration = 0
        trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(m["groups"]) for m in lines] == [[0, 1], [0, 1]]


def test_learner_death_names_the_rank(local_ray, tiny_sd3_path, tmp_path):
    cfg = _single_rank(tiny_sd3_path, tmp_path)
    with Trainer(cfg) as trainer:
        os.kill(ray.get(trainer.learners[0].pid.remote()), signal.SIGKILL)
        with pytest.raises(LearnerRankError, match=r"learner-0.*--resume"):
            trainer.train()


def test_resume_is_bit_identical(local_ray, tiny_sd3_path, tmp_path):
    def run(out, iterations, resume=False):
        cfg = _single_rank(tiny_sd3_path, out, iterations=iterations, **{"logging.checkpoint_every": 2})
        with Trainer(cfg, resume=resume) as trainer:
            trainer.train()

    run(tmp_path / "straight", 4)
    run(tmp_path / "stopped", 2)
    (tmp_path / "stopped" / "checkpoints" / "iter_000009.partial").mkdir()  # a crash mid-write
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        assert checkpoints.latest_checkpoint(tmp_path / "stopped").name == "iter_000002"
    run(tmp_path / "stopped", 4, resume=True)
    a = load_file(tmp_path / "straight" / "checkpoints" / "iter_000004" / "trainable.safetensors")
    b = load_file(tmp_path / "stopped" / "checkpoints" / "iter_000004" / "trainable.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"
    resumed = [json.loads(x)["iteration"] for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert resumed == [0, 1, 2, 3]


def test_a_failing_reward_checkpoints_completed_iterations_first(local_ray, tiny_sd3_path, tmp_path):
    cfg = _single_rank(tiny_sd3_path, tmp_path, iterations=3, **{"logging.checkpoint_every": 0})
    with Trainer(cfg) as trainer:
        calls = {"n": 0}
        real = trainer.reward

        def flaky(results, pending):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("reward server unreachable")
            return real(results, pending)

        trainer.reward = flaky
        with pytest.raises(RuntimeError, match="unreachable"):
            trainer.train()
    latest = checkpoints.latest_checkpoint(tmp_path)
    assert latest is not None and checkpoints.read_state(latest)["iteration"] == 1


def test_a_diverged_learner_reaches_the_driver_as_policy_diverged(local_ray):
    """benchmarks/compare.py records a diverged run (learner.max_consecutive_skips non-finite steps) and goes
    on to the next preset: that needs the learner's PolicyDiverged to reach the driver as that class through
    Ray's task error, not only as a RayTaskError."""
    from learner.worker import PolicyDiverged

    @ray.remote
    class Rank:
        def train(self):
            raise PolicyDiverged("iteration 7: the gradient norm was not finite")

    with pytest.raises(PolicyDiverged, match="iteration 7"):
        ray.get(Rank.remote().train.remote())
