"""The forward-process family (DiffusionNFT, AWM) through the whole system on a real local Ray (CPU):
rollout actors sampling with the synced sampling policy, reward actors, DeepSpeed learner ranks, evaluation,
async mode, and a bit-exact resume of the EMA sampling policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch
from safetensors.torch import load_file

from cluster.config import REPO_ROOT, load_config
from cluster.trainer import Trainer
from common.weight_buckets import weights_digest
from tests.tiny_models import SMALL_EVAL

pytestmark = pytest.mark.system


def _config(preset, tiny_sd3_path, out, **over):
    overrides = [
        f"model.path={tiny_sd3_path}", "model.guidance_scale=1.0", "model.lora.rank=4", "model.lora.alpha=8",
        "sampling.group_size=4", "sampling.num_steps=3", "sampling.eval_num_steps=3", "algorithm.train_timesteps=2",
        "data.images_per_iteration=8", "data.eval_num_prompts=2", "data.eval_images_per_prompt=1", "iterations=2",
        "rewards.scorers=[{name: shapes_quality}]", "learner.learning_rate=1e-2", "learner.micro_batch_size=8",
        "cluster.num_learner_ranks=1", "cluster.num_rollout_actors=1", "cluster.learner_num_cpus=0.5",
        "cluster.rollout_num_cpus=0.5", "logging.tensorboard=false", "logging.eval_base=false",
        f"logging.output_dir={out}", *SMALL_EVAL,
    ]
    return load_config(REPO_ROOT / "configs" / f"{preset}.yaml", overrides + [f"{k}={v}" for k, v in over.items()])


def _digest(actor, method):
    state = ray.get(getattr(actor, method).remote())
    return weights_digest({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})


@pytest.mark.parametrize(
    ("preset", "over"),
    [
        ("shapes_nft", {"cluster.num_learner_ranks": 2, "learner.zero_stage": 2,
                        "algorithm.old_policy_decay_rate": 0.25, "cluster.sync_backend": "collective"}),
        ("shapes_awm", {"cluster.async_mode": "true", "iterations": 3}),
    ],
)
def test_forward_process_trains_end_to_end_and_actors_sample_with_the_sampling_policy(
    local_ray, tiny_sd3_path, tmp_path, preset, over
):
    cfg = _config(preset, tiny_sd3_path, tmp_path, **over)
    with Trainer(cfg) as trainer:
        trainer.run()
        learner = trainer.learners[0]
        sampling, trained = _digest(learner, "export_sampling_weights"), _digest(learner, "export_weights")
        assert _digest(trainer.rollouts[0], "weights") == sampling  # the eval swap gave the actors theirs back
        # DiffusionNFT samples with the EMA (decay 0.25 after the first step), AWM with the trained weights
        assert (sampling == trained) is (preset == "shapes_awm")
        for rank in trainer.learners[1:]:
            assert _digest(rank, "export_sampling_weights") == sampling
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == list(range(cfg.iterations))
    assert all(m["learner/transitions"] == 8 * 2 / cfg.cluster.num_learner_ranks for m in lines)  # 8 images x K=2
    assert all(np.isfinite(m["policy/total_loss"]) for m in lines)
    assert all(m["charts/nfe_per_group"] == 4 * 3 for m in lines)  # G x T, CFG-free: one forward per latent
    if preset == "shapes_awm":
        # on-policy before the first optimizer step (the preset's second step per iteration is not)
        assert lines[0]["learner/first_minibatch_ratio_mean"] == 1.0 and lines[-1]["learner/staleness_max"] == 1.0
    assert (tmp_path / "eval.json").is_file()


def test_forward_process_resume_is_bit_identical(local_ray, tiny_sd3_path, tmp_path):
    def run(out, resume=False, stop=None):
        # The stopped run is the same 4-iteration run interrupted after 2 (its cosine learning rate has the
        # same horizon), not a 2-iteration run.
        cfg = _config("shapes_nft", tiny_sd3_path, out, iterations=4,
                      **{"logging.checkpoint_every": 2, "algorithm.old_policy_decay_rate": 0.25})
        with Trainer(cfg, resume=resume) as trainer:
            trainer.train(stop=stop)

    run(tmp_path / "straight")
    done = iter(range(1, 5))  # iterations completed, as `stop` sees each one's metrics
    run(tmp_path / "stopped", stop=lambda metrics: next(done) == 2)
    run(tmp_path / "stopped", resume=True)
    for name in ("trainable.safetensors", "old_policy.safetensors"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "iter_000004" / name)
        b = load_file(tmp_path / "stopped" / "checkpoints" / "iter_000004" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {name} differs from the uninterrupted run"
    rewards = [[json.loads(x)["reward/mean"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("straight", "stopped")]
    assert rewards[0] == rewards[1]
