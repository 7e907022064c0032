"""The rollout and learner workers in-process on a tiny random SD3 pipeline (a real DeepSpeed engine,
one gloo rank): on-policy ratios, weight export/import, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.advantages import grpo_advantages
from learner.config import LearnerConfig
from learner.engine import free_port
from learner.worker import LearnerWorker, TrainGroup
from rollout.config import LoraSettings, ModelConfig, SamplingConfig
from rollout.worker import GroupRequest, RolloutWorker, weights_digest

pytestmark = pytest.mark.component

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


@pytest.fixture(scope="module")
def cfgs(tiny_sd3_path):
    model = ModelConfig(path=tiny_sd3_path, resolution=32, guidance_scale=2.0, lora=LoraSettings(rank=4, alpha=8))
    sampling = SamplingConfig(group_size=4, num_steps=4, eval_num_steps=6)
    learner = LearnerConfig(micro_batch_size=5, learning_rate=1e-2, beta=0.01)
    return model, sampling, learner


@pytest.fixture(scope="module")
def workers(cfgs):
    model, sampling, learner = cfgs
    rollout = RolloutWorker(model, sampling, torch_threads=2)
    learner_worker = LearnerWorker(model, sampling, learner, rank=0, world_size=1, seed=0)
    learner_worker.setup("127.0.0.1", free_port())
    return rollout, learner_worker


def _groups(rollout: RolloutWorker, iteration: int = 0) -> list[TrainGroup]:
    reqs = [GroupRequest(i, p, {}, seed=100 + i, iteration=iteration) for i, p in enumerate(PROMPTS)]
    out = []
    for res in rollout.rollout(reqs):
        r = res.rollout
        rewards = torch.from_numpy(res.images.reshape(len(res.images), -1).mean(1).astype(np.float32))
        adv = grpo_advantages(rewards, r.reward_group, r.image_sample_id, r.num_samples)
        out.append(TrainGroup(res.request.prompt, r, adv, torch.ones(r.num_samples, dtype=torch.bool), res.policy_version))
    return out


def test_rollout_results_are_stamped_and_deterministic(workers):
    rollout, _ = workers
    req = GroupRequest(0, PROMPTS[0], {}, seed=7, iteration=0)
    a, b = rollout.rollout([req])[0], rollout.rollout([req])[0]
    assert a.images.dtype == np.uint8 and a.images.shape == (4, 32, 32, 3)
    assert a.policy_version == 0 and len(a.rollout.transitions) == 4 * 4
    assert np.array_equal(a.images, b.images)
    assert torch.equal(a.rollout.transitions.log_prob, b.rollout.transitions.log_prob)


def test_first_update_is_on_policy_then_weights_move_and_sync(workers):
    rollout, learner = workers
    before = learner.export_weights()
    metrics = learner.train(_groups(rollout), iteration=0)
    # One optimizer step: every micro-batch is evaluated before the weights change, so the recomputed
    # log-probs equal the sampled ones up to float rounding of different batch compositions.
    assert abs(metrics["policy/ratio_mean"] - 1.0) < 1e-5
    assert metrics["policy/clipfrac"] == 0.0
    assert metrics["learner/optimizer_steps"] == 1.0 and learner.get_version() == 1
    after = learner.export_weights()
    assert any(not np.array_equal(before[k], after[k]) for k in after)
    ack = rollout.load_weights(after, version=learner.get_version())
    assert ack["version"] == 1 and rollout.get_version() == 1
    assert ack["digest"] == weights_digest({k: torch.from_numpy(v) for k, v in after.items()})


def test_several_optimizer_steps_leave_the_trust_region(workers, cfgs):
    rollout, learner = workers
    learner.cfg = cfgs[2].model_copy(update={"optimizer_steps_per_iteration": 2})
    metrics = learner.train(_groups(rollout, iteration=1), iteration=1)
    assert metrics["learner/optimizer_steps"] == 2.0
    assert metrics["policy/clipfrac"] > 0.0  # lr 1e-2 moves the second minibatch's ratios past 1e-4
    assert metrics["policy/kl"] > 0.0


def test_checkpoint_round_trip(workers, tmp_path):
    _, learner = workers
    learner.save_checkpoint(str(tmp_path))
    weights, version = learner.export_weights(), learner.get_version()
    state = learner.engine.optimizer.state_dict()
    for p in learner.policy.trainable_parameters():
        p.data.add_(1.0)
    learner.version = 99
    assert learner.load_checkpoint(str(tmp_path)) == version
    restored = learner.export_weights()
    assert all(np.array_equal(weights[k], restored[k]) for k in weights)
    again = learner.engine.optimizer.state_dict()
    for k, s in state["state"].items():
        assert torch.equal(s["exp_avg"], again["state"][k]["exp_avg"])


def test_damaged_checkpoint_is_named(workers, tmp_path):
    _, learner = workers
    learner.save_checkpoint(str(tmp_path))
    data = tmp_path / "optimizer_rank0.safetensors"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match="optimizer_rank0 is unreadable or truncated"):
        learner.load_checkpoint(str(tmp_path))


def test_ema_tracks_the_weights():
    from learner.worker import EmaWeights

    ema = EmaWeights({"w": np.zeros(3, dtype=np.float32)}, decay=0.9)
    ema.update({"w": np.ones(3, dtype=np.float32)})
    ema.update({"w": np.ones(3, dtype=np.float32)})
    np.testing.assert_allclose(ema.state["w"], 1 - 0.9**2)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_full_finetuning_keeps_the_reference_and_exports_the_transformer(cfgs, zero_stage):
    model, sampling, learner_cfg = cfgs
    model = model.model_copy(update={"lora": LoraSettings(enabled=False)})
    learner_cfg = learner_cfg.model_copy(update={"zero_stage": zero_stage, "learning_rate": 1e-3})
    learner = LearnerWorker(model, sampling, learner_cfg, rank=0, world_size=1, seed=0)
    learner.setup("127.0.0.1", free_port())
    rollout = RolloutWorker(model, sampling, torch_threads=2)
    rollout.load_weights(learner.export_weights(), 0)
    before = learner.export_weights()
    assert any("transformer_blocks" in k for k in before)  # the whole transformer, not adapters
    learner.train(_groups(rollout), iteration=0)
    after = learner.export_weights()
    assert any(not np.array_equal(before[k], after[k]) for k in after)
    ref = learner.policy._reference_copy.state_dict()
    assert all(torch.equal(ref[k].cpu(), torch.from_numpy(before[k])) for k in before if k in ref)


def test_checkpoint_of_another_lora_rank_is_rejected_naming_the_file(workers, cfgs, tmp_path):
    _, learner = workers
    learner.save_checkpoint(str(tmp_path))
    model, sampling, learner_cfg = cfgs
    other = LearnerWorker(model.model_copy(update={"lora": LoraSettings(rank=8, alpha=16)}), sampling, learner_cfg)
    other.setup("127.0.0.1", free_port())
    with pytest.raises(ValueError, match=r"trainable.safetensors does not fit this policy"):
        other.load_checkpoint(str(tmp_path))


def test_first_minibatch_health_and_recomputed_old_log_probs(workers, cfgs):
    """The sampler's log-probs drifted (simulated: noise on the stored old log-probs, as a GPU's sampler
    and learner numerics differ): the first minibatch's ratio statistics show it, and
    learner.recompute_old_log_probs brings the ratio back to 1 before the first step."""
    rollout, learner = workers
    learner.cfg = cfgs[2]

    def drifted_groups(iteration):
        rollout.load_weights(learner.export_weights(), learner.get_version())
        groups = _groups(rollout, iteration=iteration)
        gen = torch.Generator().manual_seed(iteration)
        for g in groups:
            t = g.rollout.transitions
            t.log_prob = t.log_prob + 1e-3 * torch.randn(t.log_prob.shape, generator=gen)
        return groups

    drifted = learner.train(drifted_groups(10), iteration=10)
    assert drifted["learner/first_minibatch_ratio_std"] > 5e-4 and drifted["learner/first_minibatch_clipfrac"] > 0.5
    learner.cfg = cfgs[2].model_copy(update={"recompute_old_log_probs": True})
    fixed = learner.train(drifted_groups(11), iteration=11)
    assert abs(fixed["learner/first_minibatch_ratio_mean"] - 1.0) < 1e-5
    assert fixed["learner/first_minibatch_ratio_std"] < 1e-5 and fixed["learner/first_minibatch_clipfrac"] == 0.0
    learner.cfg = cfgs[2]
