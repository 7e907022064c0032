"""The rollout and learner workers in-process on a tiny random SD3 pipeline (a real DeepSpeed engine,
one gloo rank): on-policy ratios, weight export/import, checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.advantages import grpo_advantages
from learner.config import LearnerConfig
from learner.engine import free_port
from learner.worker import LearnerWorker, PolicyDiverged, TrainGroup
from models.config import LoraSettings, ModelConfig, SamplingConfig
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


def test_a_learner_rank_loads_only_the_transformer(workers, cfgs):
    from cluster.model_specs import count_params, safetensors_shapes

    rollout, learner = workers
    # The rollout actor holds the whole pipeline; the learner rank the transformer (+ its LoRA adapters)
    # only: the prompt embeddings it trains with come with each group.
    assert {type(m).__name__ for m in rollout.policy.modules()} >= {"AutoencoderKL", "CLIPTextModelWithProjection"}
    assert [type(m).__name__ for m in learner.policy.modules()] == ["SD3Transformer2DModel"]
    loaded = sum(t.numel() for t in learner.policy.tensors())  # parameters and buffers
    adapters = sum(p.numel() for p in learner.policy.trainable_parameters())
    assert loaded - adapters == count_params(safetensors_shapes(Path(cfgs[0].path) / "transformer"))
    with pytest.raises(RuntimeError, match="transformer_only=True .* has no VAE"):
        learner.policy.decode(torch.zeros(1, 16, 4, 4))
    groups = _groups(rollout)
    assert all(g.rollout.conditioning is not None and g.rollout.conditioning.negative is not None for g in groups)
    with pytest.raises(ValueError, match=r"groups \[0\] carry no prompt conditioning"):
        learner.train([replace(groups[0], rollout=replace(groups[0].rollout, conditioning=None))], iteration=0)


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


def test_ema_warms_up_and_updates_every_few_steps_as_flow_grpo():
    """flow_grpo/ema.py with decay 0.9, update_step_interval 8 (train_sd3.py), called after optimizer step t:
    one_minus_decay = 1 - min((1 + t) / (10 + t), 0.9); ema += one_minus_decay * (p - ema) if (t + 1) % 8 == 0."""
    from learner.worker import EmaWeights

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(3).astype(np.float32) for _ in range(40)]
    ema = EmaWeights({"w": np.zeros(3, dtype=np.float32)}, decay=0.9, every=8)
    ref = np.zeros(3)
    for t, w in enumerate(weights, start=1):
        ema.update({"w": w}, t)
        if (t + 1) % 8 == 0:
            ref += (1 - min((1 + t) / (10 + t), 0.9)) * (w - ref)
    np.testing.assert_allclose(ema.state["w"], ref, rtol=1e-5, atol=1e-6)
    # Step 7 is the first update: decay 8/17, so the EMA moves half way at once instead of by 1 - 0.9.
    first = EmaWeights({"w": np.zeros(1, dtype=np.float32)}, decay=0.9, every=8)
    first.update({"w": np.ones(1, dtype=np.float32)}, 6)
    assert first.state["w"][0] == 0.0
    first.update({"w": np.ones(1, dtype=np.float32)}, 7)
    assert first.state["w"][0] == pytest.approx(9 / 17)


def test_evaluation_samples_with_its_own_guidance_scale(cfgs):
    """Flow-GRPO's sample.eval_guidance_scale: evaluation may guide differently from training."""
    from models.sampling import eval_sample

    model, sampling, _ = cfgs
    worker = RolloutWorker(model.model_copy(update={"eval_guidance_scale": 1.0}), sampling, torch_threads=2)
    images = worker.evaluate([PROMPTS[0]], [[3, 4]])
    cond = worker.policy.encode([PROMPTS[0]])

    def decoded(w):
        def v(x, s):
            return worker.policy.velocity(x, s, cond.expand(x.shape[0]), w)

        with torch.no_grad():
            return worker.policy.decode(eval_sample(v, worker._init_noise, worker.eval_sigmas, seeds=[3, 4])).numpy()

    assert np.array_equal(images, decoded(1.0)) and not np.array_equal(images, decoded(model.guidance_scale))


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


def test_one_optimizer_step_per_denoising_step(workers):
    """learner.optimizer_step_per='denoising_step' (G2RPO's earlier train_g2rpo_hps_clip.py: loss.backward()
    and optimizer.step() inside the loop over branch steps k): one step per sampling step, each over that
    step's transitions only."""
    from learner.per_step import flatten_transitions
    from learner.worker import split_by_step

    rollout, learner = workers
    groups = _groups(rollout, iteration=9)
    rows = flatten_transitions(groups)
    minibatches = split_by_step(groups, rows, 4)
    assert [{int(groups[g].rollout.transitions.step[j]) for g, _, j in mb} for mb in minibatches] == [{0}, {1}, {2}, {3}]
    assert sorted(r for mb in minibatches for r in mb) == sorted(rows)
    learner.cfg.optimizer_step_per = "denoising_step"
    try:
        metrics = learner.train(groups, 9)
    finally:
        learner.cfg.optimizer_step_per = "minibatch"
    assert metrics["learner/optimizer_steps"] == 4  # T = 4, every step trained by flow_grpo


def test_first_minibatch_health_and_recomputed_old_log_probs(workers, cfgs):
    """The sampler's log-probs drifted (simulated: noise on the stored old log-probs, as a GPU's sampler
    and learner numerics differ): the first minibatch's ratio statistics show it, and
    algorithm.recompute_old_log_probs brings the ratio back to 1 before the first step."""
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
    assert learner.algorithm.name == "flow_grpo" and learner.plan.algorithm is learner.algorithm  # the default unit
    learner.algorithm.recompute_old_log_probs = True
    try:
        fixed = learner.train(drifted_groups(11), iteration=11)
    finally:
        learner.algorithm.recompute_old_log_probs = False
    assert abs(fixed["learner/first_minibatch_ratio_mean"] - 1.0) < 1e-5
    assert fixed["learner/first_minibatch_ratio_std"] < 1e-5 and fixed["learner/first_minibatch_clipfrac"] == 0.0


def test_non_finite_gradients_are_skipped_then_stop_the_run(workers, cfgs):
    """A diverged policy (here: infinite advantages, so an infinite loss and gradient) must not write NaN
    into the weights: the step is skipped and counted, and after learner.max_consecutive_skips such steps
    in a row the rank raises, naming the iteration. A finite step in between resets the count."""
    rollout, learner = workers
    learner.cfg = cfgs[2].model_copy(update={"max_consecutive_skips": 2})

    def diverged(iteration):
        groups = _groups(rollout, iteration=iteration)
        return [replace(g, advantages=torch.full_like(g.advantages, float("inf"))) for g in groups]

    try:
        before = learner.export_weights()
        metrics = learner.train(diverged(20), iteration=20)
        assert metrics["learner/skipped_steps"] == 1.0 and "learner/grad_norm" not in metrics
        after = learner.export_weights()
        assert all(np.array_equal(before[k], after[k]) for k in before)
        assert learner.train(_groups(rollout, iteration=21), iteration=21)["learner/skipped_steps"] == 0.0
        learner.train(diverged(22), iteration=22)
        with pytest.raises(PolicyDiverged, match=r"iteration 23: the gradient norm was not finite .* 2 optimizer steps in a row"):
            learner.train(diverged(23), iteration=23)
        assert all(np.isfinite(v).all() for v in learner.export_weights().values())
    finally:
        learner.cfg = cfgs[2]
        learner._consecutive_skips = 0
