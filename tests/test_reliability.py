"""Reliability on a real local Ray (CPU): a rollout actor killed mid-iteration, a learner rank killed,
exact resume, partial checkpoints, and a disk that fills up between two checkpoints."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
import ray
from safetensors.torch import load_file

from cluster import checkpoints
from cluster.trainer import LearnerRankError, Trainer
from common.durable import CheckpointError
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


def test_a_rollout_actor_killed_more_often_than_any_fixed_budget_still_restarts(local_ray, tiny_sd3_path, tmp_path):
    """Ray counts max_restarts over the actor's life, so with a budget of 3 the fourth death in one driver
    life lost the actor for good (a run of days would stop); the limit is per iteration instead."""
    cfg = _single_rank(tiny_sd3_path, tmp_path, iterations=1)
    with Trainer(cfg) as trainer:
        for _ in range(4):
            pid = ray.get(trainer.rollouts[0].pid.remote())
            pending = trainer.submit_rollout(0)
            os.kill(pid, signal.SIGKILL)
            results, _ = trainer.rollout(pending)
            assert sorted(r.request.group_index for r in results) == [0, 1]
            assert ray.get(trainer.rollouts[0].pid.remote()) != pid


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


def test_a_full_disk_stops_the_run_naming_the_checkpoint_and_keeps_the_previous(local_ray, tiny_sd3_path, tmp_path):
    """After the first checkpoint the learner rank's process gets a file-size limit below its weights file
    (prlimit; Python ignores SIGXFSZ, so writes past it fail with EFBIG, as on a full disk): the second
    checkpoint fails inside the rank and the run stops with the path and the cause, without retrying."""
    cfg = _single_rank(tiny_sd3_path, tmp_path, iterations=2, **{"logging.checkpoint_every": 1})
    first = tmp_path / "checkpoints" / "iter_000001"
    with Trainer(cfg) as trainer:
        learner = psutil.Process(ray.get(trainer.learners[0].pid.remote()))

        def fill_the_disk(metrics: dict) -> bool:  # after iteration 2's update, before its checkpoint
            if trainer.iteration == 2:
                learner.rlimit(psutil.RLIMIT_FSIZE, ((first / "trainable.safetensors").stat().st_size // 2,
                                                     psutil.RLIM_INFINITY))
            return False

        with pytest.raises(CheckpointError) as stopped:
            trainer.train(stop=fill_the_disk)
    message = str(stopped.value)
    assert message.startswith(f"checkpoint {tmp_path / 'checkpoints' / 'iter_000002'} was not written: learner-0: "
                              "writing ") and "trainable.safetensors failed" in message
    assert "File too large" in message and f"the previous checkpoint {first} is intact" in message
    assert sorted(p.name for p in first.parent.iterdir()) == ["iter_000001"]
    checkpoints.verify_checkpoint(first)


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
