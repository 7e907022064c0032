"""The whole actor-learner system on a real local Ray (CPU): 1 rollout actor, 1 reward actor, 2 DeepSpeed
learner ranks (ZeRO-2, gloo), both weight-sync backends, and async mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch

from cluster.config import load_config
from cluster.trainer import Trainer
from common.weight_buckets import weights_digest
from tests.tiny_models import FLOWGRPO, SMALL_EVAL

pytestmark = pytest.mark.system


def _config(tiny_sd3_path, tmp_path, **over):
    overrides = [
        f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "model.lora.rank=4", "model.lora.alpha=8",
        "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3",
        "data.images_per_iteration=8", "data.eval_num_prompts=2", "iterations=2",
        "rewards.scorers=[{name: shapes_quality}]", "learner.zero_stage=2", "learner.learning_rate=1e-2",
        "learner.micro_batch_size=8", "cluster.num_learner_ranks=2", "cluster.num_rollout_actors=1",
        "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5", "cluster.async_mode=false",
        "logging.tensorboard=false",
        f"logging.output_dir={tmp_path}", *SMALL_EVAL,
    ]
    return load_config(FLOWGRPO, overrides + [f"{k}={v}" for k, v in over.items()])


def _digest(actor, method="weights"):
    state = ray.get(getattr(actor, method).remote())
    return weights_digest({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})


@pytest.mark.parametrize("backend", ["object_store", "collective"])
def test_two_iterations_sync_bit_exact(local_ray, tiny_sd3_path, tmp_path, backend):
    cfg = _config(tiny_sd3_path, tmp_path, **{"cluster.sync_backend": backend})
    with Trainer(cfg) as trainer:
        before = _digest(trainer.learners[0], "export_weights")
        assert _digest(trainer.rollouts[0]) == before  # setup's first sync: version 0 everywhere
        for it in range(2):
            pending = trainer.submit_rollout(it)
            results, pending_rewards = trainer.rollout(pending)
            groups, _ = trainer.advantage(trainer.reward(results, pending_rewards))
            trainer.update(groups, it)
            trainer.sync()
            learner_digest = _digest(trainer.learners[0], "export_weights")
            assert _digest(trainer.rollouts[0]) == learner_digest
            assert ray.get(trainer.rollouts[0].get_version.remote()) == it + 1 == trainer.version
            # every rank holds the same weights (data-parallel)
            assert _digest(trainer.learners[1], "export_weights") == learner_digest
        assert learner_digest != before


def test_async_run_logs_staleness_and_writes_outputs(local_ray, tiny_sd3_path, tmp_path):
    cfg = _config(tiny_sd3_path, tmp_path, **{"cluster.async_mode": "true", "iterations": 3,
                                               "learner.ema_decay": 0.5, "logging.eval_every": 2})
    with Trainer(cfg) as trainer:
        summary = trainer.run().summary
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1, 2]
    assert lines[0]["learner/staleness_max"] == 0.0
    assert lines[1]["learner/staleness_max"] == 1.0 and lines[2]["learner/staleness_max"] == 1.0
    assert all(sorted(m["groups"]) == [0, 1] for m in lines)
    per_tag = [{k: v for k, v in m.items() if k.startswith("reward/tag/")} for m in lines]
    assert all(tags and all(0.0 <= v <= 1.0 for v in tags.values()) for tags in per_tag)  # shapes prompts are tagged
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval_grid.png").stat().st_size > 0
    assert (tmp_path / "eval_iter000002.json").is_file() and "eval/num_prompts" not in lines[1]
    for picture in ("curves.png", "before_after.png", "eval_base_grid.png"):
        assert (tmp_path / picture).stat().st_size > 1000, picture
    assert 0.0 <= summary["rewards"]["shapes_quality"]["mean"] <= 1.0
    assert (tmp_path / "checkpoints" / "iter_000003" / "trainable.safetensors").is_file()


def test_a_run_the_cluster_cannot_hold_fails_fast_naming_the_keys(local_ray, tiny_sd3_path, tmp_path):
    from cluster.ray_init import InsufficientResources

    total = ray.cluster_resources()["CPU"]
    cfg = _config(tiny_sd3_path, tmp_path, **{"cluster.num_rollout_actors": int(total) + 1,
                                              "cluster.rollout_num_cpus": 1.0})
    trainer = Trainer(cfg)
    with pytest.raises(InsufficientResources, match=r"cluster.num_rollout_actors \(\d+\) x cluster.rollout_num_cpus"):
        trainer.setup()  # raised before any placement group or actor was created
    assert not any(pg["state"] != "REMOVED" and pg["name"] == "flowray"
                   for pg in ray.util.placement_group_table().values())
